//! The server against slow, stalled and careless clients, over raw sockets: a client that never
//! finishes its headers or its body is cut off, shutdown has a deadline, and a response that
//! leaves a body unread says it closes the connection.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{ADMIN_TOKEN, Backend, TestApp, json as body, on_both_backends};

on_both_backends!(a_stalled_body_is_cut_off_and_writes_nothing);

/// A bootstrap request's head, declaring a body of `length` bytes, with `extra` headers.
fn bootstrap_head(length: usize, extra: &str) -> String {
    format!(
        "POST /admin/users/bootstrap HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n"
    )
}

const SHORT: Duration = Duration::from_millis(300);

/// Reads until the server closes the connection, or fails the test after `limit`. Returns what
/// was read and how long it took.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut read = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), stream.read(&mut buffer)).await {
            Err(_) => panic!("the server kept the connection open past {limit:?}; read so far: {read:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&read).into_owned(), started.elapsed()),
            Ok(Ok(n)) => read.extend_from_slice(&buffer[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = TestApp::spawn_with(Backend::Sqlite, |config| config.server.header_read_timeout = SHORT).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Half: ").await.unwrap();
    let (_, took) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(took >= SHORT.mul_f32(0.9), "not before the timeout: {took:?}");

    // A client that is merely idle between requests on a kept-alive connection is closed too.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (answered, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    app.stop().await;
}

/// A request whose headers outgrow 64 KiB is answered 431 once its buffer (which a read may
/// take past the bound, up to twice it) is full — not buffered up to hyper's 400 KiB, which a
/// client holding every connection of the cap could make 1.6 GiB; one of 16 KiB is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    for (pad, status) in [(16 * 1024, "HTTP/1.1 200"), (200 * 1024, "HTTP/1.1 431")] {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        let request =
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nConnection: close\r\n\r\n", "a".repeat(pad));
        stream.write_all(request.as_bytes()).await.unwrap();
        let (answered, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
        assert!(answered.starts_with(status), "{pad}: {answered}");
    }
    app.stop().await;
}

async fn a_stalled_body_is_cut_off_and_writes_nothing(backend: Backend) {
    let app = TestApp::spawn_with(backend, |config| config.server.body_read_timeout = SHORT).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /admin/users/bootstrap HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"issuer\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (answered, took) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(took >= SHORT.mul_f32(0.9), "not before the timeout: {took:?}");
    assert!(answered.is_empty() || answered.starts_with("HTTP/1.1 4"), "a client error or nothing: {answered}");
    assert!(!answered.contains("text/plain"), "never a plain-text error: {answered}");
    assert_eq!(app.db.sql().await.count("users").await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_in_is_cut_off_at_the_timeout_in_all() {
    // A byte every 100 ms never stalls for the timeout, but 400 bytes of it would take 40 s.
    let app =
        TestApp::spawn_with(Backend::Sqlite, |config| config.server.body_read_timeout = Duration::from_secs(1)).await;
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (mut reading, mut writing) = stream.into_split();
    writing.write_all(bootstrap_head(400, "").as_bytes()).await.unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..400 {
            if writing.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut answered = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), reading.read_to_end(&mut answered)).await;
    trickle.abort();
    read.expect("the server cut the body off long before it was all sent").ok();
    let answered = String::from_utf8_lossy(&answered);
    assert!(answered.starts_with("HTTP/1.1 400"), "{answered}");
    assert!(answered.contains("\"code\":\"invalid_request\""), "{answered}");
    assert_eq!(app.db.sql().await.count("users").await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_declared_too_large_is_refused_unread() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    // The client waits for `100 Continue` before sending 10 MB; it is answered 413 instead.
    stream.write_all(bootstrap_head(10_000_000, "Expect: 100-continue\r\n").as_bytes()).await.unwrap();
    let (answered, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(answered.starts_with("HTTP/1.1 413"), "{answered}");
    assert!(!answered.contains("100 Continue"), "{answered}");
    assert!(answered.contains("\"code\":\"payload_too_large\""), "{answered}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_left_open_at_the_deadline() {
    let app = TestApp::spawn_with(Backend::Sqlite, |config| {
        config.server.shutdown_timeout = Duration::from_secs(1);
        // Long enough not to be what ends the stalled request below.
        config.server.body_read_timeout = Duration::from_secs(120);
        config.server.header_read_timeout = Duration::from_secs(120);
    })
    .await;
    let mut stalled = TcpStream::connect(app.addr).await.unwrap();
    stalled
        .write_all(
            format!(
                "POST /admin/users/bootstrap HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // The request is in flight before the shutdown begins (its head read: nothing outside the
    // server can see that, so a generous pause).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), app.stop()).await.expect("the server stopped by its deadline");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "it waited for the request first: {took:?}");
    let (_, _) = read_until_closed(&mut stalled, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_that_leaves_the_body_unread_announces_the_close() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let big = "x".repeat(100 * 1024);
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let request = format!("POST /no/such/route HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{big}", big.len());
    stream.write_all(request.as_bytes()).await.ok();
    let (answered, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let head = answered.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 404"), "{head}");
    assert!(head.contains("connection: close"), "the client is told not to reuse the connection: {head}");

    // A body that was read leaves the connection open for the next request.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let json = "{}";
    for _ in 0..2 {
        let request = format!(
            "POST /admin/users/bootstrap HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buffer = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer)).await.unwrap().unwrap();
        let head = String::from_utf8_lossy(&buffer[..n]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 "), "answered on the same connection: {head}");
        assert!(!head.contains("connection: close"), "{head}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_to_the_connect_route_is_problem_json() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let response = app
        .client
        .post(app.url(
            "/v1/teams/some-team/auth-profiles/some-profile/connect?on_behalf_of=00000000-0000-0000-0000-000000000000",
        ))
        .bearer_auth(ADMIN_TOKEN)
        .body(vec![b'{'; 70 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    assert_eq!(body(response, 413).await["code"], "payload_too_large");
    app.stop().await;
}

/// Sends `GET /healthz` on a kept-alive connection and reads until its answer's head has come.
async fn healthz(stream: &mut TcpStream, limit: Duration) -> Result<String, tokio::time::error::Elapsed> {
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut read = Vec::new();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(limit, async {
        while !read.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buffer).await.unwrap();
            assert_ne!(n, 0, "the server closed the connection: {read:?}");
            read.extend_from_slice(&buffer[..n]);
        }
        String::from_utf8_lossy(&read).into_owned()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_its_connection_cap_the_server_accepts_no_more_until_one_closes() {
    let app = TestApp::spawn_with(Backend::Sqlite, |config| {
        config.server.max_connections = 2;
        // Long enough that no idle connection below is closed for idling.
        config.server.header_read_timeout = Duration::from_secs(60);
    })
    .await;
    let mut first = TcpStream::connect(app.addr).await.unwrap();
    let mut second = TcpStream::connect(app.addr).await.unwrap();
    for stream in [&mut first, &mut second] {
        let answered = healthz(stream, Duration::from_secs(10)).await.expect("answered under the cap");
        assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    }
    // The third connects (the kernel's backlog takes it) but is not served while two are open.
    let mut third = TcpStream::connect(app.addr).await.unwrap();
    assert!(healthz(&mut third, Duration::from_millis(500)).await.is_err(), "served past the cap");
    // Both kept-alive connections still work.
    let answered = healthz(&mut second, Duration::from_secs(10)).await.expect("an open connection is served");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");

    // One closes: the waiting one is accepted, and its request (sent while it waited) answered.
    drop(first);
    let mut answered = Vec::new();
    let mut buffer = [0u8; 4096];
    while !answered.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buffer))
            .await
            .expect("served once a connection closed")
            .unwrap();
        assert_ne!(n, 0);
        answered.extend_from_slice(&buffer[..n]);
    }
    assert!(answered.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answered));

    drop((second, third));
    // The scrape's own connection waits for the two to be reaped, as any new client would.
    let (_, samples) = crate::metrics::scrape(&app).await;
    assert!(crate::metrics::value(&samples, "tessera_http_connection_limit_reached_total", &[]) >= 1.0);
    // Process-wide (tests run side by side): at least the scrape's own connection is open.
    assert!(crate::metrics::value(&samples, "tessera_http_connections_open", &[]) >= 1.0);
    app.stop().await;
}

/// A client that stops reading (its receive window closed) is cut off once a response has made
/// no progress for the header-read timeout, and frees its place under the connection cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_of_its_responses_is_cut_off() {
    let app = TestApp::spawn_with(Backend::Sqlite, |config| {
        config.server.max_connections = 1;
        config.server.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut silent = socket.connect(app.addr).await.unwrap();
    // Twenty OpenAPI documents (about 800 KB each) are far more than the socket buffers hold.
    silent.write_all(&b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(20)).await.unwrap();
    // Served once the silent one is cut off; without the limit it would hold the only place.
    let mut next = TcpStream::connect(app.addr).await.unwrap();
    let answered =
        healthz(&mut next, Duration::from_secs(20)).await.expect("served once the silent client was cut off");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    // What the silent client gets, once it reads, is less than it asked for, then the end.
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), silent.read_to_end(&mut received)).await;
    read.expect("the connection was closed").ok();
    assert!(received.len() < 20 * 700_000, "cut off before the end: {} bytes", received.len());
    app.stop().await;
}

/// A server held at its cap still shuts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_at_its_connection_cap_shuts_down() {
    let app = TestApp::spawn_with(Backend::Sqlite, |config| {
        config.server.max_connections = 1;
        config.server.header_read_timeout = Duration::from_secs(60);
        config.server.shutdown_timeout = Duration::from_secs(1);
    })
    .await;
    let mut held = TcpStream::connect(app.addr).await.unwrap();
    healthz(&mut held, Duration::from_secs(10)).await.expect("answered");
    let mut waiting = TcpStream::connect(app.addr).await.unwrap();
    assert!(healthz(&mut waiting, Duration::from_millis(300)).await.is_err(), "served past the cap");
    tokio::time::timeout(Duration::from_secs(10), app.stop()).await.expect("stopped within its shutdown timeout");
}

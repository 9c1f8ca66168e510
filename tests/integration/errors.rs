//! The error contract: every error is problem+json with a stable code, bad input is a 4xx that
//! says what to fix, nothing internal leaks, and a refused request writes nothing.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, Backend, ISSUER, TestApp, assert_no_leak, identity, json as body, on_both_backends};

on_both_backends!(
    protocol_errors_are_problem_json,
    invalid_fields_are_named_and_nothing_is_written,
    hostile_inputs_never_cause_a_server_error_or_a_leak,
    an_unreachable_database_is_a_503_without_details,
    client_request_ids_are_kept_only_when_short_and_safe,
    every_401_carries_a_challenge,
);

async fn protocol_errors_are_problem_json(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let unknown = app.client.get(app.url("/no/such/route")).send().await.unwrap();
    assert_eq!(body(unknown, 404).await["code"], "not_found");

    let wrong_method = app.client.delete(app.url("/healthz")).send().await.unwrap();
    assert_eq!(wrong_method.headers()["allow"], "GET,HEAD");
    assert_eq!(body(wrong_method, 405).await["code"], "method_not_allowed");
    // Under /oauth/, what no route takes is answered in RFC 6749's format (the clients there
    // read no problem+json), with the status; a browser still gets a page.
    let token_by_get = app.client.get(app.url("/oauth/token")).send().await.unwrap();
    assert_eq!(token_by_get.headers()["allow"], "POST,OPTIONS");
    assert_eq!(token_by_get.headers()["cache-control"], "no-store");
    assert_eq!(token_by_get.status(), 405);
    assert_eq!(token_by_get.headers()["content-type"], "application/json");
    assert_eq!(token_by_get.json::<serde_json::Value>().await.unwrap()["error"], "invalid_request");
    let nowhere = app.client.get(app.url("/oauth/nowhere")).send().await.unwrap();
    assert_eq!(nowhere.status(), 404);
    assert_eq!(nowhere.json::<serde_json::Value>().await.unwrap()["error"], "invalid_request");
    let browser = app.client.get(app.url("/oauth/nowhere")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(browser.status(), 404);
    assert!(browser.headers()["content-type"].to_str().unwrap().starts_with("text/html"));

    let url = app.url("/admin/users/bootstrap");
    let huge = json!({ "issuer": ISSUER, "subject": "s", "email": "a@example.com", "name": "x".repeat(70 * 1024) });
    let too_large = app.client.post(&url).bearer_auth(ADMIN_TOKEN).json(&huge).send().await.unwrap();
    assert_eq!(body(too_large, 413).await["code"], "payload_too_large");
    // A form too large for the OAuth endpoints is refused in their own format, never as text;
    // one posted to a page gets a page.
    let form = format!("a={}", "x".repeat(70 * 1024));
    let post_form = |path: &str| {
        app.client.post(app.url(path)).header("content-type", "application/x-www-form-urlencoded").body(form.clone())
    };
    for path in ["/oauth/token", "/oauth/introspect", "/oauth/revoke", "/oauth/par"] {
        let response = post_form(path).send().await.unwrap();
        assert_eq!(response.status(), 413, "{path}");
        assert_eq!(response.headers()["cache-control"], "no-store", "{path}");
        assert_eq!(response.json::<Value>().await.unwrap()["error"], "invalid_request", "{path}");
    }
    let page = post_form("/auth/logout").header("accept", "text/html").send().await.unwrap();
    assert_eq!(page.status(), 413);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"), "{:?}", page.headers());

    let malformed = app
        .client
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{\"issuer\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(body(malformed, 400).await["code"], "malformed_json");

    let not_json = app.client.post(&url).bearer_auth(ADMIN_TOKEN).body("issuer=x").send().await.unwrap();
    assert_eq!(body(not_json, 415).await["code"], "unsupported_media_type");

    for shape in [json!([]), json!("text"), json!({"issuer": 42}), json!({"email_verified": "yes"})] {
        let response = app.client.post(&url).bearer_auth(ADMIN_TOKEN).json(&shape).send().await.unwrap();
        assert_eq!(body(response, 400).await["code"], "invalid_request", "{shape}");
    }
    assert_eq!(app.db.sql().await.count("users").await, 0);
}

async fn invalid_fields_are_named_and_nothing_is_written(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let base = identity("s-1", "a@example.com", Some("Ann"));
    let with = |field: &str, value: Value| {
        let mut claim = base.clone();
        claim[field] = value;
        claim
    };
    let without = |field: &str| {
        let mut claim = base.clone();
        claim.as_object_mut().unwrap().remove(field);
        claim
    };
    let cases: Vec<(Value, &str, &str)> = vec![
        (without("issuer"), "missing_field", "issuer"),
        (without("subject"), "missing_field", "subject"),
        (without("email"), "missing_field", "email"),
        (with("issuer", json!("   ")), "missing_field", "issuer"),
        (with("subject", json!("")), "missing_field", "subject"),
        (with("email", json!(" \t")), "missing_field", "email"),
        (with("email", Value::Null), "missing_field", "email"),
        (with("email", json!("not-an-email")), "invalid_email", "email"),
        (with("email", json!("a@b")), "invalid_email", "email"),
        (with("email", json!("a b@example.com")), "invalid_email", "email"),
        (with("issuer", json!("not a url")), "invalid_issuer", "issuer"),
        (with("issuer", json!("http://issuer.example.com")), "invalid_issuer", "issuer"),
        (with("issuer", json!("https://u:p@issuer.example.com")), "invalid_issuer", "issuer"),
        (with("subject", json!("a\u{0}b")), "invalid_subject", "subject"),
        (with("name", json!("bad\u{0}name")), "invalid_name", "name"),
        (with("issuer", json!(format!("https://a.example/{}", "p".repeat(2000)))), "field_too_long", "issuer"),
        (with("subject", json!("s".repeat(256))), "field_too_long", "subject"),
        (with("email", json!(format!("{}@example.com", "e".repeat(300)))), "field_too_long", "email"),
        (with("name", json!("n".repeat(201))), "field_too_long", "name"),
        (with("provider", json!("a\u{7}bell")), "invalid_request", "provider"),
        (with("provider", json!("p".repeat(254))), "field_too_long", "provider"),
    ];
    for (claim, code, field) in cases {
        let problem = body(app.bootstrap(&claim).await, 400).await;
        assert_eq!(problem["code"], code, "{claim}");
        assert_eq!(problem["field"], field, "{claim}");
        assert!(problem["detail"].as_str().unwrap().contains(field), "the detail names the field: {problem}");
    }
    assert_eq!(app.db.sql().await.provisioning_counts().await, [0, 0, 0, 0, 0]);
}

async fn hostile_inputs_never_cause_a_server_error_or_a_leak(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let url = app.url("/admin/users/bootstrap");
    let nested = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let raw_bodies = [
        "\u{0}".to_owned(),
        "{\"issuer\": \"\\ud800\"}".to_owned(),
        nested,
        "{\"issuer\": \"https://issuer.example.com\", \"issuer\": \"https://issuer.example.com\"}".to_owned(),
        "{\"issuer\": \"https://issuer.example.com\", \"oidc_issuer\": \"https://issuer.example.com\"}".to_owned(),
        "\u{feff}{}".to_owned(),
        "null".to_owned(),
        "1e99999".to_owned(),
    ];
    for raw in raw_bodies {
        let response = app
            .client
            .post(&url)
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(raw.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert!((400..500).contains(&status), "{status} for {:?}", &raw[..raw.len().min(40)]);
        body(response, status).await;
    }
    let hostile_values = [
        "' OR '1'='1",
        "\"; DROP TABLE identities; --",
        "%00",
        "../../etc/passwd",
        "<script>alert(1)</script>",
        "𝕳𝖊𝖑𝖑𝖔",
        "\u{202e}gnp.exe",
        "$1",
        "?1",
    ];
    for (i, value) in hostile_values.iter().enumerate() {
        for field in ["issuer", "subject", "email", "name", "provider"] {
            let mut claim = identity(&format!("h-{i}-{field}"), "h@example.com", None);
            claim[field] = json!(value);
            let response = app.bootstrap(&claim).await;
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            assert!(status < 500, "{status} for {field}={value:?}: {text}");
            assert_no_leak(&text);
        }
    }
    // Path segments too.
    for segment in ["%27%3B--", "..%2F..%2F", "%00", "0190f5a4-4bde-7c4e-9a6f-6f1e2c3d4b5a'"] {
        let response = app.admin(Method::GET, &format!("/admin/users/{segment}")).send().await.unwrap();
        let status = response.status().as_u16();
        assert!((400..500).contains(&status), "{status} for {segment}");
        assert_no_leak(&response.text().await.unwrap());
    }
}

async fn an_unreachable_database_is_a_503_without_details(backend: Backend) {
    let app = TestApp::spawn_with(backend, |config| {
        config.database.acquire_timeout = std::time::Duration::from_millis(500);
    })
    .await;
    body(app.bootstrap(&identity("before", "b@example.com", None)).await, 201).await;
    make_database_unreachable(&app).await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(body(ready, 503).await["code"], "store_unavailable");
    let problem = body(app.bootstrap(&identity("after", "b@example.com", None)).await, 503).await;
    assert_eq!(problem["code"], "store_unavailable");
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "liveness does not depend on the database");
}

/// Cuts the server off its database: PostgreSQL refuses new connections to the test database and
/// drops the open ones; the SQLite file is replaced by a directory, so no connection can open.
pub(crate) async fn make_database_unreachable(app: &TestApp) {
    match app.db.backend {
        Backend::Postgres => {
            let name = app.db.url.rsplit('/').next().unwrap().to_owned();
            let admin = crate::helpers::pg_admin_url();
            let pool = sqlx::PgPool::connect(&admin).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")))
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
                .bind(&name)
                .execute(&pool)
                .await
                .unwrap();
        }
        Backend::Sqlite => {
            // Open SQLite connections keep working on a deleted file; the store is made
            // unreachable by closing the app's pools instead, which is what a dead database looks
            // like from the pool's side.
            app.close_store().await;
        }
    }
}

async fn client_request_ids_are_kept_only_when_short_and_safe(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let send = |ids: Vec<String>, path: &str| {
        let mut request = app.client.get(app.url(path));
        for id in ids {
            request = request.header("x-request-id", id);
        }
        request.send()
    };
    let longest = "r".repeat(128);
    for kept in ["abc", "0193f0c2-7d3e-7c4e-8f00-1.2_3", longest.as_str()] {
        for path in ["/healthz", "/no/such/route"] {
            let response = send(vec![kept.to_owned()], path).await.unwrap();
            assert_eq!(response.headers()["x-request-id"], kept, "{path}");
        }
    }
    let replaced = [
        vec!["x".repeat(8 * 1024)],
        vec!["r".repeat(129)],
        vec!["a b".to_owned()],
        vec!["{\"level\":\"ERROR\"}".to_owned()],
        vec!["../x".to_owned()],
        vec!["abc".to_owned(), "abc".to_owned()],
        vec!["abc".to_owned(), "def".to_owned()],
        vec![],
    ];
    for ids in replaced {
        for path in ["/healthz", "/no/such/route"] {
            let response = send(ids.clone(), path).await.unwrap();
            let echoed: Vec<_> = response.headers().get_all("x-request-id").iter().collect();
            assert_eq!(echoed.len(), 1, "one id in the response for {ids:?}");
            let generated = echoed[0].to_str().unwrap();
            assert!(uuid::Uuid::parse_str(generated).is_ok(), "a generated id, not {generated:?}");
        }
    }
}

/// What a raw HTTP/1.1 exchange over TCP gave: the response head and body as sent, or what
/// happened instead.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Sends `request` as raw bytes (from a task of its own, so that a server that answers before
/// reading everything is seen), and reads until the server closes or 5 s have passed.
/// Every 401 carries a `WWW-Authenticate` challenge (RFC 9110 section 15.5.2), whether it is
/// problem+json or a page: the routes below answer 401 without one of their own.
async fn every_401_carries_a_challenge(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let html = |request: reqwest::RequestBuilder| request.header("accept", "text/html");
    for (what, request) in [
        ("POST /auth/link", app.client.post(app.url("/auth/link"))),
        ("GET /auth/link, a browser", html(app.client.get(app.url("/auth/link?provider=any")))),
        ("GET /v1/me", app.client.get(app.url("/v1/me"))),
        ("GET /v1/me, a browser", html(app.client.get(app.url("/v1/me")))),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{what}");
        let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="tessera""#), "{what}");
    }
}

async fn raw_exchange(addr: std::net::SocketAddr, request: Vec<u8>) -> Result<RawResponse, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut reader, mut writer) = stream.into_split();
    let sending = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        // Half-close would end the request for hyper; keep the writer open until the read ends.
        writer
    });
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, reader.read(&mut chunk)).await {
            Err(_) => break,
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                received.extend_from_slice(&chunk[..n]);
                // One response is enough: stop once its head and declared body are in.
                if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&received[..end]).to_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok());
                    if length.is_some_and(|len| received.len() >= end + 4 + len) {
                        break;
                    }
                }
            }
            Ok(Err(e)) if received.is_empty() => return Err(e.to_string()),
            Ok(Err(_)) => break,
        }
    }
    sending.abort();
    let end = received.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| {
        format!("no response head in {:?}", String::from_utf8_lossy(&received[..received.len().min(200)]))
    })?;
    let head = String::from_utf8_lossy(&received[..end]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("no status in {head:?}"))?;
    Ok(RawResponse { status, head, body: received[end + 4..].to_vec() })
}

/// Malformed requests that hyper answers itself, before any of Tessera's code runs: status only,
/// empty body, connection closed. The README lists them; this pins the list. Everything that gets
/// through the parser is answered by Tessera as problem+json. (Protocol only: one backend.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_below_the_router_are_the_documented_ones() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let request = |target: &str, version: &str, extra: &[u8]| {
        let mut bytes = format!("GET {target} {version}\r\nHost: x\r\n").into_bytes();
        bytes.extend_from_slice(extra);
        bytes.extend_from_slice(b"\r\n");
        bytes
    };
    let get = |extra: &[u8]| request("/no/such/route", "HTTP/1.1", extra);
    let header_of = |len: usize| {
        let mut header = b"X-Big: ".to_vec();
        header.extend(std::iter::repeat_n(b'a', len));
        header.extend_from_slice(b"\r\n");
        header
    };
    let headers =
        |count: usize| -> Vec<u8> { (0..count).flat_map(|i| format!("X-H-{i}: v\r\n").into_bytes()).collect() };

    let hyper_answers: Vec<(&str, Vec<u8>, u16)> = vec![
        ("a 1 MB header", get(&header_of(1024 * 1024)), 431),
        // Over twice the 64 KiB bound (a read may take the buffer past it, up to twice).
        ("a 200 KB header", get(&header_of(200 * 1024)), 431),
        ("a request target of 200 KB", request(&format!("/{}", "u".repeat(200 * 1024)), "HTTP/1.1", b""), 431),
        ("300 headers", get(&headers(300)), 431),
        ("101 header fields", get(&headers(100)), 431),
        ("NUL in a header value", get(b"X-A: a\0b\r\n"), 400),
        ("a bare CR in a header value", get(b"X-A: a\rb\r\n"), 400),
        ("a control byte in a header value", get(b"X-A: a\x01b\r\n"), 400),
        ("a space in a header name", get(b"X A: b\r\n"), 400),
        ("HTTP/1.2", request("/healthz", "HTTP/1.2", b""), 400),
        ("HTTP/2.0 on an HTTP/1 request line", request("/healthz", "HTTP/2.0", b""), 400),
        ("an unknown protocol", request("/healthz", "FOO/1.1", b""), 400),
        ("an invalid method", b"G@T /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        ("a space in the target", request("/a b", "HTTP/1.1", b""), 400),
        ("an invalid Content-Length", get(b"Content-Length: abc\r\n"), 400),
        ("two Content-Lengths", get(b"Content-Length: 1\r\nContent-Length: 2\r\n"), 400),
        ("Transfer-Encoding in HTTP/1.0", request("/healthz", "HTTP/1.0", b"Transfer-Encoding: chunked\r\n"), 400),
        ("a Transfer-Encoding not ending in chunked", get(b"Transfer-Encoding: gzip\r\n"), 400),
        ("a TLS handshake", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(), 400),
    ];
    for (what, bytes, status) in hyper_answers {
        let response = raw_exchange(app.addr, bytes).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(response.status, status, "{what}: {}", response.head);
        let head = response.head.to_lowercase();
        assert!(head.contains("content-length: 0") && head.contains("connection: close"), "{what}: {head}");
        assert!(!head.contains("content-type") && !head.contains("x-request-id"), "{what}: {head}");
        assert!(response.body.is_empty(), "{what}");
    }
    let preface = raw_exchange(app.addr, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()).await;
    assert!(preface.is_err(), "HTTP/2 with prior knowledge is closed without an answer: {preface:?}");

    // What gets through the parser is Tessera's to answer.
    let bootstrap = |extra: &str, body: &str| {
        format!(
            "POST /admin/users/bootstrap HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Content-Type: application/json\r\n{extra}\r\n{body}"
        )
        .into_bytes()
    };
    let tessera_answers: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("a 60 KB header", get(&header_of(60 * 1024)), 404, "not_found"),
        ("99 headers besides Host", get(&headers(99)), 404, "not_found"),
        ("bytes over 0x7f in a header value", get(b"X-A: caf\xc3\xa9\r\n"), 404, "not_found"),
        ("an unknown expectation", get(b"Expect: 200-ok\r\n"), 404, "not_found"),
        ("HTTP/1.0", request("/no/such/route", "HTTP/1.0", b""), 404, "not_found"),
        (
            "a chunked body that breaks off",
            bootstrap("Transfer-Encoding: chunked\r\n", "zz\r\n{}\r\n0\r\n\r\n"),
            400,
            "invalid_request",
        ),
        (
            "a repeated credential header",
            bootstrap(&format!("Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 2\r\n"), "{}"),
            400,
            "ambiguous_credentials",
        ),
    ];
    for (what, bytes, status, code) in tessera_answers {
        let response = raw_exchange(app.addr, bytes).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(response.status, status, "{what}: {}", response.head);
        assert!(response.head.to_lowercase().contains("content-type: application/problem+json"), "{what}");
        let problem: Value = serde_json::from_slice(&response.body).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(problem["code"], code, "{what}");
        crate::helpers::assert_problem_shape(&problem, status);
    }
}

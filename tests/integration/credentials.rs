//! One credential per request: a credential header sent twice, two credential headers that
//! disagree, or a session or sign-in cookie sent twice is a 400 `ambiguous_credentials` (at
//! forward-auth, a 401 `invalid_request` challenge), and the request writes nothing — whichever
//! copy a proxy in front would have read.

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tessera::config::ProviderKind;
use tessera_testkit::local_issuer::{LocalIssuer, StubUser};

use crate::helpers::{
    ADMIN_TOKEN, AUDIENCE, Backend, TestApp, identity, json as body, local_issuer_config, on_both_backends,
};
use crate::signin::{Browser, CLIENT_ID, CLIENT_SECRET, location, provider};

on_both_backends!(
    repeated_admin_credentials_are_refused_and_nothing_is_written,
    repeated_or_disagreeing_user_tokens_are_refused_and_nobody_is_provisioned,
    the_user_acted_for_must_be_named_once,
    repeated_session_and_sign_in_cookies_are_refused,
);

struct World {
    app: TestApp,
    issuer: LocalIssuer,
}

/// A server whose local issuer both signs upstream tokens and runs browser sign-ins.
async fn world(backend: Backend) -> World {
    let issuer = LocalIssuer::start().await.unwrap();
    issuer.set_client(CLIENT_ID, CLIENT_SECRET);
    let app = TestApp::spawn_with(backend, |config| {
        config.issuers.push(local_issuer_config(&issuer));
        config.auth.cookie_secure = false;
        config.providers.push(provider("local", ProviderKind::Oidc, &issuer));
        config.auth.default_provider = Some("local".into());
    })
    .await;
    World { app, issuer }
}

async fn ambiguous(response: reqwest::Response) -> Value {
    let problem = body(response, 400).await;
    assert_eq!(problem["code"], "ambiguous_credentials", "{problem}");
    problem
}

async fn repeated_admin_credentials_are_refused_and_nothing_is_written(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let url = app.url("/admin/users/bootstrap");
    let claim = identity("dup", "dup@example.com", None);
    let wrong = "wrong-token-0123456789";
    let cases: [&[(&str, &str)]; 9] = [
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}")), ("authorization", &format!("Bearer {wrong}"))],
        &[("authorization", &format!("Bearer {wrong}")), ("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}")), ("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        &[("x-admin-token", ADMIN_TOKEN), ("x-admin-token", wrong)],
        &[("x-admin-token", wrong), ("x-admin-token", ADMIN_TOKEN)],
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}")), ("x-admin-token", wrong)],
        &[("x-admin-token", ADMIN_TOKEN), ("authorization", &format!("Bearer {wrong}"))],
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}")), ("x-user-token", wrong)],
        &[("authorization", "Basic YWRtaW46cGFzcw=="), ("x-admin-token", ADMIN_TOKEN)],
    ];
    for headers in cases {
        let mut request = app.client.post(&url).json(&claim);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let problem = ambiguous(request.send().await.unwrap()).await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(!detail.contains(ADMIN_TOKEN) && !detail.contains(wrong), "no token is echoed: {detail}");
    }
    assert_eq!(app.db.sql().await.count("users").await, 0, "no refused request wrote anything");

    // The same token in both admin headers is not ambiguous.
    let agreeing = app
        .client
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .header("x-admin-token", ADMIN_TOKEN)
        .json(&claim)
        .send()
        .await
        .unwrap();
    assert_eq!(body(agreeing, 201).await["created"], true);
    assert_eq!(app.db.sql().await.count("users").await, 1);
}

async fn repeated_or_disagreeing_user_tokens_are_refused_and_nobody_is_provisioned(backend: Backend) {
    let w = world(backend).await;
    let token = |subject: &str| w.issuer.sign("rsa-1", &w.issuer.claims(subject, AUDIENCE));
    let (ann, bob) = (token("ann"), token("bob"));
    let validate = || w.app.client.post(w.app.url("/v1/validate"));
    let cases = [
        validate().bearer_auth(&ann).header("authorization", format!("Bearer {bob}")),
        validate().bearer_auth(&ann).header("authorization", format!("Bearer {ann}")),
        validate().bearer_auth(&ann).header("x-user-token", &bob),
        validate().header("x-user-token", &bob).bearer_auth(&ann),
        validate().header("x-user-token", &ann).header("x-user-token", &ann),
        validate().bearer_auth(&ann).header("x-admin-token", ADMIN_TOKEN),
    ];
    for request in cases {
        ambiguous(request.send().await.unwrap()).await;
    }
    let me = w.app.client.get(w.app.url("/v1/me")).bearer_auth(&ann).header("x-user-token", &bob);
    ambiguous(me.send().await.unwrap()).await;
    let check = w.app.client.get(w.app.url("/v1/check?team=x")).bearer_auth(&ann).bearer_auth(&bob);
    ambiguous(check.send().await.unwrap()).await;
    assert_eq!(w.app.db.sql().await.provisioning_counts().await, [0, 0, 0, 0, 0], "nobody was provisioned");

    // One token in both user headers is the same credential.
    let agreeing = validate().bearer_auth(&ann).header("x-user-token", &ann).send().await.unwrap();
    assert_eq!(body(agreeing, 200).await["subject"], "ann");
    assert_eq!(w.app.db.sql().await.count("users").await, 1);
}

async fn the_user_acted_for_must_be_named_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ann = body(app.bootstrap(&identity("ann", "ann@example.com", Some("Ann"))).await, 201).await;
    let bob = body(app.bootstrap(&identity("bob", "bob@example.com", Some("Bob"))).await, 201).await;
    let (ann_id, bob_id) = (ann["user_id"].as_str().unwrap(), bob["user_id"].as_str().unwrap());
    let url = app.url(&format!("/v1/teams/{}/auth-profiles", ann["team"]["slug"].as_str().unwrap()));
    let as_admin = |url: &str| app.client.get(url).bearer_auth(ADMIN_TOKEN);

    let twice = as_admin(&url).header("x-on-behalf-of", ann_id).header("x-on-behalf-of", bob_id);
    assert_eq!(ambiguous(twice.send().await.unwrap()).await["field"], "on_behalf_of");
    let disagreeing = as_admin(&format!("{url}?on_behalf_of={bob_id}")).header("x-on-behalf-of", ann_id);
    ambiguous(disagreeing.send().await.unwrap()).await;

    let agreeing = as_admin(&format!("{url}?on_behalf_of={ann_id}")).header("x-on-behalf-of", ann_id);
    body(agreeing.send().await.unwrap(), 200).await;
    body(as_admin(&url).header("x-on-behalf-of", ann_id).send().await.unwrap(), 200).await;
    let in_query_twice = as_admin(&format!("{url}?on_behalf_of={ann_id}&on_behalf_of={bob_id}"));
    assert_eq!(ambiguous(in_query_twice.send().await.unwrap()).await["field"], "on_behalf_of");
    // Nobody, or a disabled user, is acted for in nothing: said so, not taken for a stranger.
    let nobody = as_admin(&url).header("x-on-behalf-of", "0190f5a4-4bde-7c4e-9a6f-6f1e2c3d4b5a");
    assert_eq!(body(nobody.send().await.unwrap(), 404).await["code"], "user_not_found");
    let disable = |disabled: bool| {
        let path = format!("/admin/users/{ann_id}");
        app.admin(Method::PATCH, &path).json(&serde_json::json!({ "disabled": disabled })).send()
    };
    body(disable(true).await.unwrap(), 200).await;
    let disabled = as_admin(&url).header("x-on-behalf-of", ann_id).send().await.unwrap();
    assert_eq!(body(disabled, 403).await["code"], "user_disabled");
    body(disable(false).await.unwrap(), 200).await;
    body(as_admin(&url).header("x-on-behalf-of", ann_id).send().await.unwrap(), 200).await;

    // Credentials are checked before the body is read: an ambiguous credential is said so, and a
    // missing one is 401, whatever the body or its type.
    let members = app.url(&format!("/v1/teams/{}/members", ann["team"]["slug"].as_str().unwrap()));
    let ambiguous_with_bad_body = app
        .client
        .post(&members)
        .bearer_auth(ADMIN_TOKEN)
        .header("authorization", "Bearer another-token-0123456789")
        .header("content-type", "application/json")
        .body("{");
    ambiguous(ambiguous_with_bad_body.send().await.unwrap()).await;
    let named_twice_with_bad_body = app
        .client
        .post(&members)
        .bearer_auth(ADMIN_TOKEN)
        .header("x-on-behalf-of", ann_id)
        .header("x-on-behalf-of", bob_id)
        .header("content-type", "text/plain")
        .body("{");
    assert_eq!(ambiguous(named_twice_with_bad_body.send().await.unwrap()).await["field"], "on_behalf_of");
    let anonymous = app.client.post(&members).header("content-type", "text/plain").body("{");
    assert_eq!(body(anonymous.send().await.unwrap(), 401).await["code"], "missing_credentials");
    let anonymous_profile = app.client.post(&url).header("content-type", "application/json").body("{");
    assert_eq!(body(anonymous_profile.send().await.unwrap(), 401).await["code"], "missing_credentials");
}

async fn repeated_session_and_sign_in_cookies_are_refused(backend: Backend) {
    let w = world(backend).await;
    let mut sessions = Vec::new();
    for subject in ["ann", "bob"] {
        w.issuer.set_next_user(StubUser::new(subject, &format!("{subject}@example.com")));
        let mut browser = Browser::new();
        assert_eq!(browser.sign_in(&w.app, "").await.status(), StatusCode::SEE_OTHER);
        sessions.push(browser.cookies["tessera_session"].clone());
    }
    let (ann, bob) = (&sessions[0], &sessions[1]);
    let plain = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let me = w.app.url("/v1/me");
    let one_header = format!("tessera_session={ann}; tessera_session={bob}");
    ambiguous(plain.get(&me).header("cookie", &one_header).send().await.unwrap()).await;
    let two_headers = plain
        .get(&me)
        .header("cookie", format!("tessera_session={ann}"))
        .header("cookie", format!("a=1; tessera_session={bob}"));
    ambiguous(two_headers.send().await.unwrap()).await;
    let same_twice = format!("tessera_session={ann}; tessera_session={ann}");
    ambiguous(plain.get(&me).header("cookie", &same_twice).send().await.unwrap()).await;
    // A token does not make a repeated session cookie acceptable.
    let ann_token = w.issuer.sign("rsa-1", &w.issuer.claims("ann-token", AUDIENCE));
    let with_token = plain.get(&me).bearer_auth(&ann_token).header("cookie", &one_header);
    ambiguous(with_token.send().await.unwrap()).await;
    // A user's own token acts for that user only: naming another is refused, not ignored.
    let other = uuid::Uuid::new_v4().to_string();
    let named =
        plain.get(w.app.url("/v1/teams/any/auth-profiles")).bearer_auth(&ann_token).header("x-on-behalf-of", &other);
    assert_eq!(ambiguous(named.send().await.unwrap()).await["field"], "on_behalf_of");
    let in_query =
        plain.get(w.app.url(&format!("/v1/teams/any/auth-profiles?on_behalf_of={other}"))).bearer_auth(&ann_token);
    assert_eq!(ambiguous(in_query.send().await.unwrap()).await["field"], "on_behalf_of");
    // Nor where the caller's own credential answers: `/v1/validate`, `/v1/check`, `/v1/me`.
    for named in [
        plain.post(w.app.url("/v1/validate")),
        plain.get(w.app.url("/v1/check?team=any")),
        plain.get(&me),
        plain.delete(w.app.url(&format!("/v1/me/identities/{other}"))),
    ] {
        let named = named.bearer_auth(&ann_token).header("x-on-behalf-of", &other);
        assert_eq!(ambiguous(named.send().await.unwrap()).await["field"], "on_behalf_of");
    }
    // Sent twice, even blank, in the header as in the query.
    let twice = plain.post(w.app.url("/v1/validate")).bearer_auth(&ann_token);
    let twice = twice.header("x-on-behalf-of", "").header("x-on-behalf-of", " ");
    assert_eq!(ambiguous(twice.send().await.unwrap()).await["field"], "on_behalf_of");
    for in_query in [
        plain.post(w.app.url(&format!("/v1/validate?on_behalf_of={other}"))),
        plain.post(w.app.url("/v1/validate?on_behalf_of=&on_behalf_of=")),
        plain.get(w.app.url(&format!("/v1/check?team=any&on_behalf_of={other}"))),
        plain.get(w.app.url(&format!("/v1/me?on_behalf_of={other}"))),
    ] {
        let named = in_query.bearer_auth(&ann_token);
        assert_eq!(ambiguous(named.send().await.unwrap()).await["field"], "on_behalf_of");
    }
    // A blank one names nobody, as on the routes that act for a user: answered as without it.
    for (blank, unnamed) in [
        (plain.get(&me).header("x-on-behalf-of", " "), plain.get(&me)),
        (plain.get(w.app.url("/v1/me?on_behalf_of=")), plain.get(&me)),
        (plain.post(w.app.url("/v1/validate")).header("x-on-behalf-of", ""), plain.post(w.app.url("/v1/validate"))),
        (plain.post(w.app.url("/v1/validate?on_behalf_of=")), plain.post(w.app.url("/v1/validate"))),
        (plain.get(w.app.url("/v1/check?team=any&on_behalf_of=%20")), plain.get(w.app.url("/v1/check?team=any"))),
    ] {
        let blank = blank.bearer_auth(&ann_token).send().await.unwrap().status();
        assert_eq!(blank, unnamed.bearer_auth(&ann_token).send().await.unwrap().status());
        assert_ne!(blank, StatusCode::BAD_REQUEST);
    }
    // Nor does a token at forward-auth, or the admin token acting for a user. Forward-auth
    // refuses with the 401 a proxy passes on (nginx makes a 500 of a 400), letting nobody in.
    let verify = |query: &str| plain.get(w.app.url(&format!("/auth/verify{query}")));
    for refused in [
        verify("?audience=notes").bearer_auth(&ann_token).header("cookie", &one_header),
        verify("").header("cookie", &one_header),
        verify("").header("cookie", &same_twice),
        verify("?audience=notes").bearer_auth(&ann_token).header("x-user-token", "another"),
    ] {
        let answer = refused.send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(answer.headers()["www-authenticate"], r#"Bearer realm="tessera", error="invalid_request""#);
        assert!(answer.headers().get("x-tessera-user-id").is_none(), "nobody is let in");
    }
    let ann_me =
        body(plain.get(&me).header("cookie", format!("tessera_session={ann}")).send().await.unwrap(), 200).await;
    let profiles = w.app.url(&format!("/v1/teams/{}/auth-profiles", ann_me["teams"][0]["slug"].as_str().unwrap()));
    let as_admin =
        || plain.get(&profiles).bearer_auth(ADMIN_TOKEN).header("x-on-behalf-of", ann_me["id"].as_str().unwrap());
    body(as_admin().send().await.unwrap(), 200).await;
    ambiguous(as_admin().header("cookie", &one_header).send().await.unwrap()).await;
    // The admin header beside a session, where only the session would act: refused, not
    // credited to the admin token in the audit while acting as the session's user.
    let ann_session = format!("tessera_session={ann}");
    ambiguous(plain.get(&me).header("x-admin-token", ADMIN_TOKEN).header("cookie", &ann_session).send().await.unwrap())
        .await;
    // A wrong one beside a session is the wrong admin token it is (401, counted as every
    // refused admin token is): a signed-in user cannot guess admin tokens uncounted.
    let both = plain.get(&profiles).header("x-admin-token", "not-the-token").header("cookie", &ann_session);
    assert_eq!(body(both.send().await.unwrap(), 401).await["code"], "invalid_credentials");
    // On a team route a valid admin token acts for the user it names, in whichever header it
    // comes, whatever session the caller's browser also holds.
    let named = ann_me["id"].as_str().unwrap();
    for admin in [("x-admin-token", ADMIN_TOKEN.to_owned()), ("authorization", format!("Bearer {ADMIN_TOKEN}"))] {
        let with_session = plain
            .get(&profiles)
            .header(admin.0, &admin.1)
            .header("x-on-behalf-of", named)
            .header("cookie", &ann_session);
        body(with_session.send().await.unwrap(), 200).await;
    }

    // Logging out with two sessions ends neither, and tells the browser to drop the cookie.
    let sql = w.app.db.sql().await;
    let logout = plain.post(w.app.url("/auth/logout")).header("cookie", &one_header).send().await.unwrap();
    let cleared = logout.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    assert!(cleared.starts_with("tessera_session=;") && cleared.contains("Max-Age=0"), "{cleared}");
    ambiguous(logout).await;
    assert_eq!(sql.count("sessions").await, 2);
    // Its confirmation page (an app's "Sign out" link) says so too, not "You are signed out".
    let page = plain.get(w.app.url("/auth/logout")).header("cookie", &one_header).header("accept", "text/html");
    let page = page.send().await.unwrap();
    assert_eq!(page.status(), 400);
    let cleared = page.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    assert!(cleared.starts_with("tessera_session=;"), "{cleared}");
    let html = page.text().await.unwrap();
    assert!(html.contains("ambiguous_credentials") && !html.contains("You are signed out"), "{html}");
    assert_eq!(sql.count("sessions").await, 2);

    // A separate Cookie header with other cookies is fine; each session still works alone.
    let separate = plain.get(&me).header("cookie", "a=1").header("cookie", format!("tessera_session={bob}"));
    assert_eq!(body(separate.send().await.unwrap(), 200).await["identities"][0]["subject"], "bob");

    // A callback with the sign-in cookie twice is refused and signs nobody in.
    w.issuer.set_next_user(StubUser::new("cat", "cat@example.com"));
    let mut browser = Browser::new();
    let callback = browser.start(&w.app, "").await;
    let login = browser.cookies["tessera_login"].clone();
    let users = sql.count("users").await;
    let doubled = plain.get(&callback).header("cookie", format!("tessera_login={login}; tessera_login={login}"));
    let refused = doubled.send().await.unwrap();
    assert!(refused.headers().get("location").is_none());
    ambiguous(refused).await;
    assert_eq!((sql.count("users").await, sql.count("sessions").await), (users, 2));
    // The state was not consumed: the browser's own, single cookie still completes the sign-in.
    let completed = browser.get(&callback).await;
    assert_eq!(completed.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&completed), "/");
    assert_eq!(sql.count("users").await, users + 1);
}

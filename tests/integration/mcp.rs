//! The MCP endpoint, `/mcp`, on both backends: an AI agent (the official TypeScript SDK's client,
//! installed by `scripts/test`) manages auth profiles through `manage_auth_profiles` with a Tessera
//! access token obtained through the real OpenID Provider flow; and the token check at the HTTP
//! level — only Tessera's own tokens for the `/mcp` resource, of an enabled user, get in.

use std::path::{Path, PathBuf};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tessera_testkit::local_issuer::{Alg, StubUser};
use tokio::process::Command;

use crate::helpers::{ADMIN_TOKEN, Backend, TestApp, assert_problem_shape, json as body, on_both_backends};
use crate::op_flow::{REDIRECT, follow, op_world, pkce, register, token_request};
use crate::signin::{Browser, World};

on_both_backends!(an_agent_manages_auth_profiles_through_an_mcp_client, only_tessera_tokens_for_mcp_get_in);

const OTHER_RESOURCE: &str = "https://api.example.com";

fn support() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support")
}

/// A signed-in user with an app registered for `/mcp` (and another resource).
struct Agent {
    w: World,
    browser: Browser,
    client: (String, String),
}

impl Agent {
    async fn new(backend: Backend) -> Self {
        let w = op_world(backend).await;
        w.issuer.set_next_user(StubUser::new("agent-user", "agent-user@example.com"));
        let (id, secret) = register(
            &w.app,
            json!({
                "name": "Agent",
                "kind": "confidential",
                "redirect_uris": [REDIRECT],
                "resources": [w.app.url("/mcp"), w.app.url("/v1"), OTHER_RESOURCE],
                "first_party": true,
            }),
        )
        .await;
        Agent { w, browser: Browser::new(), client: (id, secret.unwrap()) }
    }

    /// An access token through the code flow (the browser signs in the first time), for
    /// `resource` (none: the client's own audience).
    async fn token(&mut self, resource: Option<&str>) -> String {
        let (code, verifier) = self.code(resource).await;
        self.exchange(&code, &verifier).await
    }

    /// A code of a new grant for `resource` (a browser authorization), with its PKCE verifier.
    async fn code(&mut self, resource: Option<&str>) -> (String, String) {
        let (verifier, challenge) = pkce();
        let resource = resource.map(|r| format!("&resource={}", encode(r))).unwrap_or_default();
        let url = self.w.app.url(&format!(
            "/oauth/authorize?response_type=code&client_id={}&redirect_uri={}&scope=openid%20offline_access\
             &state=st&code_challenge={challenge}&code_challenge_method=S256{resource}",
            self.client.0,
            encode(REDIRECT)
        ));
        let back = follow(&mut self.browser, url).await;
        let code = url::Url::parse(&back).unwrap().query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
        (code, verifier)
    }

    /// The access token a code gets.
    async fn exchange(&self, code: &str, verifier: &str) -> String {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ];
        let tokens = body(token_request(&self.w.app, (&self.client.0, &self.client.1), &form).await, 200).await;
        tokens["access_token"].as_str().unwrap().to_owned()
    }

    /// An MCP `initialize` POSTed with `token`, as a client starts.
    async fn initialize(&self, token: Option<&str>) -> reqwest::Response {
        let mut request = self
            .w
            .app
            .client
            .post(self.w.app.url("/mcp"))
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "curl", "version": "1"}}}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }
}

fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// A refusal: its status, problem+json body with `code`, and the RFC 9728 challenge on a 401.
async fn refused(agent: &Agent, response: reqwest::Response, status: u16, code: &str) {
    assert_eq!(response.status().as_u16(), status);
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    let problem = body(response, status).await;
    assert_problem_shape(&problem, status);
    assert_eq!(problem["code"], code, "{problem}");
    if status == 401 {
        // The resource's own metadata URL (RFC 9728 3.1: its path is the resource's).
        let metadata = agent.w.app.url("/.well-known/oauth-protected-resource/mcp");
        let challenge = challenge.expect("a 401 has a challenge");
        assert!(challenge.starts_with("Bearer "), "{challenge}");
        assert!(challenge.contains(&format!("resource_metadata=\"{metadata}\"")), "{challenge}");
        assert_eq!(challenge.contains("error=\"invalid_token\""), code != "missing_credentials", "{challenge}");
        assert!(challenge.contains("scope=\"openid offline_access\""), "the scopes to ask for: {challenge}");
    }
}

async fn an_agent_manages_auth_profiles_through_an_mcp_client(backend: Backend) {
    assert!(
        support().join("node_modules/@modelcontextprotocol/sdk").exists(),
        "@modelcontextprotocol/sdk is not installed: run the suite with `scripts/test`, which installs it"
    );
    let mut agent = Agent::new(backend).await;
    let resource = agent.w.app.url("/mcp");
    let token = agent.token(Some(&resource)).await;
    // The user's team, as their browser (signed in for the token) sees it.
    let me = body(agent.browser.me(&agent.w.app).await, 200).await;
    let team = me["teams"][0]["slug"].as_str().unwrap().to_owned();
    // Another user's team, which the agent's user is not a member of.
    agent.w.issuer.set_next_user(StubUser::new("stranger", "stranger@example.com"));
    let mut stranger = Browser::new();
    assert_eq!(stranger.sign_in(&agent.w.app, "").await.status(), StatusCode::SEE_OTHER);
    let other_team = body(stranger.me(&agent.w.app).await, 200).await["teams"][0]["slug"].as_str().unwrap().to_owned();
    assert_ne!(team, other_team);

    let mut command = Command::new("node");
    command
        .arg("mcp-client.mjs")
        .current_dir(support())
        .env("MCP_URL", agent.w.app.url("/mcp"))
        .env("MCP_TOKEN", &token)
        .env("TEAM", &team)
        .env("OTHER_TEAM", &other_team)
        .env("PROVIDER", "local");
    let output = crate::helpers::run_tool(&mut command, "the MCP client", std::time::Duration::from_secs(300)).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the MCP client failed:\n{stdout}\n{stderr}");
    let summary: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|_| panic!("its summary: {stdout}"));
    assert_eq!(
        summary["codes"],
        json!([
            "invalid_profile_kind",
            "invalid_request",
            "missing_field",
            "pending_auth_conflict",
            "personal_profile_not_default",
            "profile_not_connected",
            "profile_not_found",
            "team_not_found"
        ])
    );
    assert_eq!(summary["missing"]["field"], "team", "{summary}");

    // What the agent did is what the database holds: one profile, revoked, created by the
    // token's user, in their team; the stranger's team got nothing.
    let sql = agent.w.app.db.sql().await;
    let id = summary["profile_id"].as_str().unwrap();
    assert_eq!(sql.texts("SELECT status FROM auth_profiles").await, vec!["revoked".to_owned()]);
    assert_eq!(sql.uuids("SELECT id FROM auth_profiles").await[0].to_string(), id);
    assert_eq!(sql.uuids("SELECT created_by FROM auth_profiles").await[0].to_string(), me["id"].as_str().unwrap());
}

async fn only_tessera_tokens_for_mcp_get_in(backend: Backend) {
    let mut agent = Agent::new(backend).await;
    let resource = agent.w.app.url("/mcp");
    // Tessera's tokens for /mcp, for another resource, and for no resource (the client's own).
    let mcp = agent.token(Some(&resource)).await;
    let second = agent.token(Some(&resource)).await;
    let other = agent.token(Some(OTHER_RESOURCE)).await;
    let plain = agent.token(None).await;
    let api_resource = agent.w.app.url("/v1");
    let api = agent.token(Some(&api_resource)).await;
    let (stale_code, stale_verifier) = agent.code(Some(&api_resource)).await;
    let app = &agent.w.app;

    // The metadata document, at the root and with the resource's path.
    for path in ["/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"] {
        let doc = body(app.client.get(app.url(path)).send().await.unwrap(), 200).await;
        assert_eq!(doc["resource"], resource);
        assert_eq!(doc["authorization_servers"], json!([app.url("").trim_end_matches('/')]));
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
        assert_eq!(doc["scopes_supported"], json!(["openid", "offline_access"]));
    }
    // A client in a browser page of another origin reads the metadata, and the challenge of a
    // refused call (bearer tokens only: no credentials mode).
    let origin = "https://inspector.example";
    let doc = app.client.get(app.url("/.well-known/oauth-protected-resource/mcp")).header("origin", origin);
    let doc = doc.send().await.unwrap();
    assert_eq!(doc.headers()["access-control-allow-origin"], "*");
    // Its preflights too: the MCP SDK sends `MCP-Protocol-Version` with the metadata's GET.
    for (path, method) in [
        ("/mcp", "POST"),
        ("/.well-known/oauth-protected-resource/mcp", "GET"),
        ("/.well-known/oauth-protected-resource", "GET"),
    ] {
        let preflight = app.client.request(Method::OPTIONS, app.url(path)).header("origin", origin);
        let preflight = preflight
            .header("access-control-request-method", method)
            .header("access-control-request-headers", "authorization, content-type, mcp-protocol-version, mcp-method")
            .send()
            .await
            .unwrap();
        assert!(preflight.status().is_success(), "{path}: {}", preflight.status());
        assert_eq!(preflight.headers()["access-control-allow-origin"], "*", "{path}");
        let allowed = preflight.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
        assert!(allowed.contains("mcp-protocol-version") && allowed.contains("authorization"), "{path}: {allowed}");
        // The routing headers of the protocol's newer revisions (SEP-2243), which the SDK checks.
        assert!(allowed.contains("mcp-method") && allowed.contains("mcp-name"), "{path}: {allowed}");
    }
    let unauthenticated = app.client.post(app.url("/mcp")).header("origin", origin).send().await.unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    let exposed = unauthenticated.headers()["access-control-expose-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(exposed.contains("www-authenticate"), "{exposed}");

    // Without the OpenID Provider (no key ring), nothing can get a token: 404 saying why.
    let off = TestApp::spawn(backend).await;
    for path in ["/mcp", "/.well-known/oauth-protected-resource"] {
        let response = off.client.request(Method::GET, off.url(path)).send().await.unwrap();
        assert_eq!(body(response, 404).await["code"], "openid_provider_disabled", "{path}");
    }

    // No token; the admin token; an upstream issuer's token; garbage.
    refused(&agent, agent.initialize(None).await, 401, "missing_credentials").await;
    refused(&agent, agent.initialize(Some(ADMIN_TOKEN)).await, 401, "token_issuer_mismatch").await;
    let issuer = &agent.w.issuer;
    let upstream = issuer.sign(&issuer.add_key(Alg::Es256), &issuer.claims("agent-user", "tessera-test"));
    refused(&agent, agent.initialize(Some(&upstream)).await, 401, "token_issuer_mismatch").await;
    refused(&agent, agent.initialize(Some("a.b.c")).await, 401, "token_issuer_mismatch").await;

    // Tessera's tokens for another resource, or for no resource, are not for /mcp.
    refused(&agent, agent.initialize(Some(&other)).await, 401, "audience_mismatch").await;
    refused(&agent, agent.initialize(Some(&plain)).await, 401, "audience_mismatch").await;

    // A user named beside the token is refused, not passed over (the token's user acts).
    let named = app.client.post(app.url("/mcp?on_behalf_of=0190f5a4-4bde-7c4e-9a6f-6f1e2c3d4b5a"));
    let named = named.bearer_auth(&mcp).header("accept", "application/json, text/event-stream");
    let named = named.json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})).send().await.unwrap();
    refused(&agent, named, 400, "ambiguous_credentials").await;
    // A Host header that names no host: refused in problem+json, as the rest the transport
    // refuses, not in the SDK's plain text.
    let hostless = app.client.post(app.url("/mcp")).bearer_auth(&mcp).header("host", "not a host");
    let hostless = hostless.header("accept", "application/json, text/event-stream");
    let hostless = hostless.json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})).send().await.unwrap();
    refused(&agent, hostless, 400, "invalid_request").await;

    // The token for /mcp gets in, stateless: a JSON answer and no session.
    let response = agent.initialize(Some(&mcp)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("mcp-session-id").is_none());
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["cache-control"], "no-store", "a tool's answer can hold a credential");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["result"]["serverInfo"]["name"], "tessera", "{answer}");
    assert!(answer["result"]["capabilities"]["tools"].is_object(), "{answer}");
    // No session, so no stream to open and nothing to close.
    for method in [Method::GET, Method::DELETE] {
        let response = app.client.request(method.clone(), app.url("/mcp")).bearer_auth(&mcp).send().await.unwrap();
        assert_eq!(response.headers()["allow"], "POST", "{method}");
        assert_eq!(body(response, 405).await["code"], "method_not_allowed", "{method}");
    }
    // What the transport refuses is problem+json too, never its own plain text (or a 500).
    let post = |accept: &str, content_type: &str, payload: Vec<u8>| {
        app.client
            .post(app.url("/mcp"))
            .bearer_auth(&mcp)
            .header("accept", accept)
            .header("content-type", content_type)
            .body(payload)
    };
    let both = "application/json, text/event-stream";
    let ping = br#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#.to_vec();
    let mismatched = json!({"jsonrpc": "2.0", "id": 8, "method": "initialize", "params": {
        "protocolVersion": "X".repeat(1000), "capabilities": {}, "clientInfo": {"name": "curl", "version": "1"}}});
    let twice = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"manage_auth_profiles",
        "arguments":{"action":"list","team":"t","action":"delete"}}}"#;
    for (request, status, code) in [
        (post("application/json", "application/json", ping.clone()), 406, "not_acceptable"),
        (post("application/json, text/event-stream;q=0", "application/json", ping.clone()), 406, "not_acceptable"),
        (post(both, "text/plain", ping.clone()), 415, "unsupported_media_type"),
        (post(both, "application/json", b"{\"jsonrpc\":".to_vec()), 400, "malformed_json"),
        (post(both, "application/json", vec![b' '; 70 * 1024]), 413, "payload_too_large"),
        (post(both, "application/json", br#"{"jsonrpc":"2.0","id":1}"#.to_vec()), 400, "invalid_request"),
        (post(both, "application/json", b"{}".to_vec()), 400, "invalid_request"),
        (post(both, "application/json", [b"[", &ping[..], b"]"].concat()), 400, "invalid_request"),
        // A key named twice, at any depth: the SDK would keep the last, where a gateway or an
        // approval screen in front may have read the first.
        (post(both, "application/json", twice.to_vec()), 400, "invalid_request"),
        (
            post(both, "application/json", ping.clone()).header("mcp-protocol-version", "1999-01-01"),
            400,
            "invalid_request",
        ),
        // An initialize whose header names another revision than its body (whose text the SDK
        // would log).
        (
            post(both, "application/json", mismatched.to_string().into_bytes())
                .header("mcp-protocol-version", "2025-06-18"),
            400,
            "invalid_request",
        ),
    ] {
        let problem = body(request.send().await.unwrap(), status).await;
        assert_problem_shape(&problem, status);
        assert_eq!(problem["code"], code);
    }
    // The body read here reaches the transport whole.
    let pong = body(post(both, "application/json; charset=utf-8", ping).send().await.unwrap(), 200).await;
    assert_eq!((&pong["id"], &pong["result"]), (&json!(2), &json!({})), "{pong}");
    // A client of a newer revision, naming it in the request's `_meta` too, is told which
    // revisions this server speaks (JSON-RPC `data.supported`), to negotiate down.
    let newer = json!({"jsonrpc": "2.0", "id": 3, "method": "ping",
                       "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2099-01-01"}}});
    let newer = post(both, "application/json", newer.to_string().into_bytes())
        .header("mcp-protocol-version", "2099-01-01")
        .header("mcp-method", "ping");
    let answer: Value = newer.send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["error"]["data"]["requested"], "2099-01-01", "{answer}");
    let supported = answer["error"]["data"]["supported"].as_array().unwrap();
    assert!(supported.contains(&json!("2025-06-18")), "{answer}");
    // A `tools/call` the SDK cannot read (its arguments sent as a string, as some agents do) is
    // invalid params saying what to send, not "method not found".
    let stringified = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                             "params": {"name": "manage_auth_profiles", "arguments": "{\"action\":\"list\"}"}});
    let answer = post(both, "application/json", stringified.to_string().into_bytes()).send().await.unwrap();
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["error"]["code"], -32602, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("arguments"), "{answer}");
    // A tool error is HTTP 200 with the error in the result: counted apart, by its code and the
    // status it has on the REST API, so that it shows beside the requests' statuses.
    let errors = async || {
        let (_, samples) = crate::metrics::scrape(app).await;
        let labels = [("code", "team_not_found"), ("status", "404")];
        crate::metrics::value(&samples, "tessera_mcp_tool_errors_total", &labels)
    };
    let before = errors().await;
    let nowhere = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                         "params": {"name": "manage_auth_profiles", "arguments": {"action": "list", "team": "nowhere"}}});
    let answer = post(both, "application/json", nowhere.to_string().into_bytes()).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["result"]["isError"], true, "{answer}");
    assert_eq!(answer["result"]["structuredContent"]["code"], "team_not_found", "{answer}");
    assert!(errors().await >= before + 1.0, "counted");
    // An unknown tool or method is answered without repeating the client's text (rmcp logs
    // every error answer at warn: a client would write what it likes into the log).
    let long = "Z".repeat(2000);
    for call in [
        json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": long, "arguments": {}}}),
        json!({"jsonrpc": "2.0", "id": 6, "method": long, "params": {}}),
    ] {
        let answer = post(both, "application/json", call.to_string().into_bytes()).send().await.unwrap();
        let answer: Value = answer.json().await.unwrap();
        assert!(answer["error"]["code"].is_i64(), "{answer}");
        assert!(!answer["error"]["message"].as_str().unwrap().contains("ZZZZ"), "{answer}");
    }

    // On the REST API, a Tessera token acts for its user (their profile, connected accounts,
    // teams, identities) only when issued for Tessera's API (`/v1`): one the client got for
    // itself, for another resource, or for the MCP endpoint (whose one tool manages connected
    // accounts, not teams or identities) is refused there, `GET /v1/me` included, which shows
    // more than the user consented to give the app.
    let me = body(app.client.get(app.url("/v1/me")).bearer_auth(&api).send().await.unwrap(), 200).await;
    let profiles = app.url(&format!("/v1/teams/{}/auth-profiles", me["teams"][0]["slug"].as_str().unwrap()));
    let primary = app.url(&format!("/v1/me/identities/{}/primary", me["identities"][0]["id"].as_str().unwrap()));
    let members = app.url(&format!("/v1/teams/{}/members", me["teams"][0]["slug"].as_str().unwrap()));
    for token in [&plain, &other, &mcp] {
        let read = app.client.get(app.url("/v1/me")).bearer_auth(token).send().await.unwrap();
        assert_eq!(body(read, 401).await["code"], "audience_mismatch");
        let added = app.client.post(&members).bearer_auth(token).json(&json!({"user_id": me["id"], "role": "owner"}));
        assert_eq!(body(added.send().await.unwrap(), 401).await["code"], "audience_mismatch");
        let listed = app.client.get(&profiles).bearer_auth(token).send().await.unwrap();
        assert_eq!(body(listed, 401).await["code"], "audience_mismatch");
        let chosen = app.client.post(&primary).bearer_auth(token).send().await.unwrap();
        assert_eq!(body(chosen, 401).await["code"], "audience_mismatch");
    }
    // What one user's token reads is kept out of shared caches (`X-User-Token` does not bar
    // them as `Authorization` does), and so is a membership check's answer.
    let listed = app.client.get(&profiles).header("x-user-token", &api).send().await.unwrap();
    assert_eq!(listed.headers()["cache-control"], "no-store");
    body(listed, 200).await;
    let team = me["teams"][0]["slug"].as_str().unwrap();
    let checked = app.client.get(app.url(&format!("/v1/check?team={team}"))).header("x-user-token", &api);
    let checked = checked.send().await.unwrap();
    assert_eq!(checked.headers()["cache-control"], "no-store", "{}", checked.status());
    body(app.client.post(&primary).bearer_auth(&api).send().await.unwrap(), 200).await;
    // One granted from a session that signed in more than 10 minutes ago reads, but changes no
    // sign-in method: a carried-off session cookie would otherwise get round the rule the
    // cookie is held to through an app's authorization.
    let eleven_minutes_ago = match backend {
        Backend::Sqlite => "(CAST(strftime('%s', 'now') AS INTEGER) - 660) * 1000000",
        Backend::Postgres => "now() - interval '660 seconds'",
    };
    let aged = format!(
        "UPDATE oauth_grants SET auth_time = {eleven_minutes_ago}
         WHERE id IN (SELECT grant_id FROM oauth_codes WHERE used_at IS NULL)"
    );
    assert_eq!(app.db.sql().await.exec(&aged).await.unwrap(), 1);
    let stale = agent.exchange(&stale_code, &stale_verifier).await;
    body(app.client.get(app.url("/v1/me")).bearer_auth(&stale).send().await.unwrap(), 200).await;
    let refused_change = app.client.post(&primary).bearer_auth(&stale).send().await.unwrap();
    assert_eq!(body(refused_change, 403).await["code"], "sign_in_again");

    // A tampered token is refused.
    let mut tampered = mcp.clone().into_bytes();
    let middle = tampered.len() - 20;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    refused(&agent, agent.initialize(Some(&tampered)).await, 401, "signature_invalid").await;

    // A revoked token is refused at once; another grant's token still gets in.
    let (id, secret) = &agent.client;
    let revoke = app.client.post(app.url("/oauth/revoke")).basic_auth(id, Some(secret));
    assert_eq!(revoke.form(&[("token", mcp.as_str())]).send().await.unwrap().status(), 200);
    refused(&agent, agent.initialize(Some(&mcp)).await, 401, "token_revoked").await;
    assert_eq!(agent.initialize(Some(&second)).await.status(), StatusCode::OK);

    // Disabling the user ends their grants: refused at once, and for good.
    let user = agent.w.app.db.sql().await.uuids("SELECT id FROM users").await[0].to_string();
    let path = format!("/admin/users/{user}");
    body(app.admin(Method::PATCH, &path).json(&json!({"disabled": true})).send().await.unwrap(), 200).await;
    refused(&agent, agent.initialize(Some(&second)).await, 401, "token_revoked").await;
    body(app.admin(Method::PATCH, &path).json(&json!({"disabled": false})).send().await.unwrap(), 200).await;
    refused(&agent, agent.initialize(Some(&second)).await, 401, "token_revoked").await;
}

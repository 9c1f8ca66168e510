//! The OpenAPI document: it lists exactly the routes the code serves, it is served at
//! `/openapi.json`, and Schemathesis (PyPI), run against a live server, finds no 5xx and no
//! response that the document does not describe.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tessera::error::ErrorCode;
use tessera_testkit::local_issuer::StubUser;
use tokio::process::Command;

use crate::helpers::{ADMIN_TOKEN, Backend, identity, json as body, on_both_backends};
use crate::op_flow::{REDIRECT, op_world, register};
use crate::signin::{Browser, World};

on_both_backends!(the_document_is_served_and_lists_every_error_code, schemathesis_finds_no_server_error_or_mismatch);

/// Operations Schemathesis does not call (by operation id), each with its reason; everything
/// else is called. None today: redirects to a provider are checked as redirects, not followed
/// (and the sign-in provider is the test's local issuer anyway).
const NOT_FUZZED: &[(&str, &str)] = &[];

/// A (method, path) pair; the method is `*` for a `route_service` (every method).
type Route = (String, String);

fn http_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text of the call starting at `open` (just after its `(`), up to its closing parenthesis.
fn call_body(text: &str, open: usize) -> &str {
    let mut depth = 1;
    for (i, c) in text[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced call at {open}")
}

/// `text` with the insides of every parenthesis removed: `get(a).post(b)` becomes `get().post()`.
fn flatten(text: &str) -> String {
    let mut depth = 0;
    let mut out = String::new();
    for c in text.chars() {
        match c {
            '(' => {
                if depth == 0 {
                    out.push('(');
                }
                depth += 1;
            }
            ')' => {
                depth -= 1;
                if depth == 0 {
                    out.push(')');
                }
            }
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// The `const NAME: &str = "…";` items of a file.
fn string_consts(text: &str) -> BTreeMap<String, String> {
    let mut consts = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim_start().trim_start_matches("pub ").trim_start_matches("pub(crate) ");
        if let Some(rest) = line.strip_prefix("const ")
            && let Some((name, value)) = rest.split_once(": &str = \"")
        {
            consts.insert(name.to_owned(), value.trim_end_matches("\";").to_owned());
        }
    }
    consts
}

/// The path a route's first argument names: a literal, a constant of the file, or a `format!` of
/// constants.
fn resolve(argument: &str, consts: &BTreeMap<String, String>, file: &Path) -> String {
    let argument = argument.trim();
    if let Some(literal) = argument.strip_prefix('"') {
        return literal.trim_end_matches('"').to_owned();
    }
    if let Some(template) = argument.strip_prefix("&format!(\"") {
        let mut path = template.trim_end_matches(')').trim_end_matches('"').to_owned();
        for (name, value) in consts {
            path = path.replace(&format!("{{{name}}}"), value);
        }
        assert!(!path.contains('{'), "{}: cannot resolve the route path {argument}", file.display());
        return path;
    }
    consts
        .get(argument)
        .unwrap_or_else(|| panic!("{}: cannot resolve the route path {argument}", file.display()))
        .clone()
}

/// Every route of `src/http`, read from the source: each `.route(path, method(handler)…)` and
/// `.route_service(path, service)` call, outside the files' unit tests (`#[cfg(test)]`, at their
/// end), whose routers are no part of the product.
fn source_routes() -> BTreeSet<Route> {
    let mut files = Vec::new();
    rust_files(&http_dir(), &mut files);
    let mut routes = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let text = text.split("#[cfg(test)]").next().unwrap_or_default().to_owned();
        let consts = string_consts(&text);
        for (call, service) in [(".route(", false), (".route_service(", true)] {
            for (at, _) in text.match_indices(call) {
                let body = call_body(&text, at + call.len());
                let flat = flatten(body);
                let (path, methods) = flat.split_once(',').expect("a route has a path and a handler");
                // The path argument may itself be a call (`&format!(…)`): take it from the body.
                let path = if path.contains("format!") { body.split_once(',').unwrap().0 } else { path };
                let path = resolve(path, &consts, &file);
                if service {
                    routes.insert(("*".to_owned(), path));
                    continue;
                }
                let mut found = 0;
                for method in methods.split('.') {
                    let method: String = method.trim().chars().take_while(char::is_ascii_alphabetic).collect();
                    if ["get", "post", "put", "patch", "delete", "options", "head"].contains(&method.as_str()) {
                        routes.insert((method.to_uppercase(), path.clone()));
                        found += 1;
                    }
                }
                assert!(found > 0, "{}: no method in the route {body}", file.display());
            }
        }
    }
    routes
}

/// Every operation of the document.
fn documented_routes(document: &Value) -> BTreeSet<Route> {
    let mut routes = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete", "options", "head"] {
            if item.get(method).is_some() {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

#[test]
fn every_route_is_documented_and_every_documented_route_exists() {
    let source = source_routes();
    assert!(source.len() > 80, "the route parser found only {} routes: {source:?}", source.len());
    let document = serde_json::to_value(tessera::http::openapi::document()).unwrap();
    let documented = documented_routes(&document);
    let undocumented: Vec<_> = source
        .iter()
        .filter(|(method, path)| match method.as_str() {
            "*" => !documented.iter().any(|(_, p)| p == path),
            _ => !documented.contains(&(method.clone(), path.clone())),
        })
        .collect();
    assert!(undocumented.is_empty(), "routes missing from the OpenAPI document: {undocumented:?}");
    let unserved: Vec<_> = documented
        .iter()
        .filter(|(method, path)| {
            !source.contains(&(method.clone(), path.clone())) && !source.contains(&("*".to_owned(), path.clone()))
        })
        .collect();
    assert!(unserved.is_empty(), "documented operations that no route serves: {unserved:?}");
    // Operation ids name generated clients' methods: one per operation (OpenAPI 3.1, 4.8.10).
    let mut ids = BTreeMap::<&str, usize>::new();
    for item in document["paths"].as_object().unwrap().values() {
        for operation in item.as_object().unwrap().values() {
            if let Some(id) = operation.get("operationId").and_then(Value::as_str) {
                *ids.entry(id).or_default() += 1;
            }
        }
    }
    assert!(ids.len() > 80, "only {} operation ids", ids.len());
    let repeated: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "operation ids used more than once: {repeated:?}");
}

/// The operation `id` of the document, with `$ref`s of its request body resolved.
fn operation<'a>(document: &'a Value, id: &str) -> &'a Value {
    let paths = document["paths"].as_object().unwrap().values();
    let mut operations = paths.flat_map(|item| item.as_object().unwrap().values());
    operations.find(|operation| operation["operationId"] == id).unwrap_or_else(|| panic!("no operation {id}"))
}

fn body_schema<'a>(document: &'a Value, id: &str) -> &'a Value {
    let schema = &operation(document, id)["requestBody"]["content"]["application/json"]["schema"];
    match schema["$ref"].as_str() {
        Some(reference) => &document["components"]["schemas"][reference.rsplit('/').next().unwrap()],
        None => schema,
    }
}

#[test]
fn bodies_and_answers_are_documented_as_the_handlers_take_and_give_them() {
    let document = serde_json::to_value(tessera::http::openapi::document()).unwrap();
    // A client's creation requires `kind` and `name`; a change can name neither `id` nor `kind`.
    let create = body_schema(&document, "create_client");
    assert_eq!(create["required"], json!(["kind", "name"]), "{create}");
    assert!(create["properties"]["redirect_uris"].is_object(), "{create}");
    let change = body_schema(&document, "update_client");
    assert!(change["properties"]["name"].is_object(), "{change}");
    assert!(change["properties"].get("id").is_none() && change["properties"].get("kind").is_none(), "{change}");
    assert!(change.get("required").is_none_or(|r| r.as_array().unwrap().is_empty()), "{change}");
    // UserInfo, by either method, says what its 401 carries.
    for id in ["userinfo", "userinfo_post"] {
        let refused = &operation(&document, id)["responses"]["401"]["description"];
        assert!(refused.as_str().unwrap().contains("an `OAuthError` body (`invalid_token`"), "{id}: {refused}");
    }
    // Linking another identity starts from a session or from a user's token.
    let link = &operation(&document, "start_link")["security"];
    assert_eq!(link, &json!([{"session": []}, {"bearer": []}]));
}

#[test]
fn the_route_parser_reads_methods_constants_and_formats() {
    let text =
        "const A: &str = \"/a\";\nRouter::new().route(A, get(x).post(y))\n.route(&format!(\"{A}/b\"), delete(z))";
    let consts = string_consts(text);
    assert_eq!(consts["A"], "/a");
    let at = text.find(".route(").unwrap() + ".route(".len();
    assert_eq!(flatten(call_body(text, at)), "A, get().post()");
    let at = text.rfind(".route(").unwrap() + ".route(".len();
    assert_eq!(flatten(call_body(text, at)), "&format!(), delete()");
    assert_eq!(resolve("&format!(\"{A}/b\")", &consts, Path::new("x.rs")), "/a/b");
}

async fn the_document_is_served_and_lists_every_error_code(backend: Backend) {
    let w = op_world(backend).await;
    let response = w.app.client.get(w.app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let served: Value = response.json().await.unwrap();
    assert_eq!(served["openapi"], "3.1.0");
    assert_eq!(served, serde_json::to_value(tessera::http::openapi::document()).unwrap());
    let codes: Vec<&str> = served["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let table: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(codes, table);
    for scheme in ["admin_token", "admin_token_header", "bearer", "session", "client_basic"] {
        assert!(served["components"]["securitySchemes"].get(scheme).is_some(), "{scheme}");
    }
    let not_found = &served["paths"]["/admin/users/{user_id}"]["get"]["responses"]["404"];
    assert_eq!(not_found["content"]["application/problem+json"]["schema"]["$ref"], "#/components/schemas/Problem");
    // The user an admin-token call acts for, in either place the handlers read it.
    let params = served["paths"]["/v1/teams/{team}/members"]["post"]["parameters"].as_array().unwrap();
    let named: Vec<(&str, &str)> =
        params.iter().map(|p| (p["in"].as_str().unwrap(), p["name"].as_str().unwrap())).collect();
    assert!(named.contains(&("query", "on_behalf_of")) && named.contains(&("header", "X-On-Behalf-Of")), "{named:?}");
}

/// Schemathesis calls every operation (but [`NOT_FUZZED`]) with a bounded number of generated
/// requests, valid and invalid, and checks each answer against the document. So that requests
/// get past authentication and lookups, a user signs in first: admin routes carry the admin
/// token, every other route that user's session cookie, and the path parameters of the user, their
/// team, an identity, a client and a webhook are the real ones (except for `DELETE`s, which would
/// remove them: those get generated values). Admin routes name another user, whom they may
/// disable without ending the session, and sign-outs get a session of a third user.
async fn schemathesis_finds_no_server_error_or_mismatch(backend: Backend) {
    let python = std::env::var("TESSERA_TEST_PYTHON")
        .expect("TESSERA_TEST_PYTHON is not set: run the suite with `scripts/test`, which installs Schemathesis");
    let schemathesis = Path::new(&python).with_file_name("schemathesis");
    assert!(schemathesis.exists(), "{} is missing: run `scripts/test`, which installs it", schemathesis.display());
    let w = op_world(backend).await;
    let seeded = seed(&w).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&config, seeded.config()).unwrap();
    let mut command = Command::new(&schemathesis);
    command
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(w.app.url("/openapi.json"))
        .args(["--url", &w.app.url("")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        // One worker: Python 3.11's parser is not safe across Hypothesis threads ("AST constructor
        // recursion depth mismatch"). Redirects are checked, not followed.
        .args(["--max-examples", "10", "--seed", "1", "--workers", "1", "--max-redirects", "0"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--output-truncate", "false"])
        // Every call and its answer, to see below that the seeded credentials were accepted.
        .args(["--report", "har", "--report-har-path"])
        .arg(dir.path().join("run.har"))
        .env("NO_COLOR", "1")
        // Its cache and reports go to the scratch directory, not the checkout.
        .current_dir(dir.path())
        .kill_on_drop(true);
    for (operation_id, _reason) in NOT_FUZZED {
        command.args(["--exclude-operation-id", operation_id]);
    }
    let output = crate::helpers::run_tool(&mut command, "Schemathesis", Duration::from_secs(600)).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}");
    assert!(output.status.success(), "Schemathesis found problems:\n{stdout}\n{stderr}");
    // A run that tested nothing must not pass.
    assert!(stdout.contains("passed"), "Schemathesis ran no operation:\n{stdout}");
    // The seeded credentials worked: a 401 is a documented answer, so a run whose every call
    // was refused would pass the checks above. Count the calls that were let in.
    let har: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("run.har")).unwrap()).unwrap();
    let answered = |method: &str, path: &str| {
        har["log"]["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|entry| {
                let url = entry["request"]["url"].as_str().unwrap_or_default();
                let status = entry["response"]["status"].as_u64().unwrap_or_default();
                entry["request"]["method"] == method
                    && url.strip_prefix(&w.app.url("")).is_some_and(|rest| rest.split('?').next() == Some(path))
                    && (200..300).contains(&status)
            })
            .count()
    };
    assert!(answered("GET", "/v1/me") > 0, "the session cookie was refused:\n{stdout}");
    assert!(answered("GET", "/admin/users") > 0, "the admin token was refused:\n{stdout}");
}

/// What the run is given: a session and real identifiers.
struct Seeded {
    session: String,
    other_session: String,
    user: String,
    victim: String,
    team: String,
    identity: String,
    client: String,
    webhook: String,
}

async fn seed(w: &World) -> Seeded {
    w.issuer.set_next_user(StubUser::new("fuzz-sub", "fuzz@example.com"));
    let mut browser = Browser::new();
    let done = browser.sign_in(&w.app, "provider=local").await;
    assert_eq!(done.status(), 303, "the sign-in completes");
    let session = browser.cookies.get("tessera_session").expect("a session cookie").clone();
    w.issuer.set_next_user(StubUser::new("other-sub", "other@example.com"));
    let mut other = Browser::new();
    assert_eq!(other.sign_in(&w.app, "provider=local").await.status(), 303);
    let other_session = other.cookies.get("tessera_session").expect("a session cookie").clone();
    let me = body(browser.me(&w.app).await, 200).await;
    let text = |value: &Value| value.as_str().unwrap().to_owned();
    let (client, _) =
        register(&w.app, json!({"name": "Fuzzed", "kind": "confidential", "redirect_uris": [REDIRECT]})).await;
    let webhook = w
        .app
        .admin(Method::POST, "/admin/webhooks")
        .json(&json!({"url": "http://127.0.0.1:9/tessera"}))
        .send()
        .await
        .unwrap();
    let webhook = body(webhook, 201).await;
    let victim = body(w.app.bootstrap(&identity("victim-sub", "victim@example.com", None)).await, 201).await;
    Seeded {
        session,
        other_session,
        user: text(&me["id"]),
        victim: text(&victim["user_id"]),
        team: text(&me["teams"][0]["slug"]),
        identity: text(&me["identities"][0]["id"]),
        client,
        webhook: text(&webhook["id"]),
    }
}

/// Operations that end sessions: they get a session of their own, of another user.
const SIGN_OUTS: &[&str] = &["logout", "logout_get", "logout_post", "sign_out_others"];

impl Seeded {
    /// A Schemathesis configuration: for each group of operations (by operation id, from the
    /// document), its credentials and, but for `DELETE`s, the real path parameters.
    fn config(&self) -> String {
        let document = serde_json::to_value(tessera::http::openapi::document()).unwrap();
        let mut groups: BTreeMap<(bool, bool, bool), Vec<String>> = BTreeMap::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let Some(id) = operation.get("operationId").and_then(Value::as_str) else { continue };
                let key = (path.starts_with("/admin"), method == "delete", SIGN_OUTS.contains(&id));
                groups.entry(key).or_default().push(format!("{id:?}"));
            }
        }
        let parameters = |user: &str| {
            let Seeded { team, identity, client, webhook, .. } = self;
            format!(
                "parameters = {{ \"path.user_id\" = \"{user}\", \"path.team\" = \"{team}\", \"path.identity_id\" = \"{identity}\", \"path.identity\" = \"{identity}\", \"path.client_id\" = \"{client}\", \"path.id\" = \"{webhook}\" }}\n"
            )
        };
        let mut config = String::new();
        for ((admin, delete, sign_out), ids) in groups {
            config += &format!("[[operations]]\ninclude-operation-id = [{}]\n", ids.join(", "));
            config += &match (admin, sign_out) {
                (true, _) => format!("headers = {{ Authorization = \"Bearer {ADMIN_TOKEN}\" }}\n"),
                (false, true) => format!("headers = {{ Cookie = \"tessera_session={}\" }}\n", self.other_session),
                (false, false) => format!("headers = {{ Cookie = \"tessera_session={}\" }}\n", self.session),
            };
            if !delete {
                config += &parameters(if admin { &self.victim } else { &self.user });
            }
            config += "\n";
        }
        config
    }
}

//! `tessera-bench connections`: connected-accounts throughput.
//!
//! A Tessera server and a local OpenID provider run in this process. With `--users` members of
//! one team acting concurrently (through the admin token, on their behalf) it measures:
//! - create-or-reuse: `POST /v1/teams/{team}/auth-profiles` without a slug, which after the
//!   first call reuses the member's pending profile and mints a fresh connect link;
//! - token reads: `POST …/{slug}/token` for an active, connected profile that needs no refresh;
//! - env credential reads: `POST …/{slug}/credentials` for an `env` profile with its values set
//!   (membership, the profile, its ciphertext, one decryption);
//! - by-connector reads: `POST /v1/teams/{team}/connectors/{connector}/credentials`, where the
//!   members have no account of their own, so the team default (that `env` profile) answers
//!   (membership, the personal lookup, the default, then the env credential read);
//!
//! each beside the rate of a bare single-row `SELECT` (an auth profile by id) on the same
//! database, at the same concurrency, in the same run.

use std::sync::Arc;

use anyhow::{Context, bail};
use base64::Engine;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::harness::{Run, drive};
use tessera::config::{
    Config, ConnectorConfig, EnvField, IssuerConfig, ProviderConfig, ProviderEndpoints, ProviderKind,
};
use tessera::crypto::keyring::KeyRing;
use tessera::crypto::random_bytes;
use tessera::domain::{Issuer, ProfileId};
use tessera::startup::{Application, prepare_schema};
use tessera::store::{self, Store};
use tessera_testkit::ScratchDb as BenchDatabase;
use tessera_testkit::local_issuer::LocalIssuer;

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";
const ISSUER: &str = "https://bench.example.com";

/// Options of `tessera-bench connections`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionsArgs {
    /// Concurrent members.
    #[arg(long, default_value_t = 16)]
    pub users: usize,
    /// Requests per measured run.
    #[arg(long, default_value_t = 5_000)]
    pub requests: usize,
    /// Admin URL of a PostgreSQL server (a scratch database is created and dropped); SQLite in a
    /// temp file otherwise.
    #[arg(long, env = "TESSERA_BENCH_PG_URL", hide_env_values = true, value_name = "URL")]
    pub postgres: Option<String>,
}

/// Runs the benchmark and prints its report.
pub async fn run(args: ConnectionsArgs) -> anyhow::Result<()> {
    if args.users == 0 || args.requests == 0 {
        bail!("--users and --requests must be positive");
    }
    let database = BenchDatabase::create(args.postgres.as_deref()).await?;
    database.run(|url| async move { measure(&args, &url).await }).await
}

async fn measure(args: &ConnectionsArgs, url: &str) -> anyhow::Result<()> {
    let provider = LocalIssuer::start().await?;
    provider.set_client("tessera-bench", "bench-secret");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let mut config = Config::for_database(url)?;
    config.admin_tokens = vec![ADMIN_TOKEN.to_owned().into()];
    config.issuers = vec![IssuerConfig::new(Issuer::parse(ISSUER)?)];
    config.database.max_connections = 32;
    config.auth.public_url = Some(url::Url::parse(&base)?);
    config.auth.cookie_secure = false;
    config.providers = vec![ProviderConfig {
        name: "local".into(),
        kind: ProviderKind::Oidc,
        client_id: "tessera-bench".into(),
        client_secret: Some(SecretString::from("bench-secret")),
        scopes: vec!["openid".into()],
        issuer: Issuer::parse(provider.issuer())?,
        endpoints: ProviderEndpoints::default(),
        algorithms: tessera::config::DEFAULT_ALGORITHMS.to_vec(),
        trusted_email_verification: false,
        auto_link_by_email: false,
        store_tokens: false,
        protocol: tessera::config::ProviderProtocol::default(),
        icon_url: None,
    }];
    config.connectors = vec![ConnectorConfig {
        key: "openai".into(),
        label: "OpenAI".into(),
        fields: vec![EnvField {
            name: "OPENAI_API_KEY".into(),
            label: "API key".into(),
            secret: true,
            optional: false,
            pattern: None,
        }],
        probe: None,
    }];
    let key = base64::engine::general_purpose::STANDARD.encode(random_bytes::<32>());
    config.encryption = Some(Arc::new(KeyRing::parse(&format!("bench:{key}"))?));
    let store = store::connect(&config.database).await.context("connect")?;
    prepare_schema(store.as_ref(), true).await.context("migrate")?;
    let app = Application::build_on(&config, store.clone(), listener).await?;
    let server = crate::harness::InProcess::start(app);
    let api = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(args.users).build()?;

    // The team: a browser-signed-in owner (whose connected profile serves the token reads) and
    // the other members, bootstrapped and added.
    let (owner, session) = sign_in(&base).await?;
    let me: Value = api.get(format!("{base}/v1/me")).header("cookie", &session).send().await?.json().await?;
    let team = me["teams"][0]["slug"].as_str().context("the owner has a team")?.to_owned();
    let mut members = vec![owner.clone()];
    for i in 1..args.users {
        let created: Value = api
            .post(format!("{base}/admin/users/bootstrap"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"issuer": ISSUER, "subject": format!("member-{i}"), "email": format!("m{i}@bench.example.com")}))
            .send()
            .await?
            .json()
            .await?;
        let id = created["user_id"].as_str().context("a user id")?.to_owned();
        api.post(format!("{base}/admin/teams/{team}/members"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"user_id": id, "role": "member"}))
            .send()
            .await?
            .error_for_status()?;
        members.push(id);
    }
    let profiles = format!("{base}/v1/teams/{team}/auth-profiles");
    let create_body = json!({"connector_key": "bench", "profile_kind": "oauth_account", "provider": "local", "display_name": "Bench"});

    // Token reads need one connected profile.
    let created: Value = api
        .post(&profiles)
        .bearer_auth(ADMIN_TOKEN)
        .header("x-on-behalf-of", &owner)
        .json(&json!({"connector_key": "reads", "profile_kind": "oauth_account", "provider": "local", "display_name": "Reads", "slug": "reads"}))
        .send()
        .await?
        .json()
        .await?;
    let profile: ProfileId = created["auth_profile"]["id"].as_str().context("a profile id")?.parse()?;
    connect(created["connect_url"].as_str().context("a connect link")?, &session).await?;

    let members = Arc::new(members);
    let create_run = {
        let (api, profiles, members, create_body) =
            (api.clone(), profiles.clone(), members.clone(), create_body.clone());
        drive(args.users, args.requests, move |i| {
            let request = api
                .post(&profiles)
                .bearer_auth(ADMIN_TOKEN)
                .header("x-on-behalf-of", &members[i % members.len()])
                .json(&create_body);
            async move {
                let response = request.send().await?;
                anyhow::ensure!(response.status().is_success(), "create answered {}", response.status());
                response.bytes().await?;
                Ok(())
            }
        })
        .await?
    };
    let create_baseline = bare_selects(&store, profile, args.users, args.requests).await?;
    let token_run = {
        let (api, owner) = (api.clone(), owner.clone());
        let url = format!("{profiles}/reads/token");
        drive(args.users, args.requests, move |_| {
            let request = api.post(&url).bearer_auth(ADMIN_TOKEN).header("x-on-behalf-of", &owner);
            async move {
                let response = request.send().await?;
                anyhow::ensure!(response.status() == 200, "token answered {}", response.status());
                let body: Value = response.json().await?;
                anyhow::ensure!(body["refreshed"] == false, "a token read refreshed");
                Ok(())
            }
        })
        .await?
    };
    let token_baseline = bare_selects(&store, profile, args.users, args.requests).await?;

    // Env credential reads need one env profile with its values.
    api.post(&profiles)
        .bearer_auth(ADMIN_TOKEN)
        .header("x-on-behalf-of", &owner)
        .json(&json!({"connector_key": "openai", "profile_kind": "env", "display_name": "Keys", "slug": "keys",
                      "values": {"OPENAI_API_KEY": "sk-bench-0123456789abcdefghij"}}))
        .send()
        .await?
        .error_for_status()?;
    let env_run = {
        let (api, members) = (api.clone(), members.clone());
        let url = format!("{profiles}/keys/credentials");
        drive(args.users, args.requests, move |i| {
            let request = api.post(&url).bearer_auth(ADMIN_TOKEN).header("x-on-behalf-of", &members[i % members.len()]);
            async move {
                let response = request.send().await?;
                anyhow::ensure!(response.status() == 200, "credentials answered {}", response.status());
                let body: Value = response.json().await?;
                anyhow::ensure!(body["kind"] == "env", "not the env values");
                Ok(())
            }
        })
        .await?
    };
    let env_baseline = bare_selects(&store, profile, args.users, args.requests).await?;

    // By connector: the env profile is the team's default for `openai`.
    api.post(format!("{profiles}/keys/default"))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-on-behalf-of", &owner)
        .send()
        .await?
        .error_for_status()?;
    let connector_run = {
        let (api, members) = (api.clone(), members.clone());
        let url = profiles.replace("/auth-profiles", "/connectors/openai/credentials");
        drive(args.users, args.requests, move |i| {
            let request = api.post(&url).bearer_auth(ADMIN_TOKEN).header("x-on-behalf-of", &members[i % members.len()]);
            async move {
                let response = request.send().await?;
                anyhow::ensure!(response.status() == 200, "by-connector answered {}", response.status());
                let body: Value = response.json().await?;
                anyhow::ensure!(body["source"] == "team_default", "not the team default");
                Ok(())
            }
        })
        .await?
    };
    let connector_baseline = bare_selects(&store, profile, args.users, args.requests).await?;

    println!(
        "tessera-bench connections: {} requests per run, {} concurrent members, on {}",
        args.requests,
        args.users,
        store.backend().name()
    );
    println!(
        "{:<16} {:>10} {:>8} {:>8} {:>18} {:>8}",
        "operation", "per second", "p50 ms", "p99 ms", "bare SELECT/s", "share"
    );
    row("create-or-reuse", &create_run, &create_baseline);
    row("token read", &token_run, &token_baseline);
    row("env credential", &env_run, &env_baseline);
    row("by connector", &connector_run, &connector_baseline);
    server.stop().await?;
    store.close().await;
    Ok(())
}

fn row(label: &str, run: &Run, baseline: &Run) {
    println!(
        "{label:<16} {:>10.0} {:>8.2} {:>8.2} {:>18.0} {:>7.0}%",
        run.rate(),
        run.quantile_ms(0.5),
        run.quantile_ms(0.99),
        baseline.rate(),
        run.rate() / baseline.rate() * 100.0
    );
}

/// The baseline: a single-row SELECT (an auth profile by id) straight on the store.
async fn bare_selects(
    store: &Arc<dyn Store>,
    profile: ProfileId,
    clients: usize,
    requests: usize,
) -> anyhow::Result<Run> {
    let store = store.clone();
    drive(clients, requests, move |_| {
        let store = store.clone();
        async move {
            store.profile(profile).await?.context("the profile exists")?;
            Ok(())
        }
    })
    .await
}

fn no_redirects() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build()?)
}

fn location(response: &reqwest::Response) -> anyhow::Result<String> {
    Ok(response.headers().get("location").and_then(|v| v.to_str().ok()).context("no Location")?.to_owned())
}

fn cookie(response: &reqwest::Response, name: &str) -> anyhow::Result<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|pair| pair.starts_with(&format!("{name}=")))
        .map(str::to_owned)
        .with_context(|| format!("no {name} cookie"))
}

/// Signs a browser in through the local provider; returns the user id and the session cookie.
async fn sign_in(base: &str) -> anyhow::Result<(String, String)> {
    let browser = no_redirects()?;
    let login = browser.get(format!("{base}/auth/login?provider=local")).send().await?;
    let binding = cookie(&login, "tessera_login")?;
    let authorized = browser.get(location(&login)?).send().await?;
    let done = browser.get(location(&authorized)?).header("cookie", &binding).send().await?;
    let session = cookie(&done, "tessera_session")?;
    let me: Value = browser.get(format!("{base}/v1/me")).header("cookie", &session).send().await?.json().await?;
    Ok((me["id"].as_str().context("a user id")?.to_owned(), session))
}

/// Follows a connect link in the signed-in browser.
async fn connect(link: &str, session: &str) -> anyhow::Result<()> {
    let browser = no_redirects()?;
    // The link's start page, then its "Continue" form with the session's CSRF token.
    let page = browser.get(link).header("cookie", session).header("accept", "text/html").send().await?.text().await?;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("the connect page's CSRF token")?;
    let start = browser.post(link).header("cookie", session).form(&[("csrf", csrf)]).send().await?;
    let binding = cookie(&start, "tessera_login")?;
    let authorized = browser.get(location(&start)?).send().await?;
    let done = browser.get(location(&authorized)?).header("cookie", format!("{session}; {binding}")).send().await?;
    // A completed connection sends the browser to the account page.
    let to = done.headers().get("location").and_then(|l| l.to_str().ok()).unwrap_or_default();
    anyhow::ensure!(
        done.status() == 303 && to.ends_with(tessera::http::auth_profiles::connect::CONNECTED),
        "connecting answered {} (to {to:?})",
        done.status()
    );
    Ok(())
}

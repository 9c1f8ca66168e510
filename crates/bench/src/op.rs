//! `tessera-bench op`: the OpenID Provider's hot paths, each beside a baseline measured in the
//! same run:
//!
//! - `authorization_code` exchanges/s and `refresh_token` grants/s at 16 clients, beside the bare
//!   store transaction each runs (`redeem_code`, `rotate_refresh_token`) at the same concurrency;
//! - `client_credentials` tokens/s, beside in-process signing of the same claims;
//! - introspection/s and forward-auth checks/s of Tessera access tokens at 64 connections, beside
//!   a bare HTTP endpoint of the same stack (`/healthz`), and, for forward-auth, beside the
//!   composed ceiling of bare HTTP and in-process verification
//!   (`1 / (1/http + 1/verify)`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use secrecy::ExposeSecret;
use tessera::config::{Config, IssuerConfig};
use tessera::crypto::keyring::KeyRing;
use tessera::crypto::sha256;
use tessera::domain::{Issuer, SigningAlg, UserId};
use tessera::service::op::keys::{SigningKeySettings, SigningKeys};
use tessera::service::op::tokens::{ACCESS_TOKEN_TYP, AccessClaims};
use tessera::service::sessions::Sessions;
use tessera::startup::{Application, prepare_schema};
use tessera::store::{self, NewCode, NewGrant, Store};
use tessera::worker::LastSeen;
use tessera_testkit::ScratchDb;
use tokio::sync::Mutex;

use crate::harness::{Run, drive};

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";
const REDIRECT: &str = "https://app.example.com/cb";
const UPSTREAM: &str = "https://upstream.bench.example";

/// Options of `tessera-bench op`.
#[derive(Debug, Clone, clap::Args)]
pub struct OpArgs {
    /// Concurrent clients of the token endpoint (and of the store baselines).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Concurrent connections for introspection and forward-auth.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Operations per measured run.
    #[arg(long, default_value_t = 4_000)]
    pub requests: usize,
    /// Admin URL of a PostgreSQL server (a scratch database is created and dropped); SQLite in a
    /// temp file otherwise.
    #[arg(long, env = "TESSERA_BENCH_PG_URL", hide_env_values = true, value_name = "URL")]
    pub postgres: Option<String>,
}

/// Runs the benchmark and prints its report.
pub async fn run(args: OpArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.connections == 0 || args.requests == 0 {
        bail!("--clients, --connections and --requests must be positive");
    }
    let database = ScratchDb::create(args.postgres.as_deref()).await?;
    database.run(|url| async move { measure(&args, &url).await }).await
}

fn ring() -> KeyRing {
    let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    KeyRing::parse(&format!("bench:{key}")).expect("a key ring")
}

struct Bench {
    client: reqwest::Client,
    base: String,
    app_id: String,
    app_secret: String,
}

fn line(what: &str, run: &Run, share: Option<f64>) {
    println!(
        "{what:<34} {:>11.0} {:>7.2} {:>7.2} {:>9}",
        run.rate(),
        run.quantile_ms(0.5),
        run.quantile_ms(0.99),
        share.map_or(String::new(), |s| format!("{:.0}%", s * 100.0))
    );
}

async fn measure(args: &OpArgs, url: &str) -> anyhow::Result<()> {
    let keyring = Arc::new(ring());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let mut config = Config::for_database(url)?;
    config.admin_tokens = vec![ADMIN_TOKEN.to_owned().into()];
    config.issuers = vec![IssuerConfig::new(Issuer::parse(UPSTREAM)?)];
    config.database.max_connections = 32;
    config.auth.cookie_secure = false;
    config.auth.public_url = Some(url::Url::parse(&base)?);
    config.encryption = Some(keyring.clone());
    let store = store::connect(&config.database).await.context("connect")?;
    prepare_schema(store.as_ref(), true).await.context("migrate")?;
    let app = Application::build_on(&config, store.clone(), listener).await?;
    let server = crate::harness::InProcess::start(app);
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(args.connections)
        .build()?;

    let created: serde_json::Value = client
        .post(format!("{base}/admin/clients"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({
            "name": "bench", "kind": "confidential", "redirect_uris": [REDIRECT], "first_party": true,
            "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
            "scopes": ["openid", "email", "teams", "offline_access", "jobs"],
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let app_id = created["client_id"].as_str().context("client id")?.to_owned();
    let app_secret = created["client_secret"].as_str().context("client secret")?.to_owned();
    let bench = Arc::new(Bench { client, base: base.clone(), app_id, app_secret });

    // A user with a session, through the admin API and the session service.
    let user = bootstrap_user(&bench).await?;
    let sessions = Sessions::new(
        store.clone(),
        Duration::from_secs(86_400),
        Duration::from_secs(86_400),
        Arc::new(LastSeen::new(config.server.last_seen_flush)),
        tessera::service::principals::PrincipalCache::with_token_cache(&config.cache).0,
    );
    let cookie = sessions.create(user, None, None, None, None, &[]).await?.context("a session for a new user")?;
    let cookie = format!("tessera_session={}", cookie.expose_secret());

    println!(
        "tessera-bench op: {} operations per run, {} token clients, {} connections, on {}",
        args.requests,
        args.clients,
        args.connections,
        store.backend().name()
    );
    println!("{:<34} {:>11} {:>7} {:>7} {:>9}", "what", "per second", "p50 ms", "p99 ms", "share");

    // Codes through the authorization endpoint (measured too: authorize with a session).
    let codes = Arc::new(Mutex::new(Vec::new()));
    let authorize = {
        let (bench, cookie, codes) = (bench.clone(), cookie.clone(), codes.clone());
        drive(args.clients, args.requests, move |_| {
            let (bench, cookie, codes) = (bench.clone(), cookie.clone(), codes.clone());
            async move {
                let code = authorize_code(&bench, &cookie).await?;
                codes.lock().await.push(code);
                anyhow::Ok(())
            }
        })
        .await?
    };
    let baseline_codes = store_codes(&store, &bench.app_id, user, args.requests).await?;
    let bare = {
        let (store, codes) = (store.clone(), Arc::new(baseline_codes));
        drive(args.clients, args.requests, move |i| {
            let (store, codes) = (store.clone(), codes.clone());
            async move {
                let refresh = sha256(format!("bench-refresh-{i}").as_bytes());
                let outcome = store.redeem_code(&codes[i], Some(&refresh), grant_at(), None).await?;
                anyhow::ensure!(outcome == tessera::store::RedeemOutcome::Redeemed, "redeemed");
                Ok(())
            }
        })
        .await?
    };
    let refresh_tokens = Arc::new(Mutex::new(Vec::new()));
    let exchange = {
        let codes = Arc::new(std::mem::take(&mut *codes.lock().await));
        let (bench, refresh_tokens) = (bench.clone(), refresh_tokens.clone());
        drive(args.clients, args.requests, move |i| {
            let (bench, codes, refresh_tokens) = (bench.clone(), codes.clone(), refresh_tokens.clone());
            async move {
                let tokens = token(
                    &bench,
                    &[
                        ("grant_type", "authorization_code"),
                        ("code", &codes[i].0),
                        ("redirect_uri", REDIRECT),
                        ("code_verifier", &codes[i].1),
                    ],
                )
                .await?;
                if refresh_tokens.lock().await.len() < 64 {
                    refresh_tokens.lock().await.push(tokens["refresh_token"].as_str().context("refresh")?.to_owned());
                }
                anyhow::Ok(())
            }
        })
        .await?
    };
    line("authorize (with a session)", &authorize, None);
    line("store: redeem_code", &bare, None);
    line("token: authorization_code", &exchange, Some(exchange.rate() / bare.rate()));

    // Refresh: 64 rotating chains, each used by one task at a time.
    let chains: Arc<Vec<Mutex<String>>> =
        Arc::new(std::mem::take(&mut *refresh_tokens.lock().await).into_iter().map(Mutex::new).collect());
    let store_chains = Arc::new(store_chains(&store, &bench.app_id, user, chains.len()).await?);
    let bare = {
        let (store, chains) = (store.clone(), store_chains.clone());
        drive(args.clients, args.requests, move |i| {
            let (store, chains) = (store.clone(), chains.clone());
            async move {
                let mut held = chains[i % chains.len()].lock().await;
                let next = sha256(uuid::Uuid::new_v4().as_bytes());
                let outcome = store.rotate_refresh_token(&held, &next, grant_at(), None, None).await?;
                anyhow::ensure!(outcome == tessera::store::RotateOutcome::Rotated, "rotated");
                *held = next;
                Ok(())
            }
        })
        .await?
    };
    let refresh = {
        let (bench, chains) = (bench.clone(), chains.clone());
        drive(args.clients, args.requests, move |i| {
            let (bench, chains) = (bench.clone(), chains.clone());
            async move {
                let mut held = chains[i % chains.len()].lock().await;
                let tokens = token(&bench, &[("grant_type", "refresh_token"), ("refresh_token", &held)]).await?;
                *held = tokens["refresh_token"].as_str().context("a new refresh token")?.to_owned();
                anyhow::Ok(())
            }
        })
        .await?
    };
    line("store: rotate_refresh_token", &bare, None);
    line("token: refresh_token", &refresh, Some(refresh.rate() / bare.rate()));

    // client_credentials beside in-process signing of the same claims.
    let keys = SigningKeys::new(store.clone(), keyring.clone(), SigningKeySettings::default()).await?;
    let claims = AccessClaims {
        iss: base.clone(),
        sub: bench.app_id.clone(),
        aud: bench.app_id.clone(),
        exp: chrono::Utc::now().timestamp() + 600,
        iat: chrono::Utc::now().timestamp(),
        jti: uuid::Uuid::new_v4().to_string(),
        client_id: bench.app_id.clone(),
        scope: "jobs".into(),
        auth_time: None,
        gid: None,
        email: None,
        email_verified: None,
        teams: None,
        client_registered_us: Some(chrono::Utc::now().timestamp_micros()),
        act: None,
    };
    let signing = {
        let (keys, claims) = (keys.clone(), Arc::new(claims));
        drive(args.clients, args.requests, move |_| {
            let (keys, claims) = (keys.clone(), claims.clone());
            async move {
                keys.sign(SigningAlg::ES256, ACCESS_TOKEN_TYP, &*claims).await?;
                anyhow::Ok(())
            }
        })
        .await?
    };
    let credentials = {
        let bench = bench.clone();
        drive(args.clients, args.requests, move |_| {
            let bench = bench.clone();
            async move {
                token(&bench, &[("grant_type", "client_credentials"), ("scope", "jobs")]).await?;
                anyhow::Ok(())
            }
        })
        .await?
    };
    line("in-process ES256 signing", &signing, None);
    line("token: client_credentials", &credentials, Some(credentials.rate() / signing.rate()));

    // Introspection and forward-auth of one user access token at many connections.
    let (code, verifier) = authorize_code(&bench, &cookie).await?;
    let tokens = token(
        &bench,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ],
    )
    .await?;
    let access = Arc::new(tokens["access_token"].as_str().context("access token")?.to_owned());
    let issuer = base.clone();
    let verify = {
        let (keys, access, issuer) = (keys.clone(), access.clone(), Arc::new(issuer));
        drive(args.connections, args.requests * 4, move |_| {
            let (keys, access, issuer) = (keys.clone(), access.clone(), issuer.clone());
            async move {
                keys.verify::<AccessClaims>(&access, ACCESS_TOKEN_TYP, &issuer).await?;
                anyhow::Ok(())
            }
        })
        .await?
    };
    let http = get_run(&bench, args, "/healthz", None).await?;
    let introspection = {
        let (bench, access) = (bench.clone(), access.clone());
        drive(args.connections, args.requests, move |_| {
            let (bench, access) = (bench.clone(), access.clone());
            async move {
                let answer: serde_json::Value = bench
                    .client
                    .post(format!("{}/oauth/introspect", bench.base))
                    .basic_auth(&bench.app_id, Some(&bench.app_secret))
                    .form(&[("token", access.as_str())])
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                anyhow::ensure!(answer["active"] == true, "active");
                Ok(())
            }
        })
        .await?
    };
    let forward_path = format!("/auth/verify?audience={}", bench.app_id);
    let forward = get_run(&bench, args, &forward_path, Some(&access)).await?;
    let ceiling = 1.0 / (1.0 / http.rate() + 1.0 / verify.rate());
    line("in-process verification", &verify, None);
    line("bare HTTP (GET /healthz)", &http, None);
    line("introspection", &introspection, Some(introspection.rate() / http.rate()));
    line("forward-auth (access token)", &forward, Some(forward.rate() / http.rate()));
    println!("{:<34} {ceiling:>11.0}", "composed ceiling (http + verify)");
    println!("forward-auth share of the composed ceiling: {:.0}%", forward.rate() / ceiling * 100.0);

    server.stop().await?;
    store.close().await;
    Ok(())
}

async fn bootstrap_user(bench: &Bench) -> anyhow::Result<UserId> {
    let created: serde_json::Value = bench
        .client
        .post(format!("{}/admin/users/bootstrap", bench.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"issuer": UPSTREAM, "subject": "op-bench", "email": "op@bench.example.com"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(created["user_id"].as_str().context("user_id")?.parse()?)
}

/// A code (and its PKCE verifier) through `/oauth/authorize` with a session cookie.
async fn authorize_code(bench: &Bench, cookie: &str) -> anyhow::Result<(String, String)> {
    let verifier = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha256(verifier.as_bytes()));
    let url = url::Url::parse_with_params(
        &format!("{}/oauth/authorize", bench.base),
        &[
            ("response_type", "code"),
            ("client_id", bench.app_id.as_str()),
            ("redirect_uri", REDIRECT),
            ("scope", "openid email teams"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ],
    )?;
    let response = bench.client.get(url).header("cookie", cookie).send().await?;
    let location = response.headers().get("location").context("a redirect")?.to_str()?;
    let url = url::Url::parse(location)?;
    let code = url.query_pairs().find(|(k, _)| k == "code").context("a code")?.1.into_owned();
    Ok((code, verifier))
}

async fn token(bench: &Bench, form: &[(&str, &str)]) -> anyhow::Result<serde_json::Value> {
    Ok(bench
        .client
        .post(format!("{}/oauth/token", bench.base))
        .basic_auth(&bench.app_id, Some(&bench.app_secret))
        .form(form)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

async fn get_run(bench: &Arc<Bench>, args: &OpArgs, path: &str, token: Option<&Arc<String>>) -> anyhow::Result<Run> {
    let (bench, url, token) = (bench.clone(), format!("{}{path}", bench.base), token.cloned());
    drive(args.connections, args.requests, move |_| {
        let mut request = bench.client.get(&url);
        if let Some(token) = &token {
            request = request.bearer_auth(token.as_str());
        }
        async move {
            request.send().await?.error_for_status()?;
            anyhow::Ok(())
        }
    })
    .await
}

fn new_grant(client: &str, user: UserId) -> NewGrant {
    let now = tessera::domain::now();
    NewGrant {
        id: uuid::Uuid::now_v7(),
        client_id: client.to_owned(),
        user_id: user,
        identity_id: None,
        session_hash: None,
        scope: "openid".into(),
        resource: None,
        provider: None,
        auth_time: now,
        now,
        expires_at: now + chrono::TimeDelta::days(1),
        consent_required: false,
    }
}

/// Codes written straight through the store, for the bare redemption baseline.
async fn store_codes(store: &Arc<dyn Store>, client: &str, user: UserId, n: usize) -> anyhow::Result<Vec<[u8; 32]>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let hash = sha256(format!("bench-code-{i}-{}", uuid::Uuid::new_v4()).as_bytes());
        store
            .insert_grant(
                &new_grant(client, user),
                &NewCode {
                    code_hash: hash,
                    redirect_uri: REDIRECT.into(),
                    code_challenge: None,
                    nonce: None,
                    expires_at: tessera::domain::now() + chrono::TimeDelta::minutes(10),
                },
            )
            .await?;
        out.push(hash);
    }
    Ok(out)
}

/// Refresh-token chains written straight through the store, for the bare rotation baseline.
async fn store_chains(
    store: &Arc<dyn Store>,
    client: &str,
    user: UserId,
    n: usize,
) -> anyhow::Result<Vec<Mutex<[u8; 32]>>> {
    let codes = store_codes(store, client, user, n).await?;
    let mut out = Vec::with_capacity(n);
    for code in codes {
        let refresh = sha256(uuid::Uuid::new_v4().as_bytes());
        store.redeem_code(&code, Some(&refresh), grant_at(), None).await?;
        out.push(Mutex::new(refresh));
    }
    Ok(out)
}

/// Grants judged now, sessions idle after the default timeout (the benchmark's grants are bound
/// to no session).
fn grant_at() -> tessera::store::GrantAt {
    let now = tessera::domain::now();
    tessera::store::GrantAt { now, idle_before: now - chrono::TimeDelta::days(1) }
}

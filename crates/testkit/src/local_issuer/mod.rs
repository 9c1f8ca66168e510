//! A minimal local OpenID issuer: a discovery document, a JWKS, and tokens signed with keys it
//! generates (RSA-2048 for RS256, P-256 for ES256, Ed25519 for EdDSA).
//!
//! It exists for the benchmarks (`tessera-bench`) and the test suite, which need a real issuer on
//! 127.0.0.1 whose keys can be rotated, re-keyed under the same `kid`, or made unavailable (503)
//! or unreachable (connections refused), and which counts the requests it receives.
//! `tessera serve` never uses it, and nothing in the verification path knows it exists: tokens
//! it signs are verified exactly like any other issuer's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self as sig, KeyPair};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod oauth;

pub use oauth::{StubUser, Tamper, TokenFault, UPSTREAM_SESSION_AGE_SECONDS};

/// The signature algorithms the local issuer can sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit keys.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl Alg {
    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }
}

enum Material {
    Rsa(sig::RsaKeyPair),
    Ec(sig::EcdsaKeyPair),
    Ed(sig::Ed25519KeyPair),
}

struct SigningKey {
    kid: String,
    alg: Alg,
    material: Material,
    published: bool,
}

impl SigningKey {
    fn generate(kid: &str, alg: Alg) -> Self {
        let material = match alg {
            Alg::Rs256 => Material::Rsa(sig::RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key generation")),
            Alg::Es256 => Material::Ec(
                sig::EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256 key generation"),
            ),
            Alg::EdDsa => Material::Ed(sig::Ed25519KeyPair::generate().expect("Ed25519 key generation")),
        };
        Self { kid: kid.to_owned(), alg, material, published: true }
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        match &self.material {
            Material::Rsa(key) => {
                let mut signature = vec![0; key.public_modulus_len()];
                key.sign(&sig::RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut signature).expect("RSA signing");
                signature
            }
            Material::Ec(key) => key.sign(&SystemRandom::new(), message).expect("ECDSA signing").as_ref().to_vec(),
            Material::Ed(key) => key.sign(message).as_ref().to_vec(),
        }
    }

    /// A compact JWS of `claims` under `header`, signed with this key.
    fn sign_jws(&self, header: &Value, claims: &Value) -> String {
        let message = format!("{}.{}", encode_part(header), encode_part(claims));
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(self.sign(message.as_bytes())))
    }

    fn jwk(&self) -> Value {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        match &self.material {
            Material::Rsa(key) => {
                let public = key.public_key();
                let n: Vec<u8> = public.modulus().big_endian_without_leading_zero().to_vec();
                let e: Vec<u8> = public.exponent().big_endian_without_leading_zero().to_vec();
                json!({"kty": "RSA", "kid": self.kid, "alg": "RS256", "use": "sig", "n": b64(&n), "e": b64(&e)})
            }
            Material::Ec(key) => {
                // Uncompressed point: 0x04 || X || Y.
                let point = key.public_key().as_ref();
                json!({"kty": "EC", "kid": self.kid, "alg": "ES256", "use": "sig", "crv": "P-256",
                       "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
            Material::Ed(key) => {
                json!({"kty": "OKP", "kid": self.kid, "alg": "EdDSA", "use": "sig", "crv": "Ed25519",
                       "x": b64(key.public_key().as_ref())})
            }
        }
    }
}

struct IssuerState {
    issuer: String,
    keys: RwLock<Vec<SigningKey>>,
    available: AtomicBool,
    /// While false, only the discovery document answers 503 (its keys are still served).
    discovery_available: AtomicBool,
    /// While false, JWKS requests wait (an issuer that accepts connections but hangs).
    jwks_open: tokio::sync::watch::Sender<bool>,
    max_age: AtomicU64,
    /// The discovery document's `Cache-Control: max-age` (0: none sent).
    discovery_max_age: AtomicU64,
    jwks_fetches: AtomicU64,
    discovery_fetches: AtomicU64,
    oauth: oauth::OAuthState,
}

/// A running local issuer.
pub struct LocalIssuer {
    state: Arc<IssuerState>,
    addr: SocketAddr,
    /// The server, unless [stopped](LocalIssuer::stop).
    server: Mutex<Option<Server>>,
}

/// One run of the server on the issuer's address.
struct Server {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    fn start(listener: TcpListener, state: Arc<IssuerState>) -> Self {
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .merge(oauth::routes())
            .with_state(state);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self { stop, task }
    }
}

impl std::fmt::Debug for LocalIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIssuer").field("issuer", &self.state.issuer).finish_non_exhaustive()
    }
}

impl LocalIssuer {
    /// Starts an issuer on 127.0.0.1 (port 0) with one published key per algorithm, with key ids
    /// `rsa-1`, `ec-1` and `ed-1`.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(IssuerState {
            issuer: format!("http://{addr}"),
            keys: RwLock::new(vec![
                SigningKey::generate("rsa-1", Alg::Rs256),
                SigningKey::generate("ec-1", Alg::Es256),
                SigningKey::generate("ed-1", Alg::EdDsa),
            ]),
            available: AtomicBool::new(true),
            discovery_available: AtomicBool::new(true),
            jwks_open: tokio::sync::watch::Sender::new(true),
            max_age: AtomicU64::new(300),
            discovery_max_age: AtomicU64::new(0),
            jwks_fetches: AtomicU64::new(0),
            discovery_fetches: AtomicU64::new(0),
            oauth: oauth::OAuthState::default(),
        });
        let server = Server::start(listener, state.clone());
        Ok(Self { state, addr, server: Mutex::new(Some(server)) })
    }

    /// The issuer URL (`http://127.0.0.1:PORT`).
    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }

    /// The JWKS URL.
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.state.issuer)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Standard claims for `subject`: `iss`, `sub`, `aud`, `iat`, and `exp` in five minutes.
    pub fn claims(&self, subject: &str, audience: &str) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({ "iss": self.state.issuer, "sub": subject, "aud": audience, "iat": now, "exp": now + 300 })
    }

    /// Signs `claims` with the key `kid`, with the header `{alg, kid, typ}`.
    pub fn sign(&self, kid: &str, claims: &Value) -> String {
        let alg = self.with_key(kid, |key| key.alg);
        self.sign_with_header(kid, &json!({ "alg": alg.name(), "kid": kid, "typ": "JWT" }), claims)
    }

    /// Signs `claims` with the key `kid` under an arbitrary `header`, for tests of hostile headers.
    pub fn sign_with_header(&self, kid: &str, header: &Value, claims: &Value) -> String {
        self.with_key(kid, |key| key.sign_jws(header, claims))
    }

    /// Adds a published key with a fresh key id and returns the id.
    pub fn add_key(&self, alg: Alg) -> String {
        self.push_key(alg, true)
    }

    /// Adds a key that is not published in the JWKS and returns its id. It is never published,
    /// not even for an instant: a JWKS fetch running meanwhile must not see it.
    pub fn add_unpublished_key(&self, alg: Alg) -> String {
        self.push_key(alg, false)
    }

    fn push_key(&self, alg: Alg, published: bool) -> String {
        let mut keys = self.state.keys.write().expect("keys lock");
        let kid = format!("{}-{}", alg.name().to_lowercase(), keys.len() + 1);
        keys.push(SigningKey { published, ..SigningKey::generate(&kid, alg) });
        kid
    }

    /// Publishes a second key under the id of the key `kid`, after it in the JWKS: an issuer that
    /// reuses a key id across a rotation (against RFC 7517's advice). [`LocalIssuer::sign_with_last`]
    /// signs with it.
    pub fn add_key_reusing_kid(&self, kid: &str) {
        let alg = self.with_key(kid, |key| key.alg);
        self.state.keys.write().expect("keys lock").push(SigningKey::generate(kid, alg));
    }

    /// [`LocalIssuer::sign`] with the last key published under `kid`.
    pub fn sign_with_last(&self, kid: &str, claims: &Value) -> String {
        let keys = self.state.keys.read().expect("keys lock");
        let key = keys.iter().rev().find(|k| k.kid == kid).unwrap_or_else(|| panic!("no key {kid}"));
        key.sign_jws(&json!({ "alg": key.alg.name(), "kid": kid, "typ": "JWT" }), claims)
    }

    /// Removes a key from the JWKS (and from signing).
    pub fn remove_key(&self, kid: &str) {
        self.state.keys.write().expect("keys lock").retain(|key| key.kid != kid);
    }

    /// Replaces the key material under `kid` with a new key of the same algorithm.
    pub fn rekey(&self, kid: &str) {
        self.with_key_mut(kid, |key| *key = SigningKey::generate(kid, key.alg));
    }

    /// Makes the issuer answer 503 (false) or serve again (true).
    pub fn set_available(&self, available: bool) {
        self.state.available.store(available, Ordering::SeqCst);
    }

    /// Makes JWKS requests hang until released (`true` releases them, and serves again).
    pub fn hold_jwks(&self, hold: bool) {
        self.state.jwks_open.send_replace(!hold);
    }

    /// Sets the `Cache-Control: max-age` of the JWKS.
    pub fn set_max_age(&self, seconds: u64) {
        self.state.max_age.store(seconds, Ordering::SeqCst);
    }

    /// Makes the discovery document alone answer 503 (`false`), or answer again (`true`).
    pub fn set_discovery_available(&self, available: bool) {
        self.state.discovery_available.store(available, Ordering::SeqCst);
    }

    /// Sets the `Cache-Control: max-age` of the discovery document (none by default).
    pub fn set_discovery_max_age(&self, seconds: u64) {
        self.state.discovery_max_age.store(seconds, Ordering::SeqCst);
    }

    /// How many times the JWKS was fetched.
    pub fn jwks_fetches(&self) -> u64 {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// How many times the discovery document was fetched.
    pub fn discovery_fetches(&self) -> u64 {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }

    /// Stops serving: connections are refused from now on.
    pub fn shut_down(&self) {
        if let Some(server) = self.server.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            server.task.abort();
        }
    }

    /// Stops answering until [`restart`](Self::restart), like an issuer whose host is down:
    /// returns once the listening socket is closed and every open connection (idle keep-alive
    /// ones included) has been closed, so that every later request fails to connect. Requests
    /// held by [`hold_jwks`](Self::hold_jwks) must be released first.
    pub async fn stop(&self) {
        let server = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(Server { stop, task }) = server {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    /// Answers again on the same address after [`stop`](Self::stop), with the same keys.
    pub async fn restart(&self) -> std::io::Result<()> {
        let listener = TcpListener::bind(self.addr).await?;
        let server = Server::start(listener, self.state.clone());
        if let Some(previous) = self.server.lock().unwrap_or_else(|p| p.into_inner()).replace(server) {
            previous.task.abort();
        }
        Ok(())
    }

    fn with_key<T>(&self, kid: &str, f: impl FnOnce(&SigningKey) -> T) -> T {
        let keys = self.state.keys.read().expect("keys lock");
        f(keys.iter().find(|k| k.kid == kid).unwrap_or_else(|| panic!("no key {kid}")))
    }

    fn with_key_mut<T>(&self, kid: &str, f: impl FnOnce(&mut SigningKey) -> T) -> T {
        let mut keys = self.state.keys.write().expect("keys lock");
        f(keys.iter_mut().find(|k| k.kid == kid).unwrap_or_else(|| panic!("no key {kid}")))
    }
}

impl Drop for LocalIssuer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Base64url (no padding) of a JSON value, as in a compact JWS.
pub fn encode_part(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

async fn discovery(State(state): State<Arc<IssuerState>>) -> Response {
    state.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    if !state.available.load(Ordering::SeqCst) || !state.discovery_available.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let document = Json(json!({
        "issuer": state.issuer,
        "jwks_uri": format!("{}/jwks", state.issuer),
        "authorization_endpoint": format!("{}/authorize", state.issuer),
        "token_endpoint": format!("{}/token", state.issuer),
        "userinfo_endpoint": format!("{}/userinfo", state.issuer),
        "revocation_endpoint": format!("{}/revoke", state.issuer),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
        "authorization_response_iss_parameter_supported": state.oauth.sends_iss(),
    }));
    match state.discovery_max_age.load(Ordering::SeqCst) {
        0 => document.into_response(),
        max_age => ([(header::CACHE_CONTROL, format!("public, max-age={max_age}"))], document).into_response(),
    }
}

async fn jwks(State(state): State<Arc<IssuerState>>) -> Response {
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let _ = state.jwks_open.subscribe().wait_for(|open| *open).await;
    if !state.available.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let keys: Vec<Value> =
        state.keys.read().expect("keys lock").iter().filter(|k| k.published).map(SigningKey::jwk).collect();
    let max_age = state.max_age.load(Ordering::SeqCst);
    ([(header::CACHE_CONTROL, format!("public, max-age={max_age}"))], Json(json!({ "keys": keys }))).into_response()
}

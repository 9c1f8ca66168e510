//! Issuer signing keys: one JWKS cache per issuer, shared by every request.
//!
//! - Keys are fetched at start-up (in the background) or on first use, from the configured
//!   `jwks_uri` or the one the issuer's discovery document names. Nothing else is ever fetched:
//!   `jku`, `x5u` and embedded `jwk` token headers are ignored, and redirects are not followed.
//! - The response's `Cache-Control: max-age` is honoured, clamped between `jwks.min_max_age_seconds`
//!   and [`MAX_MAX_AGE`] ([`DEFAULT_MAX_AGE`] without one). Expired keys keep being served while
//!   a background task refreshes them, so a slow or unreachable issuer never holds requests up.
//! - An unknown `kid`, or a signature that fails with the cached key (a re-key under the same
//!   `kid`), triggers a refetch. After a successful fetch for one of these kinds of miss, the
//!   next for the same kind waits the cooldown (`jwks.refetch_cooldown_seconds`), each kind its
//!   own. Refreshes are single-flight: callers that arrive while one is running wait for it and
//!   use its result.
//! - A failed fetch starts no cooldown: the next fetch, whatever its cause, waits the failure
//!   back-off instead, counted from the end of the failed one: `jwks.failure_backoff_ms`,
//!   doubled after each further consecutive failure up to `jwks.failure_backoff_max_ms`. So the
//!   keys of a rotation made during an outage are seen seconds after it ends, and forged kids
//!   cost at most one fetch per back-off while it lasts.
//! - A key is answered as not the issuer's ([`AfterMiss::CoolingDown`], hence `unknown_key`) only
//!   when the last fetch succeeded and did not list it. While the last fetch failed, a miss is
//!   [`AfterMiss::Unavailable`], refetched or not: Tessera does not know the issuer's keys then.
//! - An outage is logged once when it starts (warn) and once when it ends (info), per issuer;
//!   the requests it makes fail are counted by the token verifier
//!   (`tessera_issuer_unavailable_total`), not logged one by one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;
use url::Url;

use crate::config::{JwksConfig, endpoint_url, parse_algorithm};
use crate::crypto::sha256;
use crate::domain::Issuer;
use crate::error::ErrorChain as _;
use crate::observability::{JWKS_FETCH_FAILURES_TOTAL, JWKS_FETCHES_TOTAL, JWKS_REFETCHES_REFUSED_TOTAL};

/// Keys are refreshed at least this often, whatever the issuer says.
pub const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// How long keys are kept when the issuer gives no `max-age`.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);
/// The largest discovery or JWKS document read.
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// One verification key from an issuer's JWKS.
pub struct VerificationKey {
    /// The key id, if the JWK has one.
    pub kid: Option<String>,
    /// The algorithm the JWK is restricted to, if it names one — or, for an EC or OKP key, its
    /// curve's.
    pub alg: Option<Algorithm>,
    /// The key's family (RSA, EC, Ed).
    pub family: AlgorithmFamily,
    /// The key, ready for verification.
    pub key: DecodingKey,
    /// A digest of the key material, to tell a re-keyed `kid` from the same key.
    pub fingerprint: [u8; 32],
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl VerificationKey {
    fn accepts(&self, alg: Algorithm) -> bool {
        self.family == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

/// The keys of one issuer at one point in time.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<Arc<VerificationKey>>,
    generation: u64,
    fresh_until: Instant,
    /// Until when, on the wall clock (which, unlike `Instant`, runs on while the machine is
    /// suspended), the set may still be served expired: `max-age` plus `jwks.max_stale_seconds`
    /// after its fetch.
    usable_until: SystemTime,
}

impl KeySet {
    /// The key for a token: the one with its `kid`; without a `kid`, the only key that accepts
    /// `alg`.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Arc<VerificationKey>> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid) && k.accepts(alg)),
            None => {
                let mut candidates = self.keys.iter().filter(|k| k.accepts(alg));
                let first = candidates.next()?;
                candidates.next().is_none().then_some(first)
            }
        }
    }

    /// Every key a token with `kid` and `alg` may be signed with: those under the `kid` that
    /// accept `alg`; without a `kid`, [`find`](Self::find)'s one.
    pub fn under<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a Arc<VerificationKey>> + 'a {
        let without_kid = if kid.is_none() { self.find(None, alg) } else { None };
        self.keys.iter().filter(move |k| kid.is_some() && k.kid.as_deref() == kid && k.accepts(alg)).chain(without_kid)
    }

    /// The keys other than the one with fingerprint `tried` under the same `kid` that accept
    /// `alg`: a set may hold several (an issuer reusing a key id across a rotation, against
    /// RFC 7517's advice). None without a `kid`.
    pub fn others_under<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
        tried: &'a [u8; 32],
    ) -> impl Iterator<Item = &'a Arc<VerificationKey>> + 'a {
        self.keys
            .iter()
            .filter(move |k| kid.is_some() && k.kid.as_deref() == kid && k.accepts(alg) && k.fingerprint != *tried)
    }

    /// Whether the set may still be served at `now` on the wall clock (before `usable_until`).
    fn usable(&self, now: SystemTime) -> bool {
        now < self.usable_until
    }

    /// Whether the set holds a key with this `kid`, whatever algorithms it accepts.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// How many usable keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no usable key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Why keys could not be fetched (for logs).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request failed (connection, timeout, TLS).
    #[error("request to {url} failed")]
    Http {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The issuer answered with an error status.
    #[error("{url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// The document is larger than Tessera reads.
    #[error("{0} sent more than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge(String),
    /// The document is not what it should be.
    #[error("{url}: {problem}")]
    Invalid {
        /// The URL.
        url: String,
        /// What is wrong.
        problem: String,
    },
}

/// Why a token's key was not found in the cached set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// The token names a key id the set does not have (or has no `kid` and no single key fits).
    UnknownKey,
    /// The token's signature fails with the cached key of its `kid` (the issuer may have re-keyed
    /// under the same `kid`).
    BadSignature,
}

/// What a refetch after a [`Miss`] gave.
#[derive(Debug)]
pub enum AfterMiss {
    /// A newer key set, fetched now or by a concurrent caller.
    Newer(Arc<KeySet>),
    /// No refetch: one for this kind of miss happened within the cooldown and the last fetch
    /// succeeded, so the cached set is what the issuer publishes.
    CoolingDown,
    /// The refetch failed (the issuer cannot be reached or answered nonsense), or was not tried
    /// because the last fetch failed: the cached set may not be what the issuer publishes now.
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// No keys yet.
    Missing,
    /// The keys passed their max-age.
    Expired,
    /// A token's key was not found, or failed.
    Miss(Miss),
}

impl Reason {
    /// The `reason` label of `tessera_jwks_fetches_total`.
    fn label(self) -> &'static str {
        match self {
            Reason::Missing => "initial",
            Reason::Expired => "expired",
            Reason::Miss(Miss::UnknownKey) => "unknown_kid",
            Reason::Miss(Miss::BadSignature) => "bad_signature",
        }
    }
}

#[derive(Debug, Default)]
struct RefreshState {
    /// When the last fetch of any kind ended.
    last_attempt: Option<Instant>,
    /// How many fetches in a row failed, up to the last one (zero when it succeeded).
    failures: u32,
    /// When the last successful fetch caused by each kind of miss ended: each has its own
    /// cooldown, so that tokens with forged signatures cannot hold back the keys of a genuine
    /// rotation. Failed fetches leave them alone: they taught nothing about the keys.
    last_unknown_key: Option<Instant>,
    last_bad_signature: Option<Instant>,
    /// Whether the last fetch failed and the outage was logged: it is logged once when it
    /// starts and once when it ends, not on every failed fetch.
    down: bool,
    /// The `jwks_uri` the issuer's discovery document last named (without a configured one), and
    /// until when (`max_stale` after that reading) the keys are fetched from it while discovery
    /// itself cannot be read.
    discovered: Option<(Url, SystemTime)>,
    /// Whether the fallback to `discovered` was logged since discovery last succeeded: a
    /// discovery outage is warned of once.
    discovery_down: bool,
}

/// The key cache of one issuer. Clones share the cache.
#[derive(Debug, Clone)]
pub struct JwksCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    issuer: Issuer,
    jwks_uri: Option<Url>,
    http: reqwest::Client,
    cooldown: Duration,
    failure_backoff: Duration,
    failure_backoff_max: Duration,
    min_max_age: Duration,
    max_stale: Duration,
    current: RwLock<Option<Arc<KeySet>>>,
    refresh: tokio::sync::Mutex<RefreshState>,
    generation: AtomicU64,
    fetches: AtomicU64,
    /// Whether a background refresh is running.
    background: AtomicBool,
}

impl JwksCache {
    /// A cache for `issuer`, fetching from `jwks_uri` or through discovery.
    pub fn new(issuer: Issuer, jwks_uri: Option<Url>, http: reqwest::Client, config: &JwksConfig) -> Self {
        let inner = Inner {
            issuer,
            jwks_uri,
            http,
            cooldown: config.refetch_cooldown,
            failure_backoff: config.failure_backoff,
            failure_backoff_max: config.failure_backoff_max,
            min_max_age: config.min_max_age,
            max_stale: config.max_stale,
            current: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
            generation: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            background: AtomicBool::new(false),
        };
        Self { inner: Arc::new(inner) }
    }

    /// The current keys. Fresh ones are returned as they are. Expired ones are returned at once
    /// too, while one background task refreshes them (so a slow or unreachable issuer never holds
    /// requests up; its old keys keep working) — for `jwks.max_stale_seconds` past their expiry:
    /// later, they are no longer the issuer's word (it may have withdrawn a key), and a fetch is
    /// waited for as with none. With no keys yet, waits for a fetch; `None` when there are none
    /// (or only long-expired ones) and none can be fetched.
    pub async fn keys(&self) -> Option<Arc<KeySet>> {
        let now = SystemTime::now();
        match self.inner.current() {
            // Fresh by both clocks: after a suspend or a paused VM, the monotonic one lags.
            // (Fresh on the wall clock: `max_stale` before `usable_until`.)
            Some(set)
                if Instant::now() < set.fresh_until
                    && now.checked_add(self.inner.max_stale).is_some_and(|t| set.usable(t)) =>
            {
                Some(set)
            }
            Some(stale) if stale.usable(now) => {
                self.refresh_in_background(stale.generation);
                Some(stale)
            }
            Some(too_old) => self.waited(Reason::Expired, Some(too_old.generation)).await,
            None => self.waited(Reason::Missing, None).await,
        }
    }

    /// A fetch waited for: its keys, or `None` when there are none to be had now.
    async fn waited(&self, reason: Reason, seen: Option<u64>) -> Option<Arc<KeySet>> {
        match self.refresh(reason, seen).await {
            Refreshed::Fetched(set) | Refreshed::Newer(set) => Some(set),
            Refreshed::Refused(_) | Refreshed::Failed => None,
        }
    }

    /// After a token's key was not found in `seen`, or failed: refetches, unless the last fetch
    /// succeeded and one for the same kind of miss succeeded within the cooldown, or the last
    /// fetch failed within the failure back-off.
    pub async fn refresh_after_miss(&self, seen: &KeySet, miss: Miss) -> AfterMiss {
        match self.refresh(Reason::Miss(miss), Some(seen.generation)).await {
            Refreshed::Fetched(set) | Refreshed::Newer(set) => AfterMiss::Newer(set),
            Refreshed::Refused(Wait::CoolingDown) => AfterMiss::CoolingDown,
            // Not refetched because the issuer was failing: its keys are not known to be the
            // cached ones, whatever the cooldown says.
            Refreshed::Refused(Wait::BackingOff) | Refreshed::Failed => AfterMiss::Unavailable,
        }
    }

    /// Whether the issuer still publishes the key with this fingerprint, in keys that still
    /// count (not past `jwks.max_stale_seconds`): what a token verified with it before needs to
    /// count still. Reads the keys held, never fetches.
    pub fn still_publishes(&self, fingerprint: &[u8; 32]) -> bool {
        let current = self.inner.current.read().unwrap_or_else(|p| p.into_inner());
        current.as_ref().is_some_and(|set| {
            set.usable(SystemTime::now()) && set.keys.iter().any(|key| key.fingerprint == *fingerprint)
        })
    }

    /// How many times keys were fetched (each fetch may include a discovery request).
    pub fn fetch_count(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// A refresh a request waits for, run in a task of its own: a request ends when its client
    /// hangs up, and the fetch must not end with it, or its outcome would never reach the
    /// cooldown and the back-off (hanging up after each forged `kid` would then cost the issuer
    /// a fetch per request).
    async fn refresh(&self, reason: Reason, seen: Option<u64>) -> Refreshed {
        let inner = self.inner.clone();
        let lookup = async move { inner.refresh(reason, seen).await };
        crate::run_to_end(lookup).await.unwrap_or(Refreshed::Failed)
    }

    /// Starts a refresh in a task of its own, unless one is running (then it is the one).
    fn refresh_in_background(&self, seen: u64) {
        // While the issuer is failing, requests keep meeting expired keys: most of them fall in
        // the back-off, and are told so here without spawning anything.
        if let Ok(state) = self.inner.refresh.try_lock()
            && self.inner.refused(&state, Reason::Expired, Instant::now()).is_some()
        {
            return;
        }
        if self.inner.background.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            inner.refresh(Reason::Expired, Some(seen)).await;
            inner.background.store(false, Ordering::Release);
        });
    }
}

/// What a refresh did.
enum Refreshed {
    /// Fetched a new set.
    Fetched(Arc<KeySet>),
    /// Another caller fetched one while this one waited.
    Newer(Arc<KeySet>),
    /// Not attempted: too soon after the last one.
    Refused(Wait),
    /// Attempted and failed.
    Failed,
}

/// Why a fetch was not attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The last fetch succeeded, and one for the same kind of miss succeeded within the
    /// cooldown: the cached keys are the issuer's.
    CoolingDown,
    /// The last fetch failed, too recently to try again: nothing is known about the issuer's
    /// keys now.
    BackingOff,
}

impl Inner {
    fn current(&self) -> Option<Arc<KeySet>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether, and why, a fetch for `reason` must wait.
    fn refused(&self, state: &RefreshState, reason: Reason, now: Instant) -> Option<Wait> {
        let too_soon = |last: Option<Instant>, wait: Duration| last.is_some_and(|t| now.duration_since(t) < wait);
        if state.failures > 0 {
            // After a failure, do not hammer an unreachable issuer on every request, but try again
            // within seconds, whatever the cause: a cooldown must not hold back the keys of a
            // rotation made during the outage.
            return too_soon(state.last_attempt, self.backoff(state.failures)).then_some(Wait::BackingOff);
        }
        let cooling_down = match reason {
            // Misses are what an attacker controls: at most one refetch per kind per cooldown.
            Reason::Miss(Miss::UnknownKey) => too_soon(state.last_unknown_key, self.cooldown),
            Reason::Miss(Miss::BadSignature) => too_soon(state.last_bad_signature, self.cooldown),
            Reason::Missing | Reason::Expired => false,
        };
        cooling_down.then_some(Wait::CoolingDown)
    }

    /// The wait after `failures` consecutive failed fetches (at least one): the failure back-off,
    /// doubled after each further failure, capped.
    fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.failure_backoff.saturating_mul(1 << doublings).min(self.failure_backoff_max)
    }

    async fn refresh(&self, reason: Reason, seen: Option<u64>) -> Refreshed {
        let mut state = self.refresh.lock().await;
        // Someone refreshed while this caller waited: use their result.
        if let Some(current) = self.current()
            && Some(current.generation) != seen
        {
            return Refreshed::Newer(current);
        }
        let now = Instant::now();
        if let Some(wait) = self.refused(&state, reason, now) {
            let wait_label = match wait {
                Wait::CoolingDown => "cooldown",
                Wait::BackingOff => "backoff",
            };
            metrics::counter!(JWKS_REFETCHES_REFUSED_TOTAL, "issuer" => self.issuer.to_string(), "wait" => wait_label)
                .increment(1);
            return Refreshed::Refused(wait);
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(JWKS_FETCHES_TOTAL, "issuer" => self.issuer.to_string(), "reason" => reason.label())
            .increment(1);
        let fetched = self.fetch(&mut state).await;
        // The cooldown and the back-off run from the end of the attempt: a fetch that hangs until
        // its timeout must not let the next caller start another at once.
        let ended = Instant::now();
        state.last_attempt = Some(ended);
        match fetched {
            Ok((keys, max_age)) => {
                state.failures = 0;
                match reason {
                    Reason::Miss(Miss::UnknownKey) => state.last_unknown_key = Some(ended),
                    Reason::Miss(Miss::BadSignature) => state.last_bad_signature = Some(ended),
                    Reason::Missing | Reason::Expired => {}
                }
                if std::mem::take(&mut state.down) {
                    tracing::info!(issuer = %self.issuer, keys = keys.len(), "issuer keys can be fetched again");
                }
                let set = Arc::new(KeySet {
                    keys,
                    generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
                    fresh_until: Instant::now() + max_age,
                    usable_until: SystemTime::now() + max_age + self.max_stale,
                });
                tracing::debug!(issuer = %self.issuer, keys = set.len(), ?reason, "fetched issuer keys");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(set.clone());
                Refreshed::Fetched(set)
            }
            Err(error) => {
                metrics::counter!(JWKS_FETCH_FAILURES_TOTAL, "issuer" => self.issuer.to_string()).increment(1);
                state.failures = state.failures.saturating_add(1);
                if std::mem::replace(&mut state.down, true) {
                    tracing::debug!(issuer = %self.issuer, error = %error.chain(), ?reason, "still cannot fetch issuer keys");
                } else {
                    let cached = self.current().is_some();
                    tracing::warn!(
                        issuer = %self.issuer, error = %error.chain(), ?reason, serving_cached_keys = cached,
                        "cannot fetch issuer keys; logged again only when they can be fetched again"
                    );
                }
                Refreshed::Failed
            }
        }
    }

    /// The `jwks_uri` of the issuer's discovery document; while the document cannot be fetched
    /// (an outage of its host or its CDN, not an answer naming other keys), the one it last named
    /// within `max_stale` — as long as keys are served past their expiry —, so that a rotation
    /// of keys during such an outage is still followed, and a document gone for good is not.
    async fn discover_jwks_uri(&self, state: &mut RefreshState) -> Result<Url, FetchError> {
        let document = match fetch_discovery(&self.http, &self.issuer).await {
            Ok((document, _)) => document,
            Err(error @ (FetchError::Http { .. } | FetchError::Status { .. })) => {
                let now = SystemTime::now();
                let last = state.discovered.as_ref().filter(|(_, until)| now < *until).map(|(uri, _)| uri.clone());
                let Some(uri) = last else { return Err(error) };
                if std::mem::replace(&mut state.discovery_down, true) {
                    tracing::debug!(issuer = %self.issuer, error = %error.chain(), "still no discovery document");
                } else {
                    tracing::warn!(
                        issuer = %self.issuer, error = %error.chain(),
                        "cannot read the issuer's discovery document; fetching its keys from the jwks_uri it last \
                         named (logged again only after it was read again)"
                    );
                }
                return Ok(uri);
            }
            Err(error) => return Err(error),
        };
        let uri = discovered_endpoint(&document, "jwks_uri", &self.issuer)?
            .ok_or_else(|| FetchError::Invalid { url: self.issuer.discovery_url(), problem: "no jwks_uri".into() })?;
        // (Past the clock's range, an absurd `max_stale`: no fallback at all.)
        let until = SystemTime::now().checked_add(self.max_stale).unwrap_or(SystemTime::UNIX_EPOCH);
        state.discovered = Some((uri.clone(), until));
        state.discovery_down = false;
        Ok(uri)
    }

    /// Fetches the keys; `state`, held by the one refresh running, keeps what discovery found.
    async fn fetch(&self, state: &mut RefreshState) -> Result<(Vec<Arc<VerificationKey>>, Duration), FetchError> {
        let jwks_uri = match &self.jwks_uri {
            Some(uri) => uri.clone(),
            None => self.discover_jwks_uri(state).await?,
        };
        let (document, max_age) = fetch_json(&self.http, &jwks_uri).await?;
        let invalid = |problem: &str| FetchError::Invalid { url: jwks_uri.to_string(), problem: problem.into() };
        let entries = document.get("keys").and_then(Value::as_array).ok_or_else(|| invalid("no `keys` array"))?;
        let keys = usable_keys(entries, &self.issuer);
        // The issuer's answer all the same: one that pulled its keys (a compromise) must not have
        // them go on verifying from the cache, as they would after a failed fetch.
        if keys.is_empty() {
            tracing::warn!(issuer = %self.issuer, "the issuer publishes no usable signing key; its tokens are refused");
        }
        let max_age = max_age.unwrap_or(DEFAULT_MAX_AGE).clamp(self.min_max_age, MAX_MAX_AGE);
        Ok((keys, max_age))
    }
}

/// Reads an issuer's OpenID discovery document, after checking that it describes this issuer,
/// with the `max-age` of its `Cache-Control`.
pub(crate) async fn fetch_discovery(
    http: &reqwest::Client,
    issuer: &Issuer,
) -> Result<(Value, Option<Duration>), FetchError> {
    let url = Url::parse(&issuer.discovery_url())
        .map_err(|e| FetchError::Invalid { url: issuer.discovery_url(), problem: e.to_string() })?;
    let (document, max_age) = fetch_json(http, &url).await?;
    let named = document.get("issuer").and_then(Value::as_str).unwrap_or_default();
    if Issuer::parse(named).ok().as_ref() != Some(issuer) {
        return Err(FetchError::Invalid {
            url: url.to_string(),
            problem: format!("the document names issuer {named:?}"),
        });
    }
    Ok((document, max_age))
}

/// An endpoint named in a discovery document, validated like configured endpoints; plain
/// `http` (loopback only) only for an issuer that is itself on plain `http`: an `https` issuer's
/// document cannot move Tessera's requests to plain HTTP (which host it names is the issuer's
/// to say, as the issuer itself is the operator's).
pub(crate) fn discovered_endpoint(document: &Value, field: &str, issuer: &Issuer) -> Result<Option<Url>, FetchError> {
    let invalid = |problem: String| FetchError::Invalid { url: issuer.discovery_url(), problem };
    let Some(value) = document.get(field).and_then(Value::as_str) else {
        return Ok(None);
    };
    let url = endpoint_url(value).map_err(|e| invalid(format!("{field}: {e}")))?;
    if url.scheme() == "http" && !issuer.as_str().starts_with("http://") {
        return Err(invalid(format!("{field}: an https issuer's endpoints must use https")));
    }
    Ok(Some(url))
}

/// GETs a JSON document of at most [`MAX_DOCUMENT_BYTES`]; returns it with its `max-age`.
pub(crate) async fn fetch_json(http: &reqwest::Client, url: &Url) -> Result<(Value, Option<Duration>), FetchError> {
    let http_error = |source| FetchError::Http { url: url.to_string(), source };
    let mut response =
        http.get(url.clone()).header(reqwest::header::ACCEPT, "application/json").send().await.map_err(http_error)?;
    if !response.status().is_success() {
        return Err(FetchError::Status { url: url.to_string(), status: response.status().as_u16() });
    }
    let max_age =
        response.headers().get(reqwest::header::CACHE_CONTROL).and_then(|v| v.to_str().ok()).and_then(parse_max_age);
    let body =
        read_capped(&mut response).await.map_err(http_error)?.ok_or_else(|| FetchError::TooLarge(url.to_string()))?;
    let document = serde_json::from_slice(&body)
        .map_err(|e| FetchError::Invalid { url: url.to_string(), problem: format!("not JSON: {e}") })?;
    Ok((document, max_age))
}

/// The body of a response from an issuer or a provider, read as it comes; `None` once it runs
/// past [`MAX_DOCUMENT_BYTES`] (no answer Tessera reads from them is near that, and a peer that
/// streams more within the timeout must not make Tessera buffer it).
pub(crate) async fn read_capped(response: &mut reqwest::Response) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// `max-age` of a `Cache-Control` value; `no-store`/`no-cache` count as zero.
fn parse_max_age(value: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(seconds) = lower.strip_prefix("max-age=") {
            max_age = seconds.trim_matches('"').parse::<u64>().ok().map(Duration::from_secs);
        }
    }
    max_age
}

/// The verification keys of a JWK Set's entries: those [`parse_jwk`] keeps, less any whose key
/// material could never verify a signature (an RSA modulus under 2,048 bits, an EC point off its
/// curve: [`crate::crypto::jwk_material_problem`]), which is left out with a warning naming it —
/// its tokens are then `unknown_key`, rather than `signature_invalid` with no word of why.
fn usable_keys(entries: &[Value], issuer: &Issuer) -> Vec<Arc<VerificationKey>> {
    let mut keys = Vec::with_capacity(entries.len());
    for entry in entries {
        let (Some(key), Some(object)) = (parse_jwk(entry), entry.as_object()) else { continue };
        let curve = crate::crypto::curve_algorithm(
            entry.get("kty").and_then(Value::as_str),
            entry.get("crv").and_then(Value::as_str),
        );
        if let Some(problem) = crate::crypto::jwk_material_problem(object, curve) {
            tracing::warn!(%issuer, kid = ?key.kid, problem, "an issuer's key that could never verify a signature is left out");
            continue;
        }
        keys.push(Arc::new(key));
    }
    keys
}

/// Converts one JWK into a verification key. Keys for encryption, symmetric keys, keys for
/// algorithms outside the vocabulary and keys that do not parse are skipped.
fn parse_jwk(value: &Value) -> Option<VerificationKey> {
    if value.get("use").and_then(Value::as_str).is_some_and(|u| u != "sig") {
        return None;
    }
    // A key whose operations are listed is for verifying only if they say so (RFC 7517 4.3).
    if let Some(ops) = value.get("key_ops")
        && !ops.as_array().is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")))
    {
        return None;
    }
    let named = match value.get("alg").and_then(Value::as_str) {
        Some(name) => Some(parse_algorithm(name).ok()?),
        None => None,
    };
    // An elliptic curve key signs with one algorithm, its curve's: a P-384 key is not an ES256
    // candidate although both are EC (and a curve no algorithm here uses is no key at all).
    let curve = match crate::crypto::curve_algorithm(
        value.get("kty").and_then(Value::as_str),
        value.get("crv").and_then(Value::as_str),
    ) {
        Some(None) => return None,
        Some(curve) => curve,
        None => None,
    };
    if named.is_some() && curve.is_some() && named != curve {
        return None;
    }
    let alg = named.or(curve);
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(value.clone()).ok()?;
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    let family = key.family();
    if family == AlgorithmFamily::Hmac || alg.is_some_and(|a| a.family() != family) {
        return None;
    }
    let key = crate::crypto::verifying_key(value.as_object()?, key);
    let material: String = ["kty", "crv", "n", "e", "x", "y"]
        .iter()
        .map(|field| value.get(*field).and_then(Value::as_str).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("|");
    Some(VerificationKey {
        kid: value.get("kid").and_then(Value::as_str).map(str::to_owned),
        alg,
        family,
        key,
        fingerprint: sha256(material.as_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(parse_max_age("public, max-age=3600"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_max_age("max-age=\"60\", must-revalidate"), Some(Duration::from_secs(60)));
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("public"), None);
    }

    #[test]
    fn only_signing_keys_of_known_families_are_kept() {
        let rsa = serde_json::json!({
            "kty": "RSA", "kid": "r1", "alg": "RS256", "use": "sig", "e": "AQAB",
            "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw"
        });
        let key = parse_jwk(&rsa).expect("an RSA signing key");
        assert_eq!(key.kid.as_deref(), Some("r1"));
        assert_eq!(key.family, AlgorithmFamily::Rsa);

        let mut encryption = rsa.clone();
        encryption["use"] = "enc".into();
        assert!(parse_jwk(&encryption).is_none());
        let mut hmac_alg = rsa.clone();
        hmac_alg["alg"] = "HS256".into();
        assert!(parse_jwk(&hmac_alg).is_none());
        let mut mismatched = rsa.clone();
        mismatched["alg"] = "ES256".into();
        assert!(parse_jwk(&mismatched).is_none());
        let oct = serde_json::json!({"kty": "oct", "k": "c2VjcmV0", "kid": "s"});
        assert!(parse_jwk(&oct).is_none(), "symmetric keys are never accepted from a JWKS");
        let mut for_encrypting = rsa.clone();
        for_encrypting.as_object_mut().unwrap().remove("use");
        for_encrypting["key_ops"] = serde_json::json!(["encrypt"]);
        assert!(parse_jwk(&for_encrypting).is_none(), "key_ops without verify");
        for_encrypting["key_ops"] = serde_json::json!(["verify"]);
        assert!(parse_jwk(&for_encrypting).is_some());
    }

    #[test]
    fn an_issuer_rsa_key_written_with_sign_bytes_still_verifies() {
        let message = b"header.payload";
        let (mut jwk, signature) = crate::crypto::test_jwks::sign_byte_rsa(message);
        jwk["kid"] = "r".into();
        let key = parse_jwk(&jwk).unwrap();
        let verified = jsonwebtoken::crypto::verify(&signature, message, &key.key, Algorithm::RS256);
        assert!(verified.unwrap(), "verifies with the key as its numbers say");
    }

    #[test]
    fn an_issuer_key_that_could_never_verify_is_left_out() {
        use base64::Engine as _;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let rsa = |kid: &str, bytes: usize| serde_json::json!({"kty": "RSA", "kid": kid, "e": "AQAB", "n": b64(&vec![0xC5; bytes])});
        let issuer = Issuer::parse("https://issuer.example.com").unwrap();
        let keys = usable_keys(&[rsa("short", 128), rsa("fine", 256)], &issuer);
        assert_eq!(keys.iter().map(|k| k.kid.as_deref()).collect::<Vec<_>>(), [Some("fine")]);
        assert!(parse_jwk(&rsa("short", 128)).is_some(), "decoded all the same: the material is the problem");
    }

    /// An EC or OKP key without `alg` takes its curve's algorithm: a P-384 key is no ES256
    /// candidate, and a curve no algorithm here signs with is no key.
    #[test]
    fn a_curve_names_its_algorithm() {
        let p256 = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "e1",
            "x": "iz_tRL7Uj8xrh7pmC_VvHi3xqxbsyNaJY9HnJrPPmEI", "y": "zmNrsLB75O3B8onI3AbdjyhW0DS0zajOAVqwWwrylOQ"});
        let p384 = serde_json::json!({"kty": "EC", "crv": "P-384", "kid": "e2",
            "x": "189WHYr-6ClsbVHktRWkFGlHtLRGWoWZbJzgtOp8FO2blsTsqdL_mzGsQKdxFK1U",
            "y": "nPbiaZyj9f_DXSIKmARKq1SuY9HsbfN_HNQwnWGQTU78wQ1YLJ6zp__dTSAeup5E"});
        let ed = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": "d1",
            "x": "J_ZK0QaypaP-xVMLmyY-nXQc0mCCNS6Kpm5bM2Jdy8s"});
        let x25519 = serde_json::json!({"kty": "OKP", "crv": "X25519", "kid": "x1",
            "x": "8xQ87DxTj-jlOa80zbpBDaUhKLvMdVAywgs6u31S0XM"});
        let p256_key = parse_jwk(&p256).unwrap();
        assert!(p256_key.accepts(Algorithm::ES256) && !p256_key.accepts(Algorithm::ES384));
        let p384_key = parse_jwk(&p384).unwrap();
        assert!(p384_key.accepts(Algorithm::ES384) && !p384_key.accepts(Algorithm::ES256));
        assert!(parse_jwk(&ed).unwrap().accepts(Algorithm::EdDSA));
        assert!(parse_jwk(&x25519).is_none(), "a key-agreement curve");
        let mut misnamed = p384.clone();
        misnamed["alg"] = "ES256".into();
        assert!(parse_jwk(&misnamed).is_none(), "an alg its curve does not sign with");
        let set = KeySet {
            keys: [p256, p384].iter().map(|k| Arc::new(parse_jwk(k).unwrap())).collect(),
            generation: 1,
            fresh_until: Instant::now(),
            usable_until: SystemTime::now(),
        };
        assert_eq!(set.find(None, Algorithm::ES256).and_then(|k| k.kid.as_deref()), Some("e1"), "kid-less: the one");
        assert!(set.find(Some("e2"), Algorithm::ES256).is_none(), "the P-384 key is not an ES256 one");
    }
}

#[cfg(test)]
mod endpoint_tests {
    use super::*;

    #[test]
    fn discovered_endpoints_use_https_unless_the_issuer_does_not() {
        let document = serde_json::json!({
            "jwks_uri": "http://127.0.0.1:9000/keys",
            "token_endpoint": "https://idp.example.com/token",
        });
        let secure = Issuer::parse("https://idp.example.com").unwrap();
        assert!(discovered_endpoint(&document, "jwks_uri", &secure).is_err(), "no plain http behind an https issuer");
        let token = discovered_endpoint(&document, "token_endpoint", &secure).unwrap().unwrap();
        assert_eq!(token.as_str(), "https://idp.example.com/token");
        assert_eq!(discovered_endpoint(&document, "userinfo_endpoint", &secure).unwrap(), None);
        let local = Issuer::parse("http://127.0.0.1:9000").unwrap();
        let keys = discovered_endpoint(&document, "jwks_uri", &local).unwrap().unwrap();
        assert_eq!(keys.as_str(), "http://127.0.0.1:9000/keys", "a loopback issuer on http keeps its endpoints");
    }
}

#[cfg(test)]
mod capped_tests {
    use axum::extract::Path;

    use super::*;

    #[tokio::test]
    async fn answers_past_the_cap_are_not_read_whole() {
        let app = axum::Router::new()
            .route("/{size}", axum::routing::get(|Path(size): Path<usize>| async move { vec![b'x'; size] }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();
        for (size, whole) in [(0, true), (MAX_DOCUMENT_BYTES, true), (MAX_DOCUMENT_BYTES + 1, false), (8 << 20, false)]
        {
            let mut response = client.get(format!("http://{addr}/{size}")).send().await.unwrap();
            let body = read_capped(&mut response).await.unwrap();
            assert_eq!(body.map(|b| b.len()), whole.then_some(size), "{size} bytes");
        }
    }
}

#[cfg(test)]
mod wait_tests {
    use super::*;

    fn cache() -> JwksCache {
        let config = JwksConfig {
            refetch_cooldown: Duration::from_secs(30),
            failure_backoff: Duration::from_secs(1),
            failure_backoff_max: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(5),
            min_max_age: Duration::from_secs(60),
            max_stale: Duration::from_secs(86_400),
        };
        JwksCache::new(Issuer::parse("https://issuer.example.com").unwrap(), None, reqwest::Client::new(), &config)
    }

    #[test]
    fn the_failure_back_off_doubles_up_to_its_cap() {
        let cache = cache();
        let waits: Vec<_> = [1, 2, 3, 4, 5, 40, u32::MAX].map(|n| cache.inner.backoff(n).as_secs()).into();
        assert_eq!(waits, [1, 2, 4, 5, 5, 5, 5]);
    }

    #[test]
    fn after_a_failure_every_fetch_waits_the_back_off_and_only_the_back_off() {
        let cache = cache();
        let now = Instant::now();
        let ago = |seconds| now.checked_sub(Duration::from_secs(seconds)).unwrap();
        let unknown = Reason::Miss(Miss::UnknownKey);
        // An unknown-kid fetch succeeded 10 s ago: its cooldown runs, and it is the truth.
        let mut state =
            RefreshState { last_attempt: Some(ago(10)), last_unknown_key: Some(ago(10)), ..Default::default() };
        assert_eq!(cache.inner.refused(&state, unknown, now), Some(Wait::CoolingDown));
        assert_eq!(cache.inner.refused(&state, Reason::Miss(Miss::BadSignature), now), None);
        assert_eq!(cache.inner.refused(&state, Reason::Expired, now), None);
        // A fetch failed since, just now: every cause waits the back-off, and nothing is known.
        state.last_attempt = Some(now);
        state.failures = 1;
        for reason in [unknown, Reason::Miss(Miss::BadSignature), Reason::Expired, Reason::Missing] {
            assert_eq!(cache.inner.refused(&state, reason, now), Some(Wait::BackingOff), "{reason:?}");
        }
        // Past the back-off, the next fetch goes ahead, although the cooldown still runs.
        state.last_attempt = Some(ago(2));
        assert_eq!(cache.inner.refused(&state, unknown, now), None);
        // After three failures in a row, the back-off is 4 s.
        state.failures = 3;
        assert_eq!(cache.inner.refused(&state, unknown, now), Some(Wait::BackingOff));
        state.last_attempt = Some(ago(4));
        assert_eq!(cache.inner.refused(&state, unknown, now), None);
    }
}

#[cfg(test)]
mod outage_tests {
    use super::*;
    use crate::telemetry::capture::capture;
    use tessera_testkit::local_issuer::LocalIssuer;

    /// A cache of `local`'s keys that never waits between fetches, serving expired keys for
    /// `max_stale`.
    fn eager(local: &LocalIssuer, max_stale: Duration) -> JwksCache {
        let jwks_uri = Url::parse(&local.jwks_uri()).unwrap();
        eager_of(local, Some(jwks_uri), max_stale)
    }

    /// [`eager`], with the given `jwks_uri` (`None`: through discovery).
    fn eager_of(local: &LocalIssuer, jwks_uri: Option<Url>, max_stale: Duration) -> JwksCache {
        let config = JwksConfig {
            refetch_cooldown: Duration::ZERO,
            failure_backoff: Duration::ZERO,
            failure_backoff_max: Duration::ZERO,
            fetch_timeout: Duration::from_secs(5),
            min_max_age: Duration::ZERO,
            max_stale,
        };
        JwksCache::new(Issuer::parse(local.issuer()).unwrap(), jwks_uri, reqwest::Client::new(), &config)
    }

    /// After a suspend (or a paused VM), the monotonic clock lags: keys past their `max-age` by
    /// the wall clock are refreshed, in the background, though the monotonic clock calls them
    /// fresh.
    #[tokio::test]
    async fn keys_stale_by_the_wall_clock_are_refreshed_after_a_suspend() {
        let local = LocalIssuer::start().await.unwrap();
        let cache = eager(&local, Duration::from_secs(86_400));
        let fetched = cache.keys().await.expect("keys");
        assert_eq!(cache.fetch_count(), 1);
        // As if suspended for a day: fresh for an hour still by the monotonic clock, but by the
        // wall clock only within `max_stale` of its end.
        let suspended = KeySet {
            keys: fetched.keys.clone(),
            generation: fetched.generation,
            fresh_until: Instant::now() + Duration::from_secs(3600),
            usable_until: SystemTime::now() + Duration::from_secs(60),
        };
        *cache.inner.current.write().unwrap() = Some(Arc::new(suspended));
        assert!(cache.keys().await.is_some(), "served meanwhile");
        for _ in 0..250 {
            if cache.fetch_count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(cache.fetch_count(), 2, "refetched in the background");
    }

    #[tokio::test]
    async fn an_outage_is_logged_once_when_it_starts_and_once_when_it_ends() {
        let logs = capture();
        let local = LocalIssuer::start().await.unwrap();
        let cache = eager(&local, Duration::from_secs(86_400));

        // Down from the start: every request fails, the outage is logged once.
        local.set_available(false);
        for _ in 0..5 {
            assert!(cache.keys().await.is_none());
        }
        assert_eq!(logs.lines("WARN").len(), 1, "{}", logs.text());
        assert!(logs.lines("INFO").is_empty(), "{}", logs.text());

        // Back: logged once.
        local.set_available(true);
        let set = cache.keys().await.expect("keys");
        let AfterMiss::Newer(set) = cache.refresh_after_miss(&set, Miss::UnknownKey).await else {
            panic!("refetched");
        };
        assert_eq!(logs.lines("INFO").len(), 1, "{}", logs.text());

        // A second outage, with keys cached, is a second pair of lines.
        local.set_available(false);
        for _ in 0..3 {
            assert!(matches!(cache.refresh_after_miss(&set, Miss::UnknownKey).await, AfterMiss::Unavailable));
        }
        local.set_available(true);
        assert!(matches!(cache.refresh_after_miss(&set, Miss::UnknownKey).await, AfterMiss::Newer(_)));
        let (warnings, back) = (logs.lines("WARN"), logs.lines("INFO"));
        assert_eq!((warnings.len(), back.len()), (2, 2), "{}", logs.text());
        assert!(warnings.iter().chain(&back).all(|line| line.contains(local.issuer())), "each names its issuer");
    }

    /// An issuer found through discovery whose discovery document is down while its keys are
    /// served (a CDN in front of one, not the other): a key rotated in meanwhile is fetched from
    /// the `jwks_uri` the document last named. Never having read the document, there is none.
    #[tokio::test]
    async fn a_discovery_outage_still_follows_a_key_rotation() {
        let logs = capture();
        let local = LocalIssuer::start().await.unwrap();
        let cache = eager_of(&local, None, Duration::from_secs(3600));
        let never_discovered = eager_of(&local, None, Duration::from_secs(3600));
        // Past `max_stale` since the document was read: it is gone for good, as far as this
        // cache can tell.
        let long_gone = eager_of(&local, None, Duration::ZERO);
        let set = cache.keys().await.expect("keys, through discovery");
        let gone_set = long_gone.keys().await.expect("keys, through discovery");
        local.set_discovery_available(false);
        assert!(never_discovered.keys().await.is_none(), "no jwks_uri known");
        let rotated = local.add_key(tessera_testkit::local_issuer::Alg::Es256);
        let AfterMiss::Newer(set) = cache.refresh_after_miss(&set, Miss::UnknownKey).await else {
            panic!("the rotated keys, from the last jwks_uri");
        };
        assert!(set.has_kid(&rotated), "the new key");
        let rotated_again = local.add_key(tessera_testkit::local_issuer::Alg::Es256);
        let AfterMiss::Newer(set) = cache.refresh_after_miss(&set, Miss::UnknownKey).await else {
            panic!("the keys again, from the last jwks_uri");
        };
        assert!(set.has_kid(&rotated_again));
        let warned = logs.lines("WARN").into_iter().filter(|l| l.contains("discovery document")).count();
        assert_eq!(warned, 1, "one warning for the outage: {}", logs.text());
        assert!(matches!(long_gone.refresh_after_miss(&gone_set, Miss::UnknownKey).await, AfterMiss::Unavailable));
        assert_eq!(local.discovery_fetches(), 6, "discovery was tried each time");
    }

    /// Expired keys are served through an outage for `jwks.max_stale_seconds`, and no longer: a
    /// key the issuer withdrew meanwhile must stop verifying some time.
    #[tokio::test]
    async fn expired_keys_are_served_through_an_outage_for_max_stale_only() {
        // Its failed fetches log at the call sites the test above captures: one at a time.
        let _logs = capture();
        let local = LocalIssuer::start().await.unwrap();
        local.set_max_age(0);
        let (lenient, strict) = (eager(&local, Duration::from_secs(3600)), eager(&local, Duration::ZERO));
        assert!(lenient.keys().await.is_some() && strict.keys().await.is_some(), "fetched");
        local.set_available(false);
        assert!(lenient.keys().await.is_some_and(|set| !set.is_empty()), "expired, within max_stale: served");
        assert!(strict.keys().await.is_none(), "expired past max_stale, and the issuer down: none");
        local.set_available(true);
        assert!(strict.keys().await.is_some(), "fetched again");
    }
}

//! Verification of upstream JWTs through the issuer's keys.
//!
//! Order of checks, each with its own [`TokenError`]: the token's shape (a three-part JWS, at most
//! [`MAX_TOKEN_BYTES`], no `crit` header); its `iss`, normalised, on the allow-list; its `alg` on
//! that issuer's allow-list (never `none`, never HMAC); a key for its `kid` in the issuer's JWKS
//! (refetched once, rate-limited, when unknown); the signature (refetched once more when the
//! cached key fails, for a re-key under the same `kid`); then `exp`, `nbf` and `iat` (when present:
//! a number, not in the future) with the issuer's leeway, and `aud` against the issuer's
//! audiences. `jku`, `x5u` and `jwk` headers are ignored.
//!
//! Verified tokens are cached by SHA-256 digest until the sooner of their `exp` and the cache
//! lifetime, so a token seen again skips the signature check. The cache holds what the token
//! says, never what Tessera knows about the user: that is resolved on every request. It is a
//! performance cache only: one set of claims can have several valid strings (an ES256
//! signature's high-s twin verifies too, and is accepted), so nothing may decide on the token
//! string. Nothing needs purging from it: whom an identity belongs to is looked up in the
//! [`PrincipalCache`](crate::service::principals::PrincipalCache) on every use of the token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Datelike as _, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::issuers::{IssuerEntry, IssuerRegistry};
use super::jwks::{AfterMiss, JwksCache, Miss, VerificationKey};
use crate::cache::TtlCache;
use crate::config::parse_algorithm;
use crate::crypto::sha256;
use crate::domain::{DisplayName, Email, Issuer, Subject};
use crate::error::{ErrorCode, PublicError};

/// The longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The counter of token validations refused with `issuer_unavailable`, labelled `issuer`.
pub const ISSUER_UNAVAILABLE_TOTAL: &str = "tessera_issuer_unavailable_total";

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a well-formed JWS, or a required claim is missing or of the wrong type.
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    /// The `iss` is not an allowed issuer.
    #[error("the token's issuer is not allowed")]
    IssuerNotAllowed,
    /// The `alg` is not accepted for this issuer.
    #[error("the token's algorithm is not allowed")]
    AlgorithmNotAllowed,
    /// No key of the issuer matches the token's `kid`.
    #[error("the token was signed with a key the issuer does not publish")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    SignatureInvalid,
    /// Past `exp` (plus leeway).
    #[error("the token has expired")]
    Expired,
    /// Before `nbf` (minus leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// No accepted audience in `aud`.
    #[error("the token is not meant for this audience")]
    AudienceMismatch,
    /// The issuer's keys cannot be fetched, and none are cached or the token's `kid` is not
    /// among them (Tessera cannot know whether the issuer publishes it).
    #[error("the issuer's keys are unavailable")]
    IssuerUnavailable,
}

impl PublicError for TokenError {
    fn code(&self) -> ErrorCode {
        match self {
            TokenError::Malformed(_) => ErrorCode::MalformedToken,
            TokenError::IssuerNotAllowed => ErrorCode::IssuerNotAllowed,
            TokenError::AlgorithmNotAllowed => ErrorCode::AlgorithmNotAllowed,
            TokenError::UnknownKey => ErrorCode::UnknownKey,
            TokenError::SignatureInvalid => ErrorCode::SignatureInvalid,
            TokenError::Expired => ErrorCode::TokenExpired,
            TokenError::NotYetValid => ErrorCode::TokenNotYetValid,
            TokenError::AudienceMismatch => ErrorCode::AudienceMismatch,
            TokenError::IssuerUnavailable => ErrorCode::IssuerUnavailable,
        }
    }
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The normalised issuer.
    pub issuer: Issuer,
    /// The issuer's configured name.
    pub provider: String,
    /// Whether the issuer provisions first-time subjects.
    pub jit: bool,
    /// The subject.
    pub subject: Subject,
    /// The email claim, when present and valid.
    pub email: Option<Email>,
    /// The `email_verified` claim (`true` or `"true"`).
    pub email_verified: bool,
    /// `name`, or `given_name` and `family_name`, when present and valid.
    pub name: Option<DisplayName>,
    /// The `exp` claim.
    pub expires_at: DateTime<Utc>,
    /// The issuer's configured audiences the token's `aud` names (at least one; none for one of
    /// Tessera's own tokens, whose `aud` is checked apart).
    pub audiences: Vec<String>,
    /// Whether it may act for its user on Tessera's own API (one of its audiences is among the
    /// issuer's `api_audiences`, or those are not narrowed).
    pub acts_on_api: bool,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<Value>,
}

#[derive(Deserialize)]
struct PeekedClaims {
    iss: Option<Value>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Value,
    exp: Value,
    /// Checked by the verification (which refuses a token without it) before it is read here.
    #[serde(default)]
    aud: Value,
    iat: Option<Value>,
    email: Option<Value>,
    email_verified: Option<Value>,
    name: Option<Value>,
    given_name: Option<Value>,
    family_name: Option<Value>,
}

/// Verified tokens by SHA-256 digest; shared with the
/// [`PrincipalCache`](crate::service::principals::PrincipalCache), which empties it with itself
/// when everything is forgotten.
pub type TokenCache = TtlCache<[u8; 32], CachedToken>;

/// A verified token as the [`TokenCache`] holds it: what it says, and the issuer key that
/// verified it, so that a hit counts only while the issuer still publishes that key.
#[derive(Debug, Clone)]
pub struct CachedToken {
    token: Arc<VerifiedToken>,
    signed_with: Option<(JwksCache, [u8; 32])>,
}

impl CachedToken {
    /// A token kept without the key that verified it, which a hit then does not look for (for
    /// measuring the cache).
    pub fn unkeyed(token: Arc<VerifiedToken>) -> Self {
        Self { token, signed_with: None }
    }

    /// What the token says, while the key that verified it still counts: the issuer still
    /// publishes it, in keys not past `jwks.max_stale_seconds` (a key pulled, or an outage
    /// past that, ends a cached token as it ends a new one).
    fn counted(&self) -> Option<Arc<VerifiedToken>> {
        match &self.signed_with {
            Some((keys, fingerprint)) if !keys.still_publishes(fingerprint) => None,
            _ => Some(self.token.clone()),
        }
    }
}

/// Verifies tokens against the configured issuers.
#[derive(Debug)]
pub struct TokenVerifier {
    issuers: Arc<IssuerRegistry>,
    cache: Arc<TokenCache>,
    cache_ttl: Duration,
}

impl TokenVerifier {
    /// A verifier over `issuers`, keeping verified tokens in `cache` for at most `cache_ttl`.
    pub fn new(issuers: Arc<IssuerRegistry>, cache: Arc<TokenCache>, cache_ttl: Duration) -> Self {
        Self { issuers, cache, cache_ttl }
    }

    /// Verifies a compact JWS and returns what it says.
    pub async fn verify(&self, token: &str) -> Result<Arc<VerifiedToken>, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed("the token is too long"));
        }
        let digest = sha256(token.as_bytes());
        let now = Instant::now();
        // A hit also before its `exp` by the wall clock: the cache's deadline is on the monotonic
        // clock, which stands still while the machine is suspended or paused. (Within the leeway
        // past `exp`, the token is verified again, which applies the leeway.)
        if let Some(hit) = self.cache.get(&digest, now) {
            match hit.counted() {
                Some(token) if crate::domain::now() < token.expires_at => return Ok(token),
                // Its key withdrawn, or the issuer's keys too old to vouch for it: verified
                // again, which says why it is refused (or finds the key back).
                None => self.cache.remove_key(&digest),
                Some(_) => {}
            }
        }
        let issuer = token_issuer(token)?;
        let entry = self.issuers.get(&issuer).ok_or(TokenError::IssuerNotAllowed)?;
        // An issuer without audiences only bootstraps users: its tokens are refused before its
        // keys are looked up (it need not be reachable, and outsiders make no fetches with it).
        if entry.config.audiences.is_empty() {
            return Err(TokenError::AudienceMismatch);
        }
        let rules = Rules {
            algorithms: &entry.config.algorithms,
            audiences: &entry.config.audiences,
            leeway: entry.config.leeway,
        };
        let (claims, key): (Claims, _) = verify_signed(token, &entry.keys, &rules).await.inspect_err(|error| {
            if *error == TokenError::IssuerUnavailable {
                // The outage itself is logged once per change by the key cache; each request it
                // refuses is counted here.
                metrics::counter!(ISSUER_UNAVAILABLE_TOTAL, "issuer" => entry.config.issuer.to_string()).increment(1);
            }
        })?;
        let verified = Arc::new(claims_into_token(claims, entry)?);
        let expires_in = (verified.expires_at - Utc::now()).to_std().unwrap_or_default();
        let cached = CachedToken { token: verified.clone(), signed_with: Some((entry.keys.clone(), key.fingerprint)) };
        self.cache.insert(digest, cached, now + expires_in.min(self.cache_ttl), now);
        Ok(verified)
    }

    /// The allow-listed issuer a token names, unverified; `None` when it names none or one off the
    /// allow-list (whose name is the sender's choice, fit neither for logs nor for counters).
    pub fn known_issuer(&self, token: &str) -> Option<Issuer> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        token_issuer(token).ok().filter(|issuer| self.issuers.get(issuer).is_some())
    }
}

/// What a signed token must satisfy once its issuer is established.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules<'a> {
    /// Accepted algorithms.
    pub algorithms: &'a [Algorithm],
    /// Accepted audiences (one must be in `aud`; none accepts no token).
    pub audiences: &'a [String],
    /// Clock-skew allowance for `exp` and `nbf`.
    pub leeway: Duration,
}

/// The three parts of a compact JWS, after the shape checks.
fn split_token(token: &str) -> Result<(RawHeader, &str), TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("a token has three dot-separated parts"));
    };
    let header: RawHeader = decode_part(header).ok_or(TokenError::Malformed("the header is not valid"))?;
    if header.crit.is_some() {
        return Err(TokenError::Malformed("critical header extensions are not supported"));
    }
    Ok((header, payload))
}

/// The (unverified, normalised) issuer of a token, to know which keys to verify it with.
pub(crate) fn token_issuer(token: &str) -> Result<Issuer, TokenError> {
    let (_, payload) = split_token(token)?;
    let peeked: PeekedClaims = decode_part(payload).ok_or(TokenError::Malformed("the payload is not valid"))?;
    let iss = peeked.iss.as_ref().and_then(Value::as_str).ok_or(TokenError::Malformed("the token has no iss"))?;
    Issuer::parse(iss).map_err(|_| TokenError::IssuerNotAllowed)
}

/// One base64url part of a compact JWS, decoded as JSON; `None` when it is not that.
pub(crate) fn decode_part<T: for<'de> Deserialize<'de>>(part: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Verifies a compact JWS whose issuer the caller has established, with that issuer's `keys`:
/// the `alg` on the list, a key for the `kid` (one rate-limited refetch when unknown), the
/// signature (one more when the cached key fails, for a re-key under the same `kid`), then
/// `exp`, `nbf`, `iat` and `aud`. Returns the claims, and the key that verified them.
pub(crate) async fn verify_signed<C: DeserializeOwned + IssuedAt>(
    token: &str,
    keys: &JwksCache,
    rules: &Rules<'_>,
) -> Result<(C, Arc<VerificationKey>), TokenError> {
    let (header, _) = split_token(token)?;
    let alg = parse_algorithm(&header.alg).map_err(|_| TokenError::AlgorithmNotAllowed)?;
    if !rules.algorithms.contains(&alg) {
        return Err(TokenError::AlgorithmNotAllowed);
    }
    let kid = header.kid.as_deref();
    // The key of `set` for the token; `Ok(None)` when the set does not publish its kid. A kid
    // published for another algorithm (an ES256 header on an RSA key's id) refuses the token
    // for its algorithm, without a refetch that could not help. (No kid where several keys fit
    // is a miss: the issuer may have dropped all but one since.)
    let key_in = |set: &super::jwks::KeySet| match set.find(kid, alg) {
        Some(key) => Ok(Some(key.clone())),
        None if kid.is_some_and(|kid| set.has_kid(kid)) => Err(TokenError::AlgorithmNotAllowed),
        None => Ok(None),
    };
    let mut set = keys.keys().await.ok_or(TokenError::IssuerUnavailable)?;
    let key = match key_in(&set)? {
        Some(key) => key,
        None => {
            set = match keys.refresh_after_miss(&set, Miss::UnknownKey).await {
                AfterMiss::Newer(set) => set,
                // The last fetch succeeded without this kid: the issuer does not publish it.
                AfterMiss::CoolingDown => return Err(TokenError::UnknownKey),
                // The key may well exist: the issuer cannot say so now.
                AfterMiss::Unavailable => return Err(TokenError::IssuerUnavailable),
            };
            key_in(&set)?.ok_or(TokenError::UnknownKey)?
        }
    };
    let mut validation = Validation::new(alg);
    validation.leeway = rules.leeway.as_secs();
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "sub", "aud"]);
    validation.set_audience(rules.audiences);
    let (answer, key) = match jsonwebtoken::decode::<C>(token, &key.key, &validation) {
        // Another key of the set under the same kid (an issuer that reuses one across a
        // rotation): tried before a refetch, which would find the same set.
        Err(e) if *e.kind() == ErrorKind::InvalidSignature => {
            match first_verifying(token, set.others_under(kid, alg, &key.fingerprint), &validation) {
                Some(verified) => verified,
                None => {
                    // The issuer may have re-keyed under the same kid: look once more,
                    // rate-limited. A signature that fails with every key of its kid is most
                    // likely just bad: an outage does not change that answer.
                    let AfterMiss::Newer(fresh) = keys.refresh_after_miss(&set, Miss::BadSignature).await else {
                        return Err(TokenError::SignatureInvalid);
                    };
                    // The fresh set no longer publishes the kid: as for any token under it now.
                    if kid.is_some() && key_in(&fresh)?.is_none() {
                        return Err(TokenError::UnknownKey);
                    }
                    // Every key under the kid that the fresh set holds and the cached one did not.
                    let tried = |k: &VerificationKey| set.under(kid, alg).any(|o| o.fingerprint == k.fingerprint);
                    first_verifying(token, fresh.under(kid, alg).filter(|k| !tried(k)), &validation)
                        .ok_or(TokenError::SignatureInvalid)?
                }
            }
        }
        other => (other, key),
    };
    let claims = answer.map_err(map_error)?.claims;
    check_issued_at(claims.issued_at(), rules.leeway, Utc::now())?;
    Ok((claims, key))
}

/// The answer of the first of `keys` whose signature the token's verifies, with that key; `None`
/// when it verifies with none of them.
fn first_verifying<'a, C: DeserializeOwned>(
    token: &str,
    mut keys: impl Iterator<Item = &'a Arc<VerificationKey>>,
    validation: &Validation,
) -> Option<(jsonwebtoken::errors::Result<jsonwebtoken::TokenData<C>>, Arc<VerificationKey>)> {
    keys.find_map(|key| match jsonwebtoken::decode::<C>(token, &key.key, validation) {
        Err(e) if *e.kind() == ErrorKind::InvalidSignature => None,
        answer => Some((answer, key.clone())),
    })
}

/// Claims that may carry `iat` (seconds since the epoch), which [`verify_signed`] checks.
pub(crate) trait IssuedAt {
    /// The `iat` claim as sent, if any.
    fn issued_at(&self) -> Option<&Value>;
}

impl IssuedAt for Claims {
    fn issued_at(&self) -> Option<&Value> {
        self.iat.as_ref()
    }
}

/// `iat`, where a token states it, must be a number and not lie in the future by more than
/// `leeway`: a token stamped as issued later than now was minted by a clock or a signer that is
/// wrong, and its `exp` cannot be trusted to bound it either (jsonwebtoken checks `exp` and `nbf`
/// only).
fn check_issued_at(iat: Option<&Value>, leeway: Duration, now: DateTime<Utc>) -> Result<(), TokenError> {
    let Some(iat) = iat else {
        return Ok(());
    };
    let iat = iat.as_f64().filter(|v| v.is_finite()).ok_or(TokenError::Malformed("iat is not a number"))?;
    if iat > now.timestamp() as f64 + leeway.as_secs_f64() {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

fn map_error(error: jsonwebtoken::errors::Error) -> TokenError {
    match error.kind() {
        ErrorKind::InvalidSignature => TokenError::SignatureInvalid,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::AudienceMismatch,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => TokenError::AudienceMismatch,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            TokenError::AlgorithmNotAllowed
        }
        ErrorKind::InvalidIssuer => TokenError::IssuerNotAllowed,
        ErrorKind::MissingRequiredClaim(_) => TokenError::Malformed("a required claim (exp, sub) is missing"),
        _ => TokenError::Malformed("the token's claims are not valid"),
    }
}

fn claims_into_token(claims: Claims, entry: &IssuerEntry) -> Result<VerifiedToken, TokenError> {
    let sub = claims.sub.as_str().ok_or(TokenError::Malformed("sub is not a string"))?;
    let subject = Subject::parse(sub).map_err(|_| TokenError::Malformed("sub is not acceptable"))?;
    let exp = claims.exp.as_f64().ok_or(TokenError::Malformed("exp is not a number"))?;
    // Within RFC 3339's years (to 9999): an `exp` in milliseconds, an issuer's slip, would have
    // the token live for ever, and its `expires_at` not be an RFC 3339 time.
    let expires_at = DateTime::from_timestamp(exp.floor() as i64, 0)
        .filter(|at| at.year() <= 9999)
        .ok_or(TokenError::Malformed("exp is out of range"))?;
    let text = |value: &Option<Value>| value.as_ref().and_then(Value::as_str).map(str::to_owned);
    let email = text(&claims.email).and_then(|e| Email::parse(&e).ok());
    let email_verified = email.is_some()
        && match &claims.email_verified {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        };
    let full_name = text(&claims.name).or_else(|| {
        let parts: Vec<String> = [text(&claims.given_name), text(&claims.family_name)].into_iter().flatten().collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    });
    let name = DisplayName::parse_optional(full_name.as_deref()).ok().flatten();
    // Of the configured audiences, those `aud` names (one string or an array: verified to hold
    // one of them already); only those are kept, so that a token's long list costs no memory.
    let named = |audience: &String| match &claims.aud {
        Value::String(aud) => aud == audience,
        Value::Array(auds) => auds.iter().any(|a| a.as_str() == Some(audience.as_str())),
        _ => false,
    };
    let audiences: Vec<String> = entry.config.audiences.iter().filter(|a| named(a)).cloned().collect();
    let acts_on_api = entry.config.api_audiences.as_ref().is_none_or(|api| audiences.iter().any(|a| api.contains(a)));
    Ok(VerifiedToken {
        issuer: entry.config.issuer.clone(),
        provider: entry.config.name.clone(),
        jit: entry.config.jit,
        subject,
        email,
        email_verified,
        name,
        expires_at,
        audiences,
        acts_on_api,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
    use serde_json::json;

    use super::*;
    use crate::config::{IssuerConfig, JwksConfig};
    use crate::telemetry::capture::capture;
    use crate::upstream::issuers::outbound_client;

    #[test]
    fn iat_is_a_number_not_in_the_future_beyond_the_leeway() {
        let now = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let leeway = Duration::from_secs(60);
        let at = |v: Value| check_issued_at(Some(&v), leeway, now);
        assert_eq!(check_issued_at(None, leeway, now), Ok(()));
        assert_eq!(at(json!(999_000)), Ok(()));
        assert_eq!(at(json!(1_000_060)), Ok(()), "within the leeway");
        assert_eq!(at(json!(1_000_060.5)), Err(TokenError::NotYetValid));
        assert_eq!(at(json!(1_000_061)), Err(TokenError::NotYetValid));
        assert_eq!(at(json!("999000")), Err(TokenError::Malformed("iat is not a number")));
        assert_eq!(at(json!(null)), Err(TokenError::Malformed("iat is not a number")));
    }

    /// A counter handed out: its name, its labels and its value.
    type Registered = (String, Vec<(String, String)>, Arc<AtomicU64>);

    /// A recorder keeping every counter it hands out.
    #[derive(Default)]
    struct Counters(Mutex<Vec<Registered>>);

    impl Counters {
        fn total(&self, name: &str, label: (&str, &str)) -> u64 {
            let counters = self.0.lock().unwrap();
            let matching = counters
                .iter()
                .filter(|(n, labels, _)| n == name && labels.iter().any(|(k, v)| (k.as_str(), v.as_str()) == label));
            matching.map(|(_, _, value)| value.load(Ordering::Relaxed)).sum()
        }
    }

    impl Recorder for Counters {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let value = Arc::new(AtomicU64::new(0));
            let labels = key.labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
            self.0.lock().unwrap().push((key.name().to_owned(), labels, value.clone()));
            Counter::from_arc(value)
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[tokio::test]
    async fn tokens_refused_because_the_issuer_is_down_are_counted_per_issuer() {
        let logs = capture();
        let recorder = Counters::default();
        let _local = metrics::set_default_local_recorder(&recorder);
        let issuer = Issuer::parse("https://down.example.com").unwrap();
        let mut config = IssuerConfig::new(issuer.clone());
        config.audiences = vec!["api".into()];
        // Port 9 on loopback refuses at once.
        config.jwks_uri = Some(url::Url::parse("http://127.0.0.1:9/jwks").unwrap());
        let jwks = JwksConfig {
            refetch_cooldown: Duration::ZERO,
            failure_backoff: Duration::ZERO,
            failure_backoff_max: Duration::ZERO,
            fetch_timeout: Duration::from_secs(2),
            min_max_age: Duration::ZERO,
            max_stale: Duration::from_secs(86_400),
        };
        let issuers = Arc::new(IssuerRegistry::new(vec![config], outbound_client(jwks.fetch_timeout), &jwks));
        let verifier = TokenVerifier::new(issuers, Arc::new(TokenCache::new(10)), Duration::from_secs(60));
        let part = |value: Value| URL_SAFE_NO_PAD.encode(value.to_string());
        let token = format!(
            "{}.{}.c2ln",
            part(json!({"alg": "RS256", "kid": "k"})),
            part(json!({"iss": "https://down.example.com", "sub": "s"}))
        );
        for _ in 0..3 {
            assert_eq!(verifier.verify(&token).await.unwrap_err(), TokenError::IssuerUnavailable);
        }
        assert_eq!(recorder.total(ISSUER_UNAVAILABLE_TOTAL, ("issuer", "https://down.example.com")), 3);
        assert_eq!(logs.lines("WARN").len(), 1, "counted every time, logged once: {}", logs.text());
        // Other refusals are not counted there.
        let foreign = token.replace(
            &part(json!({"iss": "https://down.example.com", "sub": "s"})),
            &part(json!({"iss": "https://else.example.com"})),
        );
        assert_eq!(verifier.verify(&foreign).await.unwrap_err(), TokenError::IssuerNotAllowed);
        assert_eq!(recorder.total(ISSUER_UNAVAILABLE_TOTAL, ("issuer", "https://down.example.com")), 3);
    }
}

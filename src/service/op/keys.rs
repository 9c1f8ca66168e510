//! Tessera's own token-signing keys, as an OpenID Provider: generated here (aws-lc-rs), kept in
//! the store with the private key encrypted by the key ring, published as a JWK Set, used to sign
//! id tokens and RFC 9068 access tokens, and rotated without ever leaving a verifier without the
//! key of a token it holds.
//!
//! A key's life, per algorithm (ES256, RS256, EdDSA):
//! - **published** from its creation (in the JWKS);
//! - **signing** from `signs_from`: one [publication lead](SigningKeySettings::publication_lead)
//!   after its creation, so that every relying party's cached JWKS, and every Tessera instance's
//!   cache, lists it before the first token it signs;
//! - **retired** when the next key starts signing (the previous key signs until exactly then);
//! - **unpublished** `max_token_lifetime` and [`LEEWAY`] after its retirement, when the last
//!   token it signed has expired.
//!
//! The store keeps one un-retired key per algorithm (a partial unique index): a rotation retires
//! it and inserts its successor in one transaction, compare-and-swap on the retired key, so two
//! instances rotating at once leave one successor, never zero or two.
//!
//! Each instance caches the published keys (decrypted when they may still sign) and re-reads them
//! every quarter of `jwks_max_age`, never per request. That re-read also rotates a key that has
//! signed for `rotation_period`; the signing-key worker (`src/worker/signing_keys.rs`) runs it on
//! that schedule, so rotation happens without traffic too. Key material is never logged.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::config::OidcConfig;
use crate::crypto::keyring::{DecryptError, KeyRing};
use crate::domain::{SigningAlg, now};
use crate::error::ErrorChain as _;
use crate::error::{ErrorCode, INVALID_TOKEN_CHALLENGE, PublicError};
use crate::store::{Retirement, SigningKeyRecord, Store, StoreError};

/// Clock-skew allowance for `exp` and `nbf` of Tessera's own tokens (other instances sign them).
pub const LEEWAY: Duration = Duration::from_secs(30);

/// After a token names a key this instance does not know, the least age of the cached keys before
/// they are re-read for it (another instance may have just made the first key of an algorithm);
/// a stream of made-up key ids costs at most one store read per period.
const UNKNOWN_KID_COOLDOWN: Duration = Duration::from_secs(1);

/// While the cache-invalidation log goes unread, the least age of the cached keys before they
/// are re-read (a key retired at once elsewhere cannot be told): the bound within which a change
/// made on another instance is honoured anyway, and at most one store read per period, not one
/// per token signed or checked.
const UNLOGGED_REREAD: Duration = Duration::from_secs(1);

/// How signing keys are published and rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigningKeySettings {
    /// How long relying parties may cache the JWKS (its `Cache-Control: max-age`).
    pub jwks_max_age: Duration,
    /// How long a key signs before the next one is made.
    pub rotation_period: Duration,
    /// The longest lifetime of a token Tessera signs: how long a retired key stays published.
    pub max_token_lifetime: Duration,
}

impl Default for SigningKeySettings {
    fn default() -> Self {
        Self {
            jwks_max_age: Duration::from_secs(600),
            rotation_period: Duration::from_secs(30 * 86_400),
            max_token_lifetime: Duration::from_secs(3600),
        }
    }
}

impl SigningKeySettings {
    /// The settings of the `[oidc]` configuration.
    pub fn from_config(config: &OidcConfig) -> Self {
        Self {
            jwks_max_age: config.jwks_max_age,
            rotation_period: config.signing_key_rotation,
            max_token_lifetime: config.max_token_lifetime(),
        }
    }

    /// How often an instance re-reads the keys from the store: a quarter of `jwks_max_age`.
    pub fn refresh_interval(&self) -> Duration {
        self.jwks_max_age / 4
    }

    /// How long after its creation a new key starts signing: `jwks_max_age` (every JWKS cached
    /// before the key existed has expired) plus one [refresh interval](Self::refresh_interval)
    /// (every other instance has read the key, so it serves it in its JWKS and switches to it on
    /// time).
    pub fn publication_lead(&self) -> Duration {
        self.jwks_max_age + self.refresh_interval()
    }

    /// How long a retired key stays published: until its last token has expired, with the
    /// [`LEEWAY`] verification gives `exp`.
    pub fn published_after_retirement(&self) -> Duration {
        self.max_token_lifetime + LEEWAY
    }

    /// How long a relying party may cache a JWKS read from the store `age` ago:
    /// `jwks_max_age`, shortened so that it ends before a key created just after that read starts
    /// signing (`publication_lead` after its creation). Only keys older than a refresh interval
    /// (served while they are re-read, or while the store cannot be read) shorten it.
    pub fn max_age_at(&self, age: Duration) -> Duration {
        self.jwks_max_age.min(self.publication_lead().saturating_sub(age))
    }
}

/// The JWK Set as served, and how long it may be cached.
#[derive(Debug, Clone)]
pub struct Jwks {
    /// `{"keys": [...]}`.
    pub document: Value,
    /// The `max-age` of the response ([`SigningKeySettings::max_age_at`]).
    pub max_age: Duration,
}

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Published, not signing yet.
    Next,
    /// Signing (and published).
    Signing,
    /// Retired: published until its last token has expired, for verification only.
    Retired,
}

impl KeyStatus {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Next => "next",
            KeyStatus::Signing => "signing",
            KeyStatus::Retired => "retired",
        }
    }

    fn at(signs_from: DateTime<Utc>, retired_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Self {
        if retired_at.is_some_and(|retired| retired <= now) {
            KeyStatus::Retired
        } else if signs_from <= now {
            KeyStatus::Signing
        } else {
            KeyStatus::Next
        }
    }
}

/// What `tessera keys signing list` shows of a key: no key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SigningKeyInfo {
    /// The key id.
    pub kid: String,
    /// Its algorithm.
    pub alg: SigningAlg,
    /// Where it is in its life now.
    pub status: KeyStatus,
    /// When it was made and published.
    pub created_at: DateTime<Utc>,
    /// When it starts (or started) signing.
    pub signs_from: DateTime<Utc>,
    /// When it stops (or stopped) signing.
    pub retired_at: Option<DateTime<Utc>>,
    /// When it leaves the JWKS.
    pub unpublish_at: Option<DateTime<Utc>>,
}

impl SigningKeyInfo {
    fn of(record: &SigningKeyRecord, now: DateTime<Utc>) -> Self {
        Self {
            kid: record.kid.clone(),
            alg: record.alg,
            status: KeyStatus::at(record.signs_from, record.retired_at, now),
            created_at: record.created_at,
            signs_from: record.signs_from,
            retired_at: record.retired_at,
            unpublish_at: record.unpublish_at,
        }
    }
}

/// Why a token could not be signed, or the keys not read.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored key cannot be used: its private key does not decrypt with the key ring (a ring
    /// key was removed too early), or its public key is not a valid JWK.
    #[error("signing key {kid} cannot be used: {reason}")]
    Unusable {
        /// The key id.
        kid: String,
        /// Why (never key material).
        reason: String,
    },
    /// No key of the algorithm may sign now (the stored keys were edited by hand).
    #[error("no {} key may sign now", .0.as_str())]
    NoSigningKey(SigningAlg),
    /// aws-lc-rs could not generate a key.
    #[error("cannot generate a {} key", .0.as_str())]
    Generate(SigningAlg),
    /// The claims could not be serialised or signed.
    #[error("cannot sign the token")]
    Encode(#[source] jsonwebtoken::errors::Error),
    /// A re-read of the keys failed a moment ago (while this caller waited for it, or within
    /// the back-off after it): the same answer, without a read of its own.
    #[error("the signing keys could not be read a moment ago")]
    Unreadable,
}

impl PublicError for SigningError {
    fn code(&self) -> ErrorCode {
        match self {
            SigningError::Store(e) => e.code(),
            SigningError::Unreadable => ErrorCode::StoreUnavailable,
            _ => ErrorCode::InternalError,
        }
    }
}

/// Why a token is not a valid token of Tessera's ([`SigningKeys::verify`]).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Not a compact JWS with a `kid`, or claims of the wrong shape.
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    /// The `typ` header is not the expected one (an id token used as an access token).
    #[error("the token is not of the expected type")]
    TypeMismatch,
    /// No published key has the token's `kid`.
    #[error("the token names a key Tessera does not publish")]
    UnknownKey,
    /// The `alg` header is not the algorithm of the key.
    #[error("the token's algorithm is not its key's")]
    AlgorithmNotAllowed,
    /// The signature does not verify.
    #[error("the token's signature does not verify")]
    SignatureInvalid,
    /// Past `exp`.
    #[error("the token has expired")]
    Expired,
    /// Before `nbf`.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is not the expected issuer (or is missing).
    #[error("the token was not issued by this issuer")]
    IssuerMismatch,
    /// The keys could not be read (the store failed): the token may well be valid.
    #[error(transparent)]
    Keys(#[from] SigningError),
}

impl VerifyError {
    /// Whether the token itself was found bad (not ours, tampered with, expired…), as opposed to
    /// the keys being unavailable.
    pub fn is_invalid_token(&self) -> bool {
        !matches!(self, VerifyError::Keys(_))
    }
}

impl PublicError for VerifyError {
    fn code(&self) -> ErrorCode {
        match self {
            VerifyError::Malformed(_) => ErrorCode::MalformedToken,
            VerifyError::TypeMismatch => ErrorCode::TokenTypeMismatch,
            VerifyError::UnknownKey => ErrorCode::UnknownKey,
            VerifyError::AlgorithmNotAllowed => ErrorCode::AlgorithmNotAllowed,
            VerifyError::SignatureInvalid => ErrorCode::SignatureInvalid,
            VerifyError::Expired => ErrorCode::TokenExpired,
            VerifyError::NotYetValid => ErrorCode::TokenNotYetValid,
            VerifyError::IssuerMismatch => ErrorCode::TokenIssuerMismatch,
            VerifyError::Keys(e) => e.code(),
        }
    }

    fn challenge(&self) -> Option<&'static str> {
        self.is_invalid_token().then_some(INVALID_TOKEN_CHALLENGE)
    }
}

/// How many times [`SigningKeys::rotate`] with `at_once` rotates again after losing to another
/// rotation (each loss is a rotation another instance made at that very moment).
const ROTATION_ATTEMPTS: usize = 8;

/// Tessera's signing keys: cheap to clone, shared by every request of an instance.
#[derive(Clone)]
pub struct SigningKeys {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    keyring: Arc<KeyRing>,
    settings: SigningKeySettings,
    /// The published keys as last read.
    cache: RwLock<Arc<KeySet>>,
    /// One re-read at a time; callers that waited use the one that finished.
    reload: tokio::sync::Mutex<()>,
    /// One first-key creation at a time in this instance (the store settles it across instances).
    create: tokio::sync::Mutex<()>,
    /// Another instance made or rotated a key (told through the cache-invalidation log): the
    /// next use re-reads the keys, whatever their age.
    stale: AtomicBool,
    /// Wakes the signing-key worker when the keys are marked stale, so that they are re-read
    /// (and readiness, which reads only the cached keys, sees them) without waiting for a use.
    marked: tokio::sync::Notify,
    /// When a re-read last failed (cleared by one that succeeds): for [`RELOAD_BACKOFF`] after
    /// it, uses answer from the cached keys rather than each wait for a read of its own (the
    /// worker retries); and until a read succeeds, the JWKS and signing with keys read within
    /// `jwks_max_age` do not wait for one.
    failed_at: std::sync::Mutex<Option<Instant>>,
    /// A re-read runs in the background ([`SigningKeys::refresh_behind`]): one at a time.
    refreshing: AtomicBool,
    /// The principal cache, whose [`answers`](crate::service::principals::PrincipalCache::answers)
    /// says whether the cache-invalidation log was read lately: while it was not, a change made
    /// on another instance (a key rotated at once) cannot be told here, and the keys are treated
    /// as marked stale. Unset (the command line), the keys follow their refresh interval alone.
    log: std::sync::OnceLock<Arc<crate::service::principals::PrincipalCache>>,
}

/// Lowers the keys' `refreshing` flag when dropped: a background re-read that ends, panics, or
/// is dropped unpolled (its runtime shutting down).
struct Lowered(Arc<Inner>);

impl Drop for Lowered {
    fn drop(&mut self) {
        self.0.refreshing.store(false, Ordering::Release);
    }
}

/// How long after a failed re-read of the keys the cached ones answer without another try.
const RELOAD_BACKOFF: Duration = Duration::from_secs(1);

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = self.cached();
        f.debug_struct("SigningKeys")
            .field("settings", &self.inner.settings)
            .field("kids", &set.keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The published keys as read at one time.
struct KeySet {
    loaded_at: Instant,
    keys: Vec<Arc<LoadedKey>>,
}

/// A published key, ready to verify and, while it may sign, to sign.
struct LoadedKey {
    kid: String,
    alg: SigningAlg,
    signs_from: DateTime<Utc>,
    retired_at: Option<DateTime<Utc>>,
    unpublish_at: Option<DateTime<Utc>>,
    /// The public key as published and as it verifies; `Err(reason)` when the row's is not a
    /// usable JWK or not the one its key id names: such a key is neither published nor trusted,
    /// but stays known, so that it is reported (`tessera check`) and can be rotated away.
    public: Result<(Value, DecodingKey), String>,
    /// `Ok` for keys that may still sign; `Err(reason)` when the private key does not decrypt;
    /// `None` for retired keys (never decrypted again).
    encoding: Option<Result<EncodingKey, String>>,
}

impl KeySet {
    fn empty() -> Self {
        // Old enough to be re-read on first use.
        let loaded_at = Instant::now().checked_sub(Duration::from_secs(86_400)).unwrap_or_else(Instant::now);
        Self { loaded_at, keys: Vec::new() }
    }

    /// The algorithm's un-retired key (the one signing, or the next one).
    fn unretired(&self, alg: SigningAlg) -> Option<&Arc<LoadedKey>> {
        self.keys.iter().find(|k| k.alg == alg && k.retired_at.is_none())
    }

    /// The key that signs for `alg` at `now`: of those whose signing period holds `now`, the
    /// latest to start. When none holds it — the algorithm's first key made (signing at once) by
    /// an instance whose clock is ahead of this one's; any key starting within [`LEEWAY`] after a
    /// gap — the un-retired key, up to [`LEEWAY`] early, rather than no key at all.
    fn signer(&self, alg: SigningAlg, now: DateTime<Utc>) -> Option<&Arc<LoadedKey>> {
        self.keys
            .iter()
            .filter(|k| k.alg == alg && k.signs_from <= now && k.retired_at.is_none_or(|r| r > now))
            .max_by_key(|k| k.signs_from)
            .or_else(|| self.unretired(alg).filter(|k| k.signs_from <= now + to_chrono(LEEWAY)))
    }

    /// A key published at `now`, by kid.
    fn published(&self, kid: &str, now: DateTime<Utc>) -> Option<&Arc<LoadedKey>> {
        self.keys.iter().find(|k| k.kid == kid && k.public.is_ok() && k.unpublish_at.is_none_or(|u| u > now))
    }
}

impl SigningKeys {
    /// The service, with the keys published now read from the store (nothing is written: a first
    /// key is made on first use). Fails when the store cannot be read or a key that may still
    /// sign does not decrypt with `keyring`.
    pub async fn new(
        store: Arc<dyn Store>,
        keyring: Arc<KeyRing>,
        settings: SigningKeySettings,
    ) -> Result<Self, SigningError> {
        let keys = Self::open(store, keyring, settings).await?;
        match keys.unusable_key() {
            Some(unusable) => Err(unusable),
            None => Ok(keys),
        }
    }

    /// [`SigningKeys::new`] without refusing keys that do not decrypt, for `tessera keys signing
    /// rotate`: a rotation needs the current key's id, not its private key, and is the way out
    /// when that key's ring key is lost (or its row was damaged).
    pub async fn open(
        store: Arc<dyn Store>,
        keyring: Arc<KeyRing>,
        settings: SigningKeySettings,
    ) -> Result<Self, SigningError> {
        let keys = Self {
            inner: Arc::new(Inner {
                store,
                keyring,
                settings,
                cache: RwLock::new(Arc::new(KeySet::empty())),
                reload: tokio::sync::Mutex::new(()),
                create: tokio::sync::Mutex::new(()),
                stale: AtomicBool::new(false),
                marked: tokio::sync::Notify::new(),
                failed_at: std::sync::Mutex::new(None),
                refreshing: AtomicBool::new(false),
                log: std::sync::OnceLock::new(),
            }),
        };
        let set = keys.load().await?;
        keys.replace(set);
        Ok(keys)
    }

    /// The settings.
    pub fn settings(&self) -> &SigningKeySettings {
        &self.inner.settings
    }

    /// How long relying parties may cache the JWKS.
    pub fn jwks_max_age(&self) -> Duration {
        self.inner.settings.jwks_max_age
    }

    /// Makes the algorithm's first key if it has none, so that the JWKS holds a key before
    /// anything is signed (relying parties often fetch it once, up front).
    pub async fn ensure(&self, alg: SigningAlg) -> Result<(), SigningError> {
        let set = self.keys().await?;
        if set.unretired(alg).is_none() {
            self.first_key(alg, &set).await?;
        }
        Ok(())
    }

    /// Signs `claims` as a compact JWS with the `alg` key that signs now, with the headers `kid`,
    /// `alg` and `typ` (`JWT` for id tokens, `at+jwt` for RFC 9068 access tokens). Makes the
    /// algorithm's first key when it has none.
    pub async fn sign<T: Serialize>(&self, alg: SigningAlg, typ: &str, claims: &T) -> Result<String, SigningError> {
        let mut set = self.keys().await?;
        if set.unretired(alg).is_none() {
            set = self.first_key(alg, &set).await?;
        }
        let key = set.signer(alg, now()).ok_or(SigningError::NoSigningKey(alg))?;
        if let Some(unusable) = key.unusable().or_else(|| key.damaged()) {
            return Err(unusable);
        }
        let Some(Ok(encoding)) = &key.encoding else { return Err(SigningError::NoSigningKey(alg)) };
        let header = Header { typ: Some(typ.to_owned()), kid: Some(key.kid.clone()), ..Header::new(jwt_alg(alg)) };
        jsonwebtoken::encode(&header, claims, encoding).map_err(SigningError::Encode)
    }

    /// Verifies one of Tessera's own tokens: a published key with the token's `kid`, the key's
    /// algorithm, the `typ` header (`JWT`, `at+jwt`; an `application/` prefix and case are
    /// ignored), the signature, `exp` and `nbf` (with [`LEEWAY`]) and `iss` equal to `issuer`.
    /// The audience is the caller's to check.
    pub async fn verify<T: DeserializeOwned>(&self, token: &str, typ: &str, issuer: &str) -> Result<T, VerifyError> {
        self.verify_checking(token, typ, issuer, true).await
    }

    /// [`SigningKeys::verify`] without the expiry check, for hints that may have expired (an
    /// `id_token_hint` at logout): the signature, key, `typ` and issuer are still checked.
    pub async fn verify_ignoring_expiry<T: DeserializeOwned>(
        &self,
        token: &str,
        typ: &str,
        issuer: &str,
    ) -> Result<T, VerifyError> {
        self.verify_checking(token, typ, issuer, false).await
    }

    async fn verify_checking<T: DeserializeOwned>(
        &self,
        token: &str,
        typ: &str,
        issuer: &str,
        check_expiry: bool,
    ) -> Result<T, VerifyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed("not a signed JWT"))?;
        if !header.typ.as_deref().is_some_and(|t| same_type(t, typ)) {
            return Err(VerifyError::TypeMismatch);
        }
        let kid = header.kid.as_deref().ok_or(VerifyError::Malformed("the token has no kid"))?;
        let now = now();
        let mut set = self.cached();
        let age = set.loaded_at.elapsed();
        let unknown = set.published(kid, now).is_none();
        // An unknown key is looked for again after a cooldown, or at once when another instance
        // has said the keys changed (a key it just made may have signed this token).
        // A known one is re-read behind its use whenever the log has not been read lately: it may
        // have been retired at once meanwhile.
        let due = age >= self.inner.settings.refresh_interval()
            || (!unknown && self.unlogged(age))
            || (unknown && (age >= UNKNOWN_KID_COOLDOWN || self.inner.stale.load(Ordering::Acquire)));
        // A known key answers from the cache, the keys re-read behind it: keys only leave by
        // their unpublish time, checked on each use, so a known key can be trusted from an old
        // read; and requests do not queue up behind a database that hangs. An unknown one waits
        // for the re-read — unless one failed within the back-off: it is then refused as
        // unreadable, without a read of its own (the worker keeps trying).
        if due && !unknown {
            self.refresh_behind(&set);
        } else if due && self.failed_within(RELOAD_BACKOFF) {
            return Err(VerifyError::Keys(SigningError::Unreadable));
        } else if due {
            // The key may well exist when the store cannot say.
            set = self.reload(Some(&set)).await.map_err(VerifyError::Keys)?;
        }
        let key = set.published(kid, now).ok_or(VerifyError::UnknownKey)?;
        if header.alg != jwt_alg(key.alg) {
            return Err(VerifyError::AlgorithmNotAllowed);
        }
        let mut validation = Validation::new(jwt_alg(key.alg));
        validation.leeway = LEEWAY.as_secs();
        validation.validate_nbf = true;
        validation.validate_exp = check_expiry;
        validation.validate_aud = false;
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss"]);
        let Ok((_, decoding)) = &key.public else { return Err(VerifyError::UnknownKey) };
        let data = jsonwebtoken::decode::<T>(token, decoding, &validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => VerifyError::SignatureInvalid,
            ErrorKind::ExpiredSignature => VerifyError::Expired,
            ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
            ErrorKind::InvalidIssuer => VerifyError::IssuerMismatch,
            ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => VerifyError::IssuerMismatch,
            ErrorKind::MissingRequiredClaim(_) => VerifyError::Malformed("the token has no exp"),
            ErrorKind::InvalidAlgorithm => VerifyError::AlgorithmNotAllowed,
            _ => VerifyError::Malformed("the token's claims are not valid"),
        })?;
        // A retired key signs nothing more: a token it signed that says it was issued after its
        // retirement (beyond the leeway) was not signed by Tessera — its private key leaked, the
        // case a rotation is for. Tessera's tokens all carry `iat`.
        if let Some(retired) = key.retired_at.filter(|retired| *retired <= now) {
            let latest = retired.timestamp().saturating_add(LEEWAY.as_secs() as i64);
            if issued_at(token).is_none_or(|iat| iat > latest) {
                return Err(VerifyError::SignatureInvalid);
            }
        }
        Ok(data.claims)
    }

    /// Every published public key, as a JWK Set.
    pub async fn jwks(&self) -> Result<Jwks, SigningError> {
        // When the store cannot say what they are now, the keys as last read: a relying party
        // keeps verifying the tokens it has (a 503 would fail them all in many libraries), and is
        // told to fetch again next time (a max-age of 0 once a key made since could sign).
        // Nor while the change log cannot be read (the database may hang): re-read behind. A key
        // retired at once elsewhere stays published until its unpublish time all the same.
        let cached = self.cached();
        let unlogged = self.unlogged(cached.loaded_at.elapsed());
        let set = if (self.failed_within(Duration::MAX) || unlogged) && !cached.keys.is_empty() {
            // Not a wait for a read that may hang past a relying party's patience.
            self.refresh_behind(&cached);
            cached
        } else {
            match self.keys().await {
                Ok(set) => set,
                Err(error) => Some(self.cached()).filter(|set| !set.keys.is_empty()).ok_or(error)?,
            }
        };
        let now = now();
        let keys: Vec<&Value> = set
            .keys
            .iter()
            .filter(|k| k.unpublish_at.is_none_or(|u| u > now))
            .filter_map(|k| k.public.as_ref().ok().map(|(jwk, _)| jwk))
            .collect();
        Ok(Jwks { document: json!({ "keys": keys }), max_age: self.inner.settings.max_age_at(set.loaded_at.elapsed()) })
    }

    /// Why a key as last read that signs now or will (not retired) cannot be used
    /// here — its private key does not decrypt with this instance's key ring (another instance,
    /// with a newer ring, made it) —: readiness fails, so that the instance leaves rotation rather
    /// than answer every token request with an error once that key signs.
    pub fn unusable_key(&self) -> Option<SigningError> {
        // The keys as last read, never a read of its own: a probe must answer within its bound,
        // not wait for a reload (or a rotation) behind a busy pool. The signing-key worker and
        // every signing re-read them when due or marked stale.
        self.unusable_key_of(|_| true).map(|(_, unusable)| unusable)
    }

    /// Why a key as last read that signs now or will (not retired) has a damaged row — its public
    /// key is not its own —, for `tessera check`: every instance reads that row, so readiness does
    /// not report it ([`unusable_key`](Self::unusable_key) is about this instance's key ring).
    pub fn damaged_key(&self) -> Option<SigningError> {
        self.first_unretired(LoadedKey::damaged)
    }

    /// The algorithm and the reason of the first key as last read that signs now or will and
    /// does not decrypt, among the keys of the algorithms `of` takes (for `tessera keys signing
    /// rotate`, which tells the rotated algorithm's key from another's).
    pub fn unusable_key_of(&self, of: impl Fn(SigningAlg) -> bool) -> Option<(SigningAlg, SigningError)> {
        self.first_unretired(|k| if of(k.alg) { k.unusable().map(|e| (k.alg, e)) } else { None })
    }

    /// The first `what` of a key as last read that signs now or will (not retired).
    fn first_unretired<T>(&self, what: impl Fn(&LoadedKey) -> Option<T>) -> Option<T> {
        let set = self.cached();
        let now = now();
        set.keys.iter().filter(|k| k.retired_at.is_none_or(|r| r > now)).find_map(|k| what(k))
    }

    /// Marks the cached keys out of date: another instance made or rotated one. The next use
    /// re-reads them.
    pub fn mark_stale(&self) {
        self.inner.stale.store(true, Ordering::Release);
        self.inner.marked.notify_one();
    }

    /// Waits until the keys are marked stale (see [`SigningKeys::mark_stale`]).
    pub async fn marked_stale(&self) {
        self.inner.marked.notified().await;
    }

    /// Starts a rotation for `alg`: a new key, published now, signs from one
    /// [publication lead](SigningKeySettings::publication_lead) from now; the current key signs
    /// until then, and stays published `max_token_lifetime` (and [`LEEWAY`]) longer. `at_once`,
    /// the current key is retired now and the new one signs now (a key whose ring key is lost,
    /// which no instance can sign with: waiting out the lead would keep them all from starting or
    /// being ready; a leak that cannot wait). With no key yet, makes the first one (which signs
    /// at once). When another instance rotated at the same moment, its rotation stands and this
    /// one writes nothing — unless `at_once`, which then rotates the key that rotation made, so
    /// that the key being replaced stops signing now all the same. Returns the algorithm's
    /// newest key.
    pub async fn rotate(&self, alg: SigningAlg, at_once: bool) -> Result<SigningKeyInfo, SigningError> {
        // The keys as stored, none rotated first: a rotation due now would make a key of its own
        // just before this one's, published for a day and signing for a moment.
        let mut set = self.load().await?;
        for _ in 0..ROTATION_ATTEMPTS {
            match set.unretired(alg) {
                None => {
                    self.first_key(alg, &self.cached()).await?;
                    break;
                }
                Some(current) => {
                    if self.rotate_from(current, at_once).await? || !at_once {
                        break;
                    }
                }
            }
            set = self.load().await?;
        }
        let now = now();
        let newest = self
            .inner
            .store
            .published_signing_keys(now)
            .await?
            .into_iter()
            .find(|k| k.alg == alg && k.retired_at.is_none())
            .ok_or(SigningError::NoSigningKey(alg))?;
        self.reload(None).await?;
        Ok(SigningKeyInfo::of(&newest, now))
    }

    /// Re-reads the keys from the store now, rotating those due (see the module documentation);
    /// the signing-key worker calls it every [refresh interval](SigningKeySettings::refresh_interval).
    pub async fn refresh(&self) -> Result<(), SigningError> {
        self.reload(None).await.map(drop)
    }

    /// Forgets the private keys of the keys unpublished by now (the sweeper's task): a key
    /// stops signing at its retirement and leaves the JWKS once its last token has expired, so
    /// from then on its private key is a liability only. Returns how many were forgotten.
    pub async fn forget_unpublished(&self) -> Result<u64, StoreError> {
        self.inner.store.forget_unpublished_private_keys(now()).await
    }

    /// Every published key, oldest first, read from the store.
    pub async fn list(&self) -> Result<Vec<SigningKeyInfo>, SigningError> {
        Ok(published_keys(self.inner.store.as_ref()).await?)
    }

    /// Treats the keys as marked stale whenever `principals` no longer answers from memory
    /// (the cache-invalidation log not read lately), as the principal and client caches do.
    pub fn following_log_of(&self, principals: Arc<crate::service::principals::PrincipalCache>) {
        let _ = self.inner.log.set(principals);
    }

    /// Whether keys read `age` ago are due a re-read because the cache-invalidation log has gone
    /// unread lately (a change made on another instance may have gone untold): at most once per
    /// [`UNLOGGED_REREAD`].
    fn unlogged(&self, age: Duration) -> bool {
        age >= UNLOGGED_REREAD && self.inner.log.get().is_some_and(|log| !log.answers())
    }

    fn cached(&self) -> Arc<KeySet> {
        self.inner.cache.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(&self, set: KeySet) -> Arc<KeySet> {
        let set = Arc::new(set);
        *self.inner.cache.write().unwrap_or_else(|p| p.into_inner()) = set.clone();
        set
    }

    /// The cached keys for signing and for the JWKS, re-read in the background when older than
    /// the refresh interval (at once, waited for, when another instance said they changed, or
    /// when older than `jwks_max_age`). When the store cannot be read, keys read within
    /// `jwks_max_age` still serve: no rotation made since can have a key signing yet.
    async fn keys(&self) -> Result<Arc<KeySet>, SigningError> {
        let cached = self.cached();
        let age = cached.loaded_at.elapsed();
        let stale = self.inner.stale.load(Ordering::Acquire) || self.unlogged(age);
        if age < self.inner.settings.refresh_interval() && !stale {
            return Ok(cached);
        }
        // Keys read within `jwks_max_age` serve while they are re-read behind: no caller waits
        // for a read (nor queues up behind a database that hangs) — unless another instance said
        // they changed (a key rotated at once must not sign a moment longer) and the store
        // answers: a mark left by a failed re-read is the store's failure, not news.
        let failing = self.failed_within(Duration::MAX);
        if age < self.inner.settings.jwks_max_age && (!stale || failing) {
            self.refresh_behind(&cached);
            return Ok(cached);
        }
        match self.reload(Some(&cached)).await {
            Ok(set) => Ok(set),
            Err(error) if age < self.inner.settings.jwks_max_age => {
                tracing::warn!(error = %error.chain(), age_s = age.as_secs(), "cannot re-read the signing keys; using the cached ones");
                Ok(cached)
            }
            Err(error) => Err(error),
        }
    }

    /// Re-reads the keys and rotates those due. With `seen`, a re-read that another caller
    /// finished since `seen` was taken is used instead of a new one, unless a change was marked
    /// after it began.
    async fn reload(&self, seen: Option<&Arc<KeySet>>) -> Result<Arc<KeySet>, SigningError> {
        let asked = Instant::now();
        let _one_at_a_time = self.inner.reload.lock().await;
        let current = self.cached();
        // Unless another instance's change was marked since that re-read began (it cleared the
        // mark as it began): it may have read the keys before the change (a key retired at once
        // would sign again).
        if let Some(seen) = seen
            && !Arc::ptr_eq(&current, seen)
            && !self.inner.stale.load(Ordering::Acquire)
        {
            return Ok(current);
        }
        // A re-read that failed while this caller waited for it answers for it too: callers
        // queued behind a database that hangs do not each wait for a read of their own.
        if seen.is_some() && self.failed_within(asked.elapsed()) {
            return Err(SigningError::Unreadable);
        }
        // Cleared before the read: a mark that arrives during it is for a newer change; and set
        // again when the read fails, so that the change is not forgotten.
        self.inner.stale.store(false, Ordering::Release);
        let loaded = async {
            let mut set = self.load().await?;
            // A rotation that cannot be written (a store that reads but does not write) leaves
            // the keys as read, which still serve; the next re-read tries it again.
            if self.rotate_due(&set).await {
                set = self.load().await?;
            }
            Ok(set)
        }
        .await;
        let mut failed_at = self.inner.failed_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match loaded {
            Ok(set) => {
                *failed_at = None;
                Ok(self.replace(set))
            }
            Err(error) => {
                *failed_at = Some(Instant::now());
                self.inner.stale.store(true, Ordering::Release);
                Err(error)
            }
        }
    }

    /// Re-reads the keys in a task of its own, unless one is under way, for callers that go on
    /// with `seen` meanwhile. A failure is logged once, by that task.
    fn refresh_behind(&self, seen: &Arc<KeySet>) {
        // Within the back-off after a failed re-read, none: the worker keeps trying.
        if self.failed_within(RELOAD_BACKOFF) || self.inner.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (this, seen, done) = (self.clone(), seen.clone(), Lowered(self.inner.clone()));
        tokio::spawn(async move {
            let _done = done;
            match this.reload(Some(&seen)).await {
                // Another read's failure, which that read's caller logged.
                Ok(_) | Err(SigningError::Unreadable) => {}
                Err(error) => {
                    let age_s = seen.loaded_at.elapsed().as_secs();
                    tracing::warn!(error = %error.chain(), age_s, "cannot re-read the signing keys; using the cached ones");
                }
            }
        });
    }

    /// Whether a re-read of the keys failed within `window`.
    fn failed_within(&self, window: Duration) -> bool {
        let failed_at = self.inner.failed_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        failed_at.is_some_and(|at| at.elapsed() <= window)
    }

    /// Reads the published keys, decrypting those that may still sign.
    async fn load(&self) -> Result<KeySet, SigningError> {
        let now = now();
        let records = self.inner.store.published_signing_keys(now).await?;
        let keys = records
            .into_iter()
            .map(|record| Arc::new(LoadedKey::from_record(record, &self.inner.keyring, now)))
            .collect();
        Ok(KeySet { loaded_at: Instant::now(), keys })
    }

    /// Rotates the algorithms whose un-retired key has signed for `rotation_period`; whether any
    /// rotation was written. One that fails is logged, and the others are still tried.
    async fn rotate_due(&self, set: &KeySet) -> bool {
        let now = now();
        let period = chrono::Duration::from_std(self.inner.settings.rotation_period).unwrap_or(chrono::Duration::MAX);
        let mut rotated = false;
        for alg in SigningAlg::ALL {
            if let Some(current) = set.unretired(alg)
                && current.signs_from <= now
                && now.signed_duration_since(current.signs_from) >= period
            {
                match self.rotate_from(current, false).await {
                    Ok(written) => rotated |= written,
                    Err(error) => {
                        tracing::warn!(alg = alg.as_str(), error = %error.chain(), "cannot rotate a signing key that is due; trying again at the next re-read");
                    }
                }
            }
        }
        rotated
    }

    /// Writes a rotation from `current`; false when another instance rotated it first. A key
    /// whose row is damaged signs nothing and verifies nothing, and one `at_once` cannot sign:
    /// its successor signs at once (as a first key does) rather than after the publication lead.
    /// The retired key stays published until its last token has expired, with the leeway that
    /// [`verify`](Self::verify) gives `exp`.
    async fn rotate_from(&self, current: &LoadedKey, at_once: bool) -> Result<bool, SigningError> {
        let settings = &self.inner.settings;
        let lead = if at_once || current.damaged().is_some() { Duration::ZERO } else { settings.publication_lead() };
        let new = self.generate(current.alg, lead).await?;
        let signs_from = new.signs_from;
        let retire = Retirement {
            kid: &current.kid,
            retired_at: signs_from,
            unpublish_at: signs_from + to_chrono(settings.published_after_retirement()),
        };
        let rotated = self.inner.store.rotate_signing_key(&retire, &new).await?;
        if rotated {
            tracing::info!(alg = current.alg.as_str(), kid = %new.kid, previous = %current.kid, signs_from = %signs_from, "rotated a signing key");
        }
        Ok(rotated)
    }

    /// Makes the first key of `alg`, unless another caller (here or in another instance) made it
    /// meanwhile; returns the keys with it.
    async fn first_key(&self, alg: SigningAlg, seen: &Arc<KeySet>) -> Result<Arc<KeySet>, SigningError> {
        let _one_at_a_time = self.inner.create.lock().await;
        let set = self.reload(Some(seen)).await?;
        if set.unretired(alg).is_some() {
            return Ok(set);
        }
        // The first key of an algorithm signs at once: no token of this algorithm exists, and no
        // relying party can have been given one to check against a JWKS cached without this key
        // (a verifier holding an older JWKS sees an unknown kid, and refetches).
        let key = self.generate(alg, Duration::ZERO).await?;
        if self.inner.store.insert_signing_key(&key).await? {
            tracing::info!(alg = alg.as_str(), kid = %key.kid, "made the first signing key of an algorithm");
        }
        self.reload(None).await
    }

    /// A new key of `alg`, made now and signing `lead` later, its private key encrypted for its
    /// row. Generated on the blocking pool (an RSA key takes up to a second); its times are
    /// taken after, so that a slow generation does not eat into the publication lead.
    async fn generate(&self, alg: SigningAlg, lead: Duration) -> Result<SigningKeyRecord, SigningError> {
        let (pkcs8, public) =
            tokio::task::spawn_blocking(move || generate_key(alg)).await.map_err(|_| SigningError::Generate(alg))??;
        let created_at = now();
        let signs_from = created_at + to_chrono(lead);
        let kid = thumbprint(&public);
        let mut jwk = public;
        jwk["kid"] = kid.clone().into();
        jwk["alg"] = alg.as_str().into();
        jwk["use"] = "sig".into();
        let private_key = self.inner.keyring.encrypt(&pkcs8, &SigningKeyRecord::aad(&kid));
        Ok(SigningKeyRecord {
            kid,
            alg,
            public_jwk: jwk.to_string(),
            private_key,
            created_at,
            signs_from,
            retired_at: None,
            unpublish_at: None,
        })
    }
}

/// Every published key, oldest first, read from `store`: [`SigningKeys::list`] without the key
/// ring (nothing is decrypted), for `tessera keys signing list`.
pub async fn published_keys(store: &dyn Store) -> Result<Vec<SigningKeyInfo>, StoreError> {
    let now = now();
    let records = store.published_signing_keys(now).await?;
    Ok(records.iter().map(|r| SigningKeyInfo::of(r, now)).collect())
}

impl LoadedKey {
    /// Why the key cannot sign here: its private key did not decrypt or decode (with this
    /// instance's key ring — readiness reports it).
    fn unusable(&self) -> Option<SigningError> {
        match &self.encoding {
            Some(Err(reason)) => Some(SigningError::Unusable { kid: self.kid.clone(), reason: reason.clone() }),
            _ => None,
        }
    }

    /// Why the key's row is damaged: its public key is not its own. Every instance reads the
    /// same row, so readiness does not report it (it would take them all out of rotation); a
    /// signature with it is refused, and a rotation retires it at once.
    fn damaged(&self) -> Option<SigningError> {
        self.public
            .as_ref()
            .err()
            .map(|reason| SigningError::Unusable { kid: self.kid.clone(), reason: reason.clone() })
    }

    /// The key of a row. A damaged row does not fail the read of the others: its key is kept as
    /// [damaged](Self::damaged), neither published nor trusted.
    fn from_record(record: SigningKeyRecord, keyring: &KeyRing, now: DateTime<Utc>) -> Self {
        let public = public_key(&record);
        if let Err(reason) = &public {
            tracing::warn!(kid = %record.kid, reason = %reason, "a signing key's row is damaged: it is not published");
        }
        let may_sign = record.retired_at.is_none_or(|retired| retired > now) && public.is_ok();
        let encoding = may_sign.then(|| {
            let pkcs8 = keyring.decrypt(&record.private_key, &SigningKeyRecord::aad(&record.kid)).map_err(|e| {
                match (e, KeyRing::key_id_of(&record.private_key)) {
                    // The ring has a key of that id, but not the one that encrypted it (one made
                    // anew under the same id, say).
                    (DecryptError::Unauthentic, Some(id)) => format!(
                        "the private key does not decrypt: it was encrypted with ring key {id:?}, and does not \
                         authenticate with this ring's key {id:?} (that key was made anew, or the row was changed)"
                    ),
                    (e, _) => format!("the private key does not decrypt: {e}"),
                }
            })?;
            encoding_key(record.alg, &pkcs8).ok_or_else(|| "the private key is not a PKCS#8 key".to_owned())
        });
        if let Some(Err(reason)) = &encoding {
            tracing::warn!(kid = %record.kid, reason = %reason, "a signing key cannot sign");
        }
        Self {
            kid: record.kid,
            alg: record.alg,
            signs_from: record.signs_from,
            retired_at: record.retired_at,
            unpublish_at: record.unpublish_at,
            public,
            encoding,
        }
    }
}

/// A row's public key, as published and as it verifies; why not when it is not usable.
fn public_key(record: &SigningKeyRecord) -> Result<(Value, DecodingKey), String> {
    let jwk: Value = serde_json::from_str(&record.public_jwk).map_err(|_| "the public JWK is not JSON")?;
    let parsed: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(jwk.clone()).map_err(|_| "the public JWK is not a JWK")?;
    let decoding = DecodingKey::from_jwk(&parsed).map_err(|_| "the public JWK is not a usable key")?;
    // The key id is the public key's thumbprint (RFC 7638): a public key written over another
    // row's (by someone who could write to the database, not decrypt it) is refused, not
    // published and trusted.
    if thumbprint(&jwk) != record.kid {
        return Err("the public JWK does not match its key id (its RFC 7638 thumbprint)".to_owned());
    }
    Ok((jwk, decoding))
}

fn to_chrono(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

/// The jsonwebtoken name of an algorithm.
fn jwt_alg(alg: SigningAlg) -> Algorithm {
    match alg {
        SigningAlg::ES256 => Algorithm::ES256,
        SigningAlg::RS256 => Algorithm::RS256,
        SigningAlg::EdDSA => Algorithm::EdDSA,
    }
}

/// The `iat` of a compact JWS whose signature was verified (`None` without one).
fn issued_at(token: &str) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Iat {
        iat: Option<i64>,
    }
    crate::upstream::tokens::decode_part::<Iat>(token.split('.').nth(1)?)?.iat
}

/// Whether a `typ` header names the expected type (RFC 7515 section 4.1.9: case-insensitive, the
/// `application/` prefix may be left out).
fn same_type(header: &str, expected: &str) -> bool {
    let bare = |t: &str| {
        let t = t.trim();
        match t.get(..12) {
            Some(prefix) if prefix.eq_ignore_ascii_case("application/") => t[12..].to_owned(),
            _ => t.to_owned(),
        }
    };
    bare(header).eq_ignore_ascii_case(&bare(expected))
}

/// Generates a key pair: its PKCS#8 DER and its public JWK members (`kty`, `crv`, `x`, `y` /
/// `n`, `e`).
fn generate_key(alg: SigningAlg) -> Result<(Vec<u8>, Value), SigningError> {
    let failed = |_| SigningError::Generate(alg);
    let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    match alg {
        SigningAlg::ES256 => {
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).map_err(failed)?;
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                .map_err(|_| SigningError::Generate(alg))?;
            // An uncompressed point: 0x04, then x and y of 32 bytes each.
            let point = pair.public_key().as_ref();
            if point.len() != 65 || point[0] != 4 {
                return Err(SigningError::Generate(alg));
            }
            Ok((
                pkcs8.as_ref().to_vec(),
                json!({ "kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..]) }),
            ))
        }
        SigningAlg::RS256 => {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(failed)?;
            let pkcs8: aws_lc_rs::encoding::Pkcs8V1Der<'static> = pair.as_der().map_err(failed)?;
            let public = pair.public_key();
            Ok((
                pkcs8.as_ref().to_vec(),
                json!({
                    "kty": "RSA",
                    "n": b64(public.modulus().big_endian_without_leading_zero()),
                    "e": b64(public.exponent().big_endian_without_leading_zero()),
                }),
            ))
        }
        SigningAlg::EdDSA => {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(failed)?;
            let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| SigningError::Generate(alg))?;
            Ok((
                pkcs8.as_ref().to_vec(),
                json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref()) }),
            ))
        }
    }
}

/// The jsonwebtoken signing key of a PKCS#8 DER private key. jsonwebtoken takes EC and Ed25519
/// keys as PKCS#8, and RSA keys as PKCS#1 `RSAPrivateKey`, which PKCS#8 wraps.
fn encoding_key(alg: SigningAlg, pkcs8: &[u8]) -> Option<EncodingKey> {
    match alg {
        SigningAlg::ES256 => {
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8).ok()?;
            Some(EncodingKey::from_ec_der(pkcs8))
        }
        SigningAlg::EdDSA => {
            Ed25519KeyPair::from_pkcs8(pkcs8).ok()?;
            Some(EncodingKey::from_ed_der(pkcs8))
        }
        SigningAlg::RS256 => {
            let pkcs1 = pkcs1_of_pkcs8(pkcs8)?;
            aws_lc_rs::rsa::KeyPair::from_der(pkcs1).ok()?;
            Some(EncodingKey::from_rsa_der(pkcs1))
        }
    }
}

/// The `privateKey` of a PKCS#8 `PrivateKeyInfo` (RFC 5208): for RSA, the PKCS#1 key.
/// `SEQUENCE { INTEGER version, SEQUENCE algorithm, OCTET STRING privateKey, … }`.
fn pkcs1_of_pkcs8(der: &[u8]) -> Option<&[u8]> {
    let (0x30, info, _) = der_element(der)? else { return None };
    let (0x02, _version, rest) = der_element(info)? else { return None };
    let (0x30, _algorithm, rest) = der_element(rest)? else { return None };
    let (0x04, key, _) = der_element(rest)? else { return None };
    Some(key)
}

/// One DER element: its tag, its contents and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        (bytes.iter().fold(0usize, |len, &b| (len << 8) | usize::from(b)), rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// The RFC 7638 thumbprint of a public JWK: SHA-256 of its required members in lexicographic
/// order, without whitespace, base64url. Used as the `kid`.
pub fn thumbprint(jwk: &Value) -> String {
    let member = |name: &str| jwk.get(name).and_then(Value::as_str).unwrap_or_default();
    // serde_json writes strings with the escaping RFC 7638 requires; these values need none.
    let canonical = match member("kty") {
        "EC" => format!(
            r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
            Value::from(member("crv")),
            Value::from(member("x")),
            Value::from(member("y"))
        ),
        "RSA" => format!(r#"{{"e":{},"kty":"RSA","n":{}}}"#, Value::from(member("e")), Value::from(member("n"))),
        kty => format!(
            r#"{{"crv":{},"kty":{},"x":{}}}"#,
            Value::from(member("crv")),
            Value::from(kty),
            Value::from(member("x"))
        ),
    };
    crate::crypto::sha256_base64url(canonical.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwks_read_long_ago_is_cached_only_until_a_key_made_since_could_sign() {
        let settings = SigningKeySettings { jwks_max_age: Duration::from_secs(600), ..SigningKeySettings::default() };
        let at = |age: u64| settings.max_age_at(Duration::from_secs(age)).as_secs();
        // Keys re-read within a refresh interval (150 s): the whole lifetime.
        assert_eq!((at(0), at(150)), (600, 600));
        // Served from the cache while the store cannot be read: until the lead (750 s) of a key
        // made just after the read.
        assert_eq!((at(300), at(749), at(800)), (450, 1, 0));
    }

    #[test]
    fn a_first_key_made_on_a_clock_ahead_signs_here_within_the_leeway() {
        let key = |kid: &str, signs_from, retired_at| {
            Arc::new(LoadedKey {
                kid: kid.into(),
                alg: SigningAlg::EdDSA,
                signs_from,
                retired_at,
                unpublish_at: None,
                public: Err("not needed here".into()),
                encoding: None,
            })
        };
        let t = chrono::Utc::now();
        let seconds = chrono::Duration::seconds;
        let first = KeySet { loaded_at: Instant::now(), keys: vec![key("first", t + seconds(3), None)] };
        assert_eq!(first.signer(SigningAlg::EdDSA, t).map(|k| k.kid.as_str()), Some("first"));
        assert!(first.signer(SigningAlg::EdDSA, t - seconds(31)).is_none(), "not past the leeway");
        assert!(first.signer(SigningAlg::ES256, t).is_none());
        // A rotation's next key waits for its time while the current one signs.
        let rotating = KeySet {
            loaded_at: Instant::now(),
            keys: vec![key("current", t - seconds(60), Some(t + seconds(3))), key("next", t + seconds(3), None)],
        };
        assert_eq!(rotating.signer(SigningAlg::EdDSA, t).map(|k| k.kid.as_str()), Some("current"));
        assert_eq!(rotating.signer(SigningAlg::EdDSA, t + seconds(3)).map(|k| k.kid.as_str()), Some("next"));
        // After a gap (the current key retired before the next one's time, as written by
        // instances whose clocks differ): the next key, up to the leeway early, and no further.
        let gap = |starts: i64| KeySet {
            loaded_at: Instant::now(),
            keys: vec![key("current", t - seconds(60), Some(t)), key("next", t + seconds(starts), None)],
        };
        assert_eq!(gap(10).signer(SigningAlg::EdDSA, t + seconds(1)).map(|k| k.kid.as_str()), Some("next"));
        assert!(gap(40).signer(SigningAlg::EdDSA, t + seconds(1)).is_none(), "past the leeway");
    }

    #[test]
    fn the_thumbprint_is_rfc_7638s() {
        // The example of RFC 7638, section 3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(thumbprint(&jwk), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn public_jwks_have_the_members_of_their_key_type() {
        let decoded = |s: &Value| URL_SAFE_NO_PAD.decode(s.as_str().unwrap()).unwrap();
        let (_, ec) = generate_key(SigningAlg::ES256).unwrap();
        assert_eq!((ec["kty"].as_str(), ec["crv"].as_str()), (Some("EC"), Some("P-256")));
        assert_eq!((decoded(&ec["x"]).len(), decoded(&ec["y"]).len()), (32, 32));
        let (_, rsa) = generate_key(SigningAlg::RS256).unwrap();
        assert_eq!(rsa["kty"], "RSA");
        assert_eq!(decoded(&rsa["n"]).len(), 256, "2048 bits, no leading zero");
        assert_eq!(rsa["e"], "AQAB");
        let (_, ed) = generate_key(SigningAlg::EdDSA).unwrap();
        assert_eq!((ed["kty"].as_str(), ed["crv"].as_str()), (Some("OKP"), Some("Ed25519")));
        assert_eq!(decoded(&ed["x"]).len(), 32);
        for jwk in [&ec, &rsa, &ed] {
            assert!(jwk.get("d").is_none() && jwk.get("p").is_none(), "no private member: {jwk}");
        }
    }

    #[test]
    fn tokens_signed_with_a_private_key_verify_with_its_public_jwk() {
        for alg in SigningAlg::ALL {
            let (pkcs8, public) = generate_key(alg).unwrap();
            let encoding = encoding_key(alg, &pkcs8).expect("the PKCS#8 key is usable");
            let token =
                jsonwebtoken::encode(&Header::new(jwt_alg(alg)), &json!({ "exp": 4_000_000_000u64 }), &encoding)
                    .unwrap();
            let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(public).unwrap();
            let mut validation = Validation::new(jwt_alg(alg));
            validation.validate_aud = false;
            let claims = jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_jwk(&jwk).unwrap(), &validation);
            assert!(claims.is_ok(), "{alg:?}: {claims:?}");
        }
    }

    #[test]
    fn the_rsa_key_of_a_pkcs8_document_is_found() {
        let (pkcs8, _) = generate_key(SigningAlg::RS256).unwrap();
        let pkcs1 = pkcs1_of_pkcs8(&pkcs8).unwrap();
        assert!(aws_lc_rs::rsa::KeyPair::from_der(pkcs1).is_ok());
        assert!(pkcs1_of_pkcs8(&pkcs8[..pkcs8.len() - 1]).is_none(), "truncated");
        assert!(pkcs1_of_pkcs8(b"").is_none());
        assert!(encoding_key(SigningAlg::ES256, &pkcs8).is_none(), "an RSA key is not an EC key");
    }

    #[test]
    fn token_types_compare_as_rfc_7515_says() {
        assert!(same_type("at+jwt", "at+jwt"));
        assert!(same_type("application/at+JWT", "at+jwt"));
        assert!(same_type("jwt", "JWT"));
        assert!(!same_type("JWT", "at+jwt"));
        assert!(!same_type("", "JWT"));
    }

    #[test]
    fn a_key_signs_from_its_start_until_its_retirement() {
        let t = now();
        let minute = chrono::Duration::minutes(1);
        assert_eq!(KeyStatus::at(t + minute, None, t), KeyStatus::Next);
        assert_eq!(KeyStatus::at(t, None, t), KeyStatus::Signing);
        assert_eq!(KeyStatus::at(t - minute, Some(t + minute), t), KeyStatus::Signing);
        assert_eq!(KeyStatus::at(t - minute, Some(t), t), KeyStatus::Retired);
        let settings = SigningKeySettings::default();
        assert_eq!(settings.refresh_interval(), Duration::from_secs(150));
        assert_eq!(settings.publication_lead(), Duration::from_secs(750));
    }
}

//! Registered clients: their registration through the admin API (validated by
//! [`crate::domain::client_rules`]), the clients of the configuration file, and client
//! authentication at the token endpoint (RFC 6749 2.3, RFC 7523).
//!
//! Authentication methods: `client_secret_basic`, `client_secret_post`, `private_key_jwt` and
//! `none` (public clients: the client id only). One method per request. Secrets are only ever
//! kept as SHA-256 digests and compared in constant time. A client assertion is verified with a
//! key of the client's registered JWK Set (asymmetric algorithms only), must name the client as
//! `iss` and `sub` and the token endpoint (or the issuer) as `aud`, expire within
//! [`MAX_ASSERTION_LIFETIME`], and carry a `jti` that is used once: used `jti`s are kept in the
//! store until the assertion expires, so a replay is refused on every instance.
//!
//! [`Clients::get`] keeps found clients in memory for [`CACHE_TTL`]; a change through this
//! instance's admin API drops the entry at once, other instances when they read the change in the
//! cache-invalidation log (`cache.sync_interval_ms`, see [`crate::service::cache_sync`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::keys::SigningKeys;
use super::provider::delta;
use crate::cache::{Epoch, TtlCache};
use crate::crypto::{constant_time_eq, random_base36, random_secret, sha256};
use crate::domain::client_rules::{self, ASSERTION_ALGORITHMS, ClientFields, ClientRule, ClientRuleError, client_keys};
use crate::domain::{Client, ClientId, ClientKind, SigningAlg};
use crate::error::ErrorChain as _;
use crate::error::{ErrorCode, PublicError};
use crate::store::{ClientInsert, ClientUpdate, ConfigClientSync, Store, StoreError};

/// How long [`Clients::get`] reuses a client read from the store.
pub const CACHE_TTL: Duration = Duration::from_secs(10);
/// Most clients kept in memory.
pub const CACHE_ENTRIES: usize = 10_000;
/// The `client_assertion_type` of `private_key_jwt` (RFC 7523 2.2).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The latest `exp` accepted on a client assertion, from now: an hour, which is what Authlib's
/// `PrivateKeyJWT` signs for (and cannot be told otherwise); a replay is refused by its `jti`
/// whatever its lifetime.
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);
/// Clock-skew allowance on a client assertion's `exp` and `nbf`.
pub const ASSERTION_LEEWAY: Duration = Duration::from_secs(30);

/// How long a used assertion's record outlives the last moment it would be accepted: more than
/// the clocks of instances sharing a database may differ by.
const ASSERTION_KEPT_PAST_ITS_TIME: TimeDelta = TimeDelta::minutes(5);
/// The longest client assertion read.
pub const MAX_ASSERTION_LEN: usize = 16 * 1024;
/// The longest `jti` accepted.
pub const MAX_JTI_LEN: usize = 256;
/// Most clients in one page of the admin listing.
pub const MAX_PAGE: usize = 500;

/// The client credentials of a token request, as sent (the HTTP layer reads them:
/// `http::op::client_auth`).
#[derive(Clone, Default)]
pub struct ClientCredentials {
    /// `Authorization: Basic`, already form-urlencoded-decoded (client id, secret).
    pub basic: Option<(String, String)>,
    /// The `client_id` parameter.
    pub client_id: Option<String>,
    /// The `client_secret` parameter.
    pub client_secret: Option<String>,
    /// The `client_assertion_type` parameter.
    pub client_assertion_type: Option<String>,
    /// The `client_assertion` parameter.
    pub client_assertion: Option<String>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a secret nor an assertion.
        f.debug_struct("ClientCredentials")
            .field("basic", &self.basic.as_ref().map(|(id, _)| id))
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "…"))
            .field("client_assertion_type", &self.client_assertion_type)
            .field("client_assertion", &self.client_assertion.as_ref().map(|_| "…"))
            .finish()
    }
}

/// The client authentication methods (their registered names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `Authorization: Basic`.
    ClientSecretBasic,
    /// `client_secret` in the body.
    ClientSecretPost,
    /// A signed client assertion.
    PrivateKeyJwt,
    /// The client id only (public clients).
    None,
}

impl AuthMethod {
    /// The registered name (`token_endpoint_auth_method`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
            Self::PrivateKeyJwt => "private_key_jwt",
            Self::None => "none",
        }
    }

    /// The methods a client may use: `none` for a public client; the two secret methods when it
    /// has a secret, `private_key_jwt` when it has keys.
    pub fn of(client: &Client) -> Vec<AuthMethod> {
        if client.is_public() {
            return vec![Self::None];
        }
        let mut methods = Vec::new();
        if client.secret_hash.is_some() {
            methods.extend([Self::ClientSecretBasic, Self::ClientSecretPost]);
        }
        if client.jwks.is_some() {
            methods.push(Self::PrivateKeyJwt);
        }
        methods
    }
}

/// Why client authentication failed, as an RFC 6749 error ([`ClientAuthError::oauth_error`]) with
/// a description that is safe to show.
#[derive(Debug, thiserror::Error)]
pub enum ClientAuthError {
    /// `invalid_client`: unknown client, wrong secret, a method the client cannot use, a bad
    /// assertion.
    #[error("{0}")]
    InvalidClient(&'static str),
    /// `invalid_request`: more than one method, a malformed credential.
    #[error("{0}")]
    InvalidRequest(&'static str),
    /// `temporarily_unavailable` (the store is down) or `server_error`.
    #[error("the client cannot be checked now")]
    Store(#[from] StoreError),
}

impl ClientAuthError {
    /// The RFC 6749 `error` code.
    pub fn oauth_error(&self) -> &'static str {
        match self {
            Self::InvalidClient(_) => "invalid_client",
            Self::InvalidRequest(_) => "invalid_request",
            Self::Store(StoreError::Unavailable(_)) => "temporarily_unavailable",
            Self::Store(_) => "server_error",
        }
    }

    /// The `error_description`: what went wrong, nothing internal.
    pub fn description(&self) -> &'static str {
        match self {
            Self::InvalidClient(why) | Self::InvalidRequest(why) => why,
            Self::Store(StoreError::Unavailable(_)) => "the database is unavailable; try again shortly",
            Self::Store(_) => "an internal error occurred; it has been logged",
        }
    }
}

impl PublicError for ClientAuthError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidClient(_) => ErrorCode::InvalidClient,
            Self::InvalidRequest(_) => ErrorCode::InvalidRequest,
            Self::Store(e) => e.code(),
        }
    }

    fn challenge(&self) -> Option<&'static str> {
        matches!(self, Self::InvalidClient(_)).then_some("Basic realm=\"tessera\"")
    }
}

const UNKNOWN_OR_WRONG_SECRET: &str = "unknown client or wrong secret";

/// Why an admin operation on clients was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A field is not acceptable.
    #[error(transparent)]
    Invalid(#[from] ClientRuleError),
    /// No such client.
    #[error("no client has this id")]
    NotFound,
    /// The id is taken.
    #[error("a client with this id is registered already; choose another id")]
    IdTaken,
    /// Defined in the configuration file.
    #[error("this client is defined in the configuration file ([[oidc.clients]]): change it there")]
    ManagedInConfig,
    /// Changed concurrently, again and again.
    #[error("the client changed while this change was made; send it again")]
    Changed,
    /// A public client has no secret.
    #[error("a public client has no secret; it authenticates with PKCE")]
    PublicClient,
    /// A change that names no field (or only `null`s of fields that cannot be removed).
    #[error("name at least one field to change")]
    NothingToUpdate,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PublicError for ClientError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid(e) => match e.rule {
                ClientRule::Missing => ErrorCode::MissingField,
                ClientRule::TooLong => ErrorCode::FieldTooLong,
                ClientRule::ClientId => ErrorCode::InvalidClientId,
                ClientRule::Name => ErrorCode::InvalidName,
                ClientRule::RedirectUri => ErrorCode::InvalidRedirectUri,
                ClientRule::GrantTypes => ErrorCode::InvalidGrantType,
                ClientRule::Scope => ErrorCode::InvalidScope,
                ClientRule::Ttl => ErrorCode::InvalidTtl,
                ClientRule::Jwks => ErrorCode::InvalidJwks,
                ClientRule::Metadata => ErrorCode::InvalidClientMetadata,
            },
            Self::NotFound => ErrorCode::ClientNotFound,
            Self::IdTaken => ErrorCode::ClientIdTaken,
            Self::ManagedInConfig => ErrorCode::ClientManagedInConfig,
            Self::Changed => ErrorCode::ClientChanged,
            Self::PublicClient => ErrorCode::ClientIsPublic,
            Self::NothingToUpdate => ErrorCode::InvalidRequest,
            Self::Store(e) => e.code(),
        }
    }

    fn extensions(&self) -> Vec<(&'static str, serde_json::Value)> {
        match self {
            Self::Invalid(e) => vec![("field", e.field.clone().into())],
            _ => Vec::new(),
        }
    }
}

/// The client service.
#[derive(Clone)]
pub struct Clients {
    store: Arc<dyn Store>,
    cache: Arc<TtlCache<ClientId, Client>>,
    /// Moves on every invalidation: a read that was under way when a client changed does not
    /// cache what it read (it may be from before the change).
    epoch: Arc<Epoch>,
    /// The OpenID Provider's issuer URL, also accepted as a client assertion's `aud`.
    issuer: Option<String>,
    /// The OpenID Provider's keys: a client of an algorithm without a key yet gets one when it is
    /// registered, not at its first token.
    signing_keys: Option<SigningKeys>,
    /// Whether the cache-invalidation log was read lately (`PrincipalCache::answers`): a
    /// cached client answers only then, so that a secret rotated or a client deleted on another
    /// instance is not honoured here beyond the log's bound while this one cannot read it.
    log: Option<Arc<crate::service::principals::PrincipalCache>>,
    /// The algorithm of a client registered without `signing_alg` (`oidc.signing_alg`).
    default_alg: SigningAlg,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients").field("cache", &self.cache).field("issuer", &self.issuer).finish()
    }
}

/// The claims of a client assertion that are read once it verifies.
#[derive(Deserialize)]
struct AssertionClaims {
    exp: i64,
    jti: Option<String>,
}

/// The unverified claims that say which client an assertion is for.
#[derive(Deserialize)]
struct AssertionSubject {
    sub: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct AssertionHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

impl Clients {
    /// The service; `issuer` is the OpenID Provider's issuer URL (accepted as a client
    /// assertion's `aud` beside the token endpoint), if known.
    pub fn new(store: Arc<dyn Store>, issuer: Option<String>) -> Self {
        let issuer = issuer.map(|i| i.trim_end_matches('/').to_owned());
        let cache = Arc::new(TtlCache::new(CACHE_ENTRIES).counted_as("clients"));
        let default_alg = SigningAlg::default();
        Self { store, cache, epoch: Arc::default(), issuer, signing_keys: None, log: None, default_alg }
    }

    /// Signs the tokens of a client registered without `signing_alg` with `alg`
    /// (`oidc.signing_alg`; ES256 unless told).
    pub fn with_default_alg(mut self, alg: SigningAlg) -> Self {
        self.default_alg = alg;
        self
    }

    /// Answers from the cache only while `principals` does (the cache-invalidation log read
    /// lately).
    pub fn following_log_of(mut self, principals: Arc<crate::service::principals::PrincipalCache>) -> Self {
        self.log = Some(principals);
        self
    }

    /// Makes the first key of a registered client's algorithm when it has none (see
    /// [`Clients::publish_key_of`]).
    pub fn with_signing_keys(mut self, signing_keys: Option<SigningKeys>) -> Self {
        self.signing_keys = signing_keys;
        self
    }

    /// Makes the first key of `client`'s algorithm now if it has none, rather than at its first
    /// token: a first key signs at once, and a relying party that fetches the JWKS from another
    /// instance right after its first token must find it there. Every instance re-reads the keys
    /// within a second of a new one (the cache-invalidation log), and a client's first token
    /// comes after a sign-in at the earliest. On failure the first token makes the key.
    async fn publish_key_of(&self, client: &Client) {
        if let Some(keys) = &self.signing_keys
            && let Err(error) = keys.ensure(client.signing_alg).await
        {
            tracing::warn!(alg = client.signing_alg.as_str(), error = %error.chain(), "cannot make the first signing key of a client's algorithm yet");
        }
    }

    /// A client by id (`None` for an unknown or invalid id), from memory when read within
    /// [`CACHE_TTL`].
    pub async fn get(&self, id: &str) -> Result<Option<Client>, StoreError> {
        let Ok(id) = ClientId::parse(id) else { return Ok(None) };
        let now = Instant::now();
        let fresh = self.log.as_ref().is_none_or(|log| log.answers());
        if fresh && let Some(client) = self.cache.get(&id, now) {
            return Ok(Some(client));
        }
        let epoch = self.epoch.current();
        let client = self.store.client(&id).await?;
        if let Some(client) = &client {
            self.epoch.insert_unless_moved(&self.cache, epoch, id, client.clone(), CACHE_TTL);
        }
        Ok(client)
    }

    /// Authenticates the client of a request to an endpoint (`audiences`: the URLs a client
    /// assertion's `aud` may name besides the issuer — the token endpoint and the one called).
    pub async fn authenticate(
        &self,
        creds: &ClientCredentials,
        audiences: &[String],
    ) -> Result<Client, ClientAuthError> {
        self.authenticate_with_method(creds, audiences).await.map(|(client, _)| client)
    }

    /// [`Clients::authenticate`], also saying which method the client used.
    pub async fn authenticate_with_method(
        &self,
        creds: &ClientCredentials,
        audiences: &[String],
    ) -> Result<(Client, AuthMethod), ClientAuthError> {
        let assertion = creds.client_assertion_type.is_some() || creds.client_assertion.is_some();
        let methods = [creds.basic.is_some(), creds.client_secret.is_some(), assertion];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(ClientAuthError::InvalidRequest(
                "use one client authentication method per request (Basic, client_secret or client_assertion)",
            ));
        }
        if assertion {
            let (Some(kind), Some(assertion)) = (&creds.client_assertion_type, &creds.client_assertion) else {
                return Err(ClientAuthError::InvalidRequest("client_assertion_type and client_assertion go together"));
            };
            if kind != JWT_BEARER {
                return Err(ClientAuthError::InvalidRequest(
                    "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ));
            }
            let client = self.private_key_jwt(assertion, creds.client_id.as_deref(), audiences).await?;
            return Ok((client, AuthMethod::PrivateKeyJwt));
        }
        if let Some((id, secret)) = &creds.basic {
            if creds.client_id.as_ref().is_some_and(|body| body != id) {
                return Err(ClientAuthError::InvalidRequest(
                    "the client_id parameter differs from the client of the Authorization header",
                ));
            }
            // A public client's id with an empty password: the id alone, as some libraries send
            // it (as a blank `client_secret` parameter counts as absent). For any other client
            // it is a wrong secret.
            if secret.is_empty()
                && let Some(client) = self.get(id).await?
                && client.is_public()
            {
                return Ok((client, AuthMethod::None));
            }
            return Ok((self.secret(id, secret).await?, AuthMethod::ClientSecretBasic));
        }
        let Some(id) = &creds.client_id else {
            return Err(ClientAuthError::InvalidClient(
                "no client authentication: send client_id (public clients) or client credentials",
            ));
        };
        if let Some(secret) = &creds.client_secret {
            return Ok((self.secret(id, secret).await?, AuthMethod::ClientSecretPost));
        }
        Ok((self.public(id).await?, AuthMethod::None))
    }

    /// The public client `id`, which sent its id alone (method `none`).
    async fn public(&self, id: &str) -> Result<Client, ClientAuthError> {
        let client = self.get(id).await?.ok_or(ClientAuthError::InvalidClient("unknown client"))?;
        if !client.is_public() {
            return Err(ClientAuthError::InvalidClient(
                "this client is confidential: authenticate with its secret or a client assertion",
            ));
        }
        Ok(client)
    }

    async fn secret(&self, id: &str, secret: &str) -> Result<Client, ClientAuthError> {
        let presented = sha256(secret.as_bytes());
        let client = self.get(id).await?.ok_or(ClientAuthError::InvalidClient(UNKNOWN_OR_WRONG_SECRET))?;
        if client.is_public() {
            return Err(ClientAuthError::InvalidClient(
                "a public client does not authenticate with a secret: send client_id only, and use PKCE",
            ));
        }
        let Some(known) = &client.secret_hash else {
            return Err(ClientAuthError::InvalidClient(
                "this client has no secret: authenticate with a client assertion (private_key_jwt)",
            ));
        };
        // The secret a rotation replaced counts during its overlap.
        let previous = client.previous_secret_at(crate::domain::now());
        let replaced = previous.is_some_and(|previous| constant_time_eq(&presented, &previous.hash));
        if !constant_time_eq(&presented, known) && !replaced {
            return Err(ClientAuthError::InvalidClient(UNKNOWN_OR_WRONG_SECRET));
        }
        Ok(client)
    }

    async fn private_key_jwt(
        &self,
        assertion: &str,
        client_id: Option<&str>,
        audiences: &[String],
    ) -> Result<Client, ClientAuthError> {
        const MALFORMED: ClientAuthError = ClientAuthError::InvalidClient("the client assertion is not a signed JWT");
        if assertion.len() > MAX_ASSERTION_LEN {
            return Err(ClientAuthError::InvalidClient("the client assertion is too long"));
        }
        let mut parts = assertion.split('.');
        let (Some(header), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(MALFORMED);
        };
        let header: AssertionHeader = crate::upstream::tokens::decode_part(header).ok_or(MALFORMED)?;
        if header.crit.is_some() {
            return Err(ClientAuthError::InvalidClient("critical header extensions are not supported"));
        }
        let alg = header.alg.parse::<Algorithm>().ok().filter(|a| ASSERTION_ALGORITHMS.contains(a)).ok_or(
            ClientAuthError::InvalidClient(
                "the client assertion's alg is not accepted: sign it with one of the token endpoint's \
                 token_endpoint_auth_signing_alg_values_supported (RS256/384/512, PS256/384/512, ES256/384, EdDSA; \
                 never none or HS*)",
            ),
        )?;
        let subject: AssertionSubject = crate::upstream::tokens::decode_part(payload).ok_or(MALFORMED)?;
        let Some(serde_json::Value::String(sub)) = subject.sub else {
            return Err(ClientAuthError::InvalidClient("the client assertion's sub must be the client id"));
        };
        if client_id.is_some_and(|id| id != sub) {
            return Err(ClientAuthError::InvalidClient("the client assertion is for another client than client_id"));
        }
        let client = self.get(&sub).await?.ok_or(ClientAuthError::InvalidClient("unknown client"))?;
        let Some(jwks) = client.jwks.as_ref().filter(|_| !client.is_public()) else {
            return Err(ClientAuthError::InvalidClient(
                "this client has no registered keys: authenticate with its secret",
            ));
        };
        let keys = client_keys(jwks).map_err(|_| ClientAuthError::InvalidClient("the client's keys are not usable"))?;
        // The header's `kid` picks among the keys that have one; a key registered without a
        // `kid` still answers an assertion whose library names one (its private key had one).
        let by_kid: Vec<_> =
            keys.iter().filter(|k| k.fits(alg) && header.kid.is_some() && k.kid == header.kid).collect();
        let candidates: Vec<_> = match by_kid.is_empty() {
            false => by_kid,
            true => keys.iter().filter(|k| k.fits(alg) && (header.kid.is_none() || k.kid.is_none())).collect(),
        };
        let mut fitting = candidates.into_iter();
        let key = match (fitting.next(), fitting.next()) {
            (Some(key), None) => key,
            (None, _) => {
                return Err(ClientAuthError::InvalidClient(
                    "no registered key of the client fits the assertion's kid and alg",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(ClientAuthError::InvalidClient(
                    "several registered keys fit the assertion: name one with kid",
                ));
            }
        };
        let mut validation = Validation::new(alg);
        validation.leeway = ASSERTION_LEEWAY.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        validation.set_issuer(&[client.id.as_str()]);
        validation.sub = Some(client.id.as_str().to_owned());
        let mut audiences = audiences.to_vec();
        audiences.extend(self.issuer.clone());
        validation.set_audience(&audiences);
        let claims = jsonwebtoken::decode::<AssertionClaims>(assertion, &key.key, &validation)
            .map_err(|e| ClientAuthError::InvalidClient(assertion_error(&e)))?
            .claims;
        let now = crate::domain::now();
        let expires_at = DateTime::<Utc>::from_timestamp(claims.exp, 0).ok_or(MALFORMED)?;
        if expires_at > now + TimeDelta::from_std(MAX_ASSERTION_LIFETIME + ASSERTION_LEEWAY).unwrap_or(TimeDelta::MAX) {
            return Err(ClientAuthError::InvalidClient(
                "the client assertion's exp is too far ahead: at most an hour from now",
            ));
        }
        // No control characters: the jti is kept in a text column, where PostgreSQL refuses NUL.
        let jti = claims
            .jti
            .filter(|j| (1..=MAX_JTI_LEN).contains(&j.len()) && !j.chars().any(char::is_control))
            .ok_or(ClientAuthError::InvalidClient(
                "the client assertion needs a jti of 1 to 256 characters without control characters, new for each \
                 assertion",
            ))?;
        // Kept as long as the assertion would be accepted: its exp plus the leeway, plus the
        // second in which the JWT library, which compares whole seconds, still takes it — and
        // then some, since the instance whose sweeper deletes it may run ahead of the one a replay
        // reaches by a few seconds (a jti is never to be used again anyway).
        let keep_until = expires_at
            + TimeDelta::from_std(ASSERTION_LEEWAY).unwrap_or(TimeDelta::zero())
            + TimeDelta::seconds(1)
            + ASSERTION_KEPT_PAST_ITS_TIME;
        match self.store.use_client_assertion(&client.id, &jti, keep_until, now).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(ClientAuthError::InvalidClient("this client assertion was used before: make a new one"));
            }
            // The client was deleted meanwhile (another instance's cached copy answered above).
            Err(StoreError::Gone { .. }) => return Err(ClientAuthError::InvalidClient("unknown client")),
            Err(error) => return Err(error.into()),
        }
        Ok(client)
    }

    // ---- The admin API ------------------------------------------------------------------------

    /// Registers a client. A confidential client without keys gets a secret, returned here once.
    pub async fn create(&self, mut fields: ClientFields) -> Result<(Client, Option<SecretString>), ClientError> {
        let kind = match fields.kind.take() {
            Some(kind) => client_rules::parse_kind(&kind)?,
            None => {
                return Err(missing(
                    "kind",
                    "`kind` is required: confidential (a backend) or public (a browser or native app)",
                ));
            }
        };
        let id = match fields.id.take() {
            Some(id) => client_rules::parse_client_id(&id)?,
            None => ClientId::parse(&random_base36(24)).expect("a generated id is valid"),
        };
        let name = match fields.name.take() {
            Some(name) => client_rules::parse_name(&name)?,
            None => return Err(missing("name", "`name` (shown to users on the consent page) is required")),
        };
        let mut client = client_rules::new_client(id, name, kind, self.default_alg, false, crate::domain::now());
        client_rules::apply(&mut client, fields)?;
        let secret = (kind == ClientKind::Confidential && client.jwks.is_none()).then(random_secret);
        client.secret_hash = secret.as_ref().map(|s| sha256(s.expose_secret().as_bytes()));
        client_rules::check(&client)?;
        match self.store.insert_client(&client).await? {
            ClientInsert::Inserted => {
                self.publish_key_of(&client).await;
                Ok((client, secret))
            }
            ClientInsert::IdTaken => Err(ClientError::IdTaken),
        }
    }

    /// A client, read from the store (not the cache).
    pub async fn find(&self, id: &str) -> Result<Client, ClientError> {
        let id = ClientId::parse(id).map_err(|_| ClientError::NotFound)?;
        self.store.client(&id).await?.ok_or(ClientError::NotFound)
    }

    /// Up to `limit` clients (1 to [`MAX_PAGE`]) ordered by id, after the id `after`, and
    /// whether more follow (one row more is read to tell).
    pub async fn list(&self, after: Option<&ClientId>, limit: usize) -> Result<(Vec<Client>, bool), ClientError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut clients = self.store.list_clients(after, i64::try_from(limit + 1).unwrap_or(101)).await?;
        let more = clients.len() > limit;
        clients.truncate(limit);
        Ok((clients, more))
    }

    /// Changes the present fields of a client registered through the admin API (`id` and `kind`
    /// cannot change); with whether anything changed.
    pub async fn update(&self, id: &str, fields: ClientFields) -> Result<(Client, bool), ClientError> {
        if fields.id.is_some() {
            return Err(metadata("id", "the id cannot be changed: register a new client"));
        }
        if fields.kind.is_some() {
            return Err(metadata("kind", "the kind cannot be changed: register a new client"));
        }
        if fields.names_nothing() {
            return Err(ClientError::NothingToUpdate);
        }
        let (client, changed) = self
            .change(id, |client| {
                client_rules::apply(client, fields.clone())?;
                client_rules::check(client)?;
                Ok(())
            })
            .await?;
        self.publish_key_of(&client).await;
        Ok((client, changed))
    }

    /// Gives a confidential client a new secret, returned here once. The secret it replaces, if
    /// any, is still accepted for `overlap_seconds` (at most [`MAX_SECRET_OVERLAP_SECONDS`]), so that
    /// the app can be given the new one meanwhile; with none, at once no more (a leaked secret). A secret that
    /// an earlier rotation's overlap still accepted is not accepted any more. Nothing else is
    /// checked: a key of its `jwks` stored before today's rules (which a `PATCH` would have taken
    /// out) must not stand in the way of replacing a leaked secret.
    pub async fn rotate_secret(&self, id: &str, overlap_seconds: u64) -> Result<(Client, SecretString), ClientError> {
        let range = 0..=MAX_SECRET_OVERLAP_SECONDS;
        let overlap = delta(client_rules::ttl("overlap_seconds", overlap_seconds, &range, "none", "30 days")?);
        let secret = random_secret();
        let hash = sha256(secret.expose_secret().as_bytes());
        let (client, _) = self
            .change(id, |client| {
                if client.is_public() {
                    return Err(ClientError::PublicClient);
                }
                let until = crate::domain::now() + overlap;
                client.previous_secret = client
                    .secret_hash
                    .filter(|_| !overlap.is_zero())
                    .map(|hash| crate::domain::PreviousSecret { hash, until });
                client.secret_hash = Some(hash);
                Ok(())
            })
            .await?;
        Ok((client, secret))
    }

    /// Deletes a client registered through the admin API.
    pub async fn delete(&self, id: &str) -> Result<(), ClientError> {
        let client = self.find(id).await?;
        if client.from_config {
            return Err(ClientError::ManagedInConfig);
        }
        let store = self.store.clone();
        let id = client.id.clone();
        let deleted = self.write_then_forget(&client.id, async move { store.delete_client(&id).await }).await?;
        if deleted { Ok(()) } else { Err(ClientError::NotFound) }
    }

    /// Reads a client, changes it with `edit` (which checks what it changed) and writes it if
    /// nobody changed it meanwhile (three tries); with whether `edit` changed anything.
    async fn change(
        &self,
        id: &str,
        edit: impl Fn(&mut Client) -> Result<(), ClientError>,
    ) -> Result<(Client, bool), ClientError> {
        for _ in 0..3 {
            let old = self.find(id).await?;
            if old.from_config {
                return Err(ClientError::ManagedInConfig);
            }
            let mut new = old.clone();
            edit(&mut new)?;
            if new == old {
                // Nothing changes: no write, no audit of a change, nothing for caches to forget.
                return Ok((old, false));
            }
            new.updated_at = crate::domain::now().max(old.updated_at + TimeDelta::microseconds(1));
            let (store, written, since) = (self.store.clone(), new.clone(), old.updated_at);
            let outcome =
                self.write_then_forget(&new.id, async move { store.update_client(&written, since).await }).await?;
            match outcome {
                ClientUpdate::Updated => return Ok((new, true)),
                ClientUpdate::NotFound => return Err(ClientError::NotFound),
                ClientUpdate::Changed => continue,
            }
        }
        Err(ClientError::Changed)
    }

    /// Makes the store's configuration clients exactly `clients` (see
    /// [`Store::sync_config_clients`]).
    pub async fn sync_config(&self, clients: &[Client]) -> Result<ConfigClientSync, StoreError> {
        let sync = self.store.sync_config_clients(clients).await?;
        for client in clients {
            self.invalidate(&client.id);
            self.publish_key_of(client).await;
        }
        Ok(sync)
    }

    /// Forgets the cached record of a client (another instance changed it).
    pub fn forget(&self, id: &ClientId) {
        self.invalidate(id);
    }

    /// Forgets every cached client.
    pub fn forget_all(&self) {
        self.epoch.advance();
        self.cache.clear();
    }

    /// Runs a write of the client `id` to its end, even if the caller is dropped, and forgets
    /// the cached client whatever it answered: a commit whose reply was lost is still a change,
    /// which this instance must honour at once (a rotated secret, a deleted client).
    async fn write_then_forget<T: Send + 'static>(
        &self,
        id: &ClientId,
        write: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (clients, id) = (self.clone(), id.clone());
        crate::service::principals::store_change_to_end(write, move |_| clients.invalidate(&id)).await
    }

    fn invalidate(&self, id: &ClientId) {
        self.epoch.advance();
        self.cache.remove_key(id);
    }

    /// Deletes the records of used client assertions that expired (the sweeper calls it).
    pub async fn delete_expired_assertions(&self) -> Result<u64, StoreError> {
        self.store.delete_expired_client_assertions(crate::domain::now()).await
    }
}

fn missing(field: &str, message: &str) -> ClientError {
    ClientError::Invalid(ClientRuleError { field: field.into(), rule: ClientRule::Missing, message: message.into() })
}

/// The longest a rotated secret is still accepted beside the new one, in seconds (30 days).
pub const MAX_SECRET_OVERLAP_SECONDS: u64 = 30 * 24 * 3600;

fn metadata(field: &str, message: &str) -> ClientError {
    ClientError::Invalid(ClientRuleError { field: field.into(), rule: ClientRule::Metadata, message: message.into() })
}

fn assertion_error(error: &jsonwebtoken::errors::Error) -> &'static str {
    match error.kind() {
        ErrorKind::InvalidSignature => "the client assertion's signature does not verify with the client's key",
        ErrorKind::ExpiredSignature => "the client assertion has expired",
        ErrorKind::ImmatureSignature => "the client assertion is not valid yet (nbf)",
        ErrorKind::InvalidAudience => "the client assertion's aud must be the token endpoint URL",
        ErrorKind::InvalidIssuer | ErrorKind::InvalidSubject => {
            "the client assertion's iss and sub must both be the client id"
        }
        ErrorKind::MissingRequiredClaim(_) => "the client assertion needs iss, sub, aud, exp and jti",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            "the client assertion's alg does not fit the key"
        }
        _ => "the client assertion is not valid",
    }
}

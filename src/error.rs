//! The one table of public error codes.
//!
//! Every error a client sees carries one of these codes: a stable snake_case string, an HTTP
//! status and a short title. Codes are part of the API contract: never rename one, only add.
//! The HTTP layer renders them as RFC 9457 `application/problem+json` (see `http::problem`).
//!
//! Errors reach clients through one path: every error type that a handler may return implements
//! [`PublicError`] (its code, a detail that is safe to show, optional members of the body), and one
//! blanket conversion turns any of them into the HTTP response. A 5xx never shows its own message:
//! the client gets the code's fixed sentence, the cause goes to the log, once.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::http::StatusCode;
use serde_json::Value;

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = ($status:ident, $code:literal, $title:literal), )*) => {
        /// A stable, public error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The snake_case code clients match on.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            /// The HTTP status that goes with the code.
            pub fn status(self) -> StatusCode {
                match self { $(ErrorCode::$variant => StatusCode::$status,)* }
            }

            /// A short, human title that does not change from occurrence to occurrence.
            pub fn title(self) -> &'static str {
                match self { $(ErrorCode::$variant => $title,)* }
            }
        }
    };
}

error_codes! {
    // Protocol-level errors.
    /// No route matches the path.
    NotFound = (NOT_FOUND, "not_found", "Not found"),
    /// The route exists but not for this method.
    MethodNotAllowed = (METHOD_NOT_ALLOWED, "method_not_allowed", "Method not allowed"),
    /// The body is larger than the server accepts.
    PayloadTooLarge = (PAYLOAD_TOO_LARGE, "payload_too_large", "Request body too large"),
    /// The body is not declared as JSON.
    UnsupportedMediaType = (UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "Unsupported media type"),
    /// The `Accept` header names no representation this endpoint answers in.
    NotAcceptable = (NOT_ACCEPTABLE, "not_acceptable", "Not acceptable"),
    /// The body is not syntactically valid JSON.
    MalformedJson = (BAD_REQUEST, "malformed_json", "Malformed JSON"),
    /// The JSON is valid but does not have the expected shape or types.
    InvalidRequest = (BAD_REQUEST, "invalid_request", "Invalid request"),

    // Input validation.
    /// A required field is absent or blank.
    MissingField = (BAD_REQUEST, "missing_field", "A required field is missing"),
    /// A field is longer than allowed.
    FieldTooLong = (BAD_REQUEST, "field_too_long", "A field is too long"),
    /// An import's last CSV record has no line break after it: the file may have been cut short.
    UnterminatedRecord = (BAD_REQUEST, "unterminated_record", "A record without its line break"),
    /// The email is not a valid address.
    InvalidEmail = (BAD_REQUEST, "invalid_email", "Invalid email address"),
    /// The issuer is not a valid issuer URL.
    InvalidIssuer = (BAD_REQUEST, "invalid_issuer", "Invalid issuer"),
    /// The subject is not acceptable.
    InvalidSubject = (BAD_REQUEST, "invalid_subject", "Invalid subject"),
    /// The display name is not acceptable.
    InvalidName = (BAD_REQUEST, "invalid_name", "Invalid name"),
    /// A user id in the path is not a UUID.
    InvalidUserId = (BAD_REQUEST, "invalid_user_id", "Invalid user id"),
    /// A team reference is neither a team id nor a valid slug.
    InvalidTeam = (BAD_REQUEST, "invalid_team", "Invalid team"),
    /// A domain name is not valid.
    InvalidDomain = (BAD_REQUEST, "invalid_domain", "Invalid domain"),
    /// The sign-in state is missing, unknown, expired, already used, or not this browser's.
    InvalidState = (BAD_REQUEST, "invalid_state", "Invalid sign-in state"),
    /// The callback's provider is not the one the sign-in started with.
    ProviderMismatch = (BAD_REQUEST, "provider_mismatch", "Provider mismatch"),
    /// The authorization response's `iss` is not the provider's (RFC 9207).
    IssuerMismatch = (BAD_REQUEST, "issuer_mismatch", "Issuer mismatch"),
    /// The provider refused the authorization code (or the callback has none).
    InvalidCode = (BAD_REQUEST, "invalid_code", "Invalid authorization code"),
    /// The provider's id_token does not verify.
    InvalidIdToken = (BAD_REQUEST, "invalid_id_token", "Invalid id_token"),
    /// The provider answered `access_denied` instead of a code: the user cancelled there (or the
    /// provider's policy turned them away).
    ProviderDenied = (BAD_REQUEST, "provider_denied", "Sign-in refused by the provider"),
    /// The provider answered another error instead of a code (`unauthorized_client`,
    /// `invalid_scope`, …): not the user's doing, and a retry may not cure it — the provider's
    /// setup or the entry's may need a change. (`server_error` and `temporarily_unavailable` are
    /// `provider_unavailable`.)
    ProviderRefused = (BAD_REQUEST, "provider_refused", "Sign-in failed at the provider"),
    /// A fresh sign-in was asked of the provider (`prompt=login`, `max_age`), and its id_token
    /// shows an older one.
    LoginNotFresh = (BAD_REQUEST, "login_not_fresh", "Sign-in not fresh"),
    /// Adding or removing a sign-in method through a session needs a recent sign-in.
    SignInAgain = (FORBIDDEN, "sign_in_again", "A recent sign-in is needed"),
    /// `return_to` is neither a local path nor an allowed origin.
    InvalidReturnTo = (BAD_REQUEST, "invalid_return_to", "Invalid return_to"),
    /// A connector key is not acceptable.
    InvalidConnectorKey = (BAD_REQUEST, "invalid_connector_key", "Invalid connector key"),
    /// A provider name is not acceptable.
    InvalidProvider = (BAD_REQUEST, "invalid_provider", "Invalid provider"),
    /// A profile kind is not one of the known kinds.
    InvalidProfileKind = (BAD_REQUEST, "invalid_profile_kind", "Invalid profile kind"),
    /// A scope is not acceptable.
    InvalidScope = (BAD_REQUEST, "invalid_scope", "Invalid scope"),
    /// A slug is not acceptable.
    InvalidSlug = (BAD_REQUEST, "invalid_slug", "Invalid slug"),
    /// A role is not one of owner, admin, member.
    InvalidRole = (BAD_REQUEST, "invalid_role", "Invalid role"),
    /// A listing's `cursor` is not one the server handed out.
    InvalidCursor = (BAD_REQUEST, "invalid_cursor", "Invalid cursor"),
    /// The connector is not declared in the configuration (or declares no fields), so an `env`
    /// profile cannot be made for it.
    UnknownConnector = (BAD_REQUEST, "unknown_connector", "Unknown connector"),
    /// Profiles of this kind cannot be created (`interactive`).
    UnsupportedProfileKind = (BAD_REQUEST, "unsupported_profile_kind", "Unsupported profile kind"),
    /// A value names a field its connector does not declare.
    UnknownEnvField = (BAD_REQUEST, "unknown_env_field", "Unknown field"),
    /// A required field of the connector has no value.
    MissingEnvField = (BAD_REQUEST, "missing_env_field", "A required field has no value"),
    /// A value is empty, holds a control character, or does not match its field's pattern.
    InvalidEnvValue = (BAD_REQUEST, "invalid_env_value", "Invalid value"),
    /// A browser session's storage state, browser kind or DevTools URL is not acceptable.
    InvalidBrowserSession = (BAD_REQUEST, "invalid_browser_session", "Invalid browser session"),

    // Authentication and authorisation.
    /// No credentials were presented.
    MissingCredentials = (UNAUTHORIZED, "missing_credentials", "Authentication required"),
    /// The presented credentials are not valid.
    InvalidCredentials = (UNAUTHORIZED, "invalid_credentials", "Invalid credentials"),
    /// A credential header (or a session cookie) is sent more than once, or two credential
    /// headers carry different tokens: which one counts would depend on who reads the request.
    AmbiguousCredentials = (BAD_REQUEST, "ambiguous_credentials", "Ambiguous credentials"),
    /// The issuer is not on the allow-list.
    IssuerNotAllowed = (FORBIDDEN, "issuer_not_allowed", "Issuer not allowed"),
    /// The user is disabled.
    UserDisabled = (FORBIDDEN, "user_disabled", "User disabled"),
    /// The token is not a well-formed JWT, or lacks a required claim.
    MalformedToken = (UNAUTHORIZED, "malformed_token", "Malformed token"),
    /// The token's `alg` is not accepted for its issuer.
    AlgorithmNotAllowed = (UNAUTHORIZED, "algorithm_not_allowed", "Algorithm not allowed"),
    /// The token names a key its issuer does not publish.
    UnknownKey = (UNAUTHORIZED, "unknown_key", "Unknown signing key"),
    /// The token's signature does not verify.
    SignatureInvalid = (UNAUTHORIZED, "signature_invalid", "Invalid signature"),
    /// The token has expired.
    TokenExpired = (UNAUTHORIZED, "token_expired", "Token expired"),
    /// The token is not valid yet.
    TokenNotYetValid = (UNAUTHORIZED, "token_not_yet_valid", "Token not yet valid"),
    /// The token is not meant for an accepted audience.
    AudienceMismatch = (UNAUTHORIZED, "audience_mismatch", "Audience mismatch"),
    /// One of Tessera's own tokens has another `typ` than the one expected (an id token where an
    /// access token is expected, say).
    TokenTypeMismatch = (UNAUTHORIZED, "token_type_mismatch", "Wrong token type"),
    /// One of Tessera's own tokens names another issuer (another Tessera, or another public URL).
    TokenIssuerMismatch = (UNAUTHORIZED, "token_issuer_mismatch", "Token issuer mismatch"),
    /// One of Tessera's own access tokens whose grant has ended (revoked, signed out, user
    /// disabled, identity unlinked).
    TokenRevoked = (UNAUTHORIZED, "token_revoked", "Token revoked"),
    /// One of Tessera's own access tokens that acts for no user (`client_credentials`: its
    /// subject is the client), where a user is needed.
    TokenWithoutUser = (UNAUTHORIZED, "token_without_user", "Token acts for no user"),
    /// The identity is unknown and its issuer does not provision on first sight.
    IdentityNotProvisioned = (FORBIDDEN, "identity_not_provisioned", "Identity not provisioned"),
    /// The caller is not a member of the team (or the team does not exist).
    NotAMember = (FORBIDDEN, "not_a_member", "Not a member"),
    /// The auth profile is another member's personal account.
    NotProfileOwner = (FORBIDDEN, "not_profile_owner", "Not the profile's owner"),
    /// Only team owners (or admins) may do this.
    NotTeamAdmin = (FORBIDDEN, "not_team_admin", "Your role in the team does not allow this"),
    /// The connect link was made for another user.
    ConnectLinkNotYours = (FORBIDDEN, "connect_link_not_yours", "Connect link of another user"),
    /// A form post of a page without the session's CSRF token, or sent from another site.
    CsrfFailed = (FORBIDDEN, "csrf_failed", "Form check failed"),

    // Resources.
    /// No user has that id.
    UserNotFound = (NOT_FOUND, "user_not_found", "User not found"),
    /// No team has that id or slug.
    TeamNotFound = (NOT_FOUND, "team_not_found", "Team not found"),
    /// No auth profile has that slug in the team.
    ProfileNotFound = (NOT_FOUND, "profile_not_found", "Auth profile not found"),
    /// The user is not a member of the team.
    MemberNotFound = (NOT_FOUND, "member_not_found", "Member not found"),
    /// The connect link is unknown, expired or used.
    InvalidConnectLink = (NOT_FOUND, "invalid_connect_link", "Invalid connect link"),
    /// No sign-in provider has that name.
    UnknownProvider = (NOT_FOUND, "unknown_provider", "Unknown provider"),
    /// A connected account's provider was removed from the configuration.
    ProviderNotConfigured = (CONFLICT, "provider_not_configured", "Provider not configured"),
    /// The user has no identity with that id.
    IdentityNotFound = (NOT_FOUND, "identity_not_found", "Identity not found"),
    /// The identity belongs to another user.
    IdentityAlreadyLinked = (CONFLICT, "identity_already_linked", "Identity already linked"),
    /// An account with this email exists; the new identity must be linked from it.
    LinkRequired = (CONFLICT, "link_required", "Link required"),
    /// The user's last identity cannot be unlinked.
    LastIdentity = (CONFLICT, "last_identity", "Last identity"),
    /// The caller has a pending profile for this connector under another slug.
    PendingAuthConflict = (CONFLICT, "pending_auth_conflict", "Pending profile conflict"),
    /// The slug is taken in this team.
    SlugTaken = (CONFLICT, "slug_taken", "Slug taken"),
    /// The team holds as many auth profiles as it may.
    AuthProfileLimitReached = (CONFLICT, "auth_profile_limit_reached", "Auth profile limit reached"),
    /// The profile is not connected through OAuth.
    NotOauthProfile = (CONFLICT, "not_oauth_profile", "Not an OAuth profile"),
    /// The profile is of another kind than the endpoint sets (env values on a browser session…).
    ProfileKindMismatch = (CONFLICT, "profile_kind_mismatch", "Wrong profile kind"),
    /// The provider account is not the one connected before.
    AccountMismatch = (CONFLICT, "account_mismatch", "Account mismatch"),
    /// Another flow connected the profile at the same time.
    ConnectConflict = (CONFLICT, "connect_conflict", "Connect conflict"),
    /// The profile is not connected yet.
    ProfileNotConnected = (CONFLICT, "profile_not_connected", "Profile not connected"),
    /// The provider refused the refresh token; the profile must be connected again.
    NeedsReauth = (CONFLICT, "needs_reauth", "Reconnection needed"),
    /// A member's personal profile cannot be the team's default for its connector.
    PersonalProfileNotDefault = (CONFLICT, "personal_profile_not_default", "Personal profile cannot be the default"),
    /// The profile kind cannot be tested (yet).
    TestNotSupported = (CONFLICT, "test_not_supported", "Test not supported"),
    /// The profile kept changing while an update was being applied.
    ProfileChanged = (CONFLICT, "profile_changed", "Profile changed"),
    /// Neither the caller's own connected account nor an active team default serves the connector.
    NoCredentialForConnector = (NOT_FOUND, "no_credential_for_connector", "No credential for connector"),
    /// The team's last owner cannot leave.
    LastOwner = (CONFLICT, "last_owner", "Last owner"),
    /// A member's default team goes with its user, not by itself.
    DefaultTeam = (CONFLICT, "default_team", "Default team"),
    /// The domain is claimed by another team.
    DomainAlreadyClaimed = (CONFLICT, "domain_already_claimed", "Domain already claimed"),
    /// Tessera's OpenID Provider is off: it needs `auth.public_url` and the key ring
    /// (`encryption.keys`).
    OpenidProviderDisabled = (NOT_FOUND, "openid_provider_disabled", "OpenID Provider disabled"),

    // OpenID Provider: registered clients (the admin API) and client authentication.
    /// A client id is not acceptable.
    InvalidClientId = (BAD_REQUEST, "invalid_client_id", "Invalid client id"),
    /// A redirect URI cannot be registered (a wildcard, plain http off loopback, a fragment…).
    InvalidRedirectUri = (BAD_REQUEST, "invalid_redirect_uri", "Invalid redirect URI"),
    /// A grant type is unknown, or the grant types do not fit together or with the client's kind.
    InvalidGrantType = (BAD_REQUEST, "invalid_grant_type", "Invalid grant type"),
    /// A token lifetime is out of bounds.
    InvalidTtl = (BAD_REQUEST, "invalid_ttl", "Invalid token lifetime"),
    /// A client's JWK Set is not a set of public signing keys.
    InvalidJwks = (BAD_REQUEST, "invalid_jwks", "Invalid JWK Set"),
    /// Another part of a client registration is not acceptable (kind, signing algorithm, a secret…).
    InvalidClientMetadata = (BAD_REQUEST, "invalid_client_metadata", "Invalid client metadata"),
    /// Client authentication failed (RFC 6749 `invalid_client`).
    InvalidClient = (UNAUTHORIZED, "invalid_client", "Client authentication failed"),
    /// No client has that id.
    ClientNotFound = (NOT_FOUND, "client_not_found", "Client not found"),
    /// A client with that id is registered already.
    ClientIdTaken = (CONFLICT, "client_id_taken", "Client id taken"),
    /// The client is defined in the configuration file and is changed there, not through the API.
    ClientManagedInConfig = (CONFLICT, "client_managed_in_config", "Client managed in the configuration file"),
    /// The client changed while this change was made; send it again.
    ClientChanged = (CONFLICT, "client_changed", "Client changed meanwhile"),
    /// A public client has no secret.
    ClientIsPublic = (CONFLICT, "client_is_public", "Public client"),

    // Webhooks.
    /// A webhook id in the path is not a UUID.
    InvalidWebhookId = (BAD_REQUEST, "invalid_webhook_id", "Invalid webhook id"),
    /// A webhook URL cannot be registered (not http(s), user info, a private address…).
    InvalidWebhookUrl = (BAD_REQUEST, "invalid_webhook_url", "Invalid webhook URL"),
    /// An event type is not one Tessera sends.
    InvalidEventType = (BAD_REQUEST, "invalid_event_type", "Invalid event type"),
    /// `since` is not an RFC 3339 time.
    InvalidSince = (BAD_REQUEST, "invalid_since", "Invalid since"),
    /// No webhook endpoint has that id.
    WebhookNotFound = (NOT_FOUND, "webhook_not_found", "Webhook not found"),
    /// The endpoint is defined in the configuration file and is changed there, not through the API.
    WebhookManagedInConfig = (CONFLICT, "webhook_managed_in_config", "Webhook managed in the configuration file"),
    /// As many webhook endpoints are registered through the API as there may be.
    WebhookLimitReached = (CONFLICT, "webhook_limit_reached", "Webhook limit reached"),

    // The audit log.
    /// `until` is not an RFC 3339 time, or is not after `since`.
    InvalidUntil = (BAD_REQUEST, "invalid_until", "Invalid until"),
    /// A filter of the audit log (`action`, `actor`, `target_kind`, `target_id`) is not acceptable.
    InvalidAuditFilter = (BAD_REQUEST, "invalid_audit_filter", "Invalid audit filter"),
    /// Something the request refers to was removed by a change that ran beside it.
    ChangedMeanwhile = (CONFLICT, "changed_meanwhile", "Changed meanwhile"),

    // Server side.
    /// The database cannot be reached.
    StoreUnavailable = (SERVICE_UNAVAILABLE, "store_unavailable", "Storage unavailable"),
    /// The issuer's keys cannot be fetched and none are cached.
    IssuerUnavailable = (SERVICE_UNAVAILABLE, "issuer_unavailable", "Issuer unavailable"),
    /// No encryption key is configured, so credentials cannot be stored.
    EncryptionNotConfigured = (SERVICE_UNAVAILABLE, "encryption_not_configured", "Encryption not configured"),
    /// Another instance's refresh of the token did not finish in time.
    RefreshInProgress = (SERVICE_UNAVAILABLE, "refresh_in_progress", "Refresh in progress"),
    /// A signing key that signs now, or will, does not decrypt with this instance's key ring
    /// (readiness only: the instance cannot sign tokens).
    SigningKeyUnusable = (SERVICE_UNAVAILABLE, "signing_key_unusable", "Signing key unusable"),
    /// A stored credential of a connected account does not decrypt with this instance's key ring
    /// (a ring rolled out to some instances only, or a key removed too early).
    CredentialUndecryptable = (SERVICE_UNAVAILABLE, "credential_undecryptable", "Credential undecryptable"),
    /// A sign-in provider cannot be reached or answered something unusable.
    ProviderUnavailable = (BAD_GATEWAY, "provider_unavailable", "Provider unavailable"),
    /// The instance is shutting down and takes no new work (`GET /readyz`, and a change it will
    /// not start).
    ShuttingDown = (SERVICE_UNAVAILABLE, "shutting_down", "Shutting down"),
    /// Anything else that went wrong on our side; details are in the server log only.
    InternalError = (INTERNAL_SERVER_ERROR, "internal_error", "Internal error"),
}

impl ErrorCode {
    /// The level an answer with this code is logged at — the code only, never a token, an
    /// authorization code, a cookie or an email:
    /// - a refused credential or sign-in: info, so that operators see why someone could not get
    ///   in (a missing credential is not a refusal of one: it stays at debug);
    /// - `issuer_unavailable`: debug; the outage is logged once when it starts and once when it
    ///   ends by the issuer's key cache, and every refused request is counted in the metric
    ///   `tessera_issuer_unavailable_total`;
    /// - `store_unavailable` and `provider_unavailable` (an outage, which every request meets):
    ///   error once every [`OUTAGE_LOG_EVERY`], debug otherwise, so that clients retrying in a
    ///   loop cannot flood the log (see [`ErrorCode::log_level_now`]);
    /// - `shutting_down`: debug — what a draining instance answers, above all to its load
    ///   balancer's `/readyz` probes; the shutdown itself is logged once, when the signal comes;
    /// - any other 5xx: error;
    /// - any other 4xx: debug.
    pub fn log_level(self) -> tracing::Level {
        use ErrorCode::*;
        match self {
            // Credentials: admin tokens, user tokens, the user behind a token.
            InvalidCredentials | AmbiguousCredentials | IssuerNotAllowed | UserDisabled | MalformedToken
            | AlgorithmNotAllowed | UnknownKey | SignatureInvalid | TokenExpired | TokenNotYetValid
            | AudienceMismatch | IdentityNotProvisioned | TokenTypeMismatch | TokenIssuerMismatch | TokenRevoked
            | TokenWithoutUser
            // Sign-in, linking and connect flows.
            | InvalidState | ProviderMismatch | IssuerMismatch | InvalidCode | InvalidIdToken
            | ProviderDenied | ProviderRefused | LoginNotFresh | SignInAgain | InvalidReturnTo | LinkRequired | IdentityAlreadyLinked
            | ConnectLinkNotYours | CsrfFailed
            // Client authentication at the OpenID Provider.
            | InvalidClient => tracing::Level::INFO,
            IssuerUnavailable | ShuttingDown => tracing::Level::DEBUG,
            code if code.status().is_server_error() => tracing::Level::ERROR,
            _ => tracing::Level::DEBUG,
        }
    }

    /// [`ErrorCode::log_level`] for an answer made now: an outage's code (`store_unavailable`,
    /// `provider_unavailable`) is at error for the first answer in each [`OUTAGE_LOG_EVERY`]
    /// and at debug for the others.
    pub fn log_level_now(self) -> tracing::Level {
        static LAST_MS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
        static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);
        let slot = match self {
            ErrorCode::StoreUnavailable => &LAST_MS[0],
            ErrorCode::ProviderUnavailable => &LAST_MS[1],
            _ => return self.log_level(),
        };
        // Milliseconds since the first outage answer, plus one: 0 is "never".
        let now = BASE.elapsed().as_millis() as u64 + 1;
        let last = slot.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= OUTAGE_LOG_EVERY.as_millis() as u64;
        if due && slot.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.log_level()
        } else {
            tracing::Level::DEBUG
        }
    }

    /// The detail every occurrence of a server-side code shows, whatever its cause: the cause
    /// itself is for the log only. `None` for codes whose errors say what happened themselves.
    pub fn fixed_detail(self) -> Option<&'static str> {
        Some(match self {
            ErrorCode::StoreUnavailable => "the database is unavailable; try again shortly",
            ErrorCode::IssuerUnavailable => {
                "the issuer's keys cannot be fetched and none are cached; try again shortly"
            }
            ErrorCode::ProviderUnavailable => {
                "the provider cannot be reached or answered something unusable; try again"
            }
            ErrorCode::SigningKeyUnusable => {
                "a signing key does not decrypt with this instance's key ring (TESSERA_ENCRYPTION_KEYS); \
                 the log names it"
            }
            ErrorCode::CredentialUndecryptable => {
                "a stored credential does not decrypt with this instance's key ring (TESSERA_ENCRYPTION_KEYS); \
                 the log names its key"
            }
            ErrorCode::InternalError => "an internal error occurred; it has been logged",
            ErrorCode::ShuttingDown => "this instance is shutting down; send requests to another",
            ErrorCode::ChangedMeanwhile => {
                "something this request refers to was changed or removed while it ran; look again and resend"
            }
            _ => return None,
        })
    }
}

/// The challenge sent with every refused bearer token (RFC 6750).
pub const INVALID_TOKEN_CHALLENGE: &str = "Bearer realm=\"tessera\", error=\"invalid_token\"";

/// An error that a client may see. Implementing it is all an error type needs to be returned by
/// a handler: `http::problem` converts every `PublicError` into a problem+json response.
pub trait PublicError: std::error::Error + Send + Sync + 'static {
    /// The public code.
    fn code(&self) -> ErrorCode;

    /// The `detail` of the response: the code's fixed sentence where it has one (5xx), otherwise
    /// the error's own message, which must therefore say what to fix and hold nothing internal.
    fn detail(&self) -> String {
        self.code().fixed_detail().map_or_else(|| self.to_string(), str::to_owned)
    }

    /// Members added to the body, such as `existing_slug`.
    fn extensions(&self) -> Vec<(&'static str, Value)> {
        Vec::new()
    }

    /// The status, when it is not the code's own.
    fn status(&self) -> StatusCode {
        self.code().status()
    }

    /// The `WWW-Authenticate` challenge to send, if any.
    fn challenge(&self) -> Option<&'static str> {
        None
    }
}

impl PublicError for crate::store::StoreError {
    fn code(&self) -> ErrorCode {
        match self {
            crate::store::StoreError::Unavailable(_) => ErrorCode::StoreUnavailable,
            crate::store::StoreError::Gone { .. } => ErrorCode::ChangedMeanwhile,
            _ => ErrorCode::InternalError,
        }
    }
}

/// How often an outage's answers (`store_unavailable`, `provider_unavailable`) are logged at
/// error: the first in each such interval; the others at debug.
pub const OUTAGE_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Formats an error with its chain of causes (`error: cause: cause`), for logs and the
/// command line; never for an API answer.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

/// [`Chain`] as a method of every error (and, through auto-deref, of every reference to one):
/// `tracing::warn!(error = %error.chain(), …)` logs the causes a bare `%error` leaves out (a
/// reqwest error's "error sending request" without why, a store error without the database's
/// word).
pub trait ErrorChain {
    /// This error with its causes.
    fn chain(&self) -> Chain<'_>;
}

impl<E: std::error::Error + 'static> ErrorChain for E {
    fn chain(&self) -> Chain<'_> {
        Chain(self)
    }
}

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut said = self.0.to_string();
        f.write_str(&said)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            // A cause its error already printed (sqlx's "error communicating with database: {0}")
            // is not said twice.
            let text = cause.to_string();
            if !said.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            said = text;
            source = cause.source();
        }
        Ok(())
    }
}

/// What a caught panic said: its message when it has one (the text of `panic!` or a failed
/// `expect`), else a fixed phrase.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(text), _) => (*text).to_owned(),
        (None, Some(text)) => text.clone(),
        (None, None) => "a panic without a message".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn a_chain_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "Permission denied");
        let error = crate::store::StoreError::Database(sqlx::Error::Io(io));
        assert_eq!(Chain(&error).to_string(), "database error: error communicating with database: Permission denied");
        let request = crate::store::StoreError::Unavailable(sqlx::Error::PoolTimedOut);
        assert_eq!(Chain(&request).to_string(), format!("the database is unavailable: {}", sqlx::Error::PoolTimedOut));
    }

    #[test]
    fn codes_are_unique_snake_case_and_map_to_error_statuses() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "duplicate code {s}");
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') && !s.starts_with('_'),
                "{s} is not snake_case"
            );
            assert!(code.status().is_client_error() || code.status().is_server_error());
            assert!(!code.title().is_empty());
            if code.status().is_server_error() && *code != ErrorCode::EncryptionNotConfigured {
                assert!(
                    code.fixed_detail().is_some() || *code == ErrorCode::RefreshInProgress,
                    "{s}: a 5xx shows a fixed sentence, never its cause"
                );
            }
        }
    }
}

//! The apps Tessera is an OpenID Provider for: registered clients, their grant types, signing
//! algorithms and redirect URIs (matched exactly; loopback redirects of native apps match on any
//! port, RFC 8252 section 7.3).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A client id: 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ClientId(String);

/// Why a client id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a client id is 1 to 64 characters of letters, digits, '.', '_' or '-', not dots alone")]
pub struct ClientIdError;

impl ClientId {
    /// The longest id.
    pub const MAX_LEN: usize = 64;

    /// Validates an id.
    pub fn parse(value: &str) -> Result<Self, ClientIdError> {
        // Not dots alone: `.` and `..` would be path segments no client could address by.
        let ok = (1..=Self::MAX_LEN).contains(&value.len())
            && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            && value.bytes().any(|b| b != b'.');
        if ok { Ok(Self(value.to_owned())) } else { Err(ClientIdError) }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a client can keep a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientKind {
    /// A backend: authenticates with a secret or a signed assertion.
    Confidential,
    /// A browser or native app: no secret, PKCE required.
    Public,
}

/// An OAuth grant type a client may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GrantType {
    /// `authorization_code`.
    #[serde(rename = "authorization_code")]
    AuthorizationCode,
    /// `refresh_token`.
    #[serde(rename = "refresh_token")]
    RefreshToken,
    /// `client_credentials` (backends; tokens without a user).
    #[serde(rename = "client_credentials")]
    ClientCredentials,
    /// `urn:ietf:params:oauth:grant-type:token-exchange` (RFC 8693).
    #[serde(rename = "urn:ietf:params:oauth:grant-type:token-exchange")]
    TokenExchange,
}

impl GrantType {
    /// Every grant type, in the order discovery lists them.
    pub const ALL: [GrantType; 4] =
        [Self::AuthorizationCode, Self::RefreshToken, Self::ClientCredentials, Self::TokenExchange];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
            Self::ClientCredentials => "client_credentials",
            Self::TokenExchange => "urn:ietf:params:oauth:grant-type:token-exchange",
        }
    }
}

impl FromStr for GrantType {
    type Err = ();

    fn from_str(value: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|g| g.as_str() == value).ok_or(())
    }
}

/// The algorithm Tessera signs a client's tokens with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum SigningAlg {
    /// ECDSA P-256 with SHA-256 (the default).
    #[default]
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, for relying parties that know nothing else.
    RS256,
    /// Ed25519.
    EdDSA,
}

impl SigningAlg {
    /// Every algorithm, in the order discovery lists them.
    pub const ALL: [SigningAlg; 3] = [Self::ES256, Self::RS256, Self::EdDSA];

    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ES256 => "ES256",
            Self::RS256 => "RS256",
            Self::EdDSA => "EdDSA",
        }
    }
}

impl FromStr for SigningAlg {
    type Err = ();

    fn from_str(value: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|a| a.as_str() == value).ok_or(())
    }
}

/// A registered redirect URI: absolute, no fragment, `https` or a loopback `http`
/// (`127.0.0.1`, `[::1]` or `localhost`), or a private-use scheme of a native app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RedirectUri(String);

/// Why a redirect URI cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectUriError {
    /// Not an absolute URI.
    #[error("a redirect URI must be an absolute URI")]
    NotAbsolute,
    /// Has a fragment.
    #[error("a redirect URI must not have a fragment")]
    Fragment,
    /// Plain `http` to a host that is not loopback.
    #[error("a redirect URI must use https, except on a loopback address (127.0.0.1, [::1], localhost)")]
    InsecureHttp,
    /// Longer than [`RedirectUri::MAX_LEN`].
    #[error("a redirect URI is at most 2048 characters")]
    TooLong,
    /// A wildcard.
    #[error("a redirect URI must not contain a wildcard ('*'); register each URI exactly")]
    Wildcard,
    /// A space or a control character, which no URI has (RFC 3986).
    #[error("a redirect URI must not contain spaces or control characters; percent-encode them")]
    Whitespace,
    /// A scheme a browser would run or read locally (`javascript:`, `data:`, `file:`, …).
    #[error("a redirect URI must not use the javascript, data, file, vbscript, blob or about scheme")]
    UnsafeScheme,
    /// A network protocol's scheme other than `http(s)` (`ws:`, `ftp:`): the code would travel
    /// to a host, perhaps in the clear.
    #[error(
        "a redirect URI to a network host uses https; a native app's own scheme is best a reverse domain name it owns, such as com.example.app:/callback (RFC 8252 7.1)"
    )]
    NotPrivateUseScheme,
}

/// Schemes of network protocols (IANA's permanent registrations that name a host), which no
/// native app claims as its own.
const NETWORK_SCHEMES: [&str; 21] = [
    "ws", "wss", "ftp", "ftps", "sftp", "ssh", "telnet", "gopher", "ldap", "ldaps", "smtp", "imap", "pop", "irc",
    "ircs", "news", "nntp", "rtsp", "sip", "sips", "tftp",
];

/// Whether `value` has no whitespace and no control character: RFC 3986 allows neither in a URI,
/// and a URI parser would quietly encode or drop them, so that what is stored (kept as given)
/// would differ from what was checked.
pub fn is_uri_text(value: &str) -> bool {
    !value.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl RedirectUri {
    /// The longest URI.
    pub const MAX_LEN: usize = 2048;

    /// Validates a URI for registration. It is kept as given: matching is exact.
    pub fn parse(value: &str) -> Result<Self, RedirectUriError> {
        if value.len() > Self::MAX_LEN {
            return Err(RedirectUriError::TooLong);
        }
        if value.contains('*') {
            return Err(RedirectUriError::Wildcard);
        }
        if !is_uri_text(value) {
            return Err(RedirectUriError::Whitespace);
        }
        let url = url::Url::parse(value).map_err(|_| RedirectUriError::NotAbsolute)?;
        if url.fragment().is_some() || value.contains('#') {
            return Err(RedirectUriError::Fragment);
        }
        if matches!(url.scheme(), "javascript" | "data" | "file" | "vbscript" | "blob" | "about") {
            return Err(RedirectUriError::UnsafeScheme);
        }
        // A native app's own scheme (RFC 8252 7.1: best a reversed domain name, though apps such
        // as `vscode:` use one word) hands the code to the app; a network protocol's would send
        // it to a host, perhaps in the clear.
        if NETWORK_SCHEMES.contains(&url.scheme()) {
            return Err(RedirectUriError::NotPrivateUseScheme);
        }
        if url.scheme() == "http" && !is_loopback(&url) {
            return Err(RedirectUriError::InsecureHttp);
        }
        if url.cannot_be_a_base() && url.scheme() == "https" {
            return Err(RedirectUriError::NotAbsolute);
        }
        Ok(Self(value.to_owned()))
    }

    /// A URI read back from the store: checked when it was registered, by the rules of the
    /// time. Not checked again, so that a rule added later (no whitespace) does not make a
    /// client registered before it unreadable.
    pub fn from_stored(value: String) -> Self {
        Self(value)
    }

    /// The URI as registered.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a requested `redirect_uri` matches this registration: the same string exactly,
    /// or, for an `http` loopback IP literal, the same URI with any port (RFC 8252 7.3); for
    /// `http://localhost` too, which RFC 8252 8.3 discourages but native tools and MCP clients
    /// send (with a port they pick at random), and which browsers resolve to the loopback
    /// interface only (RFC 6761 6.3). The
    /// requested URI must then be in normal form, without userinfo or fragment, so that what is
    /// compared is what a browser would be sent to.
    pub fn matches(&self, requested: &str) -> bool {
        if self.0 == requested {
            return true;
        }
        let (Ok(registered), Ok(asked)) = (url::Url::parse(&self.0), url::Url::parse(requested)) else {
            return false;
        };
        let loopback = |u: &url::Url| u.scheme() == "http" && is_loopback(u);
        loopback(&registered)
            && loopback(&asked)
            && asked.as_str() == requested
            && asked.username().is_empty()
            && asked.password().is_none()
            && asked.fragment().is_none()
            && registered.host() == asked.host()
            && registered.path() == asked.path()
            && registered.query() == asked.query()
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(domain)) => domain == "localhost",
        None => false,
    }
}

/// A registered client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Its id.
    pub id: ClientId,
    /// A name shown on the consent page.
    pub name: String,
    /// Confidential or public.
    pub kind: ClientKind,
    /// SHA-256 of its secret (confidential clients authenticating with one).
    pub secret_hash: Option<[u8; 32]>,
    /// The secret a rotation with an overlap replaced, accepted beside `secret_hash` for a while.
    pub previous_secret: Option<PreviousSecret>,
    /// Public keys for `private_key_jwt` (a JWK Set), if it authenticates that way.
    pub jwks: Option<serde_json::Value>,
    /// Where codes may be sent, matched exactly.
    pub redirect_uris: Vec<RedirectUri>,
    /// Where RP-initiated logout may send the browser, matched exactly.
    pub post_logout_redirect_uris: Vec<RedirectUri>,
    /// Scopes it may ask for.
    pub scopes: Vec<String>,
    /// Grant types it may use.
    pub grant_types: Vec<GrantType>,
    /// Resources (RFC 8707) it may ask tokens for; its own id is always allowed as audience.
    pub resources: Vec<String>,
    /// First-party clients skip the consent page.
    pub first_party: bool,
    /// The algorithm of its id tokens and access tokens.
    pub signing_alg: SigningAlg,
    /// Lifetime of its access tokens (id tokens live `oidc.id_token_ttl_seconds`).
    pub access_token_ttl: Duration,
    /// Lifetime of its refresh tokens (since the grant started).
    pub refresh_token_ttl: Duration,
    /// Defined in the configuration file (read-only through the admin API).
    pub from_config: bool,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A client's secret that a rotation replaced with an overlap: still accepted until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousSecret {
    /// Its SHA-256.
    pub hash: [u8; 32],
    /// Until when it is accepted.
    pub until: DateTime<Utc>,
}

/// The scope that asks for access while the user is away (OpenID Connect Core, section 11): its
/// grant is not bound to the browser session it came from.
pub const OFFLINE_ACCESS: &str = "offline_access";

impl Client {
    /// The replaced secret still accepted at `now`, if any.
    pub fn previous_secret_at(&self, now: DateTime<Utc>) -> Option<&PreviousSecret> {
        self.previous_secret.as_ref().filter(|previous| previous.until > now)
    }

    /// Whether [`OFFLINE_ACCESS`] means anything from it: it may refresh and registered that
    /// scope. From any other client it is ignored where asked, at authorization and at refresh
    /// (OpenID Connect Core, section 11: it asks for a refresh token, which such a client never
    /// gets or was not registered to hold; RFC 6749 3.3 lets a server ignore part of a scope).
    pub fn may_go_offline(&self) -> bool {
        self.allows(GrantType::RefreshToken) && self.scopes.iter().any(|s| s == OFFLINE_ACCESS)
    }

    /// The registered redirect URI that `requested` matches, if any.
    pub fn redirect_uri(&self, requested: &str) -> Option<&RedirectUri> {
        self.redirect_uris.iter().find(|r| r.matches(requested))
    }

    /// Whether it may use `grant`.
    pub fn allows(&self, grant: GrantType) -> bool {
        self.grant_types.contains(&grant)
    }

    /// Whether it registered `resource` (RFC 8707), spelled as registered or not (see
    /// [`same_resource`]).
    pub fn has_resource(&self, resource: &str) -> bool {
        self.registered_resource(resource).is_some()
    }

    /// The registered resource `asked` names, spelled as registered: what a token's `aud` says,
    /// however the client spelled it — the very spelling when it is registered (a client may list
    /// both, as registrations from before this matching had to).
    pub fn registered_resource(&self, asked: &str) -> Option<&str> {
        let exact = self.resources.iter().find(|r| *r == asked);
        let spelled_otherwise = || {
            let asked = url::Url::parse(asked).ok()?;
            self.resources.iter().find(|r| url::Url::parse(r).is_ok_and(|r| r == asked))
        };
        exact.or_else(spelled_otherwise).map(String::as_str)
    }

    /// Whether a token whose `aud` is `aud` was issued for it: its id, or one of its resources.
    pub fn is_audience(&self, aud: &str) -> bool {
        aud == self.id.as_str() || self.has_resource(aud)
    }

    /// Whether it is public (PKCE, no authentication).
    pub fn is_public(&self) -> bool {
        self.kind == ClientKind::Public
    }
}

/// Whether two resource URIs name the same resource: equal, or equal once normalised as RFC 3986
/// sections 6.2.2 and 6.2.3 say (and WHATWG URLs serialise): scheme and host in lower case, no
/// default port, an empty path as `/`. The official MCP SDKs send `https://mcp.example.com/`
/// (a URL's `href`) for a server whose metadata, and registration, say `https://mcp.example.com`.
pub fn same_resource(a: &str, b: &str) -> bool {
    a == b || matches!((url::Url::parse(a), url::Url::parse(b)), (Ok(a), Ok(b)) if a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_matches_however_its_url_is_spelled() {
        for (registered, asked) in [
            ("https://mcp.example.com", "https://mcp.example.com/"),
            ("https://mcp.example.com/", "https://mcp.example.com"),
            ("https://mcp.example.com/mcp", "HTTPS://Mcp.Example.COM:443/mcp"),
            ("http://localhost:8080", "http://LOCALHOST:8080/"),
            ("urn:example:api", "urn:example:api"),
        ] {
            assert!(same_resource(registered, asked), "{registered} / {asked}");
        }
        for (registered, asked) in [
            ("https://mcp.example.com/mcp", "https://mcp.example.com/mcp/"),
            ("https://mcp.example.com/MCP", "https://mcp.example.com/mcp"),
            ("https://mcp.example.com", "https://mcp.example.com:8443/"),
            ("https://mcp.example.com", "http://mcp.example.com/"),
            ("https://mcp.example.com/a?x=1", "https://mcp.example.com/a"),
            ("urn:example:api", "urn:example:API"),
        ] {
            assert!(!same_resource(registered, asked), "{registered} / {asked}");
        }
    }

    #[test]
    fn redirect_uris_match_exactly() {
        let r = RedirectUri::parse("https://app.example.com/cb").unwrap();
        assert!(r.matches("https://app.example.com/cb"));
        for other in [
            "https://app.example.com/cb/",
            "https://app.example.com/cb?x=1",
            "https://app.example.com/cb#f",
            "https://APP.example.com/cb",
            "https://app.example.com:444/cb",
            "https://app.example.com/CB",
            "http://app.example.com/cb",
        ] {
            assert!(!r.matches(other), "{other}");
        }
    }

    #[test]
    fn loopback_redirects_match_on_any_port_only() {
        let r = RedirectUri::parse("http://127.0.0.1/callback").unwrap();
        assert!(r.matches("http://127.0.0.1:51234/callback"));
        assert!(!r.matches("http://127.0.0.1:51234/callback/x"));
        assert!(!r.matches("http://127.0.0.2:51234/callback"));
        let v6 = RedirectUri::parse("http://[::1]:8080/cb").unwrap();
        assert!(v6.matches("http://[::1]:9999/cb"));
        // `localhost` too, but only as `localhost`: the host is compared as registered.
        let named = RedirectUri::parse("http://localhost:3000/cb").unwrap();
        assert!(named.matches("http://localhost:3001/cb") && named.matches("http://localhost/cb"));
        assert!(!named.matches("http://127.0.0.1:3001/cb") && !named.matches("http://localhost.evil.example:3001/cb"));
        assert!(!named.matches("https://localhost:3001/cb"), "only http");
        // Only the port may differ: no fragment, userinfo, backslash or non-normal form.
        for tricky in [
            "http://127.0.0.1:1234#x/callback",
            "http://127.0.0.1:1234\\/callback",
            "http://127.0.0.1:1234@127.0.0.1/callback",
            "http://user@127.0.0.1:1234/callback",
            "http://127.0.0.1:1234/x/../callback",
            "http://127.0.0.1:1234/callback?x=1",
        ] {
            assert!(!r.matches(tricky), "{tricky}");
        }
    }

    #[test]
    fn client_ids_are_path_segments() {
        assert!(ClientId::parse("web.app-1_x").is_ok());
        assert!(ClientId::parse(".well").is_ok());
        for bad in ["", ".", "..", "a/b", "a b"] {
            assert_eq!(ClientId::parse(bad), Err(ClientIdError), "{bad:?}");
        }
    }

    #[test]
    fn registration_refuses_what_cannot_be_matched_safely() {
        assert_eq!(RedirectUri::parse("https://*.example.com/cb"), Err(RedirectUriError::Wildcard));
        assert_eq!(RedirectUri::parse("https://a.example/cb#x"), Err(RedirectUriError::Fragment));
        assert_eq!(RedirectUri::parse("http://a.example/cb"), Err(RedirectUriError::InsecureHttp));
        assert_eq!(RedirectUri::parse("/cb"), Err(RedirectUriError::NotAbsolute));
        assert!(RedirectUri::parse("com.example.app:/oauth2redirect").is_ok());
        for unsafe_uri in ["javascript:alert(1)", "data:text/html,x", "file:///etc/passwd"] {
            assert_eq!(RedirectUri::parse(unsafe_uri), Err(RedirectUriError::UnsafeScheme), "{unsafe_uri}");
        }
        for network in ["ws://partner.example/cb", "wss://partner.example/cb", "ftp://host/cb"] {
            assert_eq!(RedirectUri::parse(network), Err(RedirectUriError::NotPrivateUseScheme), "{network}");
        }
        for app in ["vscode://publisher.ext/cb", "cursor://anysphere.cursor-retrieval/oauth/cb", "myapp:/cb"] {
            assert!(RedirectUri::parse(app).is_ok(), "{app}");
        }
    }
}

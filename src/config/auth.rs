//! Configuration of browser sign-in: the `[auth]` table, the `[[providers]]` list and the
//! encryption key ring for upstream tokens.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use super::{ConfigError, DEFAULT_ALGORITHMS, endpoint_url, parse_algorithm};
use crate::crypto::keyring::KeyRing;
use crate::domain::Issuer;
use crate::upstream::catalogue::{self, Template};

/// Browser sign-in and sessions.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The URL browsers reach Tessera at, used to build callback URLs (`auth.public_url`,
    /// `TESSERA_PUBLIC_URL`). Required when a provider is configured.
    pub public_url: Option<Url>,
    /// Whether cookies are `Secure` with the `__Host-` prefix (`auth.cookie_secure`,
    /// `TESSERA_COOKIE_SECURE`); turn off only for plain-HTTP development on localhost.
    pub cookie_secure: bool,
    /// The domain the session cookie is shared with (`auth.session_cookie_domain`): the host of
    /// `public_url` or a parent of it, so that forward-auth answers for apps on sibling hosts.
    /// `None` (the default): the cookie is the host's alone (`__Host-`).
    pub session_cookie_domain: Option<String>,
    /// The provider `/auth/login` uses without `?provider=` (`auth.default_provider`).
    pub default_provider: Option<String>,
    /// Origins an absolute `return_to` may point at (`auth.return_to_origins`); relative paths
    /// are always accepted.
    pub return_to_origins: Vec<String>,
    /// Absolute lifetime of a session (`auth.session_ttl_hours`).
    pub session_ttl: Duration,
    /// A session unused this long ends (`auth.session_idle_minutes`).
    pub session_idle: Duration,
    /// A pending auth profile not connected within this time is not reused, and is deleted
    /// (`auth.pending_profile_ttl_hours`).
    pub pending_profile_ttl: Duration,
    /// The most live auth profiles (connected accounts, pending ones included) a team holds,
    /// personal ones of every member included (`auth.max_profiles_per_team`).
    pub max_profiles_per_team: u32,
}

/// Whether `name` is a provider name: 1 to 32 of `a-z`, `0-9`, `-` and `_`.
pub fn is_provider_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The kinds of upstream providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// Any OpenID Connect issuer, through discovery.
    Oidc,
    /// GitHub (OAuth2 and the REST API), or GitHub Enterprise.
    GitHub,
    /// GitLab through its OpenID Connect support (gitlab.com or self-hosted).
    GitLab,
    /// Plain OAuth 2.0: authorization, token and (optionally) revocation endpoints, and the
    /// profile read with JSON pointers from a profile endpoint or the token answer.
    OAuth2,
}

impl ProviderKind {
    /// Whether the provider signs users in with OpenID Connect (an id token, asked for with the
    /// `openid` scope): `oidc` and `gitlab`.
    pub fn speaks_oidc(self) -> bool {
        matches!(self, ProviderKind::Oidc | ProviderKind::GitLab)
    }
}

/// How a client authenticates at a token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAuth {
    /// HTTP Basic (`client_secret_basic`).
    ClientSecretBasic,
    /// In the form body (`client_secret_post`).
    ClientSecretPost,
}

/// How an `oauth2` provider's profile endpoint is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserinfoMethod {
    /// `GET` with the access token.
    Get,
    /// `POST` with the access token, and the configured JSON body if any.
    Post,
}

/// Where an `oauth2` provider's profile is, and which JSON pointers say what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileMapping {
    /// How the profile endpoint (`userinfo_endpoint`) is called; without an endpoint the
    /// pointers read the token answer.
    pub method: UserinfoMethod,
    /// The JSON body of a `POST` (e.g. a GraphQL query).
    pub body: Option<String>,
    /// The stable account id (a string or a number).
    pub account_id: String,
    /// The login.
    pub login: Option<String>,
    /// The email.
    pub email: Option<String>,
    /// Whether the email is verified (a boolean); without it no email counts as verified.
    pub email_verified: Option<String>,
    /// The display name.
    pub name: Option<String>,
}

/// The protocol details in which providers differ, most of them from a catalogue template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderProtocol {
    /// The catalogue template the entry names, if any.
    pub template: Option<String>,
    /// Whether the authorization request carries a PKCE S256 challenge.
    pub pkce: bool,
    /// How the client authenticates at the token endpoint; `None`: the kind's own way (Basic,
    /// or the form body for GitHub).
    pub token_auth: Option<TokenAuth>,
    /// What joins scopes in the authorization request, and splits them in token answers.
    pub scope_separator: String,
    /// Extra parameters of every authorization request (Atlassian's `audience`).
    pub authorize_params: Vec<(String, String)>,
    /// Extra parameters of the authorization requests whose tokens Tessera keeps (Google's
    /// `access_type=offline&prompt=consent`): a sign-in that keeps none does not ask for a
    /// refresh token, nor make Google show its consent screen every time.
    pub offline_authorize_params: Vec<(String, String)>,
    /// The access-token lifetime assumed when a token answer has no `expires_in`.
    pub default_expires_in: Option<Duration>,
    /// Where the profile of an `oauth2` provider is.
    pub profile: Option<ProfileMapping>,
    /// Whether people sign in with it; off for providers whose account is a workspace rather
    /// than a person (Slack, Notion, HubSpot), which serve connected accounts only.
    pub sign_in: bool,
    /// Audiences besides the client id that an id_token may also name (OpenID Connect Core
    /// 3.1.3.7: one with an audience the client does not trust is refused).
    pub trusted_audiences: Vec<String>,
    /// Token-endpoint error codes that, besides `invalid_grant`, mean the code or refresh token
    /// is refused for good (Zoom's `invalid_request`), in lower case.
    pub refusal_errors: Vec<String>,
    /// How a fresh login is asked for (a relying party's `prompt=login` or `max_age`).
    pub fresh_login: FreshLogin,
    /// Scopes every authorization request asks for, beside a connected account's own (those
    /// the profile endpoint or a refresh token needs).
    pub required_scopes: Vec<String>,
}

/// How a provider is asked for a fresh login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreshLogin {
    /// `prompt=login` (and, from an OpenID Connect provider, `max_age=0`, whose id_token's
    /// `auth_time` is then checked).
    PromptLogin,
    /// `prompt=select_account`, for a provider that takes no `prompt=login` (Google): the user
    /// chooses the account again, which is all that can be asked, and no `auth_time` is checked.
    SelectAccount,
}

impl FreshLogin {
    /// The `prompt` value sent.
    pub fn prompt(self) -> &'static str {
        match self {
            FreshLogin::PromptLogin => "login",
            FreshLogin::SelectAccount => "select_account",
        }
    }

    /// Whether an OpenID Connect provider is also sent `max_age=0`, and so must state its
    /// `auth_time`.
    pub fn asks_auth_time(self) -> bool {
        self == FreshLogin::PromptLogin
    }
}

impl Default for ProviderProtocol {
    fn default() -> Self {
        Self {
            template: None,
            pkce: true,
            token_auth: None,
            scope_separator: " ".into(),
            authorize_params: Vec::new(),
            offline_authorize_params: Vec::new(),
            default_expires_in: None,
            profile: None,
            sign_in: true,
            trusted_audiences: Vec::new(),
            refusal_errors: Vec::new(),
            fresh_login: FreshLogin::PromptLogin,
            required_scopes: Vec::new(),
        }
    }
}

/// One sign-in provider.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Unique name, used in URLs (`/auth/callback/{name}`).
    pub name: String,
    /// What kind of provider it is.
    pub kind: ProviderKind,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret, read from an environment variable or a file; `None` for a public
    /// client (PKCE only).
    pub client_secret: Option<SecretString>,
    /// Scopes requested.
    pub scopes: Vec<String>,
    /// The OpenID issuer (OIDC, GitLab), or the fixed issuer that keys this provider's
    /// identities (GitHub: `https://github.com`).
    pub issuer: Issuer,
    /// Overrides of the provider's endpoints (for tests, GitHub Enterprise, self-hosted GitLab).
    pub endpoints: ProviderEndpoints,
    /// Signature algorithms accepted on id_tokens.
    pub algorithms: Vec<Algorithm>,
    /// Whether this provider's `email_verified` is trusted: only then does a sign-in record the
    /// email as verified, and may it link to an existing account automatically.
    pub trusted_email_verification: bool,
    /// Link a first sign-in to the existing user with the same verified email (only with
    /// `trusted_email_verification`).
    pub auto_link_by_email: bool,
    /// Keep the upstream access and refresh tokens, encrypted.
    pub store_tokens: bool,
    /// PKCE, client authentication, scope separator, extra parameters and profile mapping.
    pub protocol: ProviderProtocol,
    /// The icon shown on the pages (an https URL or a path on this server); `None`: a built-in
    /// one for well-known providers, else a monogram.
    pub icon_url: Option<String>,
}

impl ProviderConfig {
    /// The scopes an authorization request asks for: the entry's, or a connected account's own
    /// (`own`, when it names any), which replace them — then with `openid` (an OpenID Connect
    /// provider names the account only in an id token) and the entry's `required_scopes` (those
    /// the profile endpoint or a refresh token needs), each once.
    pub fn asked_scopes(&self, own: Option<&[String]>) -> Vec<String> {
        let Some(own) = own.filter(|own| !own.is_empty()) else { return self.scopes.clone() };
        let mut scopes = own.to_vec();
        if self.kind.speaks_oidc() && !scopes.iter().any(|s| s == "openid") {
            scopes.insert(0, "openid".to_owned());
        }
        for required in &self.protocol.required_scopes {
            if !scopes.contains(required) {
                scopes.push(required.clone());
            }
        }
        scopes
    }
}

#[cfg(test)]
impl ProviderConfig {
    /// An entry named `name` with no secret, no scopes and defaults everywhere, for unit tests.
    pub(crate) fn for_tests(name: &str, kind: ProviderKind, issuer: &str) -> Self {
        Self {
            name: name.into(),
            kind,
            client_id: "id".into(),
            client_secret: None,
            scopes: Vec::new(),
            issuer: crate::domain::Issuer::parse(issuer).expect("a valid issuer"),
            endpoints: ProviderEndpoints::default(),
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            trusted_email_verification: false,
            auto_link_by_email: false,
            store_tokens: false,
            protocol: ProviderProtocol::default(),
            icon_url: None,
        }
    }
}

/// Endpoint overrides of a provider.
#[derive(Debug, Clone, Default)]
pub struct ProviderEndpoints {
    /// Authorization endpoint.
    pub authorization: Option<Url>,
    /// Token endpoint.
    pub token: Option<Url>,
    /// User-info endpoint (OIDC).
    pub userinfo: Option<Url>,
    /// JWKS (OIDC).
    pub jwks: Option<Url>,
    /// REST API base (GitHub).
    pub api: Option<Url>,
    /// Token revocation endpoint (RFC 7009).
    pub revocation: Option<Url>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    public_url: Option<String>,
    cookie_secure: Option<bool>,
    session_cookie_domain: Option<String>,
    default_provider: Option<String>,
    return_to_origins: Option<Vec<String>>,
    session_ttl_hours: Option<u64>,
    session_idle_minutes: Option<u64>,
    pending_profile_ttl_hours: Option<u64>,
    max_profiles_per_team: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    name: String,
    template: Option<String>,
    kind: Option<String>,
    tenant: Option<String>,
    instance: Option<String>,
    client_id: String,
    /// Refused with a pointer to the two ways a secret is given; the value itself is not kept.
    client_secret: Option<serde::de::IgnoredAny>,
    client_secret_env: Option<String>,
    client_secret_file: Option<String>,
    scopes: Option<Vec<String>>,
    issuer: Option<String>,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    userinfo_endpoint: Option<String>,
    jwks_uri: Option<String>,
    api_base_url: Option<String>,
    revocation_endpoint: Option<String>,
    algorithms: Option<Vec<String>>,
    trusted_email_verification: Option<bool>,
    auto_link_by_email: Option<bool>,
    store_tokens: Option<bool>,
    pkce: Option<bool>,
    token_auth: Option<String>,
    scope_separator: Option<String>,
    extra_authorize_params: Option<BTreeMap<String, String>>,
    offline_authorize_params: Option<BTreeMap<String, String>>,
    trusted_audiences: Option<Vec<String>>,
    refusal_errors: Option<Vec<String>>,
    fresh_login_prompt: Option<String>,
    required_scopes: Option<Vec<String>>,
    userinfo_method: Option<String>,
    userinfo_body: Option<String>,
    account_id_pointer: Option<String>,
    login_pointer: Option<String>,
    email_pointer: Option<String>,
    email_verified_pointer: Option<String>,
    name_pointer: Option<String>,
    default_expires_in: Option<u64>,
    sign_in: Option<bool>,
    icon_url: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEncryption {
    keys: Option<Vec<String>>,
}

/// How many live auth profiles a team holds at most, unless configured
/// (`auth.max_profiles_per_team`).
pub const DEFAULT_MAX_PROFILES_PER_TEAM: u32 = 10_000;

/// How long a browser session lasts unused by default (`auth.session_idle_minutes`): a day.
pub const DEFAULT_SESSION_IDLE: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// The environment variable of the key ring.
pub const ENCRYPTION_KEYS_VAR: &str = "TESSERA_ENCRYPTION_KEYS";
/// The deprecated single-key variable, still accepted.
pub const DEPRECATED_KEY_VAR: &str = "TESSERA_TOKEN_ENCRYPTION_KEY";

pub(super) fn parse_auth(raw: RawAuth) -> Result<AuthConfig, ConfigError> {
    let public_url = match raw.public_url {
        Some(text) => {
            let url = Url::parse(text.trim())
                .map_err(|e| ConfigError::new("auth.public_url (TESSERA_PUBLIC_URL)", format!("not a URL: {e}")))?;
            // It is the OpenID Provider's issuer, and where browsers bring sessions, codes and
            // connect links: the rules of an issuer (https, or http on a loopback host only).
            crate::domain::Issuer::parse(url.as_str()).map_err(|e| {
                ConfigError::new(
                    "auth.public_url (TESSERA_PUBLIC_URL)",
                    format!("expected an https URL such as https://id.example.com (http only on loopback): {e}"),
                )
            })?;
            // Pages, forms and redirects name Tessera's own routes by root paths (`/login`,
            // `/account`): under a path prefix a browser would leave Tessera at its first link.
            if url.path() != "/" {
                return Err(ConfigError::new(
                    "auth.public_url (TESSERA_PUBLIC_URL)",
                    "serve Tessera at the root of a host of its own, such as https://id.example.com, not under a path: \
                     its pages and redirects use root paths",
                ));
            }
            Some(url)
        }
        None => None,
    };
    let cookie_secure = raw.cookie_secure.unwrap_or(true);
    // Off is for plain http on this machine; browsers that reach Tessera over https would carry
    // its session in cookies that also go out over plain http.
    if !cookie_secure && public_url.as_ref().is_some_and(|url| url.scheme() == "https") {
        return Err(ConfigError::new(
            "auth.cookie_secure (TESSERA_COOKIE_SECURE)",
            "false only with an http auth.public_url on a loopback host; remove it for an https one",
        ));
    }
    let session_cookie_domain = session_cookie_domain(raw.session_cookie_domain.as_deref(), public_url.as_ref())?;
    let mut return_to_origins = Vec::new();
    for (i, origin) in raw.return_to_origins.unwrap_or_default().iter().enumerate() {
        let key = format!("auth.return_to_origins[{i}]");
        let url = Url::parse(origin.trim()).map_err(|e| ConfigError::new(&key, format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || url.path() != "/" {
            return Err(ConfigError::new(key, "expected an origin such as https://app.example.com"));
        }
        return_to_origins.push(url.origin().ascii_serialization());
    }
    let session_ttl_hours = raw.session_ttl_hours.unwrap_or(24 * 7);
    if !(1..=24 * 365).contains(&session_ttl_hours) {
        return Err(ConfigError::new("auth.session_ttl_hours", "expected 1 to 8760 hours"));
    }
    // Unless given, the default idle timeout, or the whole lifetime of a shorter session.
    let session_idle_minutes =
        raw.session_idle_minutes.unwrap_or((DEFAULT_SESSION_IDLE.as_secs() / 60).min(session_ttl_hours * 60));
    if !(1..=session_ttl_hours * 60).contains(&session_idle_minutes) {
        return Err(ConfigError::new("auth.session_idle_minutes", "expected 1 minute up to the session lifetime"));
    }
    let pending_hours = raw.pending_profile_ttl_hours.unwrap_or(24);
    if !(1..=24 * 30).contains(&pending_hours) {
        return Err(ConfigError::new("auth.pending_profile_ttl_hours", "expected 1 to 720 hours"));
    }
    let max_profiles_per_team = raw.max_profiles_per_team.unwrap_or(DEFAULT_MAX_PROFILES_PER_TEAM.into());
    let Some(max_profiles_per_team) = u32::try_from(max_profiles_per_team).ok().filter(|n| (1..=1_000_000).contains(n))
    else {
        return Err(ConfigError::new("auth.max_profiles_per_team", "expected 1 to 1000000"));
    };
    Ok(AuthConfig {
        pending_profile_ttl: Duration::from_secs(pending_hours * 3600),
        max_profiles_per_team,
        public_url,
        cookie_secure,
        session_cookie_domain,
        default_provider: raw.default_provider,
        return_to_origins,
        session_ttl: Duration::from_secs(session_ttl_hours * 3600),
        session_idle: Duration::from_secs(session_idle_minutes * 60),
    })
}

/// `auth.session_cookie_domain`: the host of `public_url` or a parent domain of it (a leading dot
/// is dropped, as browsers do); a blank value is unset.
fn session_cookie_domain(raw: Option<&str>, public_url: Option<&Url>) -> Result<Option<String>, ConfigError> {
    const KEY: &str = "auth.session_cookie_domain";
    let Some(domain) = raw.map(|d| d.trim().trim_start_matches('.').to_ascii_lowercase()).filter(|d| !d.is_empty())
    else {
        return Ok(None);
    };
    let Some(host) = public_url.and_then(|url| url.domain()) else {
        return Err(ConfigError::new(
            KEY,
            "set auth.public_url to a URL with a host name too: the cookie's domain is that host or a parent of it",
        ));
    };
    let host = host.to_ascii_lowercase();
    let is_name = matches!(url::Host::parse(&domain), Ok(url::Host::Domain(_))) && domain.contains('.');
    if !is_name || !crate::domain::host_within(&host, &domain) {
        return Err(ConfigError::new(
            KEY,
            format!("expected {host} (auth.public_url's host) or a parent domain of it, such as example.com"),
        ));
    }
    Ok(Some(domain))
}

/// The public sites whose issuers are GitHub's and GitLab's defaults, in that order.
const PUBLIC_SITES: [&str; 2] = ["https://github.com", "https://gitlab.com"];

pub(super) fn parse_providers(
    raw: Vec<RawProvider>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<ProviderConfig>, ConfigError> {
    let mut providers: Vec<ProviderConfig> = Vec::new();
    for (i, raw) in raw.into_iter().enumerate() {
        let provider = parse_provider(i, raw, env)?;
        if providers.iter().any(|p| p.name == provider.name) {
            return Err(ConfigError::new(
                format!("providers[{i}].name"),
                format!("two providers are named {:?}; names must be unique", provider.name),
            ));
        }
        providers.push(provider);
    }
    Ok(providers)
}

fn parse_provider(
    i: usize,
    raw: RawProvider,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ProviderConfig, ConfigError> {
    let key = |field: &str| format!("providers[{i}].{field}");
    let name = raw.name.trim().to_owned();
    if !is_provider_name(&name) {
        return Err(ConfigError::new(key("name"), "expected 1 to 32 characters of a-z, 0-9, `-` and `_`"));
    }
    let template = match raw.template.as_deref().map(str::trim) {
        Some(name) => Some(catalogue::template(name).ok_or_else(|| {
            ConfigError::new(
                key("template"),
                format!("no template is named {name:?}; the catalogue has {}", catalogue::names().join(", ")),
            )
        })?),
        None => None,
    };
    let empty = Template::default();
    let t = template.unwrap_or(&empty);
    let kind_text = match (&raw.kind, template) {
        (Some(kind), _) => kind.trim().to_owned(),
        (None, Some(template)) => template.kind.clone(),
        (None, None) => {
            return Err(ConfigError::new(key("kind"), "set kind (oidc, oauth2, github, gitlab) or a template"));
        }
    };
    let kind = match kind_text.as_str() {
        "oidc" => ProviderKind::Oidc,
        "github" => ProviderKind::GitHub,
        "gitlab" => ProviderKind::GitLab,
        "oauth2" => ProviderKind::OAuth2,
        other => {
            return Err(ConfigError::new(key("kind"), format!("{other:?} is not one of oidc, oauth2, github, gitlab")));
        }
    };
    if raw.client_id.trim().is_empty() {
        return Err(ConfigError::new(key("client_id"), "the client id must not be blank"));
    }
    if raw.client_secret.is_some() {
        return Err(ConfigError::new(
            key("client_secret"),
            "a client secret is never written in the configuration: put it in an environment variable and \
             name that with client_secret_env, or in a file and name that with client_secret_file",
        ));
    }
    let client_secret = super::env_or_file(
        env,
        &key,
        ("client_secret_env", raw.client_secret_env.as_deref()),
        ("client_secret_file", raw.client_secret_file.as_deref()),
    )?
    .map(|secret| secret.value);
    // Every key the entry sets wins over the template's; then the placeholders are filled.
    let pick = |own: &Option<String>, template: &Option<String>| own.clone().or_else(|| template.clone());
    let urls = [
        ("issuer", pick(&raw.issuer, &t.issuer)),
        ("authorization_endpoint", pick(&raw.authorization_endpoint, &t.authorization_endpoint)),
        ("token_endpoint", pick(&raw.token_endpoint, &t.token_endpoint)),
        ("userinfo_endpoint", pick(&raw.userinfo_endpoint, &t.userinfo_endpoint)),
        ("jwks_uri", pick(&raw.jwks_uri, &t.jwks_uri)),
        ("api_base_url", pick(&raw.api_base_url, &t.api_base_url)),
        ("revocation_endpoint", pick(&raw.revocation_endpoint, &t.revocation_endpoint)),
    ];
    let mut placeholders = Vec::new();
    for (name, own, default) in [("tenant", &raw.tenant, &t.tenant), ("instance", &raw.instance, &t.instance)] {
        let used = urls.iter().any(|(_, url)| url.as_deref().is_some_and(|u| u.contains(&format!("{{{name}}}"))));
        if own.is_some() && !used {
            return Err(ConfigError::new(key(name), format!("no URL of this provider has a {{{name}}} to fill")));
        }
        let value = own.clone().or_else(|| default.clone());
        if let Some(value) = &value {
            let valid = !value.is_empty()
                && value.len() <= 253
                && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
            if !valid {
                return Err(ConfigError::new(key(name), "expected a name or host such as contoso.onmicrosoft.com"));
            }
        }
        placeholders.push((name, value));
    }
    let mut filled = BTreeMap::new();
    for (field, url) in urls {
        let Some(mut url) = url else { continue };
        for (name, value) in &placeholders {
            let placeholder = format!("{{{name}}}");
            if url.contains(&placeholder) {
                let value = value.as_deref().ok_or_else(|| ConfigError::new(key(name), format!("{field} needs it")))?;
                url = url.replace(&placeholder, value);
            }
        }
        if url.contains('{') || url.contains('}') {
            return Err(ConfigError::new(key(field), "has a placeholder other than {tenant} and {instance}"));
        }
        filled.insert(field, url);
    }
    let default_issuer = match kind {
        ProviderKind::Oidc | ProviderKind::OAuth2 => None,
        ProviderKind::GitHub => Some(PUBLIC_SITES[0]),
        ProviderKind::GitLab => Some(PUBLIC_SITES[1]),
    };
    let issuer_text = filled.get("issuer").map(String::as_str).or(default_issuer).ok_or_else(|| {
        ConfigError::new(
            key("issuer"),
            match kind {
                ProviderKind::OAuth2 => {
                    "an oauth2 provider needs the issuer that keys its identities (its site, e.g. https://slack.com)"
                }
                _ => "an oidc provider needs its issuer URL",
            },
        )
    })?;
    let issuer = Issuer::parse(issuer_text).map_err(|e| ConfigError::new(key("issuer"), e.to_string()))?;
    let endpoint = |field: &str| -> Result<Option<Url>, ConfigError> {
        filled.get(field).map(|v| endpoint_url(v).map_err(|m| ConfigError::new(key(field), m))).transpose()
    };
    let endpoints = ProviderEndpoints {
        authorization: endpoint("authorization_endpoint")?,
        token: endpoint("token_endpoint")?,
        userinfo: endpoint("userinfo_endpoint")?,
        jwks: endpoint("jwks_uri")?,
        api: endpoint("api_base_url")?,
        revocation: endpoint("revocation_endpoint")?,
    };
    let default_scopes: &[&str] = match kind {
        ProviderKind::Oidc | ProviderKind::GitLab => &["openid", "profile", "email"],
        ProviderKind::GitHub => &["read:user", "user:email"],
        ProviderKind::OAuth2 => &[],
    };
    let scopes = raw
        .scopes
        .clone()
        .or_else(|| t.scopes.clone())
        .unwrap_or_else(|| default_scopes.iter().map(|s| (*s).to_owned()).collect());
    // Without `openid` an OpenID Connect provider answers with no id_token, and every sign-in
    // would fail at the callback.
    if kind.speaks_oidc() && !scopes.iter().any(|s| s == "openid") {
        return Err(ConfigError::new(key("scopes"), "an OpenID Connect provider needs the `openid` scope"));
    }
    // GitHub's and GitLab's issuer is a default only for their public sites (the kind's, or a
    // template's): identities are keyed by issuer and account number, so a GitHub Enterprise or
    // self-managed GitLab left on it would sign its users in as the public site's users of the
    // same number. Judged by the endpoints the entry sets itself, when it sets no issuer or
    // writes out the public site's (whatever the entry's kind: a template's changed to `oauth2`
    // keeps the template's issuer).
    let public_site = PUBLIC_SITES.iter().filter_map(|home| Issuer::parse(home).ok()).any(|home| home == issuer);
    if (default_issuer.is_some() && raw.issuer.is_none()) || public_site {
        let home = issuer.as_str();
        let home_host = url::Url::parse(home).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
        let own = [
            ("authorization_endpoint", &raw.authorization_endpoint),
            ("token_endpoint", &raw.token_endpoint),
            ("userinfo_endpoint", &raw.userinfo_endpoint),
            ("api_base_url", &raw.api_base_url),
        ];
        let elsewhere = own
            .iter()
            .filter(|(_, set)| set.is_some())
            .filter_map(|(field, _)| filled.get(field).and_then(|url| url::Url::parse(url).ok()))
            .filter_map(|url| url.host_str().map(str::to_owned))
            .find(|host| *host != home_host && !host.ends_with(&format!(".{home_host}")));
        if let Some(host) = elsewhere {
            // A template with an `instance` (GitLab's) takes its issuer from it.
            // (An issuer written out has no `{instance}` to fill.)
            let fix = match (&t.instance, raw.issuer.is_none()) {
                (Some(_), true) => format!("set instance to this site's host (e.g. {host}), or the issuer"),
                _ => format!("set the issuer to this site's URL (e.g. https://{host})"),
            };
            return Err(ConfigError::new(
                key("issuer"),
                format!("{fix}: without it, its users would be taken for {home}'s users of the same account number"),
            ));
        }
    }
    let protocol = parse_protocol(&raw, t, kind, &endpoints, &key)?;
    // A client without a secret is public: PKCE is all that binds its code to this server.
    if client_secret.is_none() && !protocol.pkce {
        return Err(ConfigError::new(
            key("pkce"),
            "a provider without a client secret needs PKCE (pkce = true): otherwise anyone who sees a code \
             can redeem it with the client id alone",
        ));
    }
    let algorithms = match raw.algorithms {
        Some(names) => names
            .iter()
            .map(|n| parse_algorithm(n))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| ConfigError::new(key("algorithms"), m))?,
        None => DEFAULT_ALGORITHMS.to_vec(),
    };
    if algorithms.is_empty() {
        // Every id_token would be refused at sign-in.
        return Err(ConfigError::new(key("algorithms"), "list at least one algorithm"));
    }
    let trusted_email_verification = raw.trusted_email_verification.unwrap_or(false);
    let auto_link_by_email = raw.auto_link_by_email.unwrap_or(false);
    if auto_link_by_email && !trusted_email_verification {
        return Err(ConfigError::new(
            key("auto_link_by_email"),
            "automatic linking by email needs trusted_email_verification = true for this provider",
        ));
    }
    let icon_url = match raw.icon_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
        Some(url) => Some(super::branding::image_url(url).ok_or_else(|| {
            ConfigError::new(
                key("icon_url"),
                "expected an https URL (https://cdn.example.com/icon.svg) or a path on this server",
            )
        })?),
        None => None,
    };
    Ok(ProviderConfig {
        name,
        kind,
        client_id: raw.client_id.trim().to_owned(),
        client_secret,
        scopes,
        issuer,
        endpoints,
        algorithms,
        trusted_email_verification,
        auto_link_by_email,
        store_tokens: raw.store_tokens.unwrap_or(false),
        protocol,
        icon_url,
    })
}

/// The protocol details of an entry: its own keys, else its template's, else the defaults.
fn parse_protocol(
    raw: &RawProvider,
    t: &Template,
    kind: ProviderKind,
    endpoints: &ProviderEndpoints,
    key: &dyn Fn(&str) -> String,
) -> Result<ProviderProtocol, ConfigError> {
    let pick = |own: &Option<String>, template: &Option<String>| own.clone().or_else(|| template.clone());
    let token_auth = match pick(&raw.token_auth, &t.token_auth).as_deref().map(str::trim) {
        None => None,
        Some("client_secret_basic") => Some(TokenAuth::ClientSecretBasic),
        Some("client_secret_post") => Some(TokenAuth::ClientSecretPost),
        Some(other) => {
            return Err(ConfigError::new(
                key("token_auth"),
                format!("{other:?} is not one of client_secret_basic, client_secret_post"),
            ));
        }
    };
    let scope_separator = pick(&raw.scope_separator, &t.scope_separator).unwrap_or_else(|| " ".into());
    if scope_separator != " " && scope_separator != "," {
        return Err(ConfigError::new(key("scope_separator"), "expected \" \" (a space) or \",\""));
    }
    // `max_age` too: a fresh login asked of the provider sets `max_age=0`. And those that would
    // change how the answer comes back or what the request is: `response_mode` (a `form_post` or
    // `fragment` answer never reaches the callback, which reads its query), `request` and
    // `request_uri` (a request object replacing the parameters Tessera checks).
    const RESERVED: [&str; 12] = [
        "response_type",
        "client_id",
        "redirect_uri",
        "state",
        "scope",
        "code_challenge",
        "code_challenge_method",
        "nonce",
        "max_age",
        "response_mode",
        "request",
        "request_uri",
    ];
    let params = |field: &str, own: &Option<BTreeMap<String, String>>, template: &Option<BTreeMap<String, String>>| {
        let params = own.clone().or_else(|| template.clone()).unwrap_or_default();
        match params.keys().find(|k| RESERVED.contains(&k.as_str())) {
            Some(reserved) => Err(ConfigError::new(
                key(field),
                format!("{reserved:?} is set by Tessera itself (scopes are set with scopes)"),
            )),
            None => Ok(params.into_iter().collect::<Vec<_>>()),
        }
    };
    let authorize_params = params("extra_authorize_params", &raw.extra_authorize_params, &t.extra_authorize_params)?;
    // A name the entry's extra parameters set is theirs: a parameter is never sent twice.
    let offline_authorize_params: Vec<_> =
        params("offline_authorize_params", &raw.offline_authorize_params, &t.offline_authorize_params)?
            .into_iter()
            .filter(|(name, _)| !authorize_params.iter().any(|(extra, _)| extra == name))
            .collect();
    // A list the entry sets, else its template's, each item trimmed.
    let list = |own: &Option<Vec<String>>, template: &Option<Vec<String>>| -> Vec<String> {
        own.as_ref().or(template.as_ref()).into_iter().flatten().map(|item| item.trim().to_owned()).collect()
    };
    let trusted_audiences = list(&raw.trusted_audiences, &None);
    if trusted_audiences.iter().any(String::is_empty) {
        return Err(ConfigError::new(key("trusted_audiences"), "an audience must not be blank"));
    }
    if !trusted_audiences.is_empty() && !kind.speaks_oidc() {
        return Err(ConfigError::new(
            key("trusted_audiences"),
            "only the id_tokens of an oidc or gitlab provider have audiences",
        ));
    }
    // A key the entry sets itself that its kind never reads stops start-up rather than being
    // ignored (a template's keys are not the entry's doing: an entry may change its kind).
    let (github, oauth2, oidc) = (kind == ProviderKind::GitHub, kind == ProviderKind::OAuth2, kind.speaks_oidc());
    let unread = [
        ("api_base_url", raw.api_base_url.is_some() && !github, "only a github provider reads it"),
        ("userinfo_endpoint", raw.userinfo_endpoint.is_some() && github, "a github provider reads its API"),
        (
            "revocation_endpoint",
            raw.revocation_endpoint.is_some() && github,
            "a github provider revokes through its API",
        ),
        ("jwks_uri", raw.jwks_uri.is_some() && !oidc, "only an oidc or gitlab provider's id_tokens are verified"),
        ("algorithms", raw.algorithms.is_some() && !oidc, "only an oidc or gitlab provider's id_tokens are verified"),
        ("userinfo_method", raw.userinfo_method.is_some() && !oauth2, "only an oauth2 provider's profile is mapped"),
        ("userinfo_body", raw.userinfo_body.is_some() && !oauth2, "only an oauth2 provider's profile is mapped"),
        (
            "account_id_pointer",
            raw.account_id_pointer.is_some() && !oauth2,
            "only an oauth2 provider's profile is mapped",
        ),
        ("login_pointer", raw.login_pointer.is_some() && !oauth2, "only an oauth2 provider's profile is mapped"),
        ("email_pointer", raw.email_pointer.is_some() && !oauth2, "only an oauth2 provider's profile is mapped"),
        (
            "email_verified_pointer",
            raw.email_verified_pointer.is_some() && !oauth2,
            "only an oauth2 provider's profile is mapped",
        ),
        ("name_pointer", raw.name_pointer.is_some() && !oauth2, "only an oauth2 provider's profile is mapped"),
    ];
    if let Some((field, _, why)) = unread.iter().find(|(_, unread, _)| *unread) {
        return Err(ConfigError::new(key(field), format!("this kind of provider never reads it: {why}")));
    }
    let mut refusal_errors = list(&raw.refusal_errors, &t.refusal_errors);
    refusal_errors.iter_mut().for_each(|error| error.make_ascii_lowercase());
    if let Some(bad) = refusal_errors
        .iter()
        .find(|e| e.is_empty() || e.len() > 64 || !e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    {
        return Err(ConfigError::new(
            key("refusal_errors"),
            format!("{bad:?} is not an error code (1 to 64 letters, digits or _)"),
        ));
    }
    // A fault of the client's configuration or of the provider is no refusal of one account's
    // token: named here, it would mark every account of the entry `needs_reauth` at once.
    const FAULTS: [&str; 6] = [
        "invalid_client",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "server_error",
        "temporarily_unavailable",
    ];
    if let Some(fault) = refusal_errors.iter().find(|e| FAULTS.contains(&e.as_str())) {
        return Err(ConfigError::new(
            key("refusal_errors"),
            format!("{fault:?} is a fault of the client or the provider, not a refused token"),
        ));
    }
    let fresh_login = match pick(&raw.fresh_login_prompt, &t.fresh_login_prompt).as_deref().map(str::trim) {
        None | Some("login") => FreshLogin::PromptLogin,
        Some("select_account") => FreshLogin::SelectAccount,
        Some(_) => return Err(ConfigError::new(key("fresh_login_prompt"), "expected login or select_account")),
    };
    let required_scopes = list(&raw.required_scopes, &t.required_scopes);
    if required_scopes.iter().any(|scope| scope.is_empty() || scope.chars().any(char::is_whitespace)) {
        return Err(ConfigError::new(key("required_scopes"), "a scope is one word, not blank"));
    }
    let default_expires_in = match raw.default_expires_in.or(t.default_expires_in) {
        Some(seconds) if !(60..=30 * 86_400).contains(&seconds) => {
            return Err(ConfigError::new(key("default_expires_in"), "expected 60 to 2592000 seconds"));
        }
        seconds => seconds.map(Duration::from_secs),
    };
    let pointer =
        |field: &str, own: &Option<String>, template: &Option<String>| -> Result<Option<String>, ConfigError> {
            match pick(own, template) {
                Some(p) if !p.starts_with('/') => {
                    Err(ConfigError::new(key(field), "expected a JSON pointer such as /id or /data/viewer/id"))
                }
                other => Ok(other),
            }
        };
    let account_id = pointer("account_id_pointer", &raw.account_id_pointer, &t.account_id_pointer)?;
    let login = pointer("login_pointer", &raw.login_pointer, &t.login_pointer)?;
    let email = pointer("email_pointer", &raw.email_pointer, &t.email_pointer)?;
    let email_verified = pointer("email_verified_pointer", &raw.email_verified_pointer, &t.email_verified_pointer)?;
    let name = pointer("name_pointer", &raw.name_pointer, &t.name_pointer)?;
    let method = match pick(&raw.userinfo_method, &t.userinfo_method).map(|m| m.trim().to_ascii_uppercase()).as_deref()
    {
        None | Some("GET") => UserinfoMethod::Get,
        Some("POST") => UserinfoMethod::Post,
        Some(_) => return Err(ConfigError::new(key("userinfo_method"), "expected GET or POST")),
    };
    let body = pick(&raw.userinfo_body, &t.userinfo_body);
    if let Some(body) = &body {
        if method != UserinfoMethod::Post {
            return Err(ConfigError::new(key("userinfo_body"), "a body is sent only with userinfo_method = \"POST\""));
        }
        if serde_json::from_str::<serde_json::Value>(body).is_err() {
            return Err(ConfigError::new(key("userinfo_body"), "expected JSON text"));
        }
    }
    let profile = match kind {
        ProviderKind::OAuth2 => {
            if endpoints.authorization.is_none() {
                return Err(ConfigError::new(key("authorization_endpoint"), "an oauth2 provider needs it"));
            }
            if endpoints.token.is_none() {
                return Err(ConfigError::new(key("token_endpoint"), "an oauth2 provider needs it"));
            }
            let account_id = account_id.ok_or_else(|| {
                ConfigError::new(
                    key("account_id_pointer"),
                    "an oauth2 provider needs the JSON pointer to the stable account id, e.g. /id",
                )
            })?;
            Some(ProfileMapping { method, body, account_id, login, email, email_verified, name })
        }
        _ => None,
    };
    Ok(ProviderProtocol {
        template: raw.template.as_deref().map(|t| t.trim().to_owned()),
        pkce: raw.pkce.or(t.pkce).unwrap_or(true),
        token_auth,
        scope_separator,
        authorize_params,
        offline_authorize_params,
        default_expires_in,
        profile,
        sign_in: raw.sign_in.or(t.sign_in).unwrap_or(true),
        trusted_audiences,
        refusal_errors,
        fresh_login,
        required_scopes,
    })
}

/// Reads the key ring from `TESSERA_ENCRYPTION_KEYS`, the file's `encryption.keys`, or the
/// deprecated `TESSERA_TOKEN_ENCRYPTION_KEY` (with a warning pushed to `warnings`).
pub(super) fn parse_encryption(
    raw: RawEncryption,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<Option<Arc<KeyRing>>, ConfigError> {
    let deprecated = env(DEPRECATED_KEY_VAR).filter(|v| !v.trim().is_empty());
    let (ring, source) = if let Some(value) = env(ENCRYPTION_KEYS_VAR).filter(|v| !v.trim().is_empty()) {
        (KeyRing::parse(&value).map_err(|e| ConfigError::new(ENCRYPTION_KEYS_VAR, e.to_string()))?, ENCRYPTION_KEYS_VAR)
    } else if let Some(keys) = raw.keys {
        (
            KeyRing::parse(&keys.join(",")).map_err(|e| ConfigError::new("encryption.keys", e.to_string()))?,
            "encryption.keys",
        )
    } else {
        let Some(value) = deprecated else { return Ok(None) };
        warnings.push(format!(
            "{DEPRECATED_KEY_VAR} is deprecated: set {ENCRYPTION_KEYS_VAR}=default:<the same key> instead"
        ));
        let ring =
            KeyRing::single("default", &value).map_err(|e| ConfigError::new(DEPRECATED_KEY_VAR, e.to_string()))?;
        return Ok(Some(Arc::new(ring)));
    };
    if let Some(value) = &deprecated {
        // What the old variable encrypted carries the key id `default`: a ring without it, or
        // with another key under that id (a typo), could not read those secrets back.
        let old = KeyRing::single("default", value).map_err(|e| ConfigError::new(DEPRECATED_KEY_VAR, e.to_string()))?;
        const PROBE_AAD: &[u8] = b"tessera:deprecated-key-check";
        if ring.has_key("default") && ring.decrypt(&old.encrypt(b"probe", PROBE_AAD), PROBE_AAD).is_err() {
            return Err(ConfigError::new(
                DEPRECATED_KEY_VAR,
                format!(
                    "its key differs from the `default` key of {source}: the secrets it encrypted could not be \
                     read; make default:<the same key> the one in {source}, then remove {DEPRECATED_KEY_VAR}"
                ),
            ));
        }
        if !ring.has_key("default") {
            return Err(ConfigError::new(
                DEPRECATED_KEY_VAR,
                format!(
                    "it is set beside {source}, whose keys have no `default`: the secrets it encrypted could not be \
                     read; add default:<the same key> to {source} after the active key, then remove {DEPRECATED_KEY_VAR}"
                ),
            ));
        }
        warnings.push(format!("{DEPRECATED_KEY_VAR} is ignored because {source} holds the `default` key; remove it"));
    }
    Ok(Some(Arc::new(ring)))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use base64::Engine;

    use super::super::Config;
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    const PROVIDERS: &str = r#"
        [auth]
        public_url = "https://id.example.com"
        [[providers]]
        name = "github"
        kind = "github"
        client_id = "gh-client"
        client_secret_env = "GH_SECRET"
        [[providers]]
        name = "corp"
        kind = "oidc"
        issuer = "https://sso.example.com/"
        client_id = "corp-client"
        trusted_email_verification = true
        auto_link_by_email = true
    "#;

    fn key() -> String {
        base64::engine::general_purpose::STANDARD.encode([4u8; 32])
    }

    #[test]
    fn the_session_cookie_domain_is_the_public_host_or_a_parent_of_it() {
        let with = |public: &str, domain: &str| {
            let toml = format!("[auth]\npublic_url = \"{public}\"\nsession_cookie_domain = \"{domain}\"\n");
            Config::from_toml(&toml, env(&[])).map(|c| c.auth.session_cookie_domain)
        };
        assert_eq!(with("https://id.example.com", ".Example.com").unwrap().as_deref(), Some("example.com"));
        assert_eq!(with("https://id.example.com", "id.example.com").unwrap().as_deref(), Some("id.example.com"));
        assert_eq!(with("https://id.example.com", " ").unwrap(), None);
        for (public, domain) in [
            ("https://id.example.com", "other.com"),
            ("https://id.example.com", "ample.com"),
            ("https://id.example.com", "app.example.com"),
            ("https://id.example.com", "com"),
            ("http://127.0.0.1:8080", "127.0.0.1"),
        ] {
            let error = with(public, domain).unwrap_err().to_string();
            assert!(error.contains("auth.session_cookie_domain"), "{domain}: {error}");
        }
        let without_url = Config::from_toml("[auth]\nsession_cookie_domain = \"example.com\"\n", env(&[]));
        assert!(without_url.unwrap_err().to_string().contains("auth.public_url"));
    }

    #[test]
    fn cookies_without_secure_are_refused_for_an_https_public_url() {
        let https = "[auth]\npublic_url = \"https://id.example.com\"\ncookie_secure = false\n";
        let error = Config::from_toml(https, env(&[])).unwrap_err().to_string();
        assert!(error.contains("auth.cookie_secure"), "{error}");
        let loopback = "[auth]\npublic_url = \"http://127.0.0.1:8080\"\ncookie_secure = false\n";
        assert!(!Config::from_toml(loopback, env(&[])).unwrap().auth.cookie_secure);
    }

    #[test]
    fn providers_are_read_with_their_defaults() {
        let config = Config::from_toml(PROVIDERS, env(&[("GH_SECRET", "s3cret")])).unwrap();
        let github = &config.providers[0];
        assert_eq!(github.kind, ProviderKind::GitHub);
        assert_eq!(github.issuer.as_str(), "https://github.com");
        assert_eq!(github.scopes, ["read:user", "user:email"]);
        assert!(github.client_secret.is_some());
        assert!(!format!("{config:?}").contains("s3cret"), "secrets never show in Debug");
        let from_file = Config::from_toml(PROVIDERS, env(&[("GH_SECRET", "s3cret\n")])).unwrap();
        let secret = from_file.providers[0].client_secret.as_ref().unwrap();
        assert_eq!(secrecy::ExposeSecret::expose_secret(secret), "s3cret", "trimmed like a file's");
        let corp = &config.providers[1];
        assert_eq!(corp.issuer.as_str(), "https://sso.example.com");
        assert_eq!(corp.scopes, ["openid", "profile", "email"]);
        assert!(corp.client_secret.is_none() && corp.auto_link_by_email);
    }

    #[test]
    fn provider_mistakes_name_the_key() {
        let key_of = |text: &str, pairs: &[(&str, &str)]| Config::from_toml(text, env(pairs)).unwrap_err().key;
        let twice = format!("{PROVIDERS}\n[[providers]]\nname = \"github\"\nkind = \"github\"\nclient_id = \"x\"");
        assert_eq!(key_of(&twice, &[("GH_SECRET", "s")]), "providers[2].name");
        assert_eq!(key_of(PROVIDERS, &[]), "providers[0].client_secret_env");
        let unsafe_link = PROVIDERS.replace("trusted_email_verification = true", "");
        assert_eq!(key_of(&unsafe_link, &[("GH_SECRET", "s")]), "providers[1].auto_link_by_email");
        let no_url = PROVIDERS.replace("public_url = \"https://id.example.com\"", "");
        assert_eq!(key_of(&no_url, &[("GH_SECRET", "s")]), "auth.public_url (TESSERA_PUBLIC_URL)");
        // Browsers bring sessions, codes and connect links to it: https, or http on loopback.
        for url in [
            "http://id.example.com",
            "https://id.example.com/#top",
            "https://user:pw@id.example.com",
            "https://id.example.com/auth",
        ] {
            let text = PROVIDERS.replace("https://id.example.com", url);
            assert_eq!(key_of(&text, &[("GH_SECRET", "s")]), "auth.public_url", "{url}: set in the file");
        }
        for url in ["http://127.0.0.1:8080", "http://localhost:8080/", "https://id.example.com"] {
            let text = PROVIDERS.replace("https://id.example.com", url);
            assert!(Config::from_toml(&text, env(&[("GH_SECRET", "s")])).is_ok(), "{url}");
        }
        let empty = std::env::temp_dir().join(format!("tessera-empty-secret-{}", std::process::id()));
        std::fs::write(&empty, "  \n").unwrap();
        let from_file = PROVIDERS
            .replace("client_secret_env = \"GH_SECRET\"", &format!("client_secret_file = \"{}\"", empty.display()));
        assert_eq!(key_of(&from_file, &[]), "providers[0].client_secret_file", "an empty secret file");
        std::fs::remove_file(&empty).unwrap();
        let stores = PROVIDERS.replace("kind = \"github\"", "kind = \"github\"\nstore_tokens = true");
        assert_eq!(key_of(&stores, &[("GH_SECRET", "s")]), ENCRYPTION_KEYS_VAR);
        // What only connected accounts use needs the key ring too; a connector without fields
        // (an OAuth one) keeps nothing of its own.
        let ring = format!("k1:{}", base64::engine::general_purpose::STANDARD.encode([1u8; 32]));
        let connected_only = PROVIDERS.replace("kind = \"github\"", "kind = \"github\"\nsign_in = false");
        assert_eq!(key_of(&connected_only, &[("GH_SECRET", "s")]), ENCRYPTION_KEYS_VAR);
        assert!(Config::from_toml(&connected_only, env(&[("GH_SECRET", "s"), (ENCRYPTION_KEYS_VAR, &ring)])).is_ok());
        let with_fields = "[[connectors]]\nkey = \"openai\"\nfields = [{ name = \"OPENAI_API_KEY\" }]";
        assert_eq!(key_of(with_fields, &[]), ENCRYPTION_KEYS_VAR);
        assert!(Config::from_toml(with_fields, env(&[(ENCRYPTION_KEYS_VAR, &ring)])).is_ok());
        assert!(Config::from_toml("[[connectors]]\nkey = \"linear\"", env(&[])).is_ok());
        assert_eq!(key_of("", &[(ENCRYPTION_KEYS_VAR, "k:short")]), ENCRYPTION_KEYS_VAR);
        assert_eq!(key_of("", &[(DEPRECATED_KEY_VAR, "not base64!")]), DEPRECATED_KEY_VAR);
        assert_eq!(key_of("[auth]\ndefault_provider = \"nope\"", &[]), "auth.default_provider");
    }

    #[test]
    fn an_inline_client_secret_is_refused_naming_the_two_ways_to_give_one() {
        let inline = PROVIDERS.replace("client_secret_env = \"GH_SECRET\"", "client_secret = \"hunter2\"");
        let error = Config::from_toml(&inline, env(&[])).unwrap_err();
        assert_eq!(error.key, "providers[0].client_secret");
        assert!(error.message.contains("client_secret_env") && error.message.contains("client_secret_file"), "{error}");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    /// One provider entry after `[auth]`, with `body` as its keys.
    fn entry(body: &str) -> Result<ProviderConfig, ConfigError> {
        let text = format!("[auth]\npublic_url = \"https://id.example.com\"\n[[providers]]\n{body}");
        // With a key ring: the templates of providers that serve connected accounts only need it.
        let ring = format!("k1:{}", base64::engine::general_purpose::STANDARD.encode([1u8; 32]));
        Config::from_toml(&text, env(&[("SECRET", "s"), (ENCRYPTION_KEYS_VAR, &ring)]))
            .map(|mut c| c.providers.remove(0))
    }

    #[test]
    fn an_icon_url_is_an_https_url_or_a_local_path() {
        let with = |icon: &str| {
            entry(&format!(
                "name = \"corp\"\nkind = \"oidc\"\nissuer = \"https://sso.example.com\"\nclient_id = \"c\"\nclient_secret_env = \"SECRET\"\nicon_url = \"{icon}\""
            ))
        };
        assert_eq!(
            with("https://cdn.example.com/corp.svg").unwrap().icon_url.as_deref(),
            Some("https://cdn.example.com/corp.svg")
        );
        assert_eq!(with("/static/corp.svg").unwrap().icon_url.as_deref(), Some("/static/corp.svg"));
        assert_eq!(with("").unwrap().icon_url, None);
        for bad in ["http://cdn.example.com/corp.svg", "//cdn.example.com/corp.svg", "javascript:alert(1)", "corp.svg"]
        {
            assert_eq!(with(bad).unwrap_err().key, "providers[0].icon_url", "{bad}");
        }
    }

    #[test]
    fn an_openid_connect_provider_must_ask_for_openid() {
        let with = |kind: &str, scopes: &str| {
            entry(&format!(
                "name = \"corp\"\nkind = \"{kind}\"\nissuer = \"https://sso.example.com\"\nclient_id = \"c\"\nclient_secret_env = \"SECRET\"\nscopes = {scopes}"
            ))
        };
        let refused = with("oidc", "[\"email\", \"profile\"]").unwrap_err();
        assert_eq!(refused.key, "providers[0].scopes", "{refused}");
        assert!(refused.message.contains("openid"), "{refused}");
        assert_eq!(with("oidc", "[\"openid\", \"email\"]").unwrap().scopes, ["openid", "email"]);
    }

    #[test]
    fn a_fresh_login_is_asked_as_the_template_or_entry_says() {
        let with = |template: &str, extra: &str| {
            entry(&format!(
                "name = \"p\"\ntemplate = \"{template}\"\nclient_id = \"c\"\nclient_secret_env = \"SECRET\"\n{extra}"
            ))
        };
        assert_eq!(with("google", "").unwrap().protocol.fresh_login, FreshLogin::SelectAccount);
        assert_eq!(with("gitlab", "").unwrap().protocol.fresh_login, FreshLogin::PromptLogin);
        let own = with("google", "fresh_login_prompt = \"login\"").unwrap();
        assert_eq!(own.protocol.fresh_login, FreshLogin::PromptLogin, "an entry's own overrides its template's");
        let refused = with("gitlab", "fresh_login_prompt = \"consent\"").unwrap_err();
        assert_eq!(refused.key, "providers[0].fresh_login_prompt");
        // Scopes asked beside a connected account's own: the template's, or the entry's.
        assert_eq!(with("atlassian", "").unwrap().protocol.required_scopes, ["read:me", "offline_access"]);
        assert_eq!(with("microsoft", "").unwrap().protocol.required_scopes, ["offline_access", "User.Read"]);
        assert!(with("atlassian", "required_scopes = []").unwrap().protocol.required_scopes.is_empty());
        let blank = with("atlassian", "required_scopes = [\" \"]").unwrap_err();
        assert_eq!(blank.key, "providers[0].required_scopes");
    }

    #[test]
    fn every_template_makes_a_provider_from_a_minimal_entry() {
        for name in catalogue::names() {
            let provider = entry(&format!(
                "name = \"{name}\"\ntemplate = \"{name}\"\nclient_id = \"c\"\nclient_secret_env = \"SECRET\""
            ))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(provider.protocol.template.as_deref(), Some(name));
            assert!(provider.client_secret.is_some());
        }
    }

    #[test]
    fn a_template_gives_endpoints_scopes_and_quirks() {
        let google = entry("name = \"google\"\ntemplate = \"google\"\nclient_id = \"c\"").unwrap();
        assert_eq!(google.kind, ProviderKind::Oidc);
        assert_eq!(google.issuer.as_str(), "https://accounts.google.com");
        assert_eq!(google.scopes, ["openid", "email", "profile"]);
        assert!(google.protocol.pkce);
        assert!(google.protocol.authorize_params.is_empty());
        assert_eq!(
            google.protocol.offline_authorize_params,
            [("access_type".to_owned(), "offline".to_owned()), ("prompt".to_owned(), "consent".to_owned())]
        );
        let slack =
            entry("name = \"slack\"\ntemplate = \"slack\"\nclient_id = \"c\"\nclient_secret_env = \"SECRET\"").unwrap();
        assert_eq!(slack.kind, ProviderKind::OAuth2);
        assert_eq!(slack.protocol.scope_separator, ",");
        assert_eq!(slack.protocol.token_auth, Some(TokenAuth::ClientSecretPost));
        assert_eq!(slack.protocol.profile.as_ref().unwrap().account_id, "/team_id");
        assert!(!slack.protocol.sign_in, "a workspace is no person to sign in as");
        assert!(google.protocol.sign_in);
        let notion =
            entry("name = \"notion\"\ntemplate = \"notion\"\nclient_id = \"c\"\nclient_secret_env = \"SECRET\"")
                .unwrap();
        assert_eq!(notion.protocol.token_auth, Some(TokenAuth::ClientSecretBasic));
        assert!(notion.endpoints.userinfo.is_none(), "the profile is read from the token answer");
        let salesforce = entry("name = \"sf\"\ntemplate = \"salesforce\"\nclient_id = \"c\"").unwrap();
        assert_eq!(salesforce.issuer.as_str(), "https://login.salesforce.com");
        assert_eq!(salesforce.protocol.default_expires_in, Some(Duration::from_secs(7200)));
        let sandbox =
            entry("name = \"sf\"\ntemplate = \"salesforce\"\ninstance = \"test.salesforce.com\"\nclient_id = \"c\"")
                .unwrap();
        assert_eq!(sandbox.issuer.as_str(), "https://test.salesforce.com");
        let gitlab =
            entry("name = \"gl\"\ntemplate = \"gitlab\"\ninstance = \"gitlab.example.com\"\nclient_id = \"c\"")
                .unwrap();
        assert_eq!((gitlab.kind, gitlab.issuer.as_str()), (ProviderKind::GitLab, "https://gitlab.example.com"));
    }

    #[test]
    fn the_microsoft_tenant_is_filled_into_every_url() {
        let common = entry("name = \"ms\"\ntemplate = \"microsoft\"\nclient_id = \"c\"").unwrap();
        assert_eq!(
            common.endpoints.authorization.unwrap().as_str(),
            "https://login.microsoftonline.com/common/oauth2/v2.0/authorize"
        );
        let contoso =
            entry("name = \"ms\"\ntemplate = \"microsoft\"\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"c\"")
                .unwrap();
        assert_eq!(
            contoso.endpoints.token.unwrap().as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(contoso.issuer.as_str(), "https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0");
        let bad = entry("name = \"ms\"\ntemplate = \"microsoft\"\ntenant = \"a/b\"\nclient_id = \"c\"").unwrap_err();
        assert_eq!(bad.key, "providers[0].tenant");
        let unused = entry("name = \"g\"\ntemplate = \"google\"\ntenant = \"x\"\nclient_id = \"c\"").unwrap_err();
        assert_eq!(unused.key, "providers[0].tenant");
    }

    #[test]
    fn every_key_of_the_entry_overrides_its_template() {
        let google = entry(
            "name = \"g\"\ntemplate = \"google\"\nclient_id = \"c\"\nscopes = [\"openid\"]\noffline_authorize_params = {}\n\
             token_auth = \"client_secret_post\"\npkce = false\nissuer = \"https://accounts.example.com\"\n\
             client_secret_env = \"SECRET\"",
        )
        .unwrap();
        assert_eq!(google.scopes, ["openid"]);
        assert!(google.protocol.offline_authorize_params.is_empty() && !google.protocol.pkce);
        let chooser = entry(
            "name = \"g\"\ntemplate = \"google\"\nclient_id = \"c\"\nextra_authorize_params = { prompt = \"select_account\" }",
        )
        .unwrap();
        assert_eq!(chooser.protocol.authorize_params, [("prompt".to_owned(), "select_account".to_owned())]);
        assert_eq!(
            chooser.protocol.offline_authorize_params,
            [("access_type".to_owned(), "offline".to_owned())],
            "the entry's prompt wins: never sent twice"
        );
        assert_eq!(google.protocol.token_auth, Some(TokenAuth::ClientSecretPost));
        assert_eq!(google.issuer.as_str(), "https://accounts.example.com");
        let as_oidc = entry(
            "name = \"ms\"\ntemplate = \"microsoft\"\nkind = \"oidc\"\ntenant = \"t1\"\nclient_id = \"c\"\n\
             authorization_endpoint = \"http://127.0.0.1:9/{tenant}/authorize\"",
        )
        .unwrap();
        assert_eq!(as_oidc.kind, ProviderKind::Oidc);
        assert_eq!(as_oidc.endpoints.authorization.unwrap().as_str(), "http://127.0.0.1:9/t1/authorize");
    }

    #[test]
    fn a_self_hosted_github_or_gitlab_needs_its_own_issuer() {
        let ghe = "name = \"ghe\"\nkind = \"github\"\nclient_id = \"c\"\nclient_secret_env = \"SECRET\"\n\
                   authorization_endpoint = \"https://git.corp.example/login/oauth/authorize\"\n\
                   token_endpoint = \"https://git.corp.example/login/oauth/access_token\"\n\
                   api_base_url = \"https://git.corp.example/api/v3\"";
        let refused = entry(ghe).unwrap_err();
        assert_eq!(refused.key, "providers[0].issuer");
        assert!(refused.to_string().contains("https://git.corp.example"), "{refused}");
        let own = entry(&format!("{ghe}\nissuer = \"https://git.corp.example\"")).unwrap();
        assert_eq!(own.issuer.as_str(), "https://git.corp.example");
        // The public site's issuer written out is no way around it (and the fix named is the
        // issuer, even for a template with an `instance`: a written-out issuer has none to fill).
        let written_out = entry(&format!("{ghe}\nissuer = \"https://github.com/\"")).unwrap_err();
        assert_eq!(written_out.key, "providers[0].issuer", "{written_out}");
        let as_oauth2 =
            ghe.replace("kind = \"github\"", "template = \"github\"\nkind = \"oauth2\"\naccount_id_pointer = \"/id\"");
        assert_eq!(entry(&as_oauth2).unwrap_err().key, "providers[0].issuer", "a template's kind changed");
        let gitlab_written_out = "name = \"gl\"\ntemplate = \"gitlab\"\nclient_id = \"c\"\nclient_secret_env = \"SECRET\"\n\
                                  issuer = \"https://gitlab.com\"\ntoken_endpoint = \"https://gitlab.corp.example/oauth/token\"";
        let refused = entry(gitlab_written_out).unwrap_err();
        assert!(refused.to_string().contains("set the issuer"), "{refused}");
        // The public site's own hosts keep the default.
        let github = entry(
            "name = \"gh\"\nkind = \"github\"\nclient_id = \"c\"\nclient_secret_env = \"SECRET\"\n\
             api_base_url = \"https://api.github.com\"",
        )
        .unwrap();
        assert_eq!(github.issuer.as_str(), "https://github.com");
        let gitlab = "name = \"gl\"\nkind = \"gitlab\"\nclient_id = \"c\"\nclient_secret_env = \"SECRET\"\n\
                      token_endpoint = \"https://gitlab.corp.example/oauth/token\"";
        assert_eq!(entry(gitlab).unwrap_err().key, "providers[0].issuer");
        // Through the templates too, whose issuer is the public site's.
        let templated = ghe.replace("kind = \"github\"", "template = \"github\"");
        let refused = entry(&templated).unwrap_err();
        assert_eq!(refused.key, "providers[0].issuer", "{refused}");
        assert!(refused.to_string().contains("https://git.corp.example"), "{refused}");
        let gitlab = gitlab.replace("kind = \"gitlab\"", "template = \"gitlab\"");
        let refused = entry(&gitlab).unwrap_err();
        assert_eq!(refused.key, "providers[0].issuer");
        assert!(refused.to_string().contains("set instance"), "{refused}");
        let instance = entry(&format!("{gitlab}\ninstance = \"gitlab.corp.example\"")).unwrap();
        assert_eq!(instance.issuer.as_str(), "https://gitlab.corp.example");
    }

    #[test]
    fn a_provider_without_a_secret_needs_pkce_and_max_age_is_reserved() {
        let public = "name = \"p\"\nkind = \"oidc\"\nissuer = \"https://sso.example.com\"\nclient_id = \"c\"";
        assert!(entry(public).is_ok(), "PKCE by default");
        assert_eq!(entry(&format!("{public}\npkce = false")).unwrap_err().key, "providers[0].pkce");
        assert!(entry(&format!("{public}\npkce = false\nclient_secret_env = \"SECRET\"")).is_ok());
        let max_age = entry(&format!("{public}\nextra_authorize_params = {{ max_age = \"3600\" }}")).unwrap_err();
        assert_eq!(max_age.key, "providers[0].extra_authorize_params");
        let blank = entry(&format!("{public}\ntrusted_audiences = [\" \"]")).unwrap_err();
        assert_eq!(blank.key, "providers[0].trusted_audiences");
        let trusted = entry(&format!("{public}\ntrusted_audiences = [\"api\"]")).unwrap();
        assert_eq!(trusted.protocol.trusted_audiences, ["api"]);
        let slack = "name = \"s\"\ntemplate = \"slack\"\nclient_id = \"c\"\nclient_secret_env = \"SECRET\"";
        let no_id_token = entry(&format!("{slack}\ntrusted_audiences = [\"api\"]")).unwrap_err();
        assert_eq!(no_id_token.key, "providers[0].trusted_audiences");
        let nonce = entry(&format!("{public}\noffline_authorize_params = {{ nonce = \"n\" }}")).unwrap_err();
        assert_eq!(nonce.key, "providers[0].offline_authorize_params");
        // Keys its kind never reads, set by the entry itself: named; a template's are not checked.
        let gitlab_api = entry(&format!("{public}\napi_base_url = \"https://sso.example.com/api\"")).unwrap_err();
        assert_eq!(gitlab_api.key, "providers[0].api_base_url");
        let github = "name = \"g\"\nkind = \"github\"\nclient_id = \"c\"\nclient_secret_env = \"SECRET\"";
        assert!(entry(&format!("{github}\napi_base_url = \"https://api.github.com\"")).is_ok());
        let revocation = entry(&format!("{github}\nrevocation_endpoint = \"https://ghe.example/r\"")).unwrap_err();
        assert_eq!(revocation.key, "providers[0].revocation_endpoint");
        let pointer = entry(&format!("{public}\nemail_verified_pointer = \"/verified\"")).unwrap_err();
        assert_eq!(pointer.key, "providers[0].email_verified_pointer");
        assert_eq!(
            entry(&format!("{slack}\njwks_uri = \"https://slack.com/k\"")).unwrap_err().key,
            "providers[0].jwks_uri"
        );
        let as_oidc =
            entry(&format!("{slack}\nkind = \"oidc\"\nissuer = \"https://slack.com\"\nscopes = [\"openid\"]"));
        assert!(as_oidc.is_ok(), "the template's pointers: {as_oidc:?}");
        for name in ["response_mode", "request", "request_uri"] {
            let refused = entry(&format!("{public}\nextra_authorize_params = {{ {name} = \"x\" }}")).unwrap_err();
            assert_eq!(refused.key, "providers[0].extra_authorize_params", "{name}");
        }
        let zoom = "name = \"z\"\ntemplate = \"zoom\"\nclient_id = \"c\"\nclient_secret_env = \"SECRET\"";
        assert_eq!(entry(zoom).unwrap().protocol.refusal_errors, ["invalid_request"], "the template's");
        let microsoft = "name = \"m\"\ntemplate = \"microsoft\"\nclient_id = \"c\"\nclient_secret_env = \"SECRET\"";
        let asked_back = entry(microsoft).unwrap().protocol.refusal_errors;
        assert_eq!(asked_back, ["interaction_required", "consent_required", "login_required"], "Entra's");
        let own = entry(&format!("{public}\nrefusal_errors = [\" Bad_Token \"]")).unwrap();
        assert_eq!(own.protocol.refusal_errors, ["bad_token"]);
        for bad in ["\"\"", "\"invalid request\"", "\"a-b\"", "\"Invalid_Client\"", "\"server_error\""] {
            let refused = entry(&format!("{public}\nrefusal_errors = [{bad}]")).unwrap_err();
            assert_eq!(refused.key, "providers[0].refusal_errors", "{bad}");
        }
    }

    #[test]
    fn template_mistakes_name_the_key() {
        let unknown = entry("name = \"x\"\ntemplate = \"myspace\"\nclient_id = \"c\"").unwrap_err();
        assert_eq!(unknown.key, "providers[0].template");
        assert!(unknown.message.contains("google") && unknown.message.contains("zoom"), "{unknown}");
        let neither = entry("name = \"x\"\nclient_id = \"c\"").unwrap_err();
        assert_eq!(neither.key, "providers[0].kind");
        let key_of = |body: &str| entry(body).unwrap_err().key;
        let oauth2 = "name = \"x\"\nkind = \"oauth2\"\nclient_id = \"c\"\nissuer = \"https://x.example\"\n\
                      authorization_endpoint = \"https://x.example/a\"\ntoken_endpoint = \"https://x.example/t\"";
        assert_eq!(key_of(oauth2), "providers[0].account_id_pointer");
        assert!(entry(&format!("{oauth2}\naccount_id_pointer = \"/id\"")).is_ok());
        assert_eq!(key_of(&format!("{oauth2}\naccount_id_pointer = \"id\"")), "providers[0].account_id_pointer");
        assert_eq!(
            key_of(&format!("{oauth2}\naccount_id_pointer = \"/id\"\nscope_separator = \";\"")),
            "providers[0].scope_separator"
        );
        assert_eq!(
            key_of(&format!("{oauth2}\naccount_id_pointer = \"/id\"\nextra_authorize_params = {{ state = \"x\" }}")),
            "providers[0].extra_authorize_params"
        );
        assert_eq!(
            key_of(&format!("{oauth2}\naccount_id_pointer = \"/id\"\nuserinfo_body = \"{{}}\"")),
            "providers[0].userinfo_body"
        );
        let no_token = "name = \"x\"\nkind = \"oauth2\"\nclient_id = \"c\"\nissuer = \"https://x.example\"\n\
                        authorization_endpoint = \"https://x.example/a\"\naccount_id_pointer = \"/id\"";
        assert_eq!(key_of(no_token), "providers[0].token_endpoint");
        assert_eq!(
            key_of("name = \"x\"\ntemplate = \"slack\"\nclient_id = \"c\"\ntoken_auth = \"private_key_jwt\""),
            "providers[0].token_auth"
        );
    }

    #[test]
    fn the_deprecated_key_variable_still_works_with_a_warning() {
        let config = Config::from_toml("", env(&[(DEPRECATED_KEY_VAR, &key())])).unwrap();
        assert_eq!(config.encryption.as_ref().unwrap().active_id(), "default");
        assert!(config.warnings[0].contains("deprecated"), "{:?}", config.warnings);
        // Beside a ring, the old key's secrets (key id `default`) must stay readable.
        let keys = format!("k2:{},default:{}", base64::engine::general_purpose::STANDARD.encode([5u8; 32]), key());
        let both = Config::from_toml("", env(&[(DEPRECATED_KEY_VAR, &key()), (ENCRYPTION_KEYS_VAR, &keys)])).unwrap();
        assert_eq!(both.encryption.as_ref().unwrap().active_id(), "k2");
        assert!(both.warnings[0].contains("remove it"), "{:?}", both.warnings);
        let without_default = format!("k2:{}", key());
        let error =
            Config::from_toml("", env(&[(DEPRECATED_KEY_VAR, &key()), (ENCRYPTION_KEYS_VAR, &without_default)]))
                .unwrap_err();
        assert_eq!(error.key, DEPRECATED_KEY_VAR);
        assert!(error.message.contains("default:<the same key>"), "{}", error.message);
        let in_file = format!("[encryption]\nkeys = [\"k2:{}\"]\n", key());
        let error = Config::from_toml(&in_file, env(&[(DEPRECATED_KEY_VAR, &key())])).unwrap_err();
        assert!(error.message.contains("encryption.keys"), "{}", error.message);
        // A `default` key that is not the old variable's (a typo) could not read its secrets either.
        let other = base64::engine::general_purpose::STANDARD.encode([42u8; 32]);
        let wrong_default = format!("k2:{},default:{other}", key());
        let error = Config::from_toml("", env(&[(DEPRECATED_KEY_VAR, &key()), (ENCRYPTION_KEYS_VAR, &wrong_default)]))
            .unwrap_err();
        assert_eq!(error.key, DEPRECATED_KEY_VAR);
        assert!(error.message.contains("differs"), "{}", error.message);
        assert!(!error.message.contains(&other) && !error.message.contains(&key()), "no key in the message");
    }
}

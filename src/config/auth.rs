//! Configuration of browser sign-in: the `[auth]` table, the `[[providers]]` list and the
//! encryption key ring for upstream tokens.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use super::{ConfigError, DEFAULT_ALGORITHMS, endpoint_url, parse_algorithm};
use crate::crypto::keyring::KeyRing;
use crate::domain::Issuer;

/// Browser sign-in and sessions.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The URL browsers reach Tessera at, used to build callback URLs (`auth.public_url`,
    /// `TESSERA_PUBLIC_URL`). Required when a provider is configured.
    pub public_url: Option<Url>,
    /// Whether cookies are `Secure` with the `__Host-` prefix (`auth.cookie_secure`,
    /// `TESSERA_COOKIE_SECURE`); turn off only for plain-HTTP development on localhost.
    pub cookie_secure: bool,
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
    /// Whether this provider's `email_verified` can be trusted for automatic linking.
    pub trusted_email_verification: bool,
    /// Link a first sign-in to the existing user with the same verified email (only with
    /// `trusted_email_verification`).
    pub auto_link_by_email: bool,
    /// Keep the upstream access and refresh tokens, encrypted.
    pub store_tokens: bool,
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
    default_provider: Option<String>,
    return_to_origins: Option<Vec<String>>,
    session_ttl_hours: Option<u64>,
    session_idle_minutes: Option<u64>,
    pending_profile_ttl_hours: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    name: String,
    kind: String,
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
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEncryption {
    keys: Option<Vec<String>>,
}

/// The environment variable of the key ring.
pub const ENCRYPTION_KEYS_VAR: &str = "TESSERA_ENCRYPTION_KEYS";
/// The deprecated single-key variable, still accepted.
pub const DEPRECATED_KEY_VAR: &str = "TESSERA_TOKEN_ENCRYPTION_KEY";

pub(super) fn parse_auth(raw: RawAuth) -> Result<AuthConfig, ConfigError> {
    let public_url = match raw.public_url {
        Some(text) => {
            let url = Url::parse(text.trim())
                .map_err(|e| ConfigError::new("auth.public_url (TESSERA_PUBLIC_URL)", format!("not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || url.query().is_some() {
                return Err(ConfigError::new(
                    "auth.public_url (TESSERA_PUBLIC_URL)",
                    "expected an http(s) URL such as https://id.example.com",
                ));
            }
            Some(url)
        }
        None => None,
    };
    let cookie_secure = raw.cookie_secure.unwrap_or(true);
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
    let session_idle_minutes = raw.session_idle_minutes.unwrap_or(24 * 60);
    if !(1..=session_ttl_hours * 60).contains(&session_idle_minutes) {
        return Err(ConfigError::new("auth.session_idle_minutes", "expected 1 minute up to the session lifetime"));
    }
    let pending_hours = raw.pending_profile_ttl_hours.unwrap_or(24);
    if !(1..=24 * 30).contains(&pending_hours) {
        return Err(ConfigError::new("auth.pending_profile_ttl_hours", "expected 1 to 720 hours"));
    }
    Ok(AuthConfig {
        pending_profile_ttl: Duration::from_secs(pending_hours * 3600),
        public_url,
        cookie_secure,
        default_provider: raw.default_provider,
        return_to_origins,
        session_ttl: Duration::from_secs(session_ttl_hours * 3600),
        session_idle: Duration::from_secs(session_idle_minutes * 60),
    })
}

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
    let valid_name = !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid_name {
        return Err(ConfigError::new(key("name"), "expected 1 to 32 characters of a-z, 0-9, `-` and `_`"));
    }
    let kind = match raw.kind.trim() {
        "oidc" => ProviderKind::Oidc,
        "github" => ProviderKind::GitHub,
        "gitlab" => ProviderKind::GitLab,
        other => return Err(ConfigError::new(key("kind"), format!("{other:?} is not one of oidc, github, gitlab"))),
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
    let client_secret = match (&raw.client_secret_env, &raw.client_secret_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                key("client_secret_env"),
                "set client_secret_env or client_secret_file, not both",
            ));
        }
        (Some(var), None) => Some(SecretString::from(env(var).filter(|v| !v.trim().is_empty()).ok_or_else(|| {
            ConfigError::new(key("client_secret_env"), format!("the environment variable {var} is not set"))
        })?)),
        (None, Some(path)) => Some(SecretString::from(
            std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new(key("client_secret_file"), format!("cannot read {path}: {e}")))?
                .trim()
                .to_owned(),
        )),
        (None, None) => None,
    };
    let default_issuer = match kind {
        ProviderKind::Oidc => None,
        ProviderKind::GitHub => Some("https://github.com"),
        ProviderKind::GitLab => Some("https://gitlab.com"),
    };
    let issuer_text = raw
        .issuer
        .as_deref()
        .or(default_issuer)
        .ok_or_else(|| ConfigError::new(key("issuer"), "an oidc provider needs its issuer URL"))?;
    let issuer = Issuer::parse(issuer_text).map_err(|e| ConfigError::new(key("issuer"), e.to_string()))?;
    let endpoint = |field: &str, value: &Option<String>| -> Result<Option<Url>, ConfigError> {
        value.as_deref().map(|v| endpoint_url(v).map_err(|m| ConfigError::new(key(field), m))).transpose()
    };
    let endpoints = ProviderEndpoints {
        authorization: endpoint("authorization_endpoint", &raw.authorization_endpoint)?,
        token: endpoint("token_endpoint", &raw.token_endpoint)?,
        userinfo: endpoint("userinfo_endpoint", &raw.userinfo_endpoint)?,
        jwks: endpoint("jwks_uri", &raw.jwks_uri)?,
        api: endpoint("api_base_url", &raw.api_base_url)?,
        revocation: endpoint("revocation_endpoint", &raw.revocation_endpoint)?,
    };
    let default_scopes: &[&str] = match kind {
        ProviderKind::Oidc | ProviderKind::GitLab => &["openid", "profile", "email"],
        ProviderKind::GitHub => &["read:user", "user:email"],
    };
    let scopes = raw.scopes.unwrap_or_else(|| default_scopes.iter().map(|s| (*s).to_owned()).collect());
    let algorithms = match raw.algorithms {
        Some(names) => names
            .iter()
            .map(|n| parse_algorithm(n))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| ConfigError::new(key("algorithms"), m))?,
        None => DEFAULT_ALGORITHMS.to_vec(),
    };
    let trusted_email_verification = raw.trusted_email_verification.unwrap_or(false);
    let auto_link_by_email = raw.auto_link_by_email.unwrap_or(false);
    if auto_link_by_email && !trusted_email_verification {
        return Err(ConfigError::new(
            key("auto_link_by_email"),
            "automatic linking by email needs trusted_email_verification = true for this provider",
        ));
    }
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
    if let Some(value) = env(ENCRYPTION_KEYS_VAR).filter(|v| !v.trim().is_empty()) {
        if deprecated.is_some() {
            warnings.push(format!("{DEPRECATED_KEY_VAR} is ignored because {ENCRYPTION_KEYS_VAR} is set; remove it"));
        }
        return KeyRing::parse(&value)
            .map(|ring| Some(Arc::new(ring)))
            .map_err(|e| ConfigError::new(ENCRYPTION_KEYS_VAR, e.to_string()));
    }
    if let Some(keys) = raw.keys {
        return KeyRing::parse(&keys.join(","))
            .map(|ring| Some(Arc::new(ring)))
            .map_err(|e| ConfigError::new("encryption.keys", e.to_string()));
    }
    match deprecated {
        Some(value) => {
            warnings.push(format!(
                "{DEPRECATED_KEY_VAR} is deprecated: set {ENCRYPTION_KEYS_VAR}=default:<the same key> instead"
            ));
            KeyRing::single("default", &value)
                .map(|ring| Some(Arc::new(ring)))
                .map_err(|e| ConfigError::new(DEPRECATED_KEY_VAR, e.to_string()))
        }
        None => Ok(None),
    }
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
    fn providers_are_read_with_their_defaults() {
        let config = Config::from_toml(PROVIDERS, env(&[("GH_SECRET", "s3cret")])).unwrap();
        let github = &config.providers[0];
        assert_eq!(github.kind, ProviderKind::GitHub);
        assert_eq!(github.issuer.as_str(), "https://github.com");
        assert_eq!(github.scopes, ["read:user", "user:email"]);
        assert!(github.client_secret.is_some());
        assert!(!format!("{config:?}").contains("s3cret"), "secrets never show in Debug");
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
        let stores = PROVIDERS.replace("kind = \"github\"", "kind = \"github\"\nstore_tokens = true");
        assert_eq!(key_of(&stores, &[("GH_SECRET", "s")]), ENCRYPTION_KEYS_VAR);
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

    #[test]
    fn the_deprecated_key_variable_still_works_with_a_warning() {
        let config = Config::from_toml("", env(&[(DEPRECATED_KEY_VAR, &key())])).unwrap();
        assert_eq!(config.encryption.as_ref().unwrap().active_id(), "default");
        assert!(config.warnings[0].contains("deprecated"), "{:?}", config.warnings);
        let both = Config::from_toml(
            "",
            env(&[(DEPRECATED_KEY_VAR, &key()), (ENCRYPTION_KEYS_VAR, &format!("k2:{}", key()))]),
        )
        .unwrap();
        assert_eq!(both.encryption.as_ref().unwrap().active_id(), "k2");
        assert!(!both.warnings.is_empty());
    }
}

//! The `[oidc]` table: Tessera as an OpenID Provider for the team's own apps — its signing keys,
//! token lifetimes, and `[[oidc.clients]]`, clients defined in the file (written to the store at
//! start-up, read-only through the admin API). A client's secret is never written in the file:
//! `secret_env` names the environment variable that holds it (as `client_secret_env` does for
//! `[[providers]]`). The provider runs only when `auth.public_url` and the key ring are set.

use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Deserialize;

use super::ConfigError;
use crate::crypto::sha256;
use crate::domain::client_rules::{self, ACCESS_TOKEN_TTL_SECONDS, ClientFields};
use crate::domain::{Client, SigningAlg};

/// The shortest secret accepted for a client of the file: only an unsalted SHA-256 of it is
/// kept, which is safe for long random secrets only.
pub const MIN_CLIENT_SECRET_LEN: usize = 32;

/// Tessera as an OpenID Provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// How long relying parties may cache the JWKS (`Cache-Control: max-age`), and how long
    /// before a new signing key signs it is published (`oidc.jwks_max_age_seconds`).
    pub jwks_max_age: Duration,
    /// A signing key signs this long, then a new one takes over (`oidc.signing_key_rotation_days`).
    pub signing_key_rotation: Duration,
    /// The algorithm of `tessera keys signing rotate` without `--alg` (`oidc.signing_alg`);
    /// clients name their own (ES256 unless registered otherwise).
    pub signing_alg: SigningAlg,
    /// Lifetime of id tokens (`oidc.id_token_ttl_seconds`); access tokens' is per client.
    pub id_token_ttl: Duration,
    /// How long after its first use a rotated refresh token may be used again, each use giving
    /// another new refresh token (`oidc.refresh_token_reuse_seconds`); zero: a second use revokes
    /// the grant at once.
    pub refresh_token_reuse: Duration,
    /// Clients defined in the file (`[[oidc.clients]]`).
    pub clients: Vec<ClientConfig>,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            jwks_max_age: Duration::from_secs(600),
            signing_key_rotation: Duration::from_secs(30 * 86_400),
            signing_alg: SigningAlg::default(),
            id_token_ttl: Duration::from_secs(600),
            refresh_token_reuse: Duration::ZERO,
            clients: Vec::new(),
        }
    }
}

impl OidcConfig {
    /// The longest lifetime of a token signed with Tessera's keys — the longest access-token
    /// lifetime a client may register, or the id-token lifetime if longer: how long a retired
    /// key stays in the JWKS.
    pub fn max_token_lifetime(&self) -> Duration {
        Duration::from_secs(*ACCESS_TOKEN_TTL_SECONDS.end()).max(self.id_token_ttl)
    }
}

/// One client of the file, validated like a registration through the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The record to store (`from_config`; only the SHA-256 of its secret).
    pub client: Client,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOidc {
    jwks_max_age_seconds: Option<u64>,
    signing_key_rotation_days: Option<u64>,
    signing_alg: Option<String>,
    id_token_ttl_seconds: Option<u64>,
    refresh_token_reuse_seconds: Option<u64>,
    #[serde(default)]
    clients: Vec<RawClient>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    id: String,
    name: String,
    kind: String,
    /// Refused with a pointer to `secret_env`; the value itself is not kept.
    #[serde(alias = "client_secret")]
    secret: Option<serde::de::IgnoredAny>,
    secret_env: Option<String>,
    secret_file: Option<String>,
    /// A JWK Set, as a table or as a JSON string.
    jwks: Option<serde_json::Value>,
    redirect_uris: Option<Vec<String>>,
    post_logout_redirect_uris: Option<Vec<String>>,
    scopes: Option<Vec<String>>,
    grant_types: Option<Vec<String>>,
    resources: Option<Vec<String>>,
    first_party: Option<bool>,
    signing_alg: Option<String>,
    access_token_ttl_seconds: Option<u64>,
    refresh_token_ttl_seconds: Option<u64>,
}

pub(super) fn parse_oidc(raw: RawOidc, env: &dyn Fn(&str) -> Option<String>) -> Result<OidcConfig, ConfigError> {
    let defaults = OidcConfig::default();
    let jwks_max_age = match raw.jwks_max_age_seconds {
        None => defaults.jwks_max_age,
        Some(s) if (10..=86_400).contains(&s) => Duration::from_secs(s),
        Some(_) => return Err(ConfigError::new("oidc.jwks_max_age_seconds", "expected 10 to 86400 seconds")),
    };
    let signing_key_rotation = match raw.signing_key_rotation_days {
        None => defaults.signing_key_rotation,
        Some(d) if (1..=3650).contains(&d) => Duration::from_secs(d * 86_400),
        Some(_) => return Err(ConfigError::new("oidc.signing_key_rotation_days", "expected 1 to 3650 days")),
    };
    let signing_alg = match raw.signing_alg {
        None => defaults.signing_alg,
        Some(name) => name.trim().parse().map_err(|()| {
            ConfigError::new("oidc.signing_alg", format!("{name:?} is not one of ES256, RS256, EdDSA"))
        })?,
    };
    let id_token_ttl = match raw.id_token_ttl_seconds {
        None => defaults.id_token_ttl,
        Some(s) if (60..=86_400).contains(&s) => Duration::from_secs(s),
        Some(_) => return Err(ConfigError::new("oidc.id_token_ttl_seconds", "expected 60 to 86400 seconds")),
    };
    let mut clients: Vec<ClientConfig> = Vec::new();
    for (i, raw) in raw.clients.into_iter().enumerate() {
        let client = parse_client(i, raw, signing_alg, env)?;
        if clients.iter().any(|c| c.client.id == client.id) {
            return Err(ConfigError::new(
                format!("oidc.clients[{i}].id"),
                format!("two clients have the id {:?}; ids must be unique", client.id.as_str()),
            ));
        }
        clients.push(ClientConfig { client });
    }
    let refresh_token_reuse = match raw.refresh_token_reuse_seconds {
        None => defaults.refresh_token_reuse,
        Some(s) if s <= 60 => Duration::from_secs(s),
        Some(_) => return Err(ConfigError::new("oidc.refresh_token_reuse_seconds", "expected 0 to 60 seconds")),
    };
    Ok(OidcConfig { jwks_max_age, signing_key_rotation, signing_alg, id_token_ttl, refresh_token_reuse, clients })
}

fn parse_client(
    i: usize,
    raw: RawClient,
    default_alg: SigningAlg,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Client, ConfigError> {
    let key = |field: &str| format!("oidc.clients[{i}].{field}");
    let rule = |e: client_rules::ClientRuleError| ConfigError::new(key(&e.field), e.message);
    if raw.secret.is_some() {
        return Err(ConfigError::new(
            key("secret"),
            "a client secret is never written in the configuration: put it in an environment variable and name \
             that with secret_env",
        ));
    }
    let id = client_rules::parse_client_id(raw.id.trim()).map_err(rule)?;
    let kind = client_rules::parse_kind(raw.kind.trim()).map_err(rule)?;
    let name = client_rules::parse_name(&raw.name).map_err(rule)?;
    let jwks = match raw.jwks {
        Some(serde_json::Value::String(text)) => {
            Some(serde_json::from_str(&text).map_err(|e| ConfigError::new(key("jwks"), format!("not JSON: {e}")))?)
        }
        other => other,
    };
    let mut client = client_rules::new_client(id, name, kind, default_alg, true, crate::domain::now());
    client_rules::apply(
        &mut client,
        ClientFields {
            jwks: jwks.map(Some),
            redirect_uris: raw.redirect_uris,
            post_logout_redirect_uris: raw.post_logout_redirect_uris,
            scopes: raw.scopes,
            grant_types: raw.grant_types,
            resources: raw.resources,
            first_party: raw.first_party,
            signing_alg: raw.signing_alg,
            access_token_ttl_seconds: raw.access_token_ttl_seconds,
            refresh_token_ttl_seconds: raw.refresh_token_ttl_seconds,
            ..ClientFields::default()
        },
    )
    .map_err(rule)?;
    let named = ("secret_env", raw.secret_env.as_deref());
    if let Some(secret) = super::env_or_file(env, &key, named, ("secret_file", raw.secret_file.as_deref()))? {
        if client.is_public() {
            let remove = format!("a public client has no secret: remove {}", secret.setting);
            return Err(ConfigError::new(secret.key, remove));
        }
        if secret.value.expose_secret().len() < MIN_CLIENT_SECRET_LEN {
            return Err(ConfigError::new(
                secret.key,
                format!(
                    "the secret in {} is shorter than {MIN_CLIENT_SECRET_LEN} characters; generate one with \
                     `openssl rand -hex 32`",
                    secret.from
                ),
            ));
        }
        client.secret_hash = Some(sha256(secret.value.expose_secret().as_bytes()));
    } else if !client.is_public() && client.jwks.is_none() {
        return Err(ConfigError::new(
            key("secret_env"),
            "a confidential client needs secret_env or secret_file (the environment variable or the file holding \
             its secret) or jwks",
        ));
    }
    client_rules::check(&client).map_err(rule)?;
    Ok(client)
}

#[cfg(test)]
mod signing_tests {
    use super::super::Config;
    use super::*;

    fn oidc(text: &str) -> Result<OidcConfig, ConfigError> {
        Config::from_toml(&format!("[oidc]\n{text}"), |_| None).map(|c| c.oidc)
    }

    #[test]
    fn signing_keys_rotate_monthly_and_are_cached_ten_minutes_by_default() {
        let config = Config::from_toml("", |_| None).unwrap().oidc;
        assert_eq!(config, OidcConfig::default());
        assert_eq!(config.jwks_max_age, Duration::from_secs(600));
        assert_eq!(config.signing_key_rotation, Duration::from_secs(30 * 86_400));
        assert_eq!(config.signing_alg, SigningAlg::ES256);
        assert!(config.max_token_lifetime() > Duration::ZERO);
    }

    #[test]
    fn signing_settings_are_read_and_checked() {
        let set = oidc("jwks_max_age_seconds = 60\nsigning_key_rotation_days = 7\nsigning_alg = \"EdDSA\"").unwrap();
        assert_eq!(
            (set.jwks_max_age, set.signing_key_rotation, set.signing_alg),
            (Duration::from_secs(60), Duration::from_secs(7 * 86_400), SigningAlg::EdDSA)
        );
        let key = |text: &str| oidc(text).unwrap_err().key;
        assert_eq!(key("jwks_max_age_seconds = 5"), "oidc.jwks_max_age_seconds");
        assert_eq!(key("jwks_max_age_seconds = 86401"), "oidc.jwks_max_age_seconds");
        assert_eq!(key("signing_key_rotation_days = 0"), "oidc.signing_key_rotation_days");
        assert_eq!(key("signing_alg = \"HS256\""), "oidc.signing_alg");
        assert_eq!(key("signing_alg = \"es256\""), "oidc.signing_alg", "JOSE names are case-sensitive");
        assert_eq!(key("signing_keys = 1"), "oidc.signing_keys");
    }

    #[test]
    fn signing_settings_can_be_set_from_the_environment() {
        // `TESSERA_OIDC__JWKS_MAX_AGE_SECONDS` and the like: the splitter reads known key paths.
        for key in ["oidc", "oidc.jwks_max_age_seconds", "oidc.signing_key_rotation_days", "oidc.signing_alg"] {
            assert!(super::super::sources::is_key(key), "{key}");
        }
    }
}

#[cfg(test)]
mod client_tests {
    use std::collections::HashMap;

    use super::super::Config;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    const CLIENTS: &str = r#"
        [[oidc.clients]]
        id = "grafana"
        name = "Grafana"
        kind = "confidential"
        secret_env = "GRAFANA_SECRET"
        redirect_uris = ["https://grafana.example.com/login/generic_oauth"]
        [[oidc.clients]]
        id = "cli"
        name = "The CLI"
        kind = "public"
        redirect_uris = ["http://127.0.0.1/callback"]
        scopes = ["openid", "offline_access"]
        access_token_ttl_seconds = 300
    "#;

    #[test]
    fn refresh_tokens_are_not_reusable_unless_configured_up_to_a_minute() {
        assert_eq!(Config::from_toml("", env(&[])).unwrap().oidc.refresh_token_reuse, std::time::Duration::ZERO);
        let set = Config::from_toml("[oidc]\nrefresh_token_reuse_seconds = 30", env(&[])).unwrap();
        assert_eq!(set.oidc.refresh_token_reuse, std::time::Duration::from_secs(30));
        let error = Config::from_toml("[oidc]\nrefresh_token_reuse_seconds = 61", env(&[])).unwrap_err();
        assert_eq!(error.key, "oidc.refresh_token_reuse_seconds");
    }

    #[test]
    fn clients_are_read_with_their_defaults_and_only_a_hash_of_the_secret() {
        let config = Config::from_toml(CLIENTS, env(&[("GRAFANA_SECRET", SECRET)])).unwrap();
        let grafana = &config.oidc.clients[0].client;
        assert!(grafana.from_config && !grafana.is_public());
        assert_eq!(grafana.secret_hash, Some(crate::crypto::sha256(SECRET.as_bytes())));
        assert_eq!(grafana.scopes, ["openid", "profile", "email", "teams", "offline_access"]);
        let cli = &config.oidc.clients[1].client;
        assert!(cli.is_public() && cli.secret_hash.is_none());
        assert_eq!(cli.access_token_ttl.as_secs(), 300);
        assert!(!format!("{config:?}").contains(SECRET));
        // The provider is off here (no public URL, no key ring): the clients would never be
        // served, and start-up says so.
        assert!(config.warnings.iter().any(|w| w.contains("[[oidc.clients]]")), "{:?}", config.warnings);
        let on = format!(
            "[auth]\npublic_url = \"https://id.example.com\"\n[encryption]\nkeys = [\"k1:{}\"]\n{CLIENTS}",
            "A".repeat(43) + "="
        );
        let on = Config::from_toml(&on, env(&[("GRAFANA_SECRET", SECRET)])).unwrap();
        assert!(on.warnings.is_empty(), "{:?}", on.warnings);
        // A secret made from a file, newline and all, is the same secret.
        let from_file = Config::from_toml(CLIENTS, env(&[("GRAFANA_SECRET", &format!("{SECRET}\n"))])).unwrap();
        assert_eq!(from_file.oidc.clients[0].client.secret_hash, Some(crate::crypto::sha256(SECRET.as_bytes())));
        // So is one read from a file that `secret_file` names (a mounted secret).
        let file_holding = tempfile::NamedTempFile::new().unwrap();
        let path = file_holding.path();
        std::fs::write(path, format!("{SECRET}\n")).unwrap();
        let named =
            CLIENTS.replace("secret_env = \"GRAFANA_SECRET\"", &format!("secret_file = \"{}\"", path.display()));
        let mounted = Config::from_toml(&named, env(&[])).unwrap();
        assert_eq!(mounted.oidc.clients[0].client.secret_hash, Some(crate::crypto::sha256(SECRET.as_bytes())));
        let both = CLIENTS.replace(
            "secret_env = \"GRAFANA_SECRET\"",
            &format!("secret_env = \"GRAFANA_SECRET\"\nsecret_file = \"{}\"", path.display()),
        );
        let refused = Config::from_toml(&both, env(&[("GRAFANA_SECRET", SECRET)])).unwrap_err();
        assert_eq!(refused.key, "oidc.clients[0].secret_env", "not both");
    }

    #[test]
    fn client_mistakes_name_the_key() {
        let key = |text: &str, pairs: &[(&str, &str)]| Config::from_toml(text, env(pairs)).unwrap_err().key;
        let ok = [("GRAFANA_SECRET", SECRET)];
        assert_eq!(key(CLIENTS, &[]), "oidc.clients[0].secret_env");
        assert_eq!(key(CLIENTS, &[("GRAFANA_SECRET", "short")]), "oidc.clients[0].secret_env");
        let inline =
            CLIENTS.replace("secret_env = \"GRAFANA_SECRET\"", "secret = \"hunter2hunter2hunter2hunter2hunter2\"");
        let error = Config::from_toml(&inline, env(&ok)).unwrap_err();
        assert_eq!(error.key, "oidc.clients[0].secret");
        assert!(error.message.contains("secret_env") && !error.to_string().contains("hunter2"), "{error}");
        let wildcard = CLIENTS.replace("https://grafana.example.com/", "https://*.example.com/");
        assert_eq!(key(&wildcard, &ok), "oidc.clients[0].redirect_uris[0]");
        let twice = CLIENTS.replace("id = \"cli\"", "id = \"grafana\"");
        assert_eq!(key(&twice, &ok), "oidc.clients[1].id");
        let public_cc =
            CLIENTS.replace("scopes = [\"openid\", \"offline_access\"]", "grant_types = [\"client_credentials\"]");
        assert_eq!(key(&public_cc, &ok), "oidc.clients[1].grant_types");
        let public_secret = CLIENTS.replace("kind = \"public\"", "kind = \"public\"\nsecret_env = \"GRAFANA_SECRET\"");
        assert_eq!(key(&public_secret, &ok), "oidc.clients[1].secret_env");
        assert_eq!(key(&CLIENTS.replace("= 300", "= 30"), &ok), "oidc.clients[1].access_token_ttl_seconds");
        assert_eq!(key(&CLIENTS.replace("kind = \"public\"", "kind = \"spa\""), &ok), "oidc.clients[1].kind");
    }
}

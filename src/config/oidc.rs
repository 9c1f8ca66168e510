//! The `[oidc]` table: Tessera as an OpenID Provider for the team's own apps. `[[oidc.clients]]`
//! defines clients in the file; they are written to the store at start-up and are read-only
//! through the admin API. A client's secret is never written in the file: `secret_env` names the
//! environment variable that holds it (as `client_secret_env` does for `[[providers]]`).

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::ConfigError;
use crate::crypto::sha256;
use crate::domain::Client;
use crate::domain::client_rules::{self, ClientFields};

/// The shortest secret accepted for a client of the file: only an unsalted SHA-256 of it is
/// kept, which is safe for long random secrets only.
pub const MIN_CLIENT_SECRET_LEN: usize = 32;

/// The OpenID Provider.
#[derive(Debug, Clone, Default)]
pub struct OidcConfig {
    /// Clients defined in the file (`[[oidc.clients]]`).
    pub clients: Vec<ClientConfig>,
}

/// One client of the file, validated like a registration through the admin API.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The record to store (`from_config`; only the SHA-256 of its secret).
    pub client: Client,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOidc {
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
    let mut clients: Vec<ClientConfig> = Vec::new();
    for (i, raw) in raw.clients.into_iter().enumerate() {
        let client = parse_client(i, raw, env)?;
        if clients.iter().any(|c| c.client.id == client.id) {
            return Err(ConfigError::new(
                format!("oidc.clients[{i}].id"),
                format!("two clients have the id {:?}; ids must be unique", client.id.as_str()),
            ));
        }
        clients.push(ClientConfig { client });
    }
    Ok(OidcConfig { clients })
}

fn parse_client(i: usize, raw: RawClient, env: &dyn Fn(&str) -> Option<String>) -> Result<Client, ConfigError> {
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
    let mut client = client_rules::new_client(id, name, kind, true, crate::domain::now());
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
    if let Some(var) = &raw.secret_env {
        if client.is_public() {
            return Err(ConfigError::new(key("secret_env"), "a public client has no secret: remove secret_env"));
        }
        let secret = SecretString::from(env(var).filter(|v| !v.trim().is_empty()).ok_or_else(|| {
            ConfigError::new(key("secret_env"), format!("the environment variable {var} is not set"))
        })?);
        if secret.expose_secret().len() < MIN_CLIENT_SECRET_LEN {
            return Err(ConfigError::new(
                key("secret_env"),
                format!(
                    "the secret in {var} is shorter than {MIN_CLIENT_SECRET_LEN} characters; generate one with \
                     `openssl rand -base64 32`"
                ),
            ));
        }
        client.secret_hash = Some(sha256(secret.expose_secret().as_bytes()));
    } else if !client.is_public() && client.jwks.is_none() {
        return Err(ConfigError::new(
            key("secret_env"),
            "a confidential client needs secret_env (the environment variable holding its secret) or jwks",
        ));
    }
    client_rules::check(&client).map_err(rule)?;
    Ok(client)
}

#[cfg(test)]
mod tests {
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

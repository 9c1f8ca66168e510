//! The provider catalogue: built-in templates (one TOML file per provider under `catalogue/`,
//! embedded in the binary) that give a `[[providers]]` entry its endpoints, default scopes, PKCE,
//! revocation and quirks, so that the entry needs only `template`, the client id and the secret.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::Deserialize;

/// The embedded template files, by template name.
const FILES: &[(&str, &str)] = &[
    ("atlassian", include_str!("../../catalogue/atlassian.toml")),
    ("dropbox", include_str!("../../catalogue/dropbox.toml")),
    ("github", include_str!("../../catalogue/github.toml")),
    ("gitlab", include_str!("../../catalogue/gitlab.toml")),
    ("google", include_str!("../../catalogue/google.toml")),
    ("hubspot", include_str!("../../catalogue/hubspot.toml")),
    ("linear", include_str!("../../catalogue/linear.toml")),
    ("microsoft", include_str!("../../catalogue/microsoft.toml")),
    ("notion", include_str!("../../catalogue/notion.toml")),
    ("salesforce", include_str!("../../catalogue/salesforce.toml")),
    ("slack", include_str!("../../catalogue/slack.toml")),
    ("zoom", include_str!("../../catalogue/zoom.toml")),
];

/// One provider template: the keys a `[[providers]]` entry may take from it. Every key the entry
/// sets itself wins. URLs may hold the placeholders `{tenant}` and `{instance}`, filled from the
/// entry's keys of those names or the template's defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// What the provider is, for people.
    pub description: String,
    /// The provider's documentation of its OAuth endpoints.
    pub docs: String,
    /// How the provider differs from plain OAuth 2.0, for people (also in the README).
    #[serde(default)]
    pub quirks: Vec<String>,
    /// The provider kind (`oidc`, `oauth2`, `github`, `gitlab`).
    pub kind: String,
    /// The OpenID issuer, or the fixed issuer that keys identities.
    pub issuer: Option<String>,
    /// Default scopes.
    pub scopes: Option<Vec<String>>,
    /// Authorization endpoint.
    pub authorization_endpoint: Option<String>,
    /// Token endpoint.
    pub token_endpoint: Option<String>,
    /// User-info endpoint (OIDC), or the profile endpoint (`oauth2`).
    pub userinfo_endpoint: Option<String>,
    /// JWKS.
    pub jwks_uri: Option<String>,
    /// REST API base (GitHub).
    pub api_base_url: Option<String>,
    /// RFC 7009 revocation endpoint.
    pub revocation_endpoint: Option<String>,
    /// Whether the provider takes PKCE (S256).
    pub pkce: Option<bool>,
    /// `client_secret_basic` or `client_secret_post`.
    pub token_auth: Option<String>,
    /// What joins scopes in the authorization request (`" "` or `","`).
    pub scope_separator: Option<String>,
    /// Extra parameters of the authorization request.
    pub extra_authorize_params: Option<BTreeMap<String, String>>,
    /// Extra parameters only of the authorization requests whose tokens Tessera keeps
    /// (connected accounts, and sign-ins through an entry with `store_tokens`): those that ask
    /// for a refresh token, such as Google's `access_type=offline&prompt=consent`.
    pub offline_authorize_params: Option<BTreeMap<String, String>>,
    /// `GET` or `POST` for the profile endpoint (`oauth2`).
    pub userinfo_method: Option<String>,
    /// A JSON body sent to the profile endpoint with `POST` (`oauth2`).
    pub userinfo_body: Option<String>,
    /// JSON pointer to the stable account id in the profile (`oauth2`).
    pub account_id_pointer: Option<String>,
    /// JSON pointer to the login (`oauth2`).
    pub login_pointer: Option<String>,
    /// JSON pointer to the email (`oauth2`).
    pub email_pointer: Option<String>,
    /// JSON pointer to whether the email is verified (`oauth2`).
    pub email_verified_pointer: Option<String>,
    /// JSON pointer to the display name (`oauth2`).
    pub name_pointer: Option<String>,
    /// The access-token lifetime assumed when a token answer has no `expires_in` (Salesforce).
    pub default_expires_in: Option<u64>,
    /// Token-endpoint errors that, besides `invalid_grant`, refuse a code or refresh token for
    /// good (Zoom's `invalid_request`).
    pub refusal_errors: Option<Vec<String>>,
    /// Scopes asked for whatever scopes a connected account asks (Atlassian's `read:me`, which
    /// its profile endpoint needs, and `offline_access`, without which no refresh token comes).
    pub required_scopes: Option<Vec<String>>,
    /// The `prompt` a fresh login asks for: `login` (the default), or `select_account` for a
    /// provider that takes no `prompt=login` (Google).
    pub fresh_login_prompt: Option<String>,
    /// Whether people may sign in with it (off when the account is a workspace).
    pub sign_in: Option<bool>,
    /// The default of the `{tenant}` placeholder.
    pub tenant: Option<String>,
    /// The default of the `{instance}` placeholder.
    pub instance: Option<String>,
}

/// Why a template file does not parse.
#[derive(Debug, thiserror::Error)]
#[error("catalogue/{name}.toml: {message}")]
pub struct TemplateError {
    name: String,
    message: String,
}

/// Parses one template file.
pub fn parse(name: &str, text: &str) -> Result<Template, TemplateError> {
    let error = |message: String| TemplateError { name: name.to_owned(), message };
    let template: Template = Figment::from(Toml::string(text)).extract().map_err(|e| error(e.to_string()))?;
    if !matches!(template.kind.as_str(), "oidc" | "oauth2" | "github" | "gitlab") {
        return Err(error(format!("kind {:?} is not one of oidc, oauth2, github, gitlab", template.kind)));
    }
    Ok(template)
}

/// The built-in templates, parsed once. The files are part of the binary and a unit test parses
/// every one, so a failure here is a build defect.
fn builtin() -> &'static BTreeMap<&'static str, Template> {
    static TEMPLATES: OnceLock<BTreeMap<&'static str, Template>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        FILES
            .iter()
            .map(|(name, text)| (*name, parse(name, text).unwrap_or_else(|e| panic!("a built-in template: {e}"))))
            .collect()
    })
}

/// The built-in template named `name`.
pub fn template(name: &str) -> Option<&'static Template> {
    builtin().get(name)
}

/// The names of the built-in templates, sorted.
pub fn names() -> Vec<&'static str> {
    builtin().keys().copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_file_parses_and_says_what_it_is() {
        assert_eq!(FILES.len(), 12);
        for (name, text) in FILES {
            let template = parse(name, text).unwrap();
            assert!(!template.description.is_empty() && template.docs.starts_with("https://"), "{name}");
            if template.kind == "oauth2" {
                assert!(template.authorization_endpoint.is_some(), "{name}: an authorization endpoint");
                assert!(template.token_endpoint.is_some(), "{name}: a token endpoint");
                assert!(template.account_id_pointer.is_some(), "{name}: where the account id is");
                assert!(template.issuer.is_some(), "{name}: the issuer that keys identities");
            }
        }
        assert_eq!(
            names(),
            [
                "atlassian",
                "dropbox",
                "github",
                "gitlab",
                "google",
                "hubspot",
                "linear",
                "microsoft",
                "notion",
                "salesforce",
                "slack",
                "zoom"
            ]
        );
    }

    #[test]
    fn a_template_with_an_unknown_key_or_kind_is_refused() {
        let unknown = parse("x", "description = \"x\"\ndocs = \"https://x\"\nkind = \"oidc\"\nscope = [\"a\"]");
        assert!(unknown.unwrap_err().to_string().contains("scope"));
        let kind = parse("x", "description = \"x\"\ndocs = \"https://x\"\nkind = \"saml\"");
        assert!(kind.unwrap_err().to_string().contains("saml"));
    }
}

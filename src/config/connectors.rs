//! The `[[connectors]]` tables: the connectors an operator declares, and for `env` connectors the
//! fields a member fills in (an API key, a username and password…), each with a label, whether
//! it is secret, whether it may be left out and an optional pattern its value must match.
//!
//! ```toml
//! [[connectors]]
//! key = "openai"
//! label = "OpenAI"
//! fields = [{ name = "OPENAI_API_KEY", label = "API key", secret = true, pattern = "^sk-[A-Za-z0-9_-]{20,}$" }]
//! ```
//!
//! A connector without `fields` is only a label for OAuth profiles.
//!
//! An `env` connector may declare a `probe`: the request that tests a profile's values against
//! its service (`POST …/{slug}/test`). `{FIELD}` placeholders name declared fields; they may
//! appear in header values and in the URL's query (where the value is URL-encoded):
//!
//! ```toml
//! probe = { url = "https://api.openai.com/v1/models", method = "GET", headers = { Authorization = "Bearer {OPENAI_API_KEY}" } }
//! ```

use std::collections::BTreeMap;
use std::fmt;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use regex_automata::meta::Regex;
use serde::Deserialize;

use super::ConfigError;

/// The most fields a connector declares.
pub const MAX_FIELDS: usize = 32;
/// The longest field pattern, in bytes.
const MAX_PATTERN_LEN: usize = 512;
/// The most headers a probe sends.
const MAX_PROBE_HEADERS: usize = 16;
/// The longest probe URL or header value, as written.
const MAX_PROBE_TEXT_LEN: usize = 2048;

/// A declared connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorConfig {
    /// Its key, lower case: the `connector_key` of its profiles.
    pub key: String,
    /// What people call it, on the connect form.
    pub label: String,
    /// The fields of an `env` connector, in the form's order; empty for others.
    pub fields: Vec<EnvField>,
    /// The request that tests the values of its `env` profiles, if any.
    pub probe: Option<ConnectorProbe>,
}

/// One field of an `env` connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvField {
    /// Its name, as an environment variable (`OPENAI_API_KEY`).
    pub name: String,
    /// What the form calls it.
    pub label: String,
    /// Whether the value is secret (a password input; never shown again).
    pub secret: bool,
    /// Whether it may be left out (every field is required unless `optional = true`).
    pub optional: bool,
    /// A pattern the whole value must match, if any.
    pub pattern: Option<FieldPattern>,
}

/// A compiled field pattern (a regular expression, matched against the whole value).
#[derive(Clone)]
pub struct FieldPattern {
    source: String,
    regex: Regex,
}

impl FieldPattern {
    /// Compiles a pattern; it must match the whole value (it is anchored at both ends).
    pub fn new(source: &str) -> Result<Self, String> {
        if source.is_empty() || source.len() > MAX_PATTERN_LEN {
            return Err(format!("expected 1 to {MAX_PATTERN_LEN} characters"));
        }
        let regex = Regex::new(&format!("^(?:{source})$")).map_err(|e| format!("not a valid pattern: {e}"))?;
        Ok(Self { source: source.to_owned(), regex })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `value` matches it, whole.
    pub fn matches(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }
}

impl fmt::Debug for FieldPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FieldPattern").field(&self.source).finish()
    }
}

impl PartialEq for FieldPattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for FieldPattern {}

/// The HTTP method of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeMethod {
    /// `GET` (the default).
    Get,
    /// `HEAD`.
    Head,
    /// `POST`, without a body.
    Post,
}

impl ProbeMethod {
    /// The method for reqwest.
    pub fn as_method(self) -> reqwest::Method {
        match self {
            ProbeMethod::Get => reqwest::Method::GET,
            ProbeMethod::Head => reqwest::Method::HEAD,
            ProbeMethod::Post => reqwest::Method::POST,
        }
    }
}

/// A piece of a probe template: text as written, or a field's value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(String),
}

/// A text with `{FIELD}` placeholders, each naming a declared field.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Splits `text` at its placeholders; every `{…}` must name one of `fields`.
    fn parse(text: &str, fields: &[EnvField]) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err("a `}` without its `{`: braces only enclose placeholders such as {API_KEY}".into());
            }
            let Some(close) = rest[open..].find('}').map(|c| open + c) else {
                return Err("a `{` without its `}`: braces only enclose placeholders such as {API_KEY}".into());
            };
            let name = &rest[open + 1..close];
            if !fields.iter().any(|f| f.name == name) {
                let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
                return Err(format!(
                    "the placeholder {{{name}}} does not name a field of this connector; its fields are: {}",
                    names.join(", ")
                ));
            }
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            parts.push(Part::Field(name.to_owned()));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// The text with every placeholder replaced by `value(name)`.
    fn fill(&self, mut value: impl FnMut(&str) -> String) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Field(name) => out.push_str(&value(name)),
            }
        }
        out
    }

    fn has_fields(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Field(_)))
    }
}

/// The request that tests the values of a connector's `env` profiles. Its templates are checked
/// at start-up: every placeholder names a declared field, the URL is http(s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorProbe {
    method: ProbeMethod,
    /// The URL as written; placeholders only in its query.
    url: Template,
    headers: Vec<(HeaderName, Template)>,
}

/// A probe request filled with a profile's values. Secret: its `Debug` shows neither the URL
/// nor the headers.
pub struct FilledProbe {
    /// The method.
    pub method: reqwest::Method,
    /// The URL, values in its query.
    pub url: Url,
    /// The headers, values in them (marked sensitive).
    pub headers: HeaderMap,
}

impl fmt::Debug for FilledProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilledProbe").field("method", &self.method).finish_non_exhaustive()
    }
}

/// Why a probe could not be filled with a profile's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeFillError {
    /// A value cannot go in a header (the field is named, never the value).
    #[error("the value of `{0}` cannot be sent in a header")]
    HeaderValue(String),
    /// The filled URL does not parse (cannot happen with URL-encoded values).
    #[error("the probe's URL does not parse once filled")]
    Url,
}

impl ConnectorProbe {
    /// Checks a probe of a connector with `fields`. The error names the part at fault relative to
    /// the probe (`probe.url`, `probe.headers.Authorization`…).
    pub fn new(
        method: Option<&str>,
        url: &str,
        headers: &BTreeMap<String, String>,
        fields: &[EnvField],
    ) -> Result<Self, ConfigError> {
        let method = match method.map(str::trim) {
            None => ProbeMethod::Get,
            Some(m) if m.eq_ignore_ascii_case("GET") => ProbeMethod::Get,
            Some(m) if m.eq_ignore_ascii_case("HEAD") => ProbeMethod::Head,
            Some(m) if m.eq_ignore_ascii_case("POST") => ProbeMethod::Post,
            Some(_) => return Err(ConfigError::new("probe.method", "expected GET, HEAD or POST")),
        };
        let url = check_probe_url(url, fields).map_err(|m| ConfigError::new("probe.url", m))?;
        if headers.len() > MAX_PROBE_HEADERS {
            return Err(ConfigError::new("probe.headers", format!("at most {MAX_PROBE_HEADERS} headers")));
        }
        let mut checked = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            let at = format!("probe.headers.{name}");
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::new(&at, "not a valid header name"))?;
            if matches!(
                header.as_str(),
                "host" | "content-length" | "transfer-encoding" | "connection" | "te" | "upgrade"
            ) {
                return Err(ConfigError::new(&at, "this header is set by the HTTP client; leave it out"));
            }
            if value.len() > MAX_PROBE_TEXT_LEN {
                return Err(ConfigError::new(&at, format!("at most {MAX_PROBE_TEXT_LEN} bytes")));
            }
            let template = Template::parse(value, fields).map_err(|m| ConfigError::new(&at, m))?;
            if HeaderValue::from_str(&template.fill(|_| String::new())).is_err() {
                return Err(ConfigError::new(&at, "not a valid header value (visible ASCII characters)"));
            }
            checked.push((header, template));
        }
        Ok(Self { method, url, headers: checked })
    }

    /// The method.
    pub fn method(&self) -> ProbeMethod {
        self.method
    }

    /// The request filled with `values` (by field name; an unset field fills in as empty), values
    /// URL-encoded in the query. Never log what it returns.
    pub fn fill(&self, values: &BTreeMap<String, SecretString>) -> Result<FilledProbe, ProbeFillError> {
        let value = |name: &str| values.get(name).map(|v| v.expose_secret().to_owned()).unwrap_or_default();
        let url = self.url.fill(|name| url::form_urlencoded::byte_serialize(value(name).as_bytes()).collect());
        let url = Url::parse(&url).map_err(|_| ProbeFillError::Url)?;
        let mut headers = HeaderMap::with_capacity(self.headers.len());
        for (name, template) in &self.headers {
            let mut refused = None;
            let text = template.fill(|field| {
                let v = value(field);
                if HeaderValue::from_bytes(v.as_bytes()).is_err() {
                    refused.get_or_insert_with(|| field.to_owned());
                }
                v
            });
            if let Some(field) = refused {
                return Err(ProbeFillError::HeaderValue(field));
            }
            let mut header = HeaderValue::from_bytes(text.as_bytes())
                .map_err(|_| ProbeFillError::HeaderValue(name.as_str().to_owned()))?;
            header.set_sensitive(true);
            headers.insert(name.clone(), header);
        }
        Ok(FilledProbe { method: self.method.as_method(), url, headers })
    }
}

/// Checks a probe URL: https (http only on a loopback host), no user name, password or fragment,
/// placeholders only in the query.
fn check_probe_url(url: &str, fields: &[EnvField]) -> Result<Template, String> {
    let url = url.trim();
    if url.is_empty() || url.len() > MAX_PROBE_TEXT_LEN {
        return Err(format!("expected an http:// or https:// URL of at most {MAX_PROBE_TEXT_LEN} bytes"));
    }
    let template = Template::parse(url, fields)?;
    let query_at = url.find('?').unwrap_or(url.len());
    if Template::parse(&url[..query_at], fields)?.has_fields() {
        return Err("placeholders may appear only in the URL's query (after `?`) and in header values".into());
    }
    let parsed = Url::parse(&template.fill(|_| "x".to_owned())).map_err(|e| format!("not a valid URL: {e}"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("no user name or password in the URL; put credentials in a header".into());
    }
    // It carries a member's secrets: https, as every endpoint Tessera calls (http on loopback).
    super::endpoint_url(parsed.as_str())?;
    if parsed.fragment().is_some() {
        return Err("no fragment (`#…`) in the URL".into());
    }
    Ok(template)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConnector {
    key: String,
    label: Option<String>,
    #[serde(default)]
    fields: Vec<RawField>,
    probe: Option<RawProbe>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    url: String,
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    name: String,
    label: Option<String>,
    secret: Option<bool>,
    optional: Option<bool>,
    pattern: Option<String>,
}

fn label(value: Option<String>, default: &str, key: &str) -> Result<String, ConfigError> {
    let Some(value) = value else { return Ok(default.to_owned()) };
    let value = value.trim();
    if value.is_empty() || value.chars().count() > 64 || value.chars().any(char::is_control) {
        return Err(ConfigError::new(key, "expected 1 to 64 characters"));
    }
    Ok(value.to_owned())
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
}

fn valid_field_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 64
        && bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

pub(super) fn parse_connectors(raw: Vec<RawConnector>) -> Result<Vec<ConnectorConfig>, ConfigError> {
    let mut connectors: Vec<ConnectorConfig> = Vec::with_capacity(raw.len());
    for (i, raw) in raw.into_iter().enumerate() {
        let at = |field: &str| format!("connectors[{i}].{field}");
        let key = raw.key.trim().to_owned();
        if !valid_key(&key) {
            return Err(ConfigError::new(at("key"), "expected 1 to 64 characters of a-z, 0-9, `-`, `_` and `.`"));
        }
        if connectors.iter().any(|c| c.key == key) {
            return Err(ConfigError::new(at("key"), format!("{key:?} is declared twice")));
        }
        let connector_label = label(raw.label, &key, &at("label"))?;
        if raw.fields.len() > MAX_FIELDS {
            return Err(ConfigError::new(at("fields"), format!("at most {MAX_FIELDS} fields")));
        }
        let mut fields: Vec<EnvField> = Vec::with_capacity(raw.fields.len());
        for (j, field) in raw.fields.into_iter().enumerate() {
            let at = |part: &str| format!("connectors[{i}].fields[{j}].{part}");
            let name = field.name.trim().to_owned();
            if !valid_field_name(&name) {
                return Err(ConfigError::new(
                    at("name"),
                    "expected an environment variable name: a letter or `_`, then letters, digits and `_` (at most 64)",
                ));
            }
            // The connect form posts its CSRF token as `csrf` beside the fields (`http::csrf::FIELD`).
            if name.eq_ignore_ascii_case("csrf") {
                return Err(ConfigError::new(
                    at("name"),
                    "`csrf` is the connect form's own field: choose another name",
                ));
            }
            if fields.iter().any(|f| f.name == name) {
                return Err(ConfigError::new(at("name"), format!("{name:?} is declared twice")));
            }
            let pattern = field
                .pattern
                .map(|p| FieldPattern::new(&p))
                .transpose()
                .map_err(|m| ConfigError::new(at("pattern"), m))?;
            fields.push(EnvField {
                label: label(field.label, &name, &at("label"))?,
                name,
                secret: field.secret.unwrap_or(true),
                optional: field.optional.unwrap_or(false),
                pattern,
            });
        }
        let probe = match raw.probe {
            None => None,
            Some(_) if fields.is_empty() => {
                return Err(ConfigError::new(at("probe"), "a probe tests the values of `fields`; declare them"));
            }
            Some(probe) => Some(
                ConnectorProbe::new(probe.method.as_deref(), &probe.url, &probe.headers, &fields)
                    .map_err(|e| ConfigError::new(at(&e.key), e.message))?,
            ),
        };
        connectors.push(ConnectorConfig { key, label: connector_label, fields, probe });
    }
    Ok(connectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<Vec<ConnectorConfig>, ConfigError> {
        use figment::providers::Format;
        #[derive(Deserialize)]
        struct Doc {
            connectors: Vec<RawConnector>,
        }
        let doc: Doc = figment::Figment::from(figment::providers::Toml::string(toml_text)).extract().unwrap();
        parse_connectors(doc.connectors)
    }

    #[test]
    fn fields_are_checked_and_patterns_match_whole_values() {
        let connectors = parse(
            r#"
            [[connectors]]
            key = "openai"
            label = "OpenAI"
            fields = [
              { name = "OPENAI_API_KEY", label = "API key", pattern = "sk-[A-Za-z0-9_-]{20,}" },
              { name = "OPENAI_ORG", secret = false, optional = true },
            ]
            [[connectors]]
            key = "github-issues"
            "#,
        )
        .unwrap();
        assert_eq!(connectors.len(), 2);
        let key = &connectors[0].fields[0];
        assert!(key.secret, "fields are secret unless said otherwise");
        assert!(!key.optional);
        let pattern = key.pattern.as_ref().unwrap();
        assert!(pattern.matches("sk-abcdefghijklmnopqrstuv"));
        assert!(!pattern.matches("xsk-abcdefghijklmnopqrstuv"), "anchored at the start");
        assert!(!pattern.matches("sk-abcdefghijklmnopqrstuv "), "anchored at the end");
        assert_eq!(connectors[0].fields[1].label, "OPENAI_ORG");
        assert!(connectors[1].fields.is_empty());

        for (bad, key) in [
            ("[[connectors]]\nkey = \"Open AI\"", "connectors[0].key"),
            ("[[connectors]]\nkey = \"a\"\n[[connectors]]\nkey = \"a\"", "connectors[1].key"),
            ("[[connectors]]\nkey = \"a\"\nfields = [{ name = \"1X\" }]", "connectors[0].fields[0].name"),
            ("[[connectors]]\nkey = \"a\"\nfields = [{ name = \"CSRF\" }]", "connectors[0].fields[0].name"),
            (
                "[[connectors]]\nkey = \"a\"\nfields = [{ name = \"X\" }, { name = \"X\" }]",
                "connectors[0].fields[1].name",
            ),
            (
                "[[connectors]]\nkey = \"a\"\nfields = [{ name = \"X\", pattern = \"(\" }]",
                "connectors[0].fields[0].pattern",
            ),
            ("[[connectors]]\nkey = \"a\"\nlabel = \"\"", "connectors[0].label"),
        ] {
            assert_eq!(parse(bad).unwrap_err().key, key, "{bad}");
        }
    }

    #[test]
    fn probes_name_declared_fields_and_fill_without_showing_values() {
        let connectors = parse(
            r#"
            [[connectors]]
            key = "openai"
            fields = [{ name = "OPENAI_API_KEY" }, { name = "ORG", optional = true }]
            probe = { url = "https://api.example.com/v1/models?org={ORG}", headers = { Authorization = "Bearer {OPENAI_API_KEY}" } }
            "#,
        )
        .unwrap();
        let probe = connectors[0].probe.as_ref().unwrap();
        assert_eq!(probe.method(), ProbeMethod::Get, "GET unless said otherwise");
        let values: BTreeMap<String, SecretString> = [
            ("OPENAI_API_KEY".to_owned(), SecretString::from("sk-secret")),
            ("ORG".to_owned(), SecretString::from("a&b c")),
        ]
        .into_iter()
        .collect();
        let filled = probe.fill(&values).unwrap();
        assert_eq!(filled.url.as_str(), "https://api.example.com/v1/models?org=a%26b+c", "URL-encoded in the query");
        assert_eq!(filled.headers["authorization"], "Bearer sk-secret");
        assert!(filled.headers["authorization"].is_sensitive());
        assert!(!format!("{filled:?}").contains("secret"));

        let with =
            |fields: &str, probe: &str| format!("[[connectors]]\nkey = \"a\"\nfields = [{fields}]\nprobe = {probe}");
        let field = "{ name = \"KEY\" }";
        for (bad, key) in [
            (
                with(field, r#"{ url = "https://x.test/", headers = { Authorization = "Bearer {TYPO}" } }"#),
                "connectors[0].probe.headers.Authorization",
            ),
            (with(field, r#"{ url = "https://x.test/?k={NOPE}" }"#), "connectors[0].probe.url"),
            (with(field, r#"{ url = "https://x.test/{KEY}" }"#), "connectors[0].probe.url"),
            (with(field, r#"{ url = "ftp://x.test/?k={KEY}" }"#), "connectors[0].probe.url"),
            (with(field, r#"{ url = "http://api.vendor.test/?k={KEY}" }"#), "connectors[0].probe.url"),
            (with(field, r#"{ url = "https://x.test/", headers = { X = "{KEY" } }"#), "connectors[0].probe.headers.X"),
            (with(field, r#"{ url = "https://x.test/", method = "PUT" }"#), "connectors[0].probe.method"),
            ("[[connectors]]\nkey = \"a\"\nprobe = { url = \"https://x.test/\" }".to_owned(), "connectors[0].probe"),
        ] {
            let error = parse(&bad).unwrap_err();
            assert_eq!(error.key, key, "{bad}");
        }
        let unknown = parse(&with(field, r#"{ url = "https://x.test/", headers = { A = "{TYPO}" } }"#)).unwrap_err();
        assert!(unknown.message.contains("TYPO") && unknown.message.contains("KEY"), "{}", unknown.message);
    }
}

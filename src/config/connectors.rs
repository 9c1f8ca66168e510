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
//! A connector without `fields` is only a label for OAuth profiles. (A `probe` table, to test a
//! connector's values against its service, may be added to a connector later.)

use std::fmt;

use regex_automata::meta::Regex;
use serde::Deserialize;

use super::ConfigError;

/// The most fields a connector declares.
pub const MAX_FIELDS: usize = 32;
/// The longest field pattern, in bytes.
const MAX_PATTERN_LEN: usize = 512;

/// A declared connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorConfig {
    /// Its key, lower case: the `connector_key` of its profiles.
    pub key: String,
    /// What people call it, on the connect form.
    pub label: String,
    /// The fields of an `env` connector, in the form's order; empty for others.
    pub fields: Vec<EnvField>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConnector {
    key: String,
    label: Option<String>,
    #[serde(default)]
    fields: Vec<RawField>,
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
        connectors.push(ConnectorConfig { key, label: connector_label, fields });
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
}

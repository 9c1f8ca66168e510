//! Small validated text values: an upstream subject and a person's display name.

use std::fmt;

use serde::Serialize;

/// Why a text value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// Empty or blank.
    #[error("the value is empty")]
    Empty,
    /// Longer than the limit, which is carried.
    #[error("the value is longer than {0} characters")]
    TooLong(usize),
    /// Contains control characters (including NUL; in a display name, also the bidirectional
    /// embeddings, overrides and isolates).
    #[error("the value contains control characters")]
    ControlCharacters,
}

/// Whether `c` has no place in text shown to people: a control character, or a bidirectional
/// embedding, override or isolate (U+202A–U+202E, U+2066–U+2069), which would let a name reorder
/// what a page shows around it (`\u{202E}` turns "evil" into "live").
pub fn is_hidden_control(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Whether `c` cannot be seen where it stands: a soft hyphen, a combining grapheme joiner, a
/// zero-width character, a direction mark (the Arabic letter mark among them), embedding,
/// override or isolate, a line or paragraph separator, an invisible operator, the Mongolian vowel
/// separator, a variation selector, a byte order mark, a tag character. Pasted into a secret,
/// such a character makes it wrong without showing it.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{E0000}'..='\u{E007F}'
    )
}

/// The longest provider label a bootstrap or an import takes: a DNS name's longest, since an
/// issuer entry without a `name` is named after its host (a `name` set is 1 to 64 characters),
/// and an export writes what identities record.
pub const PROVIDER_LABEL_MAX: usize = 253;

/// The provider label an identity records, as given to a bootstrap or an import: trimmed, empty
/// when absent or blank (the issuer entry's name is then recorded); at most
/// [`PROVIDER_LABEL_MAX`] characters, without control characters.
pub fn provider_label(value: Option<&str>) -> Result<String, TextError> {
    match value.map(str::trim) {
        None | Some("") => Ok(String::new()),
        Some(p) if p.chars().count() > PROVIDER_LABEL_MAX => Err(TextError::TooLong(PROVIDER_LABEL_MAX)),
        Some(p) if p.chars().any(is_hidden_control) => Err(TextError::ControlCharacters),
        Some(p) => Ok(p.to_owned()),
    }
}

/// The subject (`sub`) of an identity at its issuer: opaque, compared byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Subject(String);

impl Subject {
    /// The longest subject accepted, in bytes (OpenID Connect's limit).
    pub const MAX_LEN: usize = 255;

    /// Validates a subject. It is not trimmed: subjects are opaque strings.
    pub fn parse(input: &str) -> Result<Self, TextError> {
        if input.trim().is_empty() {
            return Err(TextError::Empty);
        }
        if input.len() > Self::MAX_LEN {
            return Err(TextError::TooLong(Self::MAX_LEN));
        }
        if input.chars().any(char::is_control) {
            return Err(TextError::ControlCharacters);
        }
        Ok(Self(input.to_owned()))
    }

    /// The subject.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A person's display name, trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct DisplayName(String);

impl DisplayName {
    /// The longest name accepted, in characters.
    pub const MAX_CHARS: usize = 200;

    /// Validates a name. A blank name is `Ok(None)`: the name is optional.
    pub fn parse_optional(input: Option<&str>) -> Result<Option<Self>, TextError> {
        let Some(input) = input.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        if input.chars().count() > Self::MAX_CHARS {
            return Err(TextError::TooLong(Self::MAX_CHARS));
        }
        if input.chars().any(is_hidden_control) {
            return Err(TextError::ControlCharacters);
        }
        Ok(Some(Self(input.to_owned())))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first word of the name, used for "<first name>'s Team".
    pub fn first_name(&self) -> &str {
        self.0.split_whitespace().next().unwrap_or(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_opaque_but_bounded() {
        assert_eq!(Subject::parse("auth0|abc").unwrap().as_str(), "auth0|abc");
        assert_eq!(Subject::parse(" "), Err(TextError::Empty));
        assert_eq!(Subject::parse("a\0b"), Err(TextError::ControlCharacters));
        assert_eq!(Subject::parse(&"x".repeat(256)), Err(TextError::TooLong(255)));
    }

    #[test]
    fn names_are_optional_trimmed_and_give_a_first_name() {
        assert_eq!(DisplayName::parse_optional(None), Ok(None));
        assert_eq!(DisplayName::parse_optional(Some("   ")), Ok(None));
        let name = DisplayName::parse_optional(Some("  Ada  Lovelace ")).unwrap().unwrap();
        assert_eq!(name.as_str(), "Ada  Lovelace");
        assert_eq!(name.first_name(), "Ada");
        assert_eq!(DisplayName::parse_optional(Some("bad\u{7}name")), Err(TextError::ControlCharacters));
        for hidden in ['\u{202E}', '\u{202A}', '\u{2066}', '\u{2069}'] {
            let name = format!("{hidden}evil");
            assert_eq!(DisplayName::parse_optional(Some(&name)), Err(TextError::ControlCharacters), "{name:?}");
        }
        // Right-to-left text itself is a name like any other.
        assert!(DisplayName::parse_optional(Some("\u{5D3}\u{5E0}\u{5D4}")).unwrap().is_some());
    }
}

//! The `Slug` type: the URL-safe, unique handle of a team.

use std::fmt;

use serde::Serialize;

/// A team slug: 1 to 63 characters of `a-z`, `0-9` and single inner hyphens, never shaped like a UUID
/// (so that a path segment holding "team id or slug" is never ambiguous).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Slug(String);

/// Why a value is not a valid slug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a slug is 1 to 63 characters of a-z, 0-9 and single inner hyphens, and is not a UUID")]
pub struct SlugError;

impl Slug {
    /// The longest slug accepted.
    pub const MAX_LEN: usize = 63;
    /// The longest base that [`Slug::derive`] produces, leaving room for a suffix.
    const BASE_LEN: usize = 40;

    /// Validates an explicit slug.
    pub fn parse(input: &str) -> Result<Self, SlugError> {
        let valid = !input.is_empty()
            && Self::could_begin(input)
            && !input.starts_with('-')
            && !input.ends_with('-')
            && !input.contains("--")
            && uuid::Uuid::parse_str(input).is_err();
        if valid { Ok(Self(input.to_owned())) } else { Err(SlugError) }
    }

    /// Whether `prefix` is made of what slugs are made of (`a-z`, `0-9`, `-`) and no longer than
    /// one: what a search by slug prefix can match at all.
    pub fn could_begin(prefix: &str) -> bool {
        prefix.len() <= Self::MAX_LEN
            && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    }

    /// Derives a slug from a display text: lower-cased ASCII letters and digits, apostrophes
    /// dropped, every other run of characters turned into one hyphen. Falls back to `fallback`
    /// when nothing is left.
    pub fn derive(text: &str, fallback: &str) -> Self {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            if c.is_ascii_alphanumeric() {
                out.push(c.to_ascii_lowercase());
            } else if c == '\'' || c == '\u{2019}' || !c.is_ascii() && c.is_alphanumeric() {
                // Apostrophes and letters we cannot transliterate are dropped, not hyphenated.
            } else if !out.is_empty() && !out.ends_with('-') {
                out.push('-');
            }
            if out.len() >= Self::BASE_LEN {
                break;
            }
        }
        let trimmed = out.trim_matches('-');
        Self::parse(trimmed).unwrap_or_else(|_| Self(fallback.to_owned()))
    }

    /// This slug with `-suffix` appended, cut so that the result stays within the limit.
    pub fn with_suffix(&self, suffix: &str) -> Self {
        let keep = Self::MAX_LEN.saturating_sub(suffix.len() + 1).min(self.0.len());
        let base = self.0[..keep].trim_end_matches('-');
        Self(format!("{base}-{suffix}"))
    }

    /// The slug.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_derived_from_team_names() {
        assert_eq!(Slug::derive("Ada's Team", "team").as_str(), "adas-team");
        assert_eq!(Slug::derive("Default Team", "team").as_str(), "default-team");
        assert_eq!(Slug::derive("Zoë’s Team", "team").as_str(), "zos-team");
        assert_eq!(Slug::derive("  --  ", "team").as_str(), "team");
        assert_eq!(Slug::derive("李's Team", "team").as_str(), "s-team");
        assert!(Slug::derive(&"x".repeat(500), "team").as_str().len() <= 40);
    }

    #[test]
    fn suffixes_keep_slugs_valid() {
        let long = Slug::parse(&"a".repeat(63)).unwrap();
        let suffixed = long.with_suffix("k3x9q2");
        assert!(suffixed.as_str().len() <= Slug::MAX_LEN);
        assert!(Slug::parse(suffixed.as_str()).is_ok());
        assert_eq!(Slug::parse("adas-team").unwrap().with_suffix("2").as_str(), "adas-team-2");
    }

    #[test]
    fn explicit_slugs_are_validated() {
        for bad in ["", "-a", "a-", "a--b", "A", "a b", "a_b", &"a".repeat(64), "0190f5a4-4bde-7c4e-9a6f-6f1e2c3d4b5a"]
        {
            assert!(Slug::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Slug::parse("acme-2").is_ok());
    }
}

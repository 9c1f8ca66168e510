//! The `Email` type: a syntactically valid address with its domain lower-cased.
//!
//! The check is deliberately practical rather than RFC 5321-complete: one `@`, a local part of at
//! most 64 characters made of letters, digits and ``!#$%&'*+/=?^_`{|}~.-`` (no leading, trailing
//! or doubled dot), and a domain of at least two dot-separated labels of letters, digits and `-`.
//! Non-ASCII letters are accepted in both parts. The local part keeps its case.

use std::fmt;

use serde::Serialize;

/// A validated email address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Email(String);

/// Why a value is not a valid email address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    /// The value is empty or blank.
    #[error("the email is empty")]
    Empty,
    /// The value is longer than [`Email::MAX_LEN`].
    #[error("the email is longer than {} bytes", Email::MAX_LEN)]
    TooLong,
    /// The value is not of the form `local@domain.tld`.
    #[error("the email is not a valid address of the form name@example.com")]
    Malformed,
}

impl Email {
    /// The longest address accepted, in bytes (RFC 5321's limit).
    pub const MAX_LEN: usize = 254;

    /// Parses an email address, trimming surrounding whitespace and lower-casing the domain.
    pub fn parse(input: &str) -> Result<Self, EmailError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(EmailError::Empty);
        }
        if input.len() > Self::MAX_LEN {
            return Err(EmailError::TooLong);
        }
        let (local, domain) = input.split_once('@').ok_or(EmailError::Malformed)?;
        // Lower-cased before it is checked, as a domain is (`DomainName::parse`): what is stored
        // must parse again (`İ` lower-cases to `i` and a combining dot, which no label holds).
        let domain = domain.to_lowercase();
        if !valid_local(local) || !valid_domain(&domain) {
            return Err(EmailError::Malformed);
        }
        let email = format!("{local}@{domain}");
        if email.len() > Self::MAX_LEN {
            return Err(EmailError::TooLong);
        }
        Ok(Self(email))
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key two addresses are compared by (automatic linking, lookups by email): the address
    /// with ASCII letters folded to lower case and every other character kept as it is. The same
    /// rule on every backend and every database locale: Unicode case folding would make distinct
    /// mailboxes equal (`İsaac@…` and `isaac@…`, or `Kate@…` spelt with the Kelvin sign and
    /// `kate@…`). The domain was lower-cased by [`Email::parse`] already. The database keeps the
    /// same key in a generated column (`users.email_key`), computed by the same rule; the
    /// integration suite checks that the two agree on every backend and locale.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }

    /// The lower-cased domain part.
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn valid_local(local: &str) -> bool {
    const SPECIALS: &str = "!#$%&'*+/=?^_`{|}~.-";
    !local.is_empty()
        && local.chars().count() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || SPECIALS.contains(c) || (!c.is_ascii() && c.is_alphanumeric()))
}

/// Whether `domain` is a plausible mail domain: two or more labels of letters, digits and `-`,
/// the last not all digits (no top-level domain is; `127.0.0.1` is an address, not a domain).
fn valid_domain(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.last().is_some_and(|tld| !tld.chars().all(|c| c.is_ascii_digit()))
        && domain.len() <= 253
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.chars().count() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

/// A lower-cased mail domain, such as `example.com`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct DomainName(String);

/// Why a value is not a valid domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a domain is two or more dot-separated labels of letters, digits and hyphens, such as example.com")]
pub struct DomainNameError;

impl DomainName {
    /// Parses a domain, trimming and lower-casing it.
    pub fn parse(input: &str) -> Result<Self, DomainNameError> {
        let domain = input.trim().trim_end_matches('.').to_lowercase();
        if valid_domain(&domain) { Ok(Self(domain)) } else { Err(DomainNameError) }
    }

    /// The domain.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Email {
    /// The domain part as a [`DomainName`].
    pub fn domain_name(&self) -> DomainName {
        DomainName(self.domain().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_lower_cased_and_validated() {
        assert_eq!(DomainName::parse(" Example.COM. ").unwrap().as_str(), "example.com");
        assert!(DomainName::parse("localhost").is_err());
        assert!(DomainName::parse("exa mple.com").is_err());
        assert!(DomainName::parse("@example.com").is_err());
        assert!(DomainName::parse("127.0.0.1").is_err(), "an address, not a domain");
        assert!(Email::parse("ada@10.0.0.1").is_err());
        assert!(DomainName::parse("1password.com").is_ok(), "digits are fine outside the top level");
        let email = Email::parse("a@Sub.Example.com").unwrap();
        assert_eq!(email.domain_name().as_str(), "sub.example.com");
    }

    #[test]
    fn valid_addresses_are_accepted_and_the_domain_is_lower_cased() {
        assert_eq!(Email::parse("Alice@Example.COM").unwrap().as_str(), "Alice@example.com");
        assert_eq!(Email::parse(" bob+tag@sub.example.org ").unwrap().as_str(), "bob+tag@sub.example.org");
        assert_eq!(Email::parse("zoë@exämple.de").unwrap().domain(), "exämple.de");
        // What is stored parses again: a domain whose lower case no label may hold (`İ` becomes
        // `i` and a combining dot) is refused, as `DomainName::parse` refuses it.
        assert_eq!(Email::parse("ali@\u{130}zmir.example"), Err(EmailError::Malformed));
        assert!(DomainName::parse("\u{130}zmir.example").is_err());
    }

    #[test]
    fn the_comparison_key_folds_ascii_case_only() {
        let key = |s: &str| Email::parse(s).unwrap().key();
        assert_eq!(key("Alice.X@Corp.Example"), "alice.x@corp.example");
        assert_eq!(key("alice.x@corp.example"), key("ALICE.X@CORP.EXAMPLE"));
        // Capital dotted I and the Kelvin sign are other letters than i and k.
        assert_ne!(key("\u{130}saac.x@corp.example"), key("isaac.x@corp.example"));
        assert_ne!(key("\u{212A}ate.x@corp.example"), key("kate.x@corp.example"));
        assert_eq!(key("\u{130}saac.x@corp.example"), "\u{130}saac.x@corp.example");
    }

    #[test]
    fn malformed_addresses_are_rejected() {
        for bad in [
            "plainaddress",
            "@example.com",
            "alice@",
            "alice@example",
            "alice@@example.com",
            "alice@exa mple.com",
            "al ice@example.com",
            ".alice@example.com",
            "alice.@example.com",
            "al..ice@example.com",
            "alice@-example.com",
            "alice@example..com",
            "alice@example.com\0",
            "alice\n@example.com",
            "a@b@example.com",
            "<script>@example.com",
            "' OR 1=1 --@example.com",
        ] {
            assert_eq!(Email::parse(bad), Err(EmailError::Malformed), "{bad:?}");
        }
        assert_eq!(Email::parse("  "), Err(EmailError::Empty));
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(Email::parse(&long), Err(EmailError::TooLong));
    }
}

//! The `Issuer` type: one normalisation rule for every path that compares issuers.
//!
//! The rule (also stated in README.md):
//! - the value must be an absolute `https` URL, or `http` on a loopback host
//!   (`localhost`, `*.localhost`, `127.0.0.0/8`, `::1`) for development;
//! - scheme and host are lower-cased and a default port (443, 80) is dropped;
//! - trailing slashes of the path are removed, so `https://a.example/` and
//!   `https://a.example` are the same issuer, and so are `…/realms/x/` and `…/realms/x`;
//! - the path is otherwise kept as is (paths are case-sensitive);
//! - user info, a query or a fragment make the value invalid.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;
use url::{Host, Url};

/// A normalised issuer URL. Two issuers are the same exactly when their normalised strings are equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Issuer(String);

/// Why a value is not a valid issuer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssuerError {
    /// The value is empty or blank.
    #[error("the issuer is empty")]
    Empty,
    /// The value is longer than [`Issuer::MAX_LEN`].
    #[error("the issuer is longer than {} bytes", Issuer::MAX_LEN)]
    TooLong,
    /// The value does not parse as an absolute URL.
    #[error("the issuer is not an absolute URL")]
    NotAUrl,
    /// The scheme is neither `https` nor `http`.
    #[error("the issuer must use https")]
    UnsupportedScheme,
    /// `http` on a host that is not a loopback host.
    #[error("the issuer must use https (http is only accepted on loopback hosts)")]
    Insecure,
    /// The URL has no host.
    #[error("the issuer has no host")]
    NoHost,
    /// The URL carries a user name or password.
    #[error("the issuer must not contain credentials")]
    HasCredentials,
    /// The URL has a query string or a fragment.
    #[error("the issuer must not have a query or a fragment")]
    HasQueryOrFragment,
}

impl Issuer {
    /// The longest issuer accepted, in bytes.
    pub const MAX_LEN: usize = 1024;

    /// Parses and normalises an issuer URL.
    pub fn parse(input: &str) -> Result<Self, IssuerError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(IssuerError::Empty);
        }
        if input.len() > Self::MAX_LEN {
            return Err(IssuerError::TooLong);
        }
        let url = Url::parse(input).map_err(|_| IssuerError::NotAUrl)?;
        let host = url.host().ok_or(IssuerError::NoHost)?;
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(&host) => {}
            "http" => return Err(IssuerError::Insecure),
            _ => return Err(IssuerError::UnsupportedScheme),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(IssuerError::HasCredentials);
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(IssuerError::HasQueryOrFragment);
        }
        let mut normalised = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
        if let Some(port) = url.port() {
            normalised.push(':');
            normalised.push_str(&port.to_string());
        }
        normalised.push_str(url.path().trim_end_matches('/'));
        if normalised.len() > Self::MAX_LEN {
            return Err(IssuerError::TooLong);
        }
        Ok(Self(normalised))
    }

    /// The normalised form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host part of the issuer, without port.
    pub fn host(&self) -> &str {
        let rest = self.0.split_once("://").map_or(self.0.as_str(), |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or(rest);
        match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(v6),
            None => authority.split(':').next().unwrap_or(authority),
        }
    }

    /// The URL of the issuer's OpenID Connect discovery document.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.0)
    }
}

impl fmt::Display for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `host` is `domain` or a host under it (on a dot boundary), both in lower case.
pub fn host_within(host: &str, domain: &str) -> bool {
    host.strip_suffix(domain).is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
}

/// Whether `host` is `localhost` (or a host under it) or a loopback address: where browsers and
/// Tessera's rules allow plain `http`.
pub fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(name) => *name == "localhost" || name.ends_with(".localhost"),
        Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Issuer::parse(s).unwrap().as_str().to_owned()
    }

    #[test]
    fn trailing_slash_and_case_do_not_make_a_different_issuer() {
        assert_eq!(norm("https://auth.example.com/"), "https://auth.example.com");
        assert_eq!(norm("https://auth.example.com"), "https://auth.example.com");
        assert_eq!(norm("HTTPS://Auth.Example.COM//"), "https://auth.example.com");
        assert_eq!(norm("  https://auth.example.com/  "), "https://auth.example.com");
        assert_eq!(norm("https://kc.example.com/realms/Main/"), "https://kc.example.com/realms/Main");
    }

    #[test]
    fn default_ports_are_dropped_and_others_kept() {
        assert_eq!(norm("https://auth.example.com:443/"), "https://auth.example.com");
        assert_eq!(norm("https://auth.example.com:8443"), "https://auth.example.com:8443");
        assert_eq!(norm("http://127.0.0.1:4444/"), "http://127.0.0.1:4444");
        assert_eq!(norm("http://[::1]:9000"), "http://[::1]:9000");
    }

    #[test]
    fn http_is_only_accepted_on_loopback_hosts() {
        assert_eq!(norm("http://localhost:8080"), "http://localhost:8080");
        assert_eq!(Issuer::parse("http://auth.example.com"), Err(IssuerError::Insecure));
        assert_eq!(Issuer::parse("http://10.0.0.1"), Err(IssuerError::Insecure));
    }

    #[test]
    fn invalid_issuers_are_rejected_with_a_reason() {
        assert_eq!(Issuer::parse(""), Err(IssuerError::Empty));
        assert_eq!(Issuer::parse("   "), Err(IssuerError::Empty));
        assert_eq!(Issuer::parse("auth.example.com"), Err(IssuerError::NotAUrl));
        assert_eq!(Issuer::parse("ftp://auth.example.com"), Err(IssuerError::UnsupportedScheme));
        assert_eq!(Issuer::parse("https://user:pw@auth.example.com"), Err(IssuerError::HasCredentials));
        assert_eq!(Issuer::parse("https://auth.example.com/?a=b"), Err(IssuerError::HasQueryOrFragment));
        assert_eq!(Issuer::parse("https://auth.example.com/#x"), Err(IssuerError::HasQueryOrFragment));
        let long = format!("https://a.example/{}", "x".repeat(Issuer::MAX_LEN));
        assert_eq!(Issuer::parse(&long), Err(IssuerError::TooLong));
    }

    #[test]
    fn host_is_extracted_without_port() {
        assert_eq!(Issuer::parse("https://a.example:8443/x").unwrap().host(), "a.example");
        assert_eq!(Issuer::parse("http://[::1]:9000").unwrap().host(), "::1");
        assert_eq!(
            Issuer::parse("https://a.example/").unwrap().discovery_url(),
            "https://a.example/.well-known/openid-configuration"
        );
    }
}

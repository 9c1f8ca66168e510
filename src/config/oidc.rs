//! Configuration of Tessera as an OpenID Provider: the `[oidc]` table (signing keys today; clients
//! and token lifetimes join it).

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use crate::domain::SigningAlg;

/// Tessera as an OpenID Provider for its users' apps. The provider runs only when
/// `auth.public_url` and the key ring (`encryption.keys`) are configured too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// How long relying parties may cache the JWKS (`Cache-Control: max-age`), and how long
    /// before a new signing key signs it is published (`oidc.jwks_max_age_seconds`).
    pub jwks_max_age: Duration,
    /// A signing key signs this long, then a new one takes over (`oidc.signing_key_rotation_days`).
    pub signing_key_rotation: Duration,
    /// The algorithm of clients that name none, and of `tessera keys signing rotate` without
    /// `--alg` (`oidc.signing_alg`).
    pub signing_alg: SigningAlg,
}

/// The longest lifetime of a token Tessera signs, until token lifetimes are configurable: a
/// retired key stays published this long after its last signature.
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            jwks_max_age: Duration::from_secs(600),
            signing_key_rotation: Duration::from_secs(30 * 86_400),
            signing_alg: SigningAlg::default(),
        }
    }
}

impl OidcConfig {
    /// The longest lifetime of the tokens signed with Tessera's keys: how long a retired key
    /// stays in the JWKS.
    pub fn max_token_lifetime(&self) -> Duration {
        DEFAULT_MAX_TOKEN_LIFETIME
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOidc {
    jwks_max_age_seconds: Option<u64>,
    signing_key_rotation_days: Option<u64>,
    signing_alg: Option<String>,
}

pub(super) fn parse_oidc(raw: RawOidc) -> Result<OidcConfig, ConfigError> {
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
    Ok(OidcConfig { jwks_max_age, signing_key_rotation, signing_alg })
}

#[cfg(test)]
mod tests {
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

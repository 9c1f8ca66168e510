//! The `[branding]` table: how Tessera's pages name and present the product — its name, a logo,
//! the primary colour of buttons and links, and where people get help.
//!
//! The colour must keep white text on it, and itself as link text on the pages' light grey,
//! readable (a contrast of at least 4.5:1, WCAG 2.2 AA), so that a brand colour cannot make the
//! buttons or the header's links unreadable; start-up refuses one that does not.

use serde::Deserialize;
use url::Url;

use super::ConfigError;

/// How the pages present the product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrandingConfig {
    /// The product's name, in page titles and the header (`branding.product_name`).
    pub product_name: String,
    /// An image shown beside the name (`branding.logo_url`): an `https` URL, or a path on
    /// Tessera itself. Its origin is allowed by the pages' `Content-Security-Policy`.
    pub logo_url: Option<String>,
    /// The colour of buttons, links and focus rings, `#rrggbb` (`branding.primary_color`).
    pub primary_color: String,
    /// Where people get help (`branding.support_url`): an `https` or `mailto:` URL, shown in
    /// every page's footer and on error pages.
    pub support_url: Option<String>,
}

/// The default primary colour: a blue with a contrast of 6.7:1 against white.
pub const DEFAULT_PRIMARY_COLOR: &str = "#1d4ed8";

impl Default for BrandingConfig {
    fn default() -> Self {
        Self {
            product_name: "Tessera".into(),
            logo_url: None,
            primary_color: DEFAULT_PRIMARY_COLOR.into(),
            support_url: None,
        }
    }
}

impl BrandingConfig {
    /// The origin of an absolute logo URL, for the pages' `img-src`; `None` for a local path.
    pub fn logo_origin(&self) -> Option<String> {
        image_origin(self.logo_url.as_deref()?)
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBranding {
    product_name: Option<String>,
    logo_url: Option<String>,
    primary_color: Option<String>,
    support_url: Option<String>,
}

/// An image's URL fit for the pages: an https URL, or a path on this server without quotes,
/// backslashes or spaces.
pub(super) fn image_url(url: &str) -> Option<String> {
    let local = url.starts_with('/') && !url.starts_with("//") && !url.contains(['\\', '"', '\'', ' ']);
    let remote = Url::parse(url).is_ok_and(|parsed| parsed.scheme() == "https" && parsed.host().is_some());
    (local || remote).then(|| url.to_owned())
}

/// The origin of an absolute image URL, for the pages' `img-src`; `None` for a local path.
pub fn image_origin(url: &str) -> Option<String> {
    Url::parse(url).ok().map(|parsed| parsed.origin().ascii_serialization())
}

pub(super) fn parse_branding(raw: RawBranding) -> Result<BrandingConfig, ConfigError> {
    let mut branding = BrandingConfig::default();
    if let Some(name) = raw.product_name {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(ConfigError::new("branding.product_name", "expected 1 to 64 characters"));
        }
        branding.product_name = name.to_owned();
    }
    if let Some(logo) = raw.logo_url.map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()) {
        let Some(logo) = image_url(&logo) else {
            return Err(ConfigError::new(
                "branding.logo_url",
                "expected an https URL (https://cdn.example.com/logo.svg) or a path on this server",
            ));
        };
        branding.logo_url = Some(logo);
    }
    if let Some(color) = raw.primary_color {
        let color = color.trim().to_ascii_lowercase();
        let Some(rgb) = parse_hex_color(&color) else {
            return Err(ConfigError::new("branding.primary_color", "expected a colour of the form #1d4ed8"));
        };
        // The colour is both a background (white text on buttons) and a text colour (links on
        // white, and on the header's and notices' light grey, the lesser of the two contrasts).
        let on_white = contrast(rgb, WHITE);
        let on_surface = contrast(rgb, SURFACE);
        if on_surface < 4.5 {
            return Err(ConfigError::new(
                "branding.primary_color",
                format!(
                    "white text on {color} has a contrast of {on_white:.2}:1, and {color} links on the pages' light \
                     grey (#f6f8fa) {on_surface:.2}:1; pages need at least 4.5:1 (WCAG AA): choose a darker colour"
                ),
            ));
        }
        branding.primary_color = color;
    }
    if let Some(support) = raw.support_url.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()) {
        let ok = Url::parse(&support).is_ok_and(|url| match url.scheme() {
            "https" => url.host().is_some(),
            "mailto" => url.path().contains('@'),
            _ => false,
        });
        if !ok {
            return Err(ConfigError::new(
                "branding.support_url",
                "expected an https URL or a mailto: address (mailto:help@example.com)",
            ));
        }
        branding.support_url = Some(support);
    }
    Ok(branding)
}

/// `#rrggbb` as three bytes.
fn parse_hex_color(value: &str) -> Option<[u8; 3]> {
    let hex = value.strip_prefix('#')?;
    if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
    Some([byte(0)?, byte(2)?, byte(4)?])
}

const WHITE: [u8; 3] = [0xff, 0xff, 0xff];
/// The pages' `--surface` (`assets/tessera.css`): the header's and notices' background.
const SURFACE: [u8; 3] = [0xf6, 0xf8, 0xfa];

/// The WCAG contrast ratio of two colours.
fn contrast(a: [u8; 3], b: [u8; 3]) -> f64 {
    let luminance = |rgb: [u8; 3]| {
        let channel = |c: u8| {
            let c = f64::from(c) / 255.0;
            if c <= 0.039_28 { c / 12.92 } else { ((c + 0.055) / 1.055).powf(2.4) }
        };
        0.2126 * channel(rgb[0]) + 0.7152 * channel(rgb[1]) + 0.0722 * channel(rgb[2])
    };
    let (a, b) = (luminance(a), luminance(b));
    (a.max(b) + 0.05) / (a.min(b) + 0.05)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(color: Option<&str>, logo: Option<&str>, support: Option<&str>) -> RawBranding {
        RawBranding {
            product_name: Some("Acme ID".into()),
            logo_url: logo.map(Into::into),
            primary_color: color.map(Into::into),
            support_url: support.map(Into::into),
        }
    }

    #[test]
    fn colours_must_keep_white_text_readable() {
        assert!((contrast([0x1d, 0x4e, 0xd8], WHITE) - 6.7).abs() < 0.1);
        assert!((contrast(WHITE, [0x1d, 0x4e, 0xd8]) - 6.7).abs() < 0.1);
        // The grey checked is the one the pages use.
        assert!(include_str!("../../assets/tessera.css").contains("--surface: #f6f8fa;"));
        // 4.6:1 under white text, but its links on the header's grey only 4.3:1.
        let header = parse_branding(raw(Some("#d6336c"), None, None)).unwrap_err();
        assert!(header.message.contains("4.34:1"), "{}", header.message);
        assert_eq!(parse_branding(raw(Some("#0B5FFF"), None, None)).unwrap().primary_color, "#0b5fff");
        let pale = parse_branding(raw(Some("#ffcc00"), None, None)).unwrap_err();
        assert_eq!(pale.key, "branding.primary_color");
        assert!(pale.message.contains("contrast"), "{}", pale.message);
        for bad in ["blue", "#12345", "#12345g", "1d4ed8"] {
            assert!(parse_branding(raw(Some(bad), None, None)).is_err(), "{bad}");
        }
    }

    #[test]
    fn logos_and_support_links_are_https_or_local() {
        let ok =
            parse_branding(raw(None, Some("https://cdn.example.com/l.svg"), Some("mailto:help@example.com"))).unwrap();
        assert_eq!(ok.logo_origin().as_deref(), Some("https://cdn.example.com"));
        assert_eq!(ok.product_name, "Acme ID");
        assert_eq!(parse_branding(raw(None, Some("/static/logo.png"), None)).unwrap().logo_origin(), None);
        for logo in ["http://cdn.example.com/l.svg", "//cdn.example.com/l.svg", "javascript:alert(1)", "logo.png"] {
            assert_eq!(parse_branding(raw(None, Some(logo), None)).unwrap_err().key, "branding.logo_url", "{logo}");
        }
        for support in ["javascript:alert(1)", "http://help.example.com", "mailto:nobody"] {
            assert!(parse_branding(raw(None, None, Some(support))).is_err(), "{support}");
        }
    }
}

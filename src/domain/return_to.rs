//! `ReturnTo`: where a browser goes after signing in. A relative path on this host, or an
//! absolute URL on an allow-listed origin; nothing that a browser could read as another host.

use std::fmt;

/// A validated post-sign-in destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnTo(String);

/// Why a `return_to` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("return_to must be a path on this site (such as /dashboard) or a URL on an allowed origin")]
pub struct ReturnToError;

impl ReturnTo {
    /// The longest destination accepted.
    pub const MAX_LEN: usize = 2048;

    /// The home page.
    pub fn root() -> Self {
        Self("/".into())
    }

    /// Validates a destination against the allowed origins (`scheme://host[:port]`).
    ///
    /// No destination holds a backslash, whitespace or control character. A relative one must
    /// start with a single `/`, and its path must hold none of those either once percent-decoded
    /// (browsers treat `//host`, `/\host` and `/\t/host` as other hosts, and an app or proxy in
    /// between may decode) — but a space, encoded (`/docs/My%20File.pdf`), which no browser reads
    /// as another host; its query and fragment are data, where `%20` is fine. An absolute one
    /// must be `http(s)`, without credentials, on an allowed origin exactly.
    pub fn parse(value: &str, allowed_origins: &[String]) -> Result<Self, ReturnToError> {
        let unsafe_text = |text: &str| !super::client::is_uri_text(text) || text.contains('\\');
        if value.is_empty() || value.len() > Self::MAX_LEN || unsafe_text(value) {
            return Err(ReturnToError);
        }
        if value.starts_with('/') {
            let path = value.split(['?', '#']).next().unwrap_or_default();
            let decoded = percent_decode(path).ok_or(ReturnToError)?;
            if unsafe_text(&decoded.replace(' ', "")) || value.starts_with("//") || decoded.starts_with("//") {
                return Err(ReturnToError);
            }
            // Kept as a browser would send it: a `Location` header carries ASCII only.
            return Ok(Self(percent_encode_non_ascii(value)));
        }
        let url = url::Url::parse(value).map_err(|_| ReturnToError)?;
        let origin = url.origin().ascii_serialization();
        let acceptable = matches!(url.scheme(), "http" | "https")
            && url.username().is_empty()
            && url.password().is_none()
            && allowed_origins.contains(&origin);
        if acceptable { Ok(Self(url.to_string())) } else { Err(ReturnToError) }
    }

    /// The destination.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReturnTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `value` with every non-ASCII character percent-encoded as UTF-8 (what a browser does to a
/// path it is given).
fn percent_encode_non_ascii(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for c in value.chars() {
        if c.is_ascii() {
            encoded.push(c);
        } else {
            for byte in c.encode_utf8(&mut [0; 4]).bytes() {
                encoded.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    encoded
}

/// Percent-decodes repeatedly (up to three times, as layered encodings go) into UTF-8.
fn percent_decode(value: &str) -> Option<String> {
    let mut current = value.to_owned();
    for _ in 0..3 {
        // `+` and `&` mean nothing here (form decoding would read a space and a new pair).
        let escaped = current.replace('+', "%2B").replace('&', "%26");
        let next: Vec<u8> = url::form_urlencoded::parse(format!("x={escaped}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned().into_bytes())
            .unwrap_or_default();
        let next = String::from_utf8(next).ok()?;
        if next == current {
            return Some(current);
        }
        current = next;
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        vec!["https://app.example.com".into()]
    }

    #[test]
    fn paths_and_allowed_origins_are_accepted() {
        for ok in [
            "/",
            "/dashboard",
            "/a/b?c=d#e",
            "/search?q=%2Fetc",
            "/teams?q=a%20b",
            "/find?q=%FF#x%20y",
            "/docs/My%20File.pdf",
            "/%20/evil.example",
            "https://app.example.com/welcome",
            "https://app.example.com/s?q=a%20b",
        ] {
            assert!(ReturnTo::parse(ok, &allowed()).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_path_with_other_letters_is_kept_encoded_as_a_header_needs() {
        let to = ReturnTo::parse("/café?q=ü#à", &allowed()).unwrap();
        assert_eq!(to.as_str(), "/caf%C3%A9?q=%C3%BC#%C3%A0");
        assert!(axum::http::HeaderValue::from_str(to.as_str()).is_ok());
        assert_eq!(ReturnTo::parse("/caf%C3%A9", &allowed()).unwrap().as_str(), "/caf%C3%A9");
    }

    #[test]
    fn open_redirects_are_refused() {
        for bad in [
            "//evil.example",
            "///evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/%2F%2Fevil.example",
            "/%2f/evil.example",
            "/%5Cevil.example",
            "/a&%5Cb",
            "/%252F%252Fevil.example",
            "/\t/evil.example",
            "/%09/evil.example",
            "/%C2%A0/evil.example",
            "/%20%5Cevil.example",
            "/%2F%2Fevil.example?q=a%20b",
            "/ok?q=a b",
            "/ok?q=\\",
            " /evil",
            "%2F%2Fevil.example",
            "https://evil.example",
            "https://app.example.com.evil.example/",
            "https://app.example.com@evil.example/",
            "https://user:pw@app.example.com/",
            "http://app.example.com/",
            "https://app.example.com:8443/",
            "javascript:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "https:evil.example",
            "evil.example",
            "",
        ] {
            assert_eq!(ReturnTo::parse(bad, &allowed()), Err(ReturnToError), "{bad:?}");
        }
        assert!(ReturnTo::parse(&format!("/{}", "a".repeat(3000)), &allowed()).is_err());
    }
}

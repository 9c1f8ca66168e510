//! The two cookies Tessera sets, both `HttpOnly`, `SameSite=Lax`, `Path=/`: the session, and the
//! short-lived binding of a sign-in to the browser that started it.
//!
//! With `auth.cookie_secure` (the default) they are `Secure` and carry the `__Host-` prefix, so
//! that no subdomain can set or shadow them. For plain-HTTP development on localhost only, turning
//! it off drops `Secure` and the prefix (browsers refuse `__Host-` cookies without `Secure`).
//! With `auth.session_cookie_domain`, the session cookie is shared with that domain's hosts
//! (`Domain=`, and the `__Secure-` prefix, since `__Host-` forbids a domain), for forward-auth of
//! apps on sibling hosts; the binding cookie stays the host's alone.
//! Cookies are read through [`super::credentials::cookie`], which refuses a repeated name.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;

/// Cookie names and attributes for one deployment.
#[derive(Debug, Clone)]
pub struct Cookies {
    secure: bool,
    session_domain: Option<Arc<str>>,
}

impl Cookies {
    /// Cookies for a deployment served over HTTPS (`secure`) or plain-HTTP development, with the
    /// session cookie shared with `session_domain`'s hosts when there is one.
    pub fn new(secure: bool, session_domain: Option<&str>) -> Self {
        Self { secure, session_domain: session_domain.map(Arc::from) }
    }

    /// Whether the deployment is served over HTTPS (`auth.cookie_secure`).
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// The session cookie's name.
    pub fn session(&self) -> &'static str {
        match (self.secure, self.session_domain.is_some()) {
            (true, false) => "__Host-tessera_session",
            (true, true) => "__Secure-tessera_session",
            (false, _) => "tessera_session",
        }
    }

    /// The sign-in binding cookie's name.
    pub fn login(&self) -> &'static str {
        if self.secure { "__Host-tessera_login" } else { "tessera_login" }
    }

    /// A `Set-Cookie` value setting `name` for `max_age`.
    pub fn set(&self, name: &str, value: &str, max_age: Duration) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let domain = match &self.session_domain {
            Some(domain) if name == self.session() => format!("; Domain={domain}"),
            _ => String::new(),
        };
        let cookie =
            format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}{domain}", max_age.as_secs());
        HeaderValue::from_str(&cookie).expect("cookie values are base64url, and the domain a checked host name")
    }

    /// A `Set-Cookie` value removing `name` (with the attributes that set it).
    pub fn clear(&self, name: &str) -> HeaderValue {
        self.set(name, "", Duration::ZERO)
    }

    /// Whether a browser sends the session cookie to `url`, Tessera being reached at
    /// `own_host`: a host-only cookie goes to Tessera's host alone (on any port: a cookie does
    /// not name one), a shared one to the host of its domain and every host under it; a `Secure`
    /// one (`auth.cookie_secure`) only over `https`, or to a loopback host, which browsers count
    /// as secure.
    pub fn session_reaches(&self, url: &url::Url, own_host: &str) -> bool {
        let Some(host) = url.host() else { return false };
        if self.secure && url.scheme() != "https" && !crate::domain::is_loopback(&host) {
            return false;
        }
        // A URL's host is in lower case already, as are the configured ones.
        let host = url.host_str().unwrap_or_default().trim_end_matches('.');
        host == own_host
            || self.session_domain.as_deref().is_some_and(|domain| crate::domain::host_within(host, domain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_cookies_use_the_host_prefix() {
        let secure = Cookies::new(true, None);
        let value = secure.set(secure.session(), "v", Duration::from_secs(60));
        assert_eq!(
            value.to_str().unwrap(),
            "__Host-tessera_session=v; Path=/; HttpOnly; SameSite=Lax; Max-Age=60; Secure"
        );
        let dev = Cookies::new(false, None);
        assert!(!dev.set(dev.session(), "v", Duration::from_secs(1)).to_str().unwrap().contains("Secure"));
        assert!(dev.clear(dev.login()).to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn a_shared_session_cookie_names_its_domain_and_the_binding_stays_the_hosts() {
        let shared = Cookies::new(true, Some("example.com"));
        assert_eq!(
            shared.clear(shared.session()).to_str().unwrap(),
            "__Secure-tessera_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0; Secure; Domain=example.com"
        );
        let login = shared.set(shared.login(), "v", Duration::from_secs(1));
        assert!(login.to_str().unwrap().starts_with("__Host-tessera_login=v;"));
        assert!(!login.to_str().unwrap().contains("Domain"));
    }

    #[test]
    fn the_session_cookie_reaches_its_own_host_or_its_domains_hosts() {
        let at = |scheme: &str, host: &str| url::Url::parse(&format!("{scheme}://{host}/")).unwrap();
        let host_only = Cookies::new(true, None);
        assert!(host_only.session_reaches(&at("https", "id.example.com"), "id.example.com"));
        assert!(host_only.session_reaches(&at("https", "ID.example.com."), "id.example.com"));
        assert!(!host_only.session_reaches(&at("https", "app.example.com"), "id.example.com"));
        assert!(!host_only.session_reaches(&at("https", "example.com"), "id.example.com"));
        let shared = Cookies::new(true, Some("example.com"));
        for reached in ["id.example.com", "app.example.com", "example.com", "a.b.Example.COM"] {
            assert!(shared.session_reaches(&at("https", reached), "id.example.com"), "{reached}");
        }
        for elsewhere in ["badexample.com", "example.com.evil.net", "app.example.org", "com"] {
            assert!(!shared.session_reaches(&at("https", elsewhere), "id.example.com"), "{elsewhere}");
        }
        // A Secure cookie is not sent over plain HTTP, but to a loopback host; without Secure,
        // it is.
        assert!(!shared.session_reaches(&at("http", "app.example.com"), "id.example.com"));
        assert!(!host_only.session_reaches(&at("http", "id.example.com"), "id.example.com"));
        for loopback in ["localhost", "app.localhost", "127.0.0.1", "[::1]"] {
            assert!(Cookies::new(true, None).session_reaches(&at("http", loopback), loopback), "{loopback}");
        }
        assert!(
            Cookies::new(false, Some("example.com")).session_reaches(&at("http", "app.example.com"), "id.example.com")
        );
    }
}

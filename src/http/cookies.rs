//! The two cookies Tessera sets, both `HttpOnly`, `SameSite=Lax`, `Path=/`: the session, and the
//! short-lived binding of a sign-in to the browser that started it.
//!
//! With `auth.cookie_secure` (the default) they are `Secure` and carry the `__Host-` prefix, so
//! that no subdomain can set or shadow them. For plain-HTTP development on localhost only, turning
//! it off drops `Secure` and the prefix (browsers refuse `__Host-` cookies without `Secure`).
//! Cookies are read through [`super::credentials::cookie`], which refuses a repeated name.

use std::time::Duration;

use axum::http::HeaderValue;

/// Cookie names and attributes for one deployment.
#[derive(Debug, Clone, Copy)]
pub struct Cookies {
    secure: bool,
}

impl Cookies {
    /// Cookies for a deployment served over HTTPS (`secure`) or plain-HTTP development.
    pub fn new(secure: bool) -> Self {
        Self { secure }
    }

    /// Whether the deployment is served over HTTPS (`auth.cookie_secure`).
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// The session cookie's name.
    pub fn session(&self) -> &'static str {
        if self.secure { "__Host-tessera_session" } else { "tessera_session" }
    }

    /// The sign-in binding cookie's name.
    pub fn login(&self) -> &'static str {
        if self.secure { "__Host-tessera_login" } else { "tessera_login" }
    }

    /// A `Set-Cookie` value setting `name` for `max_age`.
    pub fn set(&self, name: &str, value: &str, max_age: Duration) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}", max_age.as_secs());
        HeaderValue::from_str(&cookie).expect("cookie values are base64url")
    }

    /// A `Set-Cookie` value removing `name`.
    pub fn clear(&self, name: &str) -> HeaderValue {
        self.set(name, "", Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_cookies_use_the_host_prefix() {
        let secure = Cookies::new(true);
        let value = secure.set(secure.session(), "v", Duration::from_secs(60));
        assert_eq!(
            value.to_str().unwrap(),
            "__Host-tessera_session=v; Path=/; HttpOnly; SameSite=Lax; Max-Age=60; Secure"
        );
        let dev = Cookies::new(false);
        assert!(!dev.set(dev.session(), "v", Duration::from_secs(1)).to_str().unwrap().contains("Secure"));
        assert!(dev.clear(dev.login()).to_str().unwrap().contains("Max-Age=0"));
    }
}

//! Small cryptographic helpers on top of aws-lc-rs: hashing, constant-time comparison and
//! randomness. Bearer secrets are only ever kept as [`sha256`] digests. [`keyring`] encrypts
//! upstream tokens at rest.

pub mod keyring;

use aws_lc_rs::{constant_time, digest, hmac, rand};

/// Shown in place of a secret by the `Debug` of the types made with [`debug_redacted`].
pub struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Implements `Debug` for a struct that carries secrets (codes, tokens, client secrets, PKCE
/// verifiers): the `shown` fields as derived, each `secret` field as `[REDACTED]`, so that no
/// `?value` in a log line can leak one.
#[macro_export]
macro_rules! debug_redacted {
    ($ty:ident $(<$lt:lifetime>)? { shown: [$($shown:ident),* $(,)?], secret: [$($secret:ident),* $(,)?] $(,)? }) => {
        impl $(<$lt>)? ::std::fmt::Debug for $ty $(<$lt>)? {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                let mut out = f.debug_struct(stringify!($ty));
                $(out.field(stringify!($shown), &self.$shown);)*
                $(let _ = &self.$secret; out.field(stringify!($secret), &$crate::crypto::Redacted);)*
                out.finish()
            }
        }
    };
}

/// The SHA-256 digest of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The SHA-256 digest of `data`, base64url without padding (43 characters): a PKCE S256
/// challenge, a JWK thumbprint, a flow's state.
pub fn sha256_base64url(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha256(data))
}

/// Compares two byte strings in time independent of their contents (not of their lengths).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// `N` bytes from the system's cryptographically secure generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // The system generator only fails if the OS has no entropy source at all; there is no safe
    // way to continue without one.
    rand::fill(&mut out).expect("the system random number generator failed");
    out
}

/// A random string of `len` characters from `0-9a-z`.
pub fn random_base36(len: usize) -> String {
    const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for byte in random_bytes::<32>() {
            // Rejection sampling keeps the distribution uniform: 252 = 7 * 36.
            if byte < 252 && out.len() < len {
                out.push(ALPHABET[usize::from(byte % 36)] as char);
            }
        }
    }
    out
}

/// A random bearer secret: 256 bits, base64url without padding (43 characters).
pub fn random_secret() -> secrecy::SecretString {
    use base64::Engine;
    secrecy::SecretString::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()))
}

/// A secret derived from two others, in the form of [`random_secret`]: HMAC-SHA256 keyed with
/// `key`, of `label`, a zero byte and `salt`. Whoever holds only one of `key` and `salt` learns
/// nothing of it; each `label` gives an unrelated secret.
pub fn derive_secret(key: &[u8], label: &str, salt: &[u8]) -> secrecy::SecretString {
    use base64::Engine;
    secrecy::SecretString::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(derive_key(key, label, salt)))
}

/// The 32 bytes [`derive_secret`] encodes: a key for [`keyring::KeyRing::of_key`].
pub fn derive_key(key: &[u8], label: &str, salt: &[u8]) -> [u8; 32] {
    let mut context = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
    context.update(label.as_bytes());
    context.update(&[0]);
    context.update(salt);
    context.sign().as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
}

/// The one algorithm a JWK of type `kty` on curve `crv` signs with: an EC or OKP key signs with
/// its curve's only (a P-384 key is no ES256 key). `Some(None)` for an EC or OKP key on a curve
/// none of the verified algorithms uses; `None` for the other key types (RSA), whose algorithm
/// the curve does not say.
pub fn curve_algorithm(kty: Option<&str>, crv: Option<&str>) -> Option<Option<jsonwebtoken::Algorithm>> {
    use jsonwebtoken::Algorithm;
    match (kty?, crv) {
        ("EC", Some("P-256")) => Some(Some(Algorithm::ES256)),
        ("EC", Some("P-384")) => Some(Some(Algorithm::ES384)),
        ("OKP", Some("Ed25519")) => Some(Some(Algorithm::EdDSA)),
        ("EC" | "OKP", _) => Some(None),
        _ => None,
    }
}

/// A base64url member of a JWK, decoded.
fn jwk_member(jwk: &serde_json::Map<String, serde_json::Value>, name: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(jwk.get(name)?.as_str()?).ok()
}

/// An RSA JWK's modulus and exponent as the numbers they are: without the leading zero bytes
/// (a sign byte, as some encoders write) that aws-lc-rs refuses in a key it verifies with.
pub fn rsa_components(jwk: &serde_json::Map<String, serde_json::Value>) -> Option<(Vec<u8>, Vec<u8>)> {
    let unpadded = |bytes: Vec<u8>| bytes[bytes.iter().take_while(|b| **b == 0).count()..].to_vec();
    Some((unpadded(jwk_member(jwk, "n")?), unpadded(jwk_member(jwk, "e")?)))
}

/// The key to verify with for a JWK that jsonwebtoken decoded as `decoded`: an RSA key as its
/// numbers say ([`rsa_components`]), so that a modulus written with a sign byte in front still
/// verifies; any other key as decoded.
pub fn verifying_key(
    jwk: &serde_json::Map<String, serde_json::Value>,
    decoded: jsonwebtoken::DecodingKey,
) -> jsonwebtoken::DecodingKey {
    match rsa_components(jwk) {
        Some((n, e)) if decoded.family() == jsonwebtoken::AlgorithmFamily::Rsa => {
            jsonwebtoken::DecodingKey::from_rsa_raw_components(&n, &e)
        }
        _ => decoded,
    }
}

/// Why the public key material of a JWK could never verify a signature, if so — which decoding
/// it (jsonwebtoken's `DecodingKey::from_jwk`) does not find out, as it only decodes the members:
/// an RSA modulus outside 2,048–8,192 bits (aws-lc-rs verifies no other) or an even or tiny
/// exponent; an EC point not on its curve (or of the wrong length); an Ed25519 key not 32 bytes.
/// `curve` is [`curve_algorithm`]'s answer for the key. Members that are not base64url text are
/// a problem too.
pub fn jwk_material_problem(
    jwk: &serde_json::Map<String, serde_json::Value>,
    curve: Option<Option<jsonwebtoken::Algorithm>>,
) -> Option<&'static str> {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ED25519, ParsedPublicKey};
    use jsonwebtoken::Algorithm;
    let member = |name: &str| jwk_member(jwk, name);
    const UNDECODABLE: &str = "the key's members are not base64url-encoded key material";
    match curve {
        // RSA.
        None => {
            let Some((n, e)) = rsa_components(jwk) else { return Some(UNDECODABLE) };
            let bits = n.first().map_or(0, |first| n.len() * 8 - first.leading_zeros() as usize);
            if !(2048..=8192).contains(&bits) {
                return Some("an RSA key's modulus must be 2,048 to 8,192 bits");
            }
            if e.len() > 4 || e.last().is_none_or(|last| last & 1 == 0) || e == [1] {
                return Some("an RSA key's exponent must be odd, at least 3 and at most 32 bits");
            }
            None
        }
        Some(Some(Algorithm::EdDSA)) => match member("x") {
            Some(x) if ParsedPublicKey::new(&ED25519, &x).is_ok() => None,
            Some(_) => Some("an Ed25519 key's `x` must be 32 bytes"),
            None => Some(UNDECODABLE),
        },
        Some(Some(alg)) => {
            let (Some(x), Some(y)) = (member("x"), member("y")) else { return Some(UNDECODABLE) };
            let verifying = if alg == Algorithm::ES384 { &ECDSA_P384_SHA384_FIXED } else { &ECDSA_P256_SHA256_FIXED };
            let point = [&[0x04][..], &x, &y].concat();
            ParsedPublicKey::new(verifying, &point)
                .is_err()
                .then_some("the key's `x` and `y` are not a point on its curve")
        }
        // A curve verified by nothing: `ClientKey::problem` says so already.
        Some(None) => None,
    }
}

/// Key material for the tests of the modules that read JWKs.
#[cfg(test)]
pub(crate) mod test_jwks {
    use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
    use base64::Engine as _;

    /// A fresh 2,048-bit RSA key's public JWK, its modulus and exponent written with a sign byte
    /// in front (as some encoders do), and `message` signed with it (RS256), base64url.
    pub fn sign_byte_rsa(message: &[u8]) -> (serde_json::Value, String) {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let public = pair.public_key();
        let n = [&[0u8][..], public.modulus().big_endian_without_leading_zero()].concat();
        let e = [&[0u8][..], public.exponent().big_endian_without_leading_zero()].concat();
        let mut signature = vec![0; pair.public_modulus_len()];
        pair.sign(&RSA_PKCS1_SHA256, &aws_lc_rs::rand::SystemRandom::new(), message, &mut signature).unwrap();
        (serde_json::json!({"kty": "RSA", "n": b64(&n), "e": b64(&e)}), b64(&signature))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_a_known_vector() {
        let hex: String = sha256(b"abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn constant_time_eq_compares_contents_and_lengths() {
        assert!(constant_time_eq(b"same", b"same"));
        assert!(!constant_time_eq(b"same", b"sama"));
        assert!(!constant_time_eq(b"same", b"same!"));
    }

    #[test]
    fn random_values_differ_and_have_the_requested_shape() {
        assert_ne!(random_bytes::<16>(), random_bytes::<16>());
        let s = random_base36(40);
        assert_eq!(s.len(), 40);
        assert!(s.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
    }

    #[test]
    fn a_derived_secret_is_hmac_sha256_of_label_and_salt() {
        use secrecy::ExposeSecret;
        // Python: base64.urlsafe_b64encode(hmac.new(b"state", b"pkce_verifier\0salt", "sha256").digest()).rstrip(b"=")
        let derived = derive_secret(b"state", "pkce_verifier", b"salt");
        assert_eq!(derived.expose_secret(), "OiCDSBHtlwQgat3SmB6wBHo0MEkE-yCrQfluTPKfNXE");
        assert_eq!(derived.expose_secret().len(), random_secret().expose_secret().len());
        for other in [
            derive_secret(b"state", "nonce", b"salt"),
            derive_secret(b"other", "pkce_verifier", b"salt"),
            derive_secret(b"state", "pkce_verifier", b"pepper"),
            derive_secret(b"state", "pkce_verifie", b"rsalt"),
        ] {
            assert_ne!(other.expose_secret(), derived.expose_secret());
        }
    }
}

//! The key ring that encrypts upstream tokens at rest: AES-256-GCM with random nonces.
//!
//! Every ciphertext carries the id of the key that made it; the first key of the ring encrypts
//! new writes and every key decrypts, so keys rotate without downtime (`tessera keys rotate`
//! re-encrypts old rows under the active key). Callers bind each ciphertext to its row through
//! associated data — table, row id and column — so a ciphertext moved to another row, or another
//! column, no longer decrypts.
//!
//! Format: `b"tk1"`, the key id length (one byte), the key id, the 12-byte nonce, then the
//! ciphertext with its 16-byte tag.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

const MAGIC: &[u8] = b"tk1";

/// Why a key ring could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRingError {
    /// No key was given.
    #[error("no key given; expected `id:base64key`, comma-separated, the first one active")]
    Empty,
    /// An entry is not `id:base64key` or its id is not acceptable.
    #[error("entry {0} is not of the form `id:base64key` with an id of 1 to 32 letters, digits, `-` or `_`")]
    BadEntry(usize),
    /// A key does not decode to 32 bytes.
    #[error("key {0:?} must be 32 bytes, base64-encoded (generate one with `openssl rand -base64 32`)")]
    BadKey(String),
    /// Two keys share an id.
    #[error("key id {0:?} is used twice")]
    DuplicateId(String),
    /// Two ids name the same key bytes: a "rotation" to it would re-encrypt under the old key.
    #[error("keys {0:?} and {1:?} are the same key; a new key must be new (`openssl rand -base64 32`)")]
    SameKey(String, String),
}

/// Why a ciphertext did not decrypt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// Not a ciphertext of this format.
    #[error("not a key-ring ciphertext")]
    Malformed,
    /// Made with a key the ring no longer has.
    #[error("encrypted with key {0:?}, which is not in the key ring")]
    UnknownKey(String),
    /// Tampered with, or bound to other associated data (another row or column).
    #[error("the ciphertext does not authenticate")]
    Unauthentic,
}

struct Key {
    id: String,
    key: RandomizedNonceKey,
}

/// A set of AES-256-GCM keys; the first one encrypts. Its `Debug` shows key ids only.
pub struct KeyRing {
    keys: Vec<Key>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing").field("key_ids", &self.keys.iter().map(|k| &k.id).collect::<Vec<_>>()).finish()
    }
}

impl KeyRing {
    /// Parses `id:base64key[,id:base64key…]`; the first key is the active one.
    pub fn parse(value: &str) -> Result<Self, KeyRingError> {
        let entries: Vec<&str> = value.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
        if entries.is_empty() {
            return Err(KeyRingError::Empty);
        }
        let mut keys: Vec<Key> = Vec::with_capacity(entries.len());
        // Each key's bytes, only while the ring is built, to refuse one given twice.
        let mut seen: Vec<Vec<u8>> = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let (id, encoded) = entry.split_once(':').ok_or(KeyRingError::BadEntry(i + 1))?;
            let valid_id = !id.is_empty()
                && id.len() <= 32
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_id {
                return Err(KeyRingError::BadEntry(i + 1));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(KeyRingError::DuplicateId(id.to_owned()));
            }
            let bytes = Self::bytes(id, encoded)?;
            if let Some(at) = seen.iter().position(|other| *other == bytes) {
                return Err(KeyRingError::SameKey(keys[at].id.clone(), id.to_owned()));
            }
            keys.push(Key { id: id.to_owned(), key: Self::sealing_key(id, &bytes)? });
            seen.push(bytes);
        }
        Ok(Self { keys })
    }

    /// A ring of one key, from a bare base64 key (the deprecated single-key variable).
    pub fn single(id: &str, encoded: &str) -> Result<Self, KeyRingError> {
        Ok(Self { keys: vec![Key { id: id.to_owned(), key: Self::sealing_key(id, &Self::bytes(id, encoded)?)? }] })
    }

    /// A ring of one key given as its bytes (one derived for a single purpose, not configured).
    pub fn of_key(id: &str, bytes: &[u8; 32]) -> Self {
        let key = Self::sealing_key(id, bytes).expect("32 bytes are an AES-256 key");
        Self { keys: vec![Key { id: id.to_owned(), key }] }
    }

    /// A key's 32 bytes, from base64 (standard or URL-safe, padded or not).
    fn bytes(id: &str, encoded: &str) -> Result<Vec<u8>, KeyRingError> {
        let encoded = encoded.trim();
        [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(encoded).ok())
            .filter(|bytes| bytes.len() == 32)
            .ok_or_else(|| KeyRingError::BadKey(id.to_owned()))
    }

    fn sealing_key(id: &str, bytes: &[u8]) -> Result<RandomizedNonceKey, KeyRingError> {
        RandomizedNonceKey::new(&AES_256_GCM, bytes).map_err(|_| KeyRingError::BadKey(id.to_owned()))
    }

    /// The id of the key that encrypts.
    pub fn active_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Whether the ring holds a key with this id (one that encrypts or one that only decrypts).
    pub fn has_key(&self, id: &str) -> bool {
        self.keys.iter().any(|k| k.id == id)
    }

    /// Encrypts `plaintext` under the active key, bound to `aad`.
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let active = &self.keys[0];
        let mut sealed = plaintext.to_vec();
        let nonce = active
            .key
            .seal_in_place_append_tag(Aad::from(aad), &mut sealed)
            .expect("AES-GCM sealing does not fail for inputs of this size");
        let mut out = Vec::with_capacity(MAGIC.len() + 1 + active.id.len() + NONCE_LEN + sealed.len());
        out.extend_from_slice(MAGIC);
        out.push(active.id.len() as u8);
        out.extend_from_slice(active.id.as_bytes());
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypts a ciphertext made by any key of the ring, checking it is bound to `aad`.
    pub fn decrypt(&self, ciphertext: &[u8], aad: &[u8]) -> Result<Vec<u8>, DecryptError> {
        let (id, nonce, sealed) = split(ciphertext)?;
        let key = self.keys.iter().find(|k| k.id == id).ok_or_else(|| DecryptError::UnknownKey(id.to_owned()))?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| DecryptError::Malformed)?;
        let mut buffer = sealed.to_vec();
        let plaintext =
            key.key.open_in_place(nonce, Aad::from(aad), &mut buffer).map_err(|_| DecryptError::Unauthentic)?;
        Ok(plaintext.to_vec())
    }

    /// The id of the key a ciphertext was made with.
    pub fn key_id_of(ciphertext: &[u8]) -> Option<&str> {
        split(ciphertext).ok().map(|(id, _, _)| id)
    }
}

fn split(ciphertext: &[u8]) -> Result<(&str, &[u8], &[u8]), DecryptError> {
    let rest = ciphertext.strip_prefix(MAGIC).ok_or(DecryptError::Malformed)?;
    let (&id_len, rest) = rest.split_first().ok_or(DecryptError::Malformed)?;
    let id_len = usize::from(id_len);
    if rest.len() < id_len + NONCE_LEN + 16 {
        return Err(DecryptError::Malformed);
    }
    let (id, rest) = rest.split_at(id_len);
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let id = std::str::from_utf8(id).map_err(|_| DecryptError::Malformed)?;
    Ok((id, nonce, sealed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        STANDARD.encode([byte; 32])
    }

    #[test]
    fn ciphertexts_round_trip_and_carry_their_key_id() {
        let ring = KeyRing::parse(&format!("new:{},old:{}", key(1), key(2))).unwrap();
        let sealed = ring.encrypt(b"gho_secret", b"identity_tokens|row-1|access");
        assert_eq!(KeyRing::key_id_of(&sealed), Some("new"));
        assert_eq!(ring.decrypt(&sealed, b"identity_tokens|row-1|access").unwrap(), b"gho_secret");
        assert!(!sealed.windows(10).any(|w| w == b"gho_secret"), "the plaintext does not show");
        assert_ne!(ring.encrypt(b"gho_secret", b"a"), ring.encrypt(b"gho_secret", b"a"), "nonces are random");
    }

    #[test]
    fn older_keys_still_decrypt_and_removed_keys_are_named() {
        let old_ring = KeyRing::parse(&format!("old:{}", key(2))).unwrap();
        let sealed = old_ring.encrypt(b"token", b"aad");
        let rotated = KeyRing::parse(&format!("new:{},old:{}", key(1), key(2))).unwrap();
        assert_eq!(rotated.decrypt(&sealed, b"aad").unwrap(), b"token");
        let without_old = KeyRing::parse(&format!("new:{}", key(1))).unwrap();
        assert_eq!(without_old.decrypt(&sealed, b"aad"), Err(DecryptError::UnknownKey("old".into())));
    }

    #[test]
    fn a_ciphertext_moved_to_another_row_does_not_decrypt() {
        let ring = KeyRing::parse(&format!("k:{}", key(3))).unwrap();
        let a = ring.encrypt(b"token-a", b"identity_tokens|a|access");
        let b = ring.encrypt(b"token-b", b"identity_tokens|b|access");
        assert_eq!(ring.decrypt(&a, b"identity_tokens|b|access"), Err(DecryptError::Unauthentic));
        assert_eq!(ring.decrypt(&b, b"identity_tokens|a|access"), Err(DecryptError::Unauthentic));
        assert_eq!(ring.decrypt(&a, b"identity_tokens|a|refresh"), Err(DecryptError::Unauthentic));
        let mut tampered = a.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(ring.decrypt(&tampered, b"identity_tokens|a|access"), Err(DecryptError::Unauthentic));
        assert_eq!(ring.decrypt(b"plain", b"x"), Err(DecryptError::Malformed));
    }

    #[test]
    fn bad_rings_are_refused_and_debug_shows_no_key() {
        assert_eq!(KeyRing::parse(" , ").unwrap_err(), KeyRingError::Empty);
        assert_eq!(KeyRing::parse(&key(1)).unwrap_err(), KeyRingError::BadEntry(1));
        assert_eq!(KeyRing::parse("k:c2hvcnQ=").unwrap_err(), KeyRingError::BadKey("k".into()));
        assert_eq!(KeyRing::parse("k:!!!").unwrap_err(), KeyRingError::BadKey("k".into()));
        assert_eq!(
            KeyRing::parse(&format!("k:{},k:{}", key(1), key(2))).unwrap_err(),
            KeyRingError::DuplicateId("k".into())
        );
        // The same bytes under a new id, even spelt in another base64 alphabet.
        let url_safe = key(1).replace('+', "-").replace('/', "_").trim_end_matches('=').to_owned();
        assert_eq!(
            KeyRing::parse(&format!("new:{url_safe},old:{}", key(1))).unwrap_err(),
            KeyRingError::SameKey("new".into(), "old".into())
        );
        let ring = KeyRing::parse(&format!("visible-id:{}", key(7))).unwrap();
        let debug = format!("{ring:?}");
        assert!(debug.contains("visible-id") && !debug.contains(&key(7)), "{debug}");
        assert!(KeyRing::single("legacy", &key(9)).is_ok());
    }

    #[test]
    fn every_base64_spelling_of_a_key_is_read() {
        // 0xfb bytes spell `+` and `/` in the standard alphabet, `-` and `_` in the URL-safe one.
        let bytes = [0xfb; 32];
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            let encoded = engine.encode(bytes);
            let ring = KeyRing::parse(&format!("k:{encoded}")).unwrap_or_else(|e| panic!("{encoded}: {e}"));
            assert_eq!(ring.decrypt(&KeyRing::of_key("k", &bytes).encrypt(b"t", b"a"), b"a").unwrap(), b"t");
        }
    }
}

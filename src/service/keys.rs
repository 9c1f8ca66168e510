//! `tessera keys rotate`: re-encrypts every stored secret under the key ring's active key, so
//! that older keys can then be retired.
//!
//! Rows are read in pages and rewritten one by one with a compare-and-swap on the old ciphertext,
//! so a concurrent write (a token refresh) is never overwritten; such rows are already under the
//! active key. A value that does not decrypt is reported, not skipped silently. The private keys
//! of the OpenID Provider's signing keys are re-encrypted the same way
//! ([`rotate_signing_keys`]).

use crate::crypto::keyring::KeyRing;
use crate::store::{SecretKind, SigningKeyRecord, Store, StoreError, StoredSecret};

/// Rows read per page.
const PAGE: i64 = 200;

/// What a rotation did, per kind of secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rotation {
    /// Values re-encrypted under the active key.
    pub rotated: u64,
    /// Values already under the active key.
    pub current: u64,
    /// Values rewritten by someone else meanwhile (so already current).
    pub raced: u64,
    /// Values that do not decrypt with any key of the ring.
    pub failed: u64,
}

/// Progress of a rotation: the kind, the rows seen so far and the rows in all.
pub type Progress<'a> = dyn FnMut(SecretKind, u64, i64) + Send + 'a;

/// Re-encrypts every secret of every kind under `keyring`'s active key.
pub async fn rotate(
    store: &dyn Store,
    keyring: &KeyRing,
    progress: &mut Progress<'_>,
) -> Result<Vec<(SecretKind, Rotation)>, StoreError> {
    let mut report = Vec::new();
    for &kind in SecretKind::ALL {
        let total = store.count_secrets(kind).await?;
        let mut rotation = Rotation::default();
        let mut after = None;
        let mut rows_seen = 0u64;
        loop {
            let page = store.secrets_page(kind, after, PAGE).await?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some(last.row_id);
            let mut last_row = None;
            for secret in &page {
                if last_row != Some(secret.row_id) {
                    rows_seen += 1;
                    last_row = Some(secret.row_id);
                }
                rotate_one(store, keyring, secret, &mut rotation).await?;
            }
            progress(kind, rows_seen, total);
        }
        report.push((kind, rotation));
    }
    Ok(report)
}

async fn rotate_one(
    store: &dyn Store,
    keyring: &KeyRing,
    secret: &StoredSecret,
    rotation: &mut Rotation,
) -> Result<(), StoreError> {
    if KeyRing::key_id_of(&secret.ciphertext) == Some(keyring.active_id()) {
        rotation.current += 1;
        return Ok(());
    }
    let aad = StoredSecret::aad(secret.kind, secret.row_id, secret.column);
    let Ok(plaintext) = keyring.decrypt(&secret.ciphertext, &aad) else {
        tracing::warn!(table = secret.kind.table(), row = %secret.row_id, column = secret.column, "a stored secret does not decrypt");
        rotation.failed += 1;
        return Ok(());
    };
    if store.replace_secret(secret, &keyring.encrypt(&plaintext, &aad)).await? {
        rotation.rotated += 1;
    } else {
        rotation.raced += 1;
    }
    Ok(())
}

/// Re-encrypts the private key of every signing key (unpublished ones included) under
/// `keyring`'s active key.
pub async fn rotate_signing_keys(store: &dyn Store, keyring: &KeyRing) -> Result<Rotation, StoreError> {
    let mut rotation = Rotation::default();
    for key in store.all_signing_keys().await? {
        if KeyRing::key_id_of(&key.private_key) == Some(keyring.active_id()) {
            rotation.current += 1;
            continue;
        }
        let aad = SigningKeyRecord::aad(&key.kid);
        let Ok(plaintext) = keyring.decrypt(&key.private_key, &aad) else {
            tracing::warn!(kid = %key.kid, "a signing key does not decrypt");
            rotation.failed += 1;
            continue;
        };
        if store.replace_signing_key_ciphertext(&key.kid, &key.private_key, &keyring.encrypt(&plaintext, &aad)).await? {
            rotation.rotated += 1;
        } else {
            rotation.raced += 1;
        }
    }
    Ok(rotation)
}

//! `tessera keys rotate`: re-encrypts every stored secret under the key ring's active key, so
//! that older keys can then be retired.
//!
//! Rows are read in pages and rewritten one by one with a compare-and-swap on the old ciphertext,
//! so a concurrent write (a token refresh) is never overwritten. A value is counted current only
//! once it decrypts under the active key (a key replaced under the same id is caught), and one
//! that does not decrypt is reported, not skipped silently. A value that changed meanwhile may
//! have been written under another key (an instance whose ring still has an older active key), so
//! the scan is repeated until one finds nothing to do ([`MAX_PASSES`] at most); what is still left
//! then is reported. The private keys of the OpenID Provider's signing keys are re-encrypted the
//! same way ([`rotate_signing_keys`]).

use crate::crypto::keyring::KeyRing;
use crate::store::{SecretKind, SigningKeyRecord, Store, StoreError, StoredSecret};

/// Rows read per page.
const PAGE: i64 = 200;

/// Scans of one kind of secret at most: one, and more while the last one found values to
/// re-encrypt or values that changed meanwhile.
pub const MAX_PASSES: u32 = 3;

/// What a rotation did, per kind of secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rotation {
    /// Values re-encrypted under the active key.
    pub rotated: u64,
    /// Values already under the active key.
    pub current: u64,
    /// Values rewritten by someone else meanwhile (then scanned again).
    pub raced: u64,
    /// Values that do not decrypt with any key of the ring (or not under the active key's id).
    pub failed: u64,
    /// Private keys of retired signing keys that do not decrypt: never decrypted again (a retired
    /// key only verifies, with its public half), so left as they are rather than failing every
    /// rotation after a lost ring key was rotated away.
    pub retired: u64,
    /// Values the last scan still found under another key or changing: something still writes
    /// with an older active key.
    pub left: u64,
}

impl Rotation {
    /// Adds a later scan's counts: what it re-encrypted and saw change adds up; what is current
    /// and failed is the later scan's, and what it re-encrypted or saw change is left (none: the
    /// scan found nothing to do, and the rotation is settled).
    fn then(self, pass: Rotation) -> Rotation {
        Rotation {
            rotated: self.rotated + pass.rotated,
            raced: self.raced + pass.raced,
            current: pass.current,
            failed: pass.failed,
            retired: pass.retired,
            left: pass.rotated + pass.raced,
        }
    }
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
        let mut rotation = Rotation::default();
        for _ in 0..MAX_PASSES {
            rotation = rotation.then(rotate_kind(store, keyring, kind, progress).await?);
            if rotation.left == 0 {
                break;
            }
        }
        report.push((kind, rotation));
    }
    Ok(report)
}

/// One scan of `kind`.
async fn rotate_kind(
    store: &dyn Store,
    keyring: &KeyRing,
    kind: SecretKind,
    progress: &mut Progress<'_>,
) -> Result<Rotation, StoreError> {
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
    Ok(rotation)
}

async fn rotate_one(
    store: &dyn Store,
    keyring: &KeyRing,
    secret: &StoredSecret,
    rotation: &mut Rotation,
) -> Result<(), StoreError> {
    let aad = StoredSecret::aad(secret.kind, secret.row_id, secret.column);
    let Ok(plaintext) = keyring.decrypt(&secret.ciphertext, &aad) else {
        tracing::warn!(table = secret.kind.table(), row = %secret.row_id, column = secret.column, "a stored secret does not decrypt");
        rotation.failed += 1;
        return Ok(());
    };
    if KeyRing::key_id_of(&secret.ciphertext) == Some(keyring.active_id()) {
        rotation.current += 1;
        return Ok(());
    }
    if store.replace_secret(secret, &keyring.encrypt(&plaintext, &aad)).await? {
        rotation.rotated += 1;
    } else {
        rotation.raced += 1;
    }
    Ok(())
}

/// Re-encrypts the private key of every signing key (unpublished ones included, until the
/// sweeper has emptied theirs) under `keyring`'s active key.
pub async fn rotate_signing_keys(store: &dyn Store, keyring: &KeyRing) -> Result<Rotation, StoreError> {
    let mut rotation = Rotation::default();
    for _ in 0..MAX_PASSES {
        rotation = rotation.then(rotate_signing_keys_once(store, keyring).await?);
        if rotation.left == 0 {
            break;
        }
    }
    Ok(rotation)
}

async fn rotate_signing_keys_once(store: &dyn Store, keyring: &KeyRing) -> Result<Rotation, StoreError> {
    let mut rotation = Rotation::default();
    let now = crate::domain::now();
    // An unpublished key's private key is emptied by the sweeper: nothing to re-encrypt.
    for key in store.all_signing_keys().await?.into_iter().filter(|key| !key.private_key.is_empty()) {
        let aad = SigningKeyRecord::aad(&key.kid);
        let Ok(plaintext) = keyring.decrypt(&key.private_key, &aad) else {
            if key.retired_at.is_some_and(|retired| retired <= now) {
                rotation.retired += 1;
            } else {
                tracing::warn!(kid = %key.kid, "a signing key does not decrypt");
                rotation.failed += 1;
            }
            continue;
        };
        if KeyRing::key_id_of(&key.private_key) == Some(keyring.active_id()) {
            rotation.current += 1;
            continue;
        }
        if store.replace_signing_key_ciphertext(&key.kid, &key.private_key, &keyring.encrypt(&plaintext, &aad)).await? {
            rotation.rotated += 1;
        } else {
            rotation.raced += 1;
        }
    }
    Ok(rotation)
}

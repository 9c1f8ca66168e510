//! Webhook endpoints: registration (the admin API), their signing keys, the delivery log and
//! replay; and the rules of delivery that the worker (`worker::webhooks`) applies — the Standard
//! Webhooks signature, the retry schedule and which addresses may be called.
//!
//! A signing key must be recoverable to sign, so it is stored encrypted by the key ring (bound to
//! its row and column, like every other secret at rest). Without a key ring, endpoints cannot be
//! registered (503 `encryption_not_configured`): a plaintext key in the database would let anyone
//! who reads a backup forge Tessera's events.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use secrecy::SecretString;

use super::now;
use crate::config::{ConfigWebhook, WebhooksConfig};
use crate::crypto::keyring::KeyRing;
use crate::domain::{WebhookDelivery, WebhookEndpoint, WebhookId, events};
use crate::error::ErrorChain as _;
use crate::error::{ErrorCode, PublicError};
use crate::store::{Store, StoreError, WebhookChange, WebhookInsert, WebhookKeys, WebhookQueue};

/// The prefix of a signing key as shown to the operator (Standard Webhooks).
pub const SECRET_PREFIX: &str = "whsec_";
/// The most deliveries one page of the log holds.
pub const MAX_PAGE: usize = 500;
/// The events a replay schedules per transaction ([`Webhooks::replay`]).
pub const REPLAY_PAGE: i64 = 500;

/// Why a webhook request was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// No endpoint has this id.
    #[error("no webhook endpoint has this id")]
    NotFound,
    /// The URL cannot be registered.
    #[error("`url`: {0}")]
    InvalidUrl(String),
    /// An event type is unknown: its position in the list (the text is not quoted back).
    #[error("`event_types[{0}]` is not an event type Tessera sends (see the README's list)")]
    InvalidEventType(usize),
    /// Without a key ring, signing keys cannot be stored.
    #[error("webhooks need the key ring (encryption.keys) to keep their signing keys encrypted")]
    EncryptionNotConfigured,
    /// The endpoint is defined in the configuration file.
    #[error("this endpoint is defined in the configuration file ([[webhooks.endpoints]] {0:?}): change it there")]
    ManagedByConfig(String),
    /// The admin API's endpoints are as many as it registers.
    #[error(
        "{} webhook endpoints are registered, the most there may be: delete one first",
        crate::store::MAX_API_WEBHOOKS
    )]
    LimitReached,
    /// An endpoint of the configuration file cannot be written.
    #[error("webhook endpoint {name:?} of the configuration file: {reason}")]
    InvalidConfigEndpoint {
        /// Its name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A change that names no field.
    #[error("name at least one of `url`, `event_types` and `enabled` to change")]
    NothingToUpdate,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PublicError for WebhookError {
    fn code(&self) -> ErrorCode {
        match self {
            WebhookError::NotFound => ErrorCode::WebhookNotFound,
            WebhookError::InvalidUrl(_) => ErrorCode::InvalidWebhookUrl,
            WebhookError::InvalidEventType(_) => ErrorCode::InvalidEventType,
            WebhookError::EncryptionNotConfigured => ErrorCode::EncryptionNotConfigured,
            WebhookError::ManagedByConfig(_) => ErrorCode::WebhookManagedInConfig,
            WebhookError::LimitReached => ErrorCode::WebhookLimitReached,
            WebhookError::NothingToUpdate => ErrorCode::InvalidRequest,
            WebhookError::InvalidConfigEndpoint { .. } => ErrorCode::InternalError,
            WebhookError::Store(e) => e.code(),
        }
    }

    fn extensions(&self) -> Vec<(&'static str, serde_json::Value)> {
        match self {
            WebhookError::InvalidUrl(_) => vec![("field", "url".into())],
            WebhookError::InvalidEventType(_) => vec![("field", "event_types".into())],
            _ => Vec::new(),
        }
    }
}

/// A registration.
#[derive(Debug, Clone, Default)]
pub struct NewWebhook {
    /// Where to POST.
    pub url: String,
    /// Topics; `None` or empty: all.
    pub event_types: Option<Vec<String>>,
    /// Default true.
    pub enabled: Option<bool>,
}

/// A change of an endpoint: the fields named.
#[derive(Debug, Clone, Default)]
pub struct WebhookPatch {
    /// A new URL.
    pub url: Option<String>,
    /// New topics (empty: all).
    pub event_types: Option<Vec<String>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
}

/// What [`Webhooks::sync_config`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigWebhookSync {
    /// Endpoints inserted.
    pub inserted: Vec<WebhookId>,
    /// Endpoints changed.
    pub updated: Vec<WebhookId>,
    /// Endpoints deleted (no longer in the file).
    pub deleted: Vec<WebhookId>,
}

/// Webhook endpoints and the rules of delivery.
#[derive(Debug, Clone)]
pub struct Webhooks {
    store: Arc<dyn Store>,
    keyring: Option<Arc<KeyRing>>,
    settings: Arc<WebhooksConfig>,
}

impl Webhooks {
    /// The service.
    pub fn new(store: Arc<dyn Store>, keyring: Option<Arc<KeyRing>>, settings: WebhooksConfig) -> Self {
        Self { store, keyring, settings: Arc::new(settings) }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The delivery settings.
    pub fn settings(&self) -> &WebhooksConfig {
        &self.settings
    }

    /// Deletes the outbox events older than `webhooks.retention_days` that every endpoint is done
    /// with, and their delivery log, in batches; how many events went. Nothing with a retention
    /// of 0 (keep forever). An event with a delivery still pending (an endpoint retrying, or
    /// disabled) is kept until it is delivered or fails.
    pub async fn sweep(&self) -> Result<u64, StoreError> {
        super::sweep_older_than(self.settings.retention, |cutoff, limit| self.store.delete_old_events(cutoff, limit))
            .await
    }

    /// Forgets the previous signing keys whose overlap has ended (the sweeper's task): they sign
    /// nothing more, so keeping them only keeps a secret. Returns how many.
    pub async fn forget_expired_previous_keys(&self) -> Result<u64, StoreError> {
        self.store.forget_expired_webhook_secrets(now()).await
    }

    /// Every endpoint's pending deliveries, for metrics.
    pub async fn queues(&self) -> Result<Vec<WebhookQueue>, StoreError> {
        self.store.webhook_queues().await
    }

    /// Registers an endpoint; returns it with its signing key (`whsec_…`), shown this once.
    pub async fn create(&self, new: NewWebhook) -> Result<(WebhookEndpoint, SecretString), WebhookError> {
        let keyring = self.keyring.as_ref().ok_or(WebhookError::EncryptionNotConfigured)?;
        let url = check_url(&new.url, self.settings.allow_private_addresses)?;
        let event_types = check_event_types(new.event_types.unwrap_or_default())?;
        let id = WebhookId::generate();
        let key = crate::crypto::random_bytes::<32>();
        let secret = SecretString::from(format!("{SECRET_PREFIX}{}", STANDARD.encode(key)));
        let at = now();
        let mut endpoint = WebhookEndpoint {
            id,
            url,
            event_types,
            enabled: new.enabled.unwrap_or(true),
            secret: keyring.encrypt(&key, &WebhookEndpoint::aad(id)),
            previous_secret: None,
            previous_secret_until: None,
            config_name: None,
            created_at: at,
            updated_at: at,
        };
        // As registered: after the events a fan-out running meanwhile took (see
        // `Store::insert_webhook`).
        match self.store.insert_webhook(&endpoint).await? {
            WebhookInsert::Registered(registered) => {
                (endpoint.created_at, endpoint.updated_at) = (registered, registered)
            }
            WebhookInsert::Full => return Err(WebhookError::LimitReached),
            // Only an endpoint with a configuration name can meet one (not one of the API): not
            // answered as registered, should it ever.
            WebhookInsert::NameTaken => {
                return Err(StoreError::Conflict { what: "an API webhook endpoint met a configuration name" }.into());
            }
        }
        Ok((endpoint, secret))
    }

    /// Every endpoint.
    pub async fn list(&self) -> Result<Vec<WebhookEndpoint>, WebhookError> {
        Ok(self.store.list_webhooks().await?)
    }

    /// One endpoint.
    pub async fn get(&self, id: WebhookId) -> Result<WebhookEndpoint, WebhookError> {
        self.store.webhook(id).await?.ok_or(WebhookError::NotFound)
    }

    /// Changes the fields a patch names, and only those, in one write: two concurrent patches of
    /// different fields both stick. A patch naming nothing is refused.
    pub async fn update(&self, id: WebhookId, patch: WebhookPatch) -> Result<WebhookEndpoint, WebhookError> {
        if patch.url.is_none() && patch.event_types.is_none() && patch.enabled.is_none() {
            return Err(WebhookError::NothingToUpdate);
        }
        let change = WebhookChange {
            url: patch.url.map(|url| check_url(&url, self.settings.allow_private_addresses)).transpose()?,
            event_types: patch.event_types.map(check_event_types).transpose()?,
            enabled: patch.enabled,
        };
        // Named in the error: an endpoint of the configuration file is changed there.
        self.get_managed(id).await?;
        self.store.patch_webhook(id, &change, now()).await?.ok_or(WebhookError::NotFound)
    }

    /// Deletes an endpoint and its delivery log.
    pub async fn delete(&self, id: WebhookId) -> Result<(), WebhookError> {
        self.get_managed(id).await?;
        if self.store.delete_webhook(id).await? { Ok(()) } else { Err(WebhookError::NotFound) }
    }

    /// A page of the delivery log, latest event first, and the `before` of the next page (`None`
    /// on the last: one row more than the page is read to tell).
    pub async fn deliveries(
        &self,
        id: WebhookId,
        before: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<WebhookDelivery>, Option<i64>), WebhookError> {
        self.get(id).await?;
        let limit = limit.clamp(1, MAX_PAGE);
        let mut page = self.store.webhook_deliveries(id, before, limit as i64 + 1).await?;
        let more = page.len() > limit;
        page.truncate(limit);
        let next = if more { page.last().map(|d| d.event_seq) } else { None };
        Ok((page, next))
    }

    /// Sends every event written since `since` again; returns how many were scheduled.
    ///
    /// A page of [`REPLAY_PAGE`] events per transaction, so that a replay of a long window holds
    /// neither SQLite's writer nor the locks on a whole retention window of events at once. It
    /// covers the events fanned out when it starts (later ones are delivered by the fan-out, not
    /// sent twice), runs to its end even if the caller goes away, and one that fails part way
    /// keeps the pages it committed: repeating it schedules the same events again (at least once).
    /// An endpoint deleted while its replay runs ends it: not found.
    pub async fn replay(&self, id: WebhookId, since: DateTime<Utc>) -> Result<u64, WebhookError> {
        let endpoint = self.get(id).await?;
        let store = self.store.clone();
        let replay = crate::run_to_end(async move {
            let (mut scheduled, mut from) = (0, None);
            loop {
                let page = store.replay_webhook(&endpoint, since, from, REPLAY_PAGE, now()).await?;
                if page.gone {
                    return Ok::<_, StoreError>(None);
                }
                scheduled += page.scheduled;
                match page.next {
                    Some(next) => from = Some(next),
                    None => return Ok(Some(scheduled)),
                }
            }
        });
        // `None` only when the runtime shuts down (its pool closing): the pages committed so far
        // stay scheduled, and the client is told to try again (503).
        replay.await.unwrap_or_else(|| Err(StoreError::shut_down()))?.ok_or(WebhookError::NotFound)
    }

    /// An endpoint the admin API may change: not one of the configuration file.
    async fn get_managed(&self, id: WebhookId) -> Result<WebhookEndpoint, WebhookError> {
        let endpoint = self.get(id).await?;
        match &endpoint.config_name {
            Some(name) => Err(WebhookError::ManagedByConfig(name.clone())),
            None => Ok(endpoint),
        }
    }

    /// Gives an endpoint a new signing key, returned (`whsec_…`) this once; the current one keeps
    /// signing beside it for `webhooks.secret_overlap_seconds` (a key still overlapping from an
    /// earlier rotation stops signing now).
    pub async fn rotate_secret(&self, id: WebhookId) -> Result<(WebhookEndpoint, SecretString), WebhookError> {
        let keyring = self.keyring.as_ref().ok_or(WebhookError::EncryptionNotConfigured)?;
        let key = crate::crypto::random_bytes::<32>();
        // A concurrent rotation wins the compare-and-swap: read again and rotate after it. Each
        // lost round means another rotation succeeded, so the bound is only against a runaway.
        for _ in 0..64 {
            let mut endpoint = self.get_managed(id).await?;
            // A key the key ring can no longer read (its key id removed) cannot sign beside the
            // new one: the rotation is the way out, with no overlap, as for the configuration's.
            let current = keyring.decrypt(&endpoint.secret, &WebhookEndpoint::aad(id)).ok();
            if current.is_none() {
                tracing::warn!(webhook = %id, "the endpoint's signing key cannot be decrypted; rotating without an overlap");
            }
            let at = now();
            let previous = current.map(|current| keyring.encrypt(&current, &WebhookEndpoint::previous_aad(id)));
            let secret = keyring.encrypt(&key, &WebhookEndpoint::aad(id));
            let until = previous.as_ref().map(|_| {
                at + chrono::TimeDelta::from_std(self.settings.secret_overlap).unwrap_or(chrono::TimeDelta::MAX)
            });
            let keys = WebhookKeys { secret: &secret, previous: previous.as_deref(), previous_until: until, now: at };
            if self.store.replace_webhook_secret(id, &endpoint.secret, &keys).await? {
                endpoint.secret = secret;
                endpoint.previous_secret = previous;
                endpoint.previous_secret_until = until;
                endpoint.updated_at = at;
                return Ok((endpoint, SecretString::from(format!("{SECRET_PREFIX}{}", STANDARD.encode(key)))));
            }
        }
        Err(WebhookError::Store(StoreError::Conflict { what: "the webhook's signing key kept changing" }))
    }

    /// Writes the endpoints of the configuration file to the store under their names: new ones
    /// are inserted, changed ones updated (a changed key makes the stored one the previous key,
    /// signing beside it for the overlap), and those no longer in the file deleted with their
    /// delivery logs. Run once at start-up.
    pub async fn sync_config(&self, wanted: &[ConfigWebhook]) -> Result<ConfigWebhookSync, WebhookError> {
        let mut sync = ConfigWebhookSync::default();
        let stored: Vec<WebhookEndpoint> =
            self.store.list_webhooks().await?.into_iter().filter(|e| e.config_name.is_some()).collect();
        if wanted.is_empty() && stored.is_empty() {
            return Ok(sync);
        }
        // Only writing an endpoint needs the key ring: the file's endpoints removed together
        // with the ring are deleted without it (the admin API cannot delete them).
        let keyring = self.keyring.as_ref();
        // Every endpoint is checked before any is written: a bad one stops the start with nothing
        // of the file written.
        let mut urls = Vec::with_capacity(wanted.len());
        for config in wanted {
            let invalid = |reason: String| WebhookError::InvalidConfigEndpoint { name: config.name.clone(), reason };
            urls.push(
                check_url(&config.url, self.settings.allow_private_addresses).map_err(|e| invalid(e.to_string()))?,
            );
        }
        for (config, url) in wanted.iter().zip(urls) {
            let Some(keyring) = keyring else { return Err(WebhookError::EncryptionNotConfigured) };
            let at = now();
            let named = |e: &WebhookEndpoint| e.config_name.as_deref() == Some(config.name.as_str());
            let old = match stored.iter().find(|e| named(e)) {
                Some(old) => old.clone(),
                None => {
                    let id = WebhookId::generate();
                    let inserted = self
                        .store
                        .insert_webhook(&WebhookEndpoint {
                            id,
                            url: url.clone(),
                            event_types: config.event_types.clone(),
                            enabled: config.enabled,
                            secret: keyring.encrypt(config.key.expose(), &WebhookEndpoint::aad(id)),
                            previous_secret: None,
                            previous_secret_until: None,
                            config_name: Some(config.name.clone()),
                            created_at: at,
                            updated_at: at,
                        })
                        .await?;
                    // A configuration endpoint counts toward no limit.
                    if matches!(inserted, WebhookInsert::Registered(_)) {
                        sync.inserted.push(id);
                        continue;
                    }
                    // Another instance starting beside this one inserted it first, maybe from
                    // another version of the file: its row is brought to this file's below.
                    match self.store.list_webhooks().await?.into_iter().find(|e| named(e)) {
                        Some(theirs) => theirs,
                        None => continue,
                    }
                }
            };
            let mut changed = false;
            if old.url != url || old.event_types != config.event_types || old.enabled != config.enabled {
                let endpoint = WebhookEndpoint {
                    url,
                    event_types: config.event_types.clone(),
                    enabled: config.enabled,
                    updated_at: at,
                    ..old.clone()
                };
                self.store.update_webhook(&endpoint).await?;
                changed = true;
            }
            // Compare-and-swap on the stored ciphertext: a concurrent write (`tessera keys rotate`
            // re-encrypting it, another instance's start-up) makes it read the row again.
            let mut stored_secret = old.secret.clone();
            let mut settled = false;
            for _ in 0..5 {
                let current = keyring.decrypt(&stored_secret, &WebhookEndpoint::aad(old.id)).ok();
                if current.as_deref() == Some(config.key.expose()) {
                    settled = true;
                    break;
                }
                // The operator changed the key: the stored one (if readable) keeps signing for the
                // overlap, as after a rotation through the admin API.
                let previous = current.map(|k| keyring.encrypt(&k, &WebhookEndpoint::previous_aad(old.id)));
                let until = previous.as_ref().map(|_| {
                    at + chrono::TimeDelta::from_std(self.settings.secret_overlap).unwrap_or(chrono::TimeDelta::MAX)
                });
                let secret = keyring.encrypt(config.key.expose(), &WebhookEndpoint::aad(old.id));
                let keys =
                    WebhookKeys { secret: &secret, previous: previous.as_deref(), previous_until: until, now: at };
                if self.store.replace_webhook_secret(old.id, &stored_secret, &keys).await? {
                    (changed, settled) = (true, true);
                    break;
                }
                match self.store.webhook(old.id).await? {
                    Some(now) => stored_secret = now.secret,
                    None => {
                        settled = true;
                        break;
                    }
                }
            }
            if !settled {
                tracing::warn!(webhook = %old.id, name = %config.name, "the configured key of a webhook endpoint was not stored: its row kept changing meanwhile; it is tried again at the next start");
            }
            if changed {
                sync.updated.push(old.id);
            }
        }
        for old in stored.iter().filter(|e| !wanted.iter().any(|w| Some(w.name.as_str()) == e.config_name.as_deref())) {
            if self.store.delete_webhook(old.id).await? {
                sync.deleted.push(old.id);
            }
        }
        Ok(sync)
    }

    /// The keys that sign an endpoint's deliveries at `at`, decrypted: its key, and the previous
    /// one while it overlaps after a rotation. A previous key that does not decrypt is left out
    /// (receivers that moved to the current key still verify), and why is the second value, for
    /// the caller to warn of once rather than at every request; the current one must decrypt.
    pub fn signing_keys(
        &self,
        endpoint: &WebhookEndpoint,
        at: DateTime<Utc>,
    ) -> Result<(Vec<Vec<u8>>, Option<String>), String> {
        let keyring = self.keyring.as_ref().ok_or("no key ring is configured to decrypt the signing key")?;
        let mut keys =
            vec![keyring.decrypt(&endpoint.secret, &WebhookEndpoint::aad(endpoint.id)).map_err(|e| e.to_string())?];
        let mut previous_left_out = None;
        if let (Some(previous), Some(until)) = (&endpoint.previous_secret, endpoint.previous_secret_until)
            && until > at
        {
            match keyring.decrypt(previous, &WebhookEndpoint::previous_aad(endpoint.id)) {
                Ok(key) => keys.push(key),
                Err(error) => previous_left_out = Some(error.chain().to_string()),
            }
        }
        Ok((keys, previous_left_out))
    }

    /// The wait before the next attempt after `attempts` failed ones (1 or more): the base
    /// doubled per earlier failure, at most the maximum, times a random factor in [0.5, 1].
    pub fn retry_delay(&self, attempts: i64) -> Duration {
        let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        let exact =
            self.settings.retry_base.saturating_mul(2u32.saturating_pow(doublings)).min(self.settings.retry_max);
        let jitter = 0.5 + f64::from(crate::crypto::random_bytes::<1>()[0]) / 510.0;
        exact.mul_f64(jitter)
    }
}

/// Checks an endpoint URL ([`crate::domain::endpoint_url`]).
pub fn check_url(value: &str, allow_private: bool) -> Result<String, WebhookError> {
    crate::domain::endpoint_url(value, allow_private).map_err(WebhookError::InvalidUrl)
}

fn check_event_types(types: Vec<String>) -> Result<Vec<String>, WebhookError> {
    let mut out: Vec<String> = Vec::with_capacity(types.len());
    for (i, t) in types.iter().enumerate() {
        let topic = events::topic(t.trim()).ok_or(WebhookError::InvalidEventType(i))?;
        if !out.iter().any(|o| o == topic) {
            out.push(topic.to_owned());
        }
    }
    Ok(out)
}

/// The Standard Webhooks signature of a message: `v1,` and the base64 HMAC-SHA256, under the
/// endpoint's key, of `{id}.{timestamp}.{body}`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut context = hmac::Context::with_key(&key);
    context.update(id.as_bytes());
    context.update(b".");
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    format!("v1,{}", STANDARD.encode(context.sign().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_standard_webhooks_example() {
        // The example of the Standard Webhooks reference libraries.
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://hooks.example.com/tessera", false).is_ok());
        for refused in ["ftp://example.com", "https://user:pw@example.com", "https://example.com/#x", "/relative"] {
            assert!(check_url(refused, true).is_err(), "{refused}");
        }
        for private in ["http://127.0.0.1:8080/", "http://localhost/", "http://[::1]/", "http://10.0.0.1/"] {
            assert!(check_url(private, false).is_err(), "{private}");
            assert!(check_url(private, true).is_ok(), "{private}");
        }
        // The limit is on the URL as stored: 1,000 é are 2,000 bytes typed, 6,000 encoded.
        let long = format!("https://hooks.example.com/{}", "é".repeat(1000));
        assert!(long.len() <= 2048);
        assert!(check_url(&long, false).is_err());
        assert!(check_url("http://168.63.129.16/machine", false).is_err(), "Azure's platform address");
    }
}

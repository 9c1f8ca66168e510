//! Webhook delivery: every instance runs this loop. Each round it fans new outbox events out to
//! the endpoints that want them (one instance at a time), then leases endpoints whose first
//! pending delivery is due and delivers to each in a task of its own, in event order.
//!
//! - At least once: a delivery is marked delivered only after a 2xx; a crash in between sends it
//!   again (same `webhook-id`, for the receiver to deduplicate).
//! - Per-endpoint order: an endpoint's deliveries go one at a time in sequence order; while the
//!   first one waits for a retry, the later ones wait too. A delivery that runs out of retries is
//!   marked failed and no longer holds the others.
//! - Isolation: endpoints are delivered to concurrently (`webhooks.max_concurrent_endpoints`), each
//!   request has a timeout, so a slow or dead endpoint holds only its own queue.
//! - Many instances: an endpoint is leased to one instance at a time (claimed with
//!   `FOR NO KEY UPDATE SKIP LOCKED` on PostgreSQL), so each event reaches each endpoint once in normal
//!   operation; a lease that outlives a crashed instance runs out and another takes over.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use tokio::task::JoinSet;

use crate::domain::is_forbidden_ip;
use crate::domain::{DeliveryJob, WebhookEndpoint, WebhookId};
use crate::error::ErrorChain as _;
use crate::service::webhooks::{Webhooks, sign};
use crate::store::{Attempt, FanOut, Waiting};

/// Events fanned out per transaction.
const FAN_OUT_BATCH: i64 = 500;
/// Fan-out transactions per round of the worker at most, before it claims endpoints again.
const FAN_OUT_BATCHES_PER_ROUND: usize = 10;
/// Deliveries read per endpoint per lease.
const DELIVERY_BATCH: i64 = 100;
/// How long the fan-out waits for a missing outbox sequence number before the events after it,
/// counted from when it first found them waiting. On PostgreSQL a number is taken at insert and
/// seen at commit, so a transaction still running may hold a lower one than an event already
/// visible; one that rolled back leaves the gap for good. Counted on this instance's own clock
/// from what it saw, not from the events' times, which come from the writers' clocks before
/// their transactions waited for a connection or a lock.
pub const OUTBOX_GAP_WAIT: Duration = Duration::from_secs(10);
/// The longest error message kept in the delivery log.
const MAX_ERROR_LEN: usize = 300;

/// How long a stop waits, beyond one request's timeout, for the deliveries under way.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(2);

/// Runs the delivery loop until `stopped` says so (or it is aborted). A stop claims nothing more,
/// lets each delivery task finish the request it is making (and record it) but start no other,
/// and waits for them, at most a request timeout and [`STOP_GRACE`]: their leases are released,
/// so another instance goes on at once instead of waiting for them to run out, and no answered
/// request is left unrecorded (and sent again). `owner` names this process's leases; a loop
/// `restarted` after a panic first gives back those its predecessor held, whose tasks went with
/// it, rather than leave their endpoints to every instance until the leases run out.
pub(super) async fn run(
    webhooks: Webhooks,
    owner: uuid::Uuid,
    restarted: bool,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    if restarted {
        match webhooks.store().release_webhooks_of(owner).await {
            Ok(released) => tracing::info!(released, "gave back the webhook leases of the delivery loop before"),
            Err(error) => {
                tracing::warn!(error = %error.chain(), "cannot give back the webhook leases of the delivery loop before")
            }
        }
    }
    let settings = webhooks.settings().clone();
    // Cheap to build: the trust roots are read at its first handshake, if it ever makes one.
    let client = Arc::new(client(settings.timeout, settings.allow_private_addresses));
    // A lease covers a whole batch of requests that each may take the timeout.
    let lease = settings.timeout.saturating_mul(6).max(Duration::from_secs(30));
    let mut tasks: JoinSet<()> = JoinSet::new();
    // Each endpoint with a task, and whether that task has released its lease (it then only
    // waits to be joined); and the endpoint of each task, so that one that panicked frees its
    // endpoint too.
    let mut busy: HashMap<WebhookId, Arc<AtomicBool>> = HashMap::new();
    let mut endpoints: HashMap<tokio::task::Id, WebhookId> = HashMap::new();
    // The events the fan-out found waiting for a missing outbox number, and since when.
    let mut gap: Option<(Waiting, Instant)> = None;
    let mut interval = tokio::time::interval(settings.poll_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stopped.wait_for(|stop| *stop) => break,
        }
        while let Some(done) = tasks.try_join_next_with_id() {
            let task = match done {
                Ok((task, ())) => task,
                Err(error) => {
                    tracing::error!(error = %error.chain(), "a webhook delivery task failed; its lease runs out");
                    error.id()
                }
            };
            if let Some(id) = endpoints.remove(&task) {
                busy.remove(&id);
            }
        }
        // A backlog (an import's events, say) is worked through a few batches a round, so that
        // deliveries are claimed between them and a stop is not kept waiting.
        for _ in 0..FAN_OUT_BATCHES_PER_ROUND {
            if *stopped.borrow() {
                break;
            }
            // Every gap below the events seen waiting then is as old: all are waited past at once.
            let waited = gap.filter(|(_, since)| since.elapsed() >= OUTBOX_GAP_WAIT).map(|(w, _)| w.up_to);
            match webhooks.store().fan_out_events(FAN_OUT_BATCH, waited, crate::domain::now()).await {
                Ok(done) => {
                    gap = next_gap(&done, gap, Instant::now());
                    if (done.events as i64) < FAN_OUT_BATCH {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %error.chain(), "cannot fan out outbox events to webhook endpoints");
                    break;
                }
            }
        }
        // A stop that came during the fan-out claims nothing more.
        if *stopped.borrow() {
            break;
        }
        let free = settings.max_concurrent_endpoints.saturating_sub(busy.len());
        if free == 0 {
            continue;
        }
        // Read before the claim: the batch's deadline counts from here, not from the task's start.
        let claimed_at = Instant::now();
        let now = Utc::now();
        let until = now + TimeDelta::from_std(lease).unwrap_or(TimeDelta::seconds(60));
        let claimed = match webhooks.store().claim_webhooks(owner, now, until, free as i64).await {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(error = %error.chain(), "cannot claim webhook endpoints");
                continue;
            }
        };
        for endpoint in claimed {
            if let Some(released) = busy.get(&endpoint.id) {
                // Its task released the lease and ended, but has not been joined yet: the claim
                // leased it again with no task to deliver or release. Give the lease back, or the
                // endpoint would wait for it to run out; the next round claims it anew. A task
                // still delivering (its lease ran out under it) keeps the lease the claim renewed:
                // releasing it would let another instance deliver the same events beside it.
                if released.load(Ordering::Acquire)
                    && let Err(error) = webhooks.store().release_webhook(endpoint.id, owner).await
                {
                    tracing::warn!(error = %error.chain(), webhook = %endpoint.id, "cannot release a webhook endpoint's lease");
                }
                continue;
            }
            let released = Arc::new(AtomicBool::new(false));
            busy.insert(endpoint.id, released.clone());
            let (webhooks, client) = (webhooks.clone(), client.clone());
            // No request starts after half the lease: the last one ends by two thirds of it
            // (the lease is at least six timeouts), which leaves a third — at least 10 s — for
            // recording it, releasing the lease, a slow claim and the instances' clocks.
            let deadline = claimed_at + lease / 2;
            let id = endpoint.id;
            let stopping = stopped.clone();
            let task = tasks.spawn(async move {
                deliver_to(&webhooks, &client, &endpoint, deadline, &stopping).await;
                // Marked first: a claim that follows the release at once then sees a task that
                // delivers no more, and gives its lease back (see above), instead of keeping it
                // for no task until it runs out.
                released.store(true, Ordering::Release);
                if let Err(error) = webhooks.store().release_webhook(id, owner).await {
                    tracing::warn!(error = %error.chain(), webhook = %id, "cannot release a webhook endpoint's lease");
                }
            });
            endpoints.insert(task.id(), id);
        }
    }
    let finished = async {
        while let Some(done) = tasks.join_next().await {
            if let Err(error) = done {
                tracing::error!(error = %error.chain(), "a webhook delivery task failed; its lease runs out");
            }
        }
    };
    if tokio::time::timeout(settings.timeout + STOP_GRACE, finished).await.is_err() {
        tracing::warn!("webhook deliveries still under way at shutdown were cut off; their leases run out");
    }
}

/// The gap the fan-out waits behind after a round that answered `done`, and since when: a number
/// that was missing at the first sighting keeps it (the wait is [`OUTBOX_GAP_WAIT`] from then),
/// one above what that sighting saw starts anew, none ends the wait. A round that found another
/// instance fanning out learned nothing, and keeps the wait as it was: with several instances
/// polling, losing the lock now and then must not hold the events behind a gap for ever.
fn next_gap(done: &FanOut, gap: Option<(Waiting, Instant)>, now: Instant) -> Option<(Waiting, Instant)> {
    if done.busy {
        return gap;
    }
    match (done.waiting, gap) {
        // Still a number that was missing at the first sighting (below what it saw waiting): the
        // wait goes on from then, though numbers below it came meanwhile.
        (Some(waiting), Some((seen, since))) if (seen.missing..seen.up_to).contains(&waiting.missing) => {
            Some((seen, since))
        }
        (Some(waiting), _) => Some((waiting, now)),
        (None, _) => None,
    }
}

/// The outbound client: no redirects, no proxy from the environment, the timeout; when private
/// addresses are refused, names are resolved through [`PublicOnly`], so a name that resolves to
/// a private address (or is re-pointed to one after registration) is never connected to.
fn client(timeout: Duration, allow_private: bool) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .tls_backend_preconfigured(crate::upstream::tls::client_config())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("tessera-webhooks/", env!("CARGO_PKG_VERSION")));
    let builder = if allow_private { builder } else { builder.dns_resolver(Arc::new(PublicOnly)) };
    builder.build().expect("the webhook client configuration is valid")
}

/// A resolver that drops loopback, private and other non-public addresses.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<_> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.filter(|addr| !is_forbidden_ip(addr.ip())).collect();
            if addrs.is_empty() {
                return Err("the host has no public address (webhooks.allow_private_addresses is off)".into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The `last_error` of a delivery that waited behind earlier ones past
/// `webhooks.give_up_after_seconds` and failed without being sent.
pub const NOT_SENT_PAST_GIVE_UP: &str = "not sent: held back past its time behind an endpoint that is not answering";

/// Delivers an endpoint's due deliveries in sequence order until one fails, none is left, or the
/// lease nears its end.
///
/// A signing key that cannot be decrypted (the key ring lost its key id) fails the first due
/// delivery as an attempt would, with the reason in the delivery log: it backs off and in the
/// end fails for good, rather than being claimed and given back at every poll.
async fn deliver_to(
    webhooks: &Webhooks,
    client: &reqwest::Client,
    endpoint: &WebhookEndpoint,
    deadline: Instant,
    stopping: &tokio::sync::watch::Receiver<bool>,
) {
    // The keys are those of the endpoint as it is at each request, not as it was leased: a
    // rotation during a batch adds the new key's signature from the next request on, and an
    // overlap that ends drops the previous key's.
    // A previous key left out is warned of once a run, not at every request of the overlap.
    let mut warned = false;
    let mut keys_now = |endpoint: &WebhookEndpoint| {
        let (keys, previous_left_out) = webhooks.signing_keys(endpoint, Utc::now()).map_err(|error| {
            tracing::error!(webhook = %endpoint.id, error, "cannot decrypt a webhook endpoint's signing key");
            format!("not sent: the signing key cannot be decrypted ({error})")
        })?;
        if let Some(error) = previous_left_out
            && !std::mem::replace(&mut warned, true)
        {
            tracing::warn!(
                webhook = %endpoint.id, error,
                "the previous signing key does not decrypt; signing with the current one alone"
            );
        }
        Ok::<_, String>(keys)
    };
    // Why the rest of the overdue backlog fails unsent, once known in this run: an overdue
    // delivery's one request failed (the endpoint is down), or a delivery failed for good because
    // its signing key cannot be decrypted (so that a key gone for good fails a backlog in one
    // series of attempts, not one series a delivery).
    let mut backlog_fails: Option<String> = None;
    // Batch after batch while the lease lasts: a backlog drains at the endpoint's pace, not at
    // one batch per poll interval.
    loop {
        let jobs = match webhooks.store().pending_deliveries(endpoint.id, DELIVERY_BATCH).await {
            Ok(jobs) => jobs,
            Err(error) => {
                tracing::warn!(error = %error.chain(), webhook = %endpoint.id, "cannot read pending webhook deliveries");
                return;
            }
        };
        let full = jobs.len() as i64 >= DELIVERY_BATCH;
        for job in jobs {
            if job.next_attempt_at > Utc::now() || Instant::now() >= deadline || *stopping.borrow() {
                return;
            }
            let current = match webhooks.store().webhook(endpoint.id).await {
                Ok(Some(current)) if current.enabled && current.url == endpoint.url => current,
                // Disabled, deleted or given another URL: nothing more goes to it as leased.
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(error = %error.chain(), webhook = %endpoint.id, "cannot read a webhook endpoint");
                    return;
                }
            };
            let after = TimeDelta::from_std(webhooks.settings().give_up_after).unwrap_or(TimeDelta::MAX);
            // The series of attempts starts with its first request (`scheduled_at` is when it was
            // queued until then, and that request's time after it).
            let started = if job.attempts == 0 { Utc::now() } else { job.scheduled_at };
            let give_up = started.checked_add_signed(after).unwrap_or(DateTime::<Utc>::MAX_UTC);
            // Held back, untried, for longer than a series lasts (behind earlier deliveries, or
            // while the workers were down): one request, no retries.
            let overdue =
                job.attempts == 0 && job.scheduled_at.checked_add_signed(after).is_some_and(|due| Utc::now() >= due);
            // Failed for good without a request: queued before the endpoint's event types were
            // narrowed, or overdue behind an endpoint whose last overdue request failed in this
            // run (so that a backlog behind a dead endpoint drains at once, not at one timeout a
            // delivery, while a slow but healthy one gets every event).
            let unsent = if !current.wants(&job.topic) {
                Some(format!("not sent: the endpoint no longer subscribes to {}", job.topic))
            } else {
                backlog_fails.clone().filter(|_| overdue)
            };
            let final_without_request = unsent.is_some();
            // The reads above may have waited: no request starts after half the lease, when
            // another instance may take the endpoint over.
            if !final_without_request && Instant::now() >= deadline {
                return;
            }
            // A signing key that cannot be decrypted is this side's fault, not the endpoint's:
            // retried (an overdue delivery too, its series starting now) until the key is back or
            // its time runs out, and no sign that the endpoint is down.
            let mut unsigned = false;
            let (status, error) = match unsent {
                Some(unsent) => (None, Some(unsent)),
                None => match keys_now(&current) {
                    Ok(keys) => send(client, endpoint, &keys, &job, webhooks.settings().allow_private_addresses).await,
                    Err(why) => {
                        unsigned = true;
                        (None, Some(why))
                    }
                },
            };
            let at = crate::domain::now();
            // Retried until its time is up, the last retry at that time at the latest.
            let retry_at =
                error.as_ref().filter(|_| !final_without_request && (!overdue || unsigned) && at < give_up).map(|_| {
                    let wait = TimeDelta::from_std(webhooks.retry_delay(job.attempts + 1)).unwrap_or(TimeDelta::MAX);
                    at.checked_add_signed(wait).map_or(give_up, |next| next.min(give_up))
                });
            let failed = error.is_some();
            if failed && overdue && !final_without_request && !unsigned {
                backlog_fails = Some(NOT_SENT_PAST_GIVE_UP.to_owned());
            }
            if unsigned && retry_at.is_none() {
                backlog_fails = error.clone();
            }
            let result = match (failed, retry_at) {
                (false, _) => "delivered",
                (true, Some(_)) => "retry",
                (true, None) => "failed",
            };
            // Attempts are requests: a delivery failed for good unsent (the backlog behind an
            // overdue one, an event no longer wanted, a key that cannot be read) is `dropped`,
            // and one put off unsent (a key to retry with) counts nothing. Counted once recorded
            // (below): an outcome the endpoint's change meanwhile discarded is no outcome.
            let counted = match (!final_without_request && !unsigned, retry_at) {
                (true, _) => Some(result),
                (false, None) => Some("dropped"),
                (false, Some(_)) => None,
            };
            match (&error, retry_at) {
                (None, _) => tracing::debug!(webhook = %endpoint.id, event = %job.event_id, "webhook delivered"),
                (Some(e), Some(_)) => {
                    tracing::info!(webhook = %endpoint.id, event = %job.event_id, attempt = job.attempts + 1, error = %e, "webhook delivery failed; will retry")
                }
                (Some(e), None) => {
                    tracing::warn!(webhook = %endpoint.id, event = %job.event_id, attempts = job.attempts + 1, error = %e, "webhook delivery failed for good")
                }
            }
            let attempt = Attempt { at, status, error, retry_at, scheduled_at: job.scheduled_at };
            match webhooks.store().record_attempt(endpoint, job.id, &attempt).await {
                Ok(true) => {
                    if let Some(result) = counted {
                        crate::observability::record_webhook_attempt(endpoint.id, result);
                    }
                }
                Ok(false) => {
                    // Disabled, deleted, given another URL or replayed while this batch was under
                    // way: nothing more goes to the endpoint as it was leased.
                    tracing::debug!(webhook = %endpoint.id, "the endpoint or its deliveries changed; delivery stops");
                    return;
                }
                Err(error) => {
                    tracing::warn!(error = %error.chain(), webhook = %endpoint.id, "cannot record a webhook delivery attempt");
                    return;
                }
            }
            // A retry holds the endpoint's later events back; a failure for good does not.
            if failed && attempt.retry_at.is_some() {
                return;
            }
        }
        if !full {
            return;
        }
    }
}

/// The body of a delivery: the event's type, time and payload (Standard Webhooks' envelope).
pub fn body(job: &DeliveryJob) -> Vec<u8> {
    let body = json!({
        "type": job.topic,
        "timestamp": job.event_created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "data": job.payload,
    });
    serde_json::to_vec(&body).expect("a JSON value serialises")
}

/// Sends one delivery, signed with each of `keys`: the status when the endpoint answered, and an error unless it was a 2xx.
async fn send(
    client: &reqwest::Client,
    endpoint: &WebhookEndpoint,
    keys: &[Vec<u8>],
    job: &DeliveryJob,
    allow_private: bool,
) -> (Option<i64>, Option<String>) {
    // The registration's checks again, for an endpoint stored while private addresses (and
    // plain http) were allowed: and IP literals are not resolved, so the resolver cannot refuse
    // them.
    if let Err(refused) = crate::domain::endpoint_url(&endpoint.url, allow_private) {
        return (None, Some(refused));
    }
    let body = body(job);
    let id = job.event_id.to_string();
    let timestamp = Utc::now().timestamp();
    // During a rotation's overlap, one signature per key, space-separated (Standard Webhooks).
    let signature = keys.iter().map(|key| sign(key, &id, timestamp, &body)).collect::<Vec<_>>().join(" ");
    let sent = client
        .post(&endpoint.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(response) if response.status().is_success() => (Some(i64::from(response.status().as_u16())), None),
        Ok(response) => {
            let status = response.status();
            let error = if status.is_redirection() {
                format!("answered {status}; redirects are not followed")
            } else {
                format!("answered {status}")
            };
            (Some(i64::from(status.as_u16())), Some(error))
        }
        Err(error) => (None, Some(describe(error))),
    }
}

/// A request error without its URL (which may carry a credential), with its causes.
fn describe(error: reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut text = kind.to_owned();
    let error = error.without_url();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if text.len() > MAX_ERROR_LEN {
        let mut cut = MAX_ERROR_LEN;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_is_waited_for_from_its_first_sighting_whoever_fans_out_meanwhile() {
        let start = Instant::now();
        let later = start + Duration::from_secs(3);
        let waiting = |missing, up_to| Some(Waiting { missing, up_to });
        let round = |waiting, busy| FanOut { events: 0, waiting, busy };
        let seen = next_gap(&round(waiting(7, 12), false), None, start);
        assert_eq!(seen, Some((Waiting { missing: 7, up_to: 12 }, start)));
        let again = round(waiting(7, 20), false);
        assert_eq!(next_gap(&again, seen, later), seen, "the same gap keeps its first sighting, and what it saw");
        assert_eq!(next_gap(&round(None, true), seen, later), seen, "another instance's round changes nothing");
        let filled = round(waiting(9, 20), false);
        assert_eq!(next_gap(&filled, seen, later), seen, "7 came, 9 was missing then too: the same wait");
        let other = next_gap(&round(waiting(13, 20), false), seen, later);
        assert_eq!(other, Some((Waiting { missing: 13, up_to: 20 }, later)), "a gap above what it saw starts anew");
        assert_eq!(next_gap(&round(None, false), seen, later), None, "no gap: no wait");
    }
}

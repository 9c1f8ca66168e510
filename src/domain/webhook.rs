//! Webhook endpoints and their deliveries (see `service::webhooks` and `worker::webhooks`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use chrono::{DateTime, Utc};
use url::Url;

use super::{EventId, WebhookId};

/// A registered webhook endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// Its id.
    pub id: WebhookId,
    /// Where events are POSTed.
    pub url: String,
    /// The topics it receives; empty: every topic.
    pub event_types: Vec<String>,
    /// Whether events are delivered to it.
    pub enabled: bool,
    /// The key-ring ciphertext of its signing key, bound to [`WebhookEndpoint::aad`].
    pub secret: Vec<u8>,
    /// The key-ring ciphertext of the signing key it had before its last rotation, bound to
    /// [`WebhookEndpoint::previous_aad`]: it signs beside `secret` until `previous_secret_until`.
    pub previous_secret: Option<Vec<u8>>,
    /// When the previous key stops signing.
    pub previous_secret_until: Option<DateTime<Utc>>,
    /// The name of a `[[webhooks.endpoints]]` entry of the configuration file, which manages the
    /// endpoint (the admin API cannot change it); `None` for endpoints of the admin API.
    pub config_name: Option<String>,
    /// Registration time: it receives the events written from then on.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl WebhookEndpoint {
    /// Whether the endpoint receives events of `topic`.
    pub fn wants(&self, topic: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == topic)
    }

    /// The associated data binding a signing key's ciphertext to its table, row and column (the
    /// form of `StoredSecret::aad`).
    pub fn aad(id: WebhookId) -> Vec<u8> {
        format!("webhook_endpoints|{id}|secret").into_bytes()
    }

    /// The associated data of the previous signing key's ciphertext.
    pub fn previous_aad(id: WebhookId) -> Vec<u8> {
        format!("webhook_endpoints|{id}|previous_secret").into_bytes()
    }
}

impl fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a credential in its query, and the secret is a secret even encrypted.
        f.debug_struct("WebhookEndpoint")
            .field("id", &self.id)
            .field("event_types", &self.event_types)
            .field("enabled", &self.enabled)
            .field("config_name", &self.config_name)
            .finish_non_exhaustive()
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not delivered yet: waiting for its first attempt, or for a retry.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Every attempt failed until retries ran out.
    Failed,
}

impl DeliveryState {
    /// The stored and serialised form.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    /// Parses the stored form.
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "pending" => DeliveryState::Pending,
            "delivered" => DeliveryState::Delivered,
            "failed" => DeliveryState::Failed,
            _ => return None,
        })
    }
}

/// One event for one endpoint, with its delivery history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// The delivery's id.
    pub id: uuid::Uuid,
    /// The endpoint.
    pub endpoint_id: WebhookId,
    /// The event (also the `webhook-id` header).
    pub event_id: EventId,
    /// The event's sequence number: an endpoint receives its events in this order.
    pub event_seq: i64,
    /// The event's topic.
    pub topic: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made since `scheduled_at`.
    pub attempts: i64,
    /// Start of the current series of attempts: its first request; until then, when it was
    /// queued (created, replayed, or its endpoint enabled again).
    pub scheduled_at: DateTime<Utc>,
    /// When the next attempt is due (pending deliveries).
    pub next_attempt_at: DateTime<Utc>,
    /// The last attempt, if any.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// The HTTP status of the last attempt, when the endpoint answered.
    pub last_status: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A pending delivery with what sending it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryJob {
    /// The delivery's id.
    pub id: uuid::Uuid,
    /// The event.
    pub event_id: EventId,
    /// The event's sequence number.
    pub event_seq: i64,
    /// The event's topic.
    pub topic: String,
    /// The event's payload.
    pub payload: serde_json::Value,
    /// When the event was written.
    pub event_created_at: DateTime<Utc>,
    /// Attempts made since `scheduled_at`.
    pub attempts: i64,
    /// Start of the current series of attempts (see [`WebhookDelivery::scheduled_at`]).
    pub scheduled_at: DateTime<Utc>,
    /// When the next attempt is due.
    pub next_attempt_at: DateTime<Utc>,
}

/// The longest endpoint URL.
pub const MAX_URL_LEN: usize = 2048;

/// Checks an endpoint URL: absolute `http` or `https`, a host, no user info or fragment, at most
/// [`MAX_URL_LEN`] bytes; unless private addresses are allowed, `https` only (events carry
/// emails and names, which plain `http` would show to every network on the way; the signature
/// protects their integrity only) and no IP literal or `localhost` name that is not public
/// (names are checked again when resolved, at every delivery).
pub fn endpoint_url(value: &str, allow_private: bool) -> Result<String, String> {
    let value = value.trim();
    if value.len() > MAX_URL_LEN {
        return Err(format!("at most {MAX_URL_LEN} bytes"));
    }
    let url = Url::parse(value).map_err(|_| "not an absolute URL".to_owned())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("the scheme must be http or https".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("user info is not allowed".into());
    }
    if url.fragment().is_some() {
        return Err("a fragment is not allowed".into());
    }
    let Some(host) = url.host() else {
        return Err("a host is required".into());
    };
    // The limit holds for the URL as stored: percent-encoding a path can triple it.
    if url.as_str().len() > MAX_URL_LEN {
        return Err(format!("at most {MAX_URL_LEN} bytes once percent-encoded"));
    }
    if !allow_private {
        if url.scheme() == "http" {
            return Err("the scheme must be https (plain http only with webhooks.allow_private_addresses, for \
                        an endpoint inside your network)"
                .into());
        }
        let refused = match host {
            url::Host::Ipv4(ip) => is_forbidden_ip(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => is_forbidden_ip(IpAddr::V6(ip)),
            url::Host::Domain(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                name == "localhost" || name.ends_with(".localhost")
            }
        };
        if refused {
            return Err("loopback, private, link-local and other non-public addresses are refused \
                 (webhooks.allow_private_addresses)"
                .into());
        }
    }
    Ok(url.to_string())
}

/// Whether an address is one a webhook must not reach while private addresses are refused:
/// loopback, private (RFC 1918, unique-local), link-local, shared (CGNAT), unspecified,
/// broadcast, multicast, documentation, benchmarking and reserved ranges, and Azure's platform
/// address (168.63.129.16, which `169.254.0.0/16` does not cover); in IPv6 also
/// site-local, the IETF protocol assignments (`2001::/23`: Teredo, benchmarking, ORCHID),
/// NAT64, discard and SRv6, and an IPv4 address carried inside IPv6 (mapped, translated,
/// compatible or 6to4) is judged as that IPv4 address.
pub fn is_forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240
                // Azure's platform address (the WireServer): metadata, not a receiver.
                || v4.octets() == [168, 63, 129, 16]
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            // IPv4 carried inside IPv6 is judged as that IPv4 address: mapped (`::ffff:a.b.c.d`)
            // and compatible (`::a.b.c.d`, deprecated but still routed by some stacks), which std
            // decodes (`::1` and `::` are IPv6's own), translated (`::ffff:0:a.b.c.d`, SIIT) and
            // 6to4 (`2002:aabb:ccdd::/48`).
            let ipv4 = |high: u16, low: u16| IpAddr::V4(Ipv4Addr::from((u32::from(high) << 16) | u32::from(low)));
            if !v6.is_loopback()
                && !v6.is_unspecified()
                && let Some(v4) = v6.to_ipv4()
            {
                return is_forbidden_ip(IpAddr::V4(v4));
            }
            if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
                return is_forbidden_ip(ipv4(s[6], s[7]));
            }
            if s[0] == 0x2002 {
                return is_forbidden_ip(ipv4(s[1], s[2]));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                // IETF protocol assignments (Teredo, which tunnels to addresses it hides,
                // benchmarking, ORCHID, anycast services): no webhook lives there.
                || (s[0] == 0x2001 && s[1] < 0x200)
                || (s[0] & 0xfff0) == 0x3ff0 // documentation (3fff::/20)
                || s[0] == 0x5f00 // segment routing (SRv6) identifiers
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64, well-known and local-use
                || (s[0] == 0x100 && s[1..4] == [0; 3]) // discard
        }
    }
}

#[cfg(test)]
mod address_tests {
    use super::*;

    #[test]
    fn plain_http_is_refused_unless_private_addresses_are_allowed() {
        let refused = endpoint_url("http://hooks.example.com/tessera", false).unwrap_err();
        assert!(refused.contains("https"), "{refused}");
        assert!(endpoint_url("https://hooks.example.com/tessera", false).is_ok());
        assert!(endpoint_url("http://hooks.internal.example/tessera", true).is_ok());
        assert!(endpoint_url("http://10.0.0.5/tessera", true).is_ok());
    }

    #[test]
    fn private_and_loopback_addresses_are_forbidden() {
        let v4 = ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0"];
        for ip in v4.iter().chain(&["168.63.129.16"]) {
            assert!(is_forbidden_ip(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["::1", "fc00::1", "fe80::1", "::ffff:127.0.0.1", "::"] {
            assert!(is_forbidden_ip(ip.parse().unwrap()), "{ip}");
        }
        // IPv4 inside IPv6, and the IPv6 ranges that hide or tunnel to other addresses.
        let carried = ["::127.0.0.1", "::10.0.0.1", "2002:a00:1::", "2002:7f00:1::1", "2002:a9fe:a9fe::"];
        let hiding = ["fec0::1", "2001::1", "2001:0:4136:e378::1", "64:ff9b:1::a00:1", "100::1", "2001:2::1"];
        let special = ["2001:1::1", "2001:20::1", "2001:4:112::1", "3fff::1", "5f00::1", "::ffff:0:a00:1"];
        for ip in carried.into_iter().chain(hiding).chain(special) {
            assert!(is_forbidden_ip(ip.parse().unwrap()), "{ip}");
        }
        let public = ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::8.8.8.8", "2002:808:808::1", "2001:4860::8888"];
        for ip in public.into_iter().chain(["::ffff:0:808:808", "2001:200::1"]) {
            assert!(!is_forbidden_ip(ip.parse().unwrap()), "{ip}");
        }
    }
}

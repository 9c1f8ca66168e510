//! `tessera-bench caches`: the memory of each validation cache at its entry limit.
//!
//! Each measurement runs in a fresh child process (freed memory is not given back to the system,
//! so one measurement would skew the next), which reads its resident set size (`VmRSS` in
//! `/proc/self/status`), fills a cache with `--entries` distinct entries of realistic size, reads
//! it again, lets every entry expire, offers as many new entries again and reads it a last time.
//! Beside each cache: a plain `HashMap` of the same keys and values (what the entries weigh
//! without any cache machinery), measured the same way. Nothing here asserts: the figures are for
//! the README's bound per cache.

use std::collections::HashMap;
use std::hash::Hash;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use tessera::cache::TtlCache;
use tessera::domain::{
    DisplayName, Email, IdentityId, Issuer, Principal, Role, Slug, Subject, TeamId, TeamRole, User, UserId,
};
use tessera::upstream::tokens::{CachedToken, TokenCache, VerifiedToken};

/// How long the filled entries live: long enough to fill the cache and read its size, short
/// enough to wait for.
const LIFETIME: Duration = Duration::from_secs(3);

/// Options of `tessera-bench caches`.
#[derive(Debug, Clone, clap::Args)]
pub struct CachesArgs {
    /// Entries per cache: the limit to measure at (`cache.max_entries`).
    #[arg(long, default_value_t = 100_000)]
    pub entries: usize,
    /// One measurement, in this process (what the parent runs in each child).
    #[arg(long, value_enum, hide = true)]
    pub case: Option<Case>,
    /// Not used: the caches need no database (accepted so that `scripts/bench caches` works).
    #[arg(long, hide = true, value_name = "URL")]
    pub postgres: Option<String>,
}

/// One measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Case {
    /// The verified-token cache.
    Tokens,
    /// The token entries in a plain `HashMap`.
    TokensMap,
    /// The principal cache.
    Principals,
    /// The principal entries in a plain `HashMap`.
    PrincipalsMap,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Tokens => "tokens",
            Case::TokensMap => "tokens-map",
            Case::Principals => "principals",
            Case::PrincipalsMap => "principals-map",
        }
    }
}

/// Runs the benchmark (or, with `--case`, one measurement) and prints its report.
pub async fn run(args: CachesArgs) -> anyhow::Result<()> {
    if args.entries == 0 {
        bail!("--entries must be positive");
    }
    if let Some(case) = args.case {
        let figures = tokio::task::spawn_blocking(move || measure(case, args.entries)).await??;
        println!(
            "{} {} {} {} {}",
            figures.held, figures.full_kib, figures.after_expiry, figures.refilled_kib, figures.fill_ms
        );
        return Ok(());
    }
    println!(
        "tessera-bench caches: {} distinct entries per cache, each measurement in a fresh process; \
         RSS growth per entry at the limit, then after every entry expired and as many new ones arrived",
        args.entries
    );
    println!(
        "{:<15} {:>8} {:>8} {:>10} {:>10} {:>12} {:>10} {:>10}",
        "cache", "held", "fill ms", "RSS MiB", "B/entry", "after expiry", "refill MiB", "cache/map"
    );
    let exe = std::env::current_exe().context("locate tessera-bench")?;
    for (cache, map) in [(Case::Tokens, Case::TokensMap), (Case::Principals, Case::PrincipalsMap)] {
        let map_figures = child(&exe, map, args.entries)?;
        let cache_figures = child(&exe, cache, args.entries)?;
        for (case, figures) in [(cache, &cache_figures), (map, &map_figures)] {
            let per_entry = figures.full_kib as f64 * 1024.0 / args.entries as f64;
            let ratio = if case == cache {
                format!("{:.2}x", cache_figures.full_kib as f64 / map_figures.full_kib.max(1) as f64)
            } else {
                String::new()
            };
            println!(
                "{:<15} {:>8} {:>8} {:>10.1} {:>10.0} {:>12} {:>10.1} {:>10}",
                case.name(),
                figures.held,
                figures.fill_ms,
                figures.full_kib as f64 / 1024.0,
                per_entry,
                figures.after_expiry,
                figures.refilled_kib as f64 / 1024.0,
                ratio
            );
        }
    }
    println!(
        "(held: entries counted once filled; after expiry: entries left {} s later; refill MiB: RSS growth over the \
         start once as many new entries arrived after the expiry, i.e. whether expired memory is reused)",
        LIFETIME.as_secs()
    );
    Ok(())
}

/// What one measurement found.
struct Figures {
    held: usize,
    full_kib: u64,
    after_expiry: usize,
    refilled_kib: u64,
    fill_ms: u128,
}

fn child(exe: &std::path::Path, case: Case, entries: usize) -> anyhow::Result<Figures> {
    let output = Command::new(exe)
        .args(["caches", "--entries", &entries.to_string(), "--case", case.name()])
        .output()
        .with_context(|| format!("run the {} measurement", case.name()))?;
    if !output.status.success() {
        bail!("the {} measurement failed: {}", case.name(), String::from_utf8_lossy(&output.stderr));
    }
    let text = String::from_utf8(output.stdout).context("measurement output")?;
    let numbers: Vec<u128> = text.split_whitespace().map(str::parse).collect::<Result<_, _>>().context("parse")?;
    let [held, full_kib, after_expiry, refilled_kib, fill_ms] = numbers[..] else {
        bail!("unexpected measurement output {text:?}");
    };
    Ok(Figures {
        held: held as usize,
        full_kib: full_kib as u64,
        after_expiry: after_expiry as usize,
        refilled_kib: refilled_kib as u64,
        fill_ms,
    })
}

/// The storage being measured: the real cache, or a plain map of the same entries.
trait Storage<K, V> {
    fn put(&mut self, key: K, value: V, until: Instant, now: Instant);
    fn count(&mut self, now: Instant) -> usize;
}

impl<K: Eq + Hash + Send + Sync + 'static, V: Clone + Send + Sync + 'static> Storage<K, V> for TtlCache<K, V> {
    fn put(&mut self, key: K, value: V, until: Instant, now: Instant) {
        self.insert(key, value, until, now);
    }

    fn count(&mut self, _now: Instant) -> usize {
        self.len()
    }
}

impl<K: Eq + Hash, V> Storage<K, V> for HashMap<K, (V, Instant)> {
    fn put(&mut self, key: K, value: V, until: Instant, _now: Instant) {
        self.insert(key, (value, until));
    }

    fn count(&mut self, now: Instant) -> usize {
        // A sweep, so that the refill can reuse the memory as the cache does.
        self.retain(|_, (_, until)| now < *until);
        self.len()
    }
}

fn measure(case: Case, entries: usize) -> anyhow::Result<Figures> {
    match case {
        Case::Tokens => fill(TokenCache::new(entries), entries, token),
        Case::TokensMap => fill(HashMap::new(), entries, token),
        Case::Principals => fill(TtlCache::new(entries), entries, principal),
        Case::PrincipalsMap => fill(HashMap::new(), entries, principal),
    }
}

/// Fills `store` with `entries` entries made by `make`, lets them expire, fills it again.
fn fill<K, V, S: Storage<K, V>>(mut store: S, entries: usize, make: fn(usize) -> (K, V)) -> anyhow::Result<Figures> {
    let before = resident_kib()?;
    let started = Instant::now();
    let until = started + LIFETIME;
    for i in 0..entries {
        let (key, value) = make(i);
        store.put(key, value, until, Instant::now());
    }
    let fill_ms = started.elapsed().as_millis();
    let held = store.count(Instant::now());
    let full_kib = resident_kib()?.saturating_sub(before);
    std::thread::sleep(until.saturating_duration_since(Instant::now()) + Duration::from_millis(500));
    let after_expiry = store.count(Instant::now());
    let refill_until = Instant::now() + LIFETIME;
    for i in entries..2 * entries {
        let (key, value) = make(i);
        store.put(key, value, refill_until, Instant::now());
    }
    store.count(Instant::now());
    let refilled_kib = resident_kib()?.saturating_sub(before);
    Ok(Figures { held, full_kib, after_expiry, refilled_kib, fill_ms })
}

/// A typical subject: a UUID, as Keycloak and many others issue.
fn subject(i: usize) -> String {
    uuid::Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0000 | i as u128).to_string()
}

fn issuer() -> Issuer {
    Issuer::parse("https://auth.example.com/realms/main").expect("issuer")
}

/// A verified token as the cache holds it: its SHA-256 digest and its claims (without the key
/// that verified them, a handle and a digest in the product).
fn token(i: usize) -> ([u8; 32], CachedToken) {
    let mut digest = [0u8; 32];
    digest[..8].copy_from_slice(&(i as u64).to_le_bytes());
    digest[8..16].copy_from_slice(&(i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    let token = VerifiedToken {
        issuer: issuer(),
        provider: "main".into(),
        jit: true,
        subject: Subject::parse(&subject(i)).expect("subject"),
        email: Some(Email::parse(&format!("user.{i:06}@example.com")).expect("email")),
        email_verified: true,
        name: DisplayName::parse_optional(Some(&format!("User Number {i:06}"))).expect("name"),
        expires_at: Utc::now() + chrono::Duration::minutes(5),
        audiences: vec!["api".into()],
        acts_on_api: true,
    };
    (digest, CachedToken::unkeyed(Arc::new(token)))
}

/// A resolved identity as the cache holds it: a user with one (default) team.
fn principal(i: usize) -> ((Issuer, Subject), Arc<Principal>) {
    let now = Utc::now();
    let principal = Principal {
        identity_id: IdentityId::generate(),
        last_seen_at: now,
        user: User {
            id: UserId::generate(),
            email: Some(format!("user.{i:06}@example.com")),
            email_verified: true,
            name: Some(format!("User Number {i:06}")),
            disabled: false,
            created_at: now,
            updated_at: now,
        },
        teams: vec![TeamRole {
            id: TeamId::generate(),
            slug: Slug::parse(&format!("user-number-{i:06}s-team")).expect("slug"),
            role: Role::Owner,
        }],
    };
    ((issuer(), Subject::parse(&subject(i)).expect("subject")), Arc::new(principal))
}

/// This process's resident set size, in KiB.
fn resident_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")
}

//! Asking the fleet-wide GCRA in Redis ([`super::limiter`]) before a request.
//!
//! With `--host-pause` (on by default), a 429 or 503 with `Retry-After` pauses its host for
//! every fetcher (capped at the last `--retry-delays` step), whether or not the host has a
//! rate; each fetcher reads the paused hosts as its session starts and every
//! [`PAUSE_REFRESH`], so a host without a rate costs a Redis call per request only while
//! it may be paused. With
//! `--host-aimd`, a 429 from a host that has a rate lowers that rate fleet-wide
//! ([`super::limiter::Aimd`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use tributary::policy::Failure;
use tributary::runtime::metrics::metrics;
use tributary::store::StoreError;

use super::limiter::{Admission, HostLimiter, Turn};
use super::rates::{Rate, RateTable};

/// What the fetcher does with a task before downloading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Fetch now (after any short reserved wait, already slept).
    Fetch,
    /// The host has no slot soon: put the task aside in a delay queue for `wait`, carrying
    /// `turn` (its place in the host's queue) for when it asks again.
    Defer { wait: Duration, turn: Option<Turn> },
}

/// How late a task may send for its slot (half an interval when that is longer): a later
/// one gives the slot up. At 50/s, 25 ms of lateness adds at most 1.25 requests to any
/// second an origin counts.
const MIN_LATENESS: Duration = Duration::from_millis(25);

/// Slots a task may miss by waking late before it is deferred to the broker.
const MAX_STALE_SLOTS: usize = 4;

/// How often a fetcher reads which hosts are paused: a pause set by another fetcher
/// reaches this one within about this long.
pub const PAUSE_REFRESH: Duration = Duration::from_millis(200);

/// This process's view of the hosts paused fleet-wide ([`HostLimits::watch_pauses`]), so
/// a host without a rate costs a Redis call only while it may be paused.
#[derive(Debug, Default)]
pub struct PausedHosts(RwLock<Paused>);

/// The hosts paused fleet-wide as last read, and the pauses this process set itself (until
/// when, on this machine's clock), which count at once, whatever a read begun before them
/// says.
#[derive(Debug, Default)]
struct Paused {
    fleet: HashSet<String>,
    own: HashMap<String, Instant>,
}

impl PausedHosts {
    fn view(&self) -> std::sync::RwLockReadGuard<'_, Paused> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn edit(&self) -> std::sync::RwLockWriteGuard<'_, Paused> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    fn contains(&self, host: &str) -> bool {
        let view = self.view();
        view.fleet.contains(host)
            || view
                .own
                .get(host)
                .is_some_and(|until| *until > Instant::now())
    }

    /// No host is paused (as far as this process knows).
    fn is_empty(&self) -> bool {
        let view = self.view();
        let now = Instant::now();
        view.fleet.is_empty() && view.own.values().all(|until| *until <= now)
    }

    fn insert(&self, host: &str, pause: Duration) {
        self.edit()
            .own
            .insert(host.to_string(), Instant::now() + pause);
    }

    fn replace(&self, hosts: Vec<String>) {
        let mut paused = self.edit();
        paused.fleet = hosts.into_iter().collect();
        let now = Instant::now();
        paused.own.retain(|_, until| *until > now);
    }
}

/// The shortest Redis round trip seen lately: the part of a round trip that is the
/// network, not a busy machine. It follows a slower network up slowly (1/64 of the way per
/// sample).
#[derive(Debug)]
pub struct RttFloor(AtomicU64);

impl Default for RttFloor {
    fn default() -> Self {
        Self(AtomicU64::new(u64::MAX))
    }
}

impl RttFloor {
    /// Takes one round trip into account and returns the floor.
    fn observe(&self, rtt: Duration) -> Duration {
        let sample = rtt.as_micros().min(u128::from(u64::MAX)) as u64;
        let floor = self.0.load(Ordering::Relaxed);
        let floor = if sample <= floor {
            sample
        } else {
            floor + (sample - floor) / 64
        };
        self.0.store(floor, Ordering::Relaxed);
        Duration::from_micros(floor)
    }
}

/// The rate table bound to the fleet-wide limiter.
#[derive(Debug, Clone)]
pub struct HostLimits {
    pub table: RateTable,
    pub limiter: HostLimiter,
    /// The longest a fetcher sleeps for a slot while holding the task (`--host-wait-max`).
    pub max_wait: Duration,
    /// With `--host-pause`: the longest pause a `Retry-After` may set.
    pub max_pause: Option<Duration>,
    /// With `--host-pause`: the hosts paused now, as last read.
    pub paused: Arc<PausedHosts>,
    /// The network's share of a Redis round trip, not counted as lateness.
    pub rtt_floor: Arc<RttFloor>,
}

impl HostLimits {
    /// Waits for a slot of the task's host if the wait is short; says how long otherwise,
    /// and the task's turn to carry. `turn` is the one it carries from an earlier deferral.
    /// A host without a rate is fetched at once (unless it is paused).
    pub async fn admit(&self, host: &str, mut turn: Option<Turn>) -> Result<Admit, StoreError> {
        // The usual case, no rates and no pause.
        if self.table.is_empty() && (self.max_pause.is_none() || self.paused.is_empty()) {
            return Ok(Admit::Fetch);
        }
        let rate = self.table.rate_of(host);
        // The script checks the pause of a host it is asked about; a host without a rate
        // is asked about only while it may be paused.
        if rate.is_none() && (self.max_pause.is_none() || !self.paused.contains(host)) {
            return Ok(Admit::Fetch);
        }
        let limit = rate.map(Rate::gcra);
        // A slot is a moment, not a permit: a task that wakes for its slot much later than
        // reserved (a busy machine delays timers) would send together with the next slots'
        // tasks, so it gives the slot up and asks again.
        let stale_after = limit.map_or(Duration::MAX, |g| (g.interval / 2).max(MIN_LATENESS));
        for _ in 0..MAX_STALE_SLOTS {
            // The slot is `wait` after Redis read its clock, somewhere between asking and
            // the answer: sleeping from the answer never sends early, and lateness counts
            // from the asking, less the network's share of the round trip, so a slow round
            // trip (a busy machine) counts as late too.
            let asked = Instant::now();
            let answer = self.limiter.ask(host, limit, self.max_wait, turn).await?;
            let network = self.rtt_floor.observe(asked.elapsed());
            if let Some(rate) = rate {
                let bucket = self.table.bucket_of(host);
                metrics().set_host_rate(&bucket, rate.per_second() * answer.factor);
            }
            match answer.admission {
                Admission::Go(wait) => {
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    if asked.elapsed().saturating_sub(wait + network) <= stale_after {
                        return Ok(Admit::Fetch);
                    }
                    // It had a slot: asking again, it is not sent to the back of the queue.
                    turn = turn.or(Some(Turn(1)));
                }
                Admission::Later(wait) => {
                    return Ok(Admit::Defer {
                        wait: self.come_back_in(wait, answer.turn),
                        turn: answer.turn,
                    });
                }
            }
        }
        // Woken late again and again: the machine is overloaded; wait in the broker.
        Ok(Admit::Defer {
            wait: self.max_wait,
            turn,
        })
    }

    /// With `--host-pause`, reads the paused hosts once, so a fetcher that starts (or
    /// starts again) during a pause does not admit that host's tasks before it has read
    /// it, then keeps [`HostLimits::paused`] current (every [`PAUSE_REFRESH`]) until the
    /// returned handle is dropped. A failed later read keeps the last view (the session
    /// notices a Redis outage on its own calls).
    pub async fn watch_pauses(&self) -> Result<Option<AbortOnDropHandle<()>>, StoreError> {
        if self.max_pause.is_none() {
            return Ok(None);
        }
        let (limiter, paused) = (self.limiter.clone(), self.paused.clone());
        read_pauses(&limiter, &paused).await?;
        Ok(Some(AbortOnDropHandle::new(tokio::spawn(async move {
            let start = Instant::now() + PAUSE_REFRESH;
            let mut tick = tokio::time::interval_at(start, PAUSE_REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = read_pauses(&limiter, &paused).await {
                    tracing::debug!(error = %e, "reading the paused hosts failed");
                }
            }
        }))))
    }

    /// How long a task told to come back in `wait` spends in the broker: with a turn, it
    /// comes back half a `--host-wait-max` early, so it can take its slot with a short
    /// reserved sleep rather than miss it by the delay queue's lateness.
    fn come_back_in(&self, wait: Duration, turn: Option<Turn>) -> Duration {
        match turn {
            // Only a wait longer than a reserved sleep: a shorter one (the end of a pause)
            // would come back at once and ask again and again.
            Some(_) if wait > self.max_wait => wait - self.max_wait / 2,
            _ => wait,
        }
    }

    /// With `--host-pause`, a 429 or 503 with a `Retry-After` pauses the host for every
    /// fetcher; with `--host-aimd`, a 429 lowers a limited host's rate.
    pub async fn after_failure(&self, host: &str, failure: &Failure) -> Result<(), StoreError> {
        if failure.http_status == Some(429)
            && let Some(rate) = self.table.rate_of(host)
        {
            let factor = self.limiter.throttled(host).await?;
            if factor < 1.0 {
                tracing::info!(%host, rate = rate.per_second() * factor, "429: host rate lowered fleet-wide");
            }
            metrics().set_host_rate(&self.table.bucket_of(host), rate.per_second() * factor);
        }
        let (Some(cap), Some(after), Some(429 | 503)) =
            (self.max_pause, failure.retry_after, failure.http_status)
        else {
            return Ok(());
        };
        if !after.is_zero() {
            tracing::info!(%host, ?after, "origin asked to wait: host paused fleet-wide");
            self.limiter.pause(host, after.min(cap)).await?;
            self.paused.insert(host, after.min(cap));
        }
        Ok(())
    }
}

/// Reads the hosts paused fleet-wide into `paused` (and the gauge).
async fn read_pauses(limiter: &HostLimiter, paused: &PausedHosts) -> Result<(), StoreError> {
    let hosts = limiter.paused_hosts().await?;
    metrics().set_hosts_paused(hosts.len());
    paused.replace(hosts);
    Ok(())
}

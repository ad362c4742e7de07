//! Per-host rate limits of the fetcher: parsing `--host-rate` / `--default-host-rate`
//! (pure), and asking the fleet-wide GCRA in Redis ([`tributary::hostlimit`]) before a
//! request.
//!
//! Rates are `N/s`, `N/m` or `N/h` (`N` may be fractional: `0.5/s`). Host patterns are an
//! exact host (`api.example.com`, `127.0.0.1`) or `*.suffix`, which matches every name
//! below `suffix` but not `suffix` itself. An exact pattern beats a wildcard, a longer
//! wildcard beats a shorter one, and `--default-host-rate` covers every other host. A
//! bare `*` is refused: say `--default-host-rate`.
//!
//! With `--host-pause` (on by default), a 429 or 503 with `Retry-After` pauses its host for
//! every fetcher (capped at the last `--retry-delays` step), whether or not the host has a
//! rate; each fetcher reads the paused hosts every [`PAUSE_REFRESH`], so a host without a
//! rate costs a Redis call per request only while it may be paused. With
//! `--host-aimd`, a 429 from a host that has a rate lowers that rate fleet-wide
//! ([`tributary::hostlimit::Aimd`]).
//!
//! Per-host metrics are bucketed by the `--host-rate` pattern naming the host, or `other`
//! ([`RateTable::bucket_of`]); the `host_rate` gauge of a bucket shows the rate last in
//! force for one of its hosts.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use tributary::error::Failure;
use tributary::hostlimit::{Admission, Gcra, HostLimiter, Turn};
use tributary::metrics::{OTHER_HOSTS, metrics};
use tributary::store::StoreError;

/// Requests per second, finite and positive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(f64);

impl Rate {
    pub fn per_second(self) -> f64 {
        self.0
    }

    /// The GCRA of this rate: interval 1/rate and no burst tolerance, so requests are
    /// spaced evenly and any window of `w` seconds holds at most `w × rate + 1` of them
    /// (an origin counting per second sees the limit, not the limit plus a burst).
    pub fn gcra(self) -> Gcra {
        Gcra {
            interval: Duration::from_secs_f64(1.0 / self.0),
            tolerance: Duration::ZERO,
        }
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| format!("bad rate {s:?}: {why} (say e.g. 20/s, 300/m, 0.5/s)");
        let (count, unit) = s.trim().split_once('/').ok_or_else(|| bad("no unit"))?;
        let count: f64 = count.trim().parse().map_err(|_| bad("not a number"))?;
        let per = match unit.trim() {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad("the unit must be s, m or h")),
        };
        let rate = count / per;
        if !rate.is_finite() || rate <= 0.0 || rate > 1_000_000.0 {
            return Err(bad("must be above zero and at most 1000000/s"));
        }
        Ok(Rate(rate))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", self.0)
    }
}

/// Which hosts a rate applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.suffix`: names ending in `.suffix`.
    Below(String),
}

impl HostPattern {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
        let (wildcard, host) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, s.clone()),
        };
        if s == "*" {
            return Err("a bare `*` is not a host pattern; use --default-host-rate".into());
        }
        if host.is_empty()
            || host.contains(['*', '/', '=', ',', ' '])
            || host.starts_with('.')
            || host.contains("..")
        {
            return Err(format!(
                "bad host pattern {s:?} (say example.com or *.example.com)"
            ));
        }
        Ok(if wildcard {
            HostPattern::Below(host)
        } else {
            HostPattern::Exact(host)
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(host) => f.write_str(host),
            HostPattern::Below(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// `--host-rate`: `host=rate` pairs, comma-separated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostRates(pub Vec<(HostPattern, Rate)>);

impl FromStr for HostRates {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut rates: Vec<(HostPattern, Rate)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (host, rate) = part
                .split_once('=')
                .ok_or_else(|| format!("bad host rate {part:?} (say example.com=20/s)"))?;
            let pattern = HostPattern::parse(host)?;
            if rates.iter().any(|(p, _)| *p == pattern) {
                return Err(format!("host pattern {:?} given twice", host.trim()));
            }
            rates.push((pattern, rate.parse()?));
        }
        Ok(HostRates(rates))
    }
}

/// Every limit of a fetcher: the per-host rates and the default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateTable {
    pub hosts: HostRates,
    pub default: Option<Rate>,
}

impl RateTable {
    pub fn is_empty(&self) -> bool {
        self.hosts.0.is_empty() && self.default.is_none()
    }

    /// The rate of `host` (lowercase, no port), if it has one.
    pub fn rate_of(&self, host: &str) -> Option<Rate> {
        self.pattern_of(host).map(|(_, rate)| rate).or(self.default)
    }

    /// The `--host-rate` pattern naming `host`, and its rate.
    fn pattern_of(&self, host: &str) -> Option<(&HostPattern, Rate)> {
        let host = host.trim_end_matches('.');
        let mut best: Option<(usize, &HostPattern, Rate)> = None;
        for (pattern, rate) in &self.hosts.0 {
            match pattern {
                HostPattern::Exact(h) if h == host => return Some((pattern, *rate)),
                HostPattern::Below(suffix)
                    if host.len() > suffix.len() + 1
                        && host.ends_with(suffix.as_str())
                        && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                        && best.is_none_or(|(len, _, _)| suffix.len() > len) =>
                {
                    best = Some((suffix.len(), pattern, *rate));
                }
                _ => {}
            }
        }
        best.map(|(_, pattern, rate)| (pattern, rate))
    }

    /// The metrics bucket of `host`: the `--host-rate` pattern naming it, or
    /// [`OTHER_HOSTS`] (never the host itself, so the label set stays bounded).
    pub fn bucket_of(&self, host: &str) -> String {
        self.pattern_of(host)
            .map_or_else(|| OTHER_HOSTS.to_string(), |(p, _)| p.to_string())
    }

    /// The metrics bucket of a URL's host ([`OTHER_HOSTS`] without a host).
    pub fn bucket_of_url(&self, url: &str) -> String {
        host_of(url).map_or_else(|| OTHER_HOSTS.to_string(), |h| self.bucket_of(&h))
    }

    /// Publishes every bucket's configured rate in the `host_rate` gauge.
    pub fn publish_rates(&self) {
        for (pattern, rate) in &self.hosts.0 {
            metrics().set_host_rate(&pattern.to_string(), rate.per_second());
        }
        if let Some(rate) = self.default {
            metrics().set_host_rate(OTHER_HOSTS, rate.per_second());
        }
    }
}

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

/// The host of a URL, lowercase, without the port.
pub fn host_of(url: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .host_str()
        .map(str::to_ascii_lowercase)
}

impl HostLimits {
    /// Waits for a slot of the task's host if the wait is short; says how long otherwise,
    /// and the task's turn to carry. `turn` is the one it carries from an earlier deferral.
    /// A URL without a host, or a host without a rate, is fetched at once.
    pub async fn admit(&self, url: &str, mut turn: Option<Turn>) -> Result<Admit, StoreError> {
        // The usual case, no rates and no pause: not even the URL needs parsing.
        if self.table.is_empty() && (self.max_pause.is_none() || self.paused.is_empty()) {
            return Ok(Admit::Fetch);
        }
        let Some(host) = host_of(url) else {
            return Ok(Admit::Fetch);
        };
        let rate = self.table.rate_of(&host);
        // The script checks the pause of a host it is asked about; a host without a rate
        // is asked about only while it may be paused.
        if rate.is_none() && (self.max_pause.is_none() || !self.paused.contains(&host)) {
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
            let answer = self.limiter.ask(&host, limit, self.max_wait, turn).await?;
            let network = self.rtt_floor.observe(asked.elapsed());
            if let Some(rate) = rate {
                let bucket = self.table.bucket_of(&host);
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

    /// With `--host-pause`, keeps [`HostLimits::paused`] current (every
    /// [`PAUSE_REFRESH`]) until the returned handle is dropped. A failed read keeps the
    /// last view (the session notices a Redis outage on its own calls).
    pub fn watch_pauses(&self) -> Option<AbortOnDropHandle<()>> {
        self.max_pause?;
        let (limiter, paused) = (self.limiter.clone(), self.paused.clone());
        Some(AbortOnDropHandle::new(tokio::spawn(async move {
            let mut tick = tokio::time::interval(PAUSE_REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match limiter.paused_hosts().await {
                    Ok(hosts) => paused.replace(hosts),
                    Err(e) => tracing::debug!(error = %e, "reading the paused hosts failed"),
                }
            }
        })))
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

    /// With `--host-pause`, a 429 or 503 with a `Retry-After` pauses the URL's host for
    /// every fetcher; with `--host-aimd`, a 429 lowers a limited host's rate.
    pub async fn after_failure(&self, url: &str, failure: &Failure) -> Result<(), StoreError> {
        if failure.http_status == Some(429)
            && let Some(host) = host_of(url)
            && let Some(rate) = self.table.rate_of(&host)
        {
            let factor = self.limiter.throttled(&host).await?;
            if factor < 1.0 {
                tracing::info!(%host, rate = rate.per_second() * factor, "429: host rate lowered fleet-wide");
            }
            metrics().set_host_rate(&self.table.bucket_of(&host), rate.per_second() * factor);
        }
        let (Some(cap), Some(after), Some(429 | 503)) =
            (self.max_pause, failure.retry_after, failure.http_status)
        else {
            return Ok(());
        };
        match host_of(url) {
            Some(host) if !after.is_zero() => {
                tracing::info!(%host, ?after, "origin asked to wait: host paused fleet-wide");
                self.limiter.pause(&host, after.min(cap)).await?;
                self.paused.insert(&host, after.min(cap));
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(s: &str) -> f64 {
        s.parse::<Rate>().unwrap().per_second()
    }

    #[test]
    fn rates_parse() {
        assert_eq!(rate("20/s"), 20.0);
        assert_eq!(rate("300/m"), 5.0);
        assert_eq!(rate("0.5/s"), 0.5);
        assert_eq!(rate(" 7200/h "), 2.0);
        for bad in [
            "20", "20/d", "x/s", "0/s", "-1/s", "inf/s", "NaN/s", "/s", "",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?}");
        }
        let g = "50/s".parse::<Rate>().unwrap().gcra();
        assert_eq!(g.interval, Duration::from_millis(20));
        assert_eq!(g.tolerance, Duration::ZERO);
        let g = "0.5/s".parse::<Rate>().unwrap().gcra();
        assert_eq!(g.interval, Duration::from_secs(2));
    }

    #[test]
    fn host_rates_parse() {
        let r: HostRates = "Example.com=20/s, *.example.org=5/s,127.0.0.1=50/s"
            .parse()
            .unwrap();
        assert_eq!(
            r.0.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
            vec![
                HostPattern::Exact("example.com".into()),
                HostPattern::Below("example.org".into()),
                HostPattern::Exact("127.0.0.1".into()),
            ]
        );
        assert_eq!("".parse::<HostRates>().unwrap(), HostRates::default());
        for bad in [
            "*=5/s",
            "example.com",
            "example.com=fast",
            "a.*.com=1/s",
            "*.=1/s",
            "=1/s",
            "http://x.com=1/s",
            "x.com=1/s,X.com=2/s",
        ] {
            assert!(bad.parse::<HostRates>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lookup_prefers_exact_then_longest_wildcard_then_default() {
        let table = RateTable {
            hosts: "*.example.org=5/s,*.api.example.org=2/s,www.example.org=9/s"
                .parse()
                .unwrap(),
            default: None,
        };
        let of = |h| table.rate_of(h).map(Rate::per_second);
        assert_eq!(of("www.example.org"), Some(9.0));
        assert_eq!(of("a.example.org"), Some(5.0));
        assert_eq!(of("v1.api.example.org"), Some(2.0));
        assert_eq!(of("api.example.org"), Some(5.0));
        assert_eq!(of("example.org"), None);
        assert_eq!(of("badexample.org"), None);
        assert_eq!(of("a.example.org."), Some(5.0));
        let table = RateTable {
            default: Some("10/s".parse().unwrap()),
            ..table
        };
        assert_eq!(table.rate_of("other.net").map(Rate::per_second), Some(10.0));
        assert_eq!(table.bucket_of("v1.api.example.org"), "*.api.example.org");
        assert_eq!(table.bucket_of("www.example.org"), "www.example.org");
        assert_eq!(table.bucket_of("other.net"), "other");
        assert_eq!(
            table.bucket_of_url("http://A.Example.org:8080/x"),
            "*.example.org"
        );
        assert_eq!(table.bucket_of_url("not a url"), "other");
        assert!(!table.is_empty());
        assert!(RateTable::default().is_empty());
    }
}

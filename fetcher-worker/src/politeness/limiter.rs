//! Fleet-wide per-host rate limits: the Rust side of the scripts in `lua/`, one per
//! operation (`acquire`, `throttle`, `pause`, `paused`, `lease_take`; `host.lua` is the
//! prelude of the first two), each returning named results.
//!
//! One GCRA (generic cell rate algorithm, the semantics of the `governor` crate) per host,
//! its theoretical arrival time kept in Redis under [`Names::host_tat_key`] and computed on
//! Redis server time, so every fetcher on every machine shares one limit whatever its clock.
//! A caller asks [`HostLimiter::ask`] before each request: a wait up to its `max_wait`
//! is reserved (the caller sleeps it, then fetches); a longer one reserves nothing and the
//! caller puts the task aside (the fetcher defers it through a delay queue).
//!
//! [`HostLimiter::pause`] holds a host off for a while (the fetcher's `--host-pause`, after
//! a 429/503 with `Retry-After`): `acquire` answers "later" for it, rate or not.
//!
//! With [`HostLimiter::with_aimd`] the rate adapts: [`HostLimiter::throttled`] (after a
//! 429) halves a host's rate factor (at most once per [`Aimd::spacing`], never below
//! [`Aimd::floor`] of the configured rate), and it recovers additively over time; the
//! factor lives in Redis next to the TAT ([`Names::host_rate_key`]), so every fetcher
//! shares it.
//!
//! [`HostLimiter::take_lease`] (`lua/lease_take.lua`) / [`HostLimiter::give_lease`] cap a host's
//! requests in flight across the fleet: a counting semaphore whose permits are leases with
//! an end on Redis time ([`Names::host_leases_key`]), so a dead holder's permit comes back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tributary::names::Names;
use tributary::store::hosts;
use tributary::store::{Lua, Named, RedisConn, ScriptCall, Store, StoreError};
use uuid::Uuid;

const HOST_LUA: &str = include_str!("lua/host.lua");
const ACQUIRE_LUA: &str = include_str!("lua/acquire.lua");
const THROTTLE_LUA: &str = include_str!("lua/throttle.lua");
const PAUSE_LUA: &str = include_str!("lua/pause.lua");
const PAUSED_LUA: &str = include_str!("lua/paused.lua");
const LEASE_TAKE_LUA: &str = include_str!("lua/lease_take.lua");

/// The limiter's scripts, one per operation.
struct Scripts {
    acquire: Lua,
    throttle: Lua,
    pause: Lua,
    paused: Lua,
    lease_take: Lua,
}

/// A GCRA limit: one request per `interval`, with `tolerance` of burst (a tolerance of
/// `k × interval` lets `k + 1` requests through at once after a quiet spell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    pub interval: Duration,
    pub tolerance: Duration,
}

/// Additive-increase / multiplicative-decrease of a host's rate after 429s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aimd {
    /// The lowest factor of the configured rate (e.g. 0.1).
    pub floor: f64,
    /// How much of the configured rate comes back per second (e.g. 0.05), above zero.
    pub recovery_per_sec: f64,
    /// The least time between two cuts, so one burst of 429s counts once.
    pub spacing: Duration,
}

impl Default for Aimd {
    fn default() -> Self {
        Self {
            floor: 0.1,
            recovery_per_sec: 0.05,
            spacing: Duration::from_secs(1),
        }
    }
}

/// The limiter's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A slot is reserved: sleep this long (often zero), then send the request.
    Go(Duration),
    /// No slot within the caller's `max_wait`: the host conforms again after this long.
    Later(Duration),
}

/// The limiter's whole answer: the admission, the factor of the configured rate in force
/// (1 without AIMD), and with [`Admission::Later`] the caller's turn, to carry until it
/// asks again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answer {
    pub admission: Admission,
    pub factor: f64,
    pub turn: Option<Turn>,
}

/// A place in a host's queue: when (Redis time, microseconds since the epoch) a task put
/// aside should come back for a slot. An estimate, not a reservation: it keeps tasks put
/// aside one after another coming back one interval apart, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Turn(pub u64);

/// How often a fetcher tells the dashboard a host's rate again ([`hosts::advertise`]).
const ADVERTISE_EVERY: Duration = Duration::from_secs(60);
/// Most hosts whose advertisement a fetcher remembers (it forgets them all beyond).
const ADVERTISED_HOSTS: usize = 10_000;

/// The per-host limiter of one namespace. Cheap to clone.
#[derive(Clone)]
pub struct HostLimiter {
    conn: RedisConn,
    names: Names,
    scripts: Arc<Scripts>,
    aimd: Option<Aimd>,
    /// Host -> (interval advertised, when).
    advertised: Arc<Mutex<HashMap<String, (u64, Instant)>>>,
}

impl std::fmt::Debug for HostLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostLimiter")
            .field("names", &self.names)
            .finish()
    }
}

impl HostLimiter {
    /// A limiter on the store's Redis connection and namespace.
    pub fn new(store: &Store) -> Self {
        Self {
            conn: store.connection(),
            names: store.names().clone(),
            scripts: Arc::new(Scripts {
                acquire: Lua::new(&format!("{HOST_LUA}\n{ACQUIRE_LUA}")),
                throttle: Lua::new(&format!("{HOST_LUA}\n{THROTTLE_LUA}")),
                pause: Lua::new(PAUSE_LUA),
                paused: Lua::new(PAUSED_LUA),
                lease_take: Lua::new(LEASE_TAKE_LUA),
            }),
            aimd: None,
            advertised: Arc::default(),
        }
    }

    /// Lets 429s lower the rates adaptively ([`Aimd`]).
    pub fn with_aimd(self, aimd: Aimd) -> Self {
        Self {
            aimd: Some(aimd),
            ..self
        }
    }

    /// Asks for one request to `host` under `limit` (`None`: only a pause can hold it),
    /// reserving a slot if it comes within `max_wait`, for a caller holding `turn` (from
    /// an earlier [`Admission::Later`]; `None` the first time).
    pub async fn ask(
        &self,
        host: &str,
        limit: Option<Gcra>,
        max_wait: Duration,
        turn: Option<Turn>,
    ) -> Result<Answer, StoreError> {
        let (interval, tolerance) =
            limit.map_or((0, 0), |l| (micros(l.interval).max(1), micros(l.tolerance)));
        if interval > 0 {
            self.advertise(host, interval).await;
        }
        let mut call = ScriptCall::new(&self.scripts.acquire);
        call.key(self.names.host_tat_key(host))
            .key(self.names.host_pause_key(host))
            .key(self.names.host_rate_key(host))
            .key(self.names.host_queue_key(host))
            .arg(interval)
            .arg(tolerance)
            .arg(micros(max_wait))
            .arg(self.aimd.map_or(0.0, |a| a.recovery_per_sec))
            .arg(turn.map_or(0, |t| t.0));
        let answer: Named = self.conn.clone().eval(&call).await?;
        let wait = Duration::from_millis(answer.get("wait_ms")?.max(0) as u64);
        let factor = answer.get("factor_ppm")? as f64 / 1e6;
        let turn = answer
            .get_opt("turn")
            .filter(|t| *t > 0)
            .map(|t| Turn(t as u64));
        let admission = if answer.get("granted")? == 1 {
            Admission::Go(wait)
        } else {
            Admission::Later(wait)
        };
        Ok(Answer {
            admission,
            factor,
            turn,
        })
    }

    /// Tells the dashboard the rate applied to `host`: the first time, when it changes, and
    /// then once per [`ADVERTISE_EVERY`]. A failure only costs the dashboard that number.
    async fn advertise(&self, host: &str, interval_us: u64) {
        let due = {
            let mut seen = self.advertised.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            match seen.get(host) {
                Some((i, at)) if *i == interval_us && now.duration_since(*at) < ADVERTISE_EVERY => {
                    false
                }
                _ => {
                    if seen.len() >= ADVERTISED_HOSTS {
                        seen.clear();
                    }
                    seen.insert(host.to_string(), (interval_us, now));
                    true
                }
            }
        };
        if due
            && let Err(e) =
                hosts::advertise(&mut self.conn.clone(), &self.names, host, interval_us).await
        {
            tracing::debug!(host, "cannot advertise the host's rate: {e}");
        }
    }

    /// With AIMD, a 429 from `host`: halves its rate factor (see [`Aimd`]) for every
    /// fetcher; returns the factor now (1 without AIMD).
    pub async fn throttled(&self, host: &str) -> Result<f64, StoreError> {
        let Some(aimd) = self.aimd else {
            return Ok(1.0);
        };
        let mut call = ScriptCall::new(&self.scripts.throttle);
        call.key(self.names.host_rate_key(host))
            .arg(aimd.floor)
            .arg(aimd.recovery_per_sec)
            .arg(micros(aimd.spacing));
        let answer: Named = self.conn.clone().eval(&call).await?;
        Ok(answer.get("factor_ppm")? as f64 / 1e6)
    }

    /// Pauses `host` for every fetcher for `pause` from now (Redis time); a longer pause
    /// already set stays. The host is listed in [`HostLimiter::paused_hosts`] until then.
    pub async fn pause(&self, host: &str, pause: Duration) -> Result<(), StoreError> {
        let mut call = ScriptCall::new(&self.scripts.pause);
        call.key(self.names.host_pause_key(host)).arg(micros(pause));
        let until = self.conn.clone().eval::<Named>(&call).await?.get("until")?;
        let mut conn = self.conn.clone();
        // A second call, not a key of the script: the set is not in the host's hash slot.
        // GT: a pause recorded by another fetcher that ends later stays.
        let _: () = redis::cmd("ZADD")
            .arg(self.names.paused_hosts_key())
            .arg("GT")
            .arg(until)
            .arg(host)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The hosts paused now, by any fetcher of the namespace (ended pauses are forgotten).
    pub async fn paused_hosts(&self) -> Result<Vec<String>, StoreError> {
        let mut call = ScriptCall::new(&self.scripts.paused);
        call.key(self.names.paused_hosts_key());
        self.conn.clone().eval(&call).await
    }

    /// Takes a concurrency lease `id` of `host` (`lua/lease_take.lua`) for `lease` if fewer
    /// than `cap` are held; says whether it did. A lease runs out on its own, so one whose
    /// holder died comes back; it must outlast the longest download.
    pub async fn take_lease(
        &self,
        host: &str,
        cap: u32,
        lease: Duration,
        id: Uuid,
    ) -> Result<bool, StoreError> {
        let mut call = ScriptCall::new(&self.scripts.lease_take);
        call.key(self.names.host_leases_key(host))
            .arg(cap)
            .arg(micros(lease))
            .arg(id.simple().to_string());
        let answer: Named = self.conn.clone().eval(&call).await?;
        Ok(answer.get("taken")? == 1)
    }

    /// Gives the concurrency lease `id` of `host` back.
    pub async fn give_lease(&self, host: &str, id: Uuid) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("ZREM")
            .arg(self.names.host_leases_key(host))
            .arg(id.simple().to_string())
            .query_async(&mut conn)
            .await?;
        Ok(())
    }
}

/// Microseconds, saturating well inside what a Lua number holds exactly.
fn micros(d: Duration) -> u64 {
    d.as_micros().min(1 << 52) as u64
}

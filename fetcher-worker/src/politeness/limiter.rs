//! Fleet-wide per-host rate limits: the Rust side of `lua/hostlimit.lua`.
//!
//! One GCRA (generic cell rate algorithm, the semantics of the `governor` crate) per host,
//! its theoretical arrival time kept in Redis under [`Names::host_tat_key`] and computed on
//! Redis server time, so every fetcher on every machine shares one limit whatever its clock.
//! A caller asks [`HostLimiter::acquire`] before each request: a wait up to its `max_wait`
//! is reserved (the caller sleeps it, then fetches); a longer one reserves nothing and the
//! caller puts the task aside (the fetcher defers it through a delay queue).
//!
//! [`HostLimiter::pause`] holds a host off for a while (the fetcher's `--host-pause`, after
//! a 429/503 with `Retry-After`): the same script answers "later" for it, rate or not.
//!
//! With [`HostLimiter::with_aimd`] the rate adapts: [`HostLimiter::throttled`] (after a
//! 429) halves a host's rate factor (at most once per [`Aimd::spacing`], never below
//! [`Aimd::floor`] of the configured rate), and it recovers additively over time; the
//! factor lives in Redis next to the TAT ([`Names::host_rate_key`]), so every fetcher
//! shares it.
//!
//! [`HostLimiter::take_lease`] / [`HostLimiter::give_lease`] (`lua/leases.lua`) cap a host's
//! requests in flight across the fleet: a counting semaphore whose permits are leases with
//! an end on Redis time ([`Names::host_leases_key`]), so a dead holder's permit comes back.

use std::sync::Arc;
use std::time::Duration;

use tributary::names::Names;
use tributary::store::{Lua, RedisConn, ScriptCall, Store, StoreError};
use uuid::Uuid;

const HOSTLIMIT_LUA: &str = include_str!("lua/hostlimit.lua");
const PAUSED_LUA: &str = include_str!("lua/paused.lua");
const LEASES_LUA: &str = include_str!("lua/leases.lua");

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

/// The per-host limiter of one namespace. Cheap to clone.
#[derive(Clone)]
pub struct HostLimiter {
    conn: RedisConn,
    names: Names,
    script: Arc<Lua>,
    paused: Arc<Lua>,
    leases: Arc<Lua>,
    aimd: Option<Aimd>,
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
            script: Arc::new(Lua::new(HOSTLIMIT_LUA)),
            paused: Arc::new(Lua::new(PAUSED_LUA)),
            leases: Arc::new(Lua::new(LEASES_LUA)),
            aimd: None,
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
    /// reserving a slot if it comes within `max_wait`.
    pub async fn acquire(
        &self,
        host: &str,
        limit: Option<Gcra>,
        max_wait: Duration,
    ) -> Result<Admission, StoreError> {
        Ok(self.ask(host, limit, max_wait, None).await?.admission)
    }

    /// [`HostLimiter::acquire`] for a caller holding `turn` (from an earlier
    /// [`Admission::Later`]; `None` the first time), with the whole [`Answer`].
    pub async fn ask(
        &self,
        host: &str,
        limit: Option<Gcra>,
        max_wait: Duration,
        turn: Option<Turn>,
    ) -> Result<Answer, StoreError> {
        let (interval, tolerance) =
            limit.map_or((0, 0), |l| (micros(l.interval).max(1), micros(l.tolerance)));
        let mut invocation = self.invocation(host, "acquire");
        invocation
            .arg(interval)
            .arg(tolerance)
            .arg(micros(max_wait))
            .arg(self.aimd.map_or(0.0, |a| a.recovery_per_sec))
            .arg(turn.map_or(0, |t| t.0));
        let answer: Vec<i64> = self.conn.clone().eval(&invocation).await?;
        let (granted, wait_ms) = (answer.first() == Some(&1), answer.get(1).copied());
        let wait = Duration::from_millis(wait_ms.unwrap_or(0).max(0) as u64);
        let factor = answer.get(2).map_or(1.0, |ppm| *ppm as f64 / 1e6);
        let turn = answer.get(3).filter(|t| **t > 0).map(|t| Turn(*t as u64));
        let admission = if granted {
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

    /// With AIMD, a 429 from `host`: halves its rate factor (see [`Aimd`]) for every
    /// fetcher; returns the factor now (1 without AIMD).
    pub async fn throttled(&self, host: &str) -> Result<f64, StoreError> {
        let Some(aimd) = self.aimd else {
            return Ok(1.0);
        };
        let mut invocation = self.invocation(host, "throttle");
        invocation
            .arg(aimd.floor)
            .arg(aimd.recovery_per_sec)
            .arg(micros(aimd.spacing));
        let (_, ppm): (i64, i64) = self.conn.clone().eval(&invocation).await?;
        Ok(ppm as f64 / 1e6)
    }

    /// Pauses `host` for every fetcher for `pause` from now (Redis time); a longer pause
    /// already set stays. The host is listed in [`HostLimiter::paused_hosts`] until then.
    pub async fn pause(&self, host: &str, pause: Duration) -> Result<(), StoreError> {
        let mut invocation = self.invocation(host, "pause");
        invocation.arg(micros(pause));
        let (_, until): (i64, i64) = self.conn.clone().eval(&invocation).await?;
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
        let mut invocation = ScriptCall::new(&self.paused);
        invocation.key(self.names.paused_hosts_key());
        self.conn.clone().eval(&invocation).await
    }

    /// Takes a concurrency lease `id` of `host` (`lua/leases.lua`) for `lease` if fewer
    /// than `cap` are held; says whether it did. A lease runs out on its own, so one whose
    /// holder died comes back; it must outlast the longest download.
    pub async fn take_lease(
        &self,
        host: &str,
        cap: u32,
        lease: Duration,
        id: Uuid,
    ) -> Result<bool, StoreError> {
        let mut invocation = self.lease_invocation(host, "take");
        invocation
            .arg(cap)
            .arg(micros(lease))
            .arg(id.simple().to_string());
        let taken: i64 = self.conn.clone().eval(&invocation).await?;
        Ok(taken == 1)
    }

    /// Gives the concurrency lease `id` of `host` back.
    pub async fn give_lease(&self, host: &str, id: Uuid) -> Result<(), StoreError> {
        let mut invocation = self.lease_invocation(host, "give");
        invocation.arg(id.simple().to_string());
        let _: i64 = self.conn.clone().eval(&invocation).await?;
        Ok(())
    }

    fn lease_invocation(&self, host: &str, op: &str) -> ScriptCall<'_> {
        let mut invocation = ScriptCall::new(&self.leases);
        invocation.key(self.names.host_leases_key(host)).arg(op);
        invocation
    }

    fn invocation(&self, host: &str, op: &str) -> ScriptCall<'_> {
        let mut invocation = ScriptCall::new(&self.script);
        invocation
            .key(self.names.host_tat_key(host))
            .key(self.names.host_pause_key(host))
            .key(self.names.host_rate_key(host))
            .key(self.names.host_queue_key(host))
            .arg(op);
        invocation
    }
}

/// Microseconds, saturating well inside what a Lua number holds exactly.
fn micros(d: Duration) -> u64 {
    d.as_micros().min(1 << 52) as u64
}

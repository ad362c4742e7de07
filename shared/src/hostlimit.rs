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

use std::time::Duration;

use redis::aio::ConnectionManager;
use uuid::Uuid;

use crate::names::Names;
use crate::store::{Store, StoreError};

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
    conn: ConnectionManager,
    names: Names,
    script: redis::Script,
    paused: redis::Script,
    leases: redis::Script,
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
            script: redis::Script::new(HOSTLIMIT_LUA),
            paused: redis::Script::new(PAUSED_LUA),
            leases: redis::Script::new(LEASES_LUA),
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
        let mut conn = self.conn.clone();
        let answer: Vec<i64> = invocation.invoke_async(&mut conn).await?;
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
        let mut conn = self.conn.clone();
        let (_, ppm): (i64, i64) = invocation.invoke_async(&mut conn).await?;
        Ok(ppm as f64 / 1e6)
    }

    /// Pauses `host` for every fetcher for `pause` from now (Redis time); a longer pause
    /// already set stays. The host is listed in [`HostLimiter::paused_hosts`] until then.
    pub async fn pause(&self, host: &str, pause: Duration) -> Result<(), StoreError> {
        let mut invocation = self.invocation(host, "pause");
        invocation.arg(micros(pause));
        let mut conn = self.conn.clone();
        let (_, until): (i64, i64) = invocation.invoke_async(&mut conn).await?;
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
        let mut invocation = self.paused.prepare_invoke();
        invocation.key(self.names.paused_hosts_key());
        let mut conn = self.conn.clone();
        Ok(invocation.invoke_async(&mut conn).await?)
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
        let mut conn = self.conn.clone();
        let taken: i64 = invocation.invoke_async(&mut conn).await?;
        Ok(taken == 1)
    }

    /// Gives the concurrency lease `id` of `host` back.
    pub async fn give_lease(&self, host: &str, id: Uuid) -> Result<(), StoreError> {
        let mut invocation = self.lease_invocation(host, "give");
        invocation.arg(id.simple().to_string());
        let mut conn = self.conn.clone();
        let _: i64 = invocation.invoke_async(&mut conn).await?;
        Ok(())
    }

    fn lease_invocation(&self, host: &str, op: &str) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.leases.prepare_invoke();
        invocation.key(self.names.host_leases_key(host)).arg(op);
        invocation
    }

    fn invocation(&self, host: &str, op: &str) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.script.prepare_invoke();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConnectionArgs;

    async fn limiter() -> (HostLimiter, Store) {
        let ns = format!("t-hostlimit-{}", uuid::Uuid::new_v4().simple());
        let args = ConnectionArgs::local(&ns);
        let store = Store::connect(&args.redis_url, Names::new(&ns), args.result_ttl)
            .await
            .expect("redis at 127.0.0.1:6379");
        (HostLimiter::new(&store), store)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn gcra(interval_ms: u64, tolerance_ms: u64) -> Gcra {
        Gcra {
            interval: ms(interval_ms),
            tolerance: ms(tolerance_ms),
        }
    }

    /// One question to the limiter, willing to sleep `max_wait_ms`.
    async fn ask(l: &HostLimiter, host: &str, limit: Gcra, max_wait_ms: u64) -> Admission {
        l.acquire(host, Some(limit), ms(max_wait_ms)).await.unwrap()
    }

    /// Deletes the hosts' keys.
    async fn forget(store: &Store, hosts: &[&str]) {
        let names = store.names();
        let keys: Vec<String> = hosts
            .iter()
            .flat_map(|h| {
                [
                    names.host_tat_key(h),
                    names.host_pause_key(h),
                    names.host_rate_key(h),
                    names.host_queue_key(h),
                    names.host_leases_key(h),
                ]
            })
            .chain([names.paused_hosts_key()])
            .collect();
        let mut conn = store.connection();
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn gcra_spaces_requests_and_reserves_only_short_waits() {
        let (limiter, store) = limiter().await;
        let host = "example.test";
        // 10/s with a burst of 2.
        let limit = gcra(100, 100);
        assert_eq!(ask(&limiter, host, limit, 0).await, Admission::Go(ms(0)));
        assert_eq!(ask(&limiter, host, limit, 0).await, Admission::Go(ms(0)));
        // The third is ~100 ms away: too far for a caller that will not wait, which is
        // given that moment as its turn...
        let later = |turn| limiter.ask(host, Some(limit), ms(0), turn);
        let third = later(None).await.unwrap();
        let (Admission::Later(wait), Some(turn)) = (third.admission, third.turn) else {
            panic!("a third request at once must not pass: {third:?}");
        };
        assert!(wait > ms(80) && wait <= ms(101), "{wait:?}");
        // ... a fourth is told to come back one interval after it...
        let fourth = later(None).await.unwrap();
        let (Admission::Later(next), Some(next_turn)) = (fourth.admission, fourth.turn) else {
            panic!("{fourth:?}");
        };
        assert_eq!(next_turn.0 - turn.0, 100_000);
        assert!(next >= wait + ms(98), "{next:?} after {wait:?}");
        // ... and the third, asking again with its turn, keeps its place; no slot was
        // reserved meanwhile.
        let again = later(Some(turn)).await.unwrap();
        let (Admission::Later(again_wait), Some(kept)) = (again.admission, again.turn) else {
            panic!("still too early: {again:?}");
        };
        assert_eq!(kept, turn);
        assert!(again_wait <= wait, "{again_wait:?} > {wait:?}");
        // Willing to sleep up to 250 ms, the third and the fourth get the next slots, 100 ms
        // apart...
        let take = |turn| limiter.ask(host, Some(limit), ms(250), Some(turn));
        let Admission::Go(first) = take(turn).await.unwrap().admission else {
            panic!("within 250 ms");
        };
        let Admission::Go(second) = take(next_turn).await.unwrap().admission else {
            panic!("within 250 ms");
        };
        assert!(second >= first + ms(98), "{first:?} then {second:?}");
        // ... and the next caller is further out.
        assert!(matches!(
            ask(&limiter, host, limit, 150).await,
            Admission::Later(w) if w > ms(150)
        ));
        // Another host has its own limit.
        assert_eq!(
            ask(&limiter, "other.test", limit, 0).await,
            Admission::Go(ms(0))
        );
        // The key expires about when the limit no longer matters.
        let mut conn = store.connection();
        let key = store.names().host_tat_key(host);
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(pttl > 1000 && pttl <= 1500, "{pttl}");
        forget(&store, &[host, "other.test"]).await;
    }

    #[tokio::test]
    async fn gcra_recovers_after_a_quiet_spell() {
        let limit = gcra(50, 0);
        let (limiter, store) = limiter().await;
        let first = ask(&limiter, "quiet.test", limit, 0).await;
        let second = ask(&limiter, "quiet.test", limit, 0).await;
        // A caller without a turn queues behind the turn the second was given (50 ms
        // out, and the horizon one interval after it) ...
        tokio::time::sleep(ms(60)).await;
        let queued = ask(&limiter, "quiet.test", limit, 0).await;
        // ... until that has passed too.
        tokio::time::sleep(ms(150)).await;
        let after = ask(&limiter, "quiet.test", limit, 0).await;
        forget(&store, &["quiet.test"]).await;
        assert_eq!(first, Admission::Go(ms(0)));
        assert!(matches!(second, Admission::Later(_)), "{second:?}");
        assert!(matches!(queued, Admission::Later(_)), "{queued:?}");
        assert_eq!(after, Admission::Go(ms(0)));
    }

    #[tokio::test]
    async fn a_paused_host_hands_out_turns_from_the_pause_end() {
        let limit = gcra(100, 0);
        let (limiter, store) = limiter().await;
        let host = "turns.test";
        limiter.pause(host, ms(500)).await.unwrap();
        let ask_with = |turn| limiter.ask(host, Some(limit), ms(0), turn);
        let first = ask_with(None).await.unwrap();
        let second = ask_with(None).await.unwrap();
        let (Admission::Later(wait), Some(a)) = (first.admission, first.turn) else {
            panic!("paused: {first:?}");
        };
        assert!(wait > ms(450) && wait <= ms(500), "{wait:?}");
        // One interval apart from the end of the pause, not all at its end...
        assert_eq!(second.turn.map(|b| b.0 - a.0), Some(100_000));
        // ... and a caller that already holds a turn keeps it.
        assert_eq!(ask_with(Some(a)).await.unwrap().turn, Some(a));
        forget(&store, &[host]).await;
    }

    #[tokio::test]
    async fn leases_cap_a_host_and_run_out() {
        let (limiter, store) = limiter().await;
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let long = Duration::from_secs(30);
        let take = |id, lease| limiter.take_lease("cap.test", 2, lease, id);
        assert!(take(a, long).await.unwrap());
        assert!(take(b, ms(50)).await.unwrap());
        // At the cap; another host is not.
        assert!(!take(c, long).await.unwrap());
        assert!(limiter.take_lease("other.test", 2, long, c).await.unwrap());
        // A lease given back frees its place...
        limiter.give_lease("cap.test", a).await.unwrap();
        assert!(take(c, long).await.unwrap());
        assert!(!take(a, long).await.unwrap());
        // ... and so does one that runs out (its holder died).
        tokio::time::sleep(ms(60)).await;
        assert!(take(a, long).await.unwrap());
        forget(&store, &["cap.test", "other.test"]).await;
    }

    #[tokio::test]
    async fn a_pause_holds_every_request_until_it_ends() {
        let (limiter, store) = limiter().await;
        let host = "paused.test";
        let check = |max_wait_ms| limiter.acquire(host, None, ms(max_wait_ms));
        assert_eq!(check(0).await.unwrap(), Admission::Go(ms(0)));
        limiter.pause(host, ms(300)).await.unwrap();
        // A shorter pause does not shorten it.
        limiter.pause(host, ms(10)).await.unwrap();
        let Admission::Later(wait) = check(1000).await.unwrap() else {
            panic!("paused");
        };
        assert!(wait > ms(250) && wait <= ms(300), "{wait:?}");
        // A rate-limited host is held too, and no slot is reserved meanwhile.
        let Admission::Later(_) = ask(&limiter, host, gcra(10, 0), 1000).await else {
            panic!("paused");
        };
        // Every fetcher can see which hosts are paused...
        assert_eq!(
            limiter.paused_hosts().await.unwrap(),
            vec![host.to_string()]
        );
        // (The rate-limited caller above was given the pause's end as its turn, so a
        // caller without one queues behind it until one interval after that.)
        tokio::time::sleep(wait + ms(20)).await;
        assert_eq!(check(0).await.unwrap(), Admission::Go(ms(0)));
        // ... until the pause ends.
        assert!(limiter.paused_hosts().await.unwrap().is_empty());
        assert_eq!(
            ask(&limiter, host, gcra(10, 0), 0).await,
            Admission::Go(ms(0))
        );
        forget(&store, &[host]).await;
    }

    #[tokio::test]
    async fn aimd_halves_on_429s_down_to_the_floor_and_recovers() {
        let (limiter, store) = limiter().await;
        let aimd = Aimd {
            floor: 0.1,
            recovery_per_sec: 1.0,
            spacing: Duration::ZERO,
        };
        let limiter = limiter.with_aimd(aimd);
        let host = "aimd.test";
        let limit = gcra(10, 0);
        let factor = limiter
            .ask(host, Some(limit), ms(0), None)
            .await
            .unwrap()
            .factor;
        assert_eq!(factor, 1.0);
        let first = limiter.throttled(host).await.unwrap();
        assert!((first - 0.5).abs() < 0.01, "{first}");
        let mut last = first;
        for _ in 0..6 {
            last = limiter.throttled(host).await.unwrap();
        }
        assert!((last - 0.1).abs() < 0.01, "the floor: {last}");
        // At about a tenth of the rate, the next slot is ~100 ms away, not 10 ms.
        tokio::time::sleep(ms(20)).await;
        let Answer {
            admission, factor, ..
        } = limiter.ask(host, Some(limit), ms(0), None).await.unwrap();
        assert!(factor < 0.2, "{factor}");
        let (Admission::Go(_), Admission::Later(wait)) = (
            admission,
            limiter.acquire(host, Some(limit), ms(0)).await.unwrap(),
        ) else {
            panic!("one slot, then a wait");
        };
        assert!(wait > ms(50), "{wait:?}");
        // +1 per second: back to the full rate within a second.
        tokio::time::sleep(ms(1000)).await;
        let factor = limiter
            .ask(host, Some(limit), ms(1000), None)
            .await
            .unwrap()
            .factor;
        assert_eq!(factor, 1.0);
        // With a spacing, a burst of 429s cuts once.
        let spaced = HostLimiter::new(&store).with_aimd(Aimd::default());
        let once = spaced.throttled("burst.test").await.unwrap();
        let again = spaced.throttled("burst.test").await.unwrap();
        assert!(
            (once - 0.5).abs() < 0.01 && (again - once).abs() < 0.01,
            "{once} {again}"
        );
        // Without AIMD a 429 changes nothing.
        assert_eq!(HostLimiter::new(&store).throttled(host).await.unwrap(), 1.0);
        forget(&store, &[host, "burst.test"]).await;
    }
}

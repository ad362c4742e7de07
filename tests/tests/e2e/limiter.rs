//! The fleet-wide per-host limiter (`fetcher_worker::politeness::limiter`) against the real
//! Redis: GCRA spacing and turns, pauses, AIMD, concurrency leases.

use std::time::Duration;

use fetcher_worker::politeness::limiter::{Admission, Aimd, Answer, Gcra, HostLimiter};
use tributary::runtime::config::ConnectionArgs;
use tributary::store::Store;
use uuid::Uuid;

async fn limiter() -> (HostLimiter, Store) {
    let ns = format!("t-hostlimit-{}", uuid::Uuid::new_v4().simple());
    let args = ConnectionArgs::local(&ns);
    let store = Store::connect(&args)
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
    acquire(l, host, Some(limit), max_wait_ms).await
}

/// The admission of one question without a turn.
async fn acquire(l: &HostLimiter, host: &str, limit: Option<Gcra>, max_wait_ms: u64) -> Admission {
    l.ask(host, limit, ms(max_wait_ms), None)
        .await
        .unwrap()
        .admission
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
    // (Later by about an interval; how much exactly depends on how long the two asks were
    // apart on a busy machine: the turns above are the exact check.)
    assert!(next > wait, "{next:?} after {wait:?}");
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
    let check = |max_wait_ms| acquire(&limiter, host, None, max_wait_ms);
    assert_eq!(check(0).await, Admission::Go(ms(0)));
    limiter.pause(host, ms(300)).await.unwrap();
    // A shorter pause does not shorten it.
    limiter.pause(host, ms(10)).await.unwrap();
    let Admission::Later(wait) = check(1000).await else {
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
    assert_eq!(check(0).await, Admission::Go(ms(0)));
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
    let (Admission::Go(_), Admission::Later(wait)) =
        (admission, acquire(&limiter, host, Some(limit), 0).await)
    else {
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

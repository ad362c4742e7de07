//! Encodings Lua writes and Rust reads agree: the packed group statistics (`apply.lua`
//! formats them, `Store::results` parses them) and the latency buckets (`apply.lua` buckets
//! a task's latency, `Store::latency` turns a bucket back into its upper bound), through the
//! real scripts on the real Redis.

use tributary::message::{Record, TaskResult, now_ms};
use tributary::runtime::config::ConnectionArgs;
use tributary::store::Store;
use tributary_tests::app::{cleanup, fresh_namespace};
use uuid::Uuid;

async fn store() -> (Store, String) {
    let namespace = fresh_namespace("encodings");
    let store = Store::connect(&ConnectionArgs::local(&namespace))
        .await
        .unwrap();
    (store, namespace)
}

fn result(job: Uuid, enqueued_ms: Option<u64>, records: Vec<Record>) -> TaskResult {
    TaskResult {
        job_id: job,
        task_id: Uuid::new_v4(),
        enqueued_ms,
        traceparent: None,
        records,
    }
}

fn record(group: &str, values: &[f64]) -> Record {
    Record {
        group: group.into(),
        count: values.len() as u64,
        sum: values.iter().sum(),
        min: values.iter().copied().fold(f64::INFINITY, f64::min),
        max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}

#[tokio::test]
async fn group_statistics_round_trip_through_lua_exactly() {
    let (store, namespace) = store().await;
    let job = Uuid::new_v4();
    store.add_to_total(job, 3).await.unwrap();
    let awkward = [0.1, 0.2, 1e-300, 123_456_789.123_456_79, -0.0];
    let huge = [f64::MAX, f64::MAX];
    let items = [
        result(job, None, vec![record("A", &awkward)]),
        result(job, None, vec![record("A", &[-7.25]), record("B", &huge)]),
        result(job, None, vec![record("C", &[f64::MIN_POSITIVE])]),
    ];
    let refs: Vec<&TaskResult> = items.iter().collect();
    assert_eq!(store.apply(job, &refs).await.unwrap(), 3);
    let groups = store.results(job).await.unwrap().unwrap().groups;
    let a = &groups["A"];
    let a_sum = awkward.iter().sum::<f64>() + -7.25;
    assert_eq!((a.records, a.count), (2, 6));
    assert_eq!(a.sum.to_bits(), a_sum.to_bits(), "{} vs {a_sum}", a.sum);
    assert_eq!((a.min, a.max), (-7.25, 123_456_789.123_456_79));
    // f64::MAX + f64::MAX overflows to infinity in Lua as in Rust; "inf" reads back.
    assert_eq!(groups["B"].sum, f64::INFINITY);
    assert_eq!(groups["B"].max, f64::MAX);
    assert_eq!(groups["C"].min.to_bits(), f64::MIN_POSITIVE.to_bits());
    cleanup(&namespace).await.unwrap();
}

#[tokio::test]
async fn latency_buckets_read_back_as_bounds_that_hold_the_latency() {
    let (store, namespace) = store().await;
    let latencies = [0_u64, 1, 7, 100, 1_000, 65_000, 3_600_000];
    for latency in latencies {
        let job = Uuid::new_v4();
        store.add_to_total(job, 1).await.unwrap();
        let item = result(job, Some(now_ms() - latency), vec![record("A", &[1.0])]);
        store.apply(job, &[&item]).await.unwrap();
        let buckets = store.latency(job).await.unwrap();
        assert_eq!(buckets.len(), 1, "{latency} ms: {buckets:?}");
        let (bound, tasks) = buckets[0];
        assert_eq!(tasks, 1);
        // The bucket's upper bound is at least the latency (plus the ms or so between
        // computing `now_ms` here and Redis reading its clock) and at most ~19% (one
        // bucket, 2^(1/4)) above it.
        let latency = latency as f64;
        assert!(
            bound + 1.0 >= latency,
            "{latency} ms read back as ≤ {bound}"
        );
        assert!(
            bound <= (latency + 50.0) * 1.19 + 1.0,
            "{latency} ms read back as ≤ {bound}"
        );
    }
    cleanup(&namespace).await.unwrap();
}

/// The fast path (`apply_fresh.lua`) applies an all-new batch; a batch with one task applied
/// before falls back to the per-task form (`apply.lua`), which counts only the new ones;
/// a task twice in one batch counts once. Totals and groups stay exact throughout.
#[tokio::test]
async fn an_overlapping_batch_applies_only_its_new_tasks() {
    let (store, namespace) = store().await;
    let job = Uuid::new_v4();
    store.add_to_total(job, 4).await.unwrap();
    let [a, b, c, d] =
        [1.0, 2.0, 4.0, 8.0].map(|v| result(job, Some(now_ms()), vec![record("G", &[v])]));
    assert_eq!(store.apply(job, &[&a, &b]).await.unwrap(), 2);
    assert_eq!(store.apply(job, &[&b, &c, &c]).await.unwrap(), 1);
    assert_eq!(store.apply(job, &[&d, &d]).await.unwrap(), 1);
    assert_eq!(store.apply(job, &[&a, &b, &c, &d]).await.unwrap(), 0);
    let g = &store.results(job).await.unwrap().unwrap().groups["G"];
    assert_eq!(
        (g.records, g.count, g.sum, g.min, g.max),
        (4, 4, 15.0, 1.0, 8.0)
    );
    let status = store.status(job).await.unwrap().unwrap();
    assert_eq!((status.aggregated, status.done), (4, true));
    let tasks: u64 = store
        .latency(job)
        .await
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(tasks, 4);
    cleanup(&namespace).await.unwrap();
}

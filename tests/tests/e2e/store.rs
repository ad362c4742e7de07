//! The store's own Redis helpers against the real Redis, and a Redis Cluster in the
//! cluster pass (`REDIS_URL` set to the cluster's nodes).

use std::collections::BTreeSet;

use tributary::runtime::config::ConnectionArgs;
use tributary::store::Store;

/// `scan_keys` finds every key of a pattern, on one node or on every master of a cluster
/// (the keys hash to slots all over it), through many `SCAN` steps, and stops early when
/// asked for fewer.
#[tokio::test]
async fn scan_keys_finds_every_matching_key_on_every_master() {
    const N: usize = 3_000;
    let ns = format!("t-scan-{}", uuid::Uuid::new_v4().simple());
    let store = Store::connect(&ConnectionArgs::local(&ns)).await.unwrap();
    let mut conn = store.connection();
    let written: BTreeSet<String> = (0..N).map(|i| format!("{ns}:scan:{i}")).collect();
    for key in &written {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(1)
            .arg("EX")
            .arg(300)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let pattern = format!("{ns}:scan:*");
    // SCAN may return a key twice (a node rehashing mid-scan): compare as sets.
    let found: BTreeSet<String> = conn
        .scan_keys(&pattern, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(found, written);
    let some = conn.scan_keys(&pattern, 100).await.unwrap();
    // One step of SCAN_COUNT (1,000) keys at most before it stops.
    assert!((100..N).contains(&some.len()), "{}", some.len());
    assert!(some.iter().all(|k| written.contains(k)));
    tributary_tests::app::cleanup(&ns).await.unwrap();
    assert!(
        conn.scan_keys(&pattern, usize::MAX)
            .await
            .unwrap()
            .is_empty()
    );
}

//! Fleet-wide per-host concurrency: the Rust side of `lua/leases.lua`.
//!
//! A host's permits are leases in one sorted set per host ([`Names::host_leases_key`]),
//! each with an end on Redis server time: [`HostLeases::take`] takes one if fewer than the
//! cap are held, [`HostLeases::give`] hands it back. A fetcher that dies holding a lease
//! frees it when the lease runs out, so the lease must outlast the longest download.

use std::time::Duration;

use redis::aio::ConnectionManager;
use uuid::Uuid;

use crate::names::Names;
use crate::store::{Store, StoreError};

const LEASES_LUA: &str = include_str!("lua/leases.lua");

/// The per-host leases of one namespace. Cheap to clone.
#[derive(Clone)]
pub struct HostLeases {
    conn: ConnectionManager,
    names: Names,
    script: redis::Script,
}

impl std::fmt::Debug for HostLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostLeases")
            .field("names", &self.names)
            .finish()
    }
}

impl HostLeases {
    /// Leases on the store's Redis connection and namespace.
    pub fn new(store: &Store) -> Self {
        Self {
            conn: store.connection(),
            names: store.names().clone(),
            script: redis::Script::new(LEASES_LUA),
        }
    }

    /// Takes a lease `id` of `host` for `lease` if fewer than `cap` are held; says whether
    /// it did.
    pub async fn take(
        &self,
        host: &str,
        cap: u32,
        lease: Duration,
        id: Uuid,
    ) -> Result<bool, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(self.names.host_leases_key(host))
            .arg("take")
            .arg(cap)
            .arg(lease.as_micros().min(1 << 52) as u64)
            .arg(id.simple().to_string());
        let mut conn = self.conn.clone();
        let taken: i64 = invocation.invoke_async(&mut conn).await?;
        Ok(taken == 1)
    }

    /// Gives the lease `id` of `host` back.
    pub async fn give(&self, host: &str, id: Uuid) -> Result<(), StoreError> {
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(self.names.host_leases_key(host))
            .arg("give")
            .arg(id.simple().to_string());
        let mut conn = self.conn.clone();
        let _: i64 = invocation.invoke_async(&mut conn).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConnectionArgs;

    #[tokio::test]
    async fn leases_cap_a_host_and_run_out() {
        let ns = format!("t-leases-{}", Uuid::new_v4().simple());
        let args = ConnectionArgs::local(&ns);
        let store = Store::connect(&args.redis_url, Names::new(&ns), args.result_ttl)
            .await
            .expect("redis at 127.0.0.1:6379");
        let leases = HostLeases::new(&store);
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let long = Duration::from_secs(30);
        let take = |id, lease| leases.take("cap.test", 2, lease, id);
        assert!(take(a, long).await.unwrap());
        assert!(take(b, Duration::from_millis(50)).await.unwrap());
        // At the cap; another host is not.
        assert!(!take(c, long).await.unwrap());
        assert!(leases.take("other.test", 2, long, c).await.unwrap());
        // A lease given back frees its place...
        leases.give("cap.test", a).await.unwrap();
        assert!(take(c, long).await.unwrap());
        assert!(!take(a, long).await.unwrap());
        // ... and so does one that runs out (its holder died).
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(take(a, long).await.unwrap());
        let mut conn = store.connection();
        let keys = ["cap.test", "other.test"].map(|h| store.names().host_leases_key(h));
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

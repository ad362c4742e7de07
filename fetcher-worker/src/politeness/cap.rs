//! `--host-concurrency`: at most N downloads in flight per host **across the fleet**.
//!
//! Two gates. In this process, one semaphore per host (in a map that drops a host's entry
//! as soon as nobody holds or waits for its semaphore, so the map is as large as the hosts
//! in flight, never as the hosts ever seen) lets at most N of its tasks go on; each of those
//! then takes one of the host's N fleet-wide leases in Redis
//! ([`HostLimiter::take_lease`]), polling while every lease is held. So at most N
//! tasks per process poll for a host, and at most N downloads of it run in the whole
//! fleet. A lease lasts the download timeout plus [`LEASE_MARGIN`]: a fetcher that dies
//! holding one frees it then.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::politeness::limiter::HostLimiter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tributary::store::StoreError;
use uuid::Uuid;

/// How much longer than the download timeout a lease lasts (Redis writes after the
/// download, a slow machine).
pub const LEASE_MARGIN: Duration = Duration::from_secs(10);

/// The first and the longest pause between two tries for a lease of a host at its cap.
const POLL_FIRST: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(100);

/// The fleet-wide half of a cap: the limiter holding the leases, and how long one lasts.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub limiter: HostLimiter,
    pub lease: Duration,
}

/// The per-host concurrency cap of one fetcher session.
#[derive(Debug)]
pub struct HostCap {
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    fleet: Option<Fleet>,
}

/// One download slot of a host; frees it (the lease, and the host's entry if idle) on drop.
#[derive(Debug)]
pub struct HostSlot {
    cap: Arc<HostCap>,
    host: String,
    permit: Option<OwnedSemaphorePermit>,
    lease: Option<Uuid>,
}

impl HostCap {
    /// At most `per_host` (at least 1) slots per host in this process.
    pub fn new(per_host: usize) -> Arc<Self> {
        Self::with_fleet(per_host, None)
    }

    /// At most `per_host` (at least 1) slots per host in this process and, with `fleet`,
    /// in every process of the namespace.
    pub fn with_fleet(per_host: usize, fleet: Option<Fleet>) -> Arc<Self> {
        Arc::new(Self {
            per_host: per_host.max(1),
            hosts: Mutex::new(HashMap::new()),
            fleet,
        })
    }

    fn hosts(&self) -> MutexGuard<'_, HashMap<String, Arc<Semaphore>>> {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for this process's slot of `host`; with a fleet, [`HostSlot::lease`] then
    /// waits for the fleet's.
    pub async fn acquire(self: &Arc<Self>, host: &str) -> HostSlot {
        // Declared first, so dropped last if the wait is cancelled: it then sees only the
        // map's handle on the semaphore and tidies the entry up.
        let mut slot = HostSlot {
            cap: self.clone(),
            host: host.to_string(),
            permit: None,
            lease: None,
        };
        let semaphore = self
            .hosts()
            .entry(host.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_host)))
            .clone();
        slot.permit = Some(semaphore.acquire_owned().await.expect("never closed"));
        slot
    }

    /// Hosts with a slot held or awaited.
    pub fn tracked(&self) -> usize {
        self.hosts().len()
    }

    /// Forgets `host`'s semaphore if only the map holds it: no holder, no waiter (clones
    /// happen under the lock, so this cannot race with a new `acquire`).
    fn tidy(&self, host: &str) {
        let mut hosts = self.hosts();
        if hosts.get(host).is_some_and(|s| Arc::strong_count(s) == 1) {
            hosts.remove(host);
        }
    }
}

impl HostSlot {
    /// With a fleet, waits for one of the host's leases (polling while all are held). Take
    /// it just before the download, so that it lasts the download, not waits.
    pub async fn lease(&mut self) -> Result<(), StoreError> {
        let Some(fleet) = &self.cap.fleet else {
            return Ok(());
        };
        let id = Uuid::new_v4();
        // Recorded first: if this wait is cancelled, or an error hides a lease Redis did
        // take, dropping the slot gives it back (giving an id never taken is harmless).
        self.lease = Some(id);
        let cap = self.cap.per_host as u32;
        let mut pause = POLL_FIRST;
        while !fleet
            .limiter
            .take_lease(&self.host, cap, fleet.lease, id)
            .await?
        {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL_MAX);
        }
        Ok(())
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        let permit = self.permit.take();
        let lease = self.lease.take().zip(self.cap.fleet.as_ref());
        match (lease, tokio::runtime::Handle::try_current()) {
            (Some((id, fleet)), Ok(runtime)) => {
                let (limiter, cap, host) =
                    (fleet.limiter.clone(), self.cap.clone(), self.host.clone());
                runtime.spawn(async move {
                    // If this fails the lease runs out on its own.
                    if let Err(e) = limiter.give_lease(&host, id).await {
                        tracing::debug!(%host, error = %e, "giving a host lease back failed");
                    }
                    // Only now may this process's next task of the host ask for a lease.
                    drop(permit);
                    cap.tidy(&host);
                });
            }
            _ => {
                drop(permit);
                self.cap.tidy(&self.host);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn caps_each_host_and_forgets_idle_hosts() {
        let cap = HostCap::new(2);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..10 {
            let (cap, in_flight, most) = (cap.clone(), in_flight.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = cap.acquire("a.example").await;
                let _other = if i == 0 {
                    Some(cap.acquire("b.example").await)
                } else {
                    None
                };
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert_eq!(cap.tracked(), 0, "idle hosts are dropped from the map");
    }

    #[tokio::test]
    async fn hosts_do_not_share_slots_and_a_cancelled_wait_tidies_up() {
        let cap = HostCap::new(1);
        let held = cap.acquire("a").await;
        // Another host is not held up by `a`.
        let other = tokio::time::timeout(Duration::from_secs(1), cap.acquire("b")).await;
        assert!(other.is_ok());
        drop(other);
        // A waiter for `a` gives up.
        let waited = tokio::time::timeout(Duration::from_millis(20), cap.acquire("a")).await;
        assert!(waited.is_err());
        assert_eq!(cap.tracked(), 1);
        drop(held);
        assert_eq!(cap.tracked(), 0);
    }
}

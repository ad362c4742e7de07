//! `--host-concurrency`: at most N downloads in flight per host **in one fetcher process**
//! (the fleet-wide knob is `--host-rate`). One semaphore per host, in a map that drops a
//! host's entry as soon as nobody holds or waits for its semaphore, so the map is as large
//! as the hosts in flight, never as the hosts ever seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The per-host concurrency cap of one fetcher session.
#[derive(Debug)]
pub struct HostCap {
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// One download slot of a host; frees it (and the host's entry, if idle) on drop.
#[derive(Debug)]
pub struct HostSlot {
    cap: Arc<HostCap>,
    host: String,
    permit: Option<OwnedSemaphorePermit>,
}

impl HostCap {
    /// At most `per_host` (at least 1) slots per host.
    pub fn new(per_host: usize) -> Arc<Self> {
        Arc::new(Self {
            per_host: per_host.max(1),
            hosts: Mutex::new(HashMap::new()),
        })
    }

    fn hosts(&self) -> MutexGuard<'_, HashMap<String, Arc<Semaphore>>> {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a slot of `host`.
    pub async fn acquire(self: &Arc<Self>, host: &str) -> HostSlot {
        // Declared first, so dropped last if the wait is cancelled: it then sees only the
        // map's handle on the semaphore and tidies the entry up.
        let mut slot = HostSlot {
            cap: self.clone(),
            host: host.to_string(),
            permit: None,
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
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut hosts = self.cap.hosts();
        // Only the map holds the semaphore: no holder, no waiter (clones happen under the
        // lock, so this cannot race with a new `acquire`).
        if hosts
            .get(&self.host)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            hosts.remove(&self.host);
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

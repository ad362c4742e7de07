//! The names of every exchange, routing key, queue and Redis key of one namespace.
//!
//! All Redis keys of one job share the hash tag `{<job_id>}`, so every script touches one
//! slot and the aggregator works unchanged on Redis Cluster.

use std::fmt;
use std::time::Duration;

use uuid::Uuid;

/// A pipeline stage: each has a queue, a routing key and a dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Fetch,
    Process,
    Results,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Fetch, Stage::Process, Stage::Results];

    /// The routing key (and queue suffix) of the stage.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Process => "process",
            Stage::Results => "results",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|stage| stage.as_str() == s)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names within one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    ns: String,
}

impl Names {
    pub fn new(namespace: &str) -> Self {
        Self {
            ns: namespace.to_string(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// The direct exchange every stage publishes to.
    pub fn exchange(&self) -> &str {
        &self.ns
    }

    pub fn queue(&self, stage: Stage) -> String {
        format!("{}.{}", self.ns, stage.as_str())
    }

    pub fn dead_queue(&self, stage: Stage) -> String {
        format!("{}.{}.dead", self.ns, stage.as_str())
    }

    /// Where the broker dead-letters a stage queue's messages by itself (a quorum queue's
    /// delivery limit, an expiry, a rejection): a queue that the stage's workers consume to
    /// count each task dead in its job and move it to [`Names::dead_queue`].
    pub fn dlx_queue(&self, stage: Stage) -> String {
        format!("{}.{}.dlx", self.ns, stage.as_str())
    }

    /// Routing key of [`Names::dlx_queue`].
    pub fn dlx_routing_key(stage: Stage) -> String {
        format!("{}.dlx", stage.as_str())
    }

    /// Routing key of a stage's dead-letter queue on the namespace exchange.
    pub fn dead_routing_key(stage: Stage) -> String {
        format!("{}.dead", stage.as_str())
    }

    /// A delay queue of the retry ladder: messages wait there for their TTL, then the broker
    /// dead-letters them back to the stage queue.
    pub fn retry_queue(&self, stage: Stage, delay: Duration) -> String {
        format!(
            "{}.{}.retry.{}",
            self.ns,
            stage.as_str(),
            delay_label(delay)
        )
    }

    pub fn retry_routing_key(stage: Stage, delay: Duration) -> String {
        format!("{}.retry.{}", stage.as_str(), delay_label(delay))
    }

    fn job_key(&self, job: Uuid, what: &str) -> String {
        format!("{}:{{{}}}:{}", self.ns, job, what)
    }

    /// Hash of the job's counters: total, fetched, processed, aggregated, retrying, dead.
    pub fn status_key(&self, job: Uuid) -> String {
        self.job_key(job, "status")
    }

    /// Hash task id -> state (stage level and retrying/dead flag); makes counters idempotent.
    pub fn tasks_key(&self, job: Uuid) -> String {
        self.job_key(job, "tasks")
    }

    /// Hash group key -> packed statistics.
    pub fn groups_key(&self, job: Uuid) -> String {
        self.job_key(job, "groups")
    }

    /// Hash latency bucket -> count of tasks (enqueue to aggregated).
    pub fn latency_key(&self, job: Uuid) -> String {
        self.job_key(job, "latency")
    }

    /// Hash of the job's producer inputs: input id -> checkpoint (`store::inputs`), and
    /// `request` -> the digest of the HTTP request that created the job.
    pub fn inputs_key(&self, job: Uuid) -> String {
        self.job_key(job, "inputs")
    }

    /// Bitmap of the line positions of one producer input registered in the job.
    pub fn input_positions_key(&self, job: Uuid, input: Uuid) -> String {
        self.job_key(job, &format!("input:{input}"))
    }

    /// Sorted set of the job's progress samples (`store::progress`), scored by time: the
    /// dashboard's rate over time.
    pub fn progress_key(&self, job: Uuid) -> String {
        self.job_key(job, "progress")
    }

    /// Set of the explicit task ids (given in task objects) registered in the job.
    pub fn task_ids_key(&self, job: Uuid) -> String {
        self.job_key(job, "ids")
    }

    /// A host's GCRA theoretical arrival time (`lua/hostlimit.lua`); the hash tag is the
    /// host, so each host's limit lives in one slot.
    pub fn host_tat_key(&self, host: &str) -> String {
        format!("{}:host:{{{}}}:tat", self.ns, host)
    }

    /// Until when a host is paused (after a 429/503 with `Retry-After`), next to its TAT.
    pub fn host_pause_key(&self, host: &str) -> String {
        format!("{}:host:{{{}}}:pause", self.ns, host)
    }

    /// Sorted set of the hosts paused now, scored by "paused until": every fetcher's
    /// local view of pauses, so hosts without a rate cost no Redis call per request.
    pub fn paused_hosts_key(&self) -> String {
        format!("{}:paused-hosts", self.ns)
    }

    /// A host's concurrency leases (the fetcher's `--host-concurrency`), next to its TAT.
    pub fn host_leases_key(&self, host: &str) -> String {
        format!("{}:host:{{{}}}:leases", self.ns, host)
    }

    /// A host's queue horizon: the next turn the limiter gives a task it puts aside.
    pub fn host_queue_key(&self, host: &str) -> String {
        format!("{}:host:{{{}}}:queue", self.ns, host)
    }

    /// A host's adaptive (AIMD) rate factor after 429s, next to its TAT.
    pub fn host_rate_key(&self, host: &str) -> String {
        format!("{}:host:{{{}}}:rate", self.ns, host)
    }

    /// Hash host -> the interval (µs) of its configured rate, as the fetchers last
    /// advertised it (each at most once a minute per host): the dashboard's "configured
    /// rate". One small key (one slot of a Redis Cluster), expiring when no fetcher
    /// advertises.
    pub fn host_rates_key(&self) -> String {
        format!("{}:host-rates", self.ns)
    }

    /// A URL's remembered `ETag` / `Last-Modified` and body (the fetcher's
    /// `--conditional`), under a 64-bit FNV-1a hash of the URL (the hash holds the URL too,
    /// so a collision is noticed, not served).
    pub fn cond_key(&self, url: &str) -> String {
        format!("{}:cond:{{{:016x}}}", self.ns, fnv1a(url.as_bytes()))
    }

    /// Sorted set of the namespace's jobs, job id scored by its creation time (ms): the
    /// dashboard's job listing (`store::jobs`). One key, so one slot of a Redis Cluster;
    /// written once per job, read a page at a time.
    pub fn jobs_index_key(&self) -> String {
        format!("{}:jobs", self.ns)
    }

    /// Sorted set of throughput samples (the dashboard's history), scored by sample time.
    pub fn throughput_key(&self) -> String {
        format!("{}:throughput", self.ns)
    }

    /// The keys of one job, for clean-up.
    pub fn job_keys(&self, job: Uuid) -> [String; 4] {
        [
            self.status_key(job),
            self.tasks_key(job),
            self.groups_key(job),
            self.latency_key(job),
        ]
    }
}

/// 64-bit FNV-1a: stable across processes, builds and machines.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `200ms`, `5s`, `2m`, `1h`: the largest whole unit, for queue names.
pub fn delay_label(delay: Duration) -> String {
    let ms = delay.as_millis();
    if ms == 0 {
        "0ms".to_string()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_and_key_names() {
        let n = Names::new("ns");
        assert_eq!(n.exchange(), "ns");
        assert_eq!(n.queue(Stage::Fetch), "ns.fetch");
        assert_eq!(n.dead_queue(Stage::Results), "ns.results.dead");
        assert_eq!(
            n.retry_queue(Stage::Fetch, Duration::from_secs(5)),
            "ns.fetch.retry.5s"
        );
        let job = Uuid::nil();
        assert_eq!(
            n.status_key(job),
            "ns:{00000000-0000-0000-0000-000000000000}:status"
        );
        assert_eq!(n.host_tat_key("example.com"), "ns:host:{example.com}:tat");
        assert_eq!(n.cond_key(""), "ns:cond:{cbf29ce484222325}");
        assert_eq!(n.cond_key("a"), "ns:cond:{af63dc4c8601ec8c}");
    }

    /// Every Lua script touches the keys of one job or of one host (passed in KEYS): in a
    /// Redis Cluster they must share a hash slot, which the hash tags guarantee.
    #[test]
    fn the_keys_of_one_job_or_one_host_share_a_slot() {
        use redis::cluster_routing::Slot;
        let n = Names::new("tributary.prod-1");
        for _ in 0..50 {
            let job = Uuid::new_v4();
            let mut keys = n.job_keys(job).to_vec();
            keys.push(n.inputs_key(job));
            keys.push(n.input_positions_key(job, Uuid::new_v4()));
            keys.push(n.task_ids_key(job));
            let slots: Vec<Slot> = keys.iter().map(Slot::for_key).collect();
            assert!(
                slots.windows(2).all(|w| w[0] == w[1]),
                "job {job}: {slots:?}"
            );
        }
        for host in [
            "example.com",
            "127.0.0.1",
            "[::1]",
            "a.b.c.example.org",
            "xn--bcher-kva.de",
        ] {
            let keys = [
                n.host_tat_key(host),
                n.host_pause_key(host),
                n.host_rate_key(host),
                n.host_queue_key(host),
                n.host_leases_key(host),
            ];
            let slots: Vec<Slot> = keys.iter().map(Slot::for_key).collect();
            assert!(slots.windows(2).all(|w| w[0] == w[1]), "{host}: {slots:?}");
        }
    }

    #[test]
    fn delay_labels() {
        assert_eq!(delay_label(Duration::from_millis(200)), "200ms");
        assert_eq!(delay_label(Duration::from_millis(1500)), "1500ms");
        assert_eq!(delay_label(Duration::from_secs(30)), "30s");
        assert_eq!(delay_label(Duration::from_secs(120)), "2m");
        assert_eq!(delay_label(Duration::from_secs(7200)), "2h");
    }

    #[test]
    fn stage_parse_round_trips() {
        for s in Stage::ALL {
            assert_eq!(Stage::parse(s.as_str()), Some(s));
        }
        assert_eq!(Stage::parse("nope"), None);
    }
}

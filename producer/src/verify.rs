//! `producer status --verify JOB`: checks that a job can still finish. Counts the job's
//! per-task states in Redis ([`Census`]), says whether the status counters agree with them,
//! and lists the tasks that are neither final nor anywhere they can be expected: not
//! aggregated or dead, not waiting in a delay queue (retrying, deferred), while the stage
//! queue they are expected in next and its `.dlx` queue hold no message. Prints one JSON
//! object; exits 1 when something is off.

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tributary::broker::amqp;
use tributary::names::{Names, Stage};
use tributary::runtime::config::ConnectionArgs;
use tributary::store::Store;
use tributary::store::census::{Census, PerStage};
use uuid::Uuid;

/// How long reading the queue depths may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(15);

/// A task listed as unaccounted for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unaccounted {
    pub task_id: Uuid,
    /// The stage queue it is expected in and is not (`fetch`, `process`, `results`).
    pub stage: &'static str,
}

/// What `status --verify` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    #[serde(flatten)]
    pub census: Census,
    /// Messages ready in each stage queue plus its `.dlx` queue when the census was taken.
    pub queued: PerStage,
    /// Tasks expected in a stage whose queues held nothing (never-marked ones included).
    pub unaccounted: u64,
    /// Up to `--limit` of them per stage (never-marked tasks have no id in Redis).
    pub unaccounted_tasks: Vec<Unaccounted>,
    /// One line per problem; empty when the job verifies.
    pub problems: Vec<String>,
    pub ok: bool,
}

/// Runs `status --verify`: prints the report; an error (exit 1) when the job does not
/// verify.
pub async fn run(c: &ConnectionArgs, job: Uuid, limit: usize) -> anyhow::Result<()> {
    let verified = verify(c, job, limit).await?;
    crate::print_json(&verified)?;
    if let Some(first) = verified.problems.first() {
        anyhow::bail!(
            "job {job} does not verify: {first} ({} problem(s), see the json)",
            verified.problems.len()
        );
    }
    Ok(())
}

/// Takes the census of `job`, then reads the queue depths of its namespace.
pub async fn verify(c: &ConnectionArgs, job: Uuid, limit: usize) -> anyhow::Result<Verified> {
    let store = Store::connect(c).await?;
    let census = Census::take(&store, job, limit)
        .await
        .context("cannot count the job's task states")?
        .with_context(|| format!("unknown job {job} in namespace {}", c.namespace))?;
    let queued = tokio::time::timeout(BROKER_TIMEOUT, ready_messages(c, store.names()))
        .await
        .map_err(|_| anyhow::anyhow!("the broker did not answer within {BROKER_TIMEOUT:?}"))??;
    Ok(judge(census, queued))
}

/// Decides what is unaccounted for and what the problems are.
fn judge(census: Census, queued: PerStage) -> Verified {
    let mut unaccounted = 0;
    let mut unaccounted_tasks = Vec::new();
    for (level, stage) in Stage::ALL.into_iter().enumerate() {
        if queued.get(level) == 0 {
            unaccounted += census.expected_in.get(level);
            unaccounted_tasks.extend(census.samples[level].iter().map(|&task_id| Unaccounted {
                task_id,
                stage: stage.as_str(),
            }));
        }
    }
    let mut problems = census.disagreements();
    if unaccounted > 0 {
        problems.push(format!(
            "{unaccounted} task(s) are neither final nor in a queue"
        ));
    }
    Verified {
        census,
        queued,
        unaccounted,
        unaccounted_tasks,
        ok: problems.is_empty(),
        problems,
    }
}

/// Messages ready in each stage queue and its `.dlx` queue (passive declares).
async fn ready_messages(c: &ConnectionArgs, names: &Names) -> anyhow::Result<PerStage> {
    let conn = amqp::connect_any(&c.amqp_url, "producer-verify").await?;
    let mut ready = PerStage::default();
    for (level, stage) in Stage::ALL.into_iter().enumerate() {
        for queue in [names.queue(stage), names.dlx_queue(stage)] {
            let channel = conn.create_channel().await?;
            let depth = amqp::queue_depth(&channel, &queue)
                .await
                .with_context(|| format!("cannot read queue {queue}"))?;
            ready.add(level, u64::from(depth));
            let _ = channel.close(200, "read".into()).await;
        }
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(ready)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary::store::census::Counters;

    fn census() -> Census {
        let task = |n: u128| Uuid::from_u128(n);
        Census {
            job_id: Uuid::nil(),
            total: 10,
            counters: Counters::default(),
            states: Counters::default(),
            known: 8,
            unreadable: 0,
            expected_in: PerStage {
                fetch: 3,
                process: 1,
                results: 0,
            },
            samples: [vec![task(1)], vec![task(2)], Vec::new()],
        }
    }

    #[test]
    fn tasks_count_as_unaccounted_only_where_their_queue_is_empty() {
        let v = judge(
            census(),
            PerStage {
                fetch: 5,
                process: 0,
                results: 0,
            },
        );
        assert_eq!(v.unaccounted, 1);
        assert_eq!(
            v.unaccounted_tasks,
            [Unaccounted {
                task_id: Uuid::from_u128(2),
                stage: "process"
            }]
        );
        assert!(!v.ok);
        assert_eq!(v.problems, ["1 task(s) are neither final nor in a queue"]);
        let busy = judge(
            census(),
            PerStage {
                fetch: 1,
                process: 1,
                results: 0,
            },
        );
        assert!(busy.ok && busy.unaccounted == 0, "{busy:?}");
    }

    #[test]
    fn the_report_is_one_flat_json_object() {
        let v = judge(census(), PerStage::default());
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["unaccounted"], 4);
        assert_eq!(json["expected_in"]["fetch"], 3);
        assert_eq!(json["unaccounted_tasks"][0]["stage"], "fetch");
        assert_eq!(json["ok"], false);
        assert!(json.get("samples").is_none());
    }
}

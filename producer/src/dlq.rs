//! `producer dlq list|replay|purge`: inspect, replay and delete dead letters.
//!
//! Every command makes one pass over the dead-letter queue of each chosen stage
//! (`<ns>.<stage>.dead`, all three stages without `--stage`). A pass takes messages with
//! `basic.get` and leaves them unacked, and it takes at most as many as the queue held when
//! the pass began, so dead letters that arrive meanwhile (or come back) are never read twice
//! and a pass always ends. A matching message is then listed, replayed or deleted (acked);
//! everything not acked returns to the queue when the pass closes its channel (the broker
//! requeues unacked messages on channel close; a classic queue puts each back in its original
//! place, a quorum queue ahead of the messages it never handed out). So `list` and a
//! `--dry-run` change nothing, not even the order, and `replay` and `purge` leave non-matching
//! dead letters in place. (Closing the channel rather than nacking each one is deliberate: a
//! nacked message goes back to the head at once, where the next `basic.get` would find it
//! again.) A pass holds what it read unacked until it ends, so a pass over a very large queue
//! must end within the broker's delivery acknowledgement timeout (`consumer_timeout`, 30 min
//! by default); if it does not, the broker closes the channel and the command fails with
//! everything not yet acked back in the queue.
//!
//! `replay` republishes the original body to the stage (exchange `<ns>`, routing key
//! `fetch` / `process` / `results`), persistent, with the original content type, attempt 1 and
//! the task's job / task / URL / enqueue-time headers. For a dead letter that has a job and
//! task id, it first marks the task replayed in Redis (the job's dead count goes down, so the
//! job is not done until the task finishes again), then publishes and waits for the broker's
//! confirm, and only then acks the dead letter. Marking first means a fast stage that fails the
//! task again cannot mark it dead before the replay mark lands (which would leave the job
//! never done); if the publish fails the mark is undone. A crash at any point loses no task:
//! a crash between the mark and the confirm leaves the task counted as in flight while it is
//! still dead-lettered, one between the confirm and the ack leaves it replayed and still
//! dead-lettered; either way running `replay` again settles it, and replaying a task twice is
//! harmless (the pipeline counts each task id once).

use std::io::Write;

use anyhow::Context as _;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::{BasicProperties, Channel, Connection};
use serde::Serialize;
use tributary::broker::amqp;
use tributary::broker::deadletter::{
    BrokerDeath, DeadInfo, TaskRef, enqueued_ms_of, stage_properties, traceparent_of,
};
use tributary::broker::topology::Topology;
use tributary::message::{CONTENT_TYPE_PAYLOADS, CONTENT_TYPE_RESULTS, CONTENT_TYPE_TASK};
use tributary::names::{Names, Stage};
use tributary::runtime::config::ConnectionArgs;
use tributary::runtime::shutdown::CancellationToken;
use tributary::store::{Mark, Store};

use crate::config::{DlqCommand, DlqFilter};

/// Whether a dead letter passes every filter that is set.
pub fn matches(info: &DeadInfo, filter: &DlqFilter) -> bool {
    filter
        .stage
        .is_none_or(|stage| info.stage.as_deref() == Some(stage.as_str()))
        && filter.job_id.is_none_or(|job| info.job_id == Some(job))
        && filter
            .error
            .as_deref()
            .is_none_or(|class| info.error.as_deref() == Some(class))
}

/// What a dead letter found in `stage`'s dead-letter queue says about itself.
///
/// Besides the `x-tributary-*` headers of [`DeadInfo`]: the stage is the queue's when the
/// header is missing, and a message the broker dead-lettered by itself straight into the
/// dead-letter queue (only an older version's topology did that) is described from the
/// latest entry of its `x-death` header, so its error class is `delivery_limit`.
pub fn describe(properties: &BasicProperties, stage: Stage) -> DeadInfo {
    let mut info = DeadInfo::from_properties(properties);
    info.stage.get_or_insert_with(|| stage.as_str().to_string());
    if info.error.is_none()
        && let Some(death) = BrokerDeath::of(properties)
    {
        info.reason.get_or_insert(death.failure().reason);
        info.attempts = info.attempts.or(death.deliveries);
        info.error = Some(death.class().as_str().to_string());
    }
    info
}

/// The content type a stage expects, for a dead letter that has none.
fn default_content_type(stage: Stage) -> &'static str {
    match stage {
        Stage::Fetch => CONTENT_TYPE_TASK,
        Stage::Process => CONTENT_TYPE_PAYLOADS,
        Stage::Results => CONTENT_TYPE_RESULTS,
    }
}

/// A dead letter taken from its queue and not yet acked.
struct Dead {
    info: DeadInfo,
    delivery: lapin::message::Delivery,
}

/// One pass over a dead-letter queue (see the module documentation).
struct Pass {
    channel: Channel,
    queue: String,
    stage: Stage,
    left: u32,
}

impl Pass {
    async fn open(conn: &Connection, names: &Names, stage: Stage) -> anyhow::Result<Pass> {
        let channel = conn.create_channel().await?;
        let queue = names.dead_queue(stage);
        let left = amqp::queue_depth(&channel, &queue)
            .await
            .with_context(|| format!("cannot open the dead-letter queue {queue}"))?;
        Ok(Pass {
            channel,
            queue,
            stage,
            left,
        })
    }

    /// The next dead letter of the pass, unacked; `None` when the pass is through.
    async fn next(&mut self) -> anyhow::Result<Option<Dead>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let got = self
            .channel
            .basic_get(
                self.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .with_context(|| format!("cannot read the dead-letter queue {}", self.queue))?;
        Ok(got.map(|message| Dead {
            info: describe(&message.delivery.properties, self.stage),
            delivery: message.delivery,
        }))
    }

    /// Ends the pass: the broker has then applied every ack, and everything not acked is
    /// back in the queue, in its place.
    async fn close(self) -> anyhow::Result<()> {
        self.channel
            .close(200, "dlq pass done".into())
            .await
            .with_context(|| format!("closing the pass over {}", self.queue))
    }
}

/// What a command does with each matching dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Print it (`list`, and `replay --dry-run`), at most `limit` of them.
    Print {
        limit: Option<u64>,
    },
    Replay,
    Purge,
}

/// Runs one `dlq` command, writing its NDJSON / JSON lines to `out`:
/// - `list`: one [`DeadInfo`] object per matching dead letter;
/// - `replay`: `{"replayed": N}`;
/// - `replay --dry-run`: one [`DeadInfo`] per dead letter it would replay, then
///   `{"replayed": 0, "would_replay": N}`;
/// - `purge`: `{"purged": N}`.
///
/// Stops between two dead letters when `shutdown` is cancelled, with an error saying how far
/// it got (what is done is done; the rest stays in the dead-letter queues).
pub async fn run(
    connection: &ConnectionArgs,
    command: &DlqCommand,
    shutdown: &CancellationToken,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let conn = amqp::connect_any(&connection.amqp_url, "producer-dlq").await?;
    let result = run_on(&conn, None, connection, command, shutdown, out).await;
    let _ = conn.close(200, "done".into()).await;
    result
}

/// [`run`] on a connection of the caller's (which stays open), with the caller's store for
/// `replay` (without one, `replay` connects to Redis itself).
pub async fn run_on(
    conn: &Connection,
    store: Option<&Store>,
    connection: &ConnectionArgs,
    command: &DlqCommand,
    shutdown: &CancellationToken,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (filter, action, verb) = match command {
        DlqCommand::List { filter, limit } => (filter, Action::Print { limit: *limit }, "listing"),
        DlqCommand::Replay {
            filter,
            dry_run: true,
        } => (filter, Action::Print { limit: None }, "listing"),
        DlqCommand::Replay { filter, .. } => (filter, Action::Replay, "replaying"),
        DlqCommand::Purge { filter } => (filter, Action::Purge, "purging"),
    };
    let mut sweep = Sweep {
        names: Names::new(&connection.namespace),
        filter,
        action,
        shutdown,
        done: 0,
    };
    let mut swept = sweep.run(conn, store, connection, out).await;
    let done = sweep.done;
    if done > 0 {
        swept = swept.with_context(|| format!("stopped after {verb} {done} dead letter(s)"));
    }
    let summary = match command {
        DlqCommand::List { .. } => None,
        DlqCommand::Replay { dry_run: true, .. } => {
            Some(serde_json::json!({"replayed": 0, "would_replay": done}))
        }
        DlqCommand::Replay { .. } => Some(serde_json::json!({ "replayed": done })),
        DlqCommand::Purge { .. } => Some(serde_json::json!({ "purged": done })),
    };
    let printed = swept.and_then(|()| summary.map_or(Ok(()), |line| emit(out, &line)));
    match printed {
        // Whoever read stdout (`dlq list | head`) has seen enough: not an error.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Writes one JSON line.
fn emit(out: &mut impl Write, value: &impl Serialize) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()?;
    Ok(())
}

/// One command's passes over the chosen dead-letter queues.
struct Sweep<'a> {
    names: Names,
    filter: &'a DlqFilter,
    action: Action,
    shutdown: &'a CancellationToken,
    /// Dead letters listed, replayed or purged so far.
    done: u64,
}

impl Sweep<'_> {
    async fn run(
        &mut self,
        conn: &Connection,
        store: Option<&Store>,
        connection: &ConnectionArgs,
        out: &mut impl Write,
    ) -> anyhow::Result<()> {
        let setup = conn.create_channel().await?;
        Topology::new(self.names.clone(), connection.queue_type)
            .declare(&setup)
            .await?;
        let _ = setup.close(200, "topology declared".into()).await;
        let writer = match self.action {
            Action::Print { .. } => None,
            Action::Replay | Action::Purge => Some(Writer {
                publisher: amqp::confirm_channel(conn).await?,
                store: match store {
                    Some(store) => store.clone(),
                    None => Store::connect(connection).await?,
                },
            }),
        };
        let act = match (self.action, &writer) {
            (Action::Replay, Some(writer)) => Act::Replay(writer),
            (Action::Purge, Some(writer)) => Act::Purge(writer),
            _ => Act::Print,
        };
        let stages = match self.filter.stage {
            Some(stage) => vec![stage],
            None => Stage::ALL.to_vec(),
        };
        for stage in stages {
            let mut pass = Pass::open(conn, &self.names, stage).await?;
            let visited = self.visit(&mut pass, &act, out).await;
            let closed = pass.close().await;
            visited?;
            closed?;
        }
        Ok(())
    }

    fn limit_reached(&self) -> bool {
        matches!(self.action, Action::Print { limit: Some(limit) } if self.done >= limit)
    }

    async fn visit(
        &mut self,
        pass: &mut Pass,
        act: &Act<'_>,
        out: &mut impl Write,
    ) -> anyhow::Result<()> {
        let mut seen = std::collections::HashSet::new();
        while !self.limit_reached() {
            if self.shutdown.is_cancelled() {
                anyhow::bail!("interrupted");
            }
            let Some(dead) = pass.next().await? else {
                break;
            };
            if !matches(&dead.info, self.filter) {
                continue;
            }
            // A crash between dead-lettering and acking can dead-letter a task twice; it is
            // one dead task: listed and counted once, and its extra copies are removed when
            // the first is replayed or purged.
            let duplicate = dead.info.task_id.is_some_and(|task| !seen.insert(task));
            if duplicate {
                if !matches!(self.action, Action::Print { .. }) {
                    ack(&dead).await?;
                }
                continue;
            }
            match act {
                Act::Print => emit(out, &dead.info)?,
                Act::Replay(writer) => writer.replay(&self.names, pass.stage, &dead).await?,
                Act::Purge(writer) => writer.purge(&dead).await?,
            }
            self.done += 1;
        }
        Ok(())
    }
}

/// Acks (removes) a dead letter.
async fn ack(dead: &Dead) -> anyhow::Result<()> {
    let acked = dead.delivery.acker.ack(BasicAckOptions::default()).await?;
    anyhow::ensure!(
        acked,
        "the broker channel closed before a dead letter could be removed"
    );
    Ok(())
}

/// What a sweep does with each matching dead letter, with what it needs to do it.
enum Act<'a> {
    Print,
    Replay(&'a Writer),
    Purge(&'a Writer),
}

/// Where replayed dead letters go, and the store that counts replayed and purged tasks.
struct Writer {
    publisher: Channel,
    store: Store,
}

impl Writer {
    /// Deletes a dead letter, first marking its task dead in its job (idempotent: it
    /// normally is already), so no purge leaves a task its job never counts.
    async fn purge(&self, dead: &Dead) -> anyhow::Result<()> {
        if let Some((job, id)) = dead.info.job_id.zip(dead.info.task_id) {
            self.store
                .mark(job, Mark::Dead, &[id])
                .await
                .with_context(|| format!("cannot mark task {id} dead in Redis"))?;
        }
        ack(dead).await
    }

    /// Marks the task replayed, republishes the dead letter to `stage` (confirmed), then
    /// acks it; undoes the mark if the publish fails.
    async fn replay(&self, names: &Names, stage: Stage, dead: &Dead) -> anyhow::Result<()> {
        let properties = &dead.delivery.properties;
        let task = TaskRef {
            job_id: dead.info.job_id,
            task_id: dead.info.task_id,
            url: dead.info.url.clone(),
            enqueued_ms: enqueued_ms_of(properties),
            traceparent: traceparent_of(properties),
        };
        let content_type = properties
            .content_type()
            .as_ref()
            .map_or(default_content_type(stage), |c| c.as_str());
        let mut revived = None;
        if let Some((job, id)) = task.job_id.zip(task.task_id) {
            let changed = self
                .store
                .mark(job, Mark::Replayed, &[id])
                .await
                .with_context(|| format!("cannot mark task {id} replayed in Redis"))?;
            revived = (changed > 0).then_some((job, id));
        }
        let published = amqp::publish_confirmed(
            &self.publisher,
            names.exchange(),
            stage.as_str(),
            &dead.delivery.data,
            stage_properties(content_type, 1, None, &task),
        )
        .await;
        if let Err(e) = published {
            if let Some((job, id)) = revived
                && let Err(undo) = self.store.mark(job, Mark::Dead, &[id]).await
            {
                tracing::warn!(%job, task = %id, "cannot mark the task dead again: {undo}");
            }
            return Err(anyhow::Error::from(e).context(format!("cannot replay to {stage}")));
        }
        ack(dead).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, FieldTable, LongString};
    use tributary::broker::amqp::HeadersExt;
    use tributary::broker::deadletter::dead_properties;
    use tributary::policy::{ErrorClass, Failure};
    use uuid::Uuid;

    fn info(stage: &str, job: Option<Uuid>, error: &str) -> DeadInfo {
        DeadInfo {
            task_id: Some(Uuid::new_v4()),
            job_id: job,
            url: Some("http://a.example/x".into()),
            stage: Some(stage.into()),
            error: Some(error.into()),
            reason: Some("origin answered 404 Not Found".into()),
            attempts: Some(1),
            status: Some(404),
            failed_at: None,
        }
    }

    fn filter(stage: Option<Stage>, job_id: Option<Uuid>, error: Option<&str>) -> DlqFilter {
        DlqFilter {
            stage,
            job_id,
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn no_filter_matches_everything() {
        let job = Uuid::new_v4();
        assert!(matches(
            &info("fetch", Some(job), "http_status"),
            &DlqFilter::default()
        ));
        let mut garbage = info("process", None, "invalid_payload");
        garbage.error = None;
        garbage.stage = None;
        assert!(matches(&garbage, &DlqFilter::default()));
    }

    #[test]
    fn every_given_filter_must_match() {
        let job = Uuid::new_v4();
        let dead = info("fetch", Some(job), "http_status");
        assert!(matches(&dead, &filter(Some(Stage::Fetch), None, None)));
        assert!(!matches(&dead, &filter(Some(Stage::Process), None, None)));
        assert!(matches(&dead, &filter(None, Some(job), None)));
        assert!(!matches(&dead, &filter(None, Some(Uuid::new_v4()), None)));
        assert!(matches(&dead, &filter(None, None, Some("http_status"))));
        assert!(!matches(&dead, &filter(None, None, Some("timeout"))));
        // The class is compared exactly, any string accepted.
        assert!(!matches(&dead, &filter(None, None, Some("http"))));
        assert!(matches(
            &dead,
            &filter(Some(Stage::Fetch), Some(job), Some("http_status"))
        ));
        assert!(!matches(
            &dead,
            &filter(Some(Stage::Fetch), Some(job), Some("timeout"))
        ));
    }

    #[test]
    fn a_message_without_job_or_class_matches_no_such_filter() {
        let mut garbage = info("fetch", None, "invalid_task");
        assert!(!matches(
            &garbage,
            &filter(None, Some(Uuid::new_v4()), None)
        ));
        garbage.error = None;
        assert!(!matches(
            &garbage,
            &filter(None, None, Some("invalid_task"))
        ));
        assert!(matches(&garbage, &filter(Some(Stage::Fetch), None, None)));
    }

    #[test]
    fn describe_reads_tributary_headers() {
        let task = TaskRef {
            job_id: Some(Uuid::new_v4()),
            task_id: Some(Uuid::new_v4()),
            url: Some("http://a.example/1".into()),
            enqueued_ms: Some(7),
            traceparent: None,
        };
        let props = dead_properties(
            CONTENT_TYPE_TASK,
            Stage::Fetch,
            &Failure::http(404, None),
            2,
            &task,
        );
        let dead = describe(&props, Stage::Fetch);
        assert_eq!(dead, DeadInfo::from_properties(&props));
        assert_eq!(dead.error.as_deref(), Some(ErrorClass::HttpStatus.as_str()));
        assert_eq!(dead.attempts, Some(2));
    }

    #[test]
    fn describe_fills_the_stage_and_broker_dead_letters() {
        let bare = describe(&BasicProperties::default(), Stage::Results);
        assert_eq!(bare.stage.as_deref(), Some("results"));
        assert_eq!((bare.error, bare.job_id), (None, None));

        let mut headers = FieldTable::default();
        headers.set_str("x-first-death-reason", "delivery_limit");
        headers.set_str("x-first-death-queue", "ns.process");
        headers.insert("x-delivery-count".into(), AMQPValue::LongInt(10));
        headers.insert(
            "x-other".into(),
            AMQPValue::LongString(LongString::from("ignored")),
        );
        let props = BasicProperties::default().with_headers(headers);
        let dead = describe(&props, Stage::Process);
        assert_eq!(
            dead.error.as_deref(),
            Some(ErrorClass::DeliveryLimit.as_str())
        );
        assert_eq!(dead.attempts, Some(10));
        assert_eq!(dead.stage.as_deref(), Some("process"));
        assert!(dead.reason.unwrap().contains("ns.process"));
    }

    /// A stdout whose reader has gone.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_end_in_newlines_and_a_closed_pipe_is_recognised() {
        let mut out = Vec::new();
        emit(&mut out, &serde_json::json!({"purged": 2})).unwrap();
        emit(&mut out, &serde_json::json!({"purged": 3})).unwrap();
        assert_eq!(out, b"{\"purged\":2}\n{\"purged\":3}\n");
        let closed = emit(&mut ClosedPipe, &serde_json::json!({})).unwrap_err();
        assert!(is_broken_pipe(&closed.context("listing")));
        assert!(!is_broken_pipe(&anyhow::anyhow!("broker: gone")));
    }

    #[test]
    fn the_default_content_types_are_the_stages() {
        assert_eq!(default_content_type(Stage::Fetch), CONTENT_TYPE_TASK);
        assert_eq!(default_content_type(Stage::Process), CONTENT_TYPE_PAYLOADS);
        assert_eq!(default_content_type(Stage::Results), CONTENT_TYPE_RESULTS);
    }
}

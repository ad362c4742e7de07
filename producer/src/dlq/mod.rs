//! `producer dlq list|replay|purge`: inspect, replay and delete dead letters.
//!
//! Every command makes one pass over the dead-letter queue of each chosen stage
//! (`<ns>.<stage>.dead`, all three stages without `--stage`). A pass reads messages (a
//! read-only pass with a consumer, a changing one with `basic.get`: see [`pass`]) and leaves
//! them unacked, and it takes at most as many as the queue held when
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
//!
//! The results are typed: matching dead letters go to a [`Sink`] as they are found (the CLI
//! prints NDJSON lines, the HTTP API and the dashboard collect a page, [`Collect`]), and
//! the command returns a [`Summary`].

mod pass;
mod sweep;

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Context as _;
use lapin::Connection;
use serde::Serialize;
use tributary::broker::amqp;
use tributary::broker::deadletter::DeadInfo;
use tributary::names::Names;
use tributary::runtime::config::ConnectionArgs;
use tributary::runtime::shutdown::CancellationToken;
use tributary::store::Store;

use crate::config::{DlqCommand, DlqFilter};
pub use pass::describe;
use sweep::{Action, Sweep};

/// Whether a dead letter passes every filter that is set. `search` is a case-insensitive
/// substring of its URL (so of its host), error class or reason.
pub fn matches(info: &DeadInfo, filter: &DlqFilter) -> bool {
    filter
        .stage
        .is_none_or(|stage| info.stage.as_deref() == Some(stage.as_str()))
        && filter.job_id.is_none_or(|job| info.job_id == Some(job))
        && filter.task_id.is_none_or(|task| info.task_id == Some(task))
        && filter
            .error
            .as_deref()
            .is_none_or(|class| info.error.as_deref() == Some(class))
        && filter.search.as_deref().is_none_or(|needle| {
            let needle = needle.to_lowercase();
            [&info.url, &info.error, &info.reason]
                .into_iter()
                .flatten()
                .any(|hay| hay.to_lowercase().contains(&needle))
        })
}

/// What a `dlq` command did, besides the dead letters it handed to its [`Sink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    Listed(u64),
    WouldReplay(u64),
    Replayed(u64),
    Purged(u64),
}

impl Summary {
    /// The summary line the CLI prints (none after `list`).
    pub fn json(self) -> Option<serde_json::Value> {
        match self {
            Summary::Listed(_) => None,
            Summary::WouldReplay(n) => Some(serde_json::json!({"replayed": 0, "would_replay": n})),
            Summary::Replayed(n) => Some(serde_json::json!({ "replayed": n })),
            Summary::Purged(n) => Some(serde_json::json!({ "purged": n })),
        }
    }

    /// How many dead letters it listed, would replay, replayed or purged.
    pub fn count(self) -> u64 {
        match self {
            Summary::Listed(n)
            | Summary::WouldReplay(n)
            | Summary::Replayed(n)
            | Summary::Purged(n) => n,
        }
    }
}

/// Where a command's matching dead letters go (`list`, `replay --dry-run`).
pub trait Sink {
    fn entry(&mut self, info: &DeadInfo) -> anyhow::Result<()>;

    /// A pass over a dead-letter queue that holds `depth` dead letters begins.
    fn pass(&mut self, _depth: u32) {}

    /// Called for every dead letter read, matching or not: `false` ends the command after
    /// this one (a reader with a budget).
    fn read(&mut self) -> bool {
        true
    }

    /// The most dead letters it will still read, if it has a budget.
    fn read_at_most(&self) -> Option<u64> {
        None
    }
}

/// The CLI's sink: one JSON line per dead letter.
pub struct Ndjson<W>(pub W);

impl<W: Write> Sink for Ndjson<W> {
    fn entry(&mut self, info: &DeadInfo) -> anyhow::Result<()> {
        emit(&mut self.0, info)
    }
}

/// A page of dead letters: skips the first `skip`, keeps the next `keep`, and counts every
/// matching one it sees per error class; with a `budget`, reads at most that many dead
/// letters (matching or not).
#[derive(Debug, Default, Serialize)]
pub struct Collect {
    #[serde(skip)]
    pub skip: u64,
    #[serde(skip)]
    pub keep: usize,
    #[serde(skip)]
    pub budget: Option<u64>,
    pub entries: Vec<DeadInfo>,
    /// Matching dead letters seen, and per error class (`unknown` without one).
    pub seen: u64,
    pub by_error: BTreeMap<String, u64>,
    /// Dead letters read, and how many the queues held when their passes began.
    pub read: u64,
    pub depth: u64,
}

impl Collect {
    pub fn page(skip: u64, keep: usize) -> Self {
        Collect {
            skip,
            keep,
            ..Default::default()
        }
    }

    /// Reads at most `budget` dead letters.
    pub fn within(self, budget: u64) -> Self {
        Collect {
            budget: Some(budget),
            ..self
        }
    }

    /// Whether the budget ended the read before the queues did.
    pub fn cut_short(&self) -> bool {
        self.budget.is_some_and(|budget| self.read >= budget) && self.read < self.depth
    }
}

impl Sink for Collect {
    fn pass(&mut self, depth: u32) {
        self.depth += u64::from(depth);
    }

    fn read(&mut self) -> bool {
        self.read += 1;
        self.budget.is_none_or(|budget| self.read < budget)
    }

    fn read_at_most(&self) -> Option<u64> {
        self.budget.map(|budget| budget.saturating_sub(self.read))
    }

    fn entry(&mut self, info: &DeadInfo) -> anyhow::Result<()> {
        self.seen += 1;
        let class = info.error.as_deref().unwrap_or("unknown");
        *self.by_error.entry(class.to_string()).or_default() += 1;
        if self.seen > self.skip && self.entries.len() < self.keep {
            self.entries.push(info.clone());
        }
        Ok(())
    }
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
    let mut sink = Ndjson(&mut *out);
    let result = run_on(&conn, None, connection, command, shutdown, &mut sink).await;
    let _ = conn.close(200, "done".into()).await;
    let printed = result.and_then(|summary| summary.json().map_or(Ok(()), |l| emit(out, &l)));
    match printed {
        // Whoever read stdout (`dlq list | head`) has seen enough: not an error.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// [`run`] on a connection of the caller's (which stays open), with the caller's store for
/// `replay` (without one, `replay` connects to Redis itself); dead letters go to `sink`.
pub async fn run_on(
    conn: &Connection,
    store: Option<&Store>,
    connection: &ConnectionArgs,
    command: &DlqCommand,
    shutdown: &CancellationToken,
    sink: &mut impl Sink,
) -> anyhow::Result<Summary> {
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
        stopped: false,
    };
    let mut swept = sweep.run(conn, store, connection, sink).await;
    let done = sweep.done;
    if done > 0 {
        swept = swept.with_context(|| format!("stopped after {verb} {done} dead letter(s)"));
    }
    swept?;
    Ok(match command {
        DlqCommand::List { .. } => Summary::Listed(done),
        DlqCommand::Replay { dry_run: true, .. } => Summary::WouldReplay(done),
        DlqCommand::Replay { .. } => Summary::Replayed(done),
        DlqCommand::Purge { .. } => Summary::Purged(done),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use tributary::names::Stage;
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
            ..Default::default()
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
    fn search_and_task_filters_match() {
        let dead = info("fetch", None, "http_status");
        let search = |text: &str| DlqFilter {
            search: Some(text.into()),
            ..Default::default()
        };
        assert!(matches(&dead, &search("A.EXAMPLE")));
        assert!(matches(&dead, &search("404 not")));
        assert!(matches(&dead, &search("http_st")));
        assert!(!matches(&dead, &search("b.example")));
        let task = DlqFilter {
            task_id: dead.task_id,
            ..Default::default()
        };
        assert!(matches(&dead, &task));
        assert!(!matches(&info("fetch", None, "x"), &task));
        let mut page = Collect::page(1, 1);
        for _ in 0..3 {
            page.entry(&dead).unwrap();
        }
        assert_eq!((page.seen, page.entries.len()), (3, 1));
        assert_eq!(page.by_error["http_status"], 3);
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
}

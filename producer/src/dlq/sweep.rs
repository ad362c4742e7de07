//! One `dlq` command's passes over the chosen dead-letter queues, and what it does with each
//! matching dead letter: hand it to a [`Sink`], replay it or purge it (see [`super`]).

use std::collections::HashSet;

use anyhow::Context as _;
use lapin::{Channel, Connection};
use tributary::broker::amqp;
use tributary::broker::deadletter::{TaskRef, enqueued_ms_of, stage_properties, traceparent_of};
use tributary::broker::topology::Topology;
use tributary::names::{Names, Stage};
use tributary::runtime::config::ConnectionArgs;
use tributary::runtime::shutdown::CancellationToken;
use tributary::store::{Mark, Store};

use super::pass::{Dead, Pass, ack};
use super::{Sink, matches};
use crate::config::DlqFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// Print it (`list`, and `replay --dry-run`), at most `limit` of them.
    Print {
        limit: Option<u64>,
    },
    Replay,
    Purge,
}

/// One command's passes over the chosen dead-letter queues.
pub(super) struct Sweep<'a> {
    pub(super) names: Names,
    pub(super) filter: &'a DlqFilter,
    pub(super) action: Action,
    pub(super) shutdown: &'a CancellationToken,
    /// Dead letters listed, replayed or purged so far.
    pub(super) done: u64,
    /// The sink has read enough.
    pub(super) stopped: bool,
}

impl Sweep<'_> {
    pub(super) async fn run(
        &mut self,
        conn: &Connection,
        store: Option<&Store>,
        connection: &ConnectionArgs,
        sink: &mut impl Sink,
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
            if self.stopped {
                break;
            }
            let browse = self.browse_at_most(sink);
            let mut pass = Pass::open(conn, &self.names, stage, browse).await?;
            sink.pass(pass.depth);
            let visited = self.visit(&mut pass, &act, sink).await;
            let closed = pass.close().await;
            visited?;
            closed?;
        }
        Ok(())
    }

    /// For a read-only sweep, the most dead letters the next pass may read (`u64::MAX`
    /// when unbounded): what the sink's budget leaves and, without a filter, what the
    /// limit leaves. `None`: the sweep changes what it reads (no browsing).
    fn browse_at_most(&self, sink: &impl Sink) -> Option<u64> {
        let Action::Print { limit } = self.action else {
            return None;
        };
        let unfiltered = *self.filter == DlqFilter::default();
        let by_limit = limit
            .filter(|_| unfiltered)
            .map(|l| l.saturating_sub(self.done));
        Some(
            [sink.read_at_most(), by_limit]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(u64::MAX),
        )
    }

    fn limit_reached(&self) -> bool {
        matches!(self.action, Action::Print { limit: Some(limit) } if self.done >= limit)
    }

    async fn visit(
        &mut self,
        pass: &mut Pass,
        act: &Act<'_>,
        sink: &mut impl Sink,
    ) -> anyhow::Result<()> {
        let mut seen = HashSet::new();
        while !self.limit_reached() && !self.stopped {
            if self.shutdown.is_cancelled() {
                anyhow::bail!("interrupted");
            }
            let Some(dead) = pass.next().await? else {
                break;
            };
            self.stopped = !sink.read();
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
                Act::Print => sink.entry(&dead.info)?,
                Act::Replay(writer) => writer.replay(&self.names, pass.stage, &dead).await?,
                Act::Purge(writer) => writer.purge(&dead).await?,
            }
            self.done += 1;
        }
        Ok(())
    }
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
            .map_or(tributary::message::stage_content_type(stage), |c| {
                c.as_str()
            });
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

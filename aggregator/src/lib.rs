//! `aggregator`: consumes `ns.results` and applies each task's records to Redis exactly
//! once per task id, many messages per Lua call; `aggregator results JOB_ID` prints a job's
//! aggregate.
//!
//! Batches are applied one after another on one channel, so when a batch is durable every
//! earlier delivery already is, and one `multiple` ack settles the whole batch.

pub mod config;

use anyhow::Context as _;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions};
use tributary::broker::amqp;
use tributary::broker::deadletter::{TaskRef, dead_properties};
use tributary::broker::topology::Topology;
use tributary::message::{CONTENT_TYPE_RESULTS, ResultBatch};
use tributary::names::{Names, Stage};
use tributary::runtime::metrics::metrics;
use tributary::runtime::session::Session;
use tributary::runtime::shutdown::CancellationToken;
use tributary::runtime::supervise::supervise;
use tributary::store::{Store, by_job};

pub use config::{Command, Config};

/// Runs the subcommand (by default the consumer).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    match &config.command {
        Some(Command::Results { job_id }) => {
            let c = &config.common.connection;
            let store = Store::connect(c).await?;
            let results = store
                .results(*job_id)
                .await?
                .with_context(|| format!("unknown job {job_id} in namespace {}", c.namespace))?;
            println!("{}", serde_json::to_string(&results)?);
            Ok(())
        }
        Some(Command::Run) | None => consume(config, shutdown).await,
    }
}

async fn consume(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    tributary::runtime::metrics::serve_if_asked(&config.worker, &shutdown).await?;
    let names = Names::new(&config.common.connection.namespace);
    let topology = Topology::new(names.clone(), config.common.connection.queue_type);
    let connection = config.common.connection.clone();
    supervise("aggregator", &connection, topology, shutdown, |session| {
        aggregate_session(&config, &names, session)
    })
    .await
}

async fn aggregate_session(config: &Config, names: &Names, session: Session) -> anyhow::Result<()> {
    let publisher = session.confirm_channel().await?;
    let (channel, mut consumer, tag) = session
        .consumer(
            &names.queue(Stage::Results),
            config.prefetch(),
            "aggregator",
        )
        .await?;
    loop {
        let first = tokio::select! {
            _ = session.shutdown.cancelled() => {
                let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                return Ok(());
            }
            next = consumer.next() => next.context("the broker closed the consumer")??,
        };
        let mut batch = vec![first];
        let linger = tokio::time::sleep(config.batch_linger);
        tokio::pin!(linger);
        while batch.len() < config.batch_messages.max(1) {
            tokio::select! {
                biased;
                next = consumer.next() => batch.push(next.context("the broker closed the consumer")??),
                _ = &mut linger => break,
            }
        }
        apply_batch(&batch, &session.store, &publisher, names).await?;
        let last = batch.last().expect("a batch has a first delivery");
        last.acker.ack(BasicAckOptions { multiple: true }).await?;
    }
}

/// Applies every valid result of the batch (one script call per job) and dead-letters the
/// messages that are not result batches.
async fn apply_batch(
    batch: &[Delivery],
    store: &Store,
    publisher: &lapin::Channel,
    names: &Names,
) -> anyhow::Result<()> {
    let mut parsed = Vec::with_capacity(batch.len());
    for delivery in batch {
        match ResultBatch::from_json(&delivery.data) {
            Ok(results) => parsed.push(results),
            Err(failure) => {
                tracing::warn!("dead-lettering a results message: {}", failure.reason);
                let props = dead_properties(
                    CONTENT_TYPE_RESULTS,
                    Stage::Results,
                    &failure,
                    1,
                    &TaskRef::default(),
                );
                amqp::publish_confirmed(
                    publisher,
                    names.exchange(),
                    &Names::dead_routing_key(Stage::Results),
                    &delivery.data,
                    props,
                )
                .await?;
            }
        }
    }
    let items = parsed
        .iter()
        .flat_map(|b| b.items.iter())
        .map(|item| (item.job_id, item));
    for (job, items) in by_job(items) {
        let applied = store.apply(job, &items).await?;
        metrics().consumed(Stage::Results, items.len() as u64);
        metrics().succeeded(Stage::Results, applied);
        tracing::debug!(%job, tasks = items.len(), applied, "applied results");
    }
    Ok(())
}

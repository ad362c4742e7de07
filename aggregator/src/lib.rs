//! `aggregator`: consumes `ns.results` and applies each task's records to Redis exactly
//! once per task id, many messages per Lua call; `aggregator results JOB_ID` prints a job's
//! aggregate.
//!
//! Batches are applied one after another on one channel, so when a batch is durable every
//! earlier delivery already is, and one `multiple` ack settles the whole batch.

pub mod config;

use std::collections::BTreeSet;

use anyhow::Context as _;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions};
use tributary::broker::deadletter::{DeadLetter, bury};
use tributary::broker::topology::Topology;
use tributary::message::{ResultBatch, salvage};
use tributary::names::{Names, Stage};
use tributary::runtime::accounting;
use tributary::runtime::config::QueueType;
use tributary::runtime::metrics::metrics;
use tributary::runtime::session::Session;
use tributary::runtime::shutdown::CancellationToken;
use tributary::runtime::supervise::supervise;
use tributary::store::{Store, by_job};
use uuid::Uuid;

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
    let main = aggregate(config, names, &session);
    accounting::alongside(&session, Stage::Results, main).await
}

/// Reads batches of results messages, applies each batch (one script call per job), then
/// acks it with one `multiple` ack — or, when Redis refused some job's results with a
/// script error (a poison job), acks the other deliveries one by one and gives the poison
/// ones back ([`settle_poisoned`]).
async fn aggregate(config: &Config, names: &Names, session: &Session) -> anyhow::Result<()> {
    let publisher = session.confirm_channel().await?;
    let (channel, mut consumer, tag) = session
        .consumer(
            &names.queue(Stage::Results),
            config.prefetch(),
            "aggregator",
        )
        .await?;
    let quorum = config.common.connection.queue_type == QueueType::Quorum;
    loop {
        let first = tokio::select! {
            _ = session.shutdown.cancelled() => {
                let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                return Ok(());
            }
            next = consumer.next() => next.context("the broker cancelled the consumer")??,
        };
        let mut batch = vec![first];
        let linger = tokio::time::sleep(config.batch_linger);
        tokio::pin!(linger);
        while batch.len() < config.batch_messages.max(1) {
            tokio::select! {
                biased;
                next = consumer.next() => batch.push(next.context("the broker cancelled the consumer")??),
                _ = &mut linger => break,
            }
        }
        let applied = apply_batch(&batch, &session.store, &publisher).await?;
        if applied.poisoned.is_empty() {
            let last = batch.last().expect("a batch has a first delivery");
            last.acker.ack(BasicAckOptions { multiple: true }).await?;
        } else {
            settle_poisoned(&batch, &applied, quorum).await?;
        }
    }
}

/// What applying a batch found: per delivery, the jobs its results belong to, and the jobs
/// whose results Redis refused with a script error.
struct Applied {
    jobs: Vec<BTreeSet<Uuid>>,
    poisoned: BTreeSet<Uuid>,
}

/// Applies every valid result of the batch (one script call per job) and dead-letters the
/// messages that are not result batches. A job whose apply fails with a script error (it
/// will fail again: its keys hold something the script cannot work with) is poisoned; any
/// other Redis error ends the session.
async fn apply_batch(
    batch: &[Delivery],
    store: &Store,
    publisher: &lapin::Channel,
) -> anyhow::Result<Applied> {
    let mut parsed = Vec::with_capacity(batch.len());
    let mut dead = Vec::new();
    for delivery in batch {
        match ResultBatch::from_json(&delivery.data) {
            Ok(results) => parsed.push(results),
            Err(failure) => {
                tracing::warn!("dead-lettering a results message: {}", failure.reason);
                let entries = salvage::split(Stage::Results, &delivery.data, None, None);
                dead.extend(
                    entries
                        .into_iter()
                        .map(|entry| DeadLetter::of_entry(entry, failure.clone(), 1)),
                );
                parsed.push(ResultBatch::new(Vec::new()));
            }
        }
    }
    bury(publisher, store, Stage::Results, &dead).await?;
    let items = parsed
        .iter()
        .flat_map(|b| b.items.iter())
        .map(|item| (item.job_id, item));
    let mut poisoned = BTreeSet::new();
    for (job, items) in by_job(items) {
        match store.apply(job, &items).await {
            Ok(applied) => {
                metrics().consumed(Stage::Results, items.len() as u64);
                metrics().succeeded(Stage::Results, applied);
                tracing::debug!(%job, tasks = items.len(), applied, "applied results");
            }
            Err(e) if e.is_script_error() => {
                tracing::warn!(%job, "redis refused this job's results: {e}; their messages go back to the queue");
                poisoned.insert(job);
            }
            Err(e) => return Err(e.into()),
        }
    }
    let jobs = parsed
        .iter()
        .map(|b| b.items.iter().map(|item| item.job_id).collect())
        .collect();
    Ok(Applied { jobs, poisoned })
}

/// Acks each delivery that holds no poisoned job's results; gives the others back. A
/// quorum queue counts their deliveries and dead-letters them at its delivery limit (then
/// they are counted dead as `delivery_limit`); a classic queue has no limit, so a delivery
/// that was already redelivered is rejected instead (dead-lettered as `rejected`).
async fn settle_poisoned(
    batch: &[Delivery],
    applied: &Applied,
    quorum: bool,
) -> anyhow::Result<()> {
    for (delivery, jobs) in batch.iter().zip(&applied.jobs) {
        if jobs.is_disjoint(&applied.poisoned) {
            delivery.acker.ack(BasicAckOptions::default()).await?;
        } else {
            let requeue = quorum || !delivery.redelivered;
            delivery
                .acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue,
                })
                .await?;
        }
    }
    Ok(())
}

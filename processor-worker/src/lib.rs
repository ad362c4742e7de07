//! `processor-worker`: consumes `ns.process` (many payloads per message), runs a
//! [`Processor`] on each payload, publishes one `results` message per input message, and
//! dead-letters each payload that fails on its own. A processor failure is never retried:
//! the same bytes fail the same way again (to retry, fix the processor and `dlq replay`).

pub mod config;
pub mod flat;
pub mod json_stats;

use std::sync::Arc;

use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use tributary::broker::amqp;
use tributary::broker::deadletter::{DeadLetter, TaskRef, bury};
use tributary::message::{
    CONTENT_TYPE_PAYLOADS, CONTENT_TYPE_RESULTS, Payload, ResultBatch, TaskResult, decode_payloads,
    encode_payloads, salvage,
};
use tributary::names::{Names, Stage};
use tributary::policy::Failure;
use tributary::processor::Processor;
use tributary::runtime::metrics::metrics;

use crate::json_stats::JsonStats;
use tributary::broker::topology::Topology;
use tributary::runtime::accounting;
use tributary::runtime::session::{ConsumeOptions, Session, consume_each};
use tributary::runtime::shutdown::CancellationToken;
use tributary::runtime::supervise::supervise;
use tributary::runtime::trace::TraceParent;
use tributary::store::Store;

pub use config::Config;

/// Runs the built-in JSON-statistics processor.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let processor = JsonStats::new(&config.records, &config.group_by, &config.values)
        .map_err(anyhow::Error::msg)?;
    run_with(config, Arc::new(processor), shutdown).await
}

/// Runs any processor: the entry point for processors written in Rust.
pub async fn run_with(
    config: Config,
    processor: Arc<dyn Processor>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tributary::runtime::metrics::serve_if_asked(&config.worker, &shutdown).await?;
    let names = Names::new(&config.common.connection.namespace);
    let topology = Topology::new(names.clone(), config.common.connection.queue_type);
    let connection = config.common.connection.clone();
    let config = Arc::new(config);
    supervise(
        "processor-worker",
        &connection,
        topology,
        shutdown,
        |session| process_session(config.clone(), processor.clone(), names.clone(), session),
    )
    .await
}

async fn process_session(
    config: Arc<Config>,
    processor: Arc<dyn Processor>,
    names: Names,
    session: Session,
) -> anyhow::Result<()> {
    let publisher = session.confirm_channel().await?;
    let store = session.store.clone();
    let queue = names.queue(Stage::Process);
    let options = ConsumeOptions {
        queue: &queue,
        prefetch: config.prefetch(),
        concurrency: config.concurrency,
        drain_timeout: config.worker.shutdown_timeout,
        label: "processor",
    };
    let main = consume_each(&session, options, |delivery| {
        handle(
            delivery,
            processor.clone(),
            publisher.clone(),
            store.clone(),
            names.clone(),
        )
    });
    accounting::alongside(&session, Stage::Process, main).await
}

/// One `process` message: decode, process every payload, publish the results (one
/// message) and dead-letter the failures (one per task), then ack.
///
/// Processed tasks get no Redis mark of their own: the aggregator's apply advances each
/// task through `processed` to `aggregated` in one script, exactly once, so `processed`
/// is counted when the results are applied (a script call per batch saved; the
/// processor's output is durable in the broker before the ack either way).
async fn handle(
    delivery: Delivery,
    processor: Arc<dyn Processor>,
    publisher: Channel,
    store: Store,
    names: Names,
) -> anyhow::Result<()> {
    let payloads = match decode_payloads(&delivery.data) {
        Ok(payloads) => payloads,
        Err(failure) => {
            tracing::warn!(
                "dead-lettering an undecodable process message: {}",
                failure.reason
            );
            let letters: Vec<DeadLetter> =
                salvage::split(Stage::Process, &delivery.data, None, None)
                    .into_iter()
                    .map(|entry| DeadLetter::of_entry(entry, failure.clone(), 1))
                    .collect();
            bury(&publisher, &store, Stage::Process, &letters).await?;
            delivery.acker.ack(BasicAckOptions::default()).await?;
            return Ok(());
        }
    };
    let (results, dead) = run_processor(processor, payloads).await?;
    let m = metrics();
    m.consumed(Stage::Process, (results.len() + dead.len()) as u64);
    m.succeeded(Stage::Process, results.len() as u64);
    if !results.is_empty() {
        let body = ResultBatch::new(results).to_json();
        amqp::publish_confirmed(
            &publisher,
            names.exchange(),
            Stage::Results.as_str(),
            &body,
            amqp::persistent(CONTENT_TYPE_RESULTS),
        )
        .await?;
    }
    bury(&publisher, &store, Stage::Process, &dead).await?;
    delivery.acker.ack(BasicAckOptions::default()).await?;
    Ok(())
}

/// Runs the processor on every payload (on a blocking thread): the results, and a dead
/// letter for each payload that failed.
async fn run_processor(
    processor: Arc<dyn Processor>,
    payloads: Vec<Payload>,
) -> anyhow::Result<(Vec<TaskResult>, Vec<DeadLetter>)> {
    Ok(tokio::task::spawn_blocking(move || {
        let mut results = Vec::with_capacity(payloads.len());
        let mut dead = Vec::new();
        for payload in payloads {
            match processor.process(&payload) {
                Ok(records) => results.push(TaskResult {
                    job_id: payload.header.job_id,
                    task_id: payload.header.task_id,
                    enqueued_ms: payload.header.enqueued_ms,
                    traceparent: Some(
                        TraceParent::continue_from(payload.header.traceparent.as_deref())
                            .to_string(),
                    ),
                    records,
                }),
                Err(failure) => dead.push(dead_letter(&payload, failure)),
            }
        }
        (results, dead)
    })
    .await?)
}

/// A payload the processor failed, as a dead letter holding only it.
fn dead_letter(payload: &Payload, failure: Failure) -> DeadLetter {
    let header = &payload.header;
    tracing::debug!(task_id = %header.task_id, class = %failure.class, "dead-lettered: {}", failure.reason);
    DeadLetter {
        body: encode_payloads([payload]),
        content_type: CONTENT_TYPE_PAYLOADS.to_string(),
        failure,
        attempts: header.attempts.max(1),
        task: TaskRef {
            job_id: Some(header.job_id),
            task_id: Some(header.task_id),
            url: Some(header.url.clone()),
            enqueued_ms: header.enqueued_ms,
            traceparent: header.traceparent.clone(),
        },
    }
}

//! `processor-worker`: consumes `ns.process` (many payloads per message), runs a
//! [`Processor`] on each payload, publishes one `results` message per input message, and
//! dead-letters each payload that fails on its own. A processor failure is never retried:
//! the same bytes fail the same way again (to retry, fix the processor and `dlq replay`).

pub mod config;
pub mod json_stats;

use std::sync::Arc;

use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use tributary::broker::amqp;
use tributary::broker::deadletter::{TaskRef, dead_properties};
use tributary::message::{
    CONTENT_TYPE_PAYLOADS, CONTENT_TYPE_RESULTS, Payload, ResultBatch, TaskResult, decode_payloads,
    encode_payloads,
};
use tributary::names::{Names, Stage};
use tributary::policy::Failure;
use tributary::processor::Processor;
use tributary::runtime::metrics::metrics;

use crate::json_stats::JsonStats;
use tributary::broker::topology::Topology;
use tributary::runtime::session::{ConsumeOptions, Session, consume_each};
use tributary::runtime::shutdown::CancellationToken;
use tributary::runtime::supervise::supervise;
use tributary::runtime::trace::TraceParent;
use tributary::store::{Mark, Store};

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
    consume_each(&session, options, |delivery| {
        handle(
            delivery,
            processor.clone(),
            publisher.clone(),
            store.clone(),
            names.clone(),
        )
    })
    .await
}

async fn handle(
    delivery: Delivery,
    processor: Arc<dyn Processor>,
    publisher: Channel,
    store: Store,
    names: Names,
) -> anyhow::Result<()> {
    let exchange = names.exchange();
    let payloads = match decode_payloads(&delivery.data) {
        Ok(payloads) => payloads,
        Err(failure) => {
            tracing::warn!(
                "dead-lettering an undecodable process message: {}",
                failure.reason
            );
            let props = dead_properties(
                CONTENT_TYPE_PAYLOADS,
                Stage::Process,
                &failure,
                1,
                &TaskRef::default(),
            );
            amqp::publish_confirmed(
                &publisher,
                exchange,
                &Names::dead_routing_key(Stage::Process),
                &delivery.data,
                props,
            )
            .await?;
            delivery.acker.ack(BasicAckOptions::default()).await?;
            return Ok(());
        }
    };
    let (payloads, processor) = tokio::task::spawn_blocking(move || {
        let outcomes: Vec<(Payload, Result<TaskResult, Failure>)> = payloads
            .into_iter()
            .map(|payload| {
                let outcome = processor.process(&payload).map(|records| TaskResult {
                    job_id: payload.header.job_id,
                    task_id: payload.header.task_id,
                    enqueued_ms: payload.header.enqueued_ms,
                    traceparent: Some(
                        TraceParent::continue_from(payload.header.traceparent.as_deref())
                            .to_string(),
                    ),
                    records,
                });
                (payload, outcome)
            })
            .collect();
        (outcomes, processor)
    })
    .await?;
    drop(processor);

    let mut results = Vec::new();
    let mut dead = Vec::new();
    for (payload, outcome) in payloads {
        match outcome {
            Ok(result) => results.push(result),
            Err(failure) => dead.push((payload, failure)),
        }
    }
    let m = metrics();
    m.consumed(Stage::Process, (results.len() + dead.len()) as u64);
    m.succeeded(Stage::Process, results.len() as u64);
    for (_, failure) in &dead {
        m.dead(Stage::Process, failure.class);
    }
    let done: Vec<(uuid::Uuid, uuid::Uuid)> =
        results.iter().map(|r| (r.job_id, r.task_id)).collect();
    if !results.is_empty() {
        let body = ResultBatch::new(results).to_json();
        amqp::publish_confirmed(
            &publisher,
            exchange,
            Stage::Results.as_str(),
            &body,
            amqp::persistent(CONTENT_TYPE_RESULTS),
        )
        .await?;
    }
    let mut dead_tasks = Vec::with_capacity(dead.len());
    for (payload, failure) in dead {
        let task = TaskRef {
            job_id: Some(payload.header.job_id),
            task_id: Some(payload.header.task_id),
            url: Some(payload.header.url.clone()),
            enqueued_ms: payload.header.enqueued_ms,
            traceparent: payload.header.traceparent.clone(),
        };
        tracing::debug!(task_id = %payload.header.task_id, class = %failure.class, "dead-lettered: {}", failure.reason);
        let props = dead_properties(
            CONTENT_TYPE_PAYLOADS,
            Stage::Process,
            &failure,
            payload.header.attempts.max(1),
            &task,
        );
        let body = encode_payloads([&payload]);
        amqp::publish_confirmed(
            &publisher,
            exchange,
            &Names::dead_routing_key(Stage::Process),
            &body,
            props,
        )
        .await?;
        dead_tasks.push((payload.header.job_id, payload.header.task_id));
    }
    store.mark_many(Mark::Processed, done).await?;
    store.mark_many(Mark::Dead, dead_tasks).await?;
    delivery.acker.ack(BasicAckOptions::default()).await?;
    Ok(())
}

//! End-to-end: the four stages, the real RabbitMQ and Redis, real HTTP from a local origin.

use std::time::Duration;

use lapin::options::BasicGetOptions;
use tributary::broker::amqp::{self, HeadersExt, header};
use tributary::message::{CONTENT_TYPE_RESULTS, ResultBatch, TaskResult};
use tributary::names::Stage;
use tributary_tests::app::{App, AppOptions};
use tributary_tests::procs::{Worker, scrape};
use tributary_tests::quotes::{assert_close, expected_aggregate};
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(60);

/// Reads every message of a queue (without acking; they return when the channel closes).
async fn peek_all(app: &App, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
    let conn = app.broker().await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut out = Vec::new();
    while let Some(m) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
    {
        out.push(m);
    }
    let _ = conn.close(200, "ok".into()).await;
    out
}

#[tokio::test]
async fn a_job_flows_through_every_stage_with_an_exact_aggregate() {
    let app = App::spawn(
        "e2e",
        AppOptions {
            fetchers: 2,
            ..AppOptions::default()
        },
    )
    .await
    .unwrap();
    let good: Vec<u64> = (0..300).collect();
    let mut lines: Vec<String> = good
        .iter()
        .map(|i| app.origin.url(&format!("/quotes/{i}.json")))
        .collect();
    lines.push("# a comment, then a blank line".into());
    lines.push(String::new());
    for i in 0..20 {
        lines.push(app.origin.url(&format!("/status/404?n={i}")));
    }
    for i in 0..10 {
        lines.push(app.origin.url(&format!("/text/{i}.txt")));
    }
    let job = app.enqueue_lines(&lines, &[]).await.unwrap();
    let status = app.wait_done(job, LIMIT).await.unwrap();

    assert_eq!(status.total, 330);
    assert_eq!(status.fetched, 310, "{status:?}");
    assert_eq!(status.processed, 300, "{status:?}");
    assert_eq!(status.aggregated, 300, "{status:?}");
    assert_eq!(status.dead, 30, "{status:?}");
    assert_eq!(status.retrying, 0, "{status:?}");
    assert!(status.done);

    let results = app.results_json(job).await.unwrap();
    assert_eq!(results["job_id"], job.to_string());
    assert_close(&results, &expected_aggregate(good));

    let fetch_dead = peek_all(&app, &app.names.dead_queue(Stage::Fetch)).await;
    assert_eq!(fetch_dead.len(), 20);
    let h = amqp::headers_of(&fetch_dead[0].delivery.properties);
    assert_eq!(h.get_str(header::STAGE).as_deref(), Some("fetch"));
    assert_eq!(h.get_str(header::ERROR).as_deref(), Some("http_status"));
    assert_eq!(h.get_u64(header::HTTP_STATUS), Some(404));
    assert_eq!(h.get_u64(header::ATTEMPTS), Some(1));
    assert!(h.get_str(header::FAILED_AT).is_some());
    assert_eq!(h.get_str(header::JOB_ID), Some(job.to_string()));
    let body: serde_json::Value = serde_json::from_slice(&fetch_dead[0].delivery.data).unwrap();
    assert!(body["url"].as_str().unwrap().contains("/status/404"));

    // The producer's trace continues through every stage: the fetch dead letters and the
    // payloads that died in the processor carry child spans of the same trace.
    let trace_of =
        |tp: &str| tributary::runtime::trace::TraceParent::parse(tp).expect("a valid traceparent");
    let fetch_trace = trace_of(
        &h.get_str(header::TRACEPARENT)
            .expect("a traceparent header"),
    );

    let process_dead = peek_all(&app, &app.names.dead_queue(Stage::Process)).await;
    assert_eq!(process_dead.len(), 10);
    let payload = &tributary::message::decode_payloads(&process_dead[0].delivery.data).unwrap()[0];
    let process_trace = trace_of(
        payload
            .header
            .traceparent
            .as_deref()
            .expect("a payload traceparent"),
    );
    assert_eq!(process_trace.trace_id, fetch_trace.trace_id);
    let h = amqp::headers_of(&process_dead[0].delivery.properties);
    assert_eq!(h.get_str(header::ERROR).as_deref(), Some("invalid_payload"));
    assert_eq!(h.get_str(header::STAGE).as_deref(), Some("process"));

    app.shutdown().await.unwrap();
}

fn result_for(job: Uuid, task: Uuid, values: &[f64]) -> ResultBatch {
    let record = tributary::stats::record_of("SYM".into(), values).unwrap();
    ResultBatch::new(vec![TaskResult {
        job_id: job,
        task_id: task,
        enqueued_ms: None,
        traceparent: None,
        records: vec![record],
    }])
}

/// One message of 1,500 tasks to a fetcher with 2 download slots: it runs at most 32 of
/// them at once (16 per slot) and keeps the rest waiting unspawned, in order, until the
/// delivery's last task is done; every task is counted once.
#[tokio::test]
async fn a_message_of_many_tasks_is_fetched_a_few_at_a_time() {
    let app = App::spawn(
        "e2e-many",
        AppOptions {
            fetcher_args: ["--concurrency", "2", "--batch-size", "7"]
                .map(String::from)
                .to_vec(),
            ..AppOptions::default()
        },
    )
    .await
    .unwrap();
    let ids: Vec<u64> = (0..1500).collect();
    let lines: Vec<String> = ids
        .iter()
        .map(|i| app.origin.url(&format!("/quotes/{i}.json")))
        .collect();
    let job = app
        .enqueue_lines(&lines, &["--batch-size", "1500"])
        .await
        .unwrap();
    let status = app.wait_done(job, LIMIT).await.unwrap();
    assert_eq!(
        (status.total, status.aggregated, status.dead),
        (1500, 1500, 0),
        "{status:?}"
    );
    assert_close(
        &app.results_json(job).await.unwrap(),
        &expected_aggregate(ids),
    );
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_redelivered_result_changes_no_total() {
    let app = App::spawn(
        "redeliver",
        AppOptions {
            fetchers: 0,
            processors: 0,
            ..AppOptions::default()
        },
    )
    .await
    .unwrap();
    let job = Uuid::new_v4();
    app.store.add_to_total(job, 2).await.unwrap();
    let conn = app.broker().await.unwrap();
    let channel = amqp::confirm_channel(&conn).await.unwrap();
    let first = result_for(job, Uuid::new_v4(), &[1.0, 2.0, 3.0]).to_json();
    let sentinel = result_for(job, Uuid::new_v4(), &[10.0]).to_json();
    // The same message twice (a redelivery after a crash), then a second task: one
    // consumer applies in order, so when the second task counts, both copies were seen.
    for body in [&first, &first, &sentinel] {
        amqp::publish_confirmed(
            &channel,
            app.names.exchange(),
            Stage::Results.as_str(),
            body,
            amqp::persistent(CONTENT_TYPE_RESULTS),
        )
        .await
        .unwrap();
    }
    let status = app.wait_done(job, LIMIT).await.unwrap();
    assert_eq!(status.aggregated, 2);
    let results = app.results_json(job).await.unwrap();
    let g = &results["groups"]["SYM"];
    assert_eq!(g["records"], 2);
    assert_eq!(g["count"], 4);
    assert_eq!(g["sum"], 16.0);
    assert_eq!(g["min"], 1.0);
    assert_eq!(g["max"], 10.0);

    // Applying the same batch straight to the store again changes nothing either.
    let again = ResultBatch::from_json(&first).unwrap();
    let items: Vec<&TaskResult> = again.items.iter().collect();
    assert_eq!(app.store.apply(job, &items).await.unwrap(), 0);
    assert_eq!(app.results_json(job).await.unwrap(), results);
    let _ = conn.close(200, "ok".into()).await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn garbage_messages_are_dead_lettered_not_fatal() {
    let app = App::spawn("garbage", AppOptions::default()).await.unwrap();
    let conn = app.broker().await.unwrap();
    let channel = amqp::confirm_channel(&conn).await.unwrap();
    for (stage, body) in [
        (Stage::Fetch, &b"definitely not a task"[..]),
        (Stage::Process, &b"not a payload frame"[..]),
        (Stage::Results, &b"{\"v\":1}"[..]),
    ] {
        amqp::publish_confirmed(
            &channel,
            app.names.exchange(),
            stage.as_str(),
            body,
            amqp::persistent("application/json"),
        )
        .await
        .unwrap();
    }
    // The pipeline still works afterwards.
    let job = app
        .enqueue_lines(&[app.origin.url("/quotes/7.json")], &[])
        .await
        .unwrap();
    app.wait_done(job, LIMIT).await.unwrap();
    assert_close(
        &app.results_json(job).await.unwrap(),
        &expected_aggregate([7]),
    );
    for (stage, class) in [
        (Stage::Fetch, "invalid_task"),
        (Stage::Process, "invalid_payload"),
        (Stage::Results, "invalid_payload"),
    ] {
        let dead = peek_all(&app, &app.names.dead_queue(stage)).await;
        assert_eq!(dead.len(), 1, "{stage}");
        let h = amqp::headers_of(&dead[0].delivery.properties);
        assert_eq!(h.get_str(header::ERROR).as_deref(), Some(class), "{stage}");
    }
    let _ = conn.close(200, "ok".into()).await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_input_enqueues_nothing_unless_skipped() {
    let app = App::spawn("invalid", AppOptions::no_stages())
        .await
        .unwrap();
    let lines = vec![
        app.origin.url("/quotes/1.json"),
        "ftp://example.com/x".to_string(),
        app.origin.url("/quotes/2.json"),
    ];
    let err = app.enqueue_lines(&lines, &[]).await.unwrap_err();
    assert!(format!("{err:#}").contains("1 invalid line"), "{err:#}");
    assert_eq!(
        app.queue_depth(&app.names.queue(Stage::Fetch))
            .await
            .unwrap(),
        0
    );

    let job = app
        .enqueue_lines(&lines, &["--skip-invalid"])
        .await
        .unwrap();
    let status = app.store.status(job).await.unwrap().unwrap();
    assert_eq!(status.total, 2);
    assert!(!status.done);
    // Both tasks travel in one NDJSON message (the default batch is 100 tasks).
    assert_eq!(
        app.queue_depth(&app.names.queue(Stage::Fetch))
            .await
            .unwrap(),
        1
    );
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn processor_pointers_and_record_arrays() {
    let app = App::spawn(
        "pointers",
        AppOptions {
            processor_args: vec![
                "--group-by".into(),
                "/id".into(),
                "--values".into(),
                "/prices/0".into(),
            ],
            ..AppOptions::default()
        },
    )
    .await
    .unwrap();
    let job = app
        .enqueue_lines(
            &[
                app.origin.url("/quotes/3.json"),
                app.origin.url("/quotes/4.json"),
            ],
            &[],
        )
        .await
        .unwrap();
    app.wait_done(job, LIMIT).await.unwrap();
    let results = app.results_json(job).await.unwrap();
    for i in [3u64, 4] {
        let first = tributary_tests::quotes::prices(i)[0];
        let g = &results["groups"][i.to_string()];
        assert_eq!(g["count"], 1, "{results}");
        assert_eq!(g["sum"].as_f64().unwrap(), first);
    }
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn conditional_requests_reuse_the_last_body_on_304() {
    let fetcher_args = ["--retry-delays", "100ms,200ms", "--conditional"];
    let options = AppOptions {
        fetcher_args: fetcher_args.map(String::from).to_vec(),
        ..AppOptions::default()
    };
    let app = App::spawn("conditional", options).await.unwrap();
    let lines: Vec<String> = (0..40)
        .map(|i| app.origin.url(&format!("/etag/{i}.json")))
        .collect();
    let mut results = Vec::new();
    for _ in 0..2 {
        let job = app.enqueue_lines(&lines, &[]).await.unwrap();
        let status = app.wait_done(job, LIMIT).await.unwrap();
        assert_eq!((status.aggregated, status.dead), (40, 0), "{status:?}");
        results.push(app.results_json(job).await.unwrap());
    }
    let log = app.origin.requests();
    let answered = |code: u16| log.iter().filter(|r| r.status == code).count();
    assert_eq!((answered(200), answered(304)), (40, 40), "{log:?}");
    // A 304 reuses the last payload's body: the aggregate is the same as for a 200.
    assert_close(&results[0], &expected_aggregate(0..40));
    assert_eq!(results[0]["groups"], results[1]["groups"]);
    app.shutdown().await.unwrap();
}

/// The fetcher's prefetch follows the tasks per message: a fetcher with 16 download slots
/// starts at a prefetch of 16 messages, sees messages of 100 tasks, and subscribes again
/// with the floor of 8 (its task budget, 16 × 20, is 3.2 such messages). The job across
/// the new subscription finishes exactly, every task is consumed once (no delivery of the
/// replaced consumer is lost or left unacked), and the fetch queue is empty afterwards.
#[tokio::test]
async fn the_fetch_prefetch_follows_the_tasks_per_message() {
    const N: u64 = 4_000;
    let app = App::spawn(
        "e2e-prefetch",
        AppOptions {
            fetchers: 0,
            ..AppOptions::default()
        },
    )
    .await
    .unwrap();
    let args = ["--allow-private", "--concurrency", "16"];
    let (fetcher, port) =
        Worker::start_with_metrics("fetcher-worker", &app.namespace, &args).unwrap();
    let ids: Vec<u64> = (0..N).collect();
    let lines: Vec<String> = ids
        .iter()
        .map(|i| app.origin.url(&format!("/quotes/{i}.json")))
        .collect();
    let job = app
        .enqueue_lines(&lines, &["--batch-size", "100"])
        .await
        .unwrap();
    let status = app.wait_done(job, LIMIT).await.unwrap();
    assert_eq!((status.aggregated, status.dead), (N, 0), "{status:?}");
    assert_close(
        &app.results_json(job).await.unwrap(),
        &expected_aggregate(ids),
    );
    assert_eq!(scrape(port, "tributary_prefetch{stage=\"fetch\"}").await, 8);
    assert_eq!(
        scrape(port, "tributary_tasks_consumed_total{stage=\"fetch\"}").await,
        N,
        "a task was delivered twice"
    );
    let exit = fetcher.terminate(Duration::from_secs(30)).unwrap();
    assert!(exit.success(), "the fetcher exited with {exit}");
    let queue = app.names.queue(Stage::Fetch);
    assert_eq!(
        app.queue_depth(&queue).await.unwrap(),
        0,
        "a delivery was left unacked"
    );
    app.shutdown().await.unwrap();
}

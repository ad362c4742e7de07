//! Exactly-once enqueue (issue 12): a killed, interrupted or repeated enqueue is finished by
//! running it again, and the job's total counts each task once.
//!
//! The SIGKILL and broker-stop scenarios are `#[ignore]`d (serial step); the broker one
//! stops the app of node `a` of the local cluster (`scripts/clusters.sh`), never the
//! shared RabbitMQ.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::Parser as _;
use reqwest::{Method, StatusCode, header};
use serde_json::Value;
use tributary::names::Stage;
use tributary::runtime::config::ConnectionArgs;
use tributary::store::EnqueueState;
use tributary_tests::app::{App, AppOptions, cleanup_with, connection_flags};
use tributary_tests::clusters::{self, Clusters};
use tributary_tests::procs::{Worker, bin_dir};
use tributary_tests::quotes::{assert_close, expected_aggregate};
use uuid::Uuid;

use crate::api::{Server, assert_error, send};

const LIMIT: Duration = Duration::from_secs(900);

/// A file of quote URLs `ids`, one per line.
fn url_file(app: &App, ids: std::ops::Range<u64>) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    let lines: Vec<String> = ids
        .map(|i| app.origin.url(&format!("/quotes/{i}.json")))
        .collect();
    std::fs::write(file.path(), lines.join("\n")).unwrap();
    file
}

/// `producer [connection] enqueue --file F --job-id J [extra]`, in process.
async fn enqueue(
    connection: &[String],
    file: &tempfile::NamedTempFile,
    job: Uuid,
    extra: &[&str],
) -> anyhow::Result<producer::enqueue::Enqueued> {
    let mut flags = vec!["producer".to_string()];
    flags.extend(connection.iter().cloned());
    let path = file.path().display().to_string();
    flags.extend(["enqueue", "--file", &path, "--job-id", &job.to_string()].map(String::from));
    flags.extend(extra.iter().map(|s| s.to_string()));
    producer::enqueue_once(&producer::Config::try_parse_from(flags)?).await
}

/// Paths the origin served more than once.
fn fetched_twice(app: &App) -> usize {
    let mut hits: HashMap<String, usize> = HashMap::new();
    for request in app.origin.requests() {
        *hits.entry(request.path).or_default() += 1;
    }
    hits.values().filter(|&&n| n > 1).count()
}

#[tokio::test]
async fn a_repeated_enqueue_counts_nothing_twice_and_other_first_lines_are_refused() {
    let app = App::spawn("enqueue-again", AppOptions::default())
        .await
        .unwrap();
    let flags = connection_flags(&app.namespace);
    let file = url_file(&app, 0..300);
    let job = Uuid::new_v4();
    let first = enqueue(&flags, &file, job, &[]).await.unwrap();
    assert_eq!((first.enqueued, first.already_enqueued), (300, 0));
    let again = enqueue(&flags, &file, job, &[]).await.unwrap();
    assert_eq!((again.enqueued, again.already_enqueued), (0, 300));
    // Another file is another input of the same job: it adds to it.
    let other = url_file(&app, 300..400);
    let added = enqueue(&flags, &other, job, &[]).await.unwrap();
    assert_eq!(added.enqueued, 100);
    let status = app.wait_done(job, LIMIT).await.unwrap();
    assert_eq!((status.total, status.aggregated), (400, 400), "{status:?}");
    assert_eq!(status.enqueue, EnqueueState::Complete);
    assert_close(
        &app.results_json(job).await.unwrap(),
        &expected_aggregate(0..400),
    );
    assert_eq!(fetched_twice(&app), 0);

    // Same first line, other lines after it: not the input recorded, so refused.
    let mut lines: Vec<String> = (0..300)
        .map(|i| app.origin.url(&format!("/quotes/{i}.json")))
        .collect();
    lines[5] = app.origin.url("/quotes/999.json");
    std::fs::write(file.path(), lines.join("\n")).unwrap();
    let refused = enqueue(&flags, &file, job, &[]).await.unwrap_err();
    let text = tributary::runtime::cli::chain(refused.as_ref());
    assert!(text.contains("first lines"), "{text}");
    assert_eq!(app.store.status(job).await.unwrap().unwrap().total, 400);
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_same_post_twice_is_one_job_and_another_body_is_409() {
    let app = App::spawn("enqueue-post", AppOptions::default())
        .await
        .unwrap();
    let server = Server::start(&app, &[]).await;
    let body = |ids: std::ops::Range<u64>| -> String {
        ids.map(|i| app.origin.url(&format!("/quotes/{i}.json")))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let post = |key: &str, body: String| {
        server
            .request(Method::POST, "/v1/jobs")
            .header("Idempotency-Key", key)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(body)
    };
    let key = format!("order-{}", Uuid::new_v4());
    let first = send(post(&key, body(0..200))).await;
    assert_eq!(first.0, StatusCode::ACCEPTED, "{}", first.1);
    let second = send(post(&key, body(0..200))).await;
    assert_eq!(second, first);
    let job: Uuid = first.1["job_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(first.1["enqueued"], 200);

    let conflict = send(post(&key, body(0..201))).await;
    assert_error(&conflict, StatusCode::CONFLICT, "job exists");
    let by_id = server
        .request(Method::POST, &format!("/v1/jobs?job_id={job}"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(body(200..210));
    assert_error(&send(by_id).await, StatusCode::CONFLICT, "job exists");

    let status = app.wait_done(job, LIMIT).await.unwrap();
    assert_eq!((status.total, status.aggregated), (200, 200), "{status:?}");
    let (_, shown) = server.get(&format!("/v1/jobs/{job}")).await;
    assert_eq!(shown["enqueue"], Value::from("complete"));
    assert_close(
        &app.results_json(job).await.unwrap(),
        &expected_aggregate(0..200),
    );
    assert_eq!(fetched_twice(&app), 0);
    server.stop().await;
    app.shutdown().await.unwrap();
}

/// Polls the job's total (registered tasks) until it reaches `at_least`.
async fn wait_total(app: &App, job: Uuid, at_least: u64) {
    loop {
        if let Ok(Some(status)) = app.store.status(job).await
            && status.total >= at_least
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
#[ignore = "kills a producer; serial step"]
async fn a_killed_enqueue_is_finished_exactly_by_running_it_again() {
    const N: u64 = 200_000;
    let mut app = App::spawn("enqueue-kill", AppOptions::no_stages())
        .await
        .unwrap();
    let file = url_file(&app, 0..N);
    let job = Uuid::new_v4();
    let path = file.path().display().to_string();
    let job_arg = job.to_string();
    let args = ["enqueue", "--file", &path, "--job-id", &job_arg];
    let producer = Worker::start("producer", &app.namespace, &args).unwrap();
    // About half on the broker: 100 tasks per message (the default --batch-size).
    let queue = app.names.queue(Stage::Fetch);
    while app.queue_depth(&queue).await.unwrap_or(0) < (N / 2 / 100) as u32 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(producer); // SIGKILL
    let killed = app.store.status(job).await.unwrap().unwrap();
    assert_eq!(killed.enqueue, EnqueueState::InProgress, "{killed:?}");
    assert!(killed.total < N, "the producer finished first: {killed:?}");

    let flags = connection_flags(&app.namespace);
    let resumed = enqueue(&flags, &file, job, &[]).await.unwrap();
    assert!(resumed.already_enqueued > 0, "{resumed:?}");
    assert_eq!(
        resumed.enqueued + resumed.already_enqueued,
        N,
        "{resumed:?}"
    );
    app.start_fetcher(&[]).unwrap();
    app.start_processor(&[]).unwrap();
    app.start_aggregator(&[]).unwrap();
    let status = app.wait_done(job, LIMIT).await.unwrap();
    assert_eq!((status.total, status.aggregated), (N, N), "{status:?}");
    assert_close(
        &app.results_json(job).await.unwrap(),
        &expected_aggregate(0..N),
    );
    // The resumed run publishes again what the killed one had not seen confirmed: about
    // the confirm window (64 messages of 100 tasks) and the registrations ahead.
    let twice = fetched_twice(&app);
    assert!(twice <= (N / 20) as usize, "{twice} URLs fetched twice");
    app.shutdown().await.unwrap();
}

#[tokio::test]
#[ignore = "stops a node of the local RabbitMQ cluster; serial step"]
async fn an_enqueue_cut_off_by_the_broker_says_how_to_resume_and_resuming_completes_it() {
    const N: u64 = 20_000;
    let clusters = Clusters::up().unwrap();
    let node_a = "amqp://guest:guest@127.0.0.1:5701/%2f";
    assert!(
        clusters.amqp_urls.contains("5701"),
        "{}",
        clusters.amqp_urls
    );
    let on_a = vec!["--amqp-url".to_string(), node_a.to_string()];
    let mut app = App::spawn("enqueue-broker", AppOptions::no_stages())
        .await
        .unwrap();
    let file = url_file(&app, 0..N);
    let job = Uuid::new_v4();
    let mut flags = connection_flags(&app.namespace);
    flags.extend(on_a.iter().cloned());
    let path = file.path().display().to_string();
    let child = Command::new(bin_dir().unwrap().join("producer"))
        .args(&flags)
        .args(["enqueue", "--file", &path, "--job-id", &job.to_string()])
        // One task per message, one confirm at a time: slow enough to be cut off.
        .args(["--batch-size", "1", "--confirm-window", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_total(&app, job, N / 10).await;
    clusters::run(&["rabbitmq-stop-app", "a"]).unwrap();
    let output = child.wait_with_output().unwrap();
    clusters::run(&["rabbitmq-start-app", "a"]).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("--job-id {job}")) && stderr.contains("interrupted"),
        "{stderr}"
    );
    let cut = app.store.status(job).await.unwrap().unwrap();
    assert_eq!(cut.enqueue, EnqueueState::InProgress, "{cut:?}");

    let resumed = enqueue(&flags, &file, job, &[]).await.unwrap();
    assert_eq!(
        resumed.enqueued + resumed.already_enqueued,
        N,
        "{resumed:?}"
    );
    app.start_fetcher(&on_a).unwrap();
    app.start_processor(&on_a).unwrap();
    app.start_aggregator(&on_a).unwrap();
    let status = app.wait_done(job, LIMIT).await.unwrap();
    assert_eq!((status.total, status.aggregated), (N, N), "{status:?}");
    assert_close(
        &app.results_json(job).await.unwrap(),
        &expected_aggregate(0..N),
    );
    let namespace = app.namespace.clone();
    app.shutdown().await.unwrap();
    let mut on_cluster = ConnectionArgs::local(&namespace);
    on_cluster.amqp_url = tributary::runtime::config::UrlList::amqp(node_a).unwrap();
    cleanup_with(&on_cluster).await.unwrap();
}

/// `enqueue --wait` on a job no worker runs: Ctrl-C (SIGINT) ends the waiting at once with
/// one line that says the job goes on, exit 1; the tasks stay queued.
#[tokio::test]
async fn ctrl_c_stops_enqueue_wait_and_leaves_the_job_queued() {
    let app = App::spawn("enqueue-ctrlc", AppOptions::no_stages())
        .await
        .unwrap();
    let file = url_file(&app, 0..10);
    let path = file.path().display().to_string();
    let mut child = Command::new(bin_dir().unwrap().join("producer"))
        .args(connection_flags(&app.namespace))
        .args(["enqueue", "--file", &path, "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let queue = app.names.queue(Stage::Fetch);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while app.queue_depth(&queue).await.unwrap_or(0) == 0 {
        assert!(std::time::Instant::now() < deadline, "nothing was enqueued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The enqueue line is printed before the waiting starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tributary_tests::procs::signal(child.id(), "INT").unwrap();
    let sent = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if sent.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("enqueue --wait still running 10 s after SIGINT");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("stopped waiting for job") && stderr.contains("producer status"),
        "{stderr}"
    );
    assert!(app.queue_depth(&queue).await.unwrap() > 0);
    app.shutdown().await.unwrap();
}

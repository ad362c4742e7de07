//! `producer dlq list|replay|purge` against the real pipeline: tasks die in the fetch and
//! process stages (the fetcher makes one attempt only), then the dead letters are listed,
//! replayed and purged with filters.

use std::time::{Duration, Instant};

use clap::Parser as _;
use lapin::options::BasicGetOptions;
use serde_json::{Value, json};
use tributary::broker::deadletter::DeadInfo;
use tributary::names::Stage;
use tributary::runtime::shutdown::CancellationToken;
use tributary_tests::app::{App, AppOptions};
use tributary_tests::quotes::{assert_close, expected_aggregate};
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(60);

/// Every field a listed dead letter has.
const FIELDS: [&str; 9] = [
    "task_id",
    "job_id",
    "url",
    "stage",
    "error",
    "reason",
    "attempts",
    "status",
    "failed_at",
];

async fn spawn(label: &str) -> App {
    App::spawn(
        label,
        AppOptions {
            fetcher_args: vec!["--max-attempts".into(), "1".into()],
            ..AppOptions::default()
        },
    )
    .await
    .unwrap()
}

/// Publishes a body that is not a task straight to the fetch stage: it dies as
/// `invalid_task`, without a job id.
async fn publish_garbage(app: &App, body: &[u8]) {
    app.publish_raw(Stage::Fetch, body).await.unwrap();
}

/// Waits until the stage's dead-letter queue holds `n` messages.
async fn wait_dead(app: &App, stage: Stage, n: u32) {
    let queue = app.names.dead_queue(stage);
    let deadline = Instant::now() + LIMIT;
    loop {
        let depth = app.queue_depth(&queue).await.unwrap();
        if depth == n {
            return;
        }
        assert!(Instant::now() < deadline, "{queue} holds {depth}, not {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stage's dead letters in queue order, as (task id, body), read on a channel of the
/// test's own that is closed without acking (so they all go back, in place).
async fn snapshot(app: &App, stage: Stage) -> Vec<(Option<Uuid>, Vec<u8>)> {
    let queue = app.names.dead_queue(stage);
    let depth = app.queue_depth(&queue).await.unwrap();
    let conn = app.broker().await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut seen = Vec::with_capacity(depth as usize);
    for _ in 0..depth {
        let got = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .expect("a message counted by the queue");
        let task = DeadInfo::from_properties(&got.delivery.properties).task_id;
        seen.push((task, got.delivery.data));
    }
    let _ = conn.close(200, "ok".into()).await;
    seen
}

async fn dlq(app: &App, args: &[&str]) -> Vec<Value> {
    app.dlq(args)
        .await
        .unwrap_or_else(|e| panic!("dlq {args:?}: {e:#}"))
}

fn task_ids(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["task_id"].as_str().unwrap_or("null").to_string())
        .collect()
}

fn urls(app: &App, paths: &[String]) -> Vec<String> {
    paths.iter().map(|p| app.origin.url(p)).collect()
}

#[tokio::test]
async fn list_filters_and_keeps_every_message_in_place() {
    let app = spawn("dlq-list").await;
    let a_paths: Vec<String> = (0..3)
        .map(|i| format!("/status/404?n={i}"))
        .chain((0..2).map(|i| format!("/text/{i}.txt")))
        .chain(["/quotes/1.json".to_string()])
        .collect();
    let job_a = app.enqueue_lines(&urls(&app, &a_paths), &[]).await.unwrap();
    let b_paths = vec!["/status/410".to_string(), "/status/500".to_string()];
    let job_b = app.enqueue_lines(&urls(&app, &b_paths), &[]).await.unwrap();
    publish_garbage(&app, b"not a task").await;
    assert_eq!(app.wait_done(job_a, LIMIT).await.unwrap().dead, 5);
    assert_eq!(app.wait_done(job_b, LIMIT).await.unwrap().dead, 2);
    wait_dead(&app, Stage::Fetch, 6).await;
    wait_dead(&app, Stage::Process, 2).await;
    let before = (
        snapshot(&app, Stage::Fetch).await,
        snapshot(&app, Stage::Process).await,
    );

    let all = dlq(&app, &["list"]).await;
    assert_eq!(all.len(), 8, "{all:#?}");
    for line in &all {
        let fields: Vec<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(fields.len(), FIELDS.len(), "{line}");
        assert!(FIELDS.iter().all(|f| fields.contains(f)), "{line}");
    }
    // Stage by stage, in queue order.
    let stages: Vec<&str> = all.iter().map(|l| l["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, [vec!["fetch"; 6], vec!["process"; 2]].concat());
    let fetch_order: Vec<String> = before
        .0
        .iter()
        .map(|(t, _)| t.map_or("null".into(), |t| t.to_string()))
        .collect();
    assert_eq!(task_ids(&all[..6]), fetch_order);

    let process = dlq(&app, &["list", "--stage", "process"]).await;
    assert_eq!(process, all[6..]);
    for line in &process {
        assert_eq!(line["error"], "invalid_payload");
        assert_eq!(line["job_id"], job_a.to_string());
        assert!(line["url"].as_str().unwrap().contains("/text/"));
    }

    let b = dlq(&app, &["list", "--job-id", &job_b.to_string()]).await;
    assert_eq!(b.len(), 2);
    let mut statuses: Vec<u64> = b.iter().map(|l| l["status"].as_u64().unwrap()).collect();
    statuses.sort();
    assert_eq!(statuses, [410, 500]);
    for line in &b {
        assert_eq!(line["job_id"], job_b.to_string());
        assert_eq!(line["error"], "http_status");
        assert_eq!(line["attempts"], 1);
        assert!(
            line["reason"]
                .as_str()
                .unwrap()
                .starts_with("origin answered")
        );
        assert!(line["failed_at"].as_str().unwrap().ends_with('Z'));
    }

    let garbage = dlq(&app, &["list", "--error", "invalid_task"]).await;
    assert_eq!(garbage.len(), 1);
    assert_eq!(garbage[0]["job_id"], Value::Null);
    assert_eq!(garbage[0]["task_id"], Value::Null);
    assert_eq!(garbage[0]["stage"], "fetch");

    let job = job_a.to_string();
    let limited = dlq(
        &app,
        &["list", "--stage", "fetch", "--job-id", &job, "--limit", "2"],
    )
    .await;
    assert_eq!(limited.len(), 2);
    let a_fetch: Vec<&Value> = all[..6].iter().filter(|l| l["job_id"] == job).collect();
    assert_eq!(a_fetch.len(), 3);
    assert_eq!(limited[0], *a_fetch[0]);
    assert_eq!(limited[1], *a_fetch[1]);
    assert!(dlq(&app, &["list", "--limit", "0"]).await.is_empty());
    assert!(
        dlq(&app, &["list", "--job-id", &Uuid::new_v4().to_string()])
            .await
            .is_empty()
    );
    assert!(dlq(&app, &["list", "--error", "timeout"]).await.is_empty());

    // Nothing moved, nothing was lost, the order is the same.
    let after = (
        snapshot(&app, Stage::Fetch).await,
        snapshot(&app, Stage::Process).await,
    );
    assert_eq!(after, before);
    assert_eq!(dlq(&app, &["list"]).await, all);
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn replay_brings_matching_dead_letters_back_to_their_stage() {
    let app = spawn("dlq-replay").await;
    // Job A: three good quotes and two flaky ones that fail once (503), so with one attempt
    // they die first and succeed when replayed.
    let mut a_paths: Vec<String> = (1..=3).map(|i| format!("/quotes/{i}.json")).collect();
    a_paths.extend((10..=11).map(|i| format!("/flaky/replay/1/{i}")));
    let job_a = app.enqueue_lines(&urls(&app, &a_paths), &[]).await.unwrap();
    // Job B: dies for good, in the fetch and in the process stage.
    let b_paths = vec!["/status/404".to_string(), "/text/5.txt".to_string()];
    let job_b = app.enqueue_lines(&urls(&app, &b_paths), &[]).await.unwrap();
    publish_garbage(&app, b"garbage one").await;

    let status = app.wait_done(job_a, LIMIT).await.unwrap();
    assert_eq!((status.aggregated, status.dead), (3, 2), "{status:?}");
    assert_eq!(app.wait_done(job_b, LIMIT).await.unwrap().dead, 2);
    wait_dead(&app, Stage::Fetch, 4).await;
    wait_dead(&app, Stage::Process, 1).await;
    let fetch_before = snapshot(&app, Stage::Fetch).await;

    // A dry run prints what would move and moves nothing.
    let job = job_a.to_string();
    let dry = dlq(&app, &["replay", "--job-id", &job, "--dry-run"]).await;
    assert_eq!(dry.len(), 3, "{dry:#?}");
    assert_eq!(dry[2], json!({"replayed": 0, "would_replay": 2}));
    for line in &dry[..2] {
        assert_eq!(line["job_id"], job);
        assert_eq!(line["status"], 503);
        assert!(line["url"].as_str().unwrap().contains("/flaky/replay/1/"));
    }
    assert_eq!(snapshot(&app, Stage::Fetch).await, fetch_before);
    assert_eq!(app.store.status(job_a).await.unwrap().unwrap().dead, 2);

    // A filter that matches nothing replays nothing.
    let none = dlq(&app, &["replay", "--job-id", &job, "--stage", "process"]).await;
    assert_eq!(none, [json!({"replayed": 0})]);

    // Replaying job A's: the two tasks go back to the fetch stage, now succeed, and the
    // job is done again with all five aggregated.
    let replayed = dlq(&app, &["replay", "--job-id", &job, "--stage", "fetch"]).await;
    assert_eq!(replayed, [json!({"replayed": 2})]);
    let status = app.wait_done(job_a, LIMIT).await.unwrap();
    assert_eq!(
        (status.total, status.aggregated, status.dead),
        (5, 5, 0),
        "{status:?}"
    );
    assert_close(
        &app.results_json(job_a).await.unwrap(),
        &expected_aggregate([1, 2, 3, 10, 11]),
    );
    // What did not match stayed, in its order.
    let a_ids: Vec<Option<Uuid>> = dry[..2]
        .iter()
        .map(|l| Some(l["task_id"].as_str().unwrap().parse().unwrap()))
        .collect();
    let rest: Vec<_> = fetch_before
        .into_iter()
        .filter(|(t, _)| !a_ids.contains(t))
        .collect();
    assert_eq!(rest.len(), 2);
    assert_eq!(snapshot(&app, Stage::Fetch).await, rest);

    // Job B's tasks go back too (both stages) and die again: the dead count comes back.
    let b_before = dlq(&app, &["list", "--job-id", &job_b.to_string()]).await;
    let replayed = dlq(&app, &["replay", "--job-id", &job_b.to_string()]).await;
    assert_eq!(replayed, [json!({"replayed": 2})]);
    let status = app.wait_done(job_b, LIMIT).await.unwrap();
    assert_eq!((status.dead, status.aggregated), (2, 0), "{status:?}");
    wait_dead(&app, Stage::Fetch, 2).await;
    wait_dead(&app, Stage::Process, 1).await;
    let b_after = dlq(&app, &["list", "--job-id", &job_b.to_string()]).await;
    assert_eq!(task_ids(&b_after), task_ids(&b_before));
    for line in &b_after {
        assert_eq!(line["attempts"], 1, "{line}");
    }

    // The garbage message matches no job filter; without one it is replayed as is (and
    // dies again).
    let garbage = dlq(&app, &["replay", "--error", "invalid_task"]).await;
    assert_eq!(garbage, [json!({"replayed": 1})]);
    wait_dead(&app, Stage::Fetch, 2).await;
    let listed = dlq(&app, &["list", "--error", "invalid_task"]).await;
    assert_eq!(listed.len(), 1);
    let bodies: Vec<Vec<u8>> = snapshot(&app, Stage::Fetch)
        .await
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert!(bodies.contains(&b"garbage one".to_vec()));
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn purge_deletes_only_what_matches() {
    let app = spawn("dlq-purge").await;
    let a_paths: Vec<String> = (0..3).map(|i| format!("/status/404?n={i}")).collect();
    let job_a = app.enqueue_lines(&urls(&app, &a_paths), &[]).await.unwrap();
    let b_paths = vec![
        "/status/403".to_string(),
        "/status/404?n=b".to_string(),
        "/text/1.txt".to_string(),
    ];
    let job_b = app.enqueue_lines(&urls(&app, &b_paths), &[]).await.unwrap();
    publish_garbage(&app, b"garbage").await;
    app.wait_done(job_a, LIMIT).await.unwrap();
    app.wait_done(job_b, LIMIT).await.unwrap();
    wait_dead(&app, Stage::Fetch, 6).await;
    wait_dead(&app, Stage::Process, 1).await;
    let fetch_before = snapshot(&app, Stage::Fetch).await;
    let a_listed = dlq(&app, &["list", "--job-id", &job_a.to_string()]).await;

    // Asked to stop before it starts (SIGINT), purge stops at once and deletes nothing.
    let config = producer::Config::try_parse_from([
        "producer",
        "--namespace",
        &app.namespace,
        "dlq",
        "purge",
    ])
    .unwrap();
    let producer::Command::Dlq(command) = &config.command else {
        unreachable!("a dlq command")
    };
    let stop = CancellationToken::new();
    stop.cancel();
    let mut out = Vec::new();
    let err = producer::dlq::run(&config.common.connection, command, &stop, &mut out)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("interrupted"), "{err:#}");
    assert!(out.is_empty());
    assert_eq!(snapshot(&app, Stage::Fetch).await, fetch_before);

    let purged = dlq(&app, &["purge", "--job-id", &job_a.to_string()]).await;
    assert_eq!(purged, [json!({"purged": 3})]);
    let a_ids: Vec<String> = task_ids(&a_listed);
    let rest: Vec<_> = fetch_before
        .into_iter()
        .filter(|(t, _)| !a_ids.contains(&t.map_or("null".into(), |t| t.to_string())))
        .collect();
    assert_eq!(rest.len(), 3);
    assert_eq!(snapshot(&app, Stage::Fetch).await, rest);
    assert_eq!(
        dlq(&app, &["purge", "--error", "timeout"]).await,
        [json!({"purged": 0})]
    );

    let purged = dlq(&app, &["purge", "--stage", "process"]).await;
    assert_eq!(purged, [json!({"purged": 1})]);
    wait_dead(&app, Stage::Process, 0).await;
    let purged = dlq(&app, &["purge", "--error", "invalid_task"]).await;
    assert_eq!(purged, [json!({"purged": 1})]);
    let left = dlq(&app, &["list"]).await;
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|l| l["job_id"] == job_b.to_string()));
    assert_eq!(dlq(&app, &["purge"]).await, [json!({"purged": 2})]);
    assert!(dlq(&app, &["list"]).await.is_empty());
    // Purging changes no counter: the jobs stay done, their tasks dead.
    let status = app.store.status(job_b).await.unwrap().unwrap();
    assert!(status.done && status.dead == 3, "{status:?}");
    app.shutdown().await.unwrap();
}

#[test]
fn dlq_usage_errors_are_clap_errors() {
    let parse = |args: &[&str]| {
        producer::Config::try_parse_from(["producer", "dlq"].iter().chain(args)).map(|_| ())
    };
    assert!(parse(&["list", "--stage", "fetch", "--limit", "3"]).is_ok());
    assert!(parse(&["replay", "--error", "anything-at-all", "--dry-run"]).is_ok());
    assert!(parse(&["list", "--stage", "nope"]).is_err());
    assert!(parse(&["list", "--job-id", "not-a-uuid"]).is_err());
    assert!(parse(&["replay", "--limit", "3"]).is_err());
    assert!(parse(&["purge", "--dry-run"]).is_err());
    assert!(parse(&["wipe"]).is_err());
}

//! A foreign publisher: `producer job create --total N` (in process), then a plain Python
//! `pika` script (`tests/python/publish_tasks.py`) publishes one task JSON per message to
//! exchange `<ns>`, routing key `fetch`; the job ends done with the exact aggregate.
//!
//! Needs `python3` with `pika` (`.ci/run` installs it); without it the test prints a
//! SKIPPED line and passes.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::Parser as _;
use tributary::runtime::config::ConnectionArgs;
use tributary::store::{EnqueueState, JobStatus};
use tributary_tests::app::{App, AppOptions, connection_flags};
use tributary_tests::quotes::{assert_close, expected_aggregate};
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(60);

fn pika_available() -> bool {
    Command::new("python3")
        .args(["-c", "import pika"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs the Python publisher with `urls` on stdin; returns its stdout.
fn publish_with_pika(namespace: &str, job: Uuid, urls: &[String]) -> anyhow::Result<String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/publish_tasks.py");
    let amqp_url = ConnectionArgs::local(namespace).amqp_url;
    let mut child = Command::new("python3")
        .arg(&script)
        .args([amqp_url.first(), namespace, &job.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("a piped stdin");
    for url in urls {
        writeln!(stdin, "{url}")?;
    }
    drop(stdin);
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        out.status
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test]
async fn a_python_pika_publisher_feeds_the_pipeline() {
    if !pika_available() {
        println!("SKIPPED: python3 with pika is not installed (python3 -m pip install pika)");
        return;
    }
    let app = App::spawn("foreign", AppOptions::default()).await.unwrap();
    let ids: Vec<u64> = (0..200).collect();
    let urls: Vec<String> = ids
        .iter()
        .map(|i| app.origin.url(&format!("/quotes/{i}.json")))
        .collect();

    let job = Uuid::new_v4();
    let mut flags = vec!["producer".to_string()];
    flags.extend(connection_flags(&app.namespace));
    flags.extend(["job", "create", "--total", "200", "--job-id"].map(String::from));
    flags.push(job.to_string());
    let config = producer::Config::try_parse_from(flags).unwrap();
    let producer::Command::Job(producer::JobCommand::Create { total, job_id }) = config.command
    else {
        panic!("not job create: {:?}", config.command);
    };
    let created = producer::job::create(&app.store, job_id, total)
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(created).unwrap(),
        serde_json::json!({"job_id": job.to_string(), "total": 200})
    );
    let before = app.store.status(job).await.unwrap().unwrap();
    assert_eq!((before.total, before.done), (200, false));

    let namespace = app.namespace.clone();
    let published = tokio::task::spawn_blocking(move || publish_with_pika(&namespace, job, &urls))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(published.trim(), r#"{"published": 200}"#);

    let done = JobStatus {
        job_id: job,
        total: 200,
        fetched: 200,
        processed: 200,
        aggregated: 200,
        retrying: 0,
        deferred: 0,
        dead: 0,
        enqueue: EnqueueState::Complete,
        done: true,
    };
    assert_eq!(app.wait_done(job, LIMIT).await.unwrap(), done);
    assert_close(
        &app.results_json(job).await.unwrap(),
        &expected_aggregate(ids),
    );
    app.shutdown().await.unwrap();
}

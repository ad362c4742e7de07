//! The retry ladder: retryable failures wait in delay queues (never in a consumer) and come
//! back; permanent ones and exhausted ones are dead-lettered with their attempt count.

use std::time::Duration;

use lapin::options::BasicGetOptions;
use tributary::broker::amqp::{self, HeadersExt, header};
use tributary::names::Stage;
use tributary_tests::app::{App, AppOptions};
use tributary_tests::quotes::{assert_close, expected_aggregate};

const LIMIT: Duration = Duration::from_secs(60);

fn ladder(max_attempts: &str, delays: &str) -> AppOptions {
    AppOptions {
        fetcher_args: vec![
            "--retry-delays".into(),
            delays.into(),
            "--max-attempts".into(),
            max_attempts.into(),
        ],
        ..AppOptions::default()
    }
}

#[tokio::test]
async fn flaky_origins_succeed_after_retries_and_hopeless_ones_die() {
    let app = App::spawn("retries", ladder("3", "100ms,200ms"))
        .await
        .unwrap();
    let mut lines: Vec<String> = (0..20)
        .map(|i| app.origin.url(&format!("/flaky/ok/2/{i}")))
        .collect();
    lines.extend((0..5).map(|i| app.origin.url(&format!("/status/500?i={i}"))));
    let job = app.enqueue_lines(&lines, &[]).await.unwrap();
    let status = app.wait_done(job, LIMIT).await.unwrap();
    assert_eq!(
        (status.aggregated, status.dead, status.retrying),
        (20, 5, 0),
        "{status:?}"
    );
    assert_close(
        &app.results_json(job).await.unwrap(),
        &expected_aggregate(0..20),
    );
    for i in 0..20 {
        assert_eq!(app.origin.hits(&format!("/flaky/ok/2/{i}")), 3, "task {i}");
    }
    // Each 500 was tried exactly --max-attempts times, then dead-lettered saying so.
    assert_eq!(app.origin.count_path_prefix("/status/500"), 15);
    let conn = app.broker().await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let dead = channel
        .basic_get(
            app.names.dead_queue(Stage::Fetch).as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .unwrap()
        .expect("a dead letter");
    let h = amqp::headers_of(&dead.delivery.properties);
    assert_eq!(h.get_u64(header::ATTEMPTS), Some(3));
    assert_eq!(h.get_u64(header::HTTP_STATUS), Some(500));
    assert_eq!(h.get_str(header::ERROR).as_deref(), Some("http_status"));
    let _ = conn.close(200, "ok".into()).await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn retry_after_sets_the_wait() {
    let app = App::spawn("retry-after", ladder("5", "100ms,3s"))
        .await
        .unwrap();
    let lines: Vec<String> = (0..5)
        .map(|i| app.origin.url(&format!("/retry-after/1/{i}")))
        .collect();
    let job = app.enqueue_lines(&lines, &[]).await.unwrap();
    let status = app.wait_done(job, LIMIT).await.unwrap();
    assert_eq!((status.aggregated, status.dead), (5, 0), "{status:?}");
    let log = app.origin.requests();
    for i in 0..5 {
        let path = format!("/retry-after/1/{i}");
        let times: Vec<_> = log
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.at)
            .collect();
        assert_eq!(times.len(), 2, "{path}");
        let waited = times[1].duration_since(times[0]);
        // The ladder's first step is 100 ms; Retry-After: 1 must win (loose lower bound).
        assert!(
            waited >= Duration::from_millis(900),
            "{path} retried after {waited:?}"
        );
    }
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn private_addresses_are_refused_without_allow_private() {
    let app = App::spawn(
        "ssrf",
        AppOptions {
            fetchers: 0,
            ..AppOptions::default()
        },
    )
    .await
    .unwrap();
    // A fetcher as deployed: no --allow-private.
    let config = <fetcher_worker::Config as clap::Parser>::try_parse_from([
        "fetcher-worker",
        "--namespace",
        app.namespace.as_str(),
    ])
    .unwrap();
    let stop = tributary::runtime::shutdown::CancellationToken::new();
    let fetcher = tokio::spawn(fetcher_worker::run(config, stop.clone()));
    let port = app.origin.addr().port();
    let lines = vec![
        app.origin.url("/quotes/1.json"),
        format!("http://localhost:{port}/quotes/2.json"),
        format!("http://[::1]:{port}/quotes/3.json"),
        format!("http://169.254.169.254:{port}/latest/meta-data/"),
    ];
    let job = app.enqueue_lines(&lines, &[]).await.unwrap();
    let status = app.wait_done(job, LIMIT).await.unwrap();
    assert_eq!((status.aggregated, status.dead), (0, 4), "{status:?}");
    assert_eq!(
        app.origin.request_count(),
        0,
        "no request may reach a private address"
    );
    let dead = app.dlq(&["list", "--stage", "fetch"]).await.unwrap();
    assert_eq!(dead.len(), 4);
    assert!(
        dead.iter().all(|d| d["error"] == "blocked_address"),
        "{dead:?}"
    );
    stop.cancel();
    fetcher.await.unwrap().unwrap();
    app.shutdown().await.unwrap();
}

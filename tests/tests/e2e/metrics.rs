//! `/metrics`, `/livez` and `/readyz` of a running stage.

use std::time::Duration;

use tributary_tests::app::{App, AppOptions};
use tributary_tests::redis_node::free_port;

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn stages_count_into_metrics_and_report_ready() {
    let port = free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let app = App::spawn(
        "metrics",
        AppOptions {
            fetcher_args: vec!["--metrics-listen".into(), listen.clone()],
            ..AppOptions::default()
        },
    )
    .await
    .unwrap();
    let mut lines: Vec<String> = (0..30)
        .map(|i| app.origin.url(&format!("/quotes/{i}.json")))
        .collect();
    lines.push(app.origin.url("/status/404"));
    let job = app.enqueue_lines(&lines, &[]).await.unwrap();
    app.wait_done(job, Duration::from_secs(60)).await.unwrap();

    let base = format!("http://{listen}");
    assert_eq!(get(&format!("{base}/livez")).await.0, 200);
    assert_eq!(get(&format!("{base}/readyz")).await.0, 200);
    let (status, text) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    // The registry is process-wide (other tests in this binary count into it too), so
    // check for presence and lower bounds only.
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    };
    assert!(value("tributary_tasks_consumed_total{stage=\"fetch\"}") >= 31.0);
    assert!(value("tributary_tasks_succeeded_total{stage=\"fetch\"}") >= 30.0);
    assert!(value("tributary_tasks_succeeded_total{stage=\"results\"}") >= 30.0);
    assert!(value("tributary_tasks_dead_total{stage=\"fetch\",class=\"http_status\"}") >= 1.0);
    assert!(value("tributary_http_responses_total{status=\"200\"}") >= 30.0);
    assert!(value("tributary_fetched_bytes_total") > 0.0);
    // Without --host-rate every host is in the one `other` bucket.
    assert!(value("tributary_host_requests_total{host=\"other\"}") >= 31.0);
    assert!(text.contains("tributary_fetch_duration_seconds_bucket"));
    let depth = format!("tributary_queue_depth{{queue=\"{}.fetch\"}}", app.namespace);
    assert!(text.contains(&depth), "no {depth} in\n{text}");
    assert!(!text.contains("127.0.0.1"), "no URL may appear in a label");
    app.shutdown().await.unwrap();
}

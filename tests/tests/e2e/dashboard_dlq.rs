//! The dashboard's dead-letter page and actions, and the dead-letter API routes they share:
//! filters, search, paging, dry run then confirm, purge, CSRF and the read-only token.

use reqwest::StatusCode;
use serde_json::Value;
use tributary::names::Stage;
use tributary::policy::{ErrorClass, Failure};
use tributary_tests::app::{App, AppOptions};
use tributary_tests::dead::{self, Grave};
use uuid::Uuid;

use super::dashboard::{ADMIN, Dash, VIEWER, csrf_of};

/// Puts a fetch dead letter of `job` for `url` with `failure` in the dead-letter queue.
async fn bury(app: &App, job: Uuid, url: &str, failure: Failure) {
    dead::bury(app, [Grave::fetch(job, url, failure)])
        .await
        .unwrap();
}

async fn api_dlq(dash: &Dash, query: &str) -> Vec<Value> {
    let url = format!("{}/v1/dlq{query}", dash.base);
    let response = dash
        .client
        .get(url)
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn api_post(dash: &Dash, path: &str, token: &str) -> (StatusCode, Value) {
    let url = format!("{}{path}", dash.base);
    let response = dash
        .client
        .post(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test]
async fn dead_letters_are_filtered_searched_replayed_and_purged() {
    let app = App::spawn("dash-dlq", AppOptions::no_stages())
        .await
        .unwrap();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    bury(&app, a, "http://alpha.example/1", Failure::http(404, None)).await;
    let slow = Failure::new(ErrorClass::Timeout, "no answer within 30s");
    bury(&app, a, "http://beta.example/2", slow).await;
    bury(&app, b, "http://gamma.example/3", Failure::http(410, None)).await;
    let tokens = ["--api-token", ADMIN, "--read-only-token", VIEWER];
    let dash = Dash::start(&app, &tokens).await;
    let cookie = dash.login(ADMIN).await;

    the_page_filters_searches_and_pages(&dash, &cookie, b).await;

    // Replay job a's: a dry run first changes nothing, then the confirmed replay.
    let (_, html, _) = dash.page("/dlq", Some(&cookie)).await;
    let csrf = csrf_of(&html);
    let job = a.to_string();
    let fields = [
        ("csrf", csrf.as_str()),
        ("job_id", job.as_str()),
        ("step", "dry_run"),
    ];
    let (status, html, _) = dash.form("/dlq/replay", Some(&cookie), &fields).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("<strong id=\"would\">2</strong>"), "{html}");
    assert_eq!(api_dlq(&dash, "").await.len(), 3);
    let forged = [
        ("csrf", "forged"),
        ("job_id", job.as_str()),
        ("step", "confirm"),
    ];
    let (status, _, _) = dash.form("/dlq/replay", Some(&cookie), &forged).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let viewer = dash.login(VIEWER).await;
    let (_, viewer_html, _) = dash.page("/dlq", Some(&viewer)).await;
    assert!(!viewer_html.contains("action=\"/dlq/replay\""));
    let viewer_csrf = csrf_of(&viewer_html);
    let viewer_fields = [("csrf", viewer_csrf.as_str()), ("step", "confirm")];
    let (status, _, _) = dash.form("/dlq/purge", Some(&viewer), &viewer_fields).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let confirm = [
        ("csrf", csrf.as_str()),
        ("job_id", job.as_str()),
        ("step", "confirm"),
    ];
    let (_, html, _) = dash.form("/dlq/replay", Some(&cookie), &confirm).await;
    assert!(html.contains("<strong id=\"done\">2</strong>"), "{html}");
    assert_eq!(
        app.queue_depth(&app.names.queue(Stage::Fetch))
            .await
            .unwrap(),
        2
    );
    assert_eq!(api_dlq(&dash, "").await.len(), 1);

    purge_over_the_api(&dash, b).await;
    let (_, html, _) = dash.page("/dlq", Some(&cookie)).await;
    assert!(html.contains("No dead letters match"));
    dash.stop().await;
    app.shutdown().await.unwrap();
}

/// The page lists every entry with counts per class; search, job and class filters, a bad
/// filter, and API paging.
async fn the_page_filters_searches_and_pages(dash: &Dash, cookie: &str, b: Uuid) {
    let (status, html, _) = dash.page("/dlq", Some(cookie)).await;
    assert_eq!(status, StatusCode::OK);
    for url in ["alpha.example/1", "beta.example/2", "gamma.example/3"] {
        assert!(html.contains(url), "{url}: {html}");
    }
    assert!(
        html.contains("http_status 2") && html.contains("timeout 1"),
        "{html}"
    );
    let (_, html, _) = dash.page("/dlq?search=BETA.example", Some(cookie)).await;
    assert!(html.contains("beta.example/2") && !html.contains("alpha.example"));
    let (_, html, _) = dash.page("/dlq?search=within+30", Some(cookie)).await;
    assert!(html.contains("beta.example/2") && !html.contains("gamma.example"));
    let (_, html, _) = dash.page(&format!("/dlq?job_id={b}"), Some(cookie)).await;
    assert!(html.contains("gamma.example/3") && !html.contains("beta.example"));
    let (_, html, _) = dash.page("/dlq?error=nothing_like_it", Some(cookie)).await;
    assert!(html.contains("No dead letters match"), "{html}");
    let (status, _, _) = dash.page("/dlq?job_id=nope", Some(cookie)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(api_dlq(dash, "?offset=1&limit=1").await.len(), 1);
    assert_eq!(api_dlq(dash, "?offset=2").await.len(), 1);
}

/// Purge over the API: the read-only token is refused, a dry run counts, then it goes.
async fn purge_over_the_api(dash: &Dash, b: Uuid) {
    let (status, _) = api_post(dash, "/v1/dlq/purge", VIEWER).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, dry) = api_post(dash, "/v1/dlq/purge?dry_run=true", ADMIN).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (dry["purged"].as_u64(), dry["would_purge"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(dry["dead_letters"][0]["url"], "http://gamma.example/3");
    let (_, purged) = api_post(dash, &format!("/v1/dlq/purge?job_id={b}"), ADMIN).await;
    assert_eq!(purged, serde_json::json!({"purged": 1}));
    assert!(api_dlq(dash, "").await.is_empty());
}

/// A namespace without stages whose fetch dead-letter queue holds `n` 404s of one job,
/// for `http://{host}/0` .. `http://{host}/{n-1}`, in that order.
async fn spawn_with_404s(label: &str, host: &str, n: u64) -> App {
    let app = App::spawn(label, AppOptions::no_stages()).await.unwrap();
    let job = Uuid::new_v4();
    let graves =
        (0..n).map(|i| Grave::fetch(job, &format!("http://{host}/{i}"), Failure::http(404, None)));
    dead::bury(&app, graves).await.unwrap();
    app
}

/// A page with a read budget stops after that many dead letters, says so, and leaves every
/// dead letter in its queue; without a budget it reads them all.
#[tokio::test]
async fn a_read_budget_stops_the_pass_and_leaves_the_queue_whole() {
    use producer::config::{DlqCommand, DlqFilter};
    use producer::dlq::{Collect, run_on};
    use tributary::runtime::config::ConnectionArgs;
    use tributary::runtime::shutdown::CancellationToken;

    let app = spawn_with_404s("dash-budget", "budget.example", 7).await;
    let conn = app.broker().await.unwrap();
    let args = ConnectionArgs::local(&app.namespace);
    let list = DlqCommand::List {
        filter: DlqFilter {
            search: Some("budget.example/6".into()),
            ..Default::default()
        },
        limit: None,
    };
    let read = |page: Collect| {
        let (conn, args, list) = (&conn, &args, &list);
        async move {
            let mut page = page;
            run_on(conn, None, args, list, &CancellationToken::new(), &mut page)
                .await
                .unwrap();
            page
        }
    };

    let cut = read(Collect::page(0, 10).within(3)).await;
    assert_eq!((cut.read, cut.depth, cut.seen), (3, 7, 0));
    assert!(cut.cut_short() && cut.entries.is_empty());

    let whole = read(Collect::page(0, 10).within(7)).await;
    assert_eq!((whole.read, whole.depth, whole.seen), (7, 7, 1));
    assert!(!whole.cut_short());
    assert_eq!(
        whole.entries[0].url.as_deref(),
        Some("http://budget.example/6")
    );
    let queue = app.names.dead_queue(Stage::Fetch);
    assert_eq!(app.queue_depth(&queue).await.unwrap(), 7);
    let _ = conn.close(200, "done".into()).await;
    app.shutdown().await.unwrap();
}

/// The management API `producer serve --management-url` reads (CI enables the plugin on
/// the local node, scripts/services.sh).
pub fn management_url() -> String {
    std::env::var("TRIBUTARY_TEST_MANAGEMENT_URL")
        .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".into())
}

/// The text of the overview's `field` cell of `queue`.
fn cell(html: &str, queue: &str, field: &str) -> Option<String> {
    let at = format!("data-queue=\"{queue}\" data-field=\"{field}\">");
    let start = html.find(&at)? + at.len();
    Some(html[start..].split('<').next()?.to_string())
}

/// With `--management-url`, the overview shows unacked counts, rates and the delay queues
/// summed per stage, as the management API reports them.
#[tokio::test]
async fn the_overview_reads_unacked_rates_and_delay_queues_from_the_management_api() {
    use lapin::options::BasicGetOptions;
    use std::time::{Duration, Instant};
    use tributary::broker::amqp;
    use tributary::broker::topology::Topology;
    use tributary::names::Names;
    use tributary::runtime::config::QueueType;

    let app = spawn_with_404s("dash-mgmt", "m.example", 3).await;
    // One message waits in a delay queue; one dead letter is held unacked.
    let conn = app.broker().await.unwrap();
    let channel = amqp::confirm_channel(&conn).await.unwrap();
    let long = Duration::from_secs(600);
    Topology::new(app.names.clone(), QueueType::Classic)
        .with_retries(Stage::Fetch, &[long])
        .declare(&channel)
        .await
        .unwrap();
    let key = Names::retry_routing_key(Stage::Fetch, long);
    amqp::publish_confirmed(
        &channel,
        app.names.exchange(),
        &key,
        b"{}",
        Default::default(),
    )
    .await
    .unwrap();
    let dead_queue = app.names.dead_queue(Stage::Fetch);
    let held = channel
        .basic_get(
            dead_queue.as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .unwrap();
    assert!(held.is_some());

    let url = management_url();
    let dash = Dash::start(&app, &["--api-token", ADMIN, "--management-url", &url]).await;
    let cookie = dash.login(ADMIN).await;
    let delay = format!("{}.retry.*", app.names.queue(Stage::Fetch));
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let (_, html, _) = dash.page("/", Some(&cookie)).await;
        let seen = (
            cell(&html, &dead_queue, "ready"),
            cell(&html, &dead_queue, "unacked"),
            cell(&html, &delay, "ready"),
        );
        let wanted = (Some("2".into()), Some("1".into()), Some("1".into()));
        if seen == wanted {
            assert!(!html.contains("no-management"));
            assert!(html.contains("retry delays, summed"));
            let rate = cell(&html, &app.names.queue(Stage::Fetch), "rate_in").unwrap();
            assert!(rate.parse::<f64>().is_ok(), "{rate}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the management API's numbers never showed (is the rabbitmq_management plugin on at {url}?): {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(held);
    let _ = conn.close(200, "done".into()).await;
    dash.stop().await;
    app.shutdown().await.unwrap();
}

//! The fetcher's HTTP client against the test origin, through a real fetcher: redirects
//! are followed up to five and refused beyond or to another scheme, and credentials (the
//! task's `Authorization` header, or a user and password in its URL) reach the origin they
//! were given for and are not carried across a redirect to another one.

use std::time::Duration;

use serde_json::json;
use tributary_tests::app::{App, AppOptions};
use tributary_tests::quotes::{assert_close, expected_aggregate};

const LIMIT: Duration = Duration::from_secs(60);

/// Runs a job of `lines` to its end, checks that exactly the documents `fetched` were
/// aggregated (and their aggregate exact) and `dead` tasks died; the fetch dead letters.
async fn run_job(
    app: &App,
    lines: &[String],
    fetched: &[u64],
    dead: u64,
) -> Vec<serde_json::Value> {
    let job = app.enqueue_lines(lines, &[]).await.unwrap();
    let status = app.wait_done(job, LIMIT).await.unwrap();
    let aggregated = fetched.len() as u64;
    assert_eq!(
        (status.aggregated, status.dead),
        (aggregated, dead),
        "{status:?}"
    );
    assert_close(
        &app.results_json(job).await.unwrap(),
        &expected_aggregate(fetched.iter().copied()),
    );
    let letters = app.dlq(&["list", "--stage", "fetch"]).await.unwrap();
    assert_eq!(letters.len() as u64, dead, "{letters:?}");
    letters
}

#[tokio::test]
async fn redirects_are_followed_up_to_five_and_refused_beyond() {
    let app = App::spawn("http-redirects", AppOptions::default())
        .await
        .unwrap();
    let port = app.origin.addr().port();
    let lines = vec![
        app.origin.url("/redirect/1/1.json"),
        app.origin.url("/redirect/5/2.json"),
        app.origin.url("/redirect/6/3.json"),
        app.origin.url("/redirect-to?to=ftp://127.0.0.1/x"),
        // To another host (the same server by name), with an absolute location.
        app.origin.url(&format!(
            "/redirect-to?to=http://localhost:{port}/quotes/4.json"
        )),
    ];
    let dead = run_job(&app, &lines, &[1, 2, 4], 2).await;
    assert!(dead.iter().all(|d| d["error"] == "redirects"), "{dead:?}");
    // Five hops of document 2 were followed to the document; of document 3, the sixth
    // redirect was refused before its target was asked for.
    assert_eq!(app.origin.hits("/quotes/2.json"), 1);
    assert_eq!(app.origin.count_path_prefix("/redirect/"), 1 + 5 + 6);
    assert_eq!(app.origin.hits("/quotes/3.json"), 0);
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn credentials_reach_their_origin_and_no_other() {
    let app = App::spawn("http-credentials", AppOptions::default())
        .await
        .unwrap();
    let port = app.origin.addr().port();
    let with_bearer = |path: String| {
        json!({"url": app.origin.url(&path), "headers": {"Authorization": "Bearer t0k"}})
            .to_string()
    };
    let lines = vec![
        with_bearer("/bearer/t0k/5.json".into()),
        // A redirect on the same origin keeps the header...
        with_bearer("/redirect-to?to=/bearer/t0k/6.json".into()),
        // ...and one to another host drops it: /no-auth answers 400 to any Authorization.
        with_bearer(format!(
            "/redirect-to?to=http://localhost:{port}/no-auth/7.json"
        )),
        // The control: sent straight to /no-auth, the header is there and the task fails.
        with_bearer("/no-auth/9.json".into()),
        // A user and password in the URL go as Basic auth, percent-decoded, also after a
        // redirect on the same origin, and not after one to another.
        format!("http://us%40er:p%3Ass@127.0.0.1:{port}/basic/us@er/p:ss/8.json"),
        format!("http://u:p@127.0.0.1:{port}/redirect-to?to=/basic/u/p/10.json"),
        format!(
            "http://u:p@127.0.0.1:{port}/redirect-to?to=http://localhost:{port}/no-auth/11.json"
        ),
    ];
    let dead = run_job(&app, &lines, &[5, 6, 7, 8, 10, 11], 1).await;
    assert_eq!(dead[0]["error"], "http_status", "{dead:?}");
    assert!(
        dead[0]["url"]
            .as_str()
            .is_some_and(|u| u.contains("/no-auth/9")),
        "{dead:?}"
    );
    app.shutdown().await.unwrap();
}

/// The overall timeout covers the body: an origin that stalls before its headers and one
/// that stalls inside its body both fail as `timeout`.
#[tokio::test]
async fn a_download_that_outlasts_the_timeout_fails_as_a_timeout() {
    let options = AppOptions {
        fetcher_args: ["--timeout-ms", "300", "--max-attempts", "1"]
            .map(String::from)
            .to_vec(),
        ..AppOptions::default()
    };
    let app = App::spawn("http-timeout", options).await.unwrap();
    let lines = vec![
        app.origin.url("/slow/2000/1.json"),
        app.origin.url("/stall-body/2000/2.json"),
        app.origin.url("/stall-body/0/3.json"),
    ];
    let dead = run_job(&app, &lines, &[3], 2).await;
    assert!(dead.iter().all(|d| d["error"] == "timeout"), "{dead:?}");
    app.shutdown().await.unwrap();
}

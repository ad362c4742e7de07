//! The web dashboard of `producer serve`, handler by handler: the server in process on
//! 127.0.0.1:0 in a fresh namespace (no stages; jobs registered as `producer job create`
//! does), pages fetched with reqwest, cookies handled by hand so each step is visible.

use redis::AsyncCommands as _;
use reqwest::{StatusCode, header, redirect};
use tokio::task::JoinHandle;
use tributary::runtime::shutdown::CancellationToken;
use tributary::store::jobs;
use tributary_tests::app::{App, AppOptions, connection_flags, serve};
use uuid::Uuid;

pub const ADMIN: &str = "dashboard-admin-token-0123";
pub const VIEWER: &str = "dashboard-viewer-token-0123";

/// A dashboard server and a client that follows no redirects.
pub struct Dash {
    pub base: String,
    pub client: reqwest::Client,
    stop: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Dash {
    pub async fn start(app: &App, tokens: &[&str]) -> Dash {
        let stop = CancellationToken::new();
        let connection = connection_flags(&app.namespace);
        let served = serve(&connection, tokens, stop.clone()).await.unwrap();
        Dash {
            base: served.base,
            client: reqwest::Client::builder()
                .redirect(redirect::Policy::none())
                .build()
                .unwrap(),
            stop,
            handle: served.handle,
        }
    }

    /// GETs a page as a browser would (Accept: text/html), with a cookie if given.
    pub async fn page(
        &self,
        path: &str,
        cookie: Option<&str>,
    ) -> (StatusCode, String, Option<String>) {
        let mut request = self
            .client
            .get(format!("{}{path}", self.base))
            .header(header::ACCEPT, "text/html");
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let location = location(&response);
        (status, response.text().await.unwrap(), location)
    }

    /// POSTs a form; returns the status, the body and the session cookie it set, if any.
    pub async fn form(
        &self,
        path: &str,
        cookie: Option<&str>,
        fields: &[(&str, &str)],
    ) -> (StatusCode, String, Option<String>) {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .form(fields);
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let cookie = session_cookie(&response);
        (status, response.text().await.unwrap(), cookie)
    }

    /// Logs in with `token`; returns the `name=value` of the session cookie.
    pub async fn login(&self, token: &str) -> String {
        let (status, _, cookie) = self.form("/login", None, &[("token", token)]).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        cookie.expect("a session cookie")
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

fn location(response: &reqwest::Response) -> Option<String> {
    let value = response.headers().get(header::LOCATION)?;
    Some(value.to_str().unwrap().to_string())
}

/// The `name=value` part of the session cookie set by a response, checking its flags.
fn session_cookie(response: &reqwest::Response) -> Option<String> {
    let set = response
        .headers()
        .get(header::SET_COOKIE)?
        .to_str()
        .unwrap();
    if set.starts_with("tributary_session=;") {
        return None; // removed (logout)
    }
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Strict"), "{set}");
    assert!(set.contains("Max-Age="), "{set}");
    Some(set.split(';').next().unwrap().to_string())
}

/// The CSRF token of the forms of a page.
pub fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    html[at..].split('"').next().unwrap().to_string()
}

/// Registers `n` jobs one second apart (oldest first) with a total of 10 each.
async fn jobs_created(app: &App, n: u64) -> Vec<Uuid> {
    let start = tributary::message::now_ms() - n * 1000;
    let mut ids = Vec::new();
    for i in 0..n {
        let job = Uuid::new_v4();
        app.store.add_to_total(job, 10).await.unwrap();
        jobs::register_at(&app.store, job, start + i * 1000)
            .await
            .unwrap();
        ids.push(job);
    }
    ids
}

#[tokio::test]
async fn anonymous_callers_see_the_login_page_only() {
    let app = App::spawn("dash-anon", AppOptions::no_stages())
        .await
        .unwrap();
    let job = jobs_created(&app, 1).await[0];
    let dash = Dash::start(&app, &["--api-token", ADMIN]).await;
    for path in [
        "/".to_string(),
        format!("/jobs/{job}"),
        format!("/jobs/{job}/results.csv"),
        format!("/jobs/{}", Uuid::new_v4()),
        "/no/such/page".to_string(),
    ] {
        let (status, body, to) = dash.page(&path, None).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(to.as_deref(), Some("/login"), "{path}");
        assert!(!body.contains(&job.to_string()), "{path}: {body}");
    }
    let api = dash.client.get(format!("{}/v2/{job}", dash.base));
    let response = api.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(!response.text().await.unwrap().contains(&job.to_string()));
    let (status, body, _) = dash.page("/login", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("name=\"token\""), "{body}");
    assert!(!body.contains(&job.to_string()));
    let (status, body, cookie) = dash.form("/login", None, &[("token", "wrong")]).await;
    assert_eq!((status, cookie), (StatusCode::UNAUTHORIZED, None));
    assert!(body.contains("not valid"), "{body}");
    let forged = format!("tributary_session=a.99999999999.{}", "f".repeat(32));
    let (status, _, _) = dash.page("/", Some(&forged)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    dash.stop().await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_overview_lists_jobs_newest_first_in_pages() {
    let app = App::spawn("dash-jobs", AppOptions::no_stages())
        .await
        .unwrap();
    let dash = Dash::start(&app, &["--api-token", ADMIN]).await;
    let cookie = dash.login(ADMIN).await;
    let (status, empty, _) = dash.page("/", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(empty.contains("No jobs yet"), "{empty}");
    assert!(empty.contains("id=\"no-management\""), "{empty}");
    assert!(empty.contains(&app.names.queue(tributary::names::Stage::Fetch)));
    let ids = jobs_created(&app, 30).await;
    let (_, first, _) = dash.page("/", Some(&cookie)).await;
    let (_, second, _) = dash.page("/?page=2", Some(&cookie)).await;
    let shown = |html: &str| {
        ids.iter()
            .filter(|id| html.contains(&id.to_string()))
            .count()
    };
    assert_eq!((shown(&first), shown(&second)), (25, 5));
    // Newest first: the last created is on page 1, before the one created before it.
    let at = |id: &Uuid| first.find(&id.to_string());
    assert!(at(&ids[29]).unwrap() < at(&ids[28]).unwrap());
    assert!(second.contains(&ids[0].to_string()));
    assert!(first.contains("page 1 of 2 (30)"), "{first}");
    // A job whose keys expired leaves the index when listed.
    let mut redis = app.store.connection();
    let _: () = redis.del(app.names.status_key(ids[0])).await.unwrap();
    let (_, second, _) = dash.page("/?page=2", Some(&cookie)).await;
    assert_eq!(shown(&second), 4);
    let (status, _, _) = dash.page("/?page=x", Some(&cookie)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    dash.stop().await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_job_page_shows_counters_results_and_downloads() {
    let app = App::spawn("dash-job", AppOptions::no_stages())
        .await
        .unwrap();
    let job = jobs_created(&app, 1).await[0];
    let mut redis = app.store.connection();
    let groups = app.names.groups_key(job);
    let _: () = redis
        .hset(&groups, "b,c", "2 5 10.5 -1 4.25")
        .await
        .unwrap();
    let _: () = redis.hset(&groups, "a", "1 1 3 3 3").await.unwrap();
    let dash = Dash::start(&app, &["--api-token", ADMIN]).await;
    let cookie = dash.login(ADMIN).await;
    let (status, html, _) = dash.page(&format!("/jobs/{job}"), Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("data-counter=\"total\">10<"), "{html}");
    assert!(html.contains("4.25") && html.contains("2.1"), "{html}");
    let sorted = format!("/jobs/{job}?sort=sum&desc=true");
    let (_, html, _) = dash.page(&sorted, Some(&cookie)).await;
    assert!(html.find("b,c").unwrap() < html.find("<td>a</td>").unwrap());
    let (_, html, _) = dash
        .page(&format!("/jobs/{job}?sort=sum"), Some(&cookie))
        .await;
    assert!(html.find("b,c").unwrap() > html.find("<td>a</td>").unwrap());
    let csv_path = format!("/jobs/{job}/results.csv");
    let (status, csv, _) = dash.page(&csv_path, Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        csv,
        "group,records,count,sum,min,max,mean\na,1,1,3,3,3,3\n\"b,c\",2,5,10.5,-1,4.25,2.1\n"
    );
    let json = dash
        .client
        .get(format!("{}/v1/jobs/{job}/results", dash.base));
    let response = json.header(header::COOKIE, &cookie).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    for unknown in [
        format!("/jobs/{}", Uuid::new_v4()),
        "/jobs/nope".to_string(),
    ] {
        let (status, html, _) = dash.page(&unknown, Some(&cookie)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}");
        assert!(html.contains("No such job"), "{html}");
    }
    let (status, html, _) = dash.page("/elsewhere", Some(&cookie)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains("No such page"), "{html}");
    dash.stop().await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn forms_need_the_csrf_token_and_the_read_only_token_changes_nothing() {
    let app = App::spawn("dash-csrf", AppOptions::no_stages())
        .await
        .unwrap();
    let tokens = ["--api-token", ADMIN, "--read-only-token", VIEWER];
    let dash = Dash::start(&app, &tokens).await;
    let cookie = dash.login(ADMIN).await;
    let (_, html, _) = dash.page("/", Some(&cookie)).await;
    let csrf = csrf_of(&html);
    let (status, _, _) = dash
        .form("/logout", Some(&cookie), &[("csrf", "forged")])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = dash.form("/logout", None, &[("csrf", &csrf)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = dash
        .form("/logout", Some(&cookie), &[("csrf", &csrf)])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);

    let viewer = dash.login(VIEWER).await;
    let (status, html, _) = dash.page("/", Some(&viewer)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("read-only"), "{html}");
    // A session cookie never authorizes an API POST; the read-only token is refused there.
    let post = dash.client.post(format!("{}/v1/dlq/replay", dash.base));
    let response = post.header(header::COOKIE, &cookie).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let post = dash.client.post(format!("{}/v1/dlq/replay", dash.base));
    let response = post.bearer_auth(VIEWER).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let get = dash.client.get(format!("{}/v1/dlq?limit=1", dash.base));
    let response = get.bearer_auth(VIEWER).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    dash.stop().await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_a_token_pages_are_open_and_forms_still_need_csrf() {
    let app = App::spawn("dash-open", AppOptions::no_stages())
        .await
        .unwrap();
    let job = jobs_created(&app, 1).await[0];
    let dash = Dash::start(&app, &[]).await;
    let response = dash
        .client
        .get(format!("{}/", dash.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = session_cookie(&response).expect("a session cookie for the CSRF token");
    let html = response.text().await.unwrap();
    assert!(html.contains(&job.to_string()));
    let (status, _, to) = dash.page("/login", None).await;
    assert_eq!((status, to.as_deref()), (StatusCode::SEE_OTHER, Some("/")));
    let (status, _, _) = dash.form("/logout", Some(&cookie), &[("csrf", "x")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = dash
        .form("/logout", Some(&cookie), &[("csrf", &csrf_of(&html))])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    dash.stop().await;
    app.shutdown().await.unwrap();
}

/// Reads `GET /events` until a snapshot contains every string of `wanted`; returns the
/// events read. Bounded by a generous limit so a broken stream fails instead of hanging.
async fn events_until(dash: &Dash, cookie: &str, wanted: &[&str]) -> String {
    let url = format!("{}/events", dash.base);
    let request = dash.client.get(url).header(header::COOKIE, cookie);
    let mut response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let mut seen = String::new();
    let read = async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            let last = seen.rsplit("event: snapshot").next().unwrap_or_default();
            if wanted.iter().all(|w| last.contains(w)) {
                return;
            }
        }
        panic!("the event stream ended");
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), read)
        .await
        .expect("no snapshot with the progress within 120 s");
    seen
}

#[tokio::test]
async fn live_snapshots_follow_progress_and_the_history_outlives_a_restart() {
    let app = App::spawn("dash-live", AppOptions::no_stages())
        .await
        .unwrap();
    let job = jobs_created(&app, 1).await[0];
    let dash = Dash::start(&app, &["--api-token", ADMIN]).await;
    let cookie = dash.login(ADMIN).await;
    let anonymous = dash.client.get(format!("{}/events", dash.base));
    let refused = anonymous.send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let id = format!("\"job_id\":\"{job}\"");
    events_until(
        &dash,
        &cookie,
        &[&id, "\"fetched\":0", "\"state\":\"running\""],
    )
    .await;
    let mut redis = app.store.connection();
    let status = app.names.status_key(job);
    let _: i64 = redis.hincr(&status, "fetched", 7).await.unwrap();
    let _: i64 = redis.hincr(&status, "aggregated", 10).await.unwrap();
    events_until(
        &dash,
        &cookie,
        &[&id, "\"fetched\":7", "\"state\":\"done\""],
    )
    .await;
    let history = |dash: &Dash| {
        let url = format!("{}/throughput.json", dash.base);
        dash.client
            .get(url)
            .header(header::COOKIE, cookie.clone())
            .send()
    };
    let points: serde_json::Value = history(&dash).await.unwrap().json().await.unwrap();
    let points = points["points"].as_array().unwrap().clone();
    assert!(
        points.iter().any(|p| p["fetched"].as_f64().unwrap() > 0.0),
        "{points:?}"
    );
    // The job's own progress samples, from before and after it finished, for its chart.
    let progress_url = format!("{}/jobs/{job}/progress.json", dash.base);
    let anonymous = dash.client.get(&progress_url).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let progress = dash
        .client
        .get(&progress_url)
        .header(header::COOKIE, &cookie);
    let progress: serde_json::Value = progress.send().await.unwrap().json().await.unwrap();
    let samples: Vec<u64> = progress["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["aggregated"].as_u64().unwrap())
        .collect();
    assert_eq!(
        (samples.first(), samples.last()),
        (Some(&0), Some(&10)),
        "{progress}"
    );
    let ttl: i64 = redis.pttl(app.names.progress_key(job)).await.unwrap();
    assert!(ttl > 0, "the samples expire with the job ({ttl})");
    dash.stop().await;
    let again = Dash::start(&app, &["--api-token", ADMIN]).await;
    let cookie = again.login(ADMIN).await;
    let url = format!("{}/throughput.json", again.base);
    let response = again.client.get(url).header(header::COOKIE, cookie).send();
    let kept: serde_json::Value = response.await.unwrap().json().await.unwrap();
    assert!(kept["points"].as_array().unwrap().len() >= points.len());
    again.stop().await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_hosts_page_shows_the_limiter_state_of_each_host() {
    let app = App::spawn("dash-hosts", AppOptions::no_stages())
        .await
        .unwrap();
    let dash = Dash::start(&app, &["--api-token", ADMIN]).await;
    let cookie = dash.login(ADMIN).await;
    let (status, html, _) = dash.page("/hosts", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("No host has limiter state"), "{html}");
    // The fetcher's formats: Redis time in microseconds, the AIMD factor in a hash.
    let mut redis = app.store.connection();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut redis).await.unwrap();
    let later = (secs * 1_000_000 + micros + 60_000_000).to_string();
    let names = &app.names;
    let _: () = redis
        .set(names.host_pause_key("slow.example"), &later)
        .await
        .unwrap();
    let rate = names.host_rate_key("slow.example");
    let _: () = redis.hset(&rate, "f", "0.250000").await.unwrap();
    let leases = names.host_leases_key("busy.example");
    let _: () = redis.zadd(&leases, "lease-1", &later).await.unwrap();
    let _: () = redis.zadd(&leases, "lease-2", &later).await.unwrap();
    let _: () = redis.zadd(&leases, "ended", 1).await.unwrap();
    // A real limiter at 10/s: one request goes, four are put aside with turns 100 ms
    // apart; it advertises the rate it applies.
    let limiter = fetcher_worker::politeness::limiter::HostLimiter::new(&app.store);
    let limit = fetcher_worker::politeness::limiter::Gcra {
        interval: std::time::Duration::from_millis(100),
        tolerance: std::time::Duration::ZERO,
    };
    for _ in 0..5 {
        let zero = std::time::Duration::ZERO;
        limiter
            .ask("queued.example", Some(limit), zero, None)
            .await
            .unwrap();
    }
    let (_, html, _) = dash.page("/hosts", Some(&cookie)).await;
    let row = |host: &str| {
        let at = html.find(&format!("data-host=\"{host}\"")).expect(host);
        html[at..].split("</tr>").next().unwrap().to_string()
    };
    let slow = row("slow.example");
    assert!(
        slow.contains("0.25") && slow.contains("class=\"paused\""),
        "{slow}"
    );
    let busy = row("busy.example");
    assert!(busy.contains("<td class=\"num\">2</td>"), "{busy}");
    let queued = row("queued.example");
    assert!(
        queued.contains("data-field=\"rate\">10<"),
        "the advertised rate: {queued}"
    );
    let deferred = queued.split("data-field=\"deferred\">").nth(1).unwrap();
    let deferred: u64 = deferred.split('<').next().unwrap().parse().unwrap();
    // Four turns given, the first possibly already due by the time the page reads them.
    assert!((3..=4).contains(&deferred), "{queued}");
    let (status, _, to) = dash.page("/hosts", None).await;
    assert_eq!(
        (status, to.as_deref()),
        (StatusCode::SEE_OTHER, Some("/login"))
    );
    dash.stop().await;
    app.shutdown().await.unwrap();
}

//! `producer serve` end to end: the pipeline in process (`App::spawn`), the HTTP API in
//! process on 127.0.0.1:0, requests with reqwest; status and results over HTTP equal what
//! the store (and so `producer status` / `aggregator results`) says.

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, StatusCode, header};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tributary::names::Stage;
use tributary::runtime::shutdown::CancellationToken;
use tributary_tests::app::{App, AppOptions, connection_flags, serve};
use tributary_tests::quotes::{assert_close, expected_aggregate};
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "test-token-0123456789";

/// A running `producer serve`.
pub(crate) struct Server {
    base: String,
    client: reqwest::Client,
    stop: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Starts the API for the app's namespace with a token and `extra` serve flags.
    pub(crate) async fn start(app: &App, extra: &[&str]) -> Server {
        Self::start_with(&connection_flags(&app.namespace), extra).await
    }

    async fn start_with(connection: &[String], extra: &[&str]) -> Server {
        let extra = [&["--api-token", TOKEN], extra].concat();
        let stop = CancellationToken::new();
        let served = serve(connection, &extra, stop.clone()).await.unwrap();
        Server {
            base: served.base,
            client: reqwest::Client::new(),
            stop,
            handle: served.handle,
        }
    }

    /// A request without a token.
    fn anonymous(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// A request with the token.
    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.anonymous(method, path).bearer_auth(TOKEN)
    }

    pub(crate) async fn get(&self, path: &str) -> (StatusCode, Value) {
        send(self.request(Method::GET, path)).await
    }

    /// GETs `path` and checks the error answer.
    async fn get_error(&self, path: &str, status: StatusCode, error: &str) {
        assert_error(&self.get(path).await, status, error);
    }

    async fn post_json(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        send(self.request(Method::POST, path).json(body)).await
    }

    async fn post_lines(&self, path: &str, lines: &[String]) -> (StatusCode, Value) {
        let body = lines.join("\n");
        send(
            self.request(Method::POST, path)
                .header(header::CONTENT_TYPE, "application/x-ndjson")
                .body(body),
        )
        .await
    }

    pub(crate) async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("the server stops")
            .expect("the server task does not panic")
            .expect("the server ends Ok");
    }
}

/// Sends and parses the JSON answer (`Null` for an empty body).
pub(crate) async fn send(request: RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("the server answers");
    let status = response.status();
    let bytes = response.bytes().await.expect("a body");
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
    };
    (status, value)
}

pub(crate) fn assert_error(answer: &(StatusCode, Value), status: StatusCode, error: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"], error, "{}", answer.1);
    assert!(answer.1["detail"].is_string(), "{}", answer.1);
}

fn job_of(answer: &(StatusCode, Value)) -> Uuid {
    assert_eq!(answer.0, StatusCode::ACCEPTED, "{}", answer.1);
    answer.1["job_id"].as_str().unwrap().parse().unwrap()
}

fn quote_urls(app: &App, ids: impl IntoIterator<Item = u64>) -> Vec<String> {
    ids.into_iter()
        .map(|i| app.origin.url(&format!("/quotes/{i}.json")))
        .collect()
}

/// Status and results over HTTP are, byte for byte, what `producer status` and
/// `aggregator results` print (the store's values, serialized the same way).
async fn assert_http_matches_store(app: &App, api: &Server, job: Uuid) {
    let status = app.store.status(job).await.unwrap().unwrap();
    let results = app.store.results(job).await.unwrap().unwrap();
    for (path, cli) in [
        (format!("/v1/jobs/{job}"), serde_json::to_string(&status)),
        (
            format!("/v1/jobs/{job}/results"),
            serde_json::to_string(&results),
        ),
    ] {
        let response = api.request(Method::GET, &path).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.text().await.unwrap(), cli.unwrap(), "{path}");
    }
}

#[tokio::test]
async fn jobs_posted_as_json_and_ndjson_finish_with_the_exact_aggregate() {
    let app = App::spawn(
        "api-jobs",
        AppOptions {
            fetchers: 2,
            ..AppOptions::default()
        },
    )
    .await
    .unwrap();
    let api = Server::start(&app, &[]).await;

    // JSON: {"urls": [...]}, 1,000 URLs.
    let urls = quote_urls(&app, 0..1000);
    let response = api
        .request(Method::POST, "/v1/jobs")
        .json(&json!({ "urls": urls }))
        .send()
        .await
        .unwrap();
    let location = response.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    let accepted: Value = response.json().await.unwrap();
    let json_job: Uuid = accepted["job_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(accepted["enqueued"], 1000);
    assert_eq!(location, format!("/v1/jobs/{json_job}"));

    // NDJSON: 1,000 lines, URLs and task objects (with meta), a comment and a blank line.
    let mut lines: Vec<String> = quote_urls(&app, 1000..1500);
    lines.extend(
        quote_urls(&app, 1500..2000)
            .into_iter()
            .map(|url| json!({"url": url, "meta": {"desk": "eq"}}).to_string()),
    );
    lines.insert(10, "# a comment".into());
    lines.insert(20, String::new());
    let answer = api.post_lines("/v1/jobs", &lines).await;
    let ndjson_job = job_of(&answer);
    assert_eq!(answer.1["enqueued"], 1000, "{}", answer.1);

    // A job id belongs to the request that created it: another body for it is 409
    // ({"tasks": [...]}, job id in the body), and nothing of it is published.
    let tasks: Vec<Value> = quote_urls(&app, 2000..2010)
        .into_iter()
        .map(|url| json!({ "url": url }))
        .collect();
    let more = api
        .post_json(
            "/v1/jobs",
            &json!({"tasks": tasks, "job_id": ndjson_job.to_string()}),
        )
        .await;
    assert_error(&more, StatusCode::CONFLICT, "job exists");

    let status = app.wait_done(json_job, LIMIT).await.unwrap();
    assert_eq!(
        (status.total, status.aggregated),
        (1000, 1000),
        "{status:?}"
    );
    let status = app.wait_done(ndjson_job, LIMIT).await.unwrap();
    assert_eq!(
        (status.total, status.aggregated),
        (1000, 1000),
        "{status:?}"
    );
    for job in [json_job, ndjson_job] {
        assert_http_matches_store(&app, &api, job).await;
    }
    let (_, results) = api.get(&format!("/v1/jobs/{json_job}/results")).await;
    assert_close(&results, &expected_aggregate(0..1000));
    let (_, results) = api.get(&format!("/v1/jobs/{ndjson_job}/results")).await;
    assert_close(&results, &expected_aggregate(1000..2000));

    api.stop().await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn tokens_bad_input_unknown_jobs_and_large_bodies_get_json_errors() {
    // No fetcher: whatever is published stays in the fetch queue, where it can be counted.
    let no_fetcher = AppOptions {
        fetchers: 0,
        ..AppOptions::default()
    };
    let app = App::spawn("api-errors", no_fetcher).await.unwrap();
    let api = Server::start(&app, &["--max-body-bytes", "65536"]).await;

    let job = Uuid::new_v4();
    every_route_but_healthz_needs_the_token(&api, job).await;

    let lines = bad_input_enqueues_nothing(&app, &api, job).await;
    let fetch_queue = app.names.queue(Stage::Fetch);

    // With skip_invalid the valid lines go.
    let skipped = api
        .post_lines(&format!("/v1/jobs?job_id={job}&skip_invalid=true"), &lines)
        .await;
    assert_eq!(job_of(&skipped), job);
    assert_eq!(skipped.1["enqueued"], 1);
    assert_eq!(skipped.1["skipped"], 2);
    assert_eq!(app.store.status(job).await.unwrap().unwrap().total, 1);

    unknown_jobs_ids_and_routes_are_errors(&api).await;

    bodies_over_the_cap_are_413(&api).await;
    assert_eq!(app.queue_depth(&fetch_queue).await.unwrap(), 1);

    api.stop().await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn dead_letters_are_listed_and_replayed_over_http() {
    let app = App::spawn(
        "api-dlq",
        AppOptions {
            fetcher_args: vec!["--max-attempts".into(), "1".into()],
            ..AppOptions::default()
        },
    )
    .await
    .unwrap();
    let api = Server::start(&app, &[]).await;
    let mut urls = quote_urls(&app, 0..5);
    urls.extend((5..10).map(|i| app.origin.url(&format!("/missing/{i}.json"))));
    let job = job_of(&api.post_json("/v1/jobs", &json!({ "urls": urls })).await);
    let other = job_of(
        &api.post_lines("/v1/jobs", &[app.origin.url("/status/410")])
            .await,
    );
    assert_eq!(app.wait_done(job, LIMIT).await.unwrap().dead, 5);
    assert_eq!(app.wait_done(other, LIMIT).await.unwrap().dead, 1);

    dead_letters_are_listed_and_filtered(&app, &api, job).await;

    // A dry run moves nothing; a replay (filters in the body) brings the job to the exact
    // aggregate once the documents exist; the other job's dead letter stays.
    let (status, dry) = api
        .post_json(
            &format!("/v1/dlq/replay?job_id={job}"),
            &json!({"dry_run": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&dry["replayed"], &dry["would_replay"]),
        (&json!(0), &json!(5))
    );
    assert_eq!(dry["dead_letters"].as_array().unwrap().len(), 5);
    app.origin.publish_missing();
    let replayed = api
        .post_json(
            "/v1/dlq/replay",
            &json!({"job_id": job, "stage": "fetch", "error": "http_status"}),
        )
        .await;
    assert_eq!(replayed, (StatusCode::OK, json!({"replayed": 5})));
    let status = app.wait_done(job, LIMIT).await.unwrap();
    assert_eq!((status.aggregated, status.dead), (10, 0), "{status:?}");
    assert_close(
        &app.results_json(job).await.unwrap(),
        &expected_aggregate(0..10),
    );
    assert_http_matches_store(&app, &api, job).await;
    let (_, left) = api.get("/v1/dlq").await;
    assert_eq!(left.as_array().unwrap().len(), 1);
    assert_eq!(left[0]["job_id"], other.to_string());

    api.stop().await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn unreachable_backends_are_503() {
    let namespace = tributary_tests::app::fresh_namespace("api-down");
    let mut connection = connection_flags(&namespace);
    connection.extend([
        "--amqp-url".into(),
        "amqp://guest:guest@127.0.0.1:1/%2f".into(),
        "--redis-url".into(),
        "redis://127.0.0.1:1/".into(),
    ]);
    let api = Server::start_with(&connection, &[]).await;
    let (status, health) = send(api.anonymous(Method::GET, "/healthz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        health,
        json!({"status": "unavailable", "broker": "down", "redis": "down"})
    );
    let posted = api
        .post_json("/v1/jobs", &json!({"urls": ["http://a.example/1"]}))
        .await;
    assert_eq!(posted.0, StatusCode::SERVICE_UNAVAILABLE, "{}", posted.1);
    api.get_error(
        &format!("/v1/jobs/{}", Uuid::new_v4()),
        StatusCode::SERVICE_UNAVAILABLE,
        "redis unavailable",
    )
    .await;
    api.get_error(
        "/v1/dlq",
        StatusCode::SERVICE_UNAVAILABLE,
        "broker unavailable",
    )
    .await;
    api.stop().await;
}

/// The broker pids of the connections named `name` (via `rabbitmqctl`), or `None` when
/// `rabbitmqctl` cannot be used here.
fn broker_connections(name: &str) -> Option<Vec<String>> {
    let out = Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties", "-q"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let needle = format!("{{\"connection_name\",\"{name}\"}}");
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| line.contains(&needle))
            .filter_map(|line| line.split('\t').next().map(str::to_string))
            .collect(),
    )
}

#[tokio::test]
async fn the_server_reconnects_when_the_broker_drops_its_connection() {
    let app = App::spawn("api-reconnect", AppOptions::default())
        .await
        .unwrap();
    let api = Server::start(&app, &[]).await;
    let name = format!("producer-serve {}", app.namespace);
    let pids = broker_connections(&name).unwrap_or_default();
    if pids.is_empty() {
        println!("SKIPPED: rabbitmqctl cannot see (and close) the server's broker connection");
        return;
    }
    assert_eq!(pids.len(), 1, "{pids:?}");
    let closed = Command::new("rabbitmqctl")
        .args(["close_connection", &pids[0], "test: dropped by the broker"])
        .output()
        .unwrap();
    assert!(closed.status.success(), "{closed:?}");

    // Requests get 503 while it is down, then work again on a new connection.
    let deadline = Instant::now() + LIMIT;
    let job = loop {
        let answer = api
            .post_json("/v1/jobs", &json!({"urls": quote_urls(&app, 0..20)}))
            .await;
        if answer.0 == StatusCode::ACCEPTED {
            break job_of(&answer);
        }
        assert_error(
            &answer,
            StatusCode::SERVICE_UNAVAILABLE,
            "broker unavailable",
        );
        assert!(Instant::now() < deadline, "no reconnect: {}", answer.1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    app.wait_done(job, LIMIT).await.unwrap();
    assert_close(
        &app.results_json(job).await.unwrap(),
        &expected_aggregate(0..20),
    );
    let now = broker_connections(&name).unwrap();
    assert_eq!(now.len(), 1);
    assert_ne!(now, pids);
    api.stop().await;
    app.shutdown().await.unwrap();
}

/// Every route but /healthz needs the token; the OpenAPI document lists the job route.
async fn every_route_but_healthz_needs_the_token(api: &Server, job: Uuid) {
    let (status, health) = send(api.anonymous(Method::GET, "/healthz")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        health,
        json!({"status": "ok", "broker": "up", "redis": "up"})
    );
    for (method, path) in producer::api::ROUTES {
        let path = path.replace("{id}", &job.to_string());
        let method: Method = method.to_uppercase().parse().unwrap();
        let response = api.anonymous(method.clone(), &path).send().await.unwrap();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let answer = send(api.anonymous(method.clone(), &path)).await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "unauthorized");
        assert!(answer.1["detail"].as_str().unwrap().contains("missing"));
        let wrong = send(api.anonymous(method, &path).bearer_auth("not-the-token")).await;
        assert_error(&wrong, StatusCode::UNAUTHORIZED, "unauthorized");
        assert_eq!(wrong.1["detail"], "invalid token");
    }
    let (status, doc) = api.get("/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/v1/jobs"]["post"].is_object());
}

/// Bad input names the line (or array index), and nothing is enqueued; returns the lines
/// (one valid) for the skip_invalid check.
async fn bad_input_enqueues_nothing(app: &App, api: &Server, job: Uuid) -> Vec<String> {
    let fetch_queue = app.names.queue(Stage::Fetch);
    let lines = vec![
        app.origin.url("/quotes/1.json"),
        "# comment".into(),
        "ftp://example.com/x".into(),
        r#"{"url": "http://a.example/1", "color": "red"}"#.into(),
    ];
    let bad = api
        .post_lines(&format!("/v1/jobs?job_id={job}"), &lines)
        .await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "invalid input");
    let detail = bad.1["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(r#"line 3: scheme "ftp" is not http or https; line 4: "#),
        "{detail}"
    );
    assert!(detail.contains("unknown field `color`"), "{detail}");
    assert_eq!(app.queue_depth(&fetch_queue).await.unwrap(), 0);
    assert_eq!(app.store.status(job).await.unwrap(), None);

    let bad = api
        .post_json(
            "/v1/jobs",
            &json!({"urls": ["http://a.example/1", "nope", 7]}),
        )
        .await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "invalid input");
    let detail = bad.1["detail"].as_str().unwrap();
    assert!(detail.starts_with("urls[1]: not a url"), "{detail}");
    assert!(detail.contains("urls[2]: not a URL string"), "{detail}");
    for (body, error) in [
        (json!({"url": ["http://a.example/1"]}), "invalid JSON body"),
        (json!(["http://a.example/1"]), "invalid JSON body"),
        (json!({"urls": []}), "empty job"),
        (
            json!({"urls": ["http://a.example/1"], "job_id": "x"}),
            "invalid JSON body",
        ),
    ] {
        assert_error(
            &api.post_json("/v1/jobs", &body).await,
            StatusCode::BAD_REQUEST,
            error,
        );
    }
    let conflict = api
        .post_json(
            &format!("/v1/jobs?job_id={job}"),
            &json!({"urls": ["http://a.example/1"], "job_id": Uuid::new_v4()}),
        )
        .await;
    assert_error(&conflict, StatusCode::BAD_REQUEST, "conflicting parameters");
    let xml = send(
        api.request(Method::POST, "/v1/jobs")
            .header(header::CONTENT_TYPE, "application/xml")
            .body("<urls/>"),
    )
    .await;
    assert_error(
        &xml,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported content type",
    );
    assert_eq!(app.queue_depth(&fetch_queue).await.unwrap(), 0);
    lines
}

/// Unknown jobs, bad ids, unknown routes.
async fn unknown_jobs_ids_and_routes_are_errors(api: &Server) {
    let unknown = Uuid::new_v4();
    for path in [
        format!("/v1/jobs/{unknown}"),
        format!("/v1/jobs/{unknown}/results"),
    ] {
        api.get_error(&path, StatusCode::NOT_FOUND, "unknown job")
            .await;
    }
    api.get_error(
        "/v1/jobs/not-a-uuid",
        StatusCode::BAD_REQUEST,
        "invalid job id",
    )
    .await;
    api.get_error("/v2/nothing", StatusCode::NOT_FOUND, "not found")
        .await;
}

/// Bodies over --max-body-bytes: with a Content-Length, and streamed without one.
async fn bodies_over_the_cap_are_413(api: &Server) {
    let big: String = (0..2000)
        .map(|i| format!("http://a.example/{i:040}\n"))
        .collect();
    assert!(big.len() > 65536);
    let too_large = send(
        api.request(Method::POST, "/v1/jobs")
            .header(header::CONTENT_TYPE, "text/plain")
            .body(big.clone()),
    )
    .await;
    assert_error(&too_large, StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    let chunks: Vec<Result<String, std::io::Error>> = big
        .as_bytes()
        .chunks(8192)
        .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
        .collect();
    let streamed = send(
        api.request(Method::POST, "/v1/jobs")
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks))),
    )
    .await;
    assert_error(&streamed, StatusCode::PAYLOAD_TOO_LARGE, "body too large");
}

/// `GET /v1/dlq`: all, filtered, limited, NDJSON, bad queries; the same entries as the CLI.
async fn dead_letters_are_listed_and_filtered(app: &App, api: &Server, job: Uuid) {
    let (status, all) = api.get("/v1/dlq").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all.as_array().unwrap().len(), 6, "{all}");
    let (_, mine) = api.get(&format!("/v1/dlq?job_id={job}&stage=fetch")).await;
    let mine = mine.as_array().unwrap();
    assert_eq!(mine.len(), 5);
    for dead in mine {
        assert_eq!(dead["job_id"], job.to_string());
        assert_eq!(dead["stage"], "fetch");
        assert_eq!(dead["error"], "http_status");
        assert_eq!(dead["status"], 404);
    }
    // The same lines as `producer dlq list`.
    let cli = app
        .dlq(&["list", "--job-id", &job.to_string()])
        .await
        .unwrap();
    assert_eq!(mine, &cli);
    let (_, limited) = api.get("/v1/dlq?limit=2&error=http_status").await;
    assert_eq!(limited.as_array().unwrap().len(), 2);
    let (_, none) = api.get("/v1/dlq?stage=process").await;
    assert_eq!(none, json!([]));
    let ndjson = api
        .request(Method::GET, &format!("/v1/dlq?job_id={job}"))
        .header(header::ACCEPT, "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(
        ndjson.headers()[header::CONTENT_TYPE],
        "application/x-ndjson"
    );
    assert_eq!(ndjson.text().await.unwrap().lines().count(), 5);
    api.get_error(
        "/v1/dlq?stage=nowhere",
        StatusCode::BAD_REQUEST,
        "invalid stage",
    )
    .await;
    api.get_error(
        "/v1/dlq?colour=red",
        StatusCode::BAD_REQUEST,
        "invalid query",
    )
    .await;
}

//! The origin's own tests: each route over a real TCP connection.

use super::*;
use std::collections::BTreeMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response read by [`get`].
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// A minimal HTTP/1.1 client: one request per connection.
async fn get_with_host(addr: SocketAddr, path: &str, host: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();

    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    let headers: BTreeMap<String, String> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        body = dechunk(&body);
    }
    Reply {
        status: status.parse().unwrap(),
        headers,
        body,
    }
}

async fn get(origin: &Origin, path: &str) -> Reply {
    get_with_host(origin.addr(), path, &origin.addr().to_string()).await
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = std::str::from_utf8(&data[..eol]).unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap(), 16).unwrap();
        data = &data[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[tokio::test]
async fn serves_quotes_text_and_statuses() {
    let origin = Origin::start(OriginOptions::default()).await.unwrap();
    assert!(origin.base_url().starts_with("http://127.0.0.1:"));
    assert_eq!(origin.url("/x"), format!("{}/x", origin.base_url()));

    let r = get(&origin, "/quotes/7.json").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.body, quote_body(7));
    let r = get(&origin, "/quotes/8").await;
    assert_eq!((r.status, r.body), (200, quote_body(8).to_vec()));
    assert_eq!(get(&origin, "/quotes/x.json").await.status, 404);

    let r = get(&origin, "/text/3.txt").await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"].starts_with("text/plain"));
    assert_eq!(r.body, b"this is not json 3\n");
    assert!(serde_json::from_slice::<serde_json::Value>(&r.body).is_err());

    for code in [404, 500, 503, 301, 204] {
        assert_eq!(get(&origin, &format!("/status/{code}")).await.status, code);
    }
    assert_eq!(get(&origin, "/status/abc").await.status, 400);
    assert_eq!(get(&origin, "/nope").await.status, 404);

    let log = origin.requests();
    assert_eq!(log.len(), 11);
    assert_eq!(origin.request_count(), 11);
    assert_eq!(log[0].path, "/quotes/7.json");
    assert_eq!(log[0].status, 200);
    assert_eq!(log[0].host, origin.addr().to_string());
    assert_eq!(log.last().unwrap().path, "/nope");
    assert_eq!(log.last().unwrap().status, 404);
    assert!(log.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(origin.count_path_prefix("/status/"), 6);
    assert_eq!(origin.count_path_prefix("/quotes/"), 3);
    assert_eq!(origin.hits("/quotes/7.json"), 1);
    assert_eq!(origin.hits("/quotes/7"), 0);

    origin.reset();
    assert_eq!(origin.request_count(), 0);
    origin.shutdown().await;
}

#[tokio::test]
async fn flaky_fails_n_times_per_key_and_id() {
    let origin = Origin::start(OriginOptions::default()).await.unwrap();
    for _ in 0..2 {
        let r = get(&origin, "/flaky/a/2/5").await;
        assert_eq!(r.status, 503);
        assert!(!r.headers.contains_key("retry-after"));
    }
    // Another id and another key have their own counters.
    assert_eq!(get(&origin, "/flaky/a/2/6").await.status, 503);
    assert_eq!(get(&origin, "/flaky/b/1/5").await.status, 503);
    for _ in 0..2 {
        let r = get(&origin, "/flaky/a/2/5").await;
        assert_eq!((r.status, r.body), (200, quote_body(5).to_vec()));
    }
    assert_eq!(get(&origin, "/flaky/b/1/5").await.status, 200);
    assert_eq!(get(&origin, "/flaky/c/0/5.json").await.status, 200);
    assert_eq!(origin.hits("/flaky/a/2/5"), 4);
    assert_eq!(origin.count_path_prefix("/flaky/"), 8);
}

#[tokio::test]
async fn retry_after_answers_429_once() {
    let origin = Origin::start(OriginOptions::default()).await.unwrap();
    let r = get(&origin, "/retry-after/2/9").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "2");
    let r = get(&origin, "/retry-after/2/9").await;
    assert_eq!((r.status, r.body), (200, quote_body(9).to_vec()));
    assert_eq!(get(&origin, "/retry-after/2/9").await.status, 200);
    assert_eq!(get(&origin, "/retry-after/3/9").await.status, 429);
    assert_eq!(get(&origin, "/retry-after/2/10").await.status, 429);

    // reset() also forgets the attempt counters.
    origin.reset();
    assert_eq!(get(&origin, "/retry-after/2/9").await.status, 429);
}

#[tokio::test]
async fn big_bodies_are_streamed() {
    let origin = Origin::start(OriginOptions::default()).await.unwrap();
    let size = 3 * BIG_CHUNK as u64 + 17;
    let r = get(&origin, &format!("/big/{size}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-length"], size.to_string());
    assert_eq!(r.body.len() as u64, size);
    assert!(r.body.iter().all(|&b| b == b'x'));

    let r = get(&origin, &format!("/big-chunked/{size}")).await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("content-length"));
    assert_eq!(r.body.len() as u64, size);

    let r = get(&origin, "/big/0").await;
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(get(&origin, "/big/lots").await.status, 404);
}

#[tokio::test]
async fn latency_slow_and_host_header() {
    let latency = Duration::from_millis(100);
    let origin = Origin::start(OriginOptions {
        latency: Some(latency),
    })
    .await
    .unwrap();
    let t = Instant::now();
    let r = get_with_host(origin.addr(), "/quotes/1.json", "example.test:8080").await;
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= latency);
    let log = origin.requests();
    assert_eq!(log[0].host, "example.test:8080");

    let t = Instant::now();
    let r = get(&origin, "/slow/150/4").await;
    assert_eq!((r.status, r.body), (200, quote_body(4).to_vec()));
    assert!(t.elapsed() >= latency + Duration::from_millis(150));
    assert_eq!(get(&origin, "/slow/x/4").await.status, 404);
}

#[tokio::test]
async fn stops_on_shutdown_and_drop() {
    let origin = Origin::start(OriginOptions::default()).await.unwrap();
    let addr = origin.addr();
    assert_eq!(get(&origin, "/quotes/1.json").await.status, 200);
    origin.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err());

    let origin = Origin::start(OriginOptions::default()).await.unwrap();
    let addr = origin.addr();
    drop(origin);
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "origin still listening after drop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

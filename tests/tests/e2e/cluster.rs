//! Beyond one node: a job on a 3-node RabbitMQ cluster (quorum queues) and a Redis Cluster
//! (3 masters + 3 replicas, `--redis-wait-replicas 1`) finishes exactly while the broker
//! node first in every list is stopped and after the Redis master owning the job's slot was
//! SIGKILLed. The clusters are the local ones of `scripts/clusters.sh` (started here if
//! needed, ~30 s); the test stops and kills their nodes, so it runs in the serial step.

use std::time::{Duration, Instant};

use clap::Parser;
use tributary::names::Names;
use tributary::runtime::config::ConnectionArgs;
use tributary::store::Store;
use tributary_tests::app::{cleanup_with, fresh_namespace, wait_for_status};
use tributary_tests::clusters::{self, Clusters};
use tributary_tests::origin::{Origin, OriginOptions};
use tributary_tests::procs::Worker;
use tributary_tests::quotes::{assert_close, expected_aggregate};
use uuid::Uuid;

const URLS: u64 = 20_000;

/// The flags every binary gets: every broker node and Redis seed, quorum queues, writes
/// acknowledged by a replica.
fn cluster_flags(clusters: &Clusters) -> Vec<String> {
    [
        "--amqp-url",
        &clusters.amqp_urls,
        "--redis-url",
        &clusters.redis_urls,
        "--queue-type",
        "quorum",
        "--redis-wait-replicas",
        "1",
    ]
    .map(str::to_string)
    .to_vec()
}

fn connection(clusters: &Clusters, namespace: &str) -> ConnectionArgs {
    let mut flags = vec![
        "producer".to_string(),
        "--namespace".into(),
        namespace.into(),
    ];
    flags.extend(cluster_flags(clusters));
    flags.extend(["status".into(), Uuid::nil().to_string()]);
    producer::Config::try_parse_from(flags)
        .expect("valid flags")
        .common
        .connection
}

fn start_workers(clusters: &Clusters, namespace: &str) -> Vec<Worker> {
    let common = cluster_flags(clusters);
    let with = |extra: &[&str]| -> Vec<String> {
        common
            .iter()
            .cloned()
            .chain(extra.iter().map(|s| s.to_string()))
            .collect()
    };
    let fetcher = with(&["--allow-private", "--retry-delays", "1s,5s"]);
    let plain = with(&[]);
    let start = |binary: &str, args: &Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Worker::start(binary, namespace, &args).unwrap()
    };
    vec![
        start("fetcher-worker", &fetcher),
        start("fetcher-worker", &fetcher),
        start("processor-worker", &plain),
        start("aggregator", &plain),
    ]
}

/// Enqueues the job with the producer (in process), given every node too.
async fn enqueue(clusters: &Clusters, namespace: &str, origin: &Origin) -> Uuid {
    let file = tempfile::NamedTempFile::new().unwrap();
    let lines: Vec<String> = (0..URLS)
        .map(|i| origin.url(&format!("/quotes/{i}.json")))
        .collect();
    std::fs::write(file.path(), lines.join("\n")).unwrap();
    let mut flags = vec![
        "producer".to_string(),
        "--namespace".into(),
        namespace.into(),
    ];
    flags.extend(cluster_flags(clusters));
    flags.extend([
        "enqueue".into(),
        "--file".into(),
        file.path().display().to_string(),
    ]);
    let config = producer::Config::try_parse_from(flags).unwrap();
    producer::enqueue_once(&config).await.unwrap().job_id
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "stops a broker node and kills a Redis master of the local clusters; run in the serial step"]
async fn a_job_finishes_while_a_broker_node_is_down_and_after_a_redis_failover() {
    let clusters = Clusters::up().unwrap();
    let namespace = fresh_namespace("cluster");
    let args = connection(&clusters, &namespace);
    let store = Store::connect(&args).await.unwrap();
    let origin = Origin::start(OriginOptions::default()).await.unwrap();
    let mut workers = start_workers(&clusters, &namespace);
    let started = Instant::now();
    let job = enqueue(&clusters, &namespace, &origin).await;
    wait_for_status(&store, job, Duration::from_secs(120), |s| {
        s.aggregated >= URLS / 4
    })
    .await;

    // The node first in every list, and the master of the job's keys.
    clusters::run(&["rabbitmq-stop-app", "a"]).unwrap();
    let status_key = Names::new(&namespace).status_key(job);
    let master = clusters.redis_master_of(&status_key).unwrap();
    let port = master.rsplit(':').next().unwrap().to_string();
    eprintln!("stopped rmqa; SIGKILL of the redis master {master} of {status_key}");
    clusters::run(&["redis-kill", &port]).unwrap();
    // Its replica takes over within seconds; the killed node comes back as the new
    // master's replica, so writes can be acknowledged by a replica again.
    tokio::time::sleep(Duration::from_secs(6)).await;
    clusters::run(&["redis-restart", &port]).unwrap();

    let done = wait_for_status(&store, job, Duration::from_secs(300), |s| s.done).await;
    let elapsed = started.elapsed();
    let still_down = std::net::TcpStream::connect("127.0.0.1:5701").is_err();
    eprintln!("done after {elapsed:?} (rmqa still down: {still_down}): {done:?}");
    assert!(still_down, "the job must finish while rmqa is down");
    assert_eq!((done.total, done.aggregated, done.dead), (URLS, URLS, 0));
    let results = serde_json::to_value(store.results(job).await.unwrap().unwrap()).unwrap();
    assert_close(&results, &expected_aggregate(0..URLS));

    // The node returns; nothing changes.
    clusters::run(&["rabbitmq-start-app", "a"]).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(store.status(job).await.unwrap().unwrap(), done);
    for worker in workers.drain(..) {
        let binary = worker.binary.clone();
        let status = worker.terminate(Duration::from_secs(40)).unwrap();
        assert!(status.success(), "{binary} exited with {status}");
    }
    cleanup_with(&args).await.unwrap();
}

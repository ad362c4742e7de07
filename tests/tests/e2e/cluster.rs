//! Beyond one node: a job on a 3-node RabbitMQ cluster (quorum queues) and a Redis Cluster
//! (3 masters + 3 replicas, `--redis-wait-replicas 1`) finishes exactly while the broker
//! node first in every list is stopped and after the Redis master owning the job's slot was
//! SIGKILLed. The clusters are the local ones of `scripts/clusters.sh` (started here if
//! needed, ~30 s); the test stops and kills their nodes, so it runs in the serial step.
//!
//! Also the bad input of a cluster setup, refused at start with one line (exit 2 for a URL
//! that does not parse, 1 for a Redis that does not fit): those tests run redis-servers of
//! their own on free ports, or only read the local clusters.

use std::time::{Duration, Instant};

use clap::Parser;
use tributary::names::Names;
use tributary::runtime::config::ConnectionArgs;
use tributary::store::Store;
use tributary_tests::app::{cleanup_with, fresh_namespace, wait_for_status};
use tributary_tests::clusters::{self, Clusters};
use tributary_tests::origin::{Origin, OriginOptions};
use tributary_tests::procs::{Worker, stop_all};
use tributary_tests::quotes::{assert_close, expected_aggregate};
use uuid::Uuid;

use tributary_tests::redis_node::free_port;

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
    stop_all(workers.drain(..), Duration::from_secs(40));
    cleanup_with(&args).await.unwrap();
}

/// `redis-cli -p PORT ARGS...`: its output, or `None` while the server does not answer.
fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.success() && !text.starts_with("Could not connect")).then_some(text)
}

/// A redis-server of the test's own on a free port, without persistence; killed on drop.
struct OwnRedis {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl OwnRedis {
    /// Starts one with `extra` settings (`--cluster-enabled yes`, `--replicaof ...`) and
    /// waits until it answers `PING`.
    fn start(extra: &[&str]) -> OwnRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().unwrap();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .args(extra)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (the redis-server package) runs");
        let redis = OwnRedis {
            port,
            child,
            _dir: dir,
        };
        redis.wait_for(&["ping"], "PONG");
        redis
    }

    /// A cluster-enabled node (no slots: enough for `INFO cluster`).
    fn cluster_node() -> OwnRedis {
        let bus = free_port().unwrap().to_string();
        OwnRedis::start(&["--cluster-enabled", "yes", "--cluster-port", &bus])
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Polls `redis-cli ARGS` until its output contains `wanted` (a minute at most).
    fn wait_for(&self, args: &[&str], wanted: &str) {
        for _ in 0..600 {
            if redis_cli(self.port, args).is_some_and(|out| out.contains(wanted)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "redis on {}: `{}` never said {wanted}",
            self.port,
            args.join(" ")
        );
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a built binary until it exits (it must refuse at start, not retry: killed and
/// failed after a minute); its exit code and its `error:` line, the only one it printed.
fn refused(binary: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let path = tributary_tests::procs::bin_dir().unwrap().join(binary);
    let mut child = std::process::Command::new(&path)
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn,lapin=off,redis=error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} (cargo build --workspace --bins): {e}", path.display()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{binary} {args:?} is still running: it must refuse the input at start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{binary}: not one error line: {stderr:?}");
    assert!(!stderr.contains("panicked"), "{binary} panicked: {stderr}");
    (status.code().expect("exited"), errors[0].to_string())
}

/// `producer status` of no job: enough for the producer to connect to Redis.
const STATUS: [&str; 2] = ["status", "00000000-0000-0000-0000-000000000000"];

#[test]
fn an_unparsable_url_in_a_list_is_a_usage_error_that_shows_no_password() {
    let amqp = "amqp://guest:s3cret@127.0.0.1:5672/%2f,amqp://guest:s3cret@[::1";
    for binary in ["fetcher-worker", "processor-worker", "aggregator"] {
        let (code, line) = refused(binary, &["--amqp-url", amqp], &[]);
        assert_eq!(code, 2, "{binary}: {line}");
        assert!(
            line.starts_with("error: --amqp-url / AMQP_URL: item 2 of 2 is not a URL"),
            "{binary}: {line}"
        );
        assert!(
            !line.contains("s3cret"),
            "{binary} shows the password: {line}"
        );
    }
    let redis = "redis://:s3cret@127.0.0.1:6379/,redis//:s3cret@127.0.0.1:7000/";
    let (code, line) = refused("producer", &STATUS, &[("REDIS_URL", redis)]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.starts_with("error: --redis-url / REDIS_URL: item 2 of 2 is not a URL"),
        "{line}"
    );
    assert!(!line.contains("s3cret"), "shows the password: {line}");
}

#[test]
fn a_redis_list_mixing_cluster_and_single_nodes_is_refused_at_start() {
    let single = OwnRedis::start(&[]);
    let node = OwnRedis::cluster_node();
    let list = format!("{},{}", single.url(), node.url());
    let mixed = format!(
        "error: redis: the Redis URLs mix cluster nodes ({}) and non-cluster nodes ({})",
        node.url(),
        single.url()
    );
    for binary in ["fetcher-worker", "aggregator"] {
        assert_eq!(
            refused(binary, &["--redis-url", &list], &[]),
            (1, mixed.clone())
        );
    }
    let with_status =
        |extra: &[&'static str]| [&["--redis-url", list.as_str()], extra, &STATUS].concat();
    assert_eq!(refused("producer", &with_status(&[]), &[]), (1, mixed));
    // --redis-cluster decides for nodes that cannot tell, not against one that can.
    assert_eq!(
        refused("producer", &with_status(&["--redis-cluster"]), &[]),
        (
            1,
            format!(
                "error: redis: --redis-cluster, but {} is not a cluster node (cluster_enabled:0)",
                single.url()
            )
        )
    );
}

#[test]
fn waiting_for_more_replicas_than_attached_is_refused_at_start() {
    let master = OwnRedis::start(&[]);
    let port = master.port.to_string();
    let _replica = OwnRedis::start(&["--replicaof", "127.0.0.1", &port]);
    master.wait_for(&["info", "replication"], "connected_slaves:1");
    let url = master.url();
    let wanted = format!("error: redis: --redis-wait-replicas 2: only 1 replica attached to {url}");
    let args = ["--redis-url", &url, "--redis-wait-replicas", "2"];
    assert_eq!(refused("fetcher-worker", &args, &[]), (1, wanted.clone()));
    assert_eq!(
        refused("producer", &[&args[..], &STATUS].concat(), &[]),
        (1, wanted)
    );
    // One replica is what there is: the check passes and the producer gets to the job.
    let one = ["--redis-url", &url, "--redis-wait-replicas", "1"];
    let (code, line) = refused("producer", &[&one[..], &STATUS].concat(), &[]);
    assert_eq!(code, 1);
    assert!(line.contains("unknown job"), "{line}");
}

#[test]
#[ignore = "reads the local Redis Cluster of scripts/clusters.sh (started if needed); serial step"]
fn waiting_for_more_replicas_than_a_cluster_master_has_is_refused_at_start() {
    let clusters = Clusters::up().unwrap();
    let args = [
        "--redis-url",
        &clusters.redis_urls,
        "--redis-wait-replicas",
        "2",
    ];
    let (code, line) = refused("aggregator", &args, &[]);
    assert_eq!(code, 1, "{line}");
    let prefix = "error: redis: --redis-wait-replicas 2: only 1 replica attached to 127.0.0.1:";
    assert!(line.starts_with(prefix), "{line}");
}

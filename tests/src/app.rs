//! `spawn_app`: the whole pipeline in this process, in a fresh namespace.
//!
//! Starts an [`Origin`] and the four stages through their library `run` functions (the same
//! code the binaries run), on the real RabbitMQ and Redis. Dropping the [`App`] stops the
//! stages and deletes the namespace's queues and Redis keys, even when a test panics.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use tokio::task::JoinHandle;
use tributary::broker::topology::Topology;
use tributary::names::{Names, Stage};
use tributary::runtime::config::{ConnectionArgs, QueueType};
use tributary::runtime::shutdown::CancellationToken;
use tributary::store::{JobStatus, Store};
use uuid::Uuid;

use crate::origin::{Origin, OriginOptions};

/// How many of each stage to start, and extra flags for each.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub fetchers: usize,
    pub processors: usize,
    pub aggregators: usize,
    pub fetcher_args: Vec<String>,
    pub processor_args: Vec<String>,
    pub aggregator_args: Vec<String>,
    pub origin: OriginOptions,
    /// `--queue-type` of every stage, the producer and the topology the app declares.
    pub queue_type: QueueType,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            fetchers: 1,
            processors: 1,
            aggregators: 1,
            fetcher_args: vec!["--retry-delays".into(), "100ms,200ms".into()],
            processor_args: Vec::new(),
            aggregator_args: Vec::new(),
            origin: OriginOptions::default(),
            queue_type: QueueType::Classic,
        }
    }
}

struct Stage_ {
    name: String,
    stop: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl AppOptions {
    /// No stages at all: a namespace with its topology and an origin, for tests that start
    /// worker processes themselves or only publish and inspect.
    pub fn no_stages() -> Self {
        Self {
            fetchers: 0,
            processors: 0,
            aggregators: 0,
            ..Self::default()
        }
    }
}

/// A running pipeline in its own namespace.
pub struct App {
    pub namespace: String,
    pub names: Names,
    pub store: Store,
    pub origin: Origin,
    queue_type: QueueType,
    stages: Vec<Stage_>,
    cleaned: bool,
}

/// A namespace no other test uses.
pub fn fresh_namespace(label: &str) -> String {
    format!("t-{label}-{}", &Uuid::new_v4().simple().to_string()[..10])
}

/// The connection flags of a namespace, for building stage configs.
pub fn connection_flags(namespace: &str) -> Vec<String> {
    vec!["--namespace".into(), namespace.into()]
}

/// A `producer serve` running in this process (the HTTP API and the dashboard).
pub struct Served {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

/// `producer <connection> serve --listen 127.0.0.1:0 <extra>`, in process, until `stop`.
pub async fn serve(
    connection: &[String],
    extra: &[&str],
    stop: CancellationToken,
) -> anyhow::Result<Served> {
    let mut flags = vec!["producer".to_string()];
    flags.extend(connection.iter().cloned());
    flags.extend(["serve", "--listen", "127.0.0.1:0"].map(String::from));
    flags.extend(extra.iter().map(|s| s.to_string()));
    let config = producer::Config::try_parse_from(flags)?;
    let producer::Command::Serve(args) = &config.command else {
        anyhow::bail!("not serve: {:?}", config.command);
    };
    let server = producer::api::Server::bind(&config.common.connection, args, stop).await?;
    Ok(Served {
        base: format!("http://{}", server.local_addr()),
        handle: tokio::spawn(server.run()),
    })
}

impl App {
    /// Starts the origin and the stages; returns once the topology exists.
    pub async fn spawn(label: &str, options: AppOptions) -> anyhow::Result<App> {
        tributary::runtime::telemetry::init(tributary::runtime::config::LogFormat::Text);
        let namespace = fresh_namespace(label);
        let args = ConnectionArgs::local(&namespace);
        let names = Names::new(&namespace);
        let store = Store::connect(&args).await?;
        let origin = Origin::start(options.origin.clone()).await?;
        let mut app = App {
            namespace,
            names,
            store,
            origin,
            queue_type: options.queue_type,
            stages: Vec::new(),
            cleaned: false,
        };
        for _ in 0..options.fetchers {
            app.start_fetcher(&options.fetcher_args)?;
        }
        for _ in 0..options.processors {
            app.start_processor(&options.processor_args)?;
        }
        for _ in 0..options.aggregators {
            app.start_aggregator(&options.aggregator_args)?;
        }
        app.wait_for_topology().await?;
        Ok(app)
    }

    /// The flags that put a binary in this app's namespace, with its queue type.
    fn connection(&self) -> Vec<String> {
        let mut flags = connection_flags(&self.namespace);
        if self.queue_type == QueueType::Quorum {
            flags.extend(["--queue-type".into(), "quorum".into()]);
        }
        flags
    }

    fn flags(&self, binary: &str, extra: &[String]) -> Vec<String> {
        let mut flags = vec![binary.to_string()];
        flags.extend(self.connection());
        flags.extend(extra.iter().cloned());
        flags
    }

    fn start(
        &mut self,
        name: &str,
        run: impl FnOnce(CancellationToken) -> JoinHandle<anyhow::Result<()>>,
    ) {
        let stop = CancellationToken::new();
        let handle = run(stop.clone());
        self.stages.push(Stage_ {
            name: name.to_string(),
            stop,
            handle,
        });
    }

    pub fn start_fetcher(&mut self, extra: &[String]) -> anyhow::Result<()> {
        let mut flags = self.flags("fetcher-worker", extra);
        flags.push("--allow-private".into());
        let config = fetcher_worker::Config::try_parse_from(flags)?;
        self.start("fetcher", |stop| {
            tokio::spawn(fetcher_worker::run(config, stop))
        });
        Ok(())
    }

    pub fn start_processor(&mut self, extra: &[String]) -> anyhow::Result<()> {
        let config =
            processor_worker::Config::try_parse_from(self.flags("processor-worker", extra))?;
        self.start("processor", |stop| {
            tokio::spawn(processor_worker::run(config, stop))
        });
        Ok(())
    }

    pub fn start_aggregator(&mut self, extra: &[String]) -> anyhow::Result<()> {
        let config = aggregator::Config::try_parse_from(self.flags("aggregator", extra))?;
        self.start("aggregator", |stop| {
            tokio::spawn(aggregator::run(config, stop))
        });
        Ok(())
    }

    /// Publishes `body` as is (persistent, confirmed) to `stage`'s queue: what a foreign
    /// or broken publisher would send.
    pub async fn publish_raw(&self, stage: Stage, body: &[u8]) -> anyhow::Result<()> {
        use tributary::broker::amqp;
        let conn = self.broker().await?;
        let channel = amqp::confirm_channel(&conn).await?;
        amqp::publish_confirmed(
            &channel,
            self.names.exchange(),
            stage.as_str(),
            body,
            amqp::persistent("application/json"),
        )
        .await?;
        let _ = conn.close(200, "ok".into()).await;
        Ok(())
    }

    /// A broker connection for the test itself.
    pub async fn broker(&self) -> anyhow::Result<lapin::Connection> {
        let args = ConnectionArgs::local(&self.namespace);
        Ok(tributary::broker::amqp::connect_any(&args.amqp_url, "test").await?)
    }

    /// Declares the topology as every binary does, so tests that start no stage can
    /// publish and inspect queues too.
    async fn wait_for_topology(&self) -> anyhow::Result<()> {
        let conn = self.broker().await?;
        let channel = conn.create_channel().await?;
        Topology::new(self.names.clone(), self.queue_type)
            .with_retries(
                Stage::Fetch,
                &[Duration::from_millis(100), Duration::from_millis(200)],
            )
            .declare(&channel)
            .await?;
        let _ = conn.close(200, "ok".into()).await;
        Ok(())
    }

    /// The producer's `enqueue`, in process, with these lines as its input file.
    pub async fn enqueue_lines(&self, lines: &[String], extra: &[&str]) -> anyhow::Result<Uuid> {
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), lines.join("\n"))?;
        let mut flags = vec!["producer".to_string()];
        flags.extend(self.connection());
        flags.extend([
            "enqueue".into(),
            "--file".into(),
            file.path().display().to_string(),
        ]);
        flags.extend(extra.iter().map(|s| s.to_string()));
        let config = producer::Config::try_parse_from(flags)?;
        let enqueued = producer::enqueue_once(&config).await?;
        Ok(enqueued.job_id)
    }

    /// The producer's `dlq ...` (`args` after `dlq`), in process; returns its stdout lines,
    /// each parsed as JSON.
    pub async fn dlq(&self, args: &[&str]) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut flags = vec!["producer".to_string()];
        flags.extend(self.connection());
        flags.push("dlq".into());
        flags.extend(args.iter().map(|s| s.to_string()));
        let config = producer::Config::try_parse_from(flags)?;
        let producer::Command::Dlq(command) = &config.command else {
            anyhow::bail!("not a dlq command: {args:?}");
        };
        let mut out = Vec::new();
        producer::dlq::run(
            &config.common.connection,
            command,
            &CancellationToken::new(),
            &mut out,
        )
        .await?;
        let out = String::from_utf8(out).context("dlq printed non-UTF-8")?;
        out.lines()
            .map(|line| serde_json::from_str(line).with_context(|| format!("not JSON: {line}")))
            .collect()
    }

    /// `producer status --verify` of a job, in process.
    pub async fn verify(&self, job: Uuid) -> anyhow::Result<producer::verify::Verified> {
        let mut args = ConnectionArgs::local(&self.namespace);
        args.queue_type = self.queue_type;
        producer::verify::verify(&args, job, 20).await
    }

    /// Waits until the job is done.
    pub async fn wait_done(&self, job: Uuid, limit: Duration) -> anyhow::Result<JobStatus> {
        let mut last = None;
        let waited = tokio::time::timeout(
            limit,
            tributary::store::wait_until_done(&self.store, job, Duration::from_millis(50), |s| {
                last = Some(s.clone())
            }),
        )
        .await;
        match waited {
            Ok(status) => Ok(status?),
            Err(_) => anyhow::bail!("job {job} not done after {limit:?}; last status {last:?}"),
        }
    }

    /// The job's results JSON, as `aggregator results` prints it.
    pub async fn results_json(&self, job: Uuid) -> anyhow::Result<serde_json::Value> {
        let results = self.store.results(job).await?.context("no results")?;
        Ok(serde_json::to_value(results)?)
    }

    /// Messages waiting in a queue.
    pub async fn queue_depth(&self, queue: &str) -> anyhow::Result<u32> {
        let conn = self.broker().await?;
        let channel = conn.create_channel().await?;
        let q = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let _ = conn.close(200, "ok".into()).await;
        Ok(q.message_count())
    }

    /// Stops every stage gracefully and checks each returned `Ok`.
    pub async fn stop_stages(&mut self) -> anyhow::Result<()> {
        for stage in &self.stages {
            stage.stop.cancel();
        }
        for stage in self.stages.drain(..) {
            let result = tokio::time::timeout(Duration::from_secs(30), stage.handle)
                .await
                .with_context(|| format!("{} did not stop within 30 s", stage.name))?;
            result
                .with_context(|| format!("{} panicked", stage.name))?
                .with_context(|| format!("{} failed", stage.name))?;
        }
        Ok(())
    }

    /// Stops the stages and deletes the namespace.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let stopped = self.stop_stages().await;
        cleanup(&self.namespace).await?;
        self.cleaned = true;
        stopped
    }
}

impl Drop for App {
    fn drop(&mut self) {
        for stage in &self.stages {
            stage.stop.cancel();
            stage.handle.abort();
        }
        if self.cleaned {
            return;
        }
        let namespace = self.namespace.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for clean-up");
            if let Err(e) = runtime.block_on(cleanup(&namespace)) {
                eprintln!("clean-up of namespace {namespace} failed: {e:#}");
            }
        })
        .join();
    }
}

/// Polls the job's status until `until` says so (or panics after `limit`).
pub async fn wait_for_status(
    store: &Store,
    job: Uuid,
    limit: Duration,
    until: impl Fn(&JobStatus) -> bool,
) -> JobStatus {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < limit {
        if let Ok(Some(status)) = store.status(job).await {
            if until(&status) {
                return status;
            }
            last = Some(status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("job {job}: not there after {limit:?}; last status {last:?}");
}

/// Every delay step a test (or the default ladder) may declare a queue for.
const RETRY_STEPS_IN_TESTS: &str = "50ms,100ms,200ms,300ms,500ms,1s,2s,3s,5s,30s,2m,10m";

/// Deletes every queue and Redis key of a namespace.
pub async fn cleanup(namespace: &str) -> anyhow::Result<()> {
    cleanup_with(&ConnectionArgs::local(namespace)).await
}

/// [`cleanup`] of the namespace of `args`, on its broker and Redis (a cluster's too).
pub async fn cleanup_with(args: &ConnectionArgs) -> anyhow::Result<()> {
    let namespace = args.namespace.as_str();
    let names = Names::new(namespace);
    let conn = tributary::broker::amqp::connect_any(&args.amqp_url, "test-cleanup").await?;
    // Every queue a binary may have declared: the fixed ones, and the delay queues of the
    // retry ladders tests use (names built by `names.rs`, through the topology).
    let steps = tributary::policy::parse_delays(RETRY_STEPS_IN_TESTS).expect("valid delays");
    let queues = Topology::new(names.clone(), QueueType::Classic)
        .with_retries(Stage::Fetch, &steps)
        .queue_names();
    for queue in queues {
        let channel = conn.create_channel().await?;
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let channel = conn.create_channel().await?;
    let _ = channel
        .exchange_delete(namespace.into(), Default::default())
        .await;
    let _ = conn.close(200, "cleaned".into()).await;

    // The store's SCAN reaches every master of a cluster; keys are deleted one by one,
    // since a namespace's keys live in many slots.
    let mut redis = Store::connect(args).await?.connection();
    let keys = redis
        .scan_keys(&format!("{namespace}:*"), usize::MAX)
        .await?;
    for key in keys {
        let _: () = redis::cmd("DEL").arg(&key).query_async(&mut redis).await?;
    }
    Ok(())
}

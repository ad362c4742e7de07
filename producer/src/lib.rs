//! `producer`: enqueue jobs from the command line, files or stdin; print job status; list,
//! replay and purge dead letters; register jobs for foreign publishers; serve all of it over
//! HTTP ([`api`]).
//!
//! [`run`] dispatches the subcommand; `main.rs` only parses the config and installs
//! telemetry. Everything printed on stdout is JSON.

pub mod api;
pub mod config;
pub mod dashboard;
pub mod dlq;
pub mod enqueue;
pub mod identity;
pub mod input;
pub mod job;
pub mod progress;
pub mod publish;
pub mod verify;

use anyhow::Context as _;
use tributary::broker::amqp;
use tributary::broker::topology::Topology;
use tributary::names::Names;
use tributary::runtime::config::ConnectionArgs;
use tributary::runtime::shutdown::CancellationToken;
use tributary::store::Store;

pub use config::{Command, Config, JobCommand};

/// Runs one producer command.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let c = &config.common.connection;
    match &config.command {
        Command::Enqueue(args) => {
            let enqueued = enqueue_once(&config).await?;
            print_json(&enqueued)?;
            if args.wait {
                let store = connect_store(c).await?;
                let job = enqueued.job_id;
                let status = progress::watch(&store, job, args.wait_timeout, &shutdown).await?;
                print_json(&status)?;
            }
            Ok(())
        }
        Command::Status {
            job_id,
            verify: true,
            limit,
        } => verify::run(c, *job_id, *limit).await,
        Command::Status { job_id, .. } => {
            let store = connect_store(c).await?;
            let status = store
                .status(*job_id)
                .await?
                .with_context(|| format!("unknown job {job_id} in namespace {}", c.namespace))?;
            print_json(&status)
        }
        Command::Dlq(command) => dlq::run(c, command, &shutdown, &mut std::io::stdout()).await,
        Command::Job(JobCommand::Create { total, job_id }) => {
            let store = connect_store(c).await?;
            print_json(&job::create(&store, *job_id, *total).await?)
        }
        Command::Serve(args) => api::serve(c, args, shutdown).await,
    }
}

/// Runs `enqueue` (the config's command must be `Enqueue`) and returns what it enqueued.
pub async fn enqueue_once(config: &Config) -> anyhow::Result<enqueue::Enqueued> {
    let Command::Enqueue(args) = &config.command else {
        anyhow::bail!("enqueue_once needs the enqueue command");
    };
    let c = &config.common.connection;
    let store = connect_store(c).await?;
    let conn = amqp::connect_any(&c.amqp_url, "producer").await?;
    let names = Names::new(&c.namespace);
    let setup = conn.create_channel().await?;
    Topology::new(names.clone(), c.queue_type)
        .declare(&setup)
        .await?;
    let channel = amqp::confirm_channel(&conn).await?;
    let target = enqueue::Target {
        channel: &channel,
        exchange: names.exchange(),
        store: &store,
    };
    let result = enqueue::enqueue(args, target).await;
    let _ = conn.close(200, "done".into()).await;
    result
}

async fn connect_store(c: &ConnectionArgs) -> anyhow::Result<Store> {
    Ok(Store::connect(c).await?)
}

pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

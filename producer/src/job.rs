//! `producer job create`: register a job's total for publishers that write tasks to the
//! broker themselves (see README "Publishing from other systems").
//!
//! The total must be counted before the first task can complete, or the job could be `done`
//! too early; so a foreign publisher creates the job first, then publishes its N tasks.

use anyhow::Context as _;
use serde::Serialize;
use tributary::store::Store;
use uuid::Uuid;

/// What `job create` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct JobCreated {
    pub job_id: Uuid,
    /// The job's total after adding (more than was added when the job already existed).
    pub total: u64,
}

/// Adds `tasks` to the total of `job` (a new job without one) and returns the job's total.
pub async fn create(store: &Store, job: Option<Uuid>, tasks: u64) -> anyhow::Result<JobCreated> {
    let job = job.unwrap_or_else(Uuid::new_v4);
    store
        .add_to_total(job, tasks)
        .await
        .context("cannot record the job's total")?;
    tributary::store::jobs::register(store, job).await?;
    let status = store
        .status(job)
        .await?
        .with_context(|| format!("job {job} vanished from Redis right after it was created"))?;
    Ok(JobCreated {
        job_id: job,
        total: status.total,
    })
}

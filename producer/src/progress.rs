//! Progress on stderr (indicatif; hidden when stderr is not a terminal).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tributary::runtime::shutdown::CancellationToken;
use tributary::store::{JobStatus, Store, StoreError, wait_until_done};
use uuid::Uuid;

/// A bar for the publishing pass.
pub fn enqueue_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "enqueue {bar:40.cyan/blue} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .expect("valid template"),
    );
    bar
}

/// Shows a job's progress until it is done (or `timeout` passes, or `shutdown` is
/// cancelled: Ctrl-C stops the waiting, not the job) and returns its status.
pub async fn watch(
    store: &Store,
    job: Uuid,
    timeout: Option<Duration>,
    shutdown: &CancellationToken,
) -> anyhow::Result<JobStatus> {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40.green/blue} {pos}/{len} {msg} ({per_sec}, eta {eta})",
        )
        .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let waiting = wait_until_done(store, job, Duration::from_millis(200), |s| {
        bar.set_length(s.total);
        bar.set_position(s.aggregated + s.dead);
        bar.set_message(format!(
            "fetched {} processed {} aggregated {} retrying {} dead {}",
            s.fetched, s.processed, s.aggregated, s.retrying, s.dead
        ));
    });
    let limit = timeout.unwrap_or(Duration::MAX);
    let result: Result<JobStatus, StoreError> = tokio::select! {
        waited = tokio::time::timeout(limit, waiting) => match waited {
            Ok(r) => r,
            Err(_) => {
                bar.abandon();
                anyhow::bail!(
                    "job {job} is not done after {}",
                    humantime::format_duration(limit)
                );
            }
        },
        () = shutdown.cancelled() => {
            bar.abandon();
            anyhow::bail!(
                "stopped waiting for job {job} (interrupted); it goes on: see `producer status {job}`"
            );
        }
    };
    bar.finish_and_clear();
    Ok(result?)
}

//! One task's way through a fetcher: its host's politeness (concurrency cap, rate, pause),
//! the download (conditional with `--conditional`), and what came of it ([`Outcome`]).
//!
//! A task never waits for its host longer than `--host-wait-max` while its delivery is
//! held: a longer wait for a rate-limit slot, a pause or a concurrency slot puts it aside
//! in a delay queue ([`Outcome::Deferred`]), not counted as an attempt.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::Instrument as _;
use tributary::message::{Payload, PayloadHeader, Task, TaskRef};
use tributary::policy::Failure;
use tributary::runtime::metrics::metrics;
use tributary::runtime::trace::TraceParent;

use crate::conditional::Conditional;
use crate::http::{Fetched, Http};
use crate::politeness::admit::{Admit, HostLimits};
use crate::politeness::cap::{HostCap, HostSlot};
use crate::politeness::limiter::Turn;
use crate::politeness::rates::{RateTable, host_of};

/// The longest a task put aside for its host's concurrency cap stays away.
const MAX_CAP_DEFERRAL: Duration = Duration::from_secs(30);

/// A task to fetch: the task, its URL as parsed when it was validated, its host (lowercase,
/// without the port; `None` for a URL without one), and where it came from.
pub struct Work {
    pub task: Task,
    pub url: url::Url,
    pub host: Option<String>,
    pub received: Received,
}

impl Work {
    pub fn new(task: Task, url: url::Url, received: Received) -> Self {
        let host = host_of(&url);
        Self {
            task,
            url,
            host,
            received,
        }
    }

    /// The task as it goes back to the broker.
    fn held(&self, traceparent: Option<String>) -> Held {
        let Received {
            attempt,
            enqueued_ms,
            deferrals,
            ..
        } = self.received;
        Held::of(&self.task, enqueued_ms, traceparent, attempt, deferrals)
    }
}

/// Where a task came from: its delivery, attempt, enqueue time and trace context.
#[derive(Clone)]
pub struct Received {
    pub tag: u64,
    pub attempt: u32,
    pub enqueued_ms: u64,
    pub traceparent: Option<Arc<str>>,
    /// The turn a task put aside by its host's rate limit carries back.
    pub turn: Option<Turn>,
    /// How often the task was put aside before (for the concurrency cap's waits).
    pub deferrals: u32,
}

/// What one task's fetch produced.
pub enum Outcome {
    Fetched {
        tag: u64,
        payload: Payload,
    },
    Failed {
        tag: u64,
        failed: FailedTask,
    },
    /// The task's host has no slot soon: put it aside for `wait` (not an attempt), with its
    /// turn in the host's queue.
    Deferred {
        tag: u64,
        held: Held,
        wait: Duration,
        turn: Option<Turn>,
    },
    /// Redis failed a politeness or conditional-request call: an infrastructure error,
    /// the session ends.
    Broken(anyhow::Error),
}

/// A task (or the bytes that failed to be one) on its way back to the broker.
pub struct Held {
    pub body: Vec<u8>,
    pub task: TaskRef,
    pub attempt: u32,
    pub deferrals: u32,
}

impl Held {
    fn of(
        task: &Task,
        enqueued_ms: u64,
        traceparent: Option<String>,
        attempt: u32,
        deferrals: u32,
    ) -> Self {
        Held {
            body: task.to_json(),
            task: TaskRef {
                job_id: Some(task.job_id),
                task_id: Some(task.task_id),
                url: Some(task.url.clone()),
                enqueued_ms: Some(enqueued_ms),
                traceparent,
            },
            attempt,
            deferrals,
        }
    }
}

/// A task that did not make it.
pub struct FailedTask {
    pub held: Held,
    pub failure: Failure,
}

/// What every download of a session shares: the client, the download slots, and the
/// optional politeness.
pub struct Fetcher {
    pub http: Http,
    /// Downloads in flight at once (`--concurrency`).
    pub slots: Arc<Semaphore>,
    pub rates: RateTable,
    /// `--host-rate`, `--default-host-rate`, `--host-pause`.
    pub limits: Option<HostLimits>,
    /// `--host-concurrency`.
    pub cap: Option<Arc<HostCap>>,
    /// `--conditional`.
    pub conditional: Option<Conditional>,
    /// `--host-wait-max`: the longest a task waits for its host while its delivery is held.
    pub max_wait: Duration,
    /// The first `--retry-delays` step: a task put aside for the concurrency cap waits it,
    /// doubled for each earlier deferral (at most [`MAX_CAP_DEFERRAL`]).
    pub first_step: Duration,
}

impl Fetcher {
    /// The whole way of one task: its host's concurrency slot, a download slot, its host's
    /// fleet-wide lease, its host's rate, the download.
    pub async fn run(&self, work: Work) -> Outcome {
        let deadline = Instant::now() + self.max_wait;
        // The host's slot first: tasks waiting for a busy host do not hold the download
        // slots other hosts could use.
        let mut host = match self.host_slot(&work, deadline).await {
            Ok(host) => host,
            Err(()) => return self.cap_deferral(&work),
        };
        let _slot = self.slots.acquire().await;
        // The fleet's lease last, so it lasts the download only.
        if let Some(host) = &mut host {
            match tokio::time::timeout_at(deadline, host.lease()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Outcome::Broken(e.into()),
                Err(_) => return self.cap_deferral(&work),
            }
        }
        self.fetch(work).await
    }

    /// With `--host-concurrency`, this process's slot of the task's host, if it comes
    /// before `deadline` (`Err`: it did not). `None` without a cap or a host.
    async fn host_slot(&self, work: &Work, deadline: Instant) -> Result<Option<HostSlot>, ()> {
        let (Some(cap), Some(host)) = (&self.cap, &work.host) else {
            return Ok(None);
        };
        match tokio::time::timeout_at(deadline, cap.acquire(host)).await {
            Ok(slot) => Ok(Some(slot)),
            Err(_) => Err(()),
        }
    }

    /// A task whose host stayed at its concurrency cap for `--host-wait-max`: put aside.
    fn cap_deferral(&self, work: &Work) -> Outcome {
        let doubled = 1u32 << work.received.deferrals.min(16);
        let wait = self
            .first_step
            .saturating_mul(doubled)
            .min(MAX_CAP_DEFERRAL);
        self.deferred(work, wait, None)
    }

    fn deferred(&self, work: &Work, wait: Duration, turn: Option<Turn>) -> Outcome {
        let bucket = work.host.as_deref().map_or_else(
            || tributary::runtime::metrics::OTHER_HOSTS.to_string(),
            |h| self.rates.bucket_of(h),
        );
        metrics().host_deferred(&bucket);
        let traceparent = work.received.traceparent.as_deref().map(str::to_string);
        Outcome::Deferred {
            tag: work.received.tag,
            held: work.held(traceparent),
            wait,
            turn,
        }
    }

    /// Waits for the host's rate (or defers the task), downloads, and pauses the host if
    /// the origin asks to.
    async fn fetch(&self, work: Work) -> Outcome {
        let (Some(limits), Some(host)) = (&self.limits, work.host.clone()) else {
            return self.fetch_one(work).await;
        };
        match limits.admit(&host, work.received.turn).await {
            Ok(Admit::Fetch) => {}
            Ok(Admit::Defer { wait, turn }) => return self.deferred(&work, wait, turn),
            Err(e) => return Outcome::Broken(e.into()),
        }
        let outcome = self.fetch_one(work).await;
        if let Outcome::Failed { failed, .. } = &outcome
            && let Err(e) = limits.after_failure(&host, &failed.failure).await
        {
            return Outcome::Broken(e.into());
        }
        outcome
    }

    /// One download (conditional with `--conditional`), counted per host bucket.
    async fn download(&self, work: &Work) -> anyhow::Result<Result<Fetched, Failure>> {
        let remembered = match &self.conditional {
            Some(conditional) => conditional.recall(&work.task.url).await?,
            None => None,
        };
        let result = self
            .http
            .fetch(
                &work.task,
                &work.url,
                remembered.as_ref().map(|r| &r.validators),
            )
            .await;
        let status = match &result {
            Ok(fetched) => Some(fetched.status),
            Err(failure) => failure.http_status,
        };
        if let (Some(status), Some(host)) = (status, &work.host) {
            metrics().host_response(&self.rates.bucket_of(host), status);
        }
        let Some(conditional) = &self.conditional else {
            return Ok(result);
        };
        Ok(match (result, remembered) {
            // A 304 reuses the remembered body: the same payload as the 200 it stands for.
            (Ok(fetched), Some(last)) if fetched.not_modified => Ok(Fetched {
                status: last.status,
                content_type: last.content_type,
                body: last.body,
                validators: last.validators,
                not_modified: true,
            }),
            (Ok(fetched), _) => {
                conditional.remember(&work.task.url, &fetched).await?;
                Ok(fetched)
            }
            (Err(failure), _) => Err(failure),
        })
    }

    async fn fetch_one(&self, work: Work) -> Outcome {
        let trace = TraceParent::continue_from(work.received.traceparent.as_deref());
        let task = &work.task;
        let span = tracing::debug_span!("task", task_id = %task.task_id, job_id = %task.job_id, trace_id = %trace.trace_id_hex());
        let downloaded = match self.download(&work).instrument(span).await {
            Ok(downloaded) => downloaded,
            Err(e) => return Outcome::Broken(e),
        };
        let traceparent = Some(trace.to_string());
        let tag = work.received.tag;
        match downloaded {
            Ok(fetched) => Outcome::Fetched {
                tag,
                payload: payload(work, fetched, traceparent),
            },
            Err(failure) => {
                tracing::debug!(task_id = %task.task_id, job_id = %task.job_id, class = %failure.class, "fetch failed: {}", failure.reason);
                Outcome::Failed {
                    tag,
                    failed: FailedTask {
                        held: work.held(traceparent),
                        failure,
                    },
                }
            }
        }
    }
}

/// The payload of a downloaded task.
fn payload(work: Work, fetched: Fetched, traceparent: Option<String>) -> Payload {
    let Work { task, received, .. } = work;
    Payload {
        header: PayloadHeader {
            v: tributary::message::VERSION,
            job_id: task.job_id,
            task_id: task.task_id,
            url: task.url,
            status: fetched.status,
            content_type: fetched.content_type,
            meta: task.meta,
            attempts: received.attempt,
            enqueued_ms: Some(received.enqueued_ms),
            traceparent,
        },
        body: fetched.body,
    }
}

//! The retry ladder, and the one place that decides ack / retry / dead-letter.
//!
//! [`RetryPolicy::decide`] maps a [`Failure`] to a [`Disposition`]; nothing else in the code
//! base chooses between retrying and dead-lettering.

use std::time::Duration;

use super::backoff::full_jitter;
use super::failure::Failure;

/// What a stage does with a failed task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Republish to the delay queue of `step` with this per-message TTL, then ack.
    Retry { step: Duration, ttl: Duration },
    /// Publish to the stage's dead-letter queue, then ack.
    Dead,
}

/// The retry ladder of a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay-queue steps, ascending; attempt n waits up to `delays[n-1]` (the last repeats).
    pub delays: Vec<Duration>,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// A policy that never retries.
    #[cfg(test)]
    pub fn none() -> Self {
        Self {
            delays: Vec::new(),
            max_attempts: 1,
        }
    }

    pub fn new(mut delays: Vec<Duration>, max_attempts: u32) -> Self {
        delays.retain(|d| !d.is_zero());
        delays.sort();
        delays.dedup();
        Self {
            delays,
            max_attempts: max_attempts.max(1),
        }
    }

    /// The decision for a task whose attempt number `attempt` (1-based) just failed.
    pub fn decide(&self, failure: &Failure, attempt: u32) -> Disposition {
        if !failure.is_retryable() || attempt >= self.max_attempts || self.delays.is_empty() {
            return Disposition::Dead;
        }
        if let Some(after) = failure.retry_after
            && let Some(retry) = self.wait_for(after)
        {
            return retry;
        }
        let index = (attempt as usize - 1).min(self.delays.len() - 1);
        let step = self.delays[index];
        Disposition::Retry {
            step,
            ttl: full_jitter(step),
        }
    }
}

impl RetryPolicy {
    /// A retry that waits `wait` (capped at the last step) in the smallest delay queue
    /// that holds it; `None` without a ladder. Used for `Retry-After` and for tasks put
    /// aside by a host's rate limit (which do not count as an attempt).
    pub fn wait_for(&self, wait: Duration) -> Option<Disposition> {
        let last = *self.delays.last()?;
        let wait = wait.min(last);
        let step = self
            .delays
            .iter()
            .copied()
            .find(|d| *d >= wait)
            .unwrap_or(last);
        Some(Disposition::Retry { step, ttl: wait })
    }
}

/// A retry ladder as one command-line value (`1s,5s,30s,2m,10m`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delays(pub Vec<Duration>);

impl std::str::FromStr for Delays {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_delays(s).map(Delays)
    }
}

/// Parses `1s,5s,30s,2m,10m`.
pub fn parse_delays(s: &str) -> Result<Vec<Duration>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| humantime::parse_duration(p).map_err(|e| format!("bad delay {p:?}: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ladder_and_attempt_limit() {
        let p = RetryPolicy::new(vec![ms(200), ms(500)], 3);
        let f = Failure::http(500, None);
        match p.decide(&f, 1) {
            Disposition::Retry { step, ttl } => {
                assert_eq!(step, ms(200));
                assert!(ttl <= ms(200));
            }
            d => panic!("{d:?}"),
        }
        match p.decide(&f, 2) {
            Disposition::Retry { step, .. } => assert_eq!(step, ms(500)),
            d => panic!("{d:?}"),
        }
        assert_eq!(p.decide(&f, 3), Disposition::Dead);
        assert_eq!(p.decide(&Failure::http(404, None), 1), Disposition::Dead);
        assert_eq!(RetryPolicy::none().decide(&f, 1), Disposition::Dead);
    }

    #[test]
    fn retry_after_overrides_and_is_capped() {
        let p = RetryPolicy::new(vec![ms(200), ms(1000), ms(5000)], 5);
        let f = Failure::http(429, Some(ms(700)));
        assert_eq!(
            p.decide(&f, 1),
            Disposition::Retry {
                step: ms(1000),
                ttl: ms(700)
            }
        );
        let f = Failure::http(503, Some(Duration::from_secs(60)));
        assert_eq!(
            p.decide(&f, 1),
            Disposition::Retry {
                step: ms(5000),
                ttl: ms(5000)
            }
        );
    }

    #[test]
    fn waits_pick_the_smallest_step_that_holds_them() {
        let p = RetryPolicy::new(vec![ms(100), ms(500)], 5);
        let retry = |step, ttl| Some(Disposition::Retry { step, ttl });
        assert_eq!(p.wait_for(ms(80)), retry(ms(100), ms(80)));
        assert_eq!(p.wait_for(ms(300)), retry(ms(500), ms(300)));
        assert_eq!(p.wait_for(ms(2000)), retry(ms(500), ms(500)));
        assert_eq!(RetryPolicy::none().wait_for(ms(80)), None);
    }

    #[test]
    fn delays_parse() {
        assert_eq!(parse_delays("200ms, 1s").unwrap(), vec![ms(200), ms(1000)]);
        assert!(parse_delays("soon").is_err());
    }
}

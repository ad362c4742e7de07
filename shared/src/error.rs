//! Failure classes, and the one place that decides ack / retry / dead-letter.
//!
//! Every stage turns what went wrong into a [`Failure`] (a class, one human line, the HTTP
//! status if there was one). [`RetryPolicy::decide`] maps it to a [`Disposition`]; nothing
//! else in the code base chooses between retrying and dead-lettering.

use std::fmt;
use std::time::Duration;

use crate::backoff::full_jitter;

/// The short class written to `x-tributary-error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The origin answered with a non-2xx status.
    HttpStatus,
    /// The request (connect, headers or body) took longer than `--timeout-ms`.
    Timeout,
    /// The origin could not be reached (DNS, refused, reset).
    Connect,
    /// The body is larger than `--max-body-bytes`.
    TooLarge,
    /// The URL's scheme is not http or https.
    BadScheme,
    /// The URL resolves to a loopback, private, link-local or metadata address.
    BlockedAddress,
    /// More redirects than allowed.
    Redirects,
    /// The message is not a valid task.
    InvalidTask,
    /// The payload is not what the processor can parse.
    InvalidPayload,
    /// The payload has no values at the configured pointer.
    NoValues,
    /// The message failed to process more times than the queue's delivery limit.
    DeliveryLimit,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 11] = [
        ErrorClass::HttpStatus,
        ErrorClass::Timeout,
        ErrorClass::Connect,
        ErrorClass::TooLarge,
        ErrorClass::BadScheme,
        ErrorClass::BlockedAddress,
        ErrorClass::Redirects,
        ErrorClass::InvalidTask,
        ErrorClass::InvalidPayload,
        ErrorClass::NoValues,
        ErrorClass::DeliveryLimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::HttpStatus => "http_status",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Connect => "connect",
            ErrorClass::TooLarge => "too_large",
            ErrorClass::BadScheme => "bad_scheme",
            ErrorClass::BlockedAddress => "blocked_address",
            ErrorClass::Redirects => "redirects",
            ErrorClass::InvalidTask => "invalid_task",
            ErrorClass::InvalidPayload => "invalid_payload",
            ErrorClass::NoValues => "no_values",
            ErrorClass::DeliveryLimit => "delivery_limit",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorClass> {
        ErrorClass::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong with one task at one stage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class}: {reason}")]
pub struct Failure {
    pub class: ErrorClass,
    /// One human line, never containing credentials.
    pub reason: String,
    pub http_status: Option<u16>,
    /// A `Retry-After` the origin sent with a 429 or 503.
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn new(class: ErrorClass, reason: impl Into<String>) -> Self {
        let reason: String = reason.into();
        Self {
            class,
            reason: one_line(&reason),
            http_status: None,
            retry_after: None,
        }
    }

    pub fn http(status: u16, retry_after: Option<Duration>) -> Self {
        let text = http_reason(status);
        Self {
            class: ErrorClass::HttpStatus,
            reason: format!("origin answered {status} {text}")
                .trim_end()
                .to_string(),
            http_status: Some(status),
            retry_after,
        }
    }

    /// Whether the failure may pass if the task is tried again later.
    pub fn is_retryable(&self) -> bool {
        match self.class {
            ErrorClass::Timeout | ErrorClass::Connect => true,
            ErrorClass::HttpStatus => matches!(self.http_status, Some(408 | 425 | 429 | 500..=599)),
            ErrorClass::TooLarge
            | ErrorClass::BadScheme
            | ErrorClass::BlockedAddress
            | ErrorClass::Redirects
            | ErrorClass::InvalidTask
            | ErrorClass::InvalidPayload
            | ErrorClass::NoValues
            | ErrorClass::DeliveryLimit => false,
        }
    }
}

fn http_reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        410 => "Gone",
        425 => "Too Early",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

const MAX_LINE: usize = 300;

/// An error and its sources on one line, `: `-separated, skipping a source whose text the
/// line already holds (many libraries print their source inside their own message too).
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = e.source();
    }
    one_line(&line)
}

/// Collapses a message to one line of at most 300 characters.
pub fn one_line(s: &str) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let flat = flat.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > MAX_LINE {
        let cut: String = flat.chars().take(MAX_LINE - 1).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

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
    fn classes_round_trip() {
        for c in ErrorClass::ALL {
            assert_eq!(ErrorClass::parse(c.as_str()), Some(c));
        }
    }

    #[test]
    fn retryable_statuses() {
        for s in [408, 425, 429, 500, 502, 503, 599] {
            assert!(Failure::http(s, None).is_retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 410, 418] {
            assert!(!Failure::http(s, None).is_retryable(), "{s}");
        }
        assert!(Failure::new(ErrorClass::Timeout, "t").is_retryable());
        assert!(!Failure::new(ErrorClass::NoValues, "n").is_retryable());
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

    #[test]
    fn chains_skip_repeated_sources() {
        let io = std::io::Error::other("connection refused");
        let wrapped = anyhow::Error::new(io).context("broker at x: connection refused");
        assert_eq!(chain(wrapped.as_ref()), "broker at x: connection refused");
        let plain = anyhow::Error::msg("inner").context("outer");
        assert_eq!(chain(plain.as_ref()), "outer: inner");
    }

    #[test]
    fn reasons_are_one_line() {
        assert_eq!(one_line("a\nb\t c"), "a b c");
        assert_eq!(one_line(&"x".repeat(400)).chars().count(), 300);
    }
}

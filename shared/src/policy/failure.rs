//! Failure classes: what went wrong with one task, as every stage reports it.
//!
//! Every stage turns what went wrong into a [`Failure`] (a class, one human line, the HTTP
//! status if there was one); [`super::RetryPolicy::decide`] maps it to ack / retry /
//! dead-letter.

use std::fmt;
use std::time::Duration;

use crate::runtime::cli::one_line;

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
    /// The broker dead-lettered the message because it expired in a stage queue.
    Expired,
    /// The broker dead-lettered the message for another reason (a rejection, a length
    /// limit).
    Rejected,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 13] = [
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
        ErrorClass::Expired,
        ErrorClass::Rejected,
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
            ErrorClass::Expired => "expired",
            ErrorClass::Rejected => "rejected",
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
            | ErrorClass::DeliveryLimit
            | ErrorClass::Expired
            | ErrorClass::Rejected => false,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! Downloading one task: one shared reqwest client, an overall timeout, a body cap enforced
//! while streaming, at most 5 redirects, and every failure turned into a classified
//! [`Failure`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use reqwest::header::{
    CONTENT_TYPE, ETAG, HeaderMap, HeaderName, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    LAST_MODIFIED, RETRY_AFTER,
};
use tributary::message::Task;
use tributary::policy::{ErrorClass, Failure};
use tributary::runtime::redact::redact_url;

use crate::conditional::Validators;
use crate::guard::{self, BlockedAddress, GuardedResolver};

pub const MAX_REDIRECTS: usize = 5;

/// A successful download.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
    /// The response's `ETag` / `Last-Modified`.
    pub validators: Validators,
    /// A 304 to a conditional request: `body` is empty, the caller has the content.
    pub not_modified: bool,
}

/// Limits of the HTTP client.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub timeout: Duration,
    pub max_body_bytes: u64,
    pub allow_private: bool,
    pub pool_idle_per_host: usize,
}

/// The shared HTTP client.
#[derive(Debug, Clone)]
pub struct Http {
    client: reqwest::Client,
    options: HttpOptions,
}

impl Http {
    /// The overall timeout of one download.
    pub fn timeout(&self) -> Duration {
        self.options.timeout
    }

    pub fn new(options: HttpOptions) -> anyhow::Result<Self> {
        let allow_private = options.allow_private;
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            if !matches!(attempt.url().scheme(), "http" | "https") {
                return attempt.error("redirect to a scheme that is not http or https");
            }
            if !allow_private && let Err(blocked) = guard::check_literal(attempt.url()) {
                return attempt.error(blocked);
            }
            attempt.follow()
        });
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("tributary/", env!("CARGO_PKG_VERSION")))
            .timeout(options.timeout)
            .connect_timeout(options.timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(options.pool_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .redirect(redirect)
            .no_proxy();
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(GuardedResolver));
        }
        Ok(Self {
            client: builder.build()?,
            options,
        })
    }

    /// Downloads one task's URL (`url`, as parsed when the task was validated), recording
    /// the response in the metrics. With `known` validators the request is conditional,
    /// and a 304 is an (empty) success.
    pub async fn fetch(
        &self,
        task: &Task,
        url: &url::Url,
        known: Option<&Validators>,
    ) -> Result<Fetched, Failure> {
        let started = std::time::Instant::now();
        let result = self.download(task, url, known).await;
        let (status, bytes) = match &result {
            Ok(f) => (Some(f.status), f.body.len()),
            Err(failure) => (failure.http_status, 0),
        };
        tributary::runtime::metrics::metrics().fetched(status, bytes, started.elapsed());
        result
    }

    async fn download(
        &self,
        task: &Task,
        url: &url::Url,
        known: Option<&Validators>,
    ) -> Result<Fetched, Failure> {
        if !self.options.allow_private
            && let Err(blocked) = guard::check_literal(url)
        {
            return Err(Failure::new(
                ErrorClass::BlockedAddress,
                blocked.to_string(),
            ));
        }
        let mut request = self.client.get(url.clone());
        if let Some(headers) = &task.headers {
            request = request.headers(header_map(headers)?);
        }
        if let Some(known) = known {
            if let Some(etag) = known
                .etag
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                request = request.header(IF_NONE_MATCH, etag);
            }
            if let Some(at) = known
                .last_modified
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                request = request.header(IF_MODIFIED_SINCE, at);
            }
        }
        let mut response = request.send().await.map_err(|e| classify(&e, &task.url))?;
        let status = response.status().as_u16();
        let validators = Validators {
            etag: header_text(response.headers(), &ETAG),
            last_modified: header_text(response.headers(), &LAST_MODIFIED),
        };
        if status == 304 && known.is_some() {
            return Ok(Fetched {
                status,
                content_type: None,
                body: Bytes::new(),
                validators,
                not_modified: true,
            });
        }
        if !response.status().is_success() {
            let retry_after = retry_after(response.headers());
            return Err(Failure::http(status, retry_after));
        }
        let limit = self.options.max_body_bytes;
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(too_large(limit));
        }
        let content_type = header_text(response.headers(), &CONTENT_TYPE);
        let mut body =
            BytesMut::with_capacity(response.content_length().unwrap_or(4096).min(limit) as usize);
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| classify(&e, &task.url))?
        {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(too_large(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched {
            status,
            content_type,
            body: body.freeze(),
            validators,
            not_modified: false,
        })
    }
}

fn header_text(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn too_large(limit: u64) -> Failure {
    Failure::new(
        ErrorClass::TooLarge,
        format!("body larger than {limit} bytes"),
    )
}

fn header_map(headers: &std::collections::BTreeMap<String, String>) -> Result<HeaderMap, Failure> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let bad = || Failure::new(ErrorClass::InvalidTask, format!("bad header {name:?}"));
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_str(value).map_err(|_| bad())?;
        map.insert(name, value);
    }
    Ok(map)
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    parse_retry_after(raw, SystemTime::now())
}

pub fn parse_retry_after(raw: &str, now: SystemTime) -> Option<Duration> {
    if let Ok(secs) = raw.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(raw).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Turns a reqwest error into a failure class, without the URL's credentials.
fn classify(error: &reqwest::Error, url: &str) -> Failure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(blocked) = e.downcast_ref::<BlockedAddress>() {
            return Failure::new(ErrorClass::BlockedAddress, blocked.to_string());
        }
        source = e.source();
    }
    let class = if error.is_timeout() {
        ErrorClass::Timeout
    } else if error.is_redirect() {
        ErrorClass::Redirects
    } else {
        ErrorClass::Connect
    };
    let detail = error_chain(error);
    Failure::new(class, format!("{}: {detail}", redact_url(url)))
}

fn error_chain(error: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        parts.push(e.to_string());
        source = e.source();
    }
    if parts.is_empty() {
        if error.is_timeout() {
            "timed out".into()
        } else {
            "request failed".into()
        }
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(10));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(10))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(10));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}

//! Downloading one task: one shared hyper-util client ([`client`]), an overall timeout, a
//! body cap enforced while streaming, at most 5 redirects ([`redirect`]), and every
//! failure turned into a classified [`Failure`].
//!
//! The fetcher builds on hyper-util's client directly rather than on reqwest, which wraps
//! the same client: reqwest's layer cost about 5 µs of CPU per URL (BENCHMARKS.md, "The
//! HTTP client's own cost"). What reqwest did besides is here: redirects, timeouts, the
//! guarded resolver, TLS, credentials in the URL as Basic auth, `User-Agent` and `Accept`.

pub mod client;
pub mod redirect;

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, ETAG, HeaderMap, HeaderName, HeaderValue,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, RETRY_AFTER, USER_AGENT,
};
use hyper::{Request, Response, Uri};
use tributary::message::Task;
use tributary::policy::{ErrorClass, Failure};
use tributary::runtime::cli::chain;
use tributary::runtime::redact::redact_url;

use crate::conditional::Validators;
use crate::guard::{self, BlockedAddress};
use redirect::{Hop, next_hop, strip_credentials};

pub use redirect::MAX_REDIRECTS;

const USER_AGENT_VALUE: &str = concat!("tributary/", env!("CARGO_PKG_VERSION"));

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
#[derive(Clone)]
pub struct Http {
    pool: client::Pool,
    options: HttpOptions,
}

impl Http {
    /// The overall timeout of one download.
    pub fn timeout(&self) -> Duration {
        self.options.timeout
    }

    pub fn new(options: HttpOptions) -> anyhow::Result<Self> {
        Ok(Self {
            pool: client::pool(&options)?,
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
        let download = tokio::time::timeout(self.options.timeout, self.download(task, url, known));
        let result = download.await.unwrap_or_else(|_| {
            let shown = redact_url(&task.url);
            Err(Failure::new(
                ErrorClass::Timeout,
                format!("{shown}: timed out"),
            ))
        });
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
        let mut headers = request_headers(task, known)?;
        let response = self.follow(url, &mut headers, &task.url).await?;
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
        let content_type = header_text(response.headers(), &CONTENT_TYPE);
        let body = self.read_body(response, &task.url).await?;
        Ok(Fetched {
            status,
            content_type,
            body,
            validators,
            not_modified: false,
        })
    }

    /// Requests `url` and follows its redirects; the last response.
    async fn follow(
        &self,
        url: &url::Url,
        headers: &mut HeaderMap,
        shown: &str,
    ) -> Result<Response<Incoming>, Failure> {
        let mut current = url.clone();
        let mut taken = 0;
        loop {
            let response = self.request(&current, headers, shown).await?;
            let hop = next_hop(
                &current,
                response.status(),
                response.headers(),
                taken,
                self.options.allow_private,
            )?;
            match hop {
                Hop::Done => return Ok(response),
                Hop::Follow(next) => {
                    strip_credentials(headers, &current, &next);
                    current = next;
                    taken += 1;
                }
            }
        }
    }

    /// One GET of `url` with `headers`. A request an HTTP/2 peer refused before running it
    /// goes again once, at once, as reqwest did ([`refused_by_peer`]).
    async fn request(
        &self,
        url: &url::Url,
        headers: &HeaderMap,
        shown: &str,
    ) -> Result<Response<Incoming>, Failure> {
        let mut again = true;
        loop {
            match self.pool.request(get(url, headers)?).await {
                Ok(response) => return Ok(response),
                Err(e) if again && refused_by_peer(&e) => again = false,
                Err(e) => return Err(classify(&e, shown)),
            }
        }
    }

    /// The body, at most `--max-body-bytes` of it.
    async fn read_body(&self, response: Response<Incoming>, shown: &str) -> Result<Bytes, Failure> {
        let limit = self.options.max_body_bytes;
        let declared = content_length(response.headers());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large(limit));
        }
        let mut body = BytesMut::with_capacity(declared.unwrap_or(4096).min(limit) as usize);
        let mut incoming = response.into_body();
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| classify(&e, shown))?;
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(too_large(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}

/// A GET of `url` with `headers`; credentials in the URL become Basic auth, unless the
/// task set its own `Authorization`.
fn get(url: &url::Url, headers: &HeaderMap) -> Result<Request<Empty<Bytes>>, Failure> {
    let (uri, basic) = uri_of(url)?;
    let mut request = Request::get(uri)
        .body(Empty::<Bytes>::new())
        .map_err(|e| Failure::new(ErrorClass::InvalidTask, format!("bad request: {e}")))?;
    *request.headers_mut() = headers.clone();
    if let Some(basic) = basic {
        request.headers_mut().entry(AUTHORIZATION).or_insert(basic);
    }
    Ok(request)
}

/// Whether an HTTP/2 peer refused the request before running it, so it may go again on a
/// new stream: a graceful `GOAWAY` or a `REFUSED_STREAM` from the peer (RFC 9113 §8.7).
fn refused_by_peer(error: &(dyn std::error::Error + 'static)) -> bool {
    sources(error)
        .find_map(|e| e.downcast_ref::<h2::Error>())
        .is_some_and(|h2| h2.is_remote() && is_refusal(h2.is_go_away(), h2.is_reset(), h2.reason()))
}

fn is_refusal(go_away: bool, reset: bool, reason: Option<h2::Reason>) -> bool {
    (go_away && reason == Some(h2::Reason::NO_ERROR))
        || (reset && reason == Some(h2::Reason::REFUSED_STREAM))
}

/// The headers every request of a task carries: `User-Agent`, `Accept`, the task's own,
/// and the conditional ones.
fn request_headers(task: &Task, known: Option<&Validators>) -> Result<HeaderMap, Failure> {
    let mut headers = match &task.headers {
        Some(own) => header_map(own)?,
        None => HeaderMap::new(),
    };
    headers
        .entry(USER_AGENT)
        .or_insert(HeaderValue::from_static(USER_AGENT_VALUE));
    headers
        .entry(ACCEPT)
        .or_insert(HeaderValue::from_static("*/*"));
    if let Some(known) = known {
        let valid = |v: &Option<String>| v.as_deref().and_then(|v| HeaderValue::from_str(v).ok());
        if let Some(etag) = valid(&known.etag) {
            headers.insert(IF_NONE_MATCH, etag);
        }
        if let Some(at) = valid(&known.last_modified) {
            headers.insert(IF_MODIFIED_SINCE, at);
        }
    }
    Ok(headers)
}

/// The request target of `url` (without its fragment and credentials), and the credentials
/// as a Basic `Authorization` value.
fn uri_of(url: &url::Url) -> Result<(Uri, Option<HeaderValue>), Failure> {
    let bad = |e: &dyn std::fmt::Display| {
        Failure::new(
            ErrorClass::InvalidTask,
            format!("url not usable for http: {e}"),
        )
    };
    let basic = basic_auth(url);
    let uri = if basic.is_some() {
        let mut bare = url.clone();
        let _ = bare.set_username("");
        let _ = bare.set_password(None);
        bare[..url::Position::AfterQuery].parse::<Uri>()
    } else {
        url[..url::Position::AfterQuery].parse::<Uri>()
    };
    Ok((uri.map_err(|e| bad(&e))?, basic))
}

/// A URL's `user:password`, percent-decoded, as a Basic `Authorization` value.
fn basic_auth(url: &url::Url) -> Option<HeaderValue> {
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let decoded = |s: &str| percent_encoding::percent_decode_str(s).collect::<Vec<u8>>();
    let mut pair = decoded(url.username());
    pair.push(b':');
    pair.extend(url.password().map(decoded).unwrap_or_default());
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(hyper::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
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

/// Turns a client error into a failure class, without the URL's credentials: a blocked
/// address, a timeout (the connect timeout's), or a connection failure.
fn classify(error: &(dyn std::error::Error + 'static), url: &str) -> Failure {
    if let Some(blocked) = sources(error).find_map(|e| e.downcast_ref::<BlockedAddress>()) {
        return Failure::new(ErrorClass::BlockedAddress, blocked.to_string());
    }
    let timed_out = sources(error)
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::TimedOut);
    let class = match timed_out {
        true => ErrorClass::Timeout,
        false => ErrorClass::Connect,
    };
    Failure::new(class, format!("{}: {}", redact_url(url), chain(error)))
}

/// An error and each of its sources in turn.
fn sources<'e>(
    error: &'e (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'e (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e| e.source())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a source, as the client's errors wrap the connector's.
    #[derive(Debug)]
    struct Wrapped(Box<dyn std::error::Error + Send + Sync>);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn client_errors_are_classified_without_credentials() {
        let url = "http://user:secret@a.example/x";
        let io = |kind| Wrapped(Box::new(std::io::Error::from(kind)));
        let timed_out = classify(&io(std::io::ErrorKind::TimedOut), url);
        assert_eq!(timed_out.class, ErrorClass::Timeout);
        assert!(!timed_out.reason.contains("secret"), "{}", timed_out.reason);
        let refused = classify(&io(std::io::ErrorKind::ConnectionRefused), url);
        assert_eq!(refused.class, ErrorClass::Connect);
        assert!(
            refused.reason.contains("client error (Connect)"),
            "{}",
            refused.reason
        );
        let blocked = Wrapped(Box::new(BlockedAddress("a.example".into())));
        assert_eq!(classify(&blocked, url).class, ErrorClass::BlockedAddress);
    }

    #[test]
    fn only_a_peer_refusal_goes_again() {
        use h2::Reason;
        assert!(is_refusal(true, false, Some(Reason::NO_ERROR)));
        assert!(is_refusal(false, true, Some(Reason::REFUSED_STREAM)));
        assert!(!is_refusal(true, false, Some(Reason::PROTOCOL_ERROR)));
        assert!(!is_refusal(false, true, Some(Reason::CANCEL)));
        assert!(!is_refusal(false, false, Some(Reason::REFUSED_STREAM)));
        // An error this side raised is not the peer's refusal, nor is any other error.
        let local = Wrapped(Box::new(h2::Error::from(Reason::REFUSED_STREAM)));
        assert!(!refused_by_peer(&local));
        let io = Wrapped(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(!refused_by_peer(&io));
    }

    #[test]
    fn url_credentials_become_basic_auth() {
        let basic = |s: &str| basic_auth(&url::Url::parse(s).unwrap());
        let encoded = |pair: &[u8]| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap()
        };
        assert_eq!(basic("http://a.example/"), None);
        assert_eq!(
            basic("http://us%40er:p%3Ass@a.example/"),
            Some(encoded(b"us@er:p:ss"))
        );
        assert_eq!(basic("http://token@a.example/"), Some(encoded(b"token:")));
        // Bytes that are not UTF-8 go as they are.
        assert_eq!(basic("http://u:%FF@a.example/"), Some(encoded(b"u:\xff")));
        let (uri, _) =
            uri_of(&url::Url::parse("http://u:p@a.example/x?q=1#frag").unwrap()).unwrap();
        assert_eq!(uri.to_string(), "http://a.example/x?q=1");
    }

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

//! `--conditional`: conditional requests with the validators remembered in Redis.
//!
//! After a 200 that carries an `ETag` or `Last-Modified` and a body of at most
//! [`MAX_REMEMBERED_BODY`], the fetcher keeps the validators, the status, the content type
//! and the body under [`Names::cond_key`] for the job TTL (larger bodies, or responses
//! without validators, forget the URL). The next fetch of that URL sends `If-None-Match` /
//! `If-Modified-Since`; a 304 is a success that **reuses the remembered body as the
//! payload**, so the processor computes the same records and the aggregate is the same as
//! for a 200 (status counts the task as fetched, as usual).
//!
//! [`Names::cond_key`]: tributary::names::Names::cond_key

use bytes::Bytes;
use tributary::store::{Store, StoreError};

use crate::http::Fetched;

/// The largest body remembered for a 304 to reuse.
pub const MAX_REMEMBERED_BODY: usize = 64 * 1024;

/// A response's `ETag` and `Last-Modified`, as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validators {
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// What the last 200 of a URL said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    pub validators: Validators,
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// The remembered responses of one namespace (in its store, for the job TTL).
#[derive(Debug, Clone)]
pub struct Conditional {
    store: Store,
}

impl Conditional {
    pub fn new(store: &Store) -> Self {
        Self {
            store: store.clone(),
        }
    }

    /// The last remembered 200 of `url`, if any.
    pub async fn recall(&self, url: &str) -> Result<Option<Remembered>, StoreError> {
        let mut conn = self.store.connection();
        let fields: std::collections::HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(self.store.names().cond_key(url))
            .query_async(&mut conn)
            .await?;
        let text = |name: &str| {
            fields
                .get(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        if text("url").as_deref() != Some(url) {
            return Ok(None);
        }
        let validators = Validators {
            etag: text("etag"),
            last_modified: text("last_modified"),
        };
        let (Some(status), Some(body)) = (
            text("status").and_then(|s| s.parse().ok()),
            fields.get("body"),
        ) else {
            return Ok(None);
        };
        if validators.is_empty() {
            return Ok(None);
        }
        Ok(Some(Remembered {
            validators,
            status,
            content_type: text("content_type"),
            body: Bytes::from(body.clone()),
        }))
    }

    /// Remembers a fresh (non-304) response of `url`, or forgets the URL if the response
    /// cannot be reused (no validators, or a body above [`MAX_REMEMBERED_BODY`]).
    pub async fn remember(&self, url: &str, fetched: &Fetched) -> Result<(), StoreError> {
        let key = self.store.names().cond_key(url);
        let mut conn = self.store.connection();
        let mut pipe = redis::pipe();
        pipe.atomic().del(&key).ignore();
        if !fetched.validators.is_empty() && fetched.body.len() <= MAX_REMEMBERED_BODY {
            let mut fields: Vec<(&str, Vec<u8>)> = vec![
                ("url", url.as_bytes().to_vec()),
                ("status", fetched.status.to_string().into_bytes()),
                ("body", fetched.body.to_vec()),
            ];
            let optional = [
                ("etag", &fetched.validators.etag),
                ("last_modified", &fetched.validators.last_modified),
                ("content_type", &fetched.content_type),
            ];
            for (name, value) in optional {
                if let Some(value) = value {
                    fields.push((name, value.clone().into_bytes()));
                }
            }
            pipe.hset_multiple(&key, &fields)
                .ignore()
                .expire(&key, self.store.ttl().as_secs().max(1) as i64)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }
}

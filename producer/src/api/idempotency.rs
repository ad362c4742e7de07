//! Idempotent `POST /v1/jobs`: a job id (given as `job_id`, or derived from an
//! `Idempotency-Key` header) is bound to the first request body that creates it. The same
//! body again resumes that job's enqueue (publishing only what was not confirmed) and gets
//! the first answer; another body gets 409.

use axum::http::HeaderMap;
use tributary::store::Store;
use uuid::Uuid;

use super::error::ApiError;
use crate::input::Scan;

/// The request header naming a retry-safe request.
pub const HEADER: &str = "idempotency-key";

/// Longest accepted key, in bytes.
const MAX_KEY: usize = 255;

/// Namespace of the job ids derived from idempotency keys.
const KEY_NAMESPACE: Uuid = Uuid::from_u128(0x5d7a_1e2c_3b4f_5a69_8c0d_e1f2_a3b4_c5d6);

/// The `Idempotency-Key` header: 1-255 visible ASCII characters, or absent.
pub fn key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::bad_request(
            "invalid idempotency key",
            format!("Idempotency-Key must be 1-{MAX_KEY} visible ASCII characters"),
        )
    };
    let key = value.to_str().map_err(|_| invalid())?;
    let visible = key.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if key.trim().is_empty() || key.len() > MAX_KEY || !visible {
        return Err(invalid());
    }
    Ok(Some(key.to_string()))
}

/// The job id of an idempotency key: the same key always names the same job.
pub fn job_for_key(key: &str) -> Uuid {
    Uuid::new_v5(&KEY_NAMESPACE, key.as_bytes())
}

/// Binds `job` to this request (its lines and `skip_invalid`): `Ok` for the first request
/// and for the same one again, 409 for another.
pub async fn claim(
    store: &Store,
    job: Uuid,
    found: &Scan,
    skip_invalid: bool,
) -> Result<(), ApiError> {
    let digest = format!("{}:{}", found.digest, u8::from(skip_invalid));
    let bound = store
        .claim_job(job, &digest)
        .await
        .map_err(|e| ApiError::from_runtime(&e.into()))?;
    if bound != digest {
        return Err(conflict(job));
    }
    Ok(())
}

/// 409: the job was created by another request.
pub fn conflict(job: Uuid) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::CONFLICT,
        "job exists",
        format!(
            "job {job} was created by a different request; repeat that request exactly, or use another job_id or Idempotency-Key"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn keys_name_stable_jobs() {
        assert_eq!(
            job_for_key("order-1").to_string(),
            "83b56b58-e0ca-52aa-9b86-ae38babcb4a5"
        );
        assert_ne!(job_for_key("order-1"), job_for_key("order-2"));
    }

    #[test]
    fn keys_are_checked() {
        let mut headers = HeaderMap::new();
        assert_eq!(key(&headers), Ok(None));
        headers.insert(HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(key(&headers), Ok(Some("abc-123".into())));
        for bad in [" ", "a\u{7f}b"] {
            if let Ok(value) = HeaderValue::from_str(bad) {
                headers.insert(HEADER, value);
                assert!(key(&headers).is_err(), "{bad:?}");
            }
        }
        let long = "k".repeat(MAX_KEY + 1);
        headers.insert(HEADER, HeaderValue::from_str(&long).unwrap());
        assert!(key(&headers).is_err());
    }
}

//! The origin's route handlers (the table in the parent module's docs).

use futures::StreamExt as _;

use super::*;

/// Parses a document id, accepting an optional `suffix`.
pub(super) fn parse_id(s: &str, suffix: &str) -> Option<u64> {
    s.strip_suffix(suffix).unwrap_or(s).parse().ok()
}

pub(super) fn quote_response(i: u64) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], quote_body(i)).into_response()
}

pub(super) fn not_found_response() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

pub(super) async fn not_found() -> Response {
    not_found_response()
}

pub(super) async fn quote(Path(file): Path<String>) -> Response {
    match parse_id(&file, ".json") {
        Some(i) => quote_response(i),
        None => not_found_response(),
    }
}

pub(super) async fn missing(
    State(shared): State<Arc<Shared>>,
    Path(file): Path<String>,
) -> Response {
    if shared
        .missing_published
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        quote(Path(file)).await
    } else {
        not_found_response()
    }
}

pub(super) async fn text(Path(file): Path<String>) -> Response {
    match parse_id(&file, ".txt") {
        Some(i) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("this is not json {i}\n"),
        )
            .into_response(),
        None => not_found_response(),
    }
}

pub(super) async fn status(Path(code): Path<String>) -> Response {
    match code
        .parse::<u16>()
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
    {
        Some(code) => (code, format!("status {}\n", code.as_u16())).into_response(),
        None => (StatusCode::BAD_REQUEST, "bad status code\n").into_response(),
    }
}

pub(super) async fn flaky(
    State(shared): State<Arc<Shared>>,
    Path((key, n, i)): Path<(String, String, String)>,
) -> Response {
    let (Ok(n), Some(i)) = (n.parse::<u64>(), parse_id(&i, ".json")) else {
        return not_found_response();
    };
    if shared.attempt(format!("flaky/{key}/{i}")) <= n {
        (StatusCode::SERVICE_UNAVAILABLE, "flaky: try again\n").into_response()
    } else {
        quote_response(i)
    }
}

pub(super) async fn retry_after(
    State(shared): State<Arc<Shared>>,
    Path((secs, i)): Path<(String, String)>,
) -> Response {
    let (Ok(secs), Some(i)) = (secs.parse::<u64>(), parse_id(&i, ".json")) else {
        return not_found_response();
    };
    if shared.attempt(format!("retry-after/{secs}/{i}")) == 1 {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, HeaderValue::from(secs))],
            "slow down\n",
        )
            .into_response()
    } else {
        quote_response(i)
    }
}

/// A body of `total` bytes of `x`, streamed in [`BIG_CHUNK`] pieces.
pub(super) fn big_body(total: u64) -> Body {
    let chunk = Bytes::from(vec![b'x'; BIG_CHUNK]);
    let stream = futures::stream::unfold(total, move |remaining| {
        let chunk = chunk.clone();
        async move {
            if remaining == 0 {
                return None;
            }
            let n = usize::try_from(remaining).map_or(BIG_CHUNK, |r| r.min(BIG_CHUNK));
            Some((Ok::<_, Infallible>(chunk.slice(..n)), remaining - n as u64))
        }
    });
    Body::from_stream(stream)
}

pub(super) async fn big(Path(bytes): Path<String>) -> Response {
    match bytes.parse::<u64>() {
        Ok(total) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("text/plain")),
                (header::CONTENT_LENGTH, HeaderValue::from(total)),
            ],
            big_body(total),
        )
            .into_response(),
        Err(_) => not_found_response(),
    }
}

pub(super) async fn big_chunked(Path(bytes): Path<String>) -> Response {
    match bytes.parse::<u64>() {
        Ok(total) => ([(header::CONTENT_TYPE, "text/plain")], big_body(total)).into_response(),
        Err(_) => not_found_response(),
    }
}

pub(super) async fn slow(Path((ms, i)): Path<(String, String)>) -> Response {
    let (Ok(ms), Some(i)) = (ms.parse::<u64>(), parse_id(&i, ".json")) else {
        return not_found_response();
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    quote_response(i)
}

pub(super) async fn etag(Path(file): Path<String>, headers: axum::http::HeaderMap) -> Response {
    let Some(i) = parse_id(&file, ".json") else {
        return not_found_response();
    };
    let tag = format!("\"q{i}\"");
    let etag = HeaderValue::from_str(&tag).expect("a valid header");
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == tag.as_bytes())
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    let mut response = quote_response(i);
    response.headers_mut().insert(header::ETAG, etag);
    response
}

pub(super) async fn stall_body(Path((ms, i)): Path<(String, String)>) -> Response {
    let (Ok(ms), Some(i)) = (ms.parse::<u64>(), parse_id(&i, ".json")) else {
        return not_found_response();
    };
    let body = quote_body(i);
    let (first, rest) = (body.slice(..1), body.slice(1..));
    let chunks =
        futures::stream::iter([Some(first), None, Some(rest)]).then(move |chunk| async move {
            match chunk {
                Some(bytes) => Ok::<_, Infallible>(bytes),
                None => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(Bytes::new())
                }
            }
        });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(chunks),
    )
        .into_response()
}

fn found(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(to) => (StatusCode::FOUND, [(header::LOCATION, to)]).into_response(),
        Err(_) => (StatusCode::BAD_REQUEST, "bad location\n").into_response(),
    }
}

pub(super) async fn redirect(Path((n, i)): Path<(String, String)>) -> Response {
    match n.parse::<u32>() {
        Ok(0) | Err(_) => not_found_response(),
        Ok(1) => found(&format!("/quotes/{i}")),
        Ok(n) => found(&format!("/redirect/{}/{i}", n - 1)),
    }
}

pub(super) async fn redirect_to(
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    match query.get("to") {
        Some(to) => found(to),
        None => not_found_response(),
    }
}

/// The quote document `i` if the request's `Authorization` is `expected`, else 401.
fn authorized(headers: &axum::http::HeaderMap, expected: &str, i: &str) -> Response {
    let Some(i) = parse_id(i, ".json") else {
        return not_found_response();
    };
    match headers.get(header::AUTHORIZATION) {
        Some(given) if given.as_bytes() == expected.as_bytes() => quote_response(i),
        _ => (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response(),
    }
}

pub(super) async fn bearer(
    Path((token, i)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Response {
    authorized(&headers, &format!("Bearer {token}"), &i)
}

pub(super) async fn basic(
    Path((user, password, i)): Path<(String, String, String)>,
    headers: axum::http::HeaderMap,
) -> Response {
    use base64::Engine as _;
    let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    authorized(&headers, &format!("Basic {pair}"), &i)
}

pub(super) async fn no_auth(Path(i): Path<String>, headers: axum::http::HeaderMap) -> Response {
    match (
        parse_id(&i, ".json"),
        headers.contains_key(header::AUTHORIZATION),
    ) {
        (None, _) => not_found_response(),
        (Some(i), false) => quote_response(i),
        (Some(_), true) => (StatusCode::BAD_REQUEST, "credentials sent\n").into_response(),
    }
}

//! Bearer-token authentication: when `--api-token` is set, every route but `/healthz` needs
//! `Authorization: Bearer <token>`, compared in constant time.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq as _;
use tributary::runtime::cli::UsageError;

use super::error::ApiError;
use crate::config::ServeArgs;

/// The token to require, if any, after refusing unsafe settings: an empty token, or a
/// non-loopback address without a token unless `--insecure-no-auth`.
pub fn required_token(args: &ServeArgs) -> Result<Option<String>, UsageError> {
    match &args.api_token {
        Some(token) if token.0.is_empty() => Err(UsageError(
            "the API token (--api-token or TRIBUTARY_API_TOKEN) is empty".into(),
        )),
        Some(token) => Ok(Some(token.0.clone())),
        None if !is_loopback(args.listen) && !args.insecure_no_auth => Err(UsageError(format!(
            "refusing to serve on {} without --api-token or TRIBUTARY_API_TOKEN (pass --insecure-no-auth to allow it)",
            args.listen
        ))),
        None => Ok(None),
    }
}

fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Whether an `Authorization` header carries `Bearer <expected>`.
pub fn authorized(expected: &str, header: Option<&HeaderValue>) -> Result<(), ApiError> {
    let Some(value) = header else {
        return Err(ApiError::unauthorized(
            "missing Authorization: Bearer <token> header",
        ));
    };
    let given = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| ApiError::unauthorized("the Authorization header is not Bearer <token>"))?;
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::unauthorized("invalid token"))
    }
}

/// Middleware: lets a request through only with the right token.
pub async fn require_token(
    State(expected): State<Arc<String>>,
    request: Request,
    next: Next,
) -> Response {
    match authorized(&expected, request.headers().get(header::AUTHORIZATION)) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::config::{Command, Config};

    fn serve_args(flags: &[&str]) -> ServeArgs {
        let config = Config::try_parse_from(["producer", "serve"].iter().chain(flags)).unwrap();
        match config.command {
            Command::Serve(args) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unsafe_settings_are_refused() {
        assert_eq!(required_token(&serve_args(&[])).unwrap(), None);
        let open = serve_args(&["--listen", "0.0.0.0:8080"]);
        let refused = required_token(&open).unwrap_err().0;
        assert!(refused.contains("--insecure-no-auth"), "{refused}");
        assert!(!refused.contains('\n'));
        let insecure = serve_args(&["--listen", "0.0.0.0:8080", "--insecure-no-auth"]);
        assert_eq!(required_token(&insecure).unwrap(), None);
        let token = serve_args(&["--listen", "[::]:8080", "--api-token", "s3cret"]);
        assert_eq!(required_token(&token).unwrap().as_deref(), Some("s3cret"));
        assert!(required_token(&serve_args(&["--api-token", ""])).is_err());
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn bearer_tokens_are_checked() {
        let ok = HeaderValue::from_static("Bearer s3cret");
        assert!(authorized("s3cret", Some(&ok)).is_ok());
        let lower = HeaderValue::from_static("bearer  s3cret ");
        assert!(authorized("s3cret", Some(&lower)).is_ok());
        for bad in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Basic s3cret",
            "s3cret",
            "Bearer ",
        ] {
            let value = HeaderValue::from_static(bad);
            let e = authorized("s3cret", Some(&value)).unwrap_err();
            assert_eq!(e.status, 401, "{bad}");
        }
        assert_eq!(authorized("s3cret", None).unwrap_err().status, 401);
    }
}

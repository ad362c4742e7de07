//! Authentication and roles: when `--api-token` is set, every route but `/healthz` and the
//! login page needs either `Authorization: Bearer <token>` (compared in constant time) or
//! the dashboard's session cookie ([`Session`]). `--read-only-token` grants the read-only
//! role: GETs only. Without a token (loopback, or `--insecure-no-auth`) everyone is admin.
//!
//! The session cookie is signed (HMAC, a key made at start: a restart logs everyone out),
//! HttpOnly, SameSite=Strict, and carries its role, its expiry and the CSRF token that every
//! dashboard form must echo. A session cookie is accepted by API GETs, never by API POSTs
//! (those need the bearer token, so no form on another site can trigger them).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::{Cookie, Key, SameSite, SignedCookieJar};
use subtle::ConstantTimeEq as _;
use tributary::runtime::cli::UsageError;

use super::Api;
use super::error::ApiError;
use crate::config::ServeArgs;

/// The session cookie's name.
pub const COOKIE: &str = "tributary_session";
/// How long a dashboard login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    ReadOnly,
}

/// Who made a request (a request extension, set by [`identify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    /// The CSRF token of the caller's session cookie (none for bearer-token callers).
    pub csrf: Option<String>,
}

/// The tokens and the cookie key of a server.
#[derive(Clone)]
pub struct Access {
    token: Option<String>,
    read_only: Option<String>,
    key: Key,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token", &self.token.is_some())
            .finish()
    }
}

impl Access {
    /// The settings of `args`, refusing unsafe ones (see [`required_token`]).
    pub fn from_args(args: &ServeArgs) -> Result<Access, UsageError> {
        let token = required_token(args)?;
        let read_only = match (&args.read_only_token, &token) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(UsageError(
                    "--read-only-token needs --api-token (without a token everyone is admin)"
                        .into(),
                ));
            }
            (Some(r), Some(t)) if r.0.is_empty() || &r.0 == t => {
                return Err(UsageError(
                    "the read-only token is empty or the same as the API token".into(),
                ));
            }
            (Some(r), Some(_)) => Some(r.0.clone()),
        };
        Ok(Access {
            token,
            read_only,
            key: Key::generate(),
        })
    }

    /// Whether the server needs no token at all.
    pub fn is_open(&self) -> bool {
        self.token.is_none()
    }

    /// The role a token grants, compared in constant time.
    pub fn role_of(&self, given: &str) -> Option<Role> {
        let same = |expected: &Option<String>| {
            expected
                .as_deref()
                .is_some_and(|e| bool::from(given.as_bytes().ct_eq(e.as_bytes())))
        };
        if same(&self.token) {
            Some(Role::Admin)
        } else if same(&self.read_only) {
            Some(Role::ReadOnly)
        } else {
            None
        }
    }

    /// The request's cookie jar, verified with this server's key.
    pub fn jar(&self, headers: &HeaderMap) -> SignedCookieJar {
        SignedCookieJar::from_headers(headers, self.key.clone())
    }

    /// A session cookie for `role` with a fresh CSRF token.
    pub fn session_cookie(&self, role: Role, secure: bool) -> (Cookie<'static>, Caller) {
        let csrf = uuid::Uuid::new_v4().simple().to_string();
        let expires = now_secs() + SESSION_TTL.as_secs();
        let tag = match role {
            Role::Admin => "a",
            Role::ReadOnly => "r",
        };
        let cookie = Cookie::build((COOKIE, format!("{tag}.{expires}.{csrf}")))
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(secure)
            .path("/")
            .max_age(time_duration(SESSION_TTL))
            .build();
        let caller = Caller {
            role,
            csrf: Some(csrf),
        };
        (cookie, caller)
    }

    /// The caller of a valid, unexpired session cookie.
    fn caller_of_cookie(&self, jar: &SignedCookieJar) -> Option<Caller> {
        let value = jar.get(COOKIE)?;
        let mut parts = value.value().splitn(3, '.');
        let role = match parts.next()? {
            "a" => Role::Admin,
            "r" => Role::ReadOnly,
            _ => return None,
        };
        let expires: u64 = parts.next()?.parse().ok()?;
        let csrf = parts.next()?.to_string();
        (expires > now_secs() && !csrf.is_empty()).then_some(Caller {
            role,
            csrf: Some(csrf),
        })
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn time_duration(d: Duration) -> time::Duration {
    time::Duration::seconds(d.as_secs() as i64)
}

/// Middleware on every route: finds the [`Caller`] (bearer token, else session cookie;
/// everyone is admin on an open server, who gets a session cookie for the CSRF token of
/// the dashboard's forms) and stores it in the request's extensions.
pub async fn identify(State(api): State<Arc<Api>>, mut request: Request, next: Next) -> Response {
    let access = &api.access;
    let bearer = request.headers().get(header::AUTHORIZATION).cloned();
    let jar = access.jar(request.headers());
    let mut minted = None;
    let caller = match bearer {
        Some(value) => match bearer_role(access, &value) {
            Ok(role) => Some(Caller { role, csrf: None }),
            Err(e) => {
                // Anonymous, with the reason for the API's 401 (`/healthz` still answers).
                request.extensions_mut().insert(e);
                None
            }
        },
        None => match access.caller_of_cookie(&jar) {
            Some(caller) => Some(caller),
            None if access.is_open() => {
                let (cookie, caller) = access.session_cookie(Role::Admin, false);
                minted = Some(cookie);
                Some(caller)
            }
            None => None,
        },
    };
    if let Some(caller) = caller {
        request.extensions_mut().insert(caller);
    }
    let response = next.run(request).await;
    match minted {
        Some(cookie) => (jar.add(cookie), response).into_response(),
        None => response,
    }
}

fn bearer_role(access: &Access, value: &HeaderValue) -> Result<Role, ApiError> {
    if access.is_open() {
        return Ok(Role::Admin);
    }
    let given = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| ApiError::unauthorized("the Authorization header is not Bearer <token>"))?;
    access
        .role_of(given)
        .ok_or_else(|| ApiError::unauthorized("invalid token"))
}

/// Route layer of the API: a caller is needed (401), POSTs need the admin role (403) and a
/// bearer token, not a session cookie (401).
pub async fn require_api(request: Request, next: Next) -> Response {
    let caller = request.extensions().get::<Caller>();
    let writes = request.method() != Method::GET && request.method() != Method::HEAD;
    let refused = match caller {
        None => Some(
            request
                .extensions()
                .get::<ApiError>()
                .cloned()
                .unwrap_or_else(|| {
                    ApiError::unauthorized("missing Authorization: Bearer <token> header")
                }),
        ),
        Some(c) if writes && c.role == Role::ReadOnly => Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the read-only token cannot change anything",
        )),
        Some(c) if writes && c.csrf.is_some() => Some(ApiError::unauthorized(
            "API requests that change something need Authorization: Bearer <token>",
        )),
        Some(_) => None,
    };
    match refused {
        Some(e) => e.into_response(),
        None => next.run(request).await,
    }
}

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
    fn bearer_tokens_grant_roles() {
        let args = serve_args(&["--api-token", "s3cret", "--read-only-token", "look"]);
        let access = Access::from_args(&args).unwrap();
        let role = |v: &'static str| bearer_role(&access, &HeaderValue::from_static(v));
        assert_eq!(role("Bearer s3cret").unwrap(), Role::Admin);
        assert_eq!(role("bearer  s3cret ").unwrap(), Role::Admin);
        assert_eq!(role("Bearer look").unwrap(), Role::ReadOnly);
        for bad in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Basic s3cret",
            "s3cret",
            "Bearer ",
        ] {
            assert_eq!(role(bad).unwrap_err().status, 401, "{bad}");
        }
        assert!(!format!("{access:?}").contains("s3cret"));
        assert!(Access::from_args(&serve_args(&["--read-only-token", "x"])).is_err());
        let same = serve_args(&["--api-token", "x", "--read-only-token", "x"]);
        assert!(Access::from_args(&same).is_err());
    }

    #[test]
    fn session_cookies_round_trip_and_expire() {
        let access = Access::from_args(&serve_args(&["--api-token", "s3cret"])).unwrap();
        let (cookie, caller) = access.session_cookie(Role::ReadOnly, false);
        let jar = access.jar(&HeaderMap::new()).add(cookie);
        assert_eq!(access.caller_of_cookie(&jar), Some(caller));
        let stale = Cookie::new(COOKIE, "a.1.abc");
        let jar = access.jar(&HeaderMap::new()).add(stale);
        assert_eq!(access.caller_of_cookie(&jar), None);
        let other = Access::from_args(&serve_args(&["--api-token", "s3cret"])).unwrap();
        let (forged, _) = other.session_cookie(Role::Admin, false);
        let mut headers = HeaderMap::new();
        let pair = format!("{}={}", COOKIE, forged.value());
        headers.insert(header::COOKIE, HeaderValue::from_str(&pair).unwrap());
        assert_eq!(access.caller_of_cookie(&access.jar(&headers)), None);
    }
}

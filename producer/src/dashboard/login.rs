//! The login form (the token in, a session cookie out), logging out, and the checks every
//! dashboard form post passes: a session, its CSRF token, the admin role for changes.

use std::sync::Arc;

use axum::extract::{Extension, Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::Cookie;
use maud::html;
use serde::Deserialize;
use subtle::ConstantTimeEq as _;

use super::layout::{error_page, page};
use crate::api::Api;
use crate::api::auth::{COOKIE, Caller, Role};

/// The login form's fields.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
}

/// The CSRF field every other form carries.
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    pub csrf: String,
}

/// `GET /login`: the form (an open server has no login: to the overview).
pub async fn form(State(api): State<Arc<Api>>) -> Response {
    if api.access.is_open() {
        return Redirect::to("/").into_response();
    }
    login_page(StatusCode::OK, None)
}

fn login_page(status: StatusCode, problem: Option<&str>) -> Response {
    let body = html! {
        form.login method="post" action="/login" {
            label for="token" { "API token" }
            input #token type="password" name="token" autocomplete="current-password" autofocus;
            button type="submit" { "Log in" }
        }
        @if let Some(problem) = problem { p.error { (problem) } }
    };
    (status, page("Log in", None, body)).into_response()
}

/// `POST /login`: a valid token sets the session cookie and goes to the overview.
pub async fn login(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if api.access.is_open() {
        return Redirect::to("/").into_response();
    }
    match api.access.role_of(form.token.trim()) {
        Some(role) => {
            let (cookie, _) = api.access.session_cookie(role, false);
            let jar = api.access.jar(&headers).add(cookie);
            (jar, Redirect::to("/")).into_response()
        }
        None => login_page(StatusCode::UNAUTHORIZED, Some("That token is not valid.")),
    }
}

/// `POST /logout`: drops the session cookie.
pub async fn logout(
    State(api): State<Arc<Api>>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let caller = caller.map(|Extension(c)| c);
    if let Err(refused) = check_form(caller.as_ref(), &form.csrf, Role::ReadOnly) {
        return refused;
    }
    let jar = api
        .access
        .jar(&headers)
        .remove(Cookie::build(COOKIE).path("/"));
    (jar, Redirect::to("/login")).into_response()
}

/// Lets a form post through only from a session whose CSRF token it carries, with at
/// least the role `needs` (admin for anything that changes state).
#[allow(clippy::result_large_err)]
pub fn check_form(caller: Option<&Caller>, csrf: &str, needs: Role) -> Result<(), Response> {
    let Some(caller) = caller else {
        return Err(error_page(StatusCode::UNAUTHORIZED, None, "Log in first."));
    };
    let expected = caller.csrf.as_deref().unwrap_or_default();
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(csrf.as_bytes())) {
        return Err(error_page(
            StatusCode::FORBIDDEN,
            Some(caller),
            "The form's CSRF token does not match your session: reload the page and try again.",
        ));
    }
    if needs == Role::Admin && caller.role != Role::Admin {
        return Err(error_page(
            StatusCode::FORBIDDEN,
            Some(caller),
            "The read-only token cannot change anything.",
        ));
    }
    Ok(())
}

/// Where an anonymous request goes: a page to the login form, anything else 401 (with no
/// detail about what was asked for).
pub fn anonymous(headers: &HeaderMap) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if wants_html {
        Redirect::to("/login").into_response()
    } else {
        crate::api::error::ApiError::unauthorized("missing Authorization: Bearer <token> header")
            .into_response()
    }
}

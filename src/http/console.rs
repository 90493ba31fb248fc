//! The operator console at `/console`, served by the node itself from files embedded in the
//! binary (`console/assets/`), and the small index page at `/`.
//!
//! - `GET /console/login`, `POST /console/login`: a form with the API key; success sets the
//!   session cookie ([`session`]) and goes to `/console`.
//! - `GET /console`: the console page (a script-built page over `/console/api`), or back to the
//!   sign-in page without a valid session.
//! - `/console/api/...`: JSON for the page ([`api`], the live stream in [`live`]), and every
//!   `/v1` route again under `/console/api/v1/...`, behind the session instead of the bearer key.
//!
//! Invariant: every `/console/api` request needs a valid session; every state change (any
//! method but GET and HEAD) also needs the session's CSRF token and a key with every right,
//! and is written to the audit log with its answer; every response of the console and of `/`
//! carries a Content-Security-Policy without inline script and `X-Frame-Options: DENY`.

pub mod api;
pub mod live;
pub mod session;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use serde::Deserialize;

use super::error::ApiError;
use super::state::AppState;
use crate::delivery::schema::MAX_DOCUMENT_BYTES;
use crate::ops::audit;
use session::{Invalid, Role, Sessions, Viewer};

/// The console's state: the API's, and the session keys.
#[derive(Clone)]
pub struct Console {
    pub app: AppState,
    pub sessions: Arc<Sessions>,
}

/// The policy every console page and `/` is served with: scripts and styles from this origin
/// only, no inline script, no framing, forms post only here.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const LOGIN_HTML: &str = include_str!("console/assets/login.html");
const CONSOLE_HTML: &str = include_str!("console/assets/console.html");
const INDEX_HTML: &str = include_str!("console/assets/index.html");
const CONSOLE_JS: &str = include_str!("console/assets/console.js");
const CONSOLE_CSS: &str = include_str!("console/assets/console.css");

/// The console's routes and `/`.
pub fn router(app: AppState) -> Router {
    let console = Console {
        sessions: Arc::new(Sessions::new(&app.config)),
        app: app.clone(),
    };
    let api = api::routes()
        .with_state(console.clone())
        .merge(super::v1::routes().with_state(app))
        .layer(middleware::from_fn_with_state(
            console.clone(),
            require_session,
        ))
        .layer(DefaultBodyLimit::max(MAX_DOCUMENT_BYTES));
    Router::new()
        .route("/", get(|| async { html(INDEX_HTML) }))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/console", get(console_page))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        .route("/console/login", get(login_page).post(sign_in))
        .route(
            "/console/assets/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }),
        )
        .route(
            "/console/assets/console.css",
            get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
        .with_state(console)
        .nest("/console/api", api)
        .layer(middleware::map_response(security_headers))
}

fn html(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        // Not `no-referrer`: with it a browser sends `Origin: null` on the sign-in form's POST,
        // and the same-origin check refuses it. Nothing leaks to another site either way.
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

#[derive(Deserialize)]
struct LoginQuery {
    error: Option<String>,
}

/// The sign-in page; the message is one of a fixed few (nothing from the request is echoed).
async fn login_page(Query(q): Query<LoginQuery>) -> Response {
    let message = match q.error.as_deref() {
        Some("wrong_key") => "That key cannot sign in. Check it and try again.",
        Some("expired") => "Your session has expired. Sign in again.",
        Some("signed_out") => "You have signed out.",
        Some("origin") => "The sign-in came from another site and was refused.",
        _ => "",
    };
    let page = LOGIN_HTML.replace("{{message}}", message);
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

#[derive(Deserialize)]
struct SignInForm {
    api_key: String,
}

/// Whether the request came over TLS (directly, or through a proxy that says so).
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// True when the request's `Origin` (if any) is this host: a sign-in form on another site must
/// not sign a browser in with the other site's key.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let bare = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    !host.is_empty() && bare.eq_ignore_ascii_case(host)
}

async fn sign_in(
    State(console): State<Console>,
    headers: HeaderMap,
    form: Result<Form<SignInForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let now = crate::util::now_ms();
    if !same_origin(&headers) {
        return Redirect::to("/console/login?error=origin").into_response();
    }
    let presented = form.map(|Form(f)| f.api_key).unwrap_or_default();
    match console.sessions.sign_in(presented.trim(), now) {
        Some((cookie, viewer)) => {
            record(&console, &viewer.who, viewer.role.as_str(), "sign-in", "ok").await;
            let set = console.sessions.set_cookie(&cookie, over_tls(&headers));
            ([(header::SET_COOKIE, set)], Redirect::to("/console")).into_response()
        }
        None => {
            record(&console, "anonymous", "-", "sign-in", "wrong key").await;
            Redirect::to("/console/login?error=wrong_key").into_response()
        }
    }
}

/// The console page with a valid session, else the sign-in page.
async fn console_page(State(console): State<Console>, headers: HeaderMap) -> Response {
    let cookie = session::cookie_of(&headers);
    match console
        .sessions
        .verify(cookie.as_deref(), crate::util::now_ms())
    {
        Ok(_) => html(CONSOLE_HTML),
        Err(Invalid::Missing) => Redirect::to("/console/login").into_response(),
        Err(_) => Redirect::to("/console/login?error=expired").into_response(),
    }
}

/// Writes an audit entry; a failure is logged (the action has happened either way).
pub(crate) async fn record(console: &Console, who: &str, role: &str, action: &str, outcome: &str) {
    let entry = audit::Entry {
        id: String::new(),
        at: crate::util::now_ms(),
        who: who.to_string(),
        role: role.to_string(),
        action: action.to_string(),
        outcome: outcome.to_string(),
        node: console.app.config.node_id.clone(),
    };
    if let Err(e) = audit::write(&console.app.redis, &entry).await {
        tracing::warn!(error = %e, %action, "could not write the audit entry");
    }
}

/// Session, CSRF and rights for every `/console/api` request; audit for every change.
async fn require_session(State(console): State<Console>, mut req: Request, next: Next) -> Response {
    let cookie = session::cookie_of(req.headers());
    let viewer: Viewer = match console
        .sessions
        .verify(cookie.as_deref(), crate::util::now_ms())
    {
        Ok(v) => v,
        Err(why) => {
            let (code, message) = match why {
                Invalid::Expired => ("session_expired", "the session has expired; sign in again"),
                _ => ("signed_out", "sign in at /console/login"),
            };
            return ApiError::new(StatusCode::UNAUTHORIZED, code, message).into_response();
        }
    };
    let method = req.method().clone();
    if method == Method::GET || method == Method::HEAD {
        req.extensions_mut().insert(viewer);
        return next.run(req).await;
    }
    // Inside the nest, the path is the part after `/console/api`.
    let path = req.uri().path().to_string();
    let action = format!("{method} {path}");
    let presented = req
        .headers()
        .get(session::CSRF_HEADER)
        .and_then(|v| v.to_str().ok());
    let refusal = if !session::csrf_ok(&viewer, presented) {
        Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "a change needs the session's CSRF token in X-CSRF-Token",
        ))
    } else if viewer.role == Role::ReadOnly
        && !matches!(path.as_str(), "/logout" | "/console/api/logout")
    {
        Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "read_only",
            "this key can look but not change anything",
        ))
    } else {
        None
    };
    if let Some(refusal) = refusal {
        let response = refusal.into_response();
        let outcome = format!("{} refused", response.status().as_u16());
        record(
            &console,
            &viewer.who,
            viewer.role.as_str(),
            &action,
            &outcome,
        )
        .await;
        return response;
    }
    let (who, role) = (viewer.who.clone(), viewer.role.as_str());
    req.extensions_mut().insert(viewer);
    let response = next.run(req).await;
    let outcome = response.status().as_u16().to_string();
    record(&console, &who, role, &action, &outcome).await;
    response
}

//! The web dashboard at `/ui/`: server-rendered HTML (maud, which escapes
//! every value it interpolates), one stylesheet and one small script embedded
//! in the binary, no build step.
//!
//! The pages read through the management API's own handlers (`http::*`), so
//! they show exactly what the API answers and refuse exactly what it refuses,
//! with the same messages; a button is a form posting to `/ui/…`, which calls
//! the same handler and redirects back (303) or shows the API's error.
//!
//! **Sessions.** Signing in with an API token sets it as the cookie
//! [`SESSION`] (HttpOnly, SameSite=Strict, Secure over TLS, 12 h): the
//! session *is* the token, so a revoked or expired token ends every session
//! on every replica at once, and nothing is kept server-side. The cookie is
//! accepted by the API only on safe methods (GET, HEAD: the dashboard's
//! `EventSource`); every change goes through a `/ui/` form that carries the
//! [`csrf`] token, an HMAC of the session the attacker's page cannot read.
//! Viewers see no buttons, and their posts are refused (403) by the handlers'
//! role checks anyway. Every answer has a Content-Security-Policy without
//! inline scripts or styles.

mod pages;
pub mod rollouts;

use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{html, Markup, DOCTYPE};
use otafleet_store::{Role, TokenRecord};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The session cookie: the API token the user signed in with.
pub const SESSION: &str = "otafleet_session";
/// How long a session lasts without signing in again.
const SESSION_SECS: i64 = 12 * 3600;

const CSS: &str = include_str!("assets/app.css");
const JS: &str = include_str!("assets/app.js");

/// The policy on every page: scripts, styles and connections only from here,
/// nothing inline, no frames.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The routes under `/ui` (and `/` stays the tracker's health answer).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(pages::fleet))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/assets/app.css", get(|| async { asset(CSS, "text/css; charset=utf-8") }))
        .route("/ui/assets/app.js", get(|| async { asset(JS, "text/javascript; charset=utf-8") }))
        .route("/ui/devices", get(pages::devices))
        .route("/ui/devices/{id}", get(pages::device))
        .route("/ui/releases", get(pages::releases))
        .route("/ui/releases/{id}", get(pages::release))
        .route("/ui/events", get(pages::events))
        .route("/ui/alerts", get(pages::alerts))
        .route("/ui/jobs", get(pages::jobs))
        .route("/ui/jobs/deploy", post(pages::jobs_deploy))
        .route("/ui/jobs/rollback", post(pages::jobs_rollback))
        .route("/ui/rollouts", get(rollouts::list))
        .route("/ui/rollouts/new", get(rollouts::new_form).post(rollouts::create))
        .route("/ui/rollouts/count", get(rollouts::count))
        .route("/ui/rollouts/{id}", get(rollouts::show))
        .route("/ui/rollouts/{id}/live", get(rollouts::live))
        .route("/ui/rollouts/{id}/{command}", post(rollouts::command))
        .route("/ui/{*rest}", get(|| async { UiError::NotFound("no such page".into()) }))
        .layer(middleware::from_fn(security_headers))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=300")], body).into_response()
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// The session cookie's value in a request, if any.
pub fn session_secret(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == SESSION && !c.value().is_empty())
        .map(|c| c.value().to_string())
}

/// The anti-CSRF token of a session: a keyed hash of its secret, which a
/// page on another site can neither read nor compute.
pub fn csrf(secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"otafleet csrf v1\0");
    h.update(secret.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// A signed-in user: the token record and the session's CSRF token.
#[derive(Clone)]
pub struct Session {
    pub token: TokenRecord,
    pub csrf: String,
}

impl Session {
    pub fn caller(&self) -> Caller {
        Caller { token: Some(self.token.clone()) }
    }
    pub fn can(&self, role: Role) -> bool {
        self.token.role >= role
    }
}

/// What a page shows instead of itself.
pub enum UiError {
    /// Not signed in (or the token was revoked): to the sign-in page.
    SignIn,
    NotFound(String),
    /// The API's refusal, shown with its status and message.
    Api(ApiError),
}

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        UiError::Api(e)
    }
}

impl From<otafleet_store::StoreError> for UiError {
    fn from(e: otafleet_store::StoreError) -> Self {
        UiError::Api(e.into())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            UiError::SignIn => return Redirect::to("/ui/login").into_response(),
            UiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            UiError::Api(e) => (e.status, e.message),
        };
        let title = status.canonical_reason().unwrap_or("error");
        let body = bare(
            title,
            html! {
                main.narrow {
                    h1 { (status.as_u16()) " " (title) }
                    p.error role="alert" { (message) }
                    p { a href="/ui/" { "Back to the fleet" } }
                }
            },
        );
        (status, body).into_response()
    }
}

pub type UiResult<T> = Result<T, UiError>;

impl axum::extract::FromRequestParts<AppState> for Session {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &AppState) -> Result<Self, UiError> {
        let Some(secret) = session_secret(&parts.headers) else { return Err(UiError::SignIn) };
        match state.caches.token(&state.store, &secret).await? {
            Some(token) => Ok(Session { token, csrf: csrf(&secret) }),
            None => Err(UiError::SignIn),
        }
    }
}

/// A form's CSRF field, checked against the session's.
pub fn check_csrf(session: &Session, sent: &str) -> UiResult<()> {
    let ok = sent.len() == session.csrf.len()
        && sent.bytes().zip(session.csrf.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if ok {
        Ok(())
    } else {
        Err(UiError::Api(ApiError::forbidden(
            "the form's anti-forgery token is missing or wrong; reload the page and try again",
        )))
    }
}

/// The hidden CSRF field of every form.
pub fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// One page: the navigation bar, the signed-in user, the content.
pub fn page(session: &Session, title: &str, active: &str, content: Markup) -> Response {
    let nav = [
        ("fleet", "/ui/", "Fleet"),
        ("devices", "/ui/devices", "Devices"),
        ("releases", "/ui/releases", "Releases"),
        ("rollouts", "/ui/rollouts", "Rollouts"),
        ("jobs", "/ui/jobs", "Jobs"),
        ("alerts", "/ui/alerts", "Alerts"),
        ("events", "/ui/events", "Events"),
    ];
    let body = html! {
        a.skip href="#main" { "Skip to content" }
        header.top {
            a.brand href="/ui/" { "otafleet" }
            nav aria-label="main" {
                ul {
                    @for (key, href, label) in nav {
                        li { a href=(href) aria-current=[(key == active).then_some("page")] { (label) } }
                    }
                }
            }
            form.who method="post" action="/ui/logout" {
                span { (session.token.name) " · " (session.token.role.as_str()) }
                (csrf_field(session))
                button.link type="submit" { "Sign out" }
            }
        }
        main id="main" tabindex="-1" { (content) }
    };
    (StatusCode::OK, bare(title, body)).into_response()
}

/// The HTML document around a body.
fn bare(title: &str, body: Markup) -> axum::response::Html<String> {
    let doc = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · otafleet" }
                link rel="stylesheet" href="/ui/assets/app.css";
                script src="/ui/assets/app.js" defer {}
            }
            body { (body) }
        }
    };
    axum::response::Html(doc.into_string())
}

/// A time as the browser shows it in its own zone (`app.js` rewrites the
/// text); UTC until then.
pub fn time(rfc3339: &str) -> Markup {
    html! { time datetime=(rfc3339) { (rfc3339.replace('T', " ").trim_end_matches('Z')) " UTC" } }
}

pub fn time_opt(t: Option<&str>) -> Markup {
    match t {
        Some(t) => time(t),
        None => html! { span.muted { "—" } },
    }
}

/// A state word as a coloured badge.
pub fn badge(word: &str) -> Markup {
    html! { span class={ "badge s-" (word) } { (word) } }
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

async fn login_page() -> Response {
    let body = bare("Sign in", login_body(None));
    body.into_response()
}

fn login_body(error: Option<&str>) -> Markup {
    html! {
        main.narrow {
            h1 { "otafleet" }
            p { "Sign in with an API token (" code { "otafleet tokens create" } ")." }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/ui/login" id="login" {
                label for="token" { "API token" }
                input id="token" name="token" type="password" autocomplete="current-password" required autofocus;
                button type="submit" { "Sign in" }
            }
        }
    }
}

/// Signs in: a token the API knows becomes the session cookie.
async fn login(State(state): State<AppState>, Form(f): Form<LoginForm>) -> Response {
    let secret = f.token.trim();
    let known = if secret.is_empty() || secret.len() > 512 {
        None
    } else {
        match state.caches.token(&state.store, secret).await {
            Ok(t) => t,
            Err(e) => return UiError::from(e).into_response(),
        }
    };
    if known.is_none() {
        let body = bare("Sign in", login_body(Some("unknown, revoked or expired token")));
        return (StatusCode::UNAUTHORIZED, body).into_response();
    }
    let cookie = cookie::Cookie::build((SESSION, secret.to_string()))
        .path("/")
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .secure(state.config.tls.is_some())
        .max_age(cookie::time::Duration::seconds(SESSION_SECS))
        .build();
    let mut res = Redirect::to("/ui/").into_response();
    res.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie.to_string()).expect("cookie"));
    res
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(session: Session, Form(f): Form<CsrfForm>) -> UiResult<Response> {
    check_csrf(&session, &f.csrf)?;
    let gone = cookie::Cookie::build((SESSION, "")).path("/").max_age(cookie::time::Duration::ZERO).build();
    let mut res = Redirect::to("/ui/login").into_response();
    res.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&gone.to_string()).expect("cookie"));
    Ok(res)
}

//! The HTTP edge: one module per resource (routes, handlers, and the
//! conversions from stored rows to the answers), one error type, and the
//! router. The request and response types themselves are in `otafleet-api`,
//! shared with the CLI and the simulator; the OpenAPI document is generated
//! from them.

pub mod alerts;
pub mod artifacts;
pub mod auth;
pub mod compat;
pub mod delegates;
pub mod device_actions;
pub mod device_api;
pub mod devices;
pub mod enroll;
pub mod error;
pub mod events;
pub mod extract;
pub mod health;
mod query;
pub mod releases;
pub mod rollouts;
pub mod telemetry;
pub mod tokens;
pub mod validate;
pub mod webhooks;

use crate::AppState;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put, MethodRouter};
use axum::{Json, Router};
use error::{ApiError, ApiResult};
use std::time::Instant;
use utoipa::OpenApi;

pub use otafleet_api::Page;

#[derive(OpenApi)]
#[openapi(
    info(title = "otafleet", description = "OTA rollouts to fleets of robots and IoT devices. \
        The management API (`/api/v1`) and the tracker API (`/ota/*`) take API tokens (roles viewer < operator < admin; \
        `serve --open-compat` serves `/ota/*` without one), the device API (`/device/v1`) a device's own token \
        (or, to enroll, an enrollment token), the delegate API (`/delegate/v1`) a delegate's token, scoped to its devices. Every error is an `ErrorBody`."),
    paths(
        devices::register, devices::bulk_register, devices::list, devices::get_one, devices::update, devices::delete,
        releases::create, releases::list, releases::get_one,
        rollouts::create, rollouts::list, rollouts::get_one, rollouts::actions,
        rollouts::pause, rollouts::resume, rollouts::abort, rollouts::promote, rollouts::rollback,
        devices::rotate_token, events::list, events::stream, tokens::create, tokens::list, tokens::get_one, tokens::revoke,
        compat::health, compat::deploy, compat::jobs, compat::update_status, compat::rollback,
        device_api::checkin, device_api::status, device_api::telemetry, telemetry::query,
        enroll::create_token, enroll::list_tokens, enroll::get_token, enroll::revoke_token, enroll::enroll,
        artifacts::upload, artifacts::gc, artifacts::download, device_actions::get_one,
        webhooks::create, webhooks::list, webhooks::get_one, webhooks::delete, webhooks::deliveries,
        webhooks::redeliver,
        alerts::create_rule, alerts::list_rules, alerts::get_rule, alerts::delete_rule, alerts::list,
        delegates::create, delegates::list, delegates::get_one, delegates::revoke,
        delegates::inventory, delegates::checkin, delegates::status, delegates::device_action,
        openapi_json, metrics, health::healthz, health::readyz,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail, otafleet_core::protocol::Order)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// This document (OpenAPI 3.1).
#[utoipa::path(get, operation_id = "getOpenApi", path = "/api/v1/openapi.json",
    responses((status = 200, description = "the OpenAPI document", content_type = "application/json", body = Object)),
    tag = "meta")]
async fn openapi_json() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

/// Prometheus metrics (text exposition format). Open unless the server runs
/// with `--metrics-auth`, then it needs a viewer token.
#[utoipa::path(get, operation_id = "getMetrics", path = "/metrics",
    responses((status = 200, description = "the metrics", content_type = "text/plain; version=0.0.4", body = String),
        error::doc::AuthErrors),
    security((), ("bearer" = [])), tag = "meta")]
async fn metrics(State(state): State<AppState>, caller: auth::Caller) -> ApiResult<Response> {
    if !state.config.open_metrics {
        caller.require(otafleet_store::Role::Viewer)?;
    }
    let body = state.metrics.render(&state.store).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response())
}

/// Records the request duration histogram by method, route template and status.
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route =
        req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let res = next.run(req).await;
    let labels =
        vec![("method".into(), method), ("route".into(), route), ("status".into(), res.status().as_u16().to_string())];
    state.metrics.http_duration.get_or_create(&labels).observe(start.elapsed().as_secs_f64());
    res
}

async fn fallback() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// Runs a request that may write (anything but GET, HEAD, OPTIONS) to the
/// end in a task of its own, so a client that hangs up (which drops the
/// request's future) never cuts a handler off between two of its writes:
/// what a request started, it finishes, and it answers into the void.
async fn run_to_completion(req: Request, next: Next) -> Response {
    use axum::http::Method;
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    match tokio::spawn(next.run(req)).await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, "request handler panicked");
            ApiError::internal("the request failed").into_response()
        }
    }
}

async fn method_not_allowed(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    if res.status() == StatusCode::METHOD_NOT_ALLOWED {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this endpoint",
        )
        .into_response();
    }
    res
}

/// The router under construction, remembering every path it serves (so a
/// test can hold the OpenAPI document to all of them, see [`route_paths`]).
struct Routes {
    router: Router<AppState>,
    paths: Vec<&'static str>,
}

impl Routes {
    fn route(mut self, path: &'static str, method_router: MethodRouter<AppState>) -> Self {
        self.paths.push(path);
        self.router = self.router.route(path, method_router);
        self
    }
}

fn routes() -> Routes {
    Routes { router: Router::new(), paths: Vec::new() }
        .route("/", get(compat::health))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/ota/deploy", post(compat::deploy))
        .route("/ota/jobs", get(compat::jobs))
        .route("/ota/update_status", post(compat::update_status))
        .route("/ota/rollback", post(compat::rollback))
        .route("/metrics", get(metrics))
        // Management API.
        .route("/api/v1/devices", post(devices::register).get(devices::list))
        .route("/api/v1/devices/bulk", post(devices::bulk_register))
        .route("/api/v1/devices/{id}", get(devices::get_one).patch(devices::update).delete(devices::delete))
        .route("/api/v1/devices/{id}/token", post(devices::rotate_token))
        .route("/api/v1/releases", post(releases::create).get(releases::list))
        .route("/api/v1/releases/{id}", get(releases::get_one))
        .route("/api/v1/rollouts", post(rollouts::create).get(rollouts::list))
        .route("/api/v1/rollouts/{id}", get(rollouts::get_one))
        .route("/api/v1/rollouts/{id}/actions", get(rollouts::actions))
        .route("/api/v1/rollouts/{id}/pause", post(rollouts::pause))
        .route("/api/v1/rollouts/{id}/resume", post(rollouts::resume))
        .route("/api/v1/rollouts/{id}/abort", post(rollouts::abort))
        .route("/api/v1/rollouts/{id}/promote", post(rollouts::promote))
        .route("/api/v1/rollouts/{id}/rollback", post(rollouts::rollback))
        .route("/api/v1/telemetry/query", get(telemetry::query))
        .route("/api/v1/alerts", get(alerts::list))
        .route("/api/v1/alerts/rules", post(alerts::create_rule).get(alerts::list_rules))
        .route("/api/v1/alerts/rules/{id}", get(alerts::get_rule).delete(alerts::delete_rule))
        .route("/api/v1/events", get(events::list))
        .route("/api/v1/events/stream", get(events::stream))
        .route("/api/v1/tokens", post(tokens::create).get(tokens::list))
        .route("/api/v1/tokens/{id}", get(tokens::get_one))
        .route("/api/v1/tokens/{id}/revoke", post(tokens::revoke))
        .route("/api/v1/enrollment-tokens", post(enroll::create_token).get(enroll::list_tokens))
        .route("/api/v1/enrollment-tokens/{id}", get(enroll::get_token))
        .route("/api/v1/enrollment-tokens/{id}/revoke", post(enroll::revoke_token))
        .route("/api/v1/delegates", post(delegates::create).get(delegates::list))
        .route("/api/v1/delegates/{id}", get(delegates::get_one))
        .route("/api/v1/delegates/{id}/revoke", post(delegates::revoke))
        .route("/api/v1/webhooks", post(webhooks::create).get(webhooks::list))
        .route("/api/v1/webhooks/{id}", get(webhooks::get_one).delete(webhooks::delete))
        .route("/api/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route("/api/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", post(webhooks::redeliver))
        .route("/api/v1/releases/{id}/artifacts/{name}", put(artifacts::upload).layer(DefaultBodyLimit::disable()))
        .route("/api/v1/admin/artifacts/gc", post(artifacts::gc))
        .route("/api/v1/openapi.json", get(openapi_json))
        // Device API.
        .route("/device/v1/checkin", post(device_api::checkin))
        .route("/device/v1/status", post(device_api::status))
        .route("/device/v1/telemetry", post(device_api::telemetry))
        .route("/device/v1/enroll", post(enroll::enroll))
        .route("/device/v1/actions/{id}", get(device_actions::get_one))
        .route("/device/v1/artifacts/{sha256}", get(artifacts::download))
        .route("/delegate/v1/inventory", put(delegates::inventory))
        .route("/delegate/v1/checkin", post(delegates::checkin))
        .route("/delegate/v1/status", post(delegates::status))
        .route("/delegate/v1/devices/{device_id}/actions/{id}", get(delegates::device_action))
}

/// Every path template the router serves, as the OpenAPI document spells them.
pub fn route_paths() -> Vec<&'static str> {
    routes().paths
}

/// The whole HTTP surface. Handlers can be tested with `oneshot`, no socket.
pub fn router(state: AppState) -> Router {
    routes()
        .router
        .merge(crate::ui::routes())
        .fallback(fallback)
        .layer(middleware::from_fn(run_to_completion))
        .layer(middleware::from_fn(method_not_allowed))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(state.config.body_limit))
        .with_state(state)
}

/// Parses a path id, naming it in the error.
pub fn parse_id(raw: &str, what: &str) -> ApiResult<i64> {
    raw.parse::<i64>().map_err(|_| ApiError::not_found(format!("{what} '{raw}' not found (ids are integers)")))
}

#[cfg(test)]
mod tests {
    use super::ApiDoc;
    use utoipa::OpenApi;

    #[test]
    fn openapi_document_names_the_shared_api_types() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let props = |name: &str| {
            let p = &schemas[name]["properties"];
            assert!(
                p.is_object(),
                "schema {name} missing; have {:?}",
                schemas.as_object().map(|m| m.keys().collect::<Vec<_>>())
            );
            p.clone()
        };
        let rollout = props("Rollout");
        for f in ["preset", "wave", "current_wave", "waves", "target", "strategy", "state", "progress"] {
            assert!(rollout.get(f).is_some(), "Rollout.{f}");
        }
        assert!(props("ErrorDetail").get("field").is_some());
        assert!(props("ErrorBody").get("error").is_some());
        for name in [
            "Device",
            "RegisterDevice",
            "RegisteredDevice",
            "BulkRegister",
            "BulkRegistered",
            "UpdateDevice",
            "Release",
            "CreateRelease",
            "Artifact",
            "CreateRollout",
            "Action",
            "WaveProgress",
            "Event",
            "CreateToken",
            "CreatedToken",
            "CreateEnrollmentToken",
            "EnrollmentToken",
            "DeployResponse",
            "Job",
            "UpdateStatusResponse",
            "RollbackResponse",
            "Health",
        ] {
            assert!(schemas.get(name).is_some(), "schema {name} missing from the OpenAPI document");
        }
        // Optional request fields stay optional in the document.
        let required = schemas["CreateRollout"]["required"].as_array().cloned().unwrap_or_default();
        assert!(required.is_empty(), "CreateRollout requires {required:?}");
        // The rollout answer is what the rollout paths return.
        let get = &doc["paths"]["/api/v1/rollouts/{id}"]["get"]["responses"]["200"]["content"]["application/json"];
        assert_eq!(get["schema"]["$ref"], "#/components/schemas/Rollout");
    }
}

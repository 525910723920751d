//! Probes for orchestrators: `/healthz` (the process answers) and `/readyz`
//! (this replica can serve: the database answers, its schema is this
//! binary's, writes get the database's lock, the caches are warm). Neither needs a token. `GET /` stays the
//! tracker's health answer (`compat::health`).

use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How long `/readyz` waits for the database.
const DB_TIMEOUT: Duration = Duration::from_secs(2);

/// Liveness: 200 whenever the process can answer at all.
#[utoipa::path(get, operation_id = "healthz", path = "/healthz",
    responses((status = 200, description = "`{\"status\": \"alive\"}`", body = Object)), tag = "meta")]
pub async fn healthz() -> Response {
    Json(json!({"status": "alive"})).into_response()
}

/// Readiness: 200 with every check `ok`, else 503 naming what is not ready
/// (`{"status": "not_ready", "not_ready": ["database"], "checks": {...}}`).
#[utoipa::path(get, operation_id = "readyz", path = "/readyz",
    responses((status = 200, description = "ready: every check `ok`", body = Object),
        (status = 503, description = "not ready: `not_ready` names the checks that failed", body = Object)),
    tag = "meta")]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let mut checks = Map::new();
    let mut not_ready = Vec::new();
    let mut check = |name: &str, result: Result<(), String>| {
        match result {
            Ok(()) => checks.insert(name.into(), Value::from("ok")),
            Err(e) => {
                not_ready.push(name.to_string());
                checks.insert(name.into(), Value::from(e))
            }
        };
    };
    let db = match tokio::time::timeout(DB_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", DB_TIMEOUT.as_secs())),
    };
    let db_ok = db.is_ok();
    check("database", db);
    let migrations = if db_ok {
        match tokio::time::timeout(DB_TIMEOUT, state.store.missing_migrations()).await {
            Ok(Ok(missing)) if missing.is_empty() => Ok(()),
            Ok(Ok(missing)) => Err(format!("not applied: {missing:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} s", DB_TIMEOUT.as_secs())),
        }
    } else {
        Err("database unavailable".into())
    };
    check("migrations", migrations);
    let writes = state.store.write_health();
    check(
        "database_writes",
        match writes.stuck_since {
            None => Ok(()),
            Some(since) => Err(format!(
                "a write has waited {:.1} s for the database lock, which no writer of this replica holds \
                 (being healed; healed {} time(s) so far)",
                (otafleet_store::now_ms() - since) as f64 / 1000.0,
                writes.heals
            )),
        },
    );
    let warm = state.warm.load(Ordering::Acquire);
    check("caches", if warm { Ok(()) } else { Err("not warmed yet".into()) });
    let ready = not_ready.is_empty();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "not_ready": not_ready,
        "checks": checks,
        "replica": state.leader.replica,
        "leader": state.leader.is_leader(),
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

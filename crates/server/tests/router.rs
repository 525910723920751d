//! Handlers through `http::router` with `tower::ServiceExt::oneshot`: the
//! whole HTTP surface, no socket. The store is a real SQLite database.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use otafleet_server::{http::router, AppState, Config};
use otafleet_store::Store;
use serde_json::{json, Value};
use tower::ServiceExt;

struct App {
    state: AppState,
    token: String,
    _dir: tempfile::TempDir,
}

async fn app() -> App {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("t.db").display())).await.unwrap();
    let token = otafleet_server::bootstrap_admin(&store, None).await.unwrap().unwrap();
    App { state: AppState::new(store, Config::default()), token, _dir: dir }
}

async fn call(app: &App, method: &str, uri: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = match body {
        Some(b) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let res = router(app.state.clone()).oneshot(req.body(body).unwrap()).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    let v = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
    (status, v)
}

#[tokio::test]
async fn errors_are_json_and_name_the_field() {
    let app = app().await;
    let (s, v) = call(&app, "GET", "/api/v1/devices", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "unauthorized");
    let (s, v) = call(
        &app,
        "POST",
        "/api/v1/rollouts",
        Some(&app.token),
        Some(json!({"version": "9.9.9", "selector": "", "strategy": {"preset": "purple"}})),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["error"]["field"].as_str().unwrap().starts_with("strategy"), "{v}");
}

#[tokio::test]
async fn a_rollout_created_through_the_router_is_stored_with_its_preset() {
    let app = app().await;
    for i in 0..3 {
        let (s, v) = call(
            &app,
            "POST",
            "/api/v1/devices",
            Some(&app.token),
            Some(json!({"name": format!("d{i}"), "labels": {"device_type": "esp32"}, "current_version": "1.0.0"})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    // The tracker's verb, then the management API's view of the same rollout.
    let (s, job) = call(&app, "POST", "/ota/deploy?version=2.0.0&wave=blue", Some(&app.token), None).await;
    assert!(s.is_success(), "{s} {job}");
    assert_eq!(job["wave"], "blue");
    let (s, r) = call(&app, "GET", &format!("/api/v1/rollouts/{}", job["job_id"]), Some(&app.token), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["preset"], "blue");
    assert_eq!(r["wave"], "blue", "the tracker's word stays for existing clients");
    assert_eq!(r["current_wave"], 0);
    assert_eq!(r["progress"][0]["total"], 2, "blue defaults to 2 devices: {r}");
    let stored = app.state.store.get_rollout(job["job_id"].as_i64().unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.preset, otafleet_core::Preset::Blue);
    assert_eq!(stored.kind, otafleet_core::RolloutKind::Deploy);
    let (s, jobs) = call(&app, "GET", "/ota/jobs", Some(&app.token), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(jobs[0]["wave"], "blue");
}

#[tokio::test]
async fn probes_say_alive_always_and_ready_only_when_warm() {
    let app = app().await;
    let (s, v) = call(&app, "GET", "/healthz", None, None).await;
    assert_eq!((s, &v["status"]), (StatusCode::OK, &json!("alive")));
    // Caches not warmed yet: not ready, and the answer says why.
    let (s, v) = call(&app, "GET", "/readyz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["not_ready"], json!(["caches"]), "{v}");
    assert_eq!(v["checks"]["database"], "ok");
    assert_eq!(v["checks"]["migrations"], "ok");
    otafleet_server::service::delivery::warm(&app.state).await.unwrap();
    let (s, v) = call(&app, "GET", "/readyz", None, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "ready");
    // The tracker's health answer is still there.
    let (s, _) = call(&app, "GET", "/", None, None).await;
    assert_eq!(s, StatusCode::OK);
    // The database gone: alive, but not ready.
    app.state.store.close().await;
    let (s, _) = call(&app, "GET", "/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = call(&app, "GET", "/readyz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["not_ready"], json!(["database", "migrations"]), "{v}");
}

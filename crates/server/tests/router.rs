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
    // Invalid UTF-8 in a query is refused, not stored as U+FFFD.
    let (s, v) = call(&app, "POST", "/ota/deploy?version=%ff%fe&wave=canary", Some(&app.token), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["field"], "version");
    assert!(app.state.store.rollout_summaries().await.unwrap().is_empty(), "nothing was stored");
    assert!(app.state.store.get_release_by_version("\u{fffd}\u{fffd}").await.unwrap().is_none());
    // A body is an object: serde would build the struct from an array of its fields.
    let (s, v) = call(&app, "POST", "/api/v1/devices", Some(&app.token), Some(json!([null, null]))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["message"], "body: expected a JSON object");
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
    // The driver runs this job (it has devices): an outside status word is refused.
    let uri = format!("/ota/update_status?job_id={}&status=complete", job["job_id"]);
    let (s, v) = call(&app, "POST", &uri, Some(&app.token), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("rollout driver"), "{v}");
    assert_eq!(app.state.store.get_rollout(stored.id).await.unwrap().unwrap().state, stored.state);
}

/// A tracker job with no device of ours belongs to an external executor: the
/// driver neither fails it (a gate over zero devices) nor reads it on every pass.
#[tokio::test]
async fn jobs_of_an_external_executor_are_left_to_it() {
    let app = app().await;
    let (s, job) = call(&app, "POST", "/ota/deploy?version=3.0.0&wave=green", Some(&app.token), None).await;
    assert!(s.is_success(), "{s} {job}");
    let id = job["job_id"].as_i64().unwrap();
    assert!(app.state.store.drivable_rollouts().await.unwrap().is_empty(), "parked jobs cost the driver nothing");
    let (s, v) =
        call(&app, "POST", &format!("/ota/update_status?job_id={id}&status=running"), Some(&app.token), None).await;
    assert!(s.is_success(), "{s} {v}");
    let mut idle = otafleet_server::driver::IdleUntil::new();
    let fence = app
        .state
        .store
        .acquire_or_renew_lease(
            otafleet_store::DRIVER_LEASE,
            "t",
            std::time::Duration::from_secs(60),
            otafleet_store::now_ms(),
        )
        .await
        .unwrap()
        .expect("the lease is free");
    otafleet_server::driver::pass(&app.state, &mut idle, &fence, otafleet_server::driver::Scope::All).await.unwrap();
    let r = app.state.store.get_rollout(id).await.unwrap().unwrap();
    assert_eq!(r.state, otafleet_core::RolloutState::Running, "the executor said running; the driver did not fail it");
    let (s, _) =
        call(&app, "POST", &format!("/ota/update_status?job_id={id}&status=complete"), Some(&app.token), None).await;
    assert!(s.is_success());
    assert_eq!(app.state.store.get_rollout(id).await.unwrap().unwrap().state, otafleet_core::RolloutState::Succeeded);
}

#[tokio::test]
async fn a_rollout_that_would_reach_no_device_is_refused_saying_why() {
    let app = app().await;
    for (i, v) in ["2.0.0", "2.0.0", "1.0.0"].iter().enumerate() {
        let body = json!({"name": format!("d{i}"), "labels": {"device_type": if i < 2 { "esp32" } else { "rpi" }}, "current_version": v});
        assert_eq!(call(&app, "POST", "/api/v1/devices", Some(&app.token), Some(body)).await.0, StatusCode::CREATED);
    }
    let (s, _) = call(
        &app,
        "POST",
        "/api/v1/releases",
        Some(&app.token),
        Some(json!({"version": "2.0.0", "compatible": ["esp32"]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) =
        call(&app, "POST", "/api/v1/rollouts", Some(&app.token), Some(json!({"version": "2.0.0", "selector": ""})))
            .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["field"], "selector");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("3 targeted") && msg.contains("2 already on 2.0.0") && msg.contains("1 of a device type"),
        "{msg}"
    );
    assert!(app.state.store.rollout_summaries().await.unwrap().is_empty(), "nothing stored");
    // The tracker's deploy keeps such a job for an external executor, as it always did.
    let (s, job) = call(&app, "POST", "/ota/deploy?version=2.0.0&wave=green", Some(&app.token), None).await;
    assert!(s.is_success(), "{s} {job}");
    assert_eq!(job["status"], "pending");
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

async fn token(app: &App, role: &str, extra: Value) -> (i64, String) {
    let mut body = json!({"name": format!("{role}-t"), "role": role});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let (s, v) = call(app, "POST", "/api/v1/tokens", Some(&app.token), Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    (v["id"].as_i64().unwrap(), v["token"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn token_lifecycle_roles_and_revocation_through_the_cache() {
    let app = app().await;
    let (op_id, op) = token(&app, "operator", json!({})).await;
    let (_, viewer) = token(&app, "viewer", json!({"expires_in_secs": 3600})).await;

    // Roles: admin manages API tokens; operator manages enrollment tokens; viewer neither.
    for t in [&op, &viewer] {
        let (s, _) = call(&app, "GET", "/api/v1/tokens", Some(t), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
    }
    let (s, _) = call(&app, "GET", "/api/v1/enrollment-tokens", Some(&viewer), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = call(&app, "GET", "/api/v1/enrollment-tokens", Some(&op), None).await;
    assert_eq!(s, StatusCode::OK);

    // Listing shows the lifecycle, never a secret.
    let (s, list) = call(&app, "GET", "/api/v1/tokens", Some(&app.token), None).await;
    assert_eq!(s, StatusCode::OK);
    let text = list.to_string();
    assert!(!text.contains(&op) && !text.contains(&viewer) && !text.contains(&app.token), "{text}");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(items[0]["bootstrap"].as_bool().unwrap());
    assert!(items[2]["expires_at"].is_string() && items[1]["expires_at"].is_null(), "{list}");
    assert!(items.iter().all(|t| t["state"] == "active" && t.get("token").is_none()));

    // Bad input names the field.
    let (s, v) = call(
        &app,
        "POST",
        "/api/v1/tokens",
        Some(&app.token),
        Some(json!({"name": "x", "role": "viewer", "expires_in_secs": 0})),
    )
    .await;
    assert_eq!((s, v["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("expires_in_secs")));
    let (s, v) =
        call(&app, "POST", "/api/v1/tokens", Some(&app.token), Some(json!({"name": "x", "role": "root"}))).await;
    assert_eq!((s, v["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("role")));

    // The operator's token is cached by a request, then revoked: the next request is a 401.
    let (s, _) = call(&app, "GET", "/api/v1/devices", Some(&op), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = call(&app, "POST", &format!("/api/v1/tokens/{op_id}/revoke"), Some(&app.token), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "revoked");
    let (s, _) = call(&app, "GET", "/api/v1/devices", Some(&op), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = call(&app, "GET", &format!("/api/v1/tokens/{op_id}"), Some(&app.token), None).await;
    assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("revoked")));
    assert!(v["last_used_at"].is_string() || v["last_used_at"].is_null());
    let (s, _) = call(&app, "POST", "/api/v1/tokens/999/revoke", Some(&app.token), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_operator_rotates_a_device_token() {
    let app = app().await;
    let (_, op) = token(&app, "operator", json!({})).await;
    let (_, viewer) = token(&app, "viewer", json!({})).await;
    let (s, d) = call(&app, "POST", "/api/v1/devices", Some(&op), Some(json!({"name": "d", "labels": {}}))).await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    let (id, old) = (d["id"].as_str().unwrap().to_string(), d["token"].as_str().unwrap().to_string());
    let checkin = Some(json!({"current_version": "1.0.0"}));
    let (s, _) = call(&app, "POST", "/device/v1/checkin", Some(&old), checkin.clone()).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&app, "POST", &format!("/api/v1/devices/{id}/token"), Some(&viewer), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = call(&app, "POST", &format!("/api/v1/devices/{id}/token"), Some(&op), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let new = v["token"].as_str().unwrap().to_string();
    let (s, _) = call(&app, "POST", "/device/v1/checkin", Some(&old), checkin.clone()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the old device token is refused at once");
    let (s, _) = call(&app, "POST", "/device/v1/checkin", Some(&new), checkin).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&app, "POST", &format!("/api/v1/devices/{}/token", uuid_nil()), Some(&op), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

fn uuid_nil() -> &'static str {
    "00000000-0000-0000-0000-000000000000"
}

#[tokio::test]
async fn release_input_is_refused_naming_the_field() {
    let app = app().await;
    let sha = "ab".repeat(32);
    let art = |name: &str, uri: &str| json!({"name": name, "uri": uri, "size": 1, "sha256": sha, "signature": null});
    let ok = art("a.bin", "https://cdn.example/a.bin");
    let cases: Vec<(Value, &str)> = vec![
        (json!([ok, ok]), "artifacts[1].name"),
        (json!([ok, art("b", "https://x/b"), art("..", "https://x/c")]), "artifacts[2].name"),
        (json!([art("a/b", "https://x/b")]), "artifacts[0].name"),
        (json!([art(".env", "https://x/b")]), "artifacts[0].name"),
        (json!([art("a\u{202E}b", "https://x/b")]), "artifacts[0].name"),
        (json!([art(&"n".repeat(129), "https://x/b")]), "artifacts[0].name"),
        (json!([art("a", "file:///etc/passwd")]), "artifacts[0].uri"),
        (json!([art("a", "http://cdn/a")]), "artifacts[0].uri"),
        (json!([art("a", "/device/v1/artifacts/../../etc/passwd")]), "artifacts[0].uri"),
        (json!([art("a", &format!("/device/v1/artifacts/{}", "0".repeat(64)))]), "artifacts[0].uri"),
        (json!([{"name": "a", "uri": "https://x/a", "size": -1, "sha256": sha}]), "artifacts[0].size"),
        (json!([{"name": "a", "uri": "https://x/a", "size": 1i64 << 41, "sha256": sha}]), "artifacts[0].size"),
        (
            json!([{"name": "a", "uri": "https://x/a", "size": 1, "sha256": sha, "signature": "s".repeat(1025)}]),
            "artifacts[0].signature",
        ),
        (Value::Array((0..65).map(|i| art(&format!("a{i}"), "https://x/a")).collect()), "artifacts"),
    ];
    for (i, (artifacts, field)) in cases.into_iter().enumerate() {
        let body = json!({"version": format!("1.{i}"), "artifacts": artifacts});
        let (s, v) = call(&app, "POST", "/api/v1/releases", Some(&app.token), Some(body)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "case {i}: {v}");
        assert_eq!(v["error"]["field"], field, "case {i}: {v}");
    }
    let (s, v) = call(
        &app,
        "POST",
        "/api/v1/releases",
        Some(&app.token),
        Some(json!({"version": "x", "signature": "s".repeat(1025)})),
    )
    .await;
    assert_eq!((s, v["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("signature")), "{v}");
    let (s, v) = call(&app, "GET", "/api/v1/releases", Some(&app.token), None).await;
    assert_eq!((s, v["items"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)), "nothing was stored: {v}");
    // The good ones: https, and the server's own path naming the artifact's digest.
    let own = art("own.bin", &format!("/device/v1/artifacts/{sha}"));
    let (s, v) = call(
        &app,
        "POST",
        "/api/v1/releases",
        Some(&app.token),
        Some(json!({"version": "2.0", "artifacts": [ok, own], "signature": "MEUCIQ=="})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

async fn delegate(app: &App, name: &str) -> (String, String) {
    let (s, v) =
        call(app, "POST", "/api/v1/delegates", Some(&app.token), Some(json!({"name": name, "kind": "cluster"}))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    (v["id"].as_str().unwrap().to_string(), v["token"].as_str().unwrap().to_string())
}

fn entry(id: &str, name: &str, version: &str) -> Value {
    json!({"device_id": id, "name": name, "labels": {"cluster": "a", "kind": "deployment"}, "current_version": version})
}

/// A delegate's token: its own devices only, in batches; nothing else.
#[tokio::test]
async fn a_delegate_speaks_for_its_own_devices_only() {
    let app = app().await;
    let (a_id, a) = delegate(&app, "cluster-a").await;
    let (_, b) = delegate(&app, "cluster-b").await;
    let (s, v) = call(
        &app,
        "POST",
        "/api/v1/delegates",
        Some(&app.token),
        Some(json!({"name": "cluster-a", "kind": "cluster"})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) =
        call(&app, "POST", "/api/v1/delegates", Some(&app.token), Some(json!({"name": "x", "kind": "robot"}))).await;
    assert_eq!((s, v["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("kind")), "{v}");

    let ids = ["00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"];
    let inv = json!({"devices": [entry(ids[0], "robot-0", "1.0.0"), entry(ids[1], "robot-1", "1.0.0")]});
    let (s, v) = call(&app, "PUT", "/delegate/v1/inventory", Some(&a), Some(inv.clone())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["registered"].as_u64(), v["unchanged"].as_u64()), (Some(2), Some(0)), "{v}");
    let (s, v) = call(&app, "PUT", "/delegate/v1/inventory", Some(&a), Some(inv)).await;
    assert_eq!((s, v["unchanged"].as_u64()), (StatusCode::OK, Some(2)), "{v}");
    let (s, d) = call(&app, "GET", &format!("/api/v1/devices/{}", ids[0]), Some(&app.token), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!((d["delegate_id"].as_str(), d["current_version"].as_str()), (Some(a_id.as_str()), Some("1.0.0")));

    // Not the management API (403), not the device API (401), not another delegate's devices.
    let (s, v) = call(&app, "GET", "/api/v1/devices", Some(&a), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("/delegate/v1"), "{v}");
    let (s, _) = call(&app, "POST", "/device/v1/checkin", Some(&a), Some(json!({}))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let checkin = json!({"devices": [{"device_id": ids[1], "current_version": "1.0.0"}]});
    let (s, v) = call(&app, "POST", "/delegate/v1/checkin", Some(&b), Some(checkin.clone())).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"]["field"], "devices[0].device_id");
    let (s, v) =
        call(&app, "PUT", "/delegate/v1/inventory", Some(&b), Some(json!({"devices": [entry(ids[0], "x", "1")]})))
            .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let report =
        json!({"reports": [{"device_id": ids[0], "report": {"action_id": 1, "seq": 1, "state": "installing"}}]});
    let (s, v) = call(&app, "POST", "/delegate/v1/status", Some(&b), Some(report.clone())).await;
    assert_eq!((s, v["error"]["field"].as_str()), (StatusCode::NOT_FOUND, Some("reports[0].device_id")), "{v}");
    // Its own device, but no such action: that report is refused, by name.
    let (s, v) = call(&app, "POST", "/delegate/v1/status", Some(&a), Some(report)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["acks"][0]["outcome"], "refused", "{v}");
    let (s, v) = call(&app, "POST", "/delegate/v1/checkin", Some(&a), Some(checkin)).await;
    assert_eq!((s, v["actions"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)), "{v}");
    let bad = json!({"devices": [{"device_id": ids[0], "current_version": "bad version"}]});
    let (s, v) = call(&app, "POST", "/delegate/v1/checkin", Some(&a), Some(bad)).await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("devices[0].current_version"))
    );

    // A device the delegate no longer lists is gone, not deleted, and no target.
    let (s, v) = call(
        &app,
        "PUT",
        "/delegate/v1/inventory",
        Some(&a),
        Some(json!({"devices": [entry(ids[0], "robot-0", "1.0.0")]})),
    )
    .await;
    assert_eq!(v["gone"], json!([ids[1]]), "{s} {v}");
    let (_, d) = call(&app, "GET", &format!("/api/v1/devices/{}", ids[1]), Some(&app.token), None).await;
    assert!(d["gone_at"].is_string(), "{d}");
    let release = json!({"version": "2.0.0", "kind": "container", "image": "robot:2.0.0"});
    let (s, v) = call(&app, "POST", "/api/v1/releases", Some(&app.token), Some(release)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, r) = call(
        &app,
        "POST",
        "/api/v1/rollouts",
        Some(&app.token),
        Some(json!({"version": "2.0.0", "selector": "cluster=a", "strategy": {"preset": "green"}})),
    )
    .await;
    assert!(s.is_success(), "{s} {r}");
    assert_eq!(r["progress"][0]["total"], 1, "only the device still there: {r}");
    // The delegate relays its device's order, signed for that device; another's is 404.
    let (_, acts) = call(&app, "GET", &format!("/api/v1/rollouts/{}/actions", r["id"]), Some(&app.token), None).await;
    let action = acts["items"][0]["id"].as_i64().unwrap();
    let path = format!("/delegate/v1/devices/{}/actions/{action}", ids[0]);
    let (s, v) = call(&app, "GET", &path, Some(&a), None).await;
    assert_eq!((s, v["action_id"].as_i64()), (StatusCode::OK, Some(action)), "{v}");
    assert_eq!(v["version"], "2.0.0");
    let (s, _) = call(&app, "GET", &path, Some(&b), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another delegate's device");
    let (s, _) = call(&app, "GET", &format!("/delegate/v1/devices/{}/actions/{action}", ids[1]), Some(&a), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "its device, but not that device's action");

    // Revoked: refused at once.
    let (s, v) = call(&app, "POST", &format!("/api/v1/delegates/{a_id}/revoke"), Some(&app.token), None).await;
    assert_eq!((s, v["state"].as_str(), v["devices"].as_u64()), (StatusCode::OK, Some("revoked"), Some(2)), "{v}");
    let (s, _) = call(&app, "POST", "/delegate/v1/checkin", Some(&a), Some(json!({"devices": []}))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn container_and_firmware_releases_name_what_a_delegate_applies() {
    let app = app().await;
    let digest = format!("registry.local:5000/robot@sha256:{}", "a".repeat(64));
    let (s, v) = call(
        &app,
        "POST",
        "/api/v1/releases",
        Some(&app.token),
        Some(json!({"version": "2.0.0", "kind": "container", "image": digest})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["image"], digest.as_str());
    let fw =
        json!({"version": "3.0.0", "kind": "firmware", "firmware": "fw/esp32:3.0.0", "flash_pod_image": "flasher:1"});
    let (s, v) = call(&app, "POST", "/api/v1/releases", Some(&app.token), Some(fw)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!((v["firmware"].as_str(), v["flash_pod_image"].as_str()), (Some("fw/esp32:3.0.0"), Some("flasher:1")));
    for (body, field) in [
        (json!({"version": "4", "kind": "container", "image": "Robot:latest"}), "image"),
        (json!({"version": "4", "kind": "container", "image": "robot", "flash_pod_image": "f"}), "firmware"),
        (json!({"version": "4", "kind": "firmware", "firmware": "fw"}), "flash_pod_image"),
        (
            json!({"version": "4", "kind": "firmware", "firmware": "fw", "flash_pod_image": "Bad Image"}),
            "flash_pod_image",
        ),
    ] {
        let (s, v) = call(&app, "POST", "/api/v1/releases", Some(&app.token), Some(body.clone())).await;
        assert_eq!((s, v["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some(field)), "{body}: {v}");
    }
    // An app release carries a spec `otafleet app` would accept, with the release's version.
    let spec = json!({"name": "nav", "image": "nav:1.0.0", "persistent_storage": {"volumes": [{"name": "logs", "size": "1Gi"}]}});
    let (s, v) = call(
        &app,
        "POST",
        "/api/v1/releases",
        Some(&app.token),
        Some(json!({"version": "5.0.0", "kind": "app", "app_spec": spec})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["app_spec"]["version"], "5.0.0", "{v}");
    for (body, field) in [
        (json!({"version": "6", "kind": "app"}), "app_spec"),
        (json!({"version": "6", "kind": "container", "image": "a", "app_spec": {"image": "a"}}), "app_spec"),
        (
            json!({"version": "6", "kind": "app", "app_spec": {"image": "a", "persistent_storage": {"volumes": [{"name": "l", "size": "5Gb"}]}}}),
            "app_spec.persistent_storage.volumes[0].size",
        ),
        (json!({"version": "6", "kind": "app", "app_spec": {"image": "a", "imagee": "b"}}), "app_spec.imagee"),
        (json!({"version": "6", "kind": "app", "app_spec": {"image": "a", "version": "7"}}), "app_spec.version"),
    ] {
        let (s, v) = call(&app, "POST", "/api/v1/releases", Some(&app.token), Some(body.clone())).await;
        assert_eq!((s, v["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some(field)), "{body}: {v}");
    }
}

//! The OpenAPI document is a contract: it validates (`openapi-spec-validator`,
//! when installed; CI installs it and sets `OTAFLEET_TEST_OPENAPI_VALIDATOR=1`
//! so it cannot be skipped there), it names every route the router serves and
//! nothing else, and every operation documents the errors its extractors give.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use otafleet_server::http::{route_paths, router};
use otafleet_server::{AppState, Config};
use otafleet_store::Store;
use serde_json::Value;
use std::collections::{BTreeSet, HashSet};
use tower::ServiceExt;

async fn state() -> (AppState, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("t.db").display())).await.unwrap();
    otafleet_server::bootstrap_admin(&store, None).await.unwrap();
    let config = Config { data_dir: dir.path().join("data"), ..Config::default() };
    (AppState::new(store, config), dir)
}

/// The document as the server serves it.
async fn served(state: &AppState) -> (Vec<u8>, Value) {
    let req = Request::get("/api/v1/openapi.json").body(Body::empty()).unwrap();
    let res = router(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(res.into_body(), 16 << 20).await.unwrap().to_vec();
    let doc = serde_json::from_slice(&bytes).unwrap();
    (bytes, doc)
}

const METHODS: [Method; 5] = [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE];

#[tokio::test]
async fn the_served_document_passes_openapi_spec_validator() {
    let required = std::env::var("OTAFLEET_TEST_OPENAPI_VALIDATOR").is_ok_and(|v| v == "1");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let available = std::process::Command::new(&python)
        .args(["-c", "import openapi_spec_validator"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        assert!(
            !required,
            "OTAFLEET_TEST_OPENAPI_VALIDATOR=1 but `{python} -m openapi_spec_validator` is not installed"
        );
        eprintln!(
            "SKIPPED openapi-spec-validator check: `pip install openapi-spec-validator` to run it \
             (OTAFLEET_TEST_OPENAPI_VALIDATOR=1 makes it mandatory)"
        );
        return;
    }
    let (state, dir) = state().await;
    let (bytes, _) = served(&state).await;
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &bytes).unwrap();
    let out = std::process::Command::new(&python)
        .args(["-m", "openapi_spec_validator", "--validation-errors", "all"])
        .arg(&file)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "openapi-spec-validator rejects the document:\n{text}");
    eprintln!("{}", text.trim());
}

/// A concrete URI for a path template (every parameter a plausible value).
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|seg| match seg {
            "{sha256}" => "0".repeat(64),
            s if s.starts_with('{') => "1".into(),
            s => s.into(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_route_of_the_router_is_in_the_document_and_nothing_else() {
    let (state, _dir) = state().await;
    let (_, doc) = served(&state).await;
    let paths = doc["paths"].as_object().expect("paths");
    let mut served_ops = BTreeSet::new();
    for template in route_paths() {
        let uri = concrete(template);
        let mut any = false;
        for m in METHODS {
            let req = Request::builder().method(m.clone()).uri(&uri).body(Body::empty()).unwrap();
            let status = router(state.clone()).oneshot(req).await.unwrap().status();
            if status != StatusCode::METHOD_NOT_ALLOWED {
                any = true;
                served_ops.insert((template.to_string(), m.as_str().to_ascii_lowercase()));
            }
        }
        assert!(any, "{template} answers no method");
    }
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(p, item)| {
            item.as_object()
                .into_iter()
                .flat_map(|o| o.keys())
                .filter(|k| METHODS.iter().any(|m| m.as_str().eq_ignore_ascii_case(k)))
                .map(move |k| (p.clone(), k.clone()))
        })
        .collect();
    let missing: Vec<_> = served_ops.difference(&documented).collect();
    assert!(missing.is_empty(), "served but not in the OpenAPI document: {missing:?}");
    let extra: Vec<_> = documented.difference(&served_ops).collect();
    assert!(extra.is_empty(), "in the OpenAPI document but not served: {extra:?}");
}

#[tokio::test]
async fn every_operation_documents_the_errors_of_its_inputs() {
    let (state, _dir) = state().await;
    let (_, doc) = served(&state).await;
    let mut ids = HashSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let name = format!("{method} {path}");
            let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{name}: no operationId"));
            assert!(ids.insert(id.to_string()), "{name}: operationId {id} is not unique");
            let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{name}: no responses"));
            let has = |code: &str| responses.contains_key(code);
            let needs = |codes: &[&str], why: &str| {
                for c in codes {
                    assert!(has(c), "{name} {why} but does not document {c}");
                }
            };
            if op["requestBody"]["content"].get("application/json").is_some() {
                needs(&["400", "413", "415", "422"], "takes a JSON body");
            }
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            for p in &params {
                let (pname, place) = (p["name"].as_str().unwrap(), p["in"].as_str().unwrap());
                if place == "path" {
                    assert!(
                        path.contains(&format!("{{{pname}}}")),
                        "{name}: path parameter {pname} is not in the path"
                    );
                }
            }
            if params.iter().any(|p| p["in"] == "query") {
                needs(&["422"], "takes query parameters");
            }
            let security = op["security"].as_array().cloned().unwrap_or_default();
            if security.iter().any(|s| s.get("bearer").is_some()) {
                needs(&["401"], "takes a token");
                if path.starts_with("/api/v1") || path.starts_with("/ota") {
                    needs(&["403"], "checks the token's role");
                }
            }
            let needs_token =
                path.starts_with("/device/v1") || (path.starts_with("/api/v1") && path != "/api/v1/openapi.json");
            if needs_token {
                assert!(!security.is_empty(), "{name} needs a token but declares no security");
            }
        }
    }
}

#[tokio::test]
async fn the_device_protocol_and_events_are_typed() {
    let (state, _dir) = state().await;
    let (_, doc) = served(&state).await;
    let schemas = &doc["components"]["schemas"];
    for name in [
        "CheckinRequest",
        "CheckinResponse",
        "StatusReport",
        "StatusAck",
        "EnrollRequest",
        "EnrollResponse",
        "ActionDetail",
        "Order",
    ] {
        assert!(schemas[name].is_object(), "schema {name} missing");
    }
    let checkin = &doc["paths"]["/device/v1/checkin"]["post"];
    assert_eq!(
        checkin["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CheckinRequest"
    );
    // The signed order's fields are documented on the action detail.
    let detail = schemas["ActionDetail"].to_string();
    assert!(detail.contains("signed_order") && detail.contains("order_signature"), "{detail}");
    // `device.deleted` is sent with `data: null`: the schema allows it.
    let data = schemas["Event"]["properties"]["data"].to_string();
    assert!(data.contains("null"), "Event.data must be nullable: {data}");
}

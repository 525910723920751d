//! The dashboard in a real headless Chromium (through chromedriver): sign
//! in, the fleet page's counts against the API, a rollout created from the
//! form whose wave progress moves without a reload as a simulated fleet
//! reports, pause from the button, a viewer without buttons whose forged
//! post is refused, a post without the CSRF token refused, a hostile device
//! name shown as text. Screenshots of every page go to
//! `$CARGO_TARGET_TMPDIR/ui-screenshots/`.

mod common;

use common::browser::Browser;
use common::*;
use serde_json::json;
use std::time::Duration;

const XSS: &str = "<script>alert(1)</script>";

#[test]
fn dashboard_in_a_real_browser() {
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    let Some(b) = Browser::start(&shots) else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&sqlite_url(&dir), &["--poll-interval-secs", "1"]);
    let h = Http::new(&s.url);

    // A fleet: 12 simulated devices, and one with a hostile name.
    let mut sim = spawn_sim(
        &s.url,
        &["--devices", "12", "--poll-ms", "200", "--latency", "400", "--labels", "device_type=robot"],
    );
    let body = json!({"name": XSS, "labels": {"device_type": "esp32"}}).to_string();
    assert_eq!(h.post("/api/v1/devices", Some(ADMIN), Some(&body)).status, 201);
    assert_eq!(h.post("/api/v1/releases", Some(ADMIN), Some(r#"{"version":"2.0.0"}"#)).status, 201);
    let viewer = h.post("/api/v1/tokens", Some(ADMIN), Some(r#"{"name":"watcher","role":"viewer"}"#));
    let viewer = viewer.body["token"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(30), || {
        (h.get("/api/v1/devices?limit=100", Some(ADMIN)).body["items"].as_array()?.len() == 13).then_some(())
    });

    // Sign in.
    b.goto(&format!("{}/ui/", s.url));
    b.find("#login");
    b.screenshot("01-sign-in");
    b.type_into("#token", ADMIN);
    b.click("#login button");
    b.find("#count-total");
    let api_total = h.get("/api/v1/devices?limit=1000", Some(ADMIN)).body["items"].as_array().unwrap().len();
    assert_eq!(b.text("#count-total"), api_total.to_string());
    assert_eq!(b.text("td[data-count=robot]"), "12");
    b.screenshot("02-fleet");

    // The hostile name is text, not markup.
    b.goto(&format!("{}/ui/devices?q=script", s.url));
    assert_eq!(b.text("#devices tbody td a"), XSS);
    assert_eq!(b.count("#devices script"), 0);
    b.screenshot("03-devices");
    b.click("#devices tbody td a");
    b.find("dl.facts");
    b.screenshot("04-device");

    // A rollout from the form: a canary, then everyone after a long bake.
    b.goto(&format!("{}/ui/rollouts/new", s.url));
    b.type_into("#selector", "device_type=robot");
    b.wait_for("the live selector count", Duration::from_secs(10), || {
        (b.text("#selector-count") == "12 matching devices").then_some(())
    });
    b.click("#preset-custom");
    b.type_into("#steps", "1, 100%");
    b.type_into("#bake_time", "1h");
    b.screenshot("05-new-rollout");
    b.click("#new-rollout button[type=submit]");
    b.find("#live");
    let id: i64 = b.url().rsplit('/').next().unwrap().parse().unwrap();
    b.wait_for("the stream to open", Duration::from_secs(10), || {
        (b.script("return document.body.dataset.stream || ''", json!([])) == "open").then_some(())
    });
    b.script("window.__same_page = true", json!([]));
    let succeeded = || b.script("return document.querySelector('tr[data-wave=\"0\"]').dataset.succeeded", json!([]));
    b.wait_for("wave 1 to succeed on the page", Duration::from_secs(60), || (succeeded() == "1").then_some(()));
    assert_eq!(b.script("return window.__same_page === true", json!([])), true, "updated without a reload");
    b.screenshot("06-rollout-live");

    // Pause from the button; the API agrees.
    b.click("button[data-command=pause]");
    b.wait_for("the paused badge", Duration::from_secs(10), || b.try_find("#state .s-paused"));
    let state = h.get(&format!("/api/v1/rollouts/{id}"), Some(ADMIN)).body["state"].clone();
    if state != "paused" {
        // Seen once in CI: say what the rollout went through.
        let events = h.get(&format!("/api/v1/events?rollout_id={id}&limit=1000"), Some(ADMIN)).body;
        let kinds: Vec<String> = events["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"].as_str().unwrap().starts_with("rollout."))
            .map(|e| format!("{} {} {} {}", e["id"], e["kind"], e["actor"], e["data"]))
            .collect();
        panic!("the page says paused, the API says {state}; the rollout's events: {kinds:#?}");
    }
    b.screenshot("07-rollout-paused");
    assert_eq!(b.count("button[data-command=pause]"), 0, "paused: no pause button");
    assert_eq!(b.count("button[data-command=resume]"), 1, "paused: a resume button");

    // A post without the CSRF token is refused, and changes nothing.
    let status = b.script_async(
        "fetch(arguments[0], {method: 'POST', credentials: 'same-origin', \
            headers: {'content-type': 'application/x-www-form-urlencoded'}, body: 'csrf='}) \
         .then(r => arguments[1](r.status))",
        json!([format!("/ui/rollouts/{id}/resume")]),
    );
    assert_eq!(status, 403);
    assert_eq!(h.get(&format!("/api/v1/rollouts/{id}"), Some(ADMIN)).body["state"], "paused");

    for (path, name) in [
        ("/ui/releases", "08-releases"),
        ("/ui/releases/1", "09-release"),
        ("/ui/jobs", "10-jobs"),
        ("/ui/events", "11-events"),
    ] {
        b.goto(&format!("{}{path}", s.url));
        b.find("main h1");
        b.screenshot(name);
    }
    // Keyboard only: the first Tab reaches the skip link, Enter on a nav link
    // follows it; every control on these pages has a label.
    for path in ["/ui/", "/ui/devices", "/ui/rollouts/new", "/ui/jobs", "/ui/events", &format!("/ui/rollouts/{id}")] {
        b.goto(&format!("{}{path}", s.url));
        b.find("main");
        let unlabelled = b.script(
            "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')] \
               .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') \
                            && !(e.tagName === 'BUTTON' && e.textContent.trim())) \
               .map(e => e.outerHTML)",
            json!([]),
        );
        assert_eq!(unlabelled, json!([]), "controls without a label on {path}");
    }
    b.goto(&format!("{}/ui/", s.url));
    b.find("main");
    const TAB: &str = "\u{E004}";
    b.press(TAB);
    assert_eq!(b.script("return document.activeElement.textContent", json!([])), "Skip to content");
    let mut steps = 0;
    while b.script("return document.activeElement.textContent", json!([])) != "Devices" {
        b.press(TAB);
        steps += 1;
        assert!(steps < 10, "the Devices link is reached by Tab");
    }
    b.press("\u{E007}");
    b.wait_for("the devices page", Duration::from_secs(10), || b.url().ends_with("/ui/devices").then_some(()));

    b.window(390, 844);
    b.goto(&format!("{}/ui/rollouts/{id}", s.url));
    b.find("#live");
    b.screenshot("12-rollout-phone");
    b.window(1280, 800);

    // A viewer: no buttons, and a forged post with the viewer's own valid
    // CSRF token is refused by the role check.
    b.delete_cookies();
    b.goto(&format!("{}/ui/login", s.url));
    b.type_into("#token", &viewer);
    b.click("#login button");
    b.find("#count-total");
    b.goto(&format!("{}/ui/rollouts/{id}", s.url));
    b.find("#live");
    assert_eq!(b.count("button[data-command]"), 0);
    b.goto(&format!("{}/ui/rollouts", s.url));
    assert_eq!(b.count("a[href='/ui/rollouts/new']"), 0);
    b.screenshot("13-rollouts-as-viewer");
    let status = b.script_async(
        "const csrf = document.querySelector('input[name=csrf]').value; \
         fetch(arguments[0], {method: 'POST', credentials: 'same-origin', \
            headers: {'content-type': 'application/x-www-form-urlencoded'}, body: 'csrf=' + csrf}) \
         .then(r => arguments[1](r.status))",
        json!([format!("/ui/rollouts/{id}/resume")]),
    );
    assert_eq!(status, 403);
    assert_eq!(h.get(&format!("/api/v1/rollouts/{id}"), Some(ADMIN)).body["state"], "paused");
    // The API takes no change on the cookie alone.
    let status = b.script_async(
        "fetch(arguments[0], {method: 'POST', credentials: 'same-origin'}).then(r => arguments[1](r.status))",
        json!([format!("/api/v1/rollouts/{id}/resume")]),
    );
    assert_eq!(status, 401);

    let _ = sim.kill();
    let _ = sim.wait();
}

/// What the fleet measures, in the dashboard: a hot canary's analysis
/// checks with their numbers on the rollout page (the API's numbers, live),
/// the alert its temperature fires on the alerts page and counted on the
/// fleet page.
#[test]
fn analysis_and_alerts_in_a_real_browser() {
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    let Some(b) = Browser::start(&shots) else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&sqlite_url(&dir), &[&["--poll-interval-secs", "1"][..], &QUICK_TELEMETRY].concat());
    let h = Http::new(&s.url);
    let fleet = "--devices 8 --poll-ms 200 --latency 20 --labels device_type=robot --metric cpu_temp_c=normal(60,1.5) \
                 --metric-version 2.2.0:cpu_temp_c=normal(85,1.5) --metric-interval-ms 300";
    let mut sim = spawn_sim(&s.url, &fleet.split_whitespace().collect::<Vec<_>>());
    let rule = json!({"name": "robot-hot", "metric": "cpu_temp_c", "agg": "max", "window_secs": 60, "op": ">",
                      "threshold": 80, "selector": "device_type=robot", "severity": "critical"});
    assert_eq!(h.post("/api/v1/alerts/rules", Some(ADMIN), Some(&rule.to_string())).status, 201);
    assert_eq!(h.post("/api/v1/releases", Some(ADMIN), Some(r#"{"version":"2.2.0"}"#)).status, 201);
    eventually(Duration::from_secs(30), || {
        (h.get("/api/v1/devices?limit=100", Some(ADMIN)).body["items"].as_array()?.len() == 8).then_some(())
    });
    // Let the fleet's baseline gather before the canary runs hot.
    std::thread::sleep(Duration::from_secs(2));
    let strategy = json!({
        "steps": [1, "100%"],
        "analysis": [
            {"name": "temp-vs-baseline", "kind": "metric", "metric": "cpu_temp_c", "agg": "p95", "window_secs": 5,
             "condition": {"op": "<=", "factor": 1.1}, "initial_delay_secs": 3, "interval_secs": 1, "count": 2,
             "min_samples": 3},
            {"name": "no-critical-alerts", "kind": "no_firing_alerts", "min_severity": "critical",
             "initial_delay_secs": 30, "interval_secs": 1}
        ]
    });
    let body = json!({"version": "2.2.0", "selector": "device_type=robot", "strategy": strategy});
    let r = h.post("/api/v1/rollouts", Some(ADMIN), Some(&body.to_string()));
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_i64().unwrap();

    b.goto(&format!("{}/ui/login", s.url));
    b.type_into("#token", ADMIN);
    b.click("#login button");
    b.find("#count-total");
    b.goto(&format!("{}/ui/rollouts/{id}", s.url));
    b.find("#live");
    // The relative check fails on the page, without a reload, with the API's numbers.
    let verdict = || {
        b.script(
            "return document.querySelector('#analysis tr[data-check=\"temp-vs-baseline\"]')?.dataset.verdict || ''",
            json!([]),
        )
    };
    b.wait_for("the analysis to fail on the page", Duration::from_secs(60), || (verdict() == "failed").then_some(()));
    let api = h.get(&format!("/api/v1/rollouts/{id}"), Some(ADMIN)).body;
    let check = &api["analysis"][0];
    assert_eq!(check["verdict"], "failed", "{api}");
    let observed = check["last"]["observed"].as_f64().unwrap();
    let threshold = check["last"]["threshold"].as_f64().unwrap();
    assert!(observed > threshold && check["last"]["baseline"].as_f64().unwrap() * 1.1 - threshold < 1e-9, "{check}");
    let row = "#analysis tr[data-check=\"temp-vs-baseline\"]";
    let page_observed: f64 = b
        .script(&format!("return document.querySelector('{row}').dataset.observed"), json!([]))
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(page_observed, observed);
    assert_eq!(b.text(&format!("{row} td:nth-child(2)")), "p95 of cpu_temp_c over 5 s <= 1.1 × baseline");
    assert_eq!(b.text(&format!("{row} td.observed")), otafleet_core::analysis::num(observed));
    // The second check never ran: the first failed the wave.
    b.wait_for("the rollout to end on the page", Duration::from_secs(60), || {
        let v = b.script(
            "return document.querySelector('#analysis tr[data-check=\"no-critical-alerts\"]').dataset.verdict",
            json!([]),
        );
        (v == "cancelled").then_some(())
    });
    b.screenshot("14-rollout-analysis");
    let overflow = "return document.documentElement.scrollWidth - document.documentElement.clientWidth";
    assert_eq!(b.script(overflow, json!([])), 0, "the rollout page fits its width");
    // Loaded again once it ended: only the commands the core still accepts
    // (an ended rollout is not paused, resumed, promoted or aborted).
    b.goto(&format!("{}/ui/rollouts/{id}", s.url));
    b.find("#live");
    for cmd in ["pause", "resume", "promote", "abort"] {
        assert_eq!(b.count(&format!("button[data-command={cmd}]")), 0, "{cmd} on an ended rollout");
    }

    // The canary's temperature fires the rule: the alerts page and the fleet page say so.
    b.wait_for("the alert to fire", Duration::from_secs(30), || {
        b.goto(&format!("{}/ui/alerts", s.url));
        (b.text("#alerts-firing") == "1").then_some(())
    });
    let api = h.get("/api/v1/alerts?state=firing", Some(ADMIN)).body;
    let device = api["items"][0]["device_id"].as_str().unwrap().to_string();
    assert_eq!(b.text("span[data-severity=critical]"), "1");
    assert_eq!(b.count("#alerts tbody tr[data-state=firing]"), 1);
    let link = b.script(
        "return document.querySelector('#alerts tbody tr[data-state=firing] a').getAttribute('href')",
        json!([]),
    );
    assert_eq!(link, format!("/ui/devices/{device}"));
    assert_eq!(b.text("#rules tbody tr td:first-child"), "robot-hot");
    b.screenshot("15-alerts");
    assert_eq!(b.script(overflow, json!([])), 0, "the alerts page fits its width");
    b.goto(&format!("{}/ui/", s.url));
    assert_eq!(b.text("#count-firing"), "1");
    let unlabelled = b.script(
        "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')] \
           .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') \
                        && !(e.tagName === 'BUTTON' && e.textContent.trim())).length",
        json!([]),
    );
    assert_eq!(unlabelled, 0);
    b.screenshot("16-fleet-with-alerts");
    assert_eq!(b.script(overflow, json!([])), 0, "the fleet page fits its width");
    let _ = sim.kill();
    let _ = sim.wait();
}

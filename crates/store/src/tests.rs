//! One suite, run on SQLite and (when `OTAFLEET_TEST_POSTGRES_URL` is set) on
//! PostgreSQL, so both engines are held to the same behaviour.

use super::*;
use otafleet_core::engine::Decision;
use otafleet_core::plan::{plan, Candidate};
use otafleet_core::protocol::StatusReport;
use otafleet_core::{ActionState, Preset, RolloutState, Selector, StrategySpec};
use std::collections::BTreeMap;
use uuid::Uuid;

async fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    (Store::connect(&url).await.unwrap(), dir)
}

async fn postgres() -> Option<Store> {
    match std::env::var("OTAFLEET_TEST_POSTGRES_URL") {
        Ok(base) if !base.is_empty() => {
            let url = fresh_postgres_database(&base).await.unwrap();
            Some(Store::connect(&url).await.unwrap())
        }
        _ => {
            eprintln!("SKIPPED PostgreSQL store suite: set OTAFLEET_TEST_POSTGRES_URL to run it");
            None
        }
    }
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let (s, _dir) = super::sqlite().await;
                super::$name(s).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(s) = super::postgres().await {
                    super::$name(s).await;
                }
            }
        }
    };
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn dev(i: u128, pairs: &[(&str, &str)]) -> NewDevice {
    NewDevice {
        id: Uuid::from_u128(i),
        name: format!("dev-{i}"),
        labels: labels(pairs),
        current_version: Some("1.0.0".into()),
        token: Some(format!("tok-{i}")),
    }
}

both!(devices_crud_and_selectors);
async fn devices_crud_and_selectors(s: Store) {
    s.insert_devices(
        &[
            dev(1, &[("device_type", "esp32"), ("site", "a")]),
            dev(2, &[("device_type", "esp32"), ("site", "b")]),
            dev(3, &[("device_type", "rpi"), ("site", "a")]),
        ],
        "test",
    )
    .await
    .unwrap();
    // A duplicate in a batch rejects the whole batch and changes nothing.
    let err = s.insert_devices(&[dev(4, &[]), dev(1, &[])], "test").await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(ref m) if m.contains("00000000-0000-0000-0000-000000000001")), "{err}");
    assert!(s.get_device(Uuid::from_u128(4)).await.unwrap().is_none());

    let q = |sel: &str| DeviceQuery { selector: Selector::parse(sel).unwrap(), limit: 100, ..Default::default() };
    let ids = |v: Vec<Device>| v.into_iter().map(|d| d.id.as_u128()).collect::<Vec<_>>();
    assert_eq!(ids(s.list_devices(&q("device_type=esp32,site in (a,b)")).await.unwrap()), vec![1, 2]);
    assert_eq!(ids(s.list_devices(&q("site!=a")).await.unwrap()), vec![2]);
    assert_eq!(ids(s.list_devices(&q("device_type notin (esp32)")).await.unwrap()), vec![3]);
    assert_eq!(ids(s.list_devices(&q("!site")).await.unwrap()), Vec::<u128>::new());
    assert_eq!(s.count_devices(&Selector::parse("site=a").unwrap()).await.unwrap(), 2);
    // Pagination by cursor.
    let page =
        s.list_devices(&DeviceQuery { after: Some(Uuid::from_u128(1)), limit: 1, ..Default::default() }).await.unwrap();
    assert_eq!(ids(page), vec![2]);

    let d =
        s.set_device_labels(Uuid::from_u128(3), &labels(&[("device_type", "esp32")]), "test").await.unwrap().unwrap();
    assert_eq!(d.labels.get("device_type").map(String::as_str), Some("esp32"));
    assert_eq!(ids(s.list_devices(&q("device_type=esp32")).await.unwrap()), vec![1, 2, 3]);
    assert!(s.set_device_labels(Uuid::from_u128(99), &labels(&[]), "t").await.unwrap().is_none());

    assert_eq!(s.find_device_by_token("tok-2").await.unwrap().unwrap().id, Uuid::from_u128(2));
    assert!(s.find_device_by_token("nope").await.unwrap().is_none());
    assert!(s.delete_device(Uuid::from_u128(2), "test").await.unwrap());
    assert!(!s.delete_device(Uuid::from_u128(2), "test").await.unwrap());
    let kinds: Vec<String> = s
        .list_events(&EventQuery { limit: 100, ..Default::default() })
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind.as_str().to_string())
        .collect();
    assert_eq!(kinds, vec!["device.registered", "device.labels_updated", "device.deleted"]);
}

both!(selectors_read_what_the_core_matches);
/// Every query a selector drives (a page walked by cursor, a sorted page, a
/// count, a rollout's targets) returns exactly the devices the core's matcher
/// accepts, whichever requirement the store drives the query from.
async fn selectors_read_what_the_core_matches(s: Store) {
    let mut x: u64 = 7;
    let mut next = |n: u64| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) % n
    };
    let mut news = Vec::new();
    for i in 1..=300u128 {
        let mut pairs = Vec::new();
        for (key, n) in [("device_type", 3), ("site", 4), ("group", 5)] {
            let v = next(n + 1);
            if v < n {
                pairs.push((key.to_string(), format!("{}{v}", &key[..1])));
            }
        }
        let mut d = dev(i, &[]);
        d.labels = pairs.into_iter().collect();
        news.push(d);
    }
    s.insert_devices(&news, "t").await.unwrap();
    for sel in [
        "",
        "site=s1",
        "site=s1,device_type=d0",
        "device_type=d2,site in (s0,s3),group!=g1",
        "group=g4,!site",
        "site in (s1,s2)",
        "site in (s1,s2),group=g0,device_type",
        "device_type notin (d0),site=s3",
        "group=g2,group=g3",
        "site=nowhere",
    ] {
        let selector = Selector::parse(sel).unwrap();
        let want: Vec<u128> = news.iter().filter(|d| selector.matches(&d.labels)).map(|d| d.id.as_u128()).collect();
        let mut got = Vec::new();
        let mut after = None;
        loop {
            let q = DeviceQuery { selector: selector.clone(), after, limit: 7, ..Default::default() };
            let page = s.list_devices(&q).await.unwrap();
            got.extend(page.iter().map(|d| d.id.as_u128()));
            match page.last() {
                Some(d) if page.len() == 7 => after = Some(d.id),
                _ => break,
            }
        }
        assert_eq!(got, want, "paged by cursor: {sel}");
        let q = DeviceQuery { selector: selector.clone(), limit: 5, offset: 2, descending: true, ..Default::default() };
        let page: Vec<u128> = s.list_devices(&q).await.unwrap().iter().map(|d| d.id.as_u128()).collect();
        assert_eq!(
            page,
            want.iter().rev().skip(2).take(5).copied().collect::<Vec<_>>(),
            "id descending, offset: {sel}"
        );
        let q = DeviceQuery {
            selector: selector.clone(),
            limit: 1000,
            sort: DeviceSort::Name,
            descending: true,
            ..Default::default()
        };
        let mut by_name: Vec<&NewDevice> = news.iter().filter(|d| selector.matches(&d.labels)).collect();
        by_name.sort_by(|a, b| b.name.cmp(&a.name));
        let names: Vec<String> = s.list_devices(&q).await.unwrap().into_iter().map(|d| d.name).collect();
        assert_eq!(names, by_name.iter().map(|d| d.name.clone()).collect::<Vec<_>>(), "sorted by name: {sel}");
        assert_eq!(s.count_devices(&selector).await.unwrap(), want.len() as i64, "count: {sel}");
        let targets = s.target_devices(&selector).await.unwrap();
        assert_eq!(targets.iter().map(|d| d.id.as_u128()).collect::<Vec<_>>(), want, "targets: {sel}");
        // Read in chunks (one at the boundary, several, one that ends full).
        for chunk in [1, 7, want.len().max(1) as i64] {
            assert_eq!(s.target_devices_in_chunks(&selector, chunk).await.unwrap(), targets, "{sel} by {chunk}");
        }
        for t in &targets {
            let d = news.iter().find(|d| d.id == t.id).unwrap();
            assert_eq!(t.device_type.as_ref(), d.labels.get("device_type"), "device type of {}", t.id);
        }
    }
}

both!(bulk_registration_is_all_or_none_across_statements);
/// A request larger than one statement's chunk is still one transaction: a
/// device that exists, found in a later chunk, leaves nothing of the request.
async fn bulk_registration_is_all_or_none_across_statements(s: Store) {
    s.insert_devices(&[dev(9_000, &[("site", "x")])], "t").await.unwrap();
    let news: Vec<NewDevice> = (1..=9_000u128).map(|i| dev(i, &[("site", "a"), ("group", "g")])).collect();
    let err = s.insert_devices(&news, "t").await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(ref m) if m.contains(&Uuid::from_u128(9_000).to_string())), "{err}");
    assert_eq!(s.count_devices(&Selector::default()).await.unwrap(), 1);
    assert_eq!(s.count_devices(&Selector::parse("site=a").unwrap()).await.unwrap(), 0);
    let stored = s.insert_devices(&news[..8_999], "t").await.unwrap();
    assert_eq!(stored.len(), 8_999);
    assert_eq!(s.count_devices(&Selector::parse("site=a,group=g").unwrap()).await.unwrap(), 8_999);
    let d = s.get_device(Uuid::from_u128(6_001)).await.unwrap().unwrap();
    assert_eq!(d.labels, labels(&[("group", "g"), ("site", "a")]));
    assert_eq!(d.current_version.as_deref(), Some("1.0.0"));
    assert_eq!(s.find_device_by_token("tok-6001").await.unwrap().map(|d| d.id), Some(d.id));
}

both!(telemetry_windows_merge_and_are_read_by_selector);
/// Two flushes into one window add up (as two replicas' would); windows are
/// read for the devices a selector matches, in a time range; retention
/// deletes by resolution and age.
async fn telemetry_windows_merge_and_are_read_by_selector(s: Store) {
    use otafleet_core::telemetry::{Agg, Aggregate};
    s.insert_devices(&[dev(1, &[("site", "a")]), dev(2, &[("site", "b")])], "t").await.unwrap();
    let win = |d: u128, bucket: i64, values: &[f64]| {
        let mut agg = Aggregate::new();
        for (i, v) in values.iter().enumerate() {
            agg.add(*v, bucket + i as i64);
        }
        TelemetryWindow {
            device_id: Uuid::from_u128(d),
            metric: "cpu_temp_c".into(),
            version: "1.0.0".into(),
            width_ms: 60_000,
            bucket,
            agg,
        }
    };
    assert_eq!(s.merge_telemetry(&[win(1, 0, &[50.0, 60.0]), win(2, 0, &[70.0])]).await.unwrap(), 2);
    // A second flush for the same window, and one flush holding two parts of one window.
    assert_eq!(
        s.merge_telemetry(&[win(1, 0, &[80.0]), win(1, 60_000, &[1.0]), win(1, 60_000, &[3.0])]).await.unwrap(),
        2
    );
    let all = s.telemetry_windows("cpu_temp_c", 60_000, 0, 120_000, &Selector::default(), 100).await.unwrap();
    assert_eq!(all.len(), 3);
    let first = &all.iter().find(|w| w.window.device_id == Uuid::from_u128(1) && w.window.bucket == 0).unwrap().window;
    assert_eq!(first.agg.value(Agg::Count), Some(3.0));
    assert_eq!(first.agg.value(Agg::Max), Some(80.0));
    assert_eq!(first.agg.value(Agg::Min), Some(50.0));
    let second = &all.iter().find(|w| w.window.bucket == 60_000).unwrap().window;
    assert_eq!(second.agg.value(Agg::Sum), Some(4.0));
    let site_b =
        s.telemetry_windows("cpu_temp_c", 60_000, 0, 120_000, &Selector::parse("site=b").unwrap(), 100).await.unwrap();
    assert_eq!(site_b.len(), 1);
    assert_eq!(site_b[0].window.device_id, Uuid::from_u128(2));
    assert_eq!(site_b[0].labels.get("site").map(String::as_str), Some("b"));
    assert!(s
        .telemetry_windows("cpu_temp_c", 60_000, 60_000, 120_000, &Selector::parse("site=b").unwrap(), 100)
        .await
        .unwrap()
        .is_empty());
    assert!(s.telemetry_windows("other", 60_000, 0, 120_000, &Selector::default(), 100).await.unwrap().is_empty());
    // Alert candidates compare the extremes kept beside the aggregate, as
    // merged: device 1's window 0 has max 80 and min 50 after both flushes.
    use crate::telemetry::{CandidateField, WindowRange};
    let span = WindowRange { metric: "cpu_temp_c", width_ms: 60_000, from: 0, to: 120_000 };
    let all = Selector::default();
    let (d1, d2) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let hot = |t| s.alert_candidates(&all, &span, 0, CandidateField::MaxAbove, t, None, 100);
    assert_eq!(hot(75.0).await.unwrap(), vec![d1]);
    assert_eq!(hot(65.0).await.unwrap(), vec![d1, d2]);
    assert_eq!(hot(80.0).await.unwrap(), vec![d1], "at the threshold is a candidate");
    assert!(hot(81.0).await.unwrap().is_empty());
    let cold = s.alert_candidates(&all, &span, 0, CandidateField::MinBelow, 2.0, None, 100).await.unwrap();
    assert_eq!(cold, vec![d1], "device 1's second window has min 1");
    let site_b = Selector::parse("site=b").unwrap();
    assert!(s.alert_candidates(&site_b, &span, 0, CandidateField::MaxAbove, 75.0, None, 100).await.unwrap().is_empty());
    // Silent: the latest sample of device 2 is at 0 ms, of device 1 at 60,001 ms.
    let silent = s.alert_candidates(&all, &span, 0, CandidateField::MaxAbove, 1e9, Some(60_000), 100).await.unwrap();
    assert_eq!(silent, vec![d2]);
    assert_eq!(s.prune_telemetry(60_000, 60_000).await.unwrap(), 2);
    assert_eq!(
        s.telemetry_windows("cpu_temp_c", 60_000, 0, 120_000, &Selector::default(), 100).await.unwrap().len(),
        1
    );
}

both!(target_devices_read_what_planning_needs);
async fn target_devices_read_what_planning_needs(s: Store) {
    let mut no_type = dev(3, &[("site", "a")]);
    no_type.current_version = None;
    s.insert_devices(&[dev(1, &[("device_type", "esp32"), ("site", "a")]), dev(2, &[("site", "b")]), no_type], "t")
        .await
        .unwrap();
    let all = s.target_devices(&Selector::default()).await.unwrap();
    assert_eq!(all.iter().map(|d| d.id.as_u128()).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(all[0].device_type.as_deref(), Some("esp32"));
    assert_eq!(all[0].current_version.as_deref(), Some("1.0.0"));
    assert_eq!(all[1].device_type, None);
    assert_eq!(all[2].current_version, None);
    let site_a = s.target_devices(&Selector::parse("site=a").unwrap()).await.unwrap();
    assert_eq!(site_a.iter().map(|d| d.id.as_u128()).collect::<Vec<_>>(), vec![1, 3]);
    // By id: unknown ids are absent, and more ids than one statement binds are read in chunks.
    let mut ids: Vec<Uuid> = (1000..2200).map(Uuid::from_u128).collect();
    ids.push(Uuid::from_u128(2));
    let found = s.target_devices_by_id(&ids).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0], all[1]);
}

both!(releases_and_tokens);
async fn releases_and_tokens(s: Store) {
    let new = NewRelease {
        name: "fw".into(),
        version: "2.0.0".into(),
        kind: otafleet_core::ReleaseKind::Firmware,
        compatible: vec!["esp32".into()],
        signature: None,
        artifacts: vec![Artifact {
            name: "fw.bin".into(),
            uri: "https://x/fw.bin".into(),
            size: 10,
            sha256: "ab".repeat(32),
            signature: None,
        }],
        ..Default::default()
    };
    let r = s.insert_release(&new, "t").await.unwrap();
    assert!(matches!(s.insert_release(&new, "t").await, Err(StoreError::Conflict(_))));
    let got = s.get_release_by_version("2.0.0").await.unwrap().unwrap();
    assert_eq!(got.artifacts, new.artifacts);
    assert_eq!(s.get_release(r.id).await.unwrap().unwrap().version, "2.0.0");
    let e = s.ensure_release("3.0.0", "t").await.unwrap();
    assert_eq!(s.ensure_release("3.0.0", "t").await.unwrap().id, e.id);
    assert_eq!(s.list_releases(None, 10).await.unwrap().len(), 2);

    assert_eq!(s.count_tokens().await.unwrap(), 0);
    s.create_token("ci", Role::Viewer, "secret-1").await.unwrap();
    assert_eq!(s.find_token("secret-1").await.unwrap().unwrap().role, Role::Viewer);
    assert!(s.find_token("secret-2").await.unwrap().is_none());
}

async fn make_rollout(s: &Store, n: u128, spec: StrategySpec) -> Rollout {
    let devices: Vec<NewDevice> = (1..=n).map(|i| dev(i, &[("device_type", "esp32")])).collect();
    s.insert_devices(&devices, "t").await.unwrap();
    let release = s.ensure_release("2.0.0", "t").await.unwrap();
    let strategy = spec.resolve(1).unwrap();
    let cands = devices.iter().map(|d| Candidate { id: d.id, online: true, healthy: true }).collect();
    let p = plan(cands, &strategy);
    let from_versions = devices.iter().map(|d| (d.id, d.current_version.clone())).collect();
    s.create_rollout(NewRollout {
        release: &release,
        kind: otafleet_core::RolloutKind::Deploy,
        target: Target::Selector("device_type=esp32".into()),
        strategy,
        start_at: None,
        actor: "t",
        plan: p,
        from_versions,
    })
    .await
    .unwrap()
}

/// The driver's lease for the tests' single holder, valid for any test time.
async fn lead(s: &Store) -> Fence {
    s.acquire_or_renew_lease(DRIVER_LEASE, "test", std::time::Duration::from_secs(1 << 40), 0).await.unwrap().unwrap()
}

async fn drive(s: &Store, id: i64, now: i64) -> Vec<Decision> {
    let fence = lead(s).await;
    let mut out = Vec::new();
    loop {
        let d = s.drive_step(id, now, &fence).await.unwrap().decision;
        if matches!(d, Decision::Idle { .. }) {
            return out;
        }
        out.push(d);
    }
}

fn report(action_id: i64, seq: i64, state: ActionState) -> StatusReport {
    StatusReport { action_id, seq, state, message: None, current_version: None }
}

both!(rollout_runs_through_waves_with_idempotent_reports);
async fn rollout_runs_through_waves_with_idempotent_reports(s: Store) {
    let spec: StrategySpec = serde_json::from_str(r#"{"steps":[1,"100%"]}"#).unwrap();
    let r = make_rollout(&s, 4, spec).await;
    assert_eq!((r.state, r.waves), (RolloutState::Pending, 2));
    let ds = drive(&s, r.id, 1000).await;
    assert_eq!(ds, vec![Decision::Start, Decision::Release { count: 1 }]);
    let active = s
        .list_actions(&ActionQuery {
            rollout_id: Some(r.id),
            state: Some(ActionState::Notified),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(active.len(), 1);
    let a = &active[0];
    // Check-in hands out the action; the device reports progress.
    let c = s.checkin(a.device_id, Some("1.0.0"), None, 1001).await.unwrap();
    assert_eq!(c.action.as_ref().map(|x| x.id), Some(a.id));
    assert_eq!(
        s.report_status(a.device_id, &report(a.id, 1, ActionState::Downloading), 1002).await.unwrap().0,
        ReportOutcome::Applied
    );
    assert_eq!(
        s.report_status(a.device_id, &report(a.id, 1, ActionState::Downloading), 1003).await.unwrap().0,
        ReportOutcome::Duplicate
    );
    // A report about someone else's action is refused.
    let other = Uuid::from_u128(if a.device_id.as_u128() == 1 { 2 } else { 1 });
    assert!(matches!(
        s.report_status(other, &report(a.id, 5, ActionState::Succeeded), 1003).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        s.report_status(a.device_id, &report(a.id, 3, ActionState::Succeeded), 1004).await.unwrap().0,
        ReportOutcome::Applied
    );
    // Out of order: seq 2 arrives after seq 3: stale, ignored.
    assert_eq!(
        s.report_status(a.device_id, &report(a.id, 2, ActionState::Installing), 1005).await.unwrap().0,
        ReportOutcome::Duplicate
    );
    assert_eq!(s.get_device(a.device_id).await.unwrap().unwrap().current_version.as_deref(), Some("2.0.0"));

    let ds = drive(&s, r.id, 2000).await;
    assert!(matches!(ds[0], Decision::GatePassed { .. }));
    assert_eq!(ds[1], Decision::NextWave { from: 0 });
    assert_eq!(ds[2], Decision::Release { count: 3 });
    for a in s
        .list_actions(&ActionQuery {
            rollout_id: Some(r.id),
            state: Some(ActionState::Notified),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
    {
        s.report_status(a.device_id, &report(a.id, 1, ActionState::Succeeded), 2100).await.unwrap();
    }
    let ds = drive(&s, r.id, 3000).await;
    assert!(matches!(ds.last(), Some(Decision::Succeed { .. })), "{ds:?}");
    let r = s.get_rollout(r.id).await.unwrap().unwrap();
    assert_eq!(r.state, RolloutState::Succeeded);
    let p = s.wave_progress(r.id).await.unwrap();
    assert_eq!((p[0].succeeded, p[1].succeeded), (1, 3));
    assert_eq!(s.count_succeeded_installs().await.unwrap(), 4);
    // Succeeded is final for operator moves.
    assert!(matches!(s.set_rollout_state(r.id, RolloutState::Running, None, "t").await, Err(StoreError::Conflict(_))));
}

both!(batched_reports_keep_each_outcome_and_refusals_leave_no_trace);
async fn batched_reports_keep_each_outcome_and_refusals_leave_no_trace(s: Store) {
    let spec: StrategySpec = serde_json::from_str(r#"{"steps":["100%"],"retries":0}"#).unwrap();
    let r = make_rollout(&s, 3, spec).await;
    assert_eq!(drive(&s, r.id, 1000).await[..2], [Decision::Start, Decision::Release { count: 3 }]);
    let acts = s.list_actions(&ActionQuery { rollout_id: Some(r.id), limit: 10, ..Default::default() }).await.unwrap();
    let (a, b, c) = (&acts[0], &acts[1], &acts[2]);
    let stranger = Uuid::from_u128(999);
    let events_before =
        s.list_events(&EventQuery { rollout_id: Some(r.id), limit: 1000, ..Default::default() }).await.unwrap();
    let batch = vec![
        (a.device_id, report(a.id, 1, ActionState::Succeeded)),
        // Someone else's action: refused, and nothing of it is stored.
        (stranger, report(b.id, 1, ActionState::Succeeded)),
        // The same report twice in one batch: the second is a duplicate.
        (c.device_id, report(c.id, 1, ActionState::Installing)),
        (c.device_id, report(c.id, 1, ActionState::Installing)),
        (c.device_id, report(c.id, 2, ActionState::Failed)),
        (a.device_id, report(a.id, 2, ActionState::Downloading)),
    ];
    let out = s.report_statuses(&batch, 1100).await.unwrap();
    let outcomes: Vec<_> = out.iter().map(|o| o.as_ref().map(|(x, _)| *x).map_err(|e| e.to_string())).collect();
    assert_eq!(outcomes[0], Ok(ReportOutcome::Applied));
    assert!(matches!(out[1], Err(StoreError::NotFound(_))), "{outcomes:?}");
    assert_eq!(outcomes[2], Ok(ReportOutcome::Applied));
    assert_eq!(outcomes[3], Ok(ReportOutcome::Duplicate));
    assert_eq!(outcomes[4], Ok(ReportOutcome::Applied));
    // a already succeeded: a later step back is recorded as ignored.
    assert_eq!(outcomes[5], Ok(ReportOutcome::Ignored));
    assert_eq!(s.get_action(a.id).await.unwrap().unwrap().state, ActionState::Succeeded);
    assert_eq!(s.get_action(b.id).await.unwrap().unwrap().state, ActionState::Notified);
    assert_eq!(s.get_device(a.device_id).await.unwrap().unwrap().current_version.as_deref(), Some("2.0.0"));
    // The failed report went through the retry policy (no retries: failed).
    assert_eq!(s.get_action(c.id).await.unwrap().unwrap().state, ActionState::Failed);
    let events =
        s.list_events(&EventQuery { rollout_id: Some(r.id), limit: 1000, ..Default::default() }).await.unwrap();
    let new: Vec<_> =
        events.iter().filter(|e| !events_before.iter().any(|o| o.id == e.id)).map(|e| e.kind.as_str()).collect();
    let mut kinds = new.clone();
    kinds.sort_unstable();
    assert_eq!(kinds, ["action.failed", "action.installing", "action.report_ignored", "action.succeeded"], "{new:?}");
    assert!(events.iter().all(|e| e.action_id != Some(b.id) || events_before.iter().any(|o| o.id == e.id)));
}

/// A batch stores exactly what the same reports store one by one: actions,
/// devices and events (the batch buffers its writes; see `report_writes`).
async fn batch_stores_what_one_by_one_stores(one: Store, batched: Store) {
    let spec: StrategySpec = serde_json::from_str(r#"{"steps":["100%"],"retries":1,"backoff_secs":1}"#).unwrap();
    let (r1, r2) = (make_rollout(&one, 4, spec.clone()).await, make_rollout(&batched, 4, spec).await);
    drive(&one, r1.id, 1000).await;
    drive(&batched, r2.id, 1000).await;
    let q = |id| ActionQuery { rollout_id: Some(id), limit: 10, ..Default::default() };
    let acts = one.list_actions(&q(r1.id)).await.unwrap();
    assert_eq!(acts.len(), 4);
    let (a, b, c, d) = (&acts[0], &acts[1], &acts[2], &acts[3]);
    let with = |mut r: StatusReport, msg: Option<&str>, v: Option<&str>| {
        r.message = msg.map(str::to_string);
        r.current_version = v.map(str::to_string);
        r
    };
    let reports = vec![
        // a: every step, a message on one, versions on the way, success.
        (a.device_id, with(report(a.id, 1, ActionState::Downloading), Some("fetching"), None)),
        (a.device_id, with(report(a.id, 2, ActionState::Installing), None, Some("1.0.0"))),
        (b.device_id, with(report(b.id, 1, ActionState::Downloading), None, Some("1.5.0"))),
        (a.device_id, report(a.id, 3, ActionState::Verifying)),
        (a.device_id, with(report(a.id, 4, ActionState::Succeeded), None, Some("2.0.0"))),
        // b: a second device write in the batch, then a failure (retried: scheduled again).
        (b.device_id, with(report(b.id, 2, ActionState::Installing), None, Some("1.6.0"))),
        (b.device_id, with(report(b.id, 3, ActionState::Failed), Some("disk full"), Some("1.6.0"))),
        // c: duplicate, stale and a report after the end.
        (c.device_id, report(c.id, 2, ActionState::Installing)),
        (c.device_id, report(c.id, 1, ActionState::Downloading)),
        (c.device_id, report(c.id, 3, ActionState::Succeeded)),
        (c.device_id, report(c.id, 4, ActionState::Downloading)),
        // d: a step back is ignored.
        (d.device_id, report(d.id, 1, ActionState::Verifying)),
        (d.device_id, report(d.id, 2, ActionState::Downloading)),
    ];
    let mut seq_out = Vec::new();
    for (dev, r) in &reports {
        seq_out.push(one.report_status(*dev, r, 2000).await.map(|(o, a)| (o, a.state)).map_err(|e| e.to_string()));
    }
    let batch_out: Vec<_> = batched
        .report_statuses(&reports, 2000)
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.map(|(o, a)| (o, a.state)).map_err(|e| e.to_string()))
        .collect();
    assert_eq!(seq_out, batch_out);
    // Creation times are the wall clock's; everything after used the same `now`.
    let actions = |v: Vec<Action>| v.into_iter().map(|a| Action { created_at: 0, ..a }).collect::<Vec<_>>();
    assert_eq!(
        actions(one.list_actions(&q(r1.id)).await.unwrap()),
        actions(batched.list_actions(&q(r2.id)).await.unwrap())
    );
    for x in &acts {
        let (d1, d2) = (one.get_device(x.device_id).await.unwrap(), batched.get_device(x.device_id).await.unwrap());
        let key = |d: Option<Device>| d.map(|d| (d.current_version, d.previous_version, d.last_seen));
        assert_eq!(key(d1), key(d2), "device {}", x.device_id);
    }
    let events = |s: Store, id| async move {
        s.list_events(&EventQuery { rollout_id: Some(id), limit: 1000, ..Default::default() })
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind != otafleet_core::EventKind::RolloutCreated)
            .map(|e| (e.at, e.kind, e.device_id, e.action_id, e.actor, e.data))
            .collect::<Vec<_>>()
    };
    let (e1, e2) = (events(one.clone(), r1.id).await, events(batched.clone(), r2.id).await);
    assert_eq!(e1, e2);
    assert!(e1.iter().any(|e| e.1 == otafleet_core::EventKind::ActionReportIgnored));
    let fetching = e1.iter().find(|e| e.1 == otafleet_core::EventKind::ActionDownloading && e.3 == Some(a.id)).unwrap();
    assert_eq!((fetching.0, fetching.2, fetching.4.as_str()), (2000, Some(a.device_id), "device"));
    assert_eq!(
        fetching.5,
        serde_json::json!({"from": "notified", "to": "downloading", "kind": "install", "attempt": 1, "message": "fetching"})
    );
    let b_now = one.get_action(b.id).await.unwrap().unwrap();
    assert_eq!((b_now.state, b_now.error.as_deref()), (ActionState::Scheduled, Some("device: disk full")));
    assert_eq!(one.get_device(a.device_id).await.unwrap().unwrap().previous_version.as_deref(), Some("1.0.0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_stores_what_one_by_one_stores_sqlite() {
    let ((one, _d1), (batched, _d2)) = (sqlite().await, sqlite().await);
    batch_stores_what_one_by_one_stores(one, batched).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_stores_what_one_by_one_stores_postgres() {
    if let (Some(one), Some(batched)) = (postgres().await, postgres().await) {
        batch_stores_what_one_by_one_stores(one, batched).await;
    }
}

both!(failed_canary_is_rolled_back_and_timeouts_retry);
async fn failed_canary_is_rolled_back_and_timeouts_retry(s: Store) {
    let spec: StrategySpec =
        serde_json::from_str(r#"{"steps":[1,"100%"],"retries":1,"backoff_secs":1,"timeout_secs":10}"#).unwrap();
    let r = make_rollout(&s, 3, spec).await;
    drive(&s, r.id, 0).await;
    let a = s
        .list_actions(&ActionQuery {
            rollout_id: Some(r.id),
            state: Some(ActionState::Notified),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()[0]
        .clone();
    // No report within the timeout: retried after backoff.
    assert_eq!(s.expire_actions(10_000, 100, &lead(&s).await).await.unwrap().len(), 1);
    let a2 = s.get_action(a.id).await.unwrap().unwrap();
    assert_eq!((a2.state, a2.not_before), (ActionState::Scheduled, 11_000));
    assert_eq!(drive(&s, r.id, 10_500).await, vec![]);
    assert_eq!(drive(&s, r.id, 11_000).await, vec![Decision::Release { count: 1 }]);
    // Second attempt: the device installs, then later checks in with the old version.
    s.report_status(a.device_id, &report(a.id, 1, ActionState::Succeeded), 11_100).await.unwrap();
    s.checkin(a.device_id, Some("1.0.0"), None, 11_200).await.unwrap();
    let a3 = s.get_action(a.id).await.unwrap().unwrap();
    assert_eq!(a3.state, ActionState::Failed);
    assert!(a3.error.unwrap().contains("rolled back on its own"));
    let ds = drive(&s, r.id, 12_000).await;
    assert!(matches!(ds[0], Decision::Fail { .. }), "{ds:?}");
    // Nothing was installed successfully, so the rollback phase ends at once.
    assert_eq!(ds.last(), Some(&Decision::FinishRollback));
    let r2 = s.get_rollout(r.id).await.unwrap().unwrap();
    assert_eq!(r2.state, RolloutState::RolledBack);
    assert!(r2.rollback_requested);
    assert!(r2.reason.unwrap().contains("failure threshold"));
    let skipped = s
        .list_actions(&ActionQuery {
            rollout_id: Some(r.id),
            state: Some(ActionState::Skipped),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(skipped.len(), 2);
    let gate = s
        .list_events(&EventQuery {
            rollout_id: Some(r.id),
            kind: Some("rollout.failed".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(gate[0].data["gate"]["failed"], 1);
}

both!(abort_rolls_back_updated_devices);
async fn abort_rolls_back_updated_devices(s: Store) {
    let spec: StrategySpec = serde_json::from_str(r#"{"steps":["100%"]}"#).unwrap();
    let r = make_rollout(&s, 3, spec).await;
    drive(&s, r.id, 0).await;
    let acts = s.list_actions(&ActionQuery { rollout_id: Some(r.id), limit: 10, ..Default::default() }).await.unwrap();
    s.report_status(acts[0].device_id, &report(acts[0].id, 1, ActionState::Succeeded), 10).await.unwrap();
    s.set_rollout_state(r.id, RolloutState::Aborted, Some("operator"), "t").await.unwrap();
    let ds = drive(&s, r.id, 20).await;
    assert_eq!(ds, vec![Decision::CreateRollbacks { count: 1 }, Decision::ReleaseRollbacks { count: 1 }]);
    // The two other devices are still in flight; one finishes after the abort and is rolled back too.
    s.report_status(acts[1].device_id, &report(acts[1].id, 1, ActionState::Succeeded), 30).await.unwrap();
    s.report_status(acts[2].device_id, &report(acts[2].id, 1, ActionState::Failed), 30).await.unwrap();
    assert_eq!(
        drive(&s, r.id, 40).await,
        vec![Decision::CreateRollbacks { count: 1 }, Decision::ReleaseRollbacks { count: 1 }]
    );
    let rbs = s.list_actions(&ActionQuery { rollout_id: Some(r.id), limit: 10, ..Default::default() }).await.unwrap();
    let rbs: Vec<_> = rbs.into_iter().filter(|a| a.kind == otafleet_core::ActionKind::Rollback).collect();
    assert_eq!(rbs.len(), 2);
    for a in &rbs {
        assert_eq!(a.to_version, "1.0.0");
        let c = s.checkin(a.device_id, Some("2.0.0"), None, 50).await.unwrap();
        assert_eq!(c.action.unwrap().id, a.id);
        s.report_status(a.device_id, &report(a.id, 1, ActionState::Succeeded), 60).await.unwrap();
    }
    assert_eq!(drive(&s, r.id, 70).await, vec![Decision::FinishRollback]);
    assert_eq!(s.get_rollout(r.id).await.unwrap().unwrap().state, RolloutState::RolledBack);
    assert_eq!(s.get_device(rbs[0].device_id).await.unwrap().unwrap().current_version.as_deref(), Some("1.0.0"));
    let _ = Preset::Canary;
}

both!(failed_rollback_is_retried_through_scheduled_then_left_for_an_operator);
async fn failed_rollback_is_retried_through_scheduled_then_left_for_an_operator(s: Store) {
    // One retry, 1 s backoff: the first failed rollback is scheduled again and
    // released after the backoff; the second failure gives up.
    let spec: StrategySpec = serde_json::from_str(r#"{"steps":["100%"],"retries":1,"backoff_secs":1}"#).unwrap();
    let r = make_rollout(&s, 1, spec).await;
    drive(&s, r.id, 0).await;
    let install =
        s.list_actions(&ActionQuery { rollout_id: Some(r.id), limit: 10, ..Default::default() }).await.unwrap();
    s.report_status(install[0].device_id, &report(install[0].id, 1, ActionState::Succeeded), 10).await.unwrap();
    s.rollback_rollout(r.id, "t").await.unwrap();
    let ds = drive(&s, r.id, 20).await;
    assert_eq!(ds, vec![Decision::CreateRollbacks { count: 1 }, Decision::ReleaseRollbacks { count: 1 }]);
    let rollback =
        |acts: Vec<Action>| acts.into_iter().find(|a| a.kind == otafleet_core::ActionKind::Rollback).unwrap();
    let rb = rollback(
        s.list_actions(&ActionQuery { rollout_id: Some(r.id), limit: 10, ..Default::default() }).await.unwrap(),
    );
    assert_eq!((rb.state, rb.attempts), (ActionState::Notified, 1));
    s.report_status(rb.device_id, &report(rb.id, 1, ActionState::Failed), 30).await.unwrap();
    let rb = s.get_action(rb.id).await.unwrap().unwrap();
    assert_eq!(rb.state, ActionState::Scheduled, "a failed rollback goes back through scheduled, a legal move");
    assert_eq!(rb.not_before, 1_030);
    assert_eq!(drive(&s, r.id, 500).await, Vec::<Decision>::new(), "the retry waits for its backoff");
    assert_eq!(drive(&s, r.id, 1_030).await, vec![Decision::ReleaseRollbacks { count: 1 }]);
    let rb = s.get_action(rb.id).await.unwrap().unwrap();
    assert_eq!((rb.state, rb.attempts), (ActionState::Notified, 2));
    s.report_status(rb.device_id, &report(rb.id, 2, ActionState::Failed), 1_100).await.unwrap();
    let rb = s.get_action(rb.id).await.unwrap().unwrap();
    assert_eq!(rb.state, ActionState::Failed, "out of retries");
    let failed = s
        .list_events(&EventQuery {
            rollout_id: Some(r.id),
            kind: Some("action.failed".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.last().unwrap().data["needs_operator"], true);
    assert_eq!(drive(&s, r.id, 1_200).await, vec![Decision::FinishRollback]);
    assert_eq!(s.get_rollout(r.id).await.unwrap().unwrap().state, RolloutState::RolledBack);
}

both!(a_live_lease_is_exclusive_and_a_lapsed_one_is_taken_with_a_larger_token);
async fn a_live_lease_is_exclusive_and_a_lapsed_one_is_taken_with_a_larger_token(s: Store) {
    let ttl = std::time::Duration::from_secs(10);
    let a = s.acquire_or_renew_lease("driver", "a", ttl, 1_000).await.unwrap().expect("a free lease is taken");
    assert_eq!((a.holder.as_str(), a.token, a.expires_at), ("a", 1, 11_000));
    // Someone else cannot take it while it is live, even a moment before it lapses.
    assert_eq!(s.acquire_or_renew_lease("driver", "b", ttl, 5_000).await.unwrap(), None);
    assert_eq!(s.acquire_or_renew_lease("driver", "b", ttl, 10_999).await.unwrap(), None);
    // Its holder renews it: same token, later expiry.
    let a = s.acquire_or_renew_lease("driver", "a", ttl, 10_000).await.unwrap().unwrap();
    assert_eq!((a.token, a.expires_at), (1, 20_000));
    assert_eq!(s.lease_holder("driver", 19_999).await.unwrap().map(|f| f.holder), Some("a".into()));
    assert_eq!(s.lease_holder("driver", 20_000).await.unwrap(), None, "lapsed");
    // Lapsed: another holder takes it, with a larger token; the old holder is out.
    let b = s.acquire_or_renew_lease("driver", "b", ttl, 20_000).await.unwrap().expect("a lapsed lease is taken");
    assert_eq!((b.holder.as_str(), b.token, b.expires_at), ("b", 2, 30_000));
    assert_eq!(s.acquire_or_renew_lease("driver", "a", ttl, 21_000).await.unwrap(), None);
    // Only the current holder with the current token can release it; the row
    // stays, so the next holding gets a larger token again.
    assert!(!s.release_lease("driver", "a", 1).await.unwrap());
    assert!(!s.release_lease("driver", "b", 1).await.unwrap());
    assert!(s.release_lease("driver", "b", 2).await.unwrap());
    let a = s.acquire_or_renew_lease("driver", "a", ttl, 21_000).await.unwrap().expect("released: free at once");
    assert_eq!(a.token, 3);
    // Leases are independent by name.
    let other = s.acquire_or_renew_lease("other", "b", ttl, 21_000).await.unwrap().unwrap();
    assert_eq!(other.token, 1);
    // A process starting on a database it owns alone takes the lease outright,
    // live or not, with a larger token; the former holder is out.
    let c = s.take_lease("driver", "c", ttl, 22_000).await.unwrap();
    assert_eq!((c.holder.as_str(), c.token, c.expires_at), ("c", 4, 32_000));
    assert_eq!(s.acquire_or_renew_lease("driver", "a", ttl, 22_001).await.unwrap(), None);
    assert_eq!(s.take_lease("fresh", "c", ttl, 0).await.unwrap().token, 1);
}

both!(concurrent_candidates_for_a_free_lease_elect_exactly_one);
async fn concurrent_candidates_for_a_free_lease_elect_exactly_one(s: Store) {
    for round in 0..5i64 {
        // Each round the lease is free (round 0) or lapsed (later rounds).
        let now = 1_000_000 * (round + 1);
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.acquire_or_renew_lease("race", &format!("r{i}"), std::time::Duration::from_secs(60), now).await
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            if let Some(f) = t.await.unwrap().unwrap() {
                winners.push(f);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        assert_eq!(winners[0].token, round + 1, "one new token per holding");
    }
}

/// What a stale leader could have changed: the rollout row, every action, the events.
async fn footprint(s: &Store, id: i64) -> (String, Vec<(i64, ActionState, i64)>, usize) {
    let r = s.get_rollout(id).await.unwrap().unwrap();
    let acts = s.list_actions(&ActionQuery { rollout_id: Some(id), limit: 100, ..Default::default() }).await.unwrap();
    let events = s.list_events(&EventQuery { rollout_id: Some(id), limit: 1000, ..Default::default() }).await.unwrap();
    (serde_json::to_string(&r).unwrap(), acts.iter().map(|a| (a.id, a.state, a.attempts)).collect(), events.len())
}

both!(a_stale_fence_is_refused_and_writes_nothing);
async fn a_stale_fence_is_refused_and_writes_nothing(s: Store) {
    let spec: StrategySpec = serde_json::from_str(r#"{"steps":["100%"],"timeout_secs":10}"#).unwrap();
    let r = make_rollout(&s, 3, spec).await;
    let sec = std::time::Duration::from_secs(1);
    let a = s.acquire_or_renew_lease(DRIVER_LEASE, "a", sec, 0).await.unwrap().unwrap();
    // a's lease lapsed at 1 000 and nobody took over yet: a may not drive.
    let before = footprint(&s, r.id).await;
    let err = s.drive_step(r.id, 2_000, &a).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced(_)), "{err}");
    assert_eq!(footprint(&s, r.id).await, before);
    // b takes over; a, even by a clock that says its lease is still live, is refused.
    let b =
        s.acquire_or_renew_lease(DRIVER_LEASE, "b", std::time::Duration::from_secs(60), 2_000).await.unwrap().unwrap();
    assert!(b.token > a.token);
    let err = s.drive_step(r.id, 500, &a).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced(_)), "{err}");
    assert_eq!(footprint(&s, r.id).await, before);
    // b drives: the rollout starts and releases its three devices (deadline 12 000).
    let mut ds = Vec::new();
    loop {
        let d = s.drive_step(r.id, 2_000, &b).await.unwrap().decision;
        if matches!(d, Decision::Idle { .. }) {
            break;
        }
        ds.push(d);
    }
    assert_eq!(ds, vec![Decision::Start, Decision::Release { count: 3 }]);
    // The actions time out; a's expiry is refused and changes nothing...
    let before = footprint(&s, r.id).await;
    assert!(before.1.iter().all(|(_, st, _)| *st == ActionState::Notified));
    let err = s.expire_actions(20_000, 100, &a).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced(_)), "{err}");
    assert_eq!(footprint(&s, r.id).await, before);
    // ...and a fence of b's from before it lapsed is refused too, once it has.
    let err = s.expire_actions(62_000, 100, &b).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced(_)), "{err}");
    assert_eq!(footprint(&s, r.id).await, before);
    // The live holder expires them.
    assert_eq!(s.expire_actions(20_000, 100, &b).await.unwrap().len(), 3);
    assert_ne!(footprint(&s, r.id).await, before);
}

both!(webhook_deliveries_are_written_once_claimed_and_fenced);
async fn webhook_deliveries_are_written_once_claimed_and_fenced(s: Store) {
    use otafleet_core::EventKind;
    let ttl = std::time::Duration::from_secs(3600);
    // Deliveries are due from when they are written: claim a little later.
    let now = now_ms() + 5_000;
    let fence = s.take_lease(DRIVER_LEASE, "a", ttl, now).await.unwrap();
    s.append_event(&NewEvent::new(EventKind::DeviceRegistered, "test")).await.unwrap();
    let w = s
        .create_webhook(&NewWebhook {
            url: "http://127.0.0.1:1/h",
            events: vec!["*".into()],
            description: "",
            secret: "whsec_x",
            created_by: "token:admin",
        })
        .await
        .unwrap();
    assert!(w.after_event_id >= 1, "events from before it are not its own");
    assert_eq!(s.list_webhooks().await.unwrap(), vec![w.clone()]);
    let d = |e: i64| NewDelivery { webhook_id: w.id, event_id: e, event_kind: EventKind::ReleaseCreated };
    assert_eq!(s.fan_out(&fence, &[d(100), d(101)], 101).await.unwrap(), 2);
    // Read again (a takeover, a late id): nothing twice; the cursor never moves back.
    assert_eq!(s.fan_out(&fence, &[d(101), d(102)], 90).await.unwrap(), 1);
    assert_eq!(s.webhook_cursor().await.unwrap(), 101);
    // A delivery for a webhook deleted meanwhile is not written.
    let gone = NewDelivery { webhook_id: w.id + 1000, event_id: 5, event_kind: EventKind::ReleaseCreated };
    assert_eq!(s.fan_out(&fence, &[gone], 101).await.unwrap(), 0);

    // Claimed: counted, put off; a second claim finds nothing due.
    let c = s.claim_deliveries(&fence, w.id, now, now + 60_000, 2).await.unwrap();
    assert_eq!(c.iter().map(|d| (d.event_id, d.attempts)).collect::<Vec<_>>(), vec![(100, 1), (101, 1)]);
    assert_eq!(s.claim_deliveries(&fence, w.id, now, now + 60_000, 10).await.unwrap().len(), 1, "only 102 left");
    let at = |outcome| Attempt { at: now, status: Some(500), error: Some("HTTP 500".into()), duration_ms: 3, outcome };
    assert!(s.record_attempt(&fence, c[0].id, &at(AttemptOutcome::RetryAt(now + 1_000))).await.unwrap());
    assert!(s.record_attempt(&fence, c[1].id, &at(AttemptOutcome::GiveUp)).await.unwrap());
    let log = s.list_deliveries(w.id, None, None, 10).await.unwrap();
    assert_eq!(log.iter().map(|d| d.event_id).collect::<Vec<_>>(), vec![102, 101, 100], "newest first");
    assert_eq!((log[1].state, log[1].last_status), (DeliveryState::Failed, Some(500)));
    assert_eq!((log[2].state, log[2].next_attempt_at), (DeliveryState::Pending, Some(now + 1_000)));
    let counts = s.delivery_counts().await.unwrap()[&w.id];
    assert_eq!((counts.pending, counts.failed, counts.delivered), (2, 1, 0));
    // Due again after its backoff, not before.
    assert!(s.claim_deliveries(&fence, w.id, now + 999, now + 60_000, 10).await.unwrap().is_empty());
    let again = s.claim_deliveries(&fence, w.id, now + 1_000, now + 60_000, 10).await.unwrap();
    assert_eq!((again.len(), again[0].attempts), (1, 2));
    // Redeliver: only what is not pending.
    assert!(s.redeliver(w.id, c[0].id).await.unwrap().is_none(), "still pending");
    assert_eq!(s.redeliver(w.id, c[1].id).await.unwrap().unwrap().state, DeliveryState::Pending);

    // A former leader's writes are refused once the lease changed hands.
    let b = s.take_lease(DRIVER_LEASE, "b", ttl, now + 2_000).await.unwrap();
    assert!(matches!(s.fan_out(&fence, &[d(103)], 103).await, Err(StoreError::Fenced(_))));
    assert!(matches!(
        s.claim_deliveries(&fence, w.id, now + 99_000, now + 99_000, 10).await,
        Err(StoreError::Fenced(_))
    ));
    assert!(matches!(
        s.record_attempt(&fence, again[0].id, &at(AttemptOutcome::Delivered)).await,
        Err(StoreError::Fenced(_))
    ));
    assert_eq!(s.fan_out(&b, &[d(103)], 103).await.unwrap(), 1);

    // Deleting the webhook takes its log with it.
    assert!(s.delete_webhook(w.id, "token:admin").await.unwrap().is_some());
    assert!(s.list_deliveries(w.id, None, None, 10).await.unwrap().is_empty());
    assert!(s.delete_webhook(w.id, "token:admin").await.unwrap().is_none());
}

both!(readiness_sees_every_migration_applied);
async fn readiness_sees_every_migration_applied(s: Store) {
    assert_eq!(s.missing_migrations().await.unwrap(), Vec::<i64>::new());
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 5").execute(s.pool()).await.unwrap();
    assert_eq!(s.missing_migrations().await.unwrap(), vec![5]);
}

both!(token_lifecycle_columns);
async fn token_lifecycle_columns(s: Store) {
    let now = now_ms();
    let t = s
        .create_token_with(&NewToken {
            name: "ci",
            role: Role::Operator,
            secret: "ota_ci",
            expires_at: Some(now + 60_000),
            created_by: Some("token:admin"),
        })
        .await
        .unwrap();
    assert_eq!((t.expires_at, t.last_used_at, t.revoked_at, t.bootstrap), (Some(now + 60_000), None, None, false));
    assert_eq!(t.created_by.as_deref(), Some("token:admin"));
    assert_eq!(s.find_token("ota_ci").await.unwrap().unwrap().id, t.id);

    // Last use only moves forward.
    s.touch_token(t.id, now + 5).await.unwrap();
    s.touch_token(t.id, now + 1).await.unwrap();
    assert_eq!(s.get_token(t.id).await.unwrap().unwrap().last_used_at, Some(now + 5));

    // Expired: not found by secret, still listed.
    let old = s
        .create_token_with(&NewToken {
            name: "old",
            role: Role::Viewer,
            secret: "ota_old",
            expires_at: Some(now - 1),
            created_by: None,
        })
        .await
        .unwrap();
    assert!(s.find_token("ota_old").await.unwrap().is_none());
    assert!(!old.is_valid_at(now));

    // Revoked: not found, revoked_at kept on a second revoke, event written once.
    let r = s.revoke_token(t.id, "token:admin").await.unwrap().unwrap();
    let at = r.revoked_at.expect("revoked_at");
    assert!(s.find_token("ota_ci").await.unwrap().is_none());
    assert_eq!(s.revoke_token(t.id, "token:admin").await.unwrap().unwrap().revoked_at, Some(at));
    assert!(s.revoke_token(9_999, "token:admin").await.unwrap().is_none());
    let listed = s.list_tokens().await.unwrap();
    assert_eq!(listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["ci", "old"]);
    let q = EventQuery { kind: Some("token.revoked".into()), limit: 10, ..Default::default() };
    assert_eq!(s.list_events(&q).await.unwrap().len(), 1);

    // Enrollment tokens: last use on enrollment, revocation refuses the next one.
    let new = NewEnrollmentToken { name: "line".into(), ..Default::default() };
    let e = s.create_enrollment_token(&new, "enr_line", "token:admin").await.unwrap();
    assert_eq!((e.last_used_at, e.revoked_at), (None, None));
    s.enroll_device("enr_line", dev(1, &[]), now).await.unwrap().unwrap();
    assert_eq!(s.get_enrollment_token(e.id).await.unwrap().unwrap().last_used_at, Some(now));
    let e = s.revoke_enrollment_token(e.id, "token:admin").await.unwrap().unwrap();
    assert!(e.revoked_at.is_some());
    assert_eq!(s.enroll_device("enr_line", dev(2, &[]), now).await.unwrap(), Err(EnrollRefusal::Unknown));
    assert_eq!(s.list_enrollment_tokens().await.unwrap().len(), 1);

    // Device token rotation: the old secret stops working.
    assert_eq!(s.device_id_by_token("tok-1").await.unwrap(), Some(Uuid::from_u128(1)));
    assert!(s.rotate_device_token(Uuid::from_u128(1), "dev_new", "token:admin").await.unwrap());
    assert_eq!(s.device_id_by_token("tok-1").await.unwrap(), None);
    assert_eq!(s.device_id_by_token("dev_new").await.unwrap(), Some(Uuid::from_u128(1)));
    assert!(!s.rotate_device_token(Uuid::from_u128(77), "x", "a").await.unwrap());
}

both!(bootstrap_token_replaces_the_previous_one);
async fn bootstrap_token_replaces_the_previous_one(s: Store) {
    let now = now_ms();
    let first = "ota_first_bootstrap_secret_0123456789";
    assert_eq!(s.install_bootstrap_token(first, now).await.unwrap(), Bootstrap::Installed { revoked: vec![] });
    assert_eq!(s.install_bootstrap_token(first, now).await.unwrap(), Bootstrap::Kept);
    let id = s.find_token(first).await.unwrap().unwrap().id;
    let second = "ota_second_bootstrap_secret_012345678";
    assert_eq!(s.install_bootstrap_token(second, now).await.unwrap(), Bootstrap::Installed { revoked: vec![id] });
    assert!(s.find_token(first).await.unwrap().is_none(), "the previous bootstrap token is revoked");
    assert!(s.find_token(second).await.unwrap().unwrap().bootstrap);
    // Going back to a revoked secret is refused, and so is another token's secret.
    assert!(matches!(s.install_bootstrap_token(first, now).await, Err(StoreError::Invalid(_))));
    s.create_token("ops", Role::Operator, "ota_ops_secret").await.unwrap();
    assert!(matches!(s.install_bootstrap_token("ota_ops_secret", now).await, Err(StoreError::Invalid(_))));
    // A generated first token only when there is none.
    assert!(s.create_first_bootstrap_token("ota_generated").await.unwrap().is_none());
}

/// A database made by the migrations before 0006 gains the new columns, and its tokens keep working.
#[tokio::test]
async fn a_database_from_before_0006_keeps_its_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let mut old = migrator(Backend::Sqlite);
    old.migrations = std::borrow::Cow::Owned(old.migrations.iter().filter(|m| m.version < 5).cloned().collect());
    old.run(&pool).await.unwrap();
    sqlx::query("INSERT INTO tokens (name, role, token_hash, created_at) VALUES ('bootstrap-admin', 'admin', $1, 1)")
        .bind(hash_token("ota_old_admin"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let s = Store::connect(&format!("sqlite://{}", dir.path().join("old.db").display())).await.unwrap();
    let t = s.find_token("ota_old_admin").await.unwrap().expect("the old token still works");
    assert!(t.bootstrap, "an existing bootstrap-admin is recognised as the bootstrap token");
    assert_eq!((t.expires_at, t.last_used_at, t.created_by), (None, None, None));
}

/// Two replicas (two `Store`s, two pools) receive the same status reports at
/// once, as when a device switched replicas or a load balancer retried: each
/// `(action_id, seq)` is applied by exactly one of them and is a duplicate for
/// the other, and the events record each transition once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_apply_each_report_exactly_once_postgres() {
    let base = match std::env::var("OTAFLEET_TEST_POSTGRES_URL") {
        Ok(b) if !b.is_empty() => b,
        _ => {
            eprintln!("SKIPPED concurrent reports on PostgreSQL: set OTAFLEET_TEST_POSTGRES_URL to run it");
            return;
        }
    };
    let url = fresh_postgres_database(&base).await.unwrap();
    let (a, b) = (Store::connect(&url).await.unwrap(), Store::connect(&url).await.unwrap());
    const N: u128 = 120;
    let spec: StrategySpec = serde_json::from_str(r#"{"steps":["100%"]}"#).unwrap();
    let r = make_rollout(&a, N, spec).await;
    drive(&a, r.id, 1_000).await;
    let actions = a
        .list_actions(&ActionQuery {
            rollout_id: Some(r.id),
            state: Some(ActionState::Notified),
            limit: 1_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(actions.len(), N as usize);
    let devices: std::collections::HashMap<i64, Uuid> = actions.iter().map(|x| (x.id, x.device_id)).collect();
    let steps = [ActionState::Downloading, ActionState::Installing, ActionState::Verifying, ActionState::Succeeded];
    for (round, state) in steps.into_iter().enumerate() {
        let seq = round as i64 + 1;
        // Several rounds per step: each round contests a slice of the actions,
        // in opposite orders and batch sizes on the two replicas.
        for (k, slice) in actions.chunks(8).enumerate() {
            let reports: Vec<(Uuid, StatusReport)> =
                slice.iter().map(|x| (devices[&x.id], report(x.id, seq, state))).collect();
            let mut reversed = reports.clone();
            reversed.reverse();
            let now = 2_000 + seq;
            let (ra, rb) = if k % 2 == 0 {
                // Both group-committed.
                let (ra, rb) = tokio::join!(a.report_statuses(&reports, now), b.report_statuses(&reversed, now));
                let mut rb: Vec<_> = rb.unwrap();
                rb.reverse();
                (ra.unwrap(), rb)
            } else {
                // One batch against the same reports one by one.
                let one_by_one = async {
                    let mut out = Vec::new();
                    for (d, rep) in &reversed {
                        out.push(b.report_status(*d, rep, now).await);
                    }
                    out.reverse();
                    out
                };
                let (ra, rb) = tokio::join!(a.report_statuses(&reports, now), one_by_one);
                (ra.unwrap(), rb)
            };
            for ((x, y), (_, rep)) in ra.into_iter().zip(rb).zip(&reports) {
                let mut outcomes = [x.unwrap().0, y.unwrap().0];
                outcomes.sort_by_key(|o| *o as u8);
                assert_eq!(
                    outcomes,
                    [ReportOutcome::Applied, ReportOutcome::Duplicate],
                    "action {} seq {}",
                    rep.action_id,
                    rep.seq
                );
            }
        }
    }
    for x in &actions {
        let now = a.get_action(x.id).await.unwrap().unwrap();
        assert_eq!((now.state, now.last_seq), (ActionState::Succeeded, 4));
        let rows =
            sqlx::query("SELECT kind, COUNT(*) AS n FROM events WHERE action_id = $1 GROUP BY kind ORDER BY kind")
                .bind(x.id)
                .fetch_all(a.pool())
                .await
                .unwrap();
        let counts: Vec<(String, i64)> =
            rows.iter().map(|r| (r.string("kind").unwrap(), r.i64("n").unwrap())).collect();
        for kind in ["action.downloading", "action.installing", "action.verifying", "action.succeeded"] {
            assert_eq!(
                counts.iter().find(|(k, _)| k == kind).map(|(_, n)| *n),
                Some(1),
                "action {}: {kind} in {counts:?}",
                x.id
            );
        }
    }
}

/// What other replicas hear: each change once its transaction commits, signed
/// with the sending store's origin; SQLite has no listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_changes_are_notified_postgres() {
    let (sqlite, _dir) = sqlite().await;
    assert!(matches!(sqlite.listen().await, Err(StoreError::Invalid(_))));
    sqlite.notify(&notify::Change::Ping { n: 1 }).await.unwrap();
    let Some(s) = postgres().await else { return };
    let mut l = s.listen().await.unwrap();
    // Rollouts' revision changes, collected on the side (see `next_notice`).
    let mut touched = Vec::new();
    let spec: StrategySpec = serde_json::from_str(r#"{"steps":["100%"]}"#).unwrap();
    let r = make_rollout(&s, 3, spec).await;
    drive(&s, r.id, 1_000).await;
    let n = next_notice(&mut l, &mut touched).await;
    assert_eq!(n.origin, s.origin());
    let notify::Change::Actions { mut devices } = n.change else { panic!("{n:?}") };
    devices.sort();
    assert_eq!(devices, (1..=3u128).map(Uuid::from_u128).collect::<Vec<_>>());
    let a = s.inflight_action(Uuid::from_u128(2)).await.unwrap().unwrap();
    let out = s.report_statuses(&[(a.device_id, report(a.id, 1, ActionState::Downloading))], 2_000).await.unwrap();
    assert!(matches!(out[0], Ok((ReportOutcome::Applied, _))));
    assert_eq!(next_notice(&mut l, &mut touched).await.change, notify::Change::Actions { devices: vec![a.device_id] });
    // A duplicate changes nothing and says nothing: the next message is the revocation.
    s.report_status(a.device_id, &report(a.id, 1, ActionState::Downloading), 2_001).await.unwrap();
    let t = s.create_token("t", Role::Viewer, "secret-notify").await.unwrap();
    s.revoke_token(t.id, "t").await.unwrap();
    assert_eq!(next_notice(&mut l, &mut touched).await.change, notify::Change::TokenRevoked { id: t.id });
    assert!(s.rotate_device_token(a.device_id, "new-secret", "t").await.unwrap());
    assert_eq!(next_notice(&mut l, &mut touched).await.change, notify::Change::DeviceToken { device: a.device_id });
    assert!(s.delete_device(a.device_id, "t").await.unwrap());
    assert_eq!(next_notice(&mut l, &mut touched).await.change, notify::Change::DeviceDeleted { device: a.device_id });
    s.notify(&notify::Change::Ping { n: 9 }).await.unwrap();
    assert_eq!(next_notice(&mut l, &mut touched).await.change, notify::Change::Ping { n: 9 });
    // Creating, driving, the report and the deletion (which skipped the
    // device's action) each changed the rollout: each said so.
    assert!(touched.len() >= 4 && touched.iter().all(|ids| ids == &vec![r.id]), "{touched:?}");
}

/// The next notice other than a rollouts' revision change; those are
/// pushed onto `touched`.
async fn next_notice(l: &mut notify::Listener, touched: &mut Vec<Vec<i64>>) -> notify::Notice {
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(5), l.next()).await.unwrap().unwrap() {
            notify::Received::Notice(notify::Notice { change: notify::Change::Rollouts { ids }, .. }) => {
                touched.push(ids)
            }
            notify::Received::Notice(n) => return n,
            notify::Received::Lost => panic!("lost"),
        }
    }
}

#[test]
fn only_old_test_databases_are_dropped() {
    let now = 1_800_000_000;
    let id = "0123456789abcdef0123456789abcdef";
    let fresh = format!("otafleet_test_{}_{id}", now - 60);
    let old = format!("otafleet_test_{}_{id}", now - crate::TEST_DATABASE_HOURS * 3600 - 1);
    assert!(!crate::stale_test_database(&fresh, now));
    assert!(crate::stale_test_database(&old, now));
    assert!(crate::stale_test_database(&format!("otafleet_test_{id}"), now), "named before names carried a time");
    for other in ["test", "postgres", "bench_fleet", "otafleet_test_", "otafleet_test_x", "otafleet_production"] {
        assert!(!crate::stale_test_database(other, now), "{other}");
    }
}

both!(delegate_inventories);
async fn delegate_inventories(s: Store) {
    use otafleet_core::DelegateKind;
    let now = 1_000;
    let a = s.create_delegate("cluster-a", DelegateKind::Cluster, "secret-a", "t", now).await.unwrap();
    let b = s.create_delegate("cluster-b", DelegateKind::Cluster, "secret-b", "t", now).await.unwrap();
    assert!(matches!(
        s.create_delegate("cluster-a", DelegateKind::Gateway, "secret-c", "t", now).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.find_delegate("secret-a").await.unwrap().map(|d| d.id), Some(a.id));
    let entry = |i: u128, name: &str| InventoryDevice {
        id: Uuid::from_u128(i),
        name: name.into(),
        labels: labels(&[("cluster", "a"), ("kind", "pod")]),
        current_version: Some("1.0.0".into()),
    };
    let out = s.sync_inventory(&a, &[entry(1, "p1"), entry(2, "p2")], now).await.unwrap();
    assert_eq!((out.registered, out.unchanged, out.gone.len()), (2, 0, 0));
    let d = s.get_device(Uuid::from_u128(1)).await.unwrap().unwrap();
    assert_eq!((d.delegate_id, d.current_version.as_deref()), (Some(a.id), Some("1.0.0")));
    // Renamed one, dropped the other: updated and gone.
    let out = s.sync_inventory(&a, &[entry(1, "p1-renamed")], now + 1).await.unwrap();
    assert_eq!((out.updated, out.gone.clone()), (1, vec![Uuid::from_u128(2)]));
    assert_eq!(s.get_device(Uuid::from_u128(2)).await.unwrap().unwrap().gone_at, Some(now + 1));
    let targets = s.target_devices(&Selector::parse("cluster=a").unwrap()).await.unwrap();
    assert_eq!(targets.iter().map(|t| t.id).collect::<Vec<_>>(), vec![Uuid::from_u128(1)], "gone is no target");
    // Listed again: returned.
    let out = s.sync_inventory(&a, &[entry(1, "p1-renamed"), entry(2, "p2")], now + 2).await.unwrap();
    assert_eq!((out.returned, out.unchanged), (1, 1));
    assert_eq!(s.get_device(Uuid::from_u128(2)).await.unwrap().unwrap().gone_at, None);
    // Another delegate cannot take them; nothing of its request is written.
    let taken = s.sync_inventory(&b, &[entry(3, "mine"), entry(1, "yours")], now + 3).await;
    assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
    assert!(s.get_device(Uuid::from_u128(3)).await.unwrap().is_none());
    assert_eq!(s.delegate_device_ids(a.id).await.unwrap().len(), 2);
    assert!(s.delegate_device_ids(b.id).await.unwrap().is_empty());
    assert_eq!(s.delegate_device_counts().await.unwrap().get(&a.id), Some(&2));
    let revoked = s.revoke_delegate(a.id, "t", now + 4).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(now + 4));
    assert_eq!(s.revoke_delegate(a.id, "t", now + 5).await.unwrap().unwrap().revoked_at, Some(now + 4), "idempotent");
    assert!(s.revoke_delegate(Uuid::from_u128(99), "t", now).await.unwrap().is_none());
}

//! Rollouts: the list, the live rollout page, its buttons, and the form
//! that creates one.

use super::pages::{details, PAGE_ROWS};
use super::{badge, check_csrf, csrf_field, page, time, Session, UiError, UiResult};
use crate::http::error::ApiError;
use crate::http::{self, extract::ApiJson, extract::ApiQuery};
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Form, Json};
use maud::{html, Markup};
use otafleet_api::{self as api, ActionListQuery, Page, RolloutListQuery, RolloutTarget};
use otafleet_core::{ActionState, RolloutState, Selector, Step};
use otafleet_store::{EventQuery, Role};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn rollout_table(items: &[api::Rollout]) -> Markup {
    html! {
        table.data id="rollouts" {
            thead { tr { th scope="col" class="num" { "Id" } th scope="col" { "Version" } th scope="col" { "Kind" } th scope="col" { "Preset" } th scope="col" { "Target" } th scope="col" { "State" } th scope="col" { "Wave" } th scope="col" { "Created" } } }
            tbody {
                @for r in items {
                    tr data-rollout=(r.id) {
                        td.num { a href={ "/ui/rollouts/" (r.id) } { "#" (r.id) } }
                        td { (r.version) } td { (r.kind.as_str()) } td { (r.preset.as_str()) }
                        td { (target(&r.target)) }
                        td { (badge(r.state.as_str())) }
                        td { (r.current_wave + 1) " / " (r.waves) }
                        td { (time(&r.created_at)) }
                    }
                }
                @if items.is_empty() { tr { td colspan="8" .muted { "no rollouts" } } }
            }
        }
    }
}

fn target(t: &RolloutTarget) -> Markup {
    match t {
        RolloutTarget::Selector(s) if s.is_empty() => html! { span.muted { "whole fleet" } },
        RolloutTarget::Selector(s) => html! { code { (s) } },
        RolloutTarget::Devices(d) => html! { (d.len()) " listed devices" },
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    #[serde(default)]
    state: String,
    before: Option<i64>,
}

pub async fn list(State(state): State<AppState>, session: Session, Query(p): Query<ListParams>) -> UiResult<Response> {
    let q = RolloutListQuery {
        state: Some(p.state.clone()).filter(|s| !s.is_empty()),
        limit: Some(PAGE_ROWS),
        before: p.before,
        ..Default::default()
    };
    let axum::Json(Page { items, next }) = http::rollouts::list(State(state), session.caller(), ApiQuery(q)).await?;
    let content = html! {
        h1 { "Rollouts" }
        div.toolbar {
            form.filters method="get" action="/ui/rollouts" {
                label for="state" { "State" }
                select id="state" name="state" {
                    option value="" selected[p.state.is_empty()] { "any" }
                    @for s in RolloutState::ALL { option value=(s.as_str()) selected[p.state == s.as_str()] { (s.as_str()) } }
                }
                button type="submit" { "Filter" }
            }
            @if session.can(Role::Operator) { a.button href="/ui/rollouts/new" { "New rollout" } }
        }
        (rollout_table(&items))
        @if let Some(n) = next {
            nav.pager { a rel="next" href={ "/ui/rollouts?before=" (n) @if !p.state.is_empty() { "&state=" (p.state) } } { "Older →" } }
        }
    };
    Ok(page(&session, "Rollouts", "rollouts", content))
}

#[derive(Debug, Default, Deserialize)]
pub struct PageParams {
    #[serde(default)]
    state: String,
    after: Option<i64>,
}

/// The buttons of the commands the core would accept in the rollout's state
/// (`effects::command`): a failed rollout offers only a rollback, say. (The
/// state may move on while the page is open: a refused command's answer says why.)
fn applicable_commands(r: &api::Rollout) -> Vec<(&'static str, &'static str, &'static str)> {
    use otafleet_core::effects::{command, Command, RolloutFacts};
    use otafleet_core::RolloutState;
    let facts = RolloutFacts {
        state: r.state,
        current_wave: r.current_wave.max(0) as usize,
        rollback_requested: r.rollback_requested,
        auto_rollback: r.strategy.auto_rollback,
    };
    let set = |to| Command::SetState { to, reason: None };
    [
        ("pause", "Pause", "", set(RolloutState::Paused)),
        ("resume", "Resume", "", set(RolloutState::Running)),
        ("promote", "Promote", "", Command::Promote),
        ("abort", "Abort", "danger", set(RolloutState::Aborted)),
        ("rollback", "Roll back", "danger", Command::Rollback),
    ]
    .into_iter()
    .filter(|(.., c)| command(facts, *c, 0).is_ok())
    .map(|(cmd, label, class, _)| (cmd, label, class))
    .collect()
}

/// The rollout page; the part under `#live` is re-rendered by [`live`] as
/// the event stream says the rollout moved.
pub async fn render(state: &AppState, session: &Session, id: String, p: PageParams) -> UiResult<Response> {
    let live = state.ui_live.get(state, session, http::parse_id(&id, "rollout")?, None).await?;
    let r = &live.rollout;
    let aq = ActionListQuery {
        state: Some(p.state.clone()).filter(|s| !s.is_empty()),
        limit: Some(PAGE_ROWS),
        after: p.after,
    };
    let actions = http::rollouts::actions(State(state.clone()), session.caller(), Path(id), ApiQuery(aq)).await;
    let live_part = live_fragment(&live);
    let can = session.can(Role::Operator);
    let commands = applicable_commands(r);
    let (actions_error, actions, next) = match actions {
        Ok(axum::Json(Page { items, next })) => (None, items, next),
        Err(e) => (Some(e), Vec::new(), None),
    };
    let content = html! {
        h1 { "Rollout #" (r.id) ": " (r.version) " " span id="state" { (badge(r.state.as_str())) } }
        dl.facts {
            dt { "Kind" } dd { (r.kind.as_str()) }
            dt { "Preset" } dd { (r.preset.as_str()) }
            dt { "Target" } dd { (target(&r.target)) }
            dt { "Release" } dd { a href={ "/ui/releases/" (r.release_id) } { (r.version) } }
            dt { "Created" } dd { (time(&r.created_at)) " by " (r.created_by) }
            @if let Some(s) = &r.start_at { dt { "Starts" } dd { (time(s)) } }
        }
        @if can && !commands.is_empty() {
            div.buttons role="group" aria-label="steer the rollout" {
                @for (cmd, label, class) in commands {
                    form method="post" action={ "/ui/rollouts/" (r.id) "/" (cmd) } {
                        (csrf_field(session))
                        button type="submit" class=(class) data-command=(cmd) { (label) }
                    }
                }
            }
        }
        div id="live" data-rollout=(r.id) aria-live="polite" { (live_part) }
        section {
            h2 id="actions-title" { "Device actions" }
            form.filters method="get" action={ "/ui/rollouts/" (r.id) } {
                label for="action-state" { "State" }
                select id="action-state" name="state" {
                    option value="" selected[p.state.is_empty()] { "any" }
                    @for s in ActionState::ALL { option value=(s.as_str()) selected[p.state == s.as_str()] { (s.as_str()) } }
                }
                button type="submit" { "Filter" }
            }
            @if let Some(e) = &actions_error { p.error role="alert" { (e.message) } }
            table.data id="actions" aria-labelledby="actions-title" {
                thead { tr { th scope="col" { "Device" } th scope="col" class="num" { "Wave" } th scope="col" { "Kind" } th scope="col" { "State" } th scope="col" { "From" } th scope="col" { "To" } th scope="col" class="num" { "Attempts" } th scope="col" { "Error" } th scope="col" { "Updated" } } }
                tbody {
                    @for a in &actions {
                        tr {
                            td { a href={ "/ui/devices/" (a.device_id) } { code { (a.device_id.to_string()[..8]) "…" } } }
                            td.num { (a.wave + 1) } td { (a.kind.as_str()) } td { (badge(a.state.as_str())) }
                            td { (a.from_version.as_deref().unwrap_or("—")) } td { (a.to_version) }
                            td.num { (a.attempts) } td { (a.error.as_deref().unwrap_or("")) } td { (time(&a.updated_at)) }
                        }
                    }
                    @if actions.is_empty() && actions_error.is_none() { tr { td colspan="9" .muted { "no actions" } } }
                }
            }
            @if let Some(n) = next {
                nav.pager { a rel="next" href={ "/ui/rollouts/" (r.id) "?after=" (n) @if !p.state.is_empty() { "&state=" (p.state) } } { "More →" } }
            }
        }
    };
    Ok(page(session, &format!("Rollout #{}", r.id), "rollouts", content))
}

pub async fn show(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Query(p): Query<PageParams>,
) -> UiResult<Response> {
    render(&state, &session, id, p).await
}

/// The live part alone (the page's script swaps it in).
#[derive(Debug, Default, Deserialize)]
pub struct LiveParams {
    /// The newest event id the page's stream delivered.
    seen: Option<i64>,
}

pub async fn live(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Query(p): Query<LiveParams>,
) -> UiResult<Response> {
    let id = http::parse_id(&id, "rollout")?;
    let d = state.ui_live.get(&state, &session, id, p.seen).await?;
    Ok(Html(live_fragment(&d).into_string()).into_response())
}

/// What the live part shows: the rollout with its per-wave counts, and its timeline.
pub struct LiveData {
    pub rollout: api::Rollout,
    pub timeline: Vec<api::Event>,
}

/// How long a rollout's live data is shared between dashboards.
pub const LIVE_FOR: Duration = Duration::from_millis(500);

/// One rollout's live data and when it was read; locked while it is being read.
type Slot = Arc<tokio::sync::Mutex<Option<Read>>>;

/// A read of a rollout's live data: when, and the feed's position just before it.
struct Read {
    at: Instant,
    position: i64,
    data: Arc<LiveData>,
}

/// The live data of recently viewed rollouts, shared for [`LIVE_FOR`]: a
/// hundred dashboards open on a 100,000-device rollout, each re-rendering
/// at most every 500 ms, count its waves about twice a second instead of two
/// hundred times. Concurrent misses for one rollout wait for one read; a
/// re-render asked for after event N is never served a read older than N. A
/// command given from the dashboard forgets the rollout's entry, so the page
/// it redirects to shows its effect. Per process: another replica's
/// dashboards lag by at most [`LIVE_FOR`] as well.
#[derive(Default)]
pub struct LiveCache {
    slots: Mutex<HashMap<i64, Slot>>,
}

impl LiveCache {
    pub fn forget(&self, id: i64) {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// The live data of rollout `id`, read at most [`LIVE_FOR`] ago and after
    /// event `seen` (the newest the caller's stream delivered): a dashboard
    /// re-rendering on an event always sees that event's effect.
    async fn get(&self, state: &AppState, session: &Session, id: i64, seen: Option<i64>) -> UiResult<Arc<LiveData>> {
        // Every request is checked, hit or miss.
        session.caller().require(Role::Viewer)?;
        let fresh = |r: &Read| r.at.elapsed() < LIVE_FOR && seen.is_none_or(|s| r.position >= s);
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            if slots.len() > 1000 {
                slots.retain(|_, s| {
                    s.try_lock().map(|g| g.as_ref().is_some_and(|r| r.at.elapsed() < LIVE_FOR)).unwrap_or(true)
                });
            }
            slots.entry(id).or_default().clone()
        };
        let mut held = slot.lock().await;
        if let Some(r) = held.as_ref().filter(|r| fresh(r)) {
            return Ok(r.data.clone());
        }
        // Taken before the read: everything up to it is in what the read sees.
        let position = state.feed.position();
        let data = Arc::new(live_data(state, session, id).await?);
        *held = Some(Read { at: Instant::now(), position, data: data.clone() });
        Ok(data)
    }
}

async fn live_data(state: &AppState, session: &Session, id: i64) -> UiResult<LiveData> {
    let axum::Json(rollout) =
        http::rollouts::get_one(State(state.clone()), session.caller(), Path(id.to_string())).await?;
    let timeline = state
        .store
        .list_events(&EventQuery {
            rollout_id: Some(id),
            group: Some("rollout".into()),
            newest_first: true,
            limit: PAGE_ROWS,
            ..Default::default()
        })
        .await?;
    let timeline = timeline.into_iter().map(http::events::event_view).collect();
    Ok(LiveData { rollout, timeline })
}

/// Waves with their counts and the gate's numbers next to its thresholds,
/// the bake timer, and the rollout's timeline.
fn live_fragment(d: &LiveData) -> Markup {
    let (r, timeline) = (&d.rollout, &d.timeline);
    let gate = &r.strategy.gate;
    let progress = r.progress.clone().unwrap_or_default();
    let bake_until = r.gate_passed_at.as_deref().filter(|_| gate.bake_time_secs > 0).and_then(|t| {
        let ms = crate::time::parse_rfc3339(t).ok()?;
        Some(crate::time::rfc3339(ms + gate.bake_time_secs as i64 * 1000))
    });
    let pct = |x: f64| format!("{:.1}%", x * 100.0);
    html! {
        p.state-line { "State " span data-state=(r.state.as_str()) { (badge(r.state.as_str())) }
            @if let Some(reason) = &r.reason { " — " span.reason { (reason) } } }
        table.data.waves id="waves" {
            caption { "Waves (gate: at least " (pct(gate.success_threshold)) " succeeded, at most " (pct(gate.failure_threshold)) " failed; bake " (gate.bake_time_secs) " s)" }
            thead { tr {
                th scope="col" { "Wave" } th scope="col" { "Step" } th scope="col" class="num" { "Devices" }
                th scope="col" class="num" { "Scheduled" } th scope="col" class="num" { "In flight" } th scope="col" class="num" { "Succeeded" }
                th scope="col" class="num" { "Failed" } th scope="col" class="num" { "Skipped" } th scope="col" class="num" { "Rolled back" }
                th scope="col" { "Gate" } th scope="col" { "Progress" }
            } }
            tbody {
                @for w in &progress {
                    @let counted = (w.total - w.skipped).max(0);
                    @let ok = if counted > 0 { w.succeeded as f64 / counted as f64 } else { 0.0 };
                    @let bad = if counted > 0 { w.failed as f64 / counted as f64 } else { 0.0 };
                    @let current = w.wave == r.current_wave;
                    tr data-wave=(w.wave) data-total=(w.total) data-succeeded=(w.succeeded) data-failed=(w.failed) data-in-flight=(w.in_flight)
                        class=[current.then_some("current")] aria-current=[current.then_some("step")] {
                        td { (w.wave + 1) }
                        td { (r.strategy.steps.get(w.wave as usize).map(step_text).unwrap_or_default()) }
                        td.num { (w.total) } td.num { (w.scheduled) } td.num { (w.in_flight) } td.num.ok { (w.succeeded) }
                        td.num.bad { (w.failed) } td.num { (w.skipped) } td.num { (w.rolled_back) }
                        td.gate {
                            span class=(if ok >= gate.success_threshold { "pass" } else { "wait" }) { (pct(ok)) " ≥ " (pct(gate.success_threshold)) }
                            " · "
                            span class=(if bad > gate.failure_threshold { "fail" } else { "pass" }) { (pct(bad)) " ≤ " (pct(gate.failure_threshold)) }
                        }
                        td { progress max=(w.total.max(1)) value=(w.succeeded + w.failed + w.skipped) aria-label={ "wave " (w.wave + 1) " done" } {} }
                    }
                }
                @if progress.is_empty() { tr { td colspan="11" .muted { "nothing planned (an external job)" } } }
            }
        }
        @if !r.analysis.is_empty() { (analysis_table(r)) }
        @if let Some(until) = &bake_until {
            @if r.state == RolloutState::Running {
                p.bake { "Baking: the next wave may start at " (time(until)) " (" span data-countdown=(until) { "" } ")." }
            }
        }
        @if let Some(t) = &r.finished_at { p { "Finished " (time(t)) "." } }
        section {
            h2 { "Timeline" }
            table.data.timeline id="timeline" {
                thead { tr { th scope="col" { "When" } th scope="col" { "Event" } th scope="col" { "Actor" } th scope="col" { "Numbers" } } }
                tbody {
                    @for e in timeline {
                        tr data-event-id=(e.id) {
                            td { (time(&e.at)) } td { code { (e.kind.as_str()) } } td { (e.actor) } td { (details(&e.data)) }
                        }
                    }
                }
            }
        }
    }
}

/// The current wave's analysis checks: what each requires, its verdict,
/// the counts, and the latest measurement's numbers.
fn analysis_table(r: &api::Rollout) -> Markup {
    let n = |v: Option<f64>| v.map(otafleet_core::analysis::num).unwrap_or_else(|| "—".into());
    let count = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "—".into());
    html! {
        table.data.analysis id="analysis" {
            caption { "Analysis of wave " (r.current_wave + 1) " (each measurement is an event in the timeline)" }
            thead { tr {
                th scope="col" { "Check" } th scope="col" { "Requires" } th scope="col" { "Verdict" }
                th scope="col" class="num" { "Passed / failed / inconclusive" }
                th scope="col" class="num" { "Last value" } th scope="col" class="num" { "Compared with" } th scope="col" class="num" { "Baseline" }
                th scope="col" class="num" { "Samples / devices" } th scope="col" { "Next" }
            } }
            tbody {
                @for c in &r.analysis {
                    @let last = c.last.as_ref();
                    tr data-check=(c.name) data-verdict=(c.verdict) data-observed=[last.and_then(|l| l.observed)] {
                        td { (c.name) } td { (c.condition) } td { (badge(&c.verdict)) }
                        td.num { span.ok { (c.passed) } " / " span.bad { (c.failed) } " / " (c.inconclusive) }
                        td.num.observed { (n(last.and_then(|l| l.observed))) } td.num { (n(last.and_then(|l| l.threshold))) }
                        td.num { (n(last.and_then(|l| l.baseline))) }
                        td.num { (count(last.and_then(|l| l.samples))) " / " (count(last.and_then(|l| l.devices))) }
                        td { @if let Some(t) = &c.next_at { (time(t)) } @else { "—" } }
                    }
                    @if let Some(p) = c.last_problem.as_deref().or(last.map(|l| l.reason.as_str())) {
                        tr.reason-row { td {} td colspan="8" .muted { (p) } }
                    }
                }
            }
        }
    }
}

fn step_text(s: &Step) -> String {
    serde_json::to_value(s).map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).unwrap_or_default()
}

#[derive(Debug, Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

/// A button: pause, resume, promote, abort or rollback, through the API's handler.
pub async fn command(
    State(state): State<AppState>,
    session: Session,
    Path((id, command)): Path<(String, String)>,
    Form(f): Form<CsrfOnly>,
) -> UiResult<Response> {
    check_csrf(&session, &f.csrf)?;
    let (s, c, p) = (State(state.clone()), session.caller(), Path(id.clone()));
    let done = match command.as_str() {
        "pause" => http::rollouts::pause(s, c, p).await,
        "resume" => http::rollouts::resume(s, c, p).await,
        "promote" => http::rollouts::promote(s, c, p).await,
        "abort" => http::rollouts::abort(s, c, p).await,
        "rollback" => http::rollouts::rollback(s, c, p).await,
        other => return Err(UiError::NotFound(format!("no command '{other}'"))),
    };
    let axum::Json(r) = done?;
    state.ui_live.forget(r.id);
    Ok(Redirect::to(&format!("/ui/rollouts/{}", r.id)).into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct CountParams {
    #[serde(default)]
    selector: String,
}

/// The new-rollout form's live count: `{"count": n}` or the selector's error.
pub async fn count(State(state): State<AppState>, session: Session, Query(p): Query<CountParams>) -> Response {
    if let Err(e) = session.caller().require(Role::Viewer) {
        return e.into_response();
    }
    match Selector::parse(&p.selector) {
        Err(e) => ApiError::invalid("selector", e.to_string()).into_response(),
        Ok(sel) => match state.store.count_devices(&sel).await {
            Ok(n) => Json(serde_json::json!({ "count": n })).into_response(),
            Err(e) => ApiError::from(e).into_response(),
        },
    }
}

/// What the form sends; every field as text, turned into the API's request.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct RolloutForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    selector: String,
    #[serde(default)]
    preset: String,
    #[serde(default)]
    count: String,
    #[serde(default)]
    steps: String,
    #[serde(default)]
    success_threshold: String,
    #[serde(default)]
    failure_threshold: String,
    #[serde(default)]
    bake_time: String,
    #[serde(default)]
    max_parallel: String,
    #[serde(default)]
    window: String,
    #[serde(default)]
    start_at: String,
}

impl RolloutForm {
    /// The API request, or the field at fault (named as the API names it).
    fn request(&self) -> Result<api::CreateRollout, ApiError> {
        let mut spec = serde_json::Map::new();
        let text = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        if let Some(p) = text(&self.preset) {
            spec.insert("preset".into(), p.into());
        }
        let number = |field: &str, raw: &str| -> Result<Option<serde_json::Value>, ApiError> {
            match text(raw) {
                None => Ok(None),
                Some(t) => t
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .map(|x| Some(if x.fract() == 0.0 && x >= 0.0 { (x as u64).into() } else { x.into() }))
                    .ok_or_else(|| ApiError::invalid(&format!("strategy.{field}"), format!("'{t}' is not a number"))),
            }
        };
        for (field, raw) in [
            ("count", &self.count),
            ("success_threshold", &self.success_threshold),
            ("failure_threshold", &self.failure_threshold),
            ("max_parallel", &self.max_parallel),
        ] {
            if let Some(v) = number(field, raw)? {
                let v = match field {
                    "success_threshold" | "failure_threshold" => serde_json::json!(v.as_f64().unwrap_or_default()),
                    _ => v,
                };
                spec.insert(field.into(), v);
            }
        }
        if let Some(b) = text(&self.bake_time) {
            let secs = otafleet_core::duration::parse_secs(&b)
                .map_err(|e| ApiError::invalid("strategy.bake_time_secs", e.to_string()))?;
            spec.insert("bake_time_secs".into(), secs.into());
        }
        if let Some(steps) = text(&self.steps) {
            let steps = steps
                .split(',')
                .map(|s| s.trim().parse::<Step>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ApiError::invalid("strategy.steps", e.to_string()))?;
            spec.insert("steps".into(), serde_json::to_value(steps).unwrap_or_default());
        }
        if let Some(w) = text(&self.window) {
            spec.insert("windows".into(), serde_json::json!([w]));
        }
        let strategy = serde_json::from_value(serde_json::Value::Object(spec))
            .map_err(|e| ApiError::invalid("strategy", e.to_string()))?;
        Ok(api::CreateRollout {
            version: text(&self.version),
            selector: Some(self.selector.trim().to_string()),
            strategy: Some(strategy),
            start_at: text(&self.start_at),
            ..Default::default()
        })
    }
}

pub async fn new_form(State(state): State<AppState>, session: Session) -> UiResult<Response> {
    session.caller().require(Role::Operator)?;
    form_page(&state, &session, &RolloutForm { preset: "canary".into(), ..Default::default() }, None).await
}

async fn form_page(
    state: &AppState,
    session: &Session,
    f: &RolloutForm,
    error: Option<ApiError>,
) -> UiResult<Response> {
    let q = api::ReleaseListQuery { limit: Some(100), before: None };
    let axum::Json(releases) = http::releases::list(State(state.clone()), session.caller(), ApiQuery(q)).await?;
    let field = error.as_ref().and_then(|e| e.field.clone()).unwrap_or_default();
    let invalid =
        |names: &[&str]| names.iter().any(|n| field == *n || field.starts_with(&format!("{n}."))).then_some("true");
    let content = html! {
        h1 { "New rollout" }
        @if let Some(e) = &error {
            p.error role="alert" id="form-error" data-field=(field) {
                @if !field.is_empty() { strong { (field) } ": " } (e.message)
            }
        }
        form.stack method="post" action="/ui/rollouts/new" id="new-rollout" {
            (csrf_field(session))
            fieldset {
                legend { "What and where" }
                label for="version" { "Release" }
                select id="version" name="version" required aria-invalid=[invalid(&["version", "release_id"])] {
                    @for r in &releases.items { option value=(r.version) selected[f.version == r.version] { (r.version) " — " (r.name) } }
                }
                label for="selector" { "Target selector " span.muted { "(empty: the whole fleet)" } }
                input id="selector" name="selector" value=(f.selector) placeholder="device_type=esp32,site in (a,b)" aria-describedby="selector-count" aria-invalid=[invalid(&["selector"])];
                output id="selector-count" for="selector" aria-live="polite" {}
            }
            fieldset {
                legend { "Waves" }
                @for (value, label) in [("canary", "canary: one device first"), ("blue", "blue: a few devices"), ("green", "green: everyone"), ("custom", "custom steps")] {
                    div.radio {
                        input type="radio" id={ "preset-" (value) } name="preset" value=(value) checked[f.preset == value];
                        label for={ "preset-" (value) } { (label) }
                    }
                }
                label for="count" { "Devices in a blue wave" }
                input id="count" name="count" value=(f.count) inputmode="numeric" aria-invalid=[invalid(&["strategy.count", "count"])];
                label for="steps" { "Custom steps " span.muted { "(cumulative: 1, 10%, 100%)" } }
                input id="steps" name="steps" value=(f.steps) placeholder="1, 10%, 100%" aria-invalid=[invalid(&["strategy.steps", "steps"])];
            }
            fieldset {
                legend { "Health gate" }
                label for="success_threshold" { "Success threshold (0–1)" }
                input id="success_threshold" name="success_threshold" value=(f.success_threshold) placeholder="0.95" inputmode="decimal" aria-invalid=[invalid(&["strategy.success_threshold", "success_threshold"])];
                label for="failure_threshold" { "Failure threshold (0–1)" }
                input id="failure_threshold" name="failure_threshold" value=(f.failure_threshold) placeholder="0.05" inputmode="decimal" aria-invalid=[invalid(&["strategy.failure_threshold", "failure_threshold"])];
                label for="bake_time" { "Bake time " span.muted { "(30s, 5m, 1h)" } }
                input id="bake_time" name="bake_time" value=(f.bake_time) placeholder="0s" aria-invalid=[invalid(&["strategy.bake_time_secs", "bake_time_secs"])];
                label for="max_parallel" { "Max parallel " span.muted { "(0: unlimited)" } }
                input id="max_parallel" name="max_parallel" value=(f.max_parallel) inputmode="numeric" aria-invalid=[invalid(&["strategy.max_parallel", "max_parallel"])];
            }
            fieldset {
                legend { "When" }
                label for="window" { "Maintenance window " span.muted { "(Mon-Fri 22:00-04:00 UTC; empty: always)" } }
                input id="window" name="window" value=(f.window) aria-invalid=[invalid(&["strategy.windows", "windows"])];
                label for="start_at" { "Start at " span.muted { "(RFC 3339; empty: now)" } }
                input id="start_at" name="start_at" value=(f.start_at) placeholder="2026-12-24T22:00:00Z" aria-invalid=[invalid(&["start_at"])];
            }
            button type="submit" { "Create rollout" }
        }
    };
    let status =
        if error.is_some() { axum::http::StatusCode::UNPROCESSABLE_ENTITY } else { axum::http::StatusCode::OK };
    let mut res = page(session, "New rollout", "rollouts", content);
    *res.status_mut() = status;
    Ok(res)
}

/// Creates the rollout through the API's handler; on a refusal the form
/// comes back filled in, with the API's message next to the field.
pub async fn create(State(state): State<AppState>, session: Session, Form(f): Form<RolloutForm>) -> UiResult<Response> {
    check_csrf(&session, &f.csrf)?;
    let body = match f.request() {
        Ok(b) => b,
        Err(e) => return form_page(&state, &session, &f, Some(e)).await,
    };
    match http::rollouts::create(State(state.clone()), session.caller(), ApiJson(body)).await {
        Ok((_, axum::Json(r))) => Ok(Redirect::to(&format!("/ui/rollouts/{}", r.id)).into_response()),
        Err(e)
            if e.status == axum::http::StatusCode::UNPROCESSABLE_ENTITY
                || e.status == axum::http::StatusCode::NOT_FOUND =>
        {
            form_page(&state, &session, &f, Some(e)).await
        }
        Err(e) => Err(UiError::Api(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_becomes_the_api_request_with_the_api_field_names() {
        let f = RolloutForm {
            version: "2.0.0".into(),
            selector: " device_type=esp32 ".into(),
            preset: "custom".into(),
            steps: "1, 10%, 100%".into(),
            success_threshold: "0.9".into(),
            bake_time: "5m".into(),
            max_parallel: "20".into(),
            ..Default::default()
        };
        let r = f.request().unwrap();
        assert_eq!(r.version.as_deref(), Some("2.0.0"));
        assert_eq!(r.selector.as_deref(), Some("device_type=esp32"));
        let s = r.strategy.unwrap();
        assert_eq!(s.bake_time_secs, Some(300));
        assert_eq!(s.max_parallel, Some(20));
        assert_eq!(s.success_threshold, Some(0.9));
        assert_eq!(s.steps.as_ref().map(Vec::len), Some(3));
        s.resolve(1).unwrap();

        let bad = RolloutForm { bake_time: "soon".into(), ..f.clone() };
        assert_eq!(bad.request().unwrap_err().field.as_deref(), Some("strategy.bake_time_secs"));
        let bad = RolloutForm { steps: "1, lots".into(), ..f.clone() };
        assert_eq!(bad.request().unwrap_err().field.as_deref(), Some("strategy.steps"));
        let bad = RolloutForm { max_parallel: "many".into(), ..f };
        assert_eq!(bad.request().unwrap_err().field.as_deref(), Some("strategy.max_parallel"));
    }
}

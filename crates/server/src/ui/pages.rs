//! Fleet, devices, releases, events and the tracker's jobs.

use super::{badge, check_csrf, csrf_field, page, time, time_opt, Session, UiError, UiResult};
use crate::http::{self, extract::ApiQuery};
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use otafleet_api::{self as api, DeviceListQuery, Page, RolloutListQuery};
use otafleet_store::{ActionQuery, EventQuery, Role};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Rows per page of every table.
pub const PAGE_ROWS: i64 = 50;

/// A device is online when it checked in within this many poll intervals.
const ONLINE_POLLS: u64 = 3;

// ---------------------------------------------------------------- alerts

/// Alerts listed on the alerts page at most (the API lists them all).
const ALERT_ROWS: usize = 200;

/// The alerts that are firing or pending, the counts of firing ones by
/// severity, and the rules.
pub async fn alerts(State(state): State<AppState>, session: Session) -> UiResult<Response> {
    let axum::Json(Page { items: alerts, .. }) =
        http::alerts::list(State(state.clone()), session.caller(), ApiQuery(api::AlertListQuery::default())).await?;
    let axum::Json(Page { items: rules, .. }) =
        http::alerts::list_rules(State(state.clone()), session.caller()).await?;
    let firing: Vec<&api::Alert> = alerts.iter().filter(|a| a.state == "firing").collect();
    let severities: Vec<otafleet_core::alert::Severity> =
        firing.iter().filter_map(|a| a.severity.parse().ok()).collect();
    let counts = crate::service::alerts::count_by_severity(severities.iter());
    let n = |v: Option<f64>| v.map(otafleet_core::analysis::num).unwrap_or_else(|| "—".into());
    let content = html! {
        h1 { "Alerts" }
        div.cards {
            div.stat { span.label { "firing" } span.value id="alerts-firing" { (firing.len()) } }
            @for (severity, count) in &counts {
                div.stat { span.label { (severity.as_str()) } span.value data-severity=(severity.as_str()) { (count) } }
            }
            div.stat { span.label { "pending" } span.value id="alerts-pending" { (alerts.len() - firing.len()) } }
        }
        p.muted { "Evaluated by the leading replica every few seconds; their history is in "
            a href="/ui/events?kind=alert.firing" { "the events" } "." }
        section {
            h2 id="alerts-title" { "Firing and pending" }
            table.data id="alerts" aria-labelledby="alerts-title" {
                thead { tr {
                    th scope="col" { "State" } th scope="col" { "Severity" } th scope="col" { "Rule" } th scope="col" { "Device" }
                    th scope="col" class="num" { "Value" } th scope="col" { "Cause" } th scope="col" { "Since" }
                } }
                tbody {
                    @for a in alerts.iter().take(ALERT_ROWS) {
                        tr data-rule=(a.rule_id) data-state=(a.state) {
                            td { (badge(&a.state)) } td { span class={ "badge sev-" (a.severity) } { (a.severity) } } td { (a.rule) }
                            td { @if let Some(d) = a.device_id { a href={ "/ui/devices/" (d) } { code { (d.to_string()[..8]) "…" } } } @else { "the group" } }
                            td.num { (n(a.value)) } td { (a.cause.as_deref().unwrap_or("")) } td { (time(&a.since)) }
                        }
                    }
                    @if alerts.is_empty() { tr { td colspan="7" .muted { "nothing firing or pending" } } }
                }
            }
            @if alerts.len() > ALERT_ROWS { p.muted { "and " (alerts.len() - ALERT_ROWS) " more (the API lists them all: GET /api/v1/alerts)" } }
        }
        section {
            h2 id="rules-title" { "Rules" }
            table.data id="rules" aria-labelledby="rules-title" {
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "Severity" } th scope="col" { "Condition" } th scope="col" { "For" }
                    th scope="col" { "Selector" } th scope="col" { "Scope" } th scope="col" class="num" { "Firing" }
                } }
                tbody {
                    @for r in &rules {
                        tr data-rule=(r.id) {
                            td { (r.name) } td { span class={ "badge sev-" (r.severity) } { (r.severity) } }
                            td { code { (r.agg) "(" (r.metric) ") over " (r.window_secs) " s " (r.op) " " (n(Some(r.threshold)))
                                @if let Some(c) = r.clear { ", clears at " (n(Some(c))) }
                                @if let Some(s) = r.no_data_secs { "; no data for " (s) " s" } } }
                            td { (r.for_secs) " s" } td { code { (if r.selector.is_empty() { "(all devices)" } else { &r.selector }) } }
                            td { (r.scope) } td.num { (firing.iter().filter(|a| a.rule_id == r.id).count()) }
                        }
                    }
                    @if rules.is_empty() { tr { td colspan="7" .muted { "no rules (otafleet alerts rules create …)" } } }
                }
            }
        }
    };
    Ok(page(&session, "Alerts", "alerts", content))
}

// ---------------------------------------------------------------- fleet

pub async fn fleet(State(state): State<AppState>, session: Session) -> UiResult<Response> {
    let now = otafleet_store::now_ms();
    // Last-seen times reach the database up to one poll interval plus one
    // flush (2 s) late (`service::caches`): count those in too.
    let window_secs = (ONLINE_POLLS + 1) * state.config.poll_interval_secs + 2;
    let online_since = now - (window_secs * 1000) as i64;
    let counts = state.store.fleet_counts(online_since).await?;
    let history = versions_over_time(&state, &counts.by_version, now).await?;
    let firing = state.store.list_alerts(None, true).await?.len();
    let total = counts.total.max(1);
    let table = |title: &str, rows: Vec<(String, i64)>| {
        html! {
            section.card {
                h2 { (title) }
                table.counts {
                    thead { tr { th scope="col" { "value" } th scope="col" class="num" { "devices" } th scope="col" { span.sr-only { "share" } } } }
                    tbody {
                        @for (k, n) in &rows {
                            tr {
                                td { (k) }
                                td.num data-count=(k) { (n) }
                                td { meter min="0" max=(total) value=(n) aria-label={ (k) " share" } {} }
                            }
                        }
                        @if rows.is_empty() { tr { td colspan="3" .muted { "no devices yet" } } }
                    }
                }
            }
        }
    };
    let or_none = |k: Option<String>, none: &str| k.unwrap_or_else(|| none.to_string());
    let content = html! {
        h1 { "Fleet" }
        div.cards {
            div.stat { span.label { "devices" } span.value id="count-total" { (counts.total) } }
            div.stat { span.label { "online" } span.value id="count-online" { (counts.online) } }
            div.stat { span.label { "offline" } span.value id="count-offline" { (counts.total - counts.online) } }
            div.stat { span.label { "firing alerts" } a.value id="count-firing" href="/ui/alerts" { (firing) } }
        }
        p.muted { "Online: checked in within the last " (window_secs) " s (three poll intervals, and the delay before a check-in is recorded)." }
        div.grid {
            (table("By version", counts.by_version.iter().cloned().map(|(k, n)| (or_none(k, "unknown"), n)).collect()))
            (table("By health", counts.by_health.clone()))
            (table("By device type", counts.by_type.iter().cloned().map(|(k, n)| (or_none(k, "(no device_type)"), n)).collect()))
        }
        section.card {
            h2 { "Versions over time" }
            (history)
        }
    };
    Ok(page(&session, "Fleet", "fleet", content))
}

/// Devices per version at the end of each span, computed backwards from
/// today's counts by undoing the version changes (succeeded actions) made
/// since. Pure.
pub fn version_history(
    current: &[(Option<String>, i64)],
    moves: &[otafleet_store::VersionMoves],
    start: i64,
    bucket_ms: i64,
    buckets: usize,
) -> Vec<(i64, BTreeMap<String, i64>)> {
    let name = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
    let mut counts: BTreeMap<String, i64> = current.iter().map(|(v, n)| (name(v), *n)).collect();
    let mut out = Vec::with_capacity(buckets + 1);
    for b in (0..buckets).rev() {
        let end = start + (b as i64 + 1) * bucket_ms;
        out.push((end, counts.clone()));
        let from = start + b as i64 * bucket_ms;
        for m in moves.iter().filter(|m| m.bucket >= from && m.bucket < end) {
            *counts.entry(m.to.clone()).or_default() -= m.devices;
            *counts.entry(name(&m.from)).or_default() += m.devices;
        }
    }
    out.push((start, counts));
    out.reverse();
    for (_, c) in &mut out {
        c.retain(|_, n| *n > 0);
    }
    out
}

async fn versions_over_time(state: &AppState, current: &[(Option<String>, i64)], now: i64) -> UiResult<Markup> {
    const BUCKETS: usize = 24;
    let fortnight = now - 14 * 24 * 3600 * 1000;
    let Some(first) = state.store.first_version_move(fortnight).await? else {
        return Ok(html! { p.muted { "No device has changed version in the last 14 days." } });
    };
    let span = (now - first).max(60_000);
    let bucket_ms = (span + BUCKETS as i64 - 1) / BUCKETS as i64;
    let start = now - bucket_ms * BUCKETS as i64;
    let moves = state.store.version_moves(start, bucket_ms).await?;
    let history = version_history(current, &moves, start, bucket_ms, BUCKETS);
    Ok(chart(&history))
}

/// A stacked bar chart in SVG (attributes only: the CSP allows no inline style).
fn chart(history: &[(i64, BTreeMap<String, i64>)]) -> Markup {
    const PALETTE: [&str; 8] = ["#2b6cb0", "#38a169", "#d69e2e", "#805ad5", "#dd6b20", "#319795", "#e53e3e", "#718096"];
    let mut versions: Vec<String> = history.iter().flat_map(|(_, c)| c.keys().cloned()).collect();
    versions.sort();
    versions.dedup();
    let colour = |v: &str| PALETTE[versions.iter().position(|x| x == v).unwrap_or(0) % PALETTE.len()];
    let max = history.iter().map(|(_, c)| c.values().sum::<i64>()).max().unwrap_or(1).max(1) as f64;
    let (w, h) = (600.0, 160.0);
    let bar = w / history.len().max(1) as f64;
    let first = history.first().map(|(t, _)| crate::time::rfc3339(*t)).unwrap_or_default();
    let last = history.last().map(|(t, _)| crate::time::rfc3339(*t)).unwrap_or_default();
    html! {
        figure.chart {
            svg viewBox={ "0 0 " (w) " " (h) } role="img" aria-label="devices per version over time" {
                @for (i, (t, counts)) in history.iter().enumerate() {
                    @let mut y = h;
                    @for v in &versions {
                        @let n = counts.get(v).copied().unwrap_or(0);
                        @if n > 0 {
                            @let bh = n as f64 / max * (h - 4.0);
                            @let top = { y -= bh; y };
                            rect x=(format!("{:.1}", i as f64 * bar + 1.0)) y=(format!("{top:.1}")) width=(format!("{:.1}", (bar - 2.0).max(1.0)))
                                height=(format!("{bh:.1}")) fill=(colour(v)) {
                                title { (v) ": " (n) " devices at " (crate::time::rfc3339(*t)) }
                            }
                        }
                    }
                }
            }
            figcaption {
                "From " (time(&first)) " to " (time(&last)) ". "
                @for v in &versions {
                    span.legend { svg.swatch viewBox="0 0 10 10" aria-hidden="true" { rect width="10" height="10" fill=(colour(v)) {} } " " (v) }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- devices

#[derive(Debug, Default, Deserialize)]
pub struct DevicesParams {
    #[serde(default)]
    selector: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    sort: String,
    #[serde(default)]
    offset: i64,
}

pub async fn devices(
    State(state): State<AppState>,
    session: Session,
    Query(p): Query<DevicesParams>,
) -> UiResult<Response> {
    let sort = if p.sort.is_empty() { "name".to_string() } else { p.sort.clone() };
    let q = DeviceListQuery {
        selector: Some(p.selector.clone()).filter(|s| !s.trim().is_empty()),
        limit: Some(PAGE_ROWS),
        q: Some(p.q.clone()).filter(|s| !s.trim().is_empty()),
        sort: Some(sort.clone()),
        offset: Some(p.offset),
        ..Default::default()
    };
    let answer = http::devices::list(State(state.clone()), session.caller(), ApiQuery(q)).await;
    let link = |sort: &str, offset: i64| {
        let mut qs = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [("selector", p.selector.as_str()), ("q", p.q.as_str()), ("sort", sort)] {
            if !v.is_empty() {
                qs.append_pair(k, v);
            }
        }
        if offset > 0 {
            qs.append_pair("offset", &offset.to_string());
        }
        format!("/ui/devices?{}", qs.finish())
    };
    let header = |col: &str, label: &str| {
        let (next, mark) = match sort.as_str() {
            s if s == col => (format!("-{col}"), " ▲"),
            s if s.strip_prefix('-') == Some(col) => (col.to_string(), " ▼"),
            _ => (col.to_string(), ""),
        };
        let aria = match mark {
            " ▲" => Some("ascending"),
            " ▼" => Some("descending"),
            _ => None,
        };
        html! { th scope="col" aria-sort=[aria] { a href=(link(&next, 0)) { (label) (mark) } } }
    };
    let (error, rows, next) = match answer {
        Ok(axum::Json(Page { items, next })) => (None, items, next),
        Err(e) => (Some(e), Vec::new(), None),
    };
    let content = html! {
        h1 { "Devices" }
        form.filters method="get" action="/ui/devices" role="search" {
            div {
                label for="selector" { "Label selector" }
                input id="selector" name="selector" value=(p.selector) placeholder="device_type=esp32,site in (a,b)" size="32";
            }
            div {
                label for="q" { "Name or id contains" }
                input id="q" name="q" value=(p.q) type="search";
            }
            input type="hidden" name="sort" value=(sort);
            button type="submit" { "Filter" }
        }
        @if let Some(e) = &error {
            p.error role="alert" data-field=[e.field.as_deref()] { (e.field.as_deref().unwrap_or("")) ": " (e.message) }
        }
        table.data id="devices" {
            thead { tr {
                (header("name", "Name")) th scope="col" { "Id" } (header("current_version", "Version"))
                (header("health", "Health")) th scope="col" { "Labels" } (header("last_seen", "Last seen"))
            } }
            tbody {
                @for d in &rows {
                    tr {
                        td { a href={ "/ui/devices/" (d.id) } { (d.name) } }
                        td { code title=(d.id) { (d.id.to_string()[..8]) "…" } }
                        td { (d.current_version.as_deref().unwrap_or("—")) }
                        td { (badge(d.health.as_str())) }
                        td { (labels(&d.labels)) }
                        td { (time_opt(d.last_seen.as_deref())) }
                    }
                }
                @if rows.is_empty() && error.is_none() { tr { td colspan="6" .muted { "no device matches" } } }
            }
        }
        nav.pager aria-label="pages" {
            @if p.offset > 0 { a rel="prev" href=(link(&sort, (p.offset - PAGE_ROWS).max(0))) { "← Previous" } }
            span { "rows " (p.offset + 1) "–" (p.offset + rows.len() as i64) }
            @if next.is_some() { a rel="next" href=(link(&sort, p.offset + PAGE_ROWS)) { "Next →" } }
        }
    };
    Ok(page(&session, "Devices", "devices", content))
}

pub fn labels(l: &BTreeMap<String, String>) -> Markup {
    html! { @for (k, v) in l { span.label-chip { (k) "=" (v) } " " } }
}

pub async fn device(State(state): State<AppState>, session: Session, Path(id): Path<String>) -> UiResult<Response> {
    let axum::Json(d) = http::devices::get_one(State(state.clone()), session.caller(), Path(id)).await?;
    let actions =
        state.store.list_actions(&ActionQuery { device_id: Some(d.id), limit: 200, ..Default::default() }).await?;
    let events = state
        .store
        .list_events(&EventQuery { device_id: Some(d.id), newest_first: true, limit: PAGE_ROWS, ..Default::default() })
        .await?;
    let content = html! {
        h1 { "Device " (d.name) }
        dl.facts {
            dt { "Id" } dd { code { (d.id) } }
            dt { "Labels" } dd { (labels(&d.labels)) }
            dt { "Current version" } dd { (d.current_version.as_deref().unwrap_or("—")) }
            dt { "Previous version" } dd { (d.previous_version.as_deref().unwrap_or("—")) }
            dt { "Desired version" } dd { (d.desired_version.as_deref().unwrap_or("—")) }
            dt { "Health" } dd { (badge(d.health.as_str())) }
            dt { "Last seen" } dd { (time_opt(d.last_seen.as_deref())) }
            dt { "Registered" } dd { (time(&d.created_at)) }
        }
        section {
            h2 { "Actions" }
            table.data {
                thead { tr { th scope="col" { "Rollout" } th scope="col" { "Kind" } th scope="col" { "State" } th scope="col" { "From" } th scope="col" { "To" } th scope="col" class="num" { "Attempts" } th scope="col" { "Error" } th scope="col" { "Updated" } } }
                tbody {
                    @for a in actions.into_iter().rev().map(http::rollouts::action_view) {
                        tr {
                            td { a href={ "/ui/rollouts/" (a.rollout_id) } { "#" (a.rollout_id) } }
                            td { (a.kind.as_str()) } td { (badge(a.state.as_str())) }
                            td { (a.from_version.as_deref().unwrap_or("—")) } td { (a.to_version) }
                            td.num { (a.attempts) } td { (a.error.as_deref().unwrap_or("")) } td { (time(&a.updated_at)) }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Events" }
            (event_table(events.into_iter().map(http::events::event_view).collect()))
        }
    };
    Ok(page(&session, &d.name, "devices", content))
}

// ---------------------------------------------------------------- releases

#[derive(Debug, Default, Deserialize)]
pub struct Before {
    before: Option<i64>,
}

pub async fn releases(State(state): State<AppState>, session: Session, Query(p): Query<Before>) -> UiResult<Response> {
    let q = api::ReleaseListQuery { limit: Some(PAGE_ROWS), before: p.before };
    let axum::Json(Page { items, next }) = http::releases::list(State(state), session.caller(), ApiQuery(q)).await?;
    let content = html! {
        h1 { "Releases" }
        table.data id="releases" {
            thead { tr { th scope="col" { "Version" } th scope="col" { "Name" } th scope="col" { "Kind" } th scope="col" { "Compatible" } th scope="col" class="num" { "Artifacts" } th scope="col" { "Signed" } th scope="col" { "Created" } } }
            tbody {
                @for r in &items {
                    tr {
                        td { a href={ "/ui/releases/" (r.id) } { (r.version) } }
                        td { (r.name) } td { (r.kind.as_str()) }
                        td { @if r.compatible.is_empty() { span.muted { "all" } } @else { (r.compatible.join(", ")) } }
                        td.num { (r.artifacts.len()) }
                        td { (if r.signature.is_some() { "yes" } else { "no" }) }
                        td { (time(&r.created_at)) }
                    }
                }
                @if items.is_empty() { tr { td colspan="7" .muted { "no releases yet (" code { "otafleet releases create" } ")" } } }
            }
        }
        @if let Some(n) = next { nav.pager { a rel="next" href={ "/ui/releases?before=" (n) } { "Older →" } } }
    };
    Ok(page(&session, "Releases", "releases", content))
}

pub async fn release(State(state): State<AppState>, session: Session, Path(id): Path<String>) -> UiResult<Response> {
    let axum::Json(r) = http::releases::get_one(State(state.clone()), session.caller(), Path(id)).await?;
    let q = RolloutListQuery { release_id: Some(r.id), limit: Some(100), ..Default::default() };
    let axum::Json(used) = http::rollouts::list(State(state), session.caller(), ApiQuery(q)).await?;
    let content = html! {
        h1 { "Release " (r.version) }
        dl.facts {
            dt { "Name" } dd { (r.name) }
            dt { "Kind" } dd { (r.kind.as_str()) }
            dt { "Compatible device types" } dd { @if r.compatible.is_empty() { "all" } @else { (r.compatible.join(", ")) } }
            dt { "Manifest signature" } dd { @if let Some(s) = &r.signature { code.wrap { (s) } } @else { "unsigned" } }
            dt { "Created" } dd { (time(&r.created_at)) }
        }
        section {
            h2 { "Artifacts" }
            table.data {
                thead { tr { th scope="col" { "Name" } th scope="col" class="num" { "Size" } th scope="col" { "SHA-256" } th scope="col" { "Signed" } th scope="col" { "URI" } } }
                tbody {
                    @for a in &r.artifacts {
                        tr {
                            td { (a.name) } td.num { (size(a.size)) } td { code.wrap { (a.sha256) } }
                            td { (if a.signature.is_some() { "yes" } else { "no" }) } td { code.wrap { (a.uri) } }
                        }
                    }
                    @if r.artifacts.is_empty() { tr { td colspan="5" .muted { "no artifacts" } } }
                }
            }
        }
        section {
            h2 { "Rollouts of this release" }
            (super::rollouts::rollout_table(&used.items))
        }
    };
    Ok(page(&session, &r.version, "releases", content))
}

fn size(bytes: i64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

// ---------------------------------------------------------------- events

#[derive(Debug, Default, Deserialize)]
pub struct EventsParams {
    #[serde(default)]
    rollout_id: String,
    #[serde(default)]
    device_id: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    kind: String,
    before: Option<i64>,
}

pub async fn events(
    State(state): State<AppState>,
    session: Session,
    Query(p): Query<EventsParams>,
) -> UiResult<Response> {
    session.caller().require(Role::Viewer)?;
    let mut error = None;
    let rollout_id = match p.rollout_id.trim() {
        "" => None,
        r => r.parse::<i64>().map_err(|_| error = Some("rollout: an id is a number")).ok(),
    };
    let device_id = match p.device_id.trim() {
        "" => None,
        d => d.parse::<uuid::Uuid>().map_err(|_| error = Some("device: an id is a UUID")).ok(),
    };
    let nonempty = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
    let q = EventQuery {
        rollout_id,
        device_id,
        kind: nonempty(&p.kind),
        actor: nonempty(&p.actor),
        before: p.before,
        newest_first: true,
        limit: PAGE_ROWS,
        ..Default::default()
    };
    let events = if error.is_some() { Vec::new() } else { state.store.list_events(&q).await? };
    let older = (events.len() as i64 == PAGE_ROWS).then(|| events.last().map(|e| e.id)).flatten();
    let older_link = older.map(|id| {
        let mut qs = form_urlencoded::Serializer::new(String::new());
        for (k, v) in
            [("rollout_id", &p.rollout_id), ("device_id", &p.device_id), ("actor", &p.actor), ("kind", &p.kind)]
        {
            if !v.is_empty() {
                qs.append_pair(k, v);
            }
        }
        qs.append_pair("before", &id.to_string());
        format!("/ui/events?{}", qs.finish())
    });
    let content = html! {
        h1 { "Events" }
        p.muted { "The audit log, newest first: who did what, when." }
        form.filters method="get" action="/ui/events" role="search" {
            div { label for="rollout_id" { "Rollout" } input id="rollout_id" name="rollout_id" value=(p.rollout_id) inputmode="numeric" size="6"; }
            div { label for="device_id" { "Device id" } input id="device_id" name="device_id" value=(p.device_id) size="36"; }
            div { label for="actor" { "Actor" } input id="actor" name="actor" value=(p.actor) placeholder="token:admin"; }
            div { label for="kind" { "Kind" } input id="kind" name="kind" value=(p.kind) placeholder="rollout.paused"; }
            button type="submit" { "Filter" }
        }
        @if let Some(e) = error { p.error role="alert" { (e) } }
        (event_table(events.into_iter().map(http::events::event_view).collect()))
        @if let Some(l) = older_link { nav.pager { a rel="next" href=(l) { "Older →" } } }
    };
    Ok(page(&session, "Events", "events", content))
}

/// The events table, shared by the device, rollout and events pages.
pub fn event_table(events: Vec<api::Event>) -> Markup {
    html! {
        table.data.events {
            thead { tr { th scope="col" { "When" } th scope="col" { "Kind" } th scope="col" { "Actor" } th scope="col" { "Rollout" } th scope="col" { "Device" } th scope="col" { "Details" } } }
            tbody {
                @for e in &events { (event_row(e)) }
                @if events.is_empty() { tr { td colspan="6" .muted { "no events" } } }
            }
        }
    }
}

pub fn event_row(e: &api::Event) -> Markup {
    html! {
        tr data-event-id=(e.id) {
            td { (time(&e.at)) }
            td { code { (e.kind.as_str()) } }
            td { (e.actor) }
            td { @if let Some(r) = e.rollout_id { a href={ "/ui/rollouts/" (r) } { "#" (r) } } }
            td { @if let Some(d) = e.device_id { a href={ "/ui/devices/" (d) } { code { (d.to_string()[..8]) "…" } } } }
            td { (details(&e.data)) }
        }
    }
}

/// An event's data as `key=value` pairs (nested values as JSON text).
pub fn details(data: &serde_json::Value) -> Markup {
    match data {
        serde_json::Value::Null => html! {},
        serde_json::Value::Object(m) => html! {
            @for (k, v) in m {
                span.kv { span.k { (k) } "=" span.v { (match v { serde_json::Value::String(s) => s.clone(), v => v.to_string() }) } } " "
            }
        },
        v => html! { (v.to_string()) },
    }
}

// ---------------------------------------------------------------- jobs

pub async fn jobs(State(state): State<AppState>, session: Session) -> UiResult<Response> {
    let res = http::compat::jobs(State(state), session.caller(), Default::default()).await?;
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .map_err(|e| UiError::Api(http::error::ApiError::internal(e)))?;
    let jobs: Vec<api::tracker::Job> =
        serde_json::from_slice(&bytes).map_err(|e| UiError::Api(http::error::ApiError::internal(e)))?;
    let shown = jobs.len().min(200);
    let can = session.can(Role::Operator);
    let content = html! {
        h1 { "Jobs" }
        p.muted { "The original OTA Deploy Tracker's view: every rollout as a job." }
        @if can {
            div.grid {
                form.card method="post" action="/ui/jobs/deploy" id="deploy-form" {
                    h2 { "Deploy" }
                    (csrf_field(&session))
                    label for="deploy-version" { "Version" }
                    input id="deploy-version" name="version" required maxlength="128";
                    label for="deploy-wave" { "Wave" }
                    select id="deploy-wave" name="wave" { option value="canary" { "canary" } option value="blue" { "blue" } option value="green" { "green" } }
                    button type="submit" { "Deploy" }
                }
                form.card method="post" action="/ui/jobs/rollback" id="rollback-form" {
                    h2 { "Roll back" }
                    (csrf_field(&session))
                    label for="rollback-version" { "Back to version" }
                    input id="rollback-version" name="version" required maxlength="128";
                    label for="rollback-wave" { "Scope" }
                    select id="rollback-wave" name="wave" { option value="green" { "green" } option value="blue" { "blue" } option value="canary" { "canary" } }
                    button.danger type="submit" { "Roll back" }
                }
            }
        }
        table.data id="jobs" {
            thead { tr { th scope="col" class="num" { "Id" } th scope="col" { "Version" } th scope="col" { "Wave" } th scope="col" { "Status" } th scope="col" { "Created" } } }
            tbody {
                @for j in &jobs[..shown] {
                    tr {
                        td.num { a href={ "/ui/rollouts/" (j.id) } { (j.id) } }
                        td { (j.version) } td { (j.wave) } td { (badge(&j.status)) } td { (time(&j.created_at)) }
                    }
                }
                @if jobs.is_empty() { tr { td colspan="5" .muted { "no jobs yet" } } }
            }
        }
        @if jobs.len() > shown { p.muted { "The newest " (shown) " of " (jobs.len()) " jobs; " a href="/ui/rollouts" { "all rollouts" } "." } }
    };
    Ok(page(&session, "Jobs", "jobs", content))
}

#[derive(Debug, Deserialize)]
pub struct JobForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    wave: Option<String>,
}

pub async fn jobs_deploy(
    State(state): State<AppState>,
    session: Session,
    Form(f): Form<JobForm>,
) -> UiResult<Response> {
    check_csrf(&session, &f.csrf)?;
    let q = api::tracker::DeployQuery { version: f.version, wave: f.wave };
    let axum::Json(r) = http::compat::deploy(State(state), session.caller(), ApiQuery(q)).await?;
    Ok(Redirect::to(&format!("/ui/rollouts/{}", r.job_id)).into_response())
}

pub async fn jobs_rollback(
    State(state): State<AppState>,
    session: Session,
    Form(f): Form<JobForm>,
) -> UiResult<Response> {
    check_csrf(&session, &f.csrf)?;
    let q = api::tracker::RollbackQuery { version: f.version, wave: f.wave };
    let axum::Json(r) = http::compat::rollback(State(state), session.caller(), ApiQuery(q)).await?;
    Ok(Redirect::to(&format!("/ui/rollouts/{}", r.job_id)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use otafleet_store::VersionMoves;

    #[test]
    fn history_is_today_with_the_moves_undone() {
        let current = vec![(Some("2.0".to_string()), 8), (Some("1.0".to_string()), 2)];
        let moves = vec![
            VersionMoves { bucket: 10, from: Some("1.0".into()), to: "2.0".into(), devices: 5 },
            VersionMoves { bucket: 20, from: Some("1.0".into()), to: "2.0".into(), devices: 3 },
        ];
        let h = version_history(&current, &moves, 0, 10, 3);
        let at = |i: usize, v: &str| h[i].1.get(v).copied().unwrap_or(0);
        assert_eq!(h.len(), 4);
        assert_eq!((h[0].0, at(0, "1.0"), at(0, "2.0")), (0, 10, 0));
        assert_eq!((h[1].0, at(1, "1.0"), at(1, "2.0")), (10, 10, 0), "the first move is in the span 10..20");
        assert_eq!((h[2].0, at(2, "1.0"), at(2, "2.0")), (20, 5, 5));
        assert_eq!((h[3].0, at(3, "1.0"), at(3, "2.0")), (30, 2, 8), "today");
        for (_, c) in &h {
            assert_eq!(c.values().sum::<i64>(), 10, "devices are neither made nor lost");
        }
    }
}

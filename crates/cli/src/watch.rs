//! `otafleet rollouts watch ID`: a progress bar per wave until the rollout
//! ends, driven by the event stream
//! (`GET /api/v1/events/stream?rollout_id=&summary=true`).
//! Each event of the rollout (or a tick, for the bake timer) re-reads the
//! rollout's per-wave counts; a dropped stream is reopened with
//! `Last-Event-ID`, so nothing is missed. Exits 0 when the rollout
//! succeeded and non-zero when it failed, was aborted or rolled back, like
//! `kubectl rollout status`. Without a terminal, one line per change.
//!
//! The stream is read with a small line parser rather than an SSE crate: it
//! reads only our own server's framing (`id:`, `event:`, `data:`, comments),
//! and the ids are all it needs.

use crate::client::{Answer, Api};
use crate::output::{self, Format};
use anyhow::{bail, Result};
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use otafleet_api as api;
use otafleet_core::RolloutState;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often the rollout is re-read without events (bake timers, a paused rollout).
const TICK: Duration = Duration::from_secs(2);
/// Re-reads at most this often while events pour in.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// One line of per-wave counts, for logs and for the bar's message.
pub fn wave_line(w: &api::WaveProgress) -> String {
    let mut parts = vec![format!("{} ok", w.succeeded)];
    if w.in_flight > 0 {
        parts.push(format!("{} in flight", w.in_flight));
    }
    if w.failed > 0 {
        parts.push(format!("{} failed", w.failed));
    }
    if w.skipped > 0 {
        parts.push(format!("{} skipped", w.skipped));
    }
    if w.rollbacks > 0 {
        parts.push(format!("{} of {} rolled back", w.rolled_back, w.rollbacks));
    }
    parts.join(", ")
}

/// Devices of a wave that are finished one way or another.
fn done(w: &api::WaveProgress) -> u64 {
    (w.succeeded + w.failed + w.skipped).max(0) as u64
}

/// The rollout's headline: state, wave, and why it stopped if it did.
pub fn headline(r: &api::Rollout) -> String {
    let mut s = format!("rollout {} → {}: {}", r.id, r.version, r.state.as_str());
    if !r.state.is_ended() && r.waves > 0 {
        s.push_str(&format!(", wave {} of {}", (r.current_wave + 1).min(r.waves), r.waves));
    }
    if let Some(reason) = &r.reason {
        s.push_str(&format!(" ({reason})"));
    }
    s
}

struct Bars {
    tty: bool,
    head: ProgressBar,
    waves: Vec<ProgressBar>,
    last_lines: Vec<String>,
    _multi: MultiProgress,
}

impl Bars {
    fn new(r: &api::Rollout) -> Bars {
        let tty = std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let head = multi.add(ProgressBar::new_spinner());
        head.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("a valid template"));
        head.enable_steady_tick(Duration::from_millis(120));
        let style = ProgressStyle::with_template("  {prefix:<8} [{bar:32.green/red}] {pos:>6}/{len:<6} {msg}")
            .expect("a valid template")
            .progress_chars("=> ");
        let waves = r
            .progress
            .iter()
            .flatten()
            .map(|w| {
                let b = multi.add(ProgressBar::new(w.total.max(0) as u64));
                b.set_style(style.clone());
                b.set_prefix(format!("wave {}", w.wave + 1));
                b
            })
            .collect();
        Bars { tty, head, waves, last_lines: Vec::new(), _multi: multi }
    }

    fn show(&mut self, r: &api::Rollout) {
        let head = headline(r);
        self.head.set_message(head.clone());
        let mut lines = vec![head];
        for (w, bar) in r.progress.iter().flatten().zip(&self.waves) {
            bar.set_length(w.total.max(0) as u64);
            bar.set_position(done(w));
            let line = wave_line(w);
            bar.set_message(line.clone());
            lines.push(format!("  wave {}: {}/{} done: {line}", w.wave + 1, done(w), w.total));
        }
        if !self.tty && lines != self.last_lines {
            // Without a terminal, print what changed (a log a CI job can keep).
            for (i, l) in lines.iter().enumerate() {
                if self.last_lines.get(i) != Some(l) {
                    println!("{l}");
                }
            }
        }
        self.last_lines = lines;
    }

    fn finish(&self) {
        self.head.finish();
        for b in &self.waves {
            b.finish();
        }
    }
}

/// Reads one SSE chunk into `buf`; returns the ids of the events completed.
fn feed(buf: &mut String, chunk: &[u8], last: &mut Option<i64>) -> usize {
    buf.push_str(&String::from_utf8_lossy(chunk));
    let mut events = 0;
    while let Some(nl) = buf.find('\n') {
        let line: String = buf.drain(..=nl).collect();
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(id) = line.strip_prefix("id:") {
            if let Ok(id) = id.trim().parse() {
                *last = Some(id);
            }
        } else if line.starts_with("data:") {
            events += 1;
        }
    }
    events
}

async fn fetch(api: &Api, id: i64) -> Result<Answer<api::Rollout>> {
    api.fetch(&format!("/api/v1/rollouts/{id}")).await
}

/// Watches rollout `id` until it ends.
pub async fn watch(api: &Api, id: i64, fmt: Format) -> Result<()> {
    let mut r = fetch(api, id).await?;
    let mut bars = (fmt == Format::Table).then(|| Bars::new(&r.body));
    // Device actions summarized: a signal at most every 500 ms, not one message per device.
    let query = [("rollout_id", id.to_string()), ("summary", "true".to_string())];
    let mut last: Option<i64> = None;
    let mut failures = 0u32;
    'outer: while !r.body.state.is_ended() {
        if let Some(b) = bars.as_mut() {
            b.show(&r.body);
        }
        let res = match api.open_stream("/api/v1/events/stream", &query, last).await {
            Ok(res) => res,
            Err(e) => {
                // Refused (a bad token, a missing permission) is final; an unreachable server is retried.
                if e.downcast_ref::<crate::client::ApiFailure>().is_some() || failures >= 30 {
                    return Err(e.context("opening the event stream"));
                }
                failures += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        failures = 0;
        // Counts may have moved before the stream opened.
        r = fetch(api, id).await?;
        let mut body = res.bytes_stream();
        let mut buf = String::new();
        let mut dirty = false;
        let mut read_at = Instant::now();
        loop {
            if let Some(b) = bars.as_mut() {
                b.show(&r.body);
            }
            if r.body.state.is_ended() {
                break 'outer;
            }
            let wait = if dirty { DEBOUNCE.saturating_sub(read_at.elapsed()) } else { TICK };
            tokio::select! {
                chunk = body.next() => match chunk {
                    Some(Ok(c)) => {
                        dirty |= feed(&mut buf, &c, &mut last) > 0;
                        if !(dirty && read_at.elapsed() >= DEBOUNCE) {
                            continue;
                        }
                    }
                    // Ended or broken: reopen where we were.
                    Some(Err(_)) | None => continue 'outer,
                },
                _ = tokio::time::sleep(wait) => {}
            }
            r = fetch(api, id).await?;
            read_at = Instant::now();
            dirty = false;
        }
    }
    if let Some(b) = bars.as_mut() {
        b.show(&r.body);
        b.finish();
    }
    if fmt == Format::Json {
        output::json(&r.json);
    }
    match r.body.state {
        RolloutState::Succeeded => {
            if fmt == Format::Table {
                println!("rollout {id} succeeded");
            }
            Ok(())
        }
        s => {
            let why = r.body.reason.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
            bail!("rollout {id} ended {}{why}", s.as_str())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parser_takes_ids_across_chunks_and_skips_comments() {
        let mut buf = String::new();
        let mut last = None;
        assert_eq!(feed(&mut buf, b": otafleet event stream, at event 4\n\nid: 5\nevent: action.succ", &mut last), 0);
        assert_eq!(last, Some(5));
        assert_eq!(feed(&mut buf, b"eeded\ndata: {\"id\":5}\n\nid: 6\r\ndata: {}\r\n\r\n", &mut last), 2);
        assert_eq!(last, Some(6));
        assert!(buf.is_empty());
    }

    #[test]
    fn a_wave_line_names_only_what_is_there() {
        let w = api::WaveProgress {
            wave: 0,
            total: 10,
            scheduled: 2,
            in_flight: 3,
            succeeded: 4,
            failed: 1,
            skipped: 0,
            rollbacks: 0,
            rolled_back: 0,
        };
        assert_eq!(wave_line(&w), "4 ok, 3 in flight, 1 failed");
        assert_eq!(done(&w), 5);
    }
}

//! What the agent measures and forwards (`[telemetry]` in its config).
//!
//! Every `interval_secs` the agent scrapes `scrape_url` (a robot
//! application's Prometheus `/metrics`), keeps the series `metrics` names,
//! and sends them with its own measurements in one `POST
//! /device/v1/telemetry` batch. Its own measurements:
//!
//! - `otafleet_agent_install_seconds{version, outcome}`: how long an action
//!   took from its first download byte to its final report;
//! - `otafleet_agent_health_check{version}`: 1 when the health check of a
//!   new version passed, 0 when it failed;
//! - `otafleet_agent_scrape_up`: 1 when the scrape answered, 0 when not (as
//!   Prometheus's own `up`).
//!
//! Own measurements wait in a bounded queue ([`MAX_OWN`], oldest dropped
//! first) until a batch carrying them is taken, so a server that is down for
//! a while gets them later; scraped values are not kept (the next scrape is
//! fresher). A refused batch (422) is logged and dropped: sending it again
//! cannot change the answer.

use crate::client::{DeviceClient, HttpStatus};
use crate::config::TelemetryConfig;
use otafleet_core::exposition;
use otafleet_core::telemetry::{validate_label, Sample, MAX_BATCH, MAX_SAMPLE_LABELS};
use otafleet_core::Millis;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Own measurements kept at most while the server cannot take them.
pub const MAX_OWN: usize = 1000;
/// Longest a scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest exposition read, bytes.
const MAX_SCRAPE_BYTES: usize = 4 << 20;

fn now_ms() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

/// The agent's own measurements, waiting to be sent.
#[derive(Debug, Default)]
pub struct Own {
    queue: Mutex<VecDeque<Sample>>,
}

impl Own {
    /// Records one measurement, taken now.
    pub fn record(&self, metric: &str, value: f64, labels: &[(&str, &str)]) {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let s = Sample { metric: metric.to_string(), value, ts: Some(now_ms()), labels };
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= MAX_OWN {
            q.pop_front();
        }
        q.push_back(s);
    }

    fn take(&self) -> Vec<Sample> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect()
    }

    /// Puts back what could not be sent, ahead of what was recorded since.
    fn put_back(&self, samples: Vec<Sample>) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        for s in samples.into_iter().rev() {
            if q.len() >= MAX_OWN {
                break;
            }
            q.push_front(s);
        }
    }

    /// Measurements waiting.
    pub fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The samples of `text` (an exposition) to forward: the series of the
/// `wanted` names with a finite value, measured at `now` unless the line has
/// its own timestamp. Labels the server would refuse
/// (`core::telemetry::validate_label`; past the 16th) are left out, so one
/// odd label does not cost the whole batch. Pure.
pub fn select(text: &str, wanted: &[String], now: Millis) -> Vec<Sample> {
    let (samples, errors) = exposition::parse(text);
    if let Some(e) = errors.first() {
        tracing::debug!(error = %e, lines = errors.len(), "scrape: lines skipped");
    }
    samples
        .into_iter()
        .filter(|s| s.value.is_finite() && wanted.contains(&s.name))
        .map(|s| {
            let labels: BTreeMap<String, String> =
                s.labels.into_iter().filter(|(k, v)| validate_label(k, v).is_ok()).take(MAX_SAMPLE_LABELS).collect();
            Sample { metric: s.name, value: s.value, ts: Some(s.ts.unwrap_or(now)), labels }
        })
        .collect()
}

async fn scrape(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    let mut res = http
        .get(url)
        .header(reqwest::header::ACCEPT, "text/plain;version=0.0.4")
        .timeout(SCRAPE_TIMEOUT)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .error_for_status()?;
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_SCRAPE_BYTES {
            anyhow::bail!("{url} answered more than {MAX_SCRAPE_BYTES} bytes");
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Scrapes and sends every `interval_secs` until `stop`.
pub async fn run(
    cfg: TelemetryConfig,
    client: DeviceClient,
    http: reqwest::Client,
    own: Arc<Own>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.interval_secs.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let mut scraped = Vec::new();
        if let Some(url) = &cfg.scrape_url {
            let up = match scrape(&http, url).await {
                Ok(text) => {
                    scraped = select(&text, &cfg.metrics, now_ms());
                    1.0
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "telemetry scrape failed");
                    0.0
                }
            };
            if cfg.own {
                own.record("otafleet_agent_scrape_up", up, &[]);
            }
        }
        let mine = if cfg.own { own.take() } else { Vec::new() };
        if let Err(unsent) = send(&client, scraped, mine).await {
            own.put_back(unsent);
        }
    }
}

/// Sends scraped and own samples in batches the server takes; on a failure
/// that a later try may get past, returns the own samples not yet taken.
async fn send(client: &DeviceClient, scraped: Vec<Sample>, mine: Vec<Sample>) -> Result<(), Vec<Sample>> {
    let own_count = mine.len();
    let all: Vec<Sample> = mine.into_iter().chain(scraped).collect();
    let mut sent = 0;
    for batch in all.chunks(MAX_BATCH) {
        let body = otafleet_core::protocol::TelemetryBatch { samples: batch.to_vec() };
        match client.telemetry(&body).await {
            Ok(_) => {}
            Err(e) => {
                let permanent = e.downcast_ref::<HttpStatus>().is_some_and(HttpStatus::is_permanent);
                if permanent {
                    tracing::warn!(error = %format!("{e:#}"), samples = batch.len(), "telemetry refused; dropped");
                } else {
                    tracing::debug!(error = %format!("{e:#}"), "telemetry not sent; own measurements kept");
                    let unsent: Vec<Sample> = all.into_iter().take(own_count).skip(sent).collect();
                    return Err(unsent);
                }
            }
        }
        sent += batch.len();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_the_named_series_with_their_labels() {
        let text = "# TYPE cpu_temp_c gauge\ncpu_temp_c{core=\"0\"} 61.5\ncpu_temp_c{core=\"1\"} 63\n\
                    loop_latency_ms 12 1700000000000\nother 1\nnan_metric NaN\ncpu_temp_c{__reserved=\"x\",ok=\"y\"} 64\n";
        let wanted = vec!["cpu_temp_c".to_string(), "loop_latency_ms".to_string(), "nan_metric".to_string()];
        let s = select(text, &wanted, 5_000);
        assert_eq!(s.len(), 4, "{s:?}");
        assert_eq!((s[0].metric.as_str(), s[0].value, s[0].ts), ("cpu_temp_c", 61.5, Some(5_000)));
        assert_eq!(s[1].labels["core"], "1");
        assert_eq!(s[2].ts, Some(1_700_000_000_000));
        assert_eq!(s[3].labels.len(), 1, "the label the server refuses is left out");
        // What is selected passes the server's checks.
        assert_eq!(otafleet_core::telemetry::validate_batch(&s[..2], 5_000), vec![]);
    }

    #[test]
    fn own_measurements_are_bounded_and_put_back_in_order() {
        let own = Own::default();
        for i in 0..(MAX_OWN + 5) {
            own.record("m", i as f64, &[("version", "1")]);
        }
        assert_eq!(own.len(), MAX_OWN);
        let taken = own.take();
        assert_eq!(taken[0].value, 5.0, "the oldest went first");
        own.record("later", 1.0, &[]);
        own.put_back(taken[..3].to_vec());
        let again = own.take();
        assert_eq!(again.iter().map(|s| s.value).take(3).collect::<Vec<_>>(), [5.0, 6.0, 7.0]);
        assert_eq!(again.last().unwrap().metric, "later");
    }
}

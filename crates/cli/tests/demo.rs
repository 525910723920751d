//! The README's first command, `otafleet demo`, run to its end (`--exit`):
//! its three acts come out as they are meant to — 2.0.0 reaches the whole
//! fleet through canary, blue and green; 2.1.0's failing health check rolls
//! its canary back; 2.2.0 installs, its canary runs hot against the fleet's
//! baseline and the analysis rolls it back, with the numbers — and the
//! original tracker's job list says the same.

mod common;

use common::bin;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_demo_plays_its_three_acts_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(bin())
        .args(["demo", "--exit"])
        .stdout(Stdio::from(std::fs::File::create(&out_path).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()))
        .spawn()
        .unwrap();
    // It takes seconds; a rollout that never ended would wait 10 minutes.
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if t0.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap();
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{stdout}\n{stderr}");
    let has = |s: &str| assert!(stdout.contains(s), "no {s:?} in:\n{stdout}");
    has("50 simulated devices running 1.0.0 registered");
    has("2.0.0 canary (job 1)  1/1 devices, succeeded");
    has("2.0.0 blue (job 2)  2/2 devices, succeeded");
    has("2.0.0 green (job 3)  47/47 devices, succeeded");
    has("job 4: rolled_back — wave 0 failure rate 1.000 (1 of 1) exceeded the failure threshold 0.05");
    has("rollout 5: rolled_back — 1 of 1 measurements of 'cpu-temp-vs-baseline' failed");
    // The analysis's numbers: the canary's p95 above 1.1 × the baseline of the 49 others.
    let line = stdout.lines().find(|l| l.contains("cpu-temp-vs-baseline wave 0: fail: p95")).expect("the measurement");
    let num = |after: &str| -> f64 {
        let rest = &line[line.find(after).unwrap_or_else(|| panic!("{after:?} in {line}")) + after.len()..];
        rest.trim_start().split(|c: char| !(c.is_ascii_digit() || c == '.')).next().unwrap().parse().unwrap()
    };
    let (p95, limit, baseline) = (num("fail: p95"), num("limit"), num("× baseline"));
    assert!(p95 > limit && (limit - 1.1 * baseline).abs() < 0.1, "{line}");
    assert!(line.contains("from 49 devices on the old version"), "{line}");
    // The tracker's jobs: three complete, two rolled back.
    let jobs: Vec<&str> = stdout.lines().skip_while(|l| !l.starts_with("ID ")).skip(1).take(5).collect();
    let statuses: Vec<&str> = jobs.iter().filter_map(|l| l.split_whitespace().nth(3)).collect();
    assert_eq!(statuses, ["rolled_back", "rolled_back", "complete", "complete", "complete"], "{jobs:?}");
    has("errors 0");
}

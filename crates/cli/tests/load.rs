//! Bounded loopback load with clients that hang up mid-request, against a
//! SQLite database holding tens of thousands of rollouts: afterwards every
//! write must still get the database's lock at once, `/readyz` must say
//! ready, and another process must be able to take the write lock.
//!
//! What it reproduces: a load generator closing its connections in the
//! middle of `POST /ota/deploy` used to leave a pooled connection inside an
//! open transaction, after which every write waited 10 s and failed with
//! `database is locked` until the server was restarted.

mod common;

use common::*;
use sqlx::Connection;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Rollouts in the database before the load (the report saw the lock-up
/// with 13,000–27,000).
const ROLLOUTS: i64 = 20_000;
const CLIENTS: usize = 32;
const LOAD: Duration = Duration::from_secs(6);

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").trim_end_matches('/').to_string()
}

/// Sends a deploy and hangs up after `wait` (zero: right after the request
/// line and headers), or reads the whole answer when `wait` is None.
fn deploy(addr: &str, n: u64, wait: Option<Duration>) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let req = format!(
        "POST /ota/deploy?version=9.{n}.0&wave=canary HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())?;
    match wait {
        Some(w) => {
            if !w.is_zero() {
                std::thread::sleep(w);
            }
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        None => {
            let mut sink = Vec::new();
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            let _ = s.read_to_end(&mut sink);
        }
    }
    Ok(())
}

#[test]
fn clients_hanging_up_mid_request_leave_no_lock_behind() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("otafleet.db");
    let url = sqlite_url(&dir);
    let s = Server::start(&url, &[]);
    let http = Http::new(&s.url);
    let r = http.post("/ota/deploy?version=1.0.0&wave=canary", Some(ADMIN), None);
    assert_eq!(r.status, 200, "{}", r.body);

    // Tens of thousands of rollouts, cloned from that one by SQL (the API
    // would take minutes to make them).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
        sqlx::query("PRAGMA busy_timeout = 10000").execute(&mut c).await.unwrap();
        let cols = "release_id, version, kind, preset, target, strategy, state, current_wave, waves, start_at, \
                    reason, rollback_requested, promote, created_by, created_at, updated_at";
        sqlx::query(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
             INSERT INTO rollouts ({cols}) SELECT {cols} FROM rollouts, n WHERE rollouts.id = 1"
        ))
        .bind(ROLLOUTS)
        .execute(&mut c)
        .await
        .unwrap();
        c.close().await.unwrap();
    });

    let target = addr(&s.url);
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let target = target.clone();
            std::thread::spawn(move || {
                // xorshift: a fixed, different sequence per client.
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
                let mut next = move |n: u64| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x % n
                };
                let (mut sent, mut hung_up) = (0u64, 0u64);
                while started.elapsed() < LOAD {
                    let n = (t as u64) * 1_000_000 + sent;
                    // Mostly hang up at once or within a few ms (while the
                    // server is inside the handler); one in eight waits for the answer.
                    let wait = match next(8) {
                        0 => None,
                        1..=3 => Some(Duration::ZERO),
                        _ => Some(Duration::from_micros(50 + next(4_000))),
                    };
                    if deploy(&target, n, wait).is_ok() {
                        sent += 1;
                        hung_up += u64::from(wait.is_some());
                    }
                }
                (sent, hung_up)
            })
        })
        .collect();
    let (mut sent, mut hung_up) = (0, 0);
    for t in threads {
        let (s, h) = t.join().unwrap();
        sent += s;
        hung_up += h;
    }
    println!("{sent} deploys sent by {CLIENTS} clients in {LOAD:?}, {hung_up} of them hung up on");
    assert!(hung_up > 100, "the load did not hang up on enough requests ({hung_up})");

    // Every write after the load gets its lock at once.
    for i in 0..20 {
        let t = Instant::now();
        let r = http.post(&format!("/ota/deploy?version=8.{i}.0&wave=canary"), Some(ADMIN), None);
        assert_eq!(r.status, 200, "deploy {i} after the load: {}", r.body);
        assert!(t.elapsed() < Duration::from_secs(3), "deploy {i} after the load took {:?}", t.elapsed());
    }
    let ready = http.get("/readyz", None);
    assert_eq!(ready.status, 200, "{}", ready.body);
    // And another process can take the write lock: nothing inside otafleet holds it.
    rt.block_on(async {
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
        sqlx::query("PRAGMA busy_timeout = 3000").execute(&mut c).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE").execute(&mut c).await.expect("an outside BEGIN IMMEDIATE");
        sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rollouts").fetch_one(&mut c).await.unwrap();
        assert!(n > ROLLOUTS, "{n} rollouts");
    });
}

//! Shared helpers for the end-to-end tests: start the real `otafleet` binary
//! on a free port with a temporary database, talk HTTP to it, kill it.
#![allow(dead_code)]

pub mod browser;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const ADMIN: &str = "ota_test_admin_secret_0123456789";

/// `serve` flags for tests that watch telemetry: 1 s windows, written within a
/// second of closing, alerts evaluated every 300 ms.
pub const QUICK_TELEMETRY: [&str; 10] = [
    "--telemetry-resolutions",
    "1s:1h,1m:1d",
    "--telemetry-flush",
    "200ms",
    "--telemetry-grace",
    "500ms",
    "--telemetry-hold",
    "1s",
    "--alert-interval",
    "300ms",
];

/// A simulated fleet against `server` (`otafleet sim` with the admin token,
/// then `args`), its output discarded; kill it when done.
pub fn spawn_sim(server: &str, args: &[&str]) -> Child {
    Command::new(bin())
        .arg("sim")
        .args(args)
        .env("OTAFLEET_URL", server)
        .env("OTAFLEET_TOKEN", ADMIN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_otafleet"))
}

pub struct Server {
    pub child: Child,
    pub url: String,
    pub db_url: String,
}

impl Server {
    /// Starts `otafleet serve` on 127.0.0.1:0 against `db_url` with extra args.
    pub fn start(db_url: &str, extra: &[&str]) -> Server {
        Self::start_at(db_url, "127.0.0.1:0", extra)
    }

    /// Like [`Server::start`] on a given address (to restart on the same port).
    pub fn start_at(db_url: &str, listen: &str, extra: &[&str]) -> Server {
        Self::start_with_admin(db_url, listen, extra, ADMIN)
    }

    /// Like [`Server::start_at`] with another `OTAFLEET_ADMIN_TOKEN`.
    pub fn start_with_admin(db_url: &str, listen: &str, extra: &[&str], admin: &str) -> Server {
        let mut child = Command::new(bin())
            .args(["serve", "--listen", listen, "--database-url", db_url])
            .args(extra)
            .env("OTAFLEET_ADMIN_TOKEN", admin)
            .env("OTAFLEET_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn otafleet serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(u) = l.strip_prefix("otafleet listening on ") {
                        break u.trim().to_string();
                    }
                }
                other => panic!("server exited before listening: {other:?}"),
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, url, db_url: db_url.to_string() }
    }

    /// SIGKILL: no graceful anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe_free_sigterm(self.child.id());
        self.child.wait().expect("wait")
    }
}

fn unsafe_free_sigterm(pid: u32) {
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("otafleet.db").display())
}

/// A PostgreSQL database for this test, or None (with a visible message).
pub fn postgres_url() -> Option<String> {
    let base = std::env::var("OTAFLEET_TEST_POSTGRES_URL").ok().filter(|s| !s.is_empty());
    match base {
        None => {
            eprintln!("SKIPPED PostgreSQL variant: set OTAFLEET_TEST_POSTGRES_URL to run it");
            None
        }
        Some(b) => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            Some(rt.block_on(otafleet_store::fresh_postgres_database(&b)).expect("create test database"))
        }
    }
}

pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

/// Blocking HTTP helper (tests stay simple and sequential).
pub struct Http {
    pub base: String,
    client: reqwest::blocking::Client,
}

impl Http {
    pub fn new(base: &str) -> Self {
        Self::trusting(base, None)
    }

    /// An HTTP helper that also trusts the CA in the PEM file `ca` (for a TLS server).
    pub fn trusting(base: &str, ca: Option<&std::path::Path>) -> Self {
        let mut b = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).pool_max_idle_per_host(0);
        if let Some(ca) = ca {
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap());
        }
        Http { base: base.to_string(), client: b.build().unwrap() }
    }

    pub fn req(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Resp {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.client.request(m, format!("{}{}", self.base, path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.header("content-type", "application/json").body(b.to_string());
        }
        let res = r.send().expect("request");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp { status, headers, body, text }
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.req("GET", path, token, None)
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: Option<&str>) -> Resp {
        self.req("POST", path, token, body)
    }
}

/// Runs the CLI binary against a server; returns (exit code, stdout, stderr).
pub fn cli(server: &str, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    cli_env(server, token, args, &[])
}

/// Polls until `f` returns Some or the timeout passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < end, "condition not met within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A test CA and a server certificate it signed (for 127.0.0.1 and
/// localhost), as PEM files in a directory.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SHA-256 of the server certificate, as `otafleet_rt::tls::fingerprint` gives it.
    pub fingerprint: String,
}

pub fn pki(dir: &std::path::Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "otafleet test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer).unwrap();
    let p = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        fingerprint: otafleet_rt::tls::fingerprint(cert.der()),
    };
    std::fs::write(&p.ca, ca_cert.pem()).unwrap();
    std::fs::write(&p.cert, cert.pem()).unwrap();
    std::fs::write(&p.key, key.serialize_pem()).unwrap();
    p
}

/// Like [`cli`], with more environment variables (e.g. `OTAFLEET_CA_FILE`).
pub fn cli_env(server: &str, token: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = Command::new(bin());
    c.args(args).env("OTAFLEET_URL", server).env_remove("OTAFLEET_TOKEN").env_remove("OTAFLEET_CA_FILE");
    if let Some(t) = token {
        c.env("OTAFLEET_TOKEN", t);
    }
    c.envs(env.iter().copied());
    let out = c.output().expect("run otafleet");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

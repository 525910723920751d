//! Uploads under hostile or unlucky conditions, against the real binary: a
//! refusal decided before the body is read, nothing left behind by refused or
//! interrupted uploads, the start-up sweep of temporary files, `otafleet
//! artifacts gc`, and names that are no file names.

mod common;

use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Env {
    dir: tempfile::TempDir,
    server: Server,
    h: Http,
}

impl Env {
    fn start() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let server = Server::start(&sqlite_url(&dir), &["--data-dir", data.to_str().unwrap()]);
        let h = Http::new(&server.url);
        Env { dir, server, h }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn addr(&self) -> String {
        self.server.url.trim_start_matches("http://").trim_end_matches('/').to_string()
    }

    fn release(&self, version: &str) {
        let r = self.h.post("/api/v1/releases", Some(ADMIN), Some(&json!({"version": version}).to_string()));
        assert_eq!(r.status, 201, "{}", r.text);
    }

    fn upload(&self, version: &str, name: &str, bytes: &[u8]) -> (u16, String) {
        let res = reqwest::blocking::Client::new()
            .put(format!("{}/api/v1/releases/{version}/artifacts/{name}", self.server.url))
            .bearer_auth(ADMIN)
            .body(bytes.to_vec())
            .send()
            .unwrap();
        (res.status().as_u16(), res.text().unwrap_or_default())
    }

    /// A rollout of `version` to one registered device: the release is now in use.
    fn use_release(&self, version: &str) {
        let d = self.h.post(
            "/api/v1/devices",
            Some(ADMIN),
            Some(&json!({"name": "d1", "labels": {"device_type": "esp32"}, "current_version": "0.1"}).to_string()),
        );
        assert_eq!(d.status, 201, "{}", d.text);
        let id = d.body["device"]["id"].as_str().or(d.body["id"].as_str()).unwrap().to_string();
        let r = self.h.post(
            "/api/v1/rollouts",
            Some(ADMIN),
            Some(&json!({"version": version, "devices": [id]}).to_string()),
        );
        assert_eq!(r.status, 201, "{}", r.text);
    }

    /// Opens a raw connection and sends the head of a PUT announcing `len` bytes.
    fn raw_put(&self, path: &str, len: u64) -> TcpStream {
        let mut s = TcpStream::connect(self.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "PUT {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n",
            self.addr()
        )
        .unwrap();
        s
    }
}

fn files(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

fn status_line(s: &mut TcpStream) -> String {
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_string()
}

#[test]
fn an_upload_to_a_used_release_is_refused_before_its_body_and_leaves_nothing() {
    let env = Env::start();
    env.release("1.0");
    env.use_release("1.0");
    // 100 MB announced, none sent: the answer must come anyway.
    let mut s = env.raw_put("/api/v1/releases/1.0/artifacts/fw.bin", 100_000_000);
    let line = status_line(&mut s);
    assert!(line.contains(" 409 "), "expected a 409 before the body, got {line:?}");
    drop(s);
    // Sent in full, it is refused just the same and stores nothing.
    let (status, text) = env.upload("1.0", "fw.bin", &[7u8; 100_000]);
    assert_eq!(status, 409, "{text}");
    assert_eq!(files(&env.data().join("artifacts")), Vec::<String>::new());
    assert_eq!(files(&env.data().join("tmp")), Vec::<String>::new());
}

#[test]
fn an_upload_cut_mid_stream_leaves_no_file() {
    let env = Env::start();
    env.release("1.0");
    for _ in 0..3 {
        let mut s = env.raw_put("/api/v1/releases/1.0/artifacts/fw.bin", 50_000_000);
        let chunk = vec![1u8; 1 << 20];
        for _ in 0..5 {
            s.write_all(&chunk).unwrap();
        }
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // The client dies: the connection closes with 45 MB still announced.
        drop(s);
    }
    eventually(Duration::from_secs(10), || {
        (files(&env.data().join("tmp")).is_empty() && files(&env.data().join("artifacts")).is_empty()).then_some(())
    });
    // The server is fine and the release unchanged.
    let r = env.h.get("/api/v1/releases/1.0", Some(ADMIN));
    assert_eq!(r.body["artifacts"], json!([]), "{}", r.text);
}

#[test]
fn temporary_files_are_swept_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("tmp")).unwrap();
    std::fs::write(data.join("tmp").join("upload-left-over"), vec![0u8; 4096]).unwrap();
    let _s = Server::start(&sqlite_url(&dir), &["--data-dir", data.to_str().unwrap()]);
    assert_eq!(files(&data.join("tmp")), Vec::<String>::new());
}

#[test]
fn artifacts_gc_frees_only_unreferenced_blobs() {
    let env = Env::start();
    env.release("1.0");
    assert_eq!(env.upload("1.0", "fw.bin", b"first content").0, 201);
    // The same name again replaces the artifact: the first blob is referenced no more.
    assert_eq!(env.upload("1.0", "fw.bin", b"second content").0, 201);
    assert_eq!(env.upload("1.0", "extra.bin", b"kept").0, 201);
    assert_eq!(files(&env.data().join("artifacts")).len(), 3);
    let url = env.server.url.clone();
    let (code, out, err) = cli(&url, Some(ADMIN), &["artifacts", "gc", "--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("would free 1 artifact") && out.contains("13 bytes"), "{out}");
    assert_eq!(files(&env.data().join("artifacts")).len(), 3, "a dry run deletes nothing");
    let (code, out, err) = cli(&url, Some(ADMIN), &["artifacts", "gc"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("freed 1 artifact") && out.contains("13 bytes"), "{out}");
    assert_eq!(files(&env.data().join("artifacts")).len(), 2);
    let (code, out, _) = cli(&url, Some(ADMIN), &["artifacts", "gc", "--output", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["freed"], json!([]));
    // Operators may not collect garbage; it is an admin's call.
    let op = env.h.post("/api/v1/tokens", Some(ADMIN), Some(r#"{"name":"op","role":"operator"}"#));
    let op = op.body["token"].as_str().unwrap().to_string();
    assert_eq!(env.h.post("/api/v1/admin/artifacts/gc", Some(&op), None).status, 403);
}

#[test]
fn upload_names_must_be_file_names() {
    let env = Env::start();
    env.release("1.0");
    // Raw requests: an HTTP client would resolve `..` and `%2E%2E` away.
    for bad in ["..", "%2E%2E", ".", "a%0Ab", "%2Ehidden", "a%E2%80%AEb", "a%5Cb", "a%00b"] {
        let mut s = env.raw_put(&format!("/api/v1/releases/1.0/artifacts/{bad}"), 1);
        s.write_all(b"x").unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 422 "), "{bad}: {answer}");
        assert!(answer.contains("\"field\":\"name\""), "{bad}: {answer}");
    }
    // The CLI encodes the name into the path: `#` is part of the name, not a fragment.
    let f = env.dir.path().join("fw#1.bin");
    std::fs::write(&f, b"hash in the name").unwrap();
    let url = env.server.url.clone();
    let (code, out, err) = cli(&url, Some(ADMIN), &["releases", "upload", "1.0", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("uploaded fw#1.bin to release 1.0: 16 bytes"), "{out}");
    let r = env.h.get("/api/v1/releases/1.0", Some(ADMIN));
    assert_eq!(r.body["artifacts"][0]["name"], "fw#1.bin", "{}", r.text);
    // Any refusal is a failure of the command.
    let (code, _, err) = cli(&url, Some(ADMIN), &["releases", "upload", "9.9", f.to_str().unwrap()]);
    assert_ne!(code, 0, "{err}");
    let (code, _, err) = cli(&url, Some(ADMIN), &["releases", "upload", "1.0", f.to_str().unwrap(), "--name", ".."]);
    assert_ne!(code, 0);
    assert!(err.contains("name"), "{err}");
}

#[test]
fn http_artifact_uris_need_the_flag() {
    let body = json!({"version": "1.0", "artifacts": [
        {"name": "fw.bin", "uri": "http://cdn.local/fw.bin", "size": 3, "sha256": "ab".repeat(32)}]})
    .to_string();
    let env = Env::start();
    let r = env.h.post("/api/v1/releases", Some(ADMIN), Some(&body));
    assert_eq!((r.status, r.body["error"]["field"].as_str()), (422, Some("artifacts[0].uri")), "{}", r.text);
    assert!(r.text.contains("--allow-http-artifacts"), "{}", r.text);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&sqlite_url(&dir), &["--allow-http-artifacts", "--data-dir", data.to_str().unwrap()]);
    let r = Http::new(&s.url).post("/api/v1/releases", Some(ADMIN), Some(&body));
    assert_eq!(r.status, 201, "{}", r.text);
}

//! A headless Chromium driven through `chromedriver` with the W3C WebDriver
//! protocol (JSON over HTTP, so the tests' blocking reqwest client is all it
//! needs; an async WebDriver crate would bring a second HTTP stack for a
//! dozen calls). `Browser::start` is None, with a `SKIPPED` line, where
//! Chromium is not installed, unless `OTAFLEET_TEST_BROWSER` is set (as in
//! `.ci/run`), which makes a missing browser a failure.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
    pub shots: PathBuf,
}

fn find(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

impl Browser {
    pub fn start(shots: &Path) -> Option<Browser> {
        let chromium = find(&["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]);
        let driver = find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            assert!(
                std::env::var_os("OTAFLEET_TEST_BROWSER").is_none(),
                "OTAFLEET_TEST_BROWSER is set but chromium/chromedriver are missing (apt-get install chromium chromium-driver)"
            );
            eprintln!("SKIPPED browser test: no chromium + chromedriver (apt-get install chromium chromium-driver)");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                         "--disable-dev-shm-usage", "--window-size=1280,800"]
            }
        }}});
        let res: Value = http.post(format!("{base}/session")).json(&caps).send().unwrap().json().unwrap();
        let session = res["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {res}")).to_string();
        std::fs::create_dir_all(shots).unwrap();
        Some(Browser { driver: child, base, session, http, shots: shots.to_path_buf() })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or(json!({}))),
        };
        let v: Value = req.send().expect("webdriver").json().expect("webdriver json");
        if v["value"].get("error").is_some() {
            panic!("webdriver {method} {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})));
    }

    pub fn url(&self) -> String {
        self.call("GET", "/url", None).as_str().unwrap_or_default().to_string()
    }

    /// The element a CSS selector finds, waiting up to 10 s for it.
    pub fn find(&self, css: &str) -> String {
        self.wait_for(&format!("{css:?} on {}", self.url()), Duration::from_secs(10), || self.try_find(css))
    }

    pub fn try_find(&self, css: &str) -> Option<String> {
        let url = format!("{}/session/{}/element", self.base, self.session);
        let v: Value =
            self.http.post(url).json(&json!({"using": "css selector", "value": css})).send().ok()?.json().ok()?;
        v["value"].as_object()?.values().next()?.as_str().map(str::to_string)
    }

    pub fn count(&self, css: &str) -> usize {
        self.script(&format!("return document.querySelectorAll({css:?}).length"), json!([])).as_u64().unwrap() as usize
    }

    pub fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), None);
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/clear"), None);
        self.call("POST", &format!("/element/{e}/value"), Some(json!({"text": text})));
    }

    pub fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.call("GET", &format!("/element/{e}/text"), None).as_str().unwrap_or_default().to_string()
    }

    pub fn script(&self, js: &str, args: Value) -> Value {
        self.call("POST", "/execute/sync", Some(json!({"script": js, "args": args})))
    }

    /// Runs an async script: its last argument is the callback.
    pub fn script_async(&self, js: &str, args: Value) -> Value {
        self.call("POST", "/execute/async", Some(json!({"script": js, "args": args})))
    }

    /// Presses one key (a WebDriver key code such as `\u{E004}`, Tab) on the focused element.
    pub fn press(&self, key: &str) {
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]});
        self.call("POST", "/actions", Some(actions));
    }

    pub fn delete_cookies(&self) {
        self.call("DELETE", "/cookie", None);
    }

    pub fn window(&self, width: u32, height: u32) {
        self.call("POST", "/window/rect", Some(json!({"width": width, "height": height})));
    }

    /// Saves a PNG of the viewport as `<shots>/<name>.png`.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine;
        let b64 = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap()).unwrap();
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    pub fn wait_for<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(format!("{}/session/{}", self.base, self.session)).send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

//! The device protocol client, shared by the real agent and the simulated
//! fleet so the protocol is written once: `POST /device/v1/enroll` (with an
//! enrollment token), `POST /device/v1/checkin`, `GET /device/v1/actions/{id}`,
//! `POST /device/v1/status` and artifact downloads, authenticated with the
//! device's own token. Downloads resume: a partial file is kept and continued
//! with an HTTP `Range` request, and its SHA-256 is checked before it is used.

use anyhow::{anyhow, Context, Result};
use otafleet_core::protocol::{
    ActionDetail, CheckinRequest, CheckinResponse, EnrollRequest, EnrollResponse, StatusAck, StatusReport,
    TelemetryAccepted, TelemetryBatch,
};
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Timeout of one JSON request (downloads use a stall timeout instead).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The server answered with an error status.
#[derive(Debug, thiserror::Error)]
#[error("{method} {path}: {status}: {text}")]
pub struct HttpStatus {
    pub method: Method,
    pub path: String,
    pub status: StatusCode,
    pub text: String,
}

impl HttpStatus {
    /// A refusal that sending the same request again cannot change.
    pub fn is_permanent(&self) -> bool {
        self.status.is_client_error()
            && !matches!(
                self.status,
                StatusCode::UNAUTHORIZED | StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
            )
    }
}

/// Why a download did not produce the expected file.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// Worth retrying later: the partial file is kept and resumed.
    #[error("{0:#}")]
    Transient(anyhow::Error),
    /// Retrying cannot help: the bytes are not the ones the signed manifest
    /// names (the partial file was deleted), or the server does not have them.
    #[error("{0}")]
    Permanent(String),
}

/// How a download went, for logs and measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Downloaded {
    /// Bytes that were already on disk from an earlier, interrupted attempt.
    pub resumed_from: u64,
    pub size: u64,
}

#[derive(Clone)]
pub struct DeviceClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl DeviceClient {
    pub fn new(base: &str, token: &str, http: reqwest::Client) -> Self {
        DeviceClient { base: base.trim_end_matches('/').to_string(), token: token.to_string(), http }
    }

    /// Enrolls with an enrollment token; the answer carries the device's own token.
    pub async fn enroll(
        http: &reqwest::Client,
        base: &str,
        enrollment_token: &str,
        req: &EnrollRequest,
    ) -> Result<EnrollResponse> {
        DeviceClient::new(base, enrollment_token, http.clone()).call(Method::POST, "/device/v1/enroll", Some(req)).await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<&B>) -> Result<T> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(REQUEST_TIMEOUT);
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await.with_context(|| format!("{method} {}{path}", self.base))?;
        let status = res.status();
        if !status.is_success() {
            let text = res.text().await.unwrap_or_default();
            return Err(HttpStatus { method, path: path.to_string(), status, text }.into());
        }
        res.json().await.with_context(|| format!("decoding the answer of {method} {path}"))
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn checkin(&self, req: &CheckinRequest) -> Result<CheckinResponse> {
        self.post("/device/v1/checkin", req).await
    }

    pub async fn report(&self, report: &StatusReport) -> Result<StatusAck> {
        self.post("/device/v1/status", report).await
    }

    /// Sends a batch of telemetry samples (all taken, or the whole batch refused).
    pub async fn telemetry(&self, batch: &TelemetryBatch) -> Result<TelemetryAccepted> {
        self.post("/device/v1/telemetry", batch).await
    }

    /// One of this device's actions with the signed release manifest.
    pub async fn action(&self, id: i64) -> Result<ActionDetail> {
        self.call::<(), _>(Method::GET, &format!("/device/v1/actions/{id}"), None).await
    }

    /// Absolute URL of an artifact uri, and whether to send the device token
    /// (only to our own server, never to a third-party artifact host).
    fn artifact_url(&self, uri: &str) -> (String, bool) {
        if uri.starts_with('/') {
            (format!("{}{uri}", self.base), true)
        } else {
            let ours = uri.strip_prefix(&self.base).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            (uri.to_string(), ours)
        }
    }

    /// Downloads `uri` to `dest`, resuming from `dest.part` if an earlier
    /// attempt left one, and checks size and SHA-256 before renaming the
    /// part into place. `rate_limit` caps bytes per second; `stall` is how long
    /// to wait for the next bytes before giving up (the part is kept).
    pub async fn download(
        &self,
        uri: &str,
        dest: &Path,
        size: u64,
        sha256: &str,
        rate_limit: Option<u64>,
        stall: Duration,
    ) -> Result<Downloaded, DownloadError> {
        use DownloadError::{Permanent, Transient};
        let part = dest.with_extension("part");
        let mut have = tokio::fs::metadata(&part).await.map(|m| m.len()).unwrap_or(0);
        if have > size {
            have = 0;
        }
        let (url, with_token) = self.artifact_url(uri);
        let mut req = self.http.get(&url);
        if with_token {
            req = req.bearer_auth(&self.token);
        }
        if have > 0 {
            req = req.header(RANGE, format!("bytes={have}-"));
        }
        let mut res = tokio::time::timeout(stall, req.send())
            .await
            .map_err(|_| Transient(anyhow!("GET {url}: no answer within {stall:?}")))?
            .map_err(|e| Transient(anyhow!(e).context(format!("GET {url}"))))?;
        let status = res.status();
        let resumed_from = match status {
            StatusCode::PARTIAL_CONTENT => {
                let range = res.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or_default();
                if !range.starts_with(&format!("bytes {have}-")) {
                    let _ = tokio::fs::remove_file(&part).await;
                    return Err(Transient(anyhow!("GET {url}: unexpected Content-Range '{range}'; restarting")));
                }
                have
            }
            StatusCode::OK => 0,
            StatusCode::RANGE_NOT_SATISFIABLE if have == size => have,
            s => {
                let text = res.text().await.unwrap_or_default();
                if s == StatusCode::RANGE_NOT_SATISFIABLE {
                    let _ = tokio::fs::remove_file(&part).await;
                }
                let e = anyhow!("GET {url}: {s}: {}", text.chars().take(300).collect::<String>());
                return Err(if s == StatusCode::NOT_FOUND || s == StatusCode::FORBIDDEN {
                    Permanent(format!("{e:#}"))
                } else {
                    Transient(e)
                });
            }
        };
        let mut hasher = Sha256::new();
        let mut file = if resumed_from > 0 {
            // Hash what is already there, then append.
            let mut f = tokio::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .open(&part)
                .await
                .map_err(|e| Transient(anyhow!("opening {}: {e}", part.display())))?;
            let mut buf = vec![0u8; 1 << 16];
            let mut left = resumed_from;
            while left > 0 {
                let n = f.read(&mut buf).await.map_err(|e| Transient(anyhow!("reading {}: {e}", part.display())))?;
                if n == 0 {
                    break;
                }
                let n = n.min(left as usize);
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
            f
        } else {
            tokio::fs::File::create(&part).await.map_err(|e| Transient(anyhow!("creating {}: {e}", part.display())))?
        };
        let mut got = resumed_from;
        let started = Instant::now();
        let mut this_session: u64 = 0;
        // A cut connection ends the loop with an error, but what arrived is
        // written out first: tokio's File finishes writes in the background, so
        // without the flush below the next attempt could see (and resume after)
        // a shorter file than the one being completed behind its back.
        let mut cut: Option<DownloadError> = None;
        if status != StatusCode::RANGE_NOT_SATISFIABLE {
            loop {
                let chunk = match tokio::time::timeout(stall, res.chunk()).await {
                    Err(_) => {
                        cut = Some(Transient(anyhow!("GET {url}: no data for {stall:?} at byte {got}")));
                        break;
                    }
                    Ok(Err(e)) => {
                        cut = Some(Transient(anyhow!(e).context(format!("GET {url} at byte {got}"))));
                        break;
                    }
                    Ok(Ok(None)) => break,
                    Ok(Ok(Some(chunk))) => chunk,
                };
                got += chunk.len() as u64;
                if got > size {
                    drop(file);
                    let _ = tokio::fs::remove_file(&part).await;
                    return Err(Permanent(format!("{url} is larger than the {size} bytes the manifest says")));
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(|e| Transient(anyhow!("writing {}: {e}", part.display())))?;
                this_session += chunk.len() as u64;
                if let Some(rate) = rate_limit.filter(|r| *r > 0) {
                    let due = Duration::from_secs_f64(this_session as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        file.flush().await.map_err(|e| Transient(anyhow!("writing {}: {e}", part.display())))?;
        file.sync_all().await.map_err(|e| Transient(anyhow!("syncing {}: {e}", part.display())))?;
        drop(file);
        if let Some(e) = cut {
            return Err(e);
        }
        if got < size {
            return Err(Transient(anyhow!("GET {url}: the connection closed at byte {got} of {size}")));
        }
        let digest = hex::encode(hasher.finalize());
        if !digest.eq_ignore_ascii_case(sha256) {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(Permanent(format!(
                "artifact {}: SHA-256 is {digest}, the signed manifest says {sha256} (tampered or corrupted)",
                dest.file_name().and_then(|n| n.to_str()).unwrap_or("?")
            )));
        }
        tokio::fs::rename(&part, dest)
            .await
            .map_err(|e| Transient(anyhow!("renaming {} into place: {e}", part.display())))?;
        Ok(Downloaded { resumed_from, size })
    }
}

#[cfg(test)]
mod tests {
    //! Downloads against a scripted HTTP server: the first connection is cut
    //! in the middle, the second must ask for the rest with `Range`.
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::TcpListener;

    /// Serves `body` with Range support; connection `i` sends at most
    /// `cut[i]` bytes of its answer's body, then closes. Records the Range
    /// header of each request.
    async fn server(body: Vec<u8>, cut: Vec<usize>) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let Ok((sock, _)) = listener.accept().await else { return };
                let mut r = BufReader::new(sock);
                let mut range = None;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        range = v.trim().trim_end_matches('-').parse::<usize>().ok();
                    }
                }
                log.lock().unwrap().push(range.map(|r| r.to_string()));
                let start = range.unwrap_or(0);
                let head = match range {
                    Some(s) => format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {s}-{}/{}\r\nConnection: close\r\n\r\n",
                        body.len() - s,
                        body.len() - 1,
                        body.len()
                    ),
                    None => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()),
                };
                let mut sock = r.into_inner();
                let limit = cut.get(i).copied().unwrap_or(usize::MAX);
                let end = body.len().min(start.saturating_add(limit));
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body[start..end]).await;
                let _ = sock.shutdown().await;
                // Close only after the client did: dropping a socket at once may
                // send a RST that makes the client's kernel discard bytes it
                // already received, and the cut would land at a random place.
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sock, &mut tokio::io::sink()).await;
                });
            }
        });
        (format!("http://{addr}"), seen)
    }

    fn sha(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    #[tokio::test]
    async fn a_cut_download_resumes_with_range_and_is_verified() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let (base, seen) = server(body.clone(), vec![70_000]).await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("fw.bin");
        let c = DeviceClient::new(&base, "dev_x", reqwest::Client::new());
        let stall = Duration::from_secs(5);
        let first = c.download("/a", &dest, body.len() as u64, &sha(&body), None, stall).await;
        assert!(matches!(first, Err(DownloadError::Transient(_))), "{first:?}");
        let kept = std::fs::metadata(dest.with_extension("part")).unwrap().len();
        assert_eq!(kept, 70_000, "the partial file is kept");
        let second = c.download("/a", &dest, body.len() as u64, &sha(&body), None, stall).await.unwrap();
        assert_eq!(second, Downloaded { resumed_from: 70_000, size: body.len() as u64 });
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        assert_eq!(*seen.lock().unwrap(), vec![None, Some("70000".to_string())]);
    }

    #[tokio::test]
    async fn wrong_bytes_are_refused_and_discarded() {
        let body = b"not the firmware you signed".to_vec();
        let (base, _) = server(body.clone(), vec![]).await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("fw.bin");
        let c = DeviceClient::new(&base, "dev_x", reqwest::Client::new());
        let stall = Duration::from_secs(5);
        let r = c.download("/a", &dest, body.len() as u64, &"00".repeat(32), None, stall).await;
        match r {
            Err(DownloadError::Permanent(m)) => assert!(m.contains("SHA-256") && m.contains("tampered"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(!dest.exists() && !dest.with_extension("part").exists());
        let r = c.download("/a", &dest, 3, &sha(&body), None, stall).await;
        assert!(matches!(r, Err(DownloadError::Permanent(m)) if m.contains("larger than")));
    }

    #[test]
    fn the_device_token_goes_only_to_our_server() {
        let c = DeviceClient::new("http://ota:8000/", "t", reqwest::Client::new());
        assert_eq!(c.artifact_url("/device/v1/artifacts/x"), ("http://ota:8000/device/v1/artifacts/x".into(), true));
        assert_eq!(c.artifact_url("http://ota:8000/x"), ("http://ota:8000/x".into(), true));
        assert_eq!(c.artifact_url("http://ota:8000.evil/x"), ("http://ota:8000.evil/x".into(), false));
        assert_eq!(c.artifact_url("https://cdn/x"), ("https://cdn/x".into(), false));
    }
}

//! HTTPS (`--tls-cert`, `--tls-key`): the router served by axum-server over
//! rustls instead of `axum::serve` over TCP. HTTP/2 and HTTP/1.1 are offered
//! by ALPN. The files are read at start (a bad file stops the server there)
//! and looked at every [`RELOAD_EVERY`]: once either has changed, the new
//! pair is loaded and new connections get it (cert-manager or certbot renew
//! without a restart); a pair that does not load is logged and the old one
//! kept.

use crate::TlsFiles;
use anyhow::{Context, Result};
use axum_server::tls_rustls::RustlsConfig;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;

/// How often the certificate files are checked for a change.
pub const RELOAD_EVERY: Duration = Duration::from_secs(30);

/// The loaded certificate, ready to serve.
pub struct Tls {
    config: RustlsConfig,
    files: TlsFiles,
    stamp: Stamp,
    reload_every: Duration,
}

/// Modification times of the two files.
type Stamp = (Option<SystemTime>, Option<SystemTime>);

fn stamp(files: &TlsFiles) -> Stamp {
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (modified(&files.cert), modified(&files.key))
}

impl Tls {
    pub fn load(files: &TlsFiles) -> Result<Tls> {
        let stamp = stamp(files);
        let config = otafleet_rt::tls::server_config(&files.cert, &files.key)?;
        Ok(Tls {
            config: RustlsConfig::from_config(Arc::new(config)),
            files: files.clone(),
            stamp,
            reload_every: RELOAD_EVERY,
        })
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests
    /// (as `axum::serve`'s graceful shutdown does).
    pub async fn serve(
        self,
        listener: TcpListener,
        app: axum::Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let handle = axum_server::Handle::new();
        let stopping = handle.clone();
        tokio::spawn(async move {
            shutdown.await;
            stopping.graceful_shutdown(None);
        });
        let reload = tokio::spawn(watch(self.config.clone(), self.files, self.stamp, self.reload_every));
        let listener = listener.into_std().context("the TLS listener")?;
        let served = axum_server::from_tcp_rustls(listener, self.config)
            .context("the TLS listener")?
            .handle(handle)
            .serve(app.into_make_service_with_connect_info::<SocketAddr>())
            .await;
        reload.abort();
        served.context("https server")
    }
}

/// Reloads the pair whenever a file's modification time moves.
async fn watch(config: RustlsConfig, files: TlsFiles, mut seen: Stamp, period: Duration) {
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let now = stamp(&files);
        if now == seen {
            continue;
        }
        seen = now;
        let f = files.clone();
        match tokio::task::spawn_blocking(move || otafleet_rt::tls::server_config(&f.cert, &f.key)).await {
            Ok(Ok(c)) => {
                config.reload_from_config(Arc::new(c));
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
            }
            Ok(Err(e)) => tracing::warn!(
                cert = %files.cert.display(),
                error = %format!("{e:#}"),
                "TLS certificate changed but does not load; still serving the previous one"
            ),
            Err(e) => tracing::warn!(error = %e, "TLS reload task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use std::path::Path;

    /// A leaf for `localhost` signed by `issuer`, written to `files`; its fingerprint.
    fn leaf(issuer: &Issuer<'_, KeyPair>, files: &TlsFiles, cn: &str) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, issuer).unwrap();
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        otafleet_rt::tls::fingerprint(cert.der())
    }

    /// A full handshake as a client trusting `ca`; the fingerprint of the
    /// certificate the server presented.
    fn presented(addr: SocketAddr, ca: &Path) -> String {
        let config = otafleet_rt::tls::Trust::ca(Some(ca.into())).client_config().unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        otafleet_rt::tls::fingerprint(&conn.peer_certificates().unwrap()[0])
    }

    /// cert-manager renews the pair in place: new connections get the new
    /// certificate without a restart, and a half-written or broken pair
    /// keeps the old one serving.
    #[tokio::test]
    async fn a_renewed_certificate_reaches_new_connections_and_a_broken_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.self_signed(&ca_key).unwrap().pem()).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let files = TlsFiles { cert: dir.path().join("tls.crt"), key: dir.path().join("tls.key") };
        let first = leaf(&issuer, &files, "first");

        let mut tls = Tls::load(&files).unwrap();
        tls.reload_every = Duration::from_millis(50);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(tls.serve(listener, axum::Router::new(), async move {
            let _ = stopped.await;
        }));
        let ask = || {
            let ca = ca_file.clone();
            async move { tokio::task::spawn_blocking(move || presented(addr, &ca)).await.unwrap() }
        };
        assert_eq!(ask().await, first);

        std::fs::write(&files.key, "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n").unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(ask().await, first, "a pair that does not load leaves the old one serving");

        let second = leaf(&issuer, &files, "second");
        assert_ne!(first, second);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now = ask().await;
            if now == second {
                break;
            }
            assert_eq!(now, first, "only the old or the new certificate is ever served");
            assert!(tokio::time::Instant::now() < deadline, "the renewed certificate was never served");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}

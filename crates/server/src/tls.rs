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
        Ok(Tls { config: RustlsConfig::from_config(Arc::new(config)), files: files.clone(), stamp })
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
        let reload = tokio::spawn(watch(self.config.clone(), self.files, self.stamp));
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
async fn watch(config: RustlsConfig, files: TlsFiles, mut seen: Stamp) {
    let mut every = tokio::time::interval(RELOAD_EVERY);
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

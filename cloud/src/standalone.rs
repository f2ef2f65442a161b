//! The standalone node: one process serving the segment service over QUIC, with the
//! controller's metadata and health and metrics over HTTP, all under one data directory:
//!
//! ```text
//! DATA_DIR/log/                  the segment log (its sled metadata store also holds
//!                                the controller's scopes, streams and reader groups)
//! DATA_DIR/tls/                  the development PKI (without [tls] in the config)
//! DATA_DIR/client/profile.toml   how local clients reach the node (development PKI)
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tributary::controller::Controller;
use tributary::log::SegmentLog;
use tributary::profile::ClientProfile;
use tributary::service::{SegmentServer, ServiceMetrics};
use tributary::tls::{server_config, DevPki, Identity};

use crate::config::{Config, DEFAULT_SERVER_NAME};
use crate::http::{HealthCheck, HttpServer, MetricsFn};

/// Common name of the development PKI's client certificate.
const DEV_CLIENT_NAME: &str = "tributary-client";
/// How long shutdown waits for requests still using the segment log.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Runs the node until SIGTERM or SIGINT, then shuts down in order: the segment
/// service (every connection closed), the HTTP server, the controller, and last the
/// segment log, flushed and closed. `Ok` means a clean shutdown.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives once the node answers must stop it cleanly.
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;

    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating the data directory {}", cfg.data_dir.display()))?;
    // Absolute, so the client profile's paths hold from any working directory.
    let data = &std::fs::canonicalize(&cfg.data_dir)
        .with_context(|| format!("the data directory {}", cfg.data_dir.display()))?;
    let log_dir = data.join("log");
    let log = Arc::new(
        SegmentLog::open(&log_dir, cfg.log.clone())
            .with_context(|| format!("opening the segment log in {}", log_dir.display()))?,
    );
    let controller = Arc::new(
        Controller::open(log.clone())
            .await
            .context("opening the controller")?,
    );
    let policies = controller.clone().spawn_policies(cfg.policies);

    let (identity, dev_pki, server_name) = match &cfg.tls {
        Some(t) => (
            Identity {
                ca: t.ca.clone(),
                cert: t.cert.clone(),
                key: t.key.clone(),
            },
            None,
            t.server_name.clone(),
        ),
        None => {
            let pki = DevPki::ensure(&data.join("tls"), DEV_CLIENT_NAME)
                .context("making the development PKI")?;
            (
                pki.server.clone(),
                Some(pki),
                DEFAULT_SERVER_NAME.to_string(),
            )
        }
    };
    let tls = server_config(&identity).context("server TLS")?;
    let server = SegmentServer::start(cfg.quic_listen, tls, controller.clone())
        .with_context(|| format!("listening on {} (QUIC)", cfg.quic_listen))?;
    let quic_addr = server.local_addr().context("the QUIC address")?;

    let profile_path = match &dev_pki {
        Some(pki) => {
            let path = data.join("client").join("profile.toml");
            ClientProfile {
                endpoint: reachable(quic_addr),
                server_name: server_name.clone(),
                ca: pki.client.ca.clone(),
                cert: pki.client.cert.clone(),
                key: pki.client.key.clone(),
            }
            .save(&path)?;
            Some(path)
        }
        None => None,
    };

    let http = HttpServer::start(
        cfg.http_listen,
        health_check(Arc::downgrade(&log)),
        metrics(Arc::downgrade(&log), server.metrics()),
    )
    .await
    .with_context(|| format!("listening on {} (HTTP)", cfg.http_listen))?;

    tracing::info!(
        quic = %quic_addr,
        http = %http.local_addr(),
        data_dir = %data.display(),
        server_name = %server_name,
        client_profile = %profile_path
            .as_ref()
            .map_or_else(|| "none ([tls] configured)".into(), |p| p.display().to_string()),
        "tributary-cloud standalone started"
    );

    let signal = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    tracing::info!(signal, "shutting down");

    server.shutdown().await;
    http.shutdown().await;
    policies.abort();
    let _ = policies.await;
    drop(controller);
    close_log(log).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Where a local client reaches an address we listen on (the wildcard is not).
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

fn health_check(log: Weak<SegmentLog>) -> HealthCheck {
    Arc::new(move || match log.upgrade() {
        Some(_) => Ok(()),
        None => Err("the segment log is closed".into()),
    })
}

fn metrics(log: Weak<SegmentLog>, service: Arc<ServiceMetrics>) -> MetricsFn {
    Arc::new(move || {
        let mut out = String::from(
            "# HELP tributary_up Whether the node is serving.\n\
             # TYPE tributary_up gauge\n\
             tributary_up 1\n",
        );
        out.push_str(&service.render());
        if let Some(log) = log.upgrade() {
            out.push_str(&format!(
                "# HELP tributary_segments Segments in the segment log.\n\
                 # TYPE tributary_segments gauge\n\
                 tributary_segments {}\n",
                log.list().len()
            ));
        }
        out
    })
}

/// Closes the segment log once nothing else uses it (requests still finishing may hold
/// it for a moment). If some still do after [`CLOSE_WAIT`], it is left to close when
/// the last one ends: everything acknowledged is durable either way.
async fn close_log(mut log: Arc<SegmentLog>) -> anyhow::Result<()> {
    let deadline = Instant::now() + CLOSE_WAIT;
    loop {
        match Arc::try_unwrap(log) {
            Ok(log) => {
                return tokio::task::spawn_blocking(move || log.close())
                    .await
                    .context("closing the segment log")?
                    .context("closing the segment log");
            }
            Err(shared) if Instant::now() < deadline => {
                log = shared;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(shared) => {
                tracing::warn!(
                    users = Arc::strong_count(&shared) - 1,
                    "the segment log is still in use; it closes when the last request ends"
                );
                return Ok(());
            }
        }
    }
}

//! The standalone node: one [`Node`] serving the segment service over QUIC, with the
//! controller's metadata and health and metrics over HTTP, all under one data directory
//! (layout in [`tributary::node`]).

use std::net::SocketAddr;

use anyhow::Context;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

use tributary::log::{FsTier2, Tier2};
use tributary::node::config::{Defaults, NodeConfig};
use tributary::node::tiering::Tiering;
use tributary::node::Node;

use crate::config::{Backend, Tier2Settings};
use crate::s3::S3Tier2;

/// Default QUIC (segment service) address.
pub const DEFAULT_QUIC_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9190);
/// Default HTTP (health, metrics) address.
pub const DEFAULT_HTTP_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9191);

/// What the standalone node uses where neither flags nor file say (data directory:
/// [`tributary::profile::default_data_dir`]).
pub fn defaults() -> Defaults {
    Defaults {
        data_dir: tributary::profile::default_data_dir(),
        quic_listen: DEFAULT_QUIC_LISTEN,
        http_listen: DEFAULT_HTTP_LISTEN,
    }
}

/// The Tier-2 the settings describe (`None`: no Tier-2).
pub async fn tiering(cfg: &NodeConfig, t: &Tier2Settings) -> anyhow::Result<Option<Tiering>> {
    let backend: Arc<dyn Tier2> = match &t.backend {
        Backend::None => return Ok(None),
        Backend::Fs(path) => {
            // The data dir first, so a problem with it is named as such.
            std::fs::create_dir_all(&cfg.data_dir).with_context(|| {
                format!("creating the data directory {}", cfg.data_dir.display())
            })?;
            let path = path.clone().unwrap_or_else(|| cfg.data_dir.join("tier2"));
            Arc::new(
                FsTier2::new(&path)
                    .with_context(|| format!("the Tier-2 directory {}", path.display()))?,
            )
        }
        Backend::S3(s) => Arc::new(S3Tier2::new(s).await),
    };
    Ok(Some(Tiering {
        backend,
        flush_interval: t.flush_interval,
        chunk_bytes: t.chunk_bytes,
    }))
}

/// Runs the node until SIGTERM or SIGINT, then shuts it down in order (see
/// [`Node::shutdown`]); on SIGHUP, takes the grants, revoked certificates and TLS
/// identity of `reload()` (see [`Node::reload`]). `Ok` means a clean shutdown.
pub async fn run(
    cfg: NodeConfig,
    tier2: Tier2Settings,
    reload: impl Fn() -> anyhow::Result<NodeConfig>,
) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives once the node answers must stop it cleanly.
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing a SIGHUP handler")?;

    let tiering = tiering(&cfg, &tier2).await?;
    let tier2_at = tiering
        .as_ref()
        .map_or_else(|| "none".to_string(), |t| t.backend.describe());
    let mut node = Node::start(&cfg, tiering).await?;
    let status = crate::status::Source::of(&node).serve();
    let http = node.serve_http(cfg.http_listen, None, Some(status)).await?;
    tracing::info!(
        quic = %node.quic_addr(),
        http = %http,
        data_dir = %node.data_dir().display(),
        server_name = %node.server_name(),
        tier2 = %tier2_at,
        cache_mb = cfg.log.cache_bytes >> 20,
        client_profile = %node
            .profile_path()
            .map_or_else(|| "none ([tls] configured)".into(), |p| p.display().to_string()),
        "tributary-cloud standalone started"
    );
    tributary::node::systemd::ready(&node);

    let signal = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => {
                match reload().and_then(|cfg| Ok(node.reload(&cfg)?)) {
                    Ok(()) => {}
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "SIGHUP: nothing reloaded"),
                }
            }
        }
    };
    tracing::info!(signal, "shutting down");
    tributary::node::systemd::stopping();
    node.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{parse, CloudSettings};

    #[test]
    fn the_shipped_example_is_valid() {
        let s = parse(
            include_str!("../../config/cloud-standalone.toml"),
            Path::new("/etc/t"),
        )
        .expect("example config");
        assert_eq!(s.node.quic_listen, Some(DEFAULT_QUIC_LISTEN));
        assert_eq!(s.node.http_listen, Some(DEFAULT_HTTP_LISTEN));
        assert_eq!(s.node.log, CloudSettings::default().node.log);
        assert_eq!(s.tier2, CloudSettings::default().tier2);
    }
}

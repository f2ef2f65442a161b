//! The standalone node: one [`Node`] serving the segment service over QUIC, with the
//! controller's metadata and health and metrics over HTTP, all under one data directory
//! (layout in [`tributary::node`]).

use std::net::SocketAddr;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tributary::node::config::{Defaults, NodeConfig};
use tributary::node::Node;

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

/// Runs the node until SIGTERM or SIGINT, then shuts it down in order (see
/// [`Node::shutdown`]). `Ok` means a clean shutdown.
pub async fn run(cfg: NodeConfig) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives once the node answers must stop it cleanly.
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;

    let mut node = Node::start(&cfg).await?;
    let http = node.serve_http(cfg.http_listen, None, None).await?;
    tracing::info!(
        quic = %node.quic_addr(),
        http = %http,
        data_dir = %node.data_dir().display(),
        server_name = %node.server_name(),
        client_profile = %node
            .profile_path()
            .map_or_else(|| "none ([tls] configured)".into(), |p| p.display().to_string()),
        "tributary-cloud standalone started"
    );

    let signal = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    tracing::info!(signal, "shutting down");
    node.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tributary::log::LogConfig;
    use tributary::node::config::parse;

    use super::*;

    #[test]
    fn the_shipped_example_is_valid() {
        let s = parse(
            include_str!("../../config/cloud-standalone.toml"),
            Path::new("/etc/t"),
        )
        .expect("example config");
        assert_eq!(s.quic_listen, Some(DEFAULT_QUIC_LISTEN));
        assert_eq!(s.http_listen, Some(DEFAULT_HTTP_LISTEN));
        assert_eq!(s.log, LogConfig::default());
    }
}

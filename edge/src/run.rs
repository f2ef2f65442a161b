//! `tributary-edge run`: the node, its local streams and sources, until SIGTERM or
//! SIGINT.

use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tributary::node::config::NodeConfig;
use tributary::node::Node;

use crate::config::EdgeConfig;
use crate::local::LocalStream;
use crate::mqtt::MqttStats;
use crate::status::{render_metrics, snapshot, MqttSource};

/// Runs the edge; `node` is the node part of `cfg` with flags applied. On a signal the
/// sources stop first (messages not yet acknowledged stay with their broker), then
/// the node drains and closes the log. `Ok` means a clean shutdown.
pub async fn run(cfg: EdgeConfig, node: NodeConfig) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;

    let mut n = Node::start(&node).await?;
    let mut streams = Vec::new();
    for spec in &cfg.streams {
        let s = LocalStream::open(n.controller().clone(), spec.clone())
            .await
            .with_context(|| format!("opening the local stream {}", spec.name()))?;
        streams.push(s);
    }

    let (stop, stopped) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(crate::budget::enforce(streams.clone(), stopped.clone()));
    let mut sources = Vec::new();
    for m in &cfg.mqtt {
        let stats = Arc::new(MqttStats::default());
        sources.push(MqttSource {
            broker: format!("{}:{}", m.host, m.port),
            client_id: m.client_id.clone(),
            stats: stats.clone(),
        });
        tasks.spawn(crate::mqtt::run(
            m.clone(),
            streams.clone(),
            stats,
            stopped.clone(),
        ));
    }

    let status = {
        let (streams, sources) = (streams.clone(), sources.clone());
        Arc::new(move || {
            serde_json::to_string(&snapshot(&streams, &sources))
                .unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()))
        })
    };
    let metrics = {
        let (streams, sources) = (streams.clone(), sources.clone());
        Arc::new(move || render_metrics(&snapshot(&streams, &sources)))
    };
    let http = n
        .serve_http(node.http_listen, Some(metrics), Some(status))
        .await?;
    tracing::info!(
        quic = %n.quic_addr(),
        http = %http,
        data_dir = %n.data_dir().display(),
        streams = cfg.streams.len(),
        mqtt_sources = cfg.mqtt.len(),
        client_profile = %n
            .profile_path()
            .map_or_else(|| "none ([tls] configured)".into(), |p| p.display().to_string()),
        "tributary-edge started"
    );

    let signal = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    tracing::info!(signal, "shutting down");
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    drop(streams);
    n.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

//! `tributary-edge run`: the node, its local streams and sources, until SIGTERM or
//! SIGINT; SIGHUP reloads the node's grants, revoked certificates and TLS identity.

use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tributary::node::config::NodeConfig;
use tributary::node::Node;

use crate::config::{EdgeConfig, SerialSpec};
use crate::local::LocalStream;
use crate::mqtt::MqttStats;
use crate::replicate::Replica;
use crate::serial::SerialStats;
use crate::status::{render_metrics, snapshot, MqttSource};

/// Runs the edge; `node` is the node part of `cfg` with flags applied. On a signal the
/// sources stop first (messages not yet acknowledged stay with their broker), then
/// the node drains and closes the log. On SIGHUP the node takes what `reload()` says
/// of grants, revoked certificates and its TLS identity. `Ok` means a clean shutdown.
pub async fn run(
    cfg: EdgeConfig,
    node: NodeConfig,
    reload: impl Fn() -> anyhow::Result<NodeConfig>,
) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing a SIGHUP handler")?;

    let mut n = Node::start(&node, None).await?;
    let mut streams = Vec::new();
    for spec in &cfg.streams {
        let s = LocalStream::open(n.controller().clone(), spec.clone())
            .await
            .with_context(|| format!("opening the local stream {}", spec.name()))?;
        streams.push(s);
    }

    let (stop, stopped) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(cloud) = &cfg.cloud {
        // Checked now, so a wrong [cloud] certificate stops the start; the replicator
        // reads the files again at each connection (a rotated certificate is taken).
        crate::replicate::client_tls(&cloud.identity)?;
        let mut replicas = Vec::new();
        for spec in &cfg.replicate {
            let local = streams[spec.stream].clone();
            let r = Replica::open(&local, spec.clone())?;
            local.set_replica(r.clone());
            replicas.push((local, r));
        }
        tasks.spawn(crate::replicate::run(
            cloud.clone(),
            replicas,
            stopped.clone(),
        ));
    }
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

    let mut serial = Vec::new();
    for s in &cfg.serial {
        let stats = Arc::new(SerialStats::for_config(&s.config));
        serial.push(stats.clone());
        tasks.spawn(serial_source(
            s.clone(),
            streams[s.stream].clone(),
            stats,
            stopped.clone(),
        ));
    }

    let mut watched = Vec::new();
    for w in &cfg.watch {
        let stats = Arc::new(crate::watch::WatchStats::default());
        watched.push((w.dir.clone(), stats.clone()));
        tasks.spawn(crate::watch::run(
            w.clone(),
            streams[w.stream].clone(),
            stats,
            stopped.clone(),
        ));
    }

    let mut pipes = Vec::new();
    for p in &cfg.pipe {
        let stats = Arc::new(crate::pipe::PipeStats::default());
        pipes.push((p.clone(), stats.clone()));
        tasks.spawn(crate::pipe::run(
            p.clone(),
            streams[p.stream].clone(),
            stats,
            stopped.clone(),
        ));
    }

    let sensors = crate::sensor::spawn(&cfg.sensors, &streams, &stopped, &mut tasks);

    let snap = {
        let (streams, sources, serial, watched) = (
            streams.clone(),
            sources.clone(),
            serial.clone(),
            watched.clone(),
        );
        Arc::new(move || snapshot(&streams, &sources, &serial, &watched, &pipes, &sensors))
    };
    let status = {
        let snap = snap.clone();
        Arc::new(move || {
            serde_json::to_string(&snap())
                .unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()))
        })
    };
    let metrics = Arc::new(move || {
        let mut out = render_metrics(&snap());
        crate::serial::render_prometheus(serial.iter().map(|s| &**s), &mut out);
        out
    });
    let http = n
        .serve_http(node.http_listen, Some(metrics), Some(status))
        .await?;
    tracing::info!(
        quic = %n.quic_addr(),
        http = %http,
        data_dir = %n.data_dir().display(),
        streams = cfg.streams.len(),
        mqtt_sources = cfg.mqtt.len(),
        serial_sources = cfg.serial.len(),
        watched_dirs = cfg.watch.len(),
        commands = cfg.pipe.len(),
        sensors = cfg.sensors.len(),
        replicated_streams = cfg.replicate.len(),
        client_profile = %n
            .profile_path()
            .map_or_else(|| "none ([tls] configured)".into(), |p| p.display().to_string()),
        "tributary-edge started"
    );
    tributary::node::systemd::ready(&n);

    let signal = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => {
                if let Err(e) = reload().and_then(|cfg| Ok(n.reload(&cfg)?)) {
                    tracing::error!(error = %format!("{e:#}"), "SIGHUP: nothing reloaded");
                }
            }
        }
    };
    tracing::info!(signal, "shutting down");
    tributary::node::systemd::stopping();
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    drop(streams);
    n.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Reads a serial device and stores each good frame as one event. Serial devices are
/// not acknowledged, so frames are submitted without waiting for each fsync; a frame
/// that cannot be stored is logged and counted as lost.
async fn serial_source(
    spec: SerialSpec,
    stream: Arc<LocalStream>,
    stats: Arc<SerialStats>,
    mut stopped: watch::Receiver<bool>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let device = spec.config.device.display().to_string();
    let reader = tokio::spawn(crate::serial::run(spec.config, tx, stats, async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    while let Some(frame) = rx.recv().await {
        if let Err(e) = stream.submit(spec.key.as_bytes(), &frame, None).await {
            tracing::error!(%device, stream = %stream.spec().name(), error = %e, "storing a serial frame failed; frame lost");
        }
    }
    let _ = reader.await;
}

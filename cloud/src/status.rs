//! `/status` of a cloud node and `tributary-cloud status`: its streams, Tier-2 backlog,
//! and the replication lag each edge last reported.

use std::net::SocketAddr;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use serde::{Deserialize, Serialize};
use tributary::controller::Controller;
use tributary::log::SegmentLog;
use tributary::node::http::StatusFn;
use tributary::node::Node;
use tributary::service::ServiceMetrics;

/// A cloud node's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudStatus {
    /// QUIC address of the segment service.
    pub quic: String,
    /// Segments in the log.
    pub segments: usize,
    /// Streams, `scope/stream`.
    pub streams: Vec<String>,
    /// Events acknowledged as durable since the start (written to this node).
    pub appended_events: u64,
    /// Bytes edges replicated into mirror streams since the start (their events are
    /// counted on the edges).
    #[serde(default)]
    pub replicated_bytes: u64,
    /// Group-commit fsyncs since the start.
    pub fsyncs: u64,
    /// Tier-2, if configured.
    pub tier2: Option<Tier2Status>,
    /// Replication lag per edge and mirror stream, as each edge last reported it.
    pub edges: Vec<EdgeLag>,
    /// Appends wait for room on the log's disk.
    #[serde(default)]
    pub disk_full: bool,
    /// Byte ranges reads could not serve since the start (damaged frames or chunks).
    #[serde(default)]
    pub damaged: Vec<tributary::log::repair::Damage>,
}

/// The Tier-2 side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier2Status {
    /// Bytes not on Tier-2 yet.
    pub backlog_bytes: u64,
    /// Beyond this, writers get `Busy`.
    pub backlog_limit_bytes: u64,
}

/// One edge's lag for one mirror stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeLag {
    /// The edge's identity (its certificate's name).
    pub edge: String,
    /// The mirror stream.
    pub stream: String,
    /// Bytes the edge holds that the mirror does not.
    pub lag_bytes: u64,
    /// Age of the oldest of them.
    pub lag_seconds: f64,
    /// Seconds since the edge reported.
    pub report_age_seconds: f64,
}

/// What a status is made from: the node's parts, held weakly so that serving the
/// status never keeps a shut-down node's log open.
#[derive(Clone)]
pub struct Source {
    controller: Weak<Controller>,
    log: Weak<SegmentLog>,
    service: Arc<ServiceMetrics>,
    quic: SocketAddr,
    tiered: bool,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("quic", &self.quic)
            .finish_non_exhaustive()
    }
}

impl Source {
    /// The parts of `node`.
    pub fn of(node: &Node) -> Source {
        Source {
            controller: Arc::downgrade(node.controller()),
            log: Arc::downgrade(node.log()),
            service: node.service_metrics(),
            quic: node.quic_addr(),
            tiered: node.tier_metrics().is_some(),
        }
    }

    /// The node's state now; `None` once it has shut down.
    pub fn snapshot(&self) -> Option<CloudStatus> {
        let c = self.controller.upgrade()?;
        let log = self.log.upgrade()?;
        let streams = c
            .list_scopes()
            .unwrap_or_default()
            .into_iter()
            .flat_map(|scope| {
                c.list_streams(&scope)
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |s| format!("{scope}/{s}"))
            })
            .collect();
        let mut edges: Vec<EdgeLag> = self
            .service
            .lags()
            .into_iter()
            .map(|(edge, l, age)| EdgeLag {
                edge,
                stream: l.stream,
                lag_bytes: l.bytes,
                lag_seconds: l.millis as f64 / 1000.0,
                report_age_seconds: age.as_secs_f64(),
            })
            .collect();
        edges.sort_by(|a, b| (&a.edge, &a.stream).cmp(&(&b.edge, &b.stream)));
        Some(CloudStatus {
            quic: self.quic.to_string(),
            segments: log.list().len(),
            streams,
            appended_events: self.service.appended_events.load(Ordering::Relaxed),
            replicated_bytes: self.service.mirrored_bytes.load(Ordering::Relaxed),
            fsyncs: log.fsync_histogram().count(),
            tier2: self.tiered.then(|| Tier2Status {
                backlog_bytes: log.tier2_backlog(),
                backlog_limit_bytes: log.config().max_tier2_backlog_bytes,
            }),
            edges,
            disk_full: log.disk_full(),
            damaged: log.damaged(),
        })
    }

    /// The `/status` handler.
    pub fn serve(self) -> StatusFn {
        Arc::new(move || match self.snapshot() {
            Some(s) => serde_json::to_string(&s)
                .unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string())),
            None => "{\"error\":\"shutting down\"}".into(),
        })
    }
}

/// The status as a table for people.
pub fn render_table(s: &CloudStatus) -> String {
    let mut out = format!(
        "cloud node on {}: {} streams, {} segments; since the start, {} events appended \
         and {} bytes replicated from edges\n",
        s.quic,
        s.streams.len(),
        s.segments,
        s.appended_events,
        s.replicated_bytes
    );
    if let Some(t) = &s.tier2 {
        out.push_str(&format!(
            "tier2: {} bytes waiting (limit {})\n",
            t.backlog_bytes, t.backlog_limit_bytes
        ));
    }
    if s.disk_full {
        out.push_str(tributary::node::DISK_FULL_NOTE);
        out.push('\n');
    }
    for d in &s.damaged {
        out.push_str(&tributary::node::damage_note(d));
        out.push('\n');
    }
    for st in &s.streams {
        out.push_str(&format!("stream {st}\n"));
    }
    for e in &s.edges {
        out.push_str(&format!(
            "edge {} -> {}: lag {} bytes ({:.1} s), reported {:.0} s ago\n",
            e.edge, e.stream, e.lag_bytes, e.lag_seconds, e.report_age_seconds
        ));
    }
    out
}

/// Fetches the status from a running node's HTTP address.
pub async fn fetch(addr: SocketAddr) -> anyhow::Result<CloudStatus> {
    tributary::node::http::fetch_status(addr)
        .await
        .map_err(anyhow::Error::msg)
}

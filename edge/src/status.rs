//! What `tributary-edge status` shows: per stream its events, bytes, last event time,
//! disk used and budget state; per source its counters. The running edge serves it as
//! JSON on `GET /status` (and as Prometheus metrics); the `status` command fetches it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tributary::node::http::label_value;
use tributary::stream::segment_name;

use crate::local::{LocalStream, EVENTS_ATTRIBUTE, LARGE_EVENTS, LAST_EVENT_ATTRIBUTE};
use crate::mqtt::MqttStats;
use crate::pipe::{PipeSpec, PipeStats, PipeStatus};
use crate::replicate::ReplicaStatus;
use crate::sensor::{SensorStats, SensorStatus};
use crate::serial::SerialStats;
use crate::watch::{WatchStats, WatchStatus};

/// The whole status document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Local streams.
    pub streams: Vec<StreamStatus>,
    /// MQTT sources.
    pub mqtt: Vec<MqttStatus>,
    /// Serial sources.
    #[serde(default)]
    pub serial: Vec<SerialStatus>,
    /// Watched directories.
    #[serde(default)]
    pub watch: Vec<WatchStatus>,
    /// Commands whose runs become events.
    #[serde(default)]
    pub pipe: Vec<PipeStatus>,
    /// Polled devices.
    #[serde(default)]
    pub sensors: Vec<SensorStatus>,
    /// Replication to the cloud, per replicated stream.
    #[serde(default)]
    pub replication: Vec<ReplicaStatus>,
    /// Appends wait for room on the log's disk.
    #[serde(default)]
    pub disk_full: bool,
    /// Byte ranges of the log that cannot be read (damaged frames), as found since the
    /// start.
    #[serde(default)]
    pub damaged: Vec<tributary::log::repair::Damage>,
}

/// One serial source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialStatus {
    /// Device path.
    pub device: String,
    /// Open now.
    pub connected: bool,
    /// Good frames read (each stored as an event).
    pub frames: u64,
    /// Frames rejected (bad checksum, too long, garbage, torn at a disconnect).
    pub bad_frames: u64,
    /// Times the device was lost.
    pub disconnects: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
}

/// One local stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStatus {
    /// `scope/stream`.
    pub name: String,
    /// Events stored in it, by the edge's sources and through its segment service (in
    /// segments still kept).
    pub events: u64,
    /// Bytes ever appended (segment lengths).
    pub bytes: u64,
    /// Bytes kept on disk (not truncated).
    pub disk_bytes: u64,
    /// The disk budget, if any.
    pub disk_budget: Option<u64>,
    /// Sources are paused at the budget.
    pub paused: bool,
    /// When the last event was stored (ms since the Unix epoch).
    pub last_event_ms: Option<i64>,
    /// Segments (active and sealed).
    pub segments: usize,
}

/// One MQTT source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttStatus {
    /// `host:port`.
    pub broker: String,
    /// Client id.
    pub client_id: String,
    /// Connected now.
    pub connected: bool,
    /// Messages received (with redeliveries).
    pub received: u64,
    /// Messages stored.
    pub stored: u64,
    /// Redeliveries recognised as stored already.
    pub duplicates: u64,
    /// Messages that matched no route.
    pub unrouted: u64,
    /// Failed connection attempts and broken connections.
    pub connection_errors: u64,
}

/// A named source's counters, for [`snapshot`].
#[derive(Debug, Clone)]
pub struct MqttSource {
    /// `host:port`.
    pub broker: String,
    /// Client id.
    pub client_id: String,
    /// Counters.
    pub stats: Arc<MqttStats>,
}

/// One stream's status now.
pub fn stream_status(stream: &LocalStream) -> StreamStatus {
    let spec = stream.spec();
    let mut st = StreamStatus {
        name: spec.name(),
        events: 0,
        bytes: 0,
        disk_bytes: 0,
        disk_budget: spec.disk_budget,
        paused: stream.is_paused(),
        last_event_ms: None,
        segments: 0,
    };
    let Ok(meta) = stream.controller().describe(&spec.scope, &spec.stream) else {
        return st;
    };
    let log = stream.log();
    for r in meta.segments.values() {
        let name = segment_name(&spec.scope, &spec.stream, r.id);
        let Ok(info) = log.info(&name) else {
            continue;
        };
        st.segments += 1;
        st.bytes += info.length;
        st.disk_bytes += info.length - info.start;
        let small = log.attribute(&name, EVENTS_ATTRIBUTE).ok().flatten();
        let large = log
            .attributes(&name, LARGE_EVENTS..LARGE_EVENTS + (1 << 32))
            .unwrap_or_default();
        for n in small.into_iter().chain(large.into_values()) {
            st.events += u64::try_from(n).unwrap_or(0);
        }
        if let Ok(Some(t)) = log.attribute(&name, LAST_EVENT_ATTRIBUTE) {
            st.last_event_ms = st.last_event_ms.max(Some(t));
        }
    }
    st
}

/// The status now.
pub fn snapshot(
    streams: &[Arc<LocalStream>],
    mqtt: &[MqttSource],
    serial: &[Arc<SerialStats>],
    watch: &[(std::path::PathBuf, Arc<WatchStats>)],
    pipes: &[(PipeSpec, Arc<PipeStats>)],
    sensors: &[Arc<SensorStats>],
) -> Status {
    let replication = streams
        .iter()
        .filter_map(|s| s.replica().map(|r| r.status()))
        .collect();
    // Every local stream is in the node's one log.
    let log = streams.first().map(|s| s.log());
    Status {
        disk_full: log.is_some_and(|l| l.disk_full()),
        damaged: log.map(|l| l.damaged()).unwrap_or_default(),
        streams: streams.iter().map(|s| stream_status(s)).collect(),
        mqtt: mqtt
            .iter()
            .map(|m| MqttStatus {
                broker: m.broker.clone(),
                client_id: m.client_id.clone(),
                connected: m.stats.connected.load(Ordering::Relaxed),
                received: m.stats.received.load(Ordering::Relaxed),
                stored: m.stats.stored.load(Ordering::Relaxed),
                duplicates: m.stats.duplicates.load(Ordering::Relaxed),
                unrouted: m.stats.unrouted.load(Ordering::Relaxed),
                connection_errors: m.stats.connection_errors.load(Ordering::Relaxed),
            })
            .collect(),
        serial: serial
            .iter()
            .map(|st| {
                let s = st.snapshot();
                SerialStatus {
                    device: s.device,
                    connected: s.connected,
                    frames: s.frames,
                    bad_frames: s.bad_frames,
                    disconnects: s.disconnects,
                    last_error: s.last_error,
                }
            })
            .collect(),
        watch: watch.iter().map(|(dir, w)| w.status(dir)).collect(),
        pipe: pipes.iter().map(|(spec, p)| p.status(spec)).collect(),
        sensors: sensors.iter().map(|x| x.status()).collect(),
        replication,
    }
}

/// The status in the Prometheus text format (serial sources render their own).
pub fn render_metrics(s: &Status) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in rows {
            out.push_str(&format!("{name}{{{labels}}} {value}\n"));
        }
    };
    let per_stream = |f: &dyn Fn(&StreamStatus) -> String| {
        s.streams
            .iter()
            .map(|st| (format!("stream=\"{}\"", label_value(&st.name)), f(st)))
            .collect::<Vec<_>>()
    };
    family(
        "tributary_edge_stream_events",
        "gauge",
        "Events stored in the stream (by the edge's sources and through its segment service).",
        per_stream(&|st| st.events.to_string()),
    );
    family(
        "tributary_edge_stream_bytes",
        "gauge",
        "Bytes appended to the stream.",
        per_stream(&|st| st.bytes.to_string()),
    );
    family(
        "tributary_edge_stream_disk_bytes",
        "gauge",
        "Bytes of the stream kept on disk.",
        per_stream(&|st| st.disk_bytes.to_string()),
    );
    family(
        "tributary_edge_stream_paused",
        "gauge",
        "1 while the stream's sources are paused at its disk budget.",
        per_stream(&|st| u8::from(st.paused).to_string()),
    );
    let per_mqtt = |f: &dyn Fn(&MqttStatus) -> u64| {
        s.mqtt
            .iter()
            .map(|m| {
                (
                    format!(
                        "broker=\"{}\",client_id=\"{}\"",
                        label_value(&m.broker),
                        label_value(&m.client_id)
                    ),
                    f(m).to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    family(
        "tributary_edge_mqtt_connected",
        "gauge",
        "1 while connected to the broker.",
        per_mqtt(&|m| u64::from(m.connected)),
    );
    for (name, help, f) in [
        (
            "tributary_edge_mqtt_received_total",
            "MQTT messages received, redeliveries included.",
            (|m: &MqttStatus| m.received) as fn(&MqttStatus) -> u64,
        ),
        (
            "tributary_edge_mqtt_stored_total",
            "MQTT messages stored.",
            |m| m.stored,
        ),
        (
            "tributary_edge_mqtt_duplicates_total",
            "MQTT redeliveries recognised as already stored.",
            |m| m.duplicates,
        ),
        (
            "tributary_edge_mqtt_unrouted_total",
            "MQTT messages that matched no route.",
            |m| m.unrouted,
        ),
        (
            "tributary_edge_mqtt_connection_errors_total",
            "MQTT connection attempts failed and connections broken.",
            |m| m.connection_errors,
        ),
    ] {
        family(name, "counter", help, per_mqtt(&f));
    }
    let per_dir = |f: &dyn Fn(&WatchStatus) -> u64| {
        s.watch
            .iter()
            .map(|w| (format!("dir=\"{}\"", label_value(&w.dir)), f(w).to_string()))
            .collect::<Vec<_>>()
    };
    family(
        "tributary_edge_watch_files_total",
        "counter",
        "Files of a watched directory stored as events.",
        per_dir(&|w| w.files),
    );
    family(
        "tributary_edge_watch_errors_total",
        "counter",
        "Failed attempts to store a watched file (retried).",
        per_dir(&|w| w.errors),
    );
    let per_command = |f: &dyn Fn(&PipeStatus) -> u64| {
        s.pipe
            .iter()
            .map(|p| {
                (
                    format!("command=\"{}\"", label_value(&p.command)),
                    f(p).to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    family(
        "tributary_edge_command_events_total",
        "counter",
        "Runs of a command stored as events.",
        per_command(&|p| p.events),
    );
    family(
        "tributary_edge_command_failures_total",
        "counter",
        "Runs of a command that failed (nothing stored).",
        per_command(&|p| p.failures),
    );
    let per_sensor = |f: &dyn Fn(&SensorStatus) -> u64| {
        s.sensors
            .iter()
            .map(|x| {
                let labels = format!("sensor=\"{}\",driver=\"{}\"", label_value(&x.id), x.driver);
                (labels, f(x).to_string())
            })
            .collect::<Vec<_>>()
    };
    family(
        "tributary_edge_sensor_up",
        "gauge",
        "1 while the sensor's last poll gave a reading.",
        per_sensor(&|x| u64::from(x.up)),
    );
    family(
        "tributary_edge_sensor_readings_total",
        "counter",
        "Readings of the sensor stored as events.",
        per_sensor(&|x| x.readings),
    );
    family(
        "tributary_edge_sensor_failures_total",
        "counter",
        "Polls of the sensor that gave no reading (retried at the next poll).",
        per_sensor(&|x| x.failures),
    );
    let per_replica = |f: &dyn Fn(&ReplicaStatus) -> String| {
        s.replication
            .iter()
            .map(|r| {
                let labels = format!(
                    "stream=\"{}\",to=\"{}\"",
                    label_value(&r.stream),
                    label_value(&r.to)
                );
                (labels, f(r))
            })
            .collect::<Vec<_>>()
    };
    family(
        "tributary_edge_replication_connected",
        "gauge",
        "1 while the stream is replicating (connected, no error).",
        per_replica(&|r| u8::from(r.connected).to_string()),
    );
    family(
        "tributary_edge_replication_lag_bytes",
        "gauge",
        "Bytes of the stream the cloud does not hold yet.",
        per_replica(&|r| r.lag_bytes.to_string()),
    );
    family(
        "tributary_edge_replication_lag_seconds",
        "gauge",
        "Age of the oldest byte the cloud does not hold yet.",
        per_replica(&|r| (r.lag_ms as f64 / 1000.0).to_string()),
    );
    family(
        "tributary_edge_replicated_bytes_total",
        "counter",
        "Bytes the cloud acknowledged since the edge started.",
        per_replica(&|r| r.replicated_bytes.to_string()),
    );
    family(
        "tributary_edge_replication_duplicate_frames_total",
        "counter",
        "Resent frames the cloud recognised as stored already.",
        per_replica(&|r| r.duplicate_frames.to_string()),
    );
    family(
        "tributary_edge_replication_gaps_total",
        "counter",
        "Gap records the cloud stored since the edge started: data given up before the cloud had it.",
        per_replica(&|r| r.gaps.to_string()),
    );
    family(
        "tributary_edge_replication_gap_bytes_total",
        "counter",
        "Bytes those gap records stand for.",
        per_replica(&|r| r.gap_bytes.to_string()),
    );
    out
}

/// The status as a table for people.
pub fn render_table(s: &Status) -> String {
    let mut out = format!(
        "{:<32} {:>12} {:>14} {:>14} {:>14}  {}\n",
        "STREAM", "EVENTS", "BYTES", "DISK", "BUDGET", "LAST EVENT"
    );
    for st in &s.streams {
        let budget = st
            .disk_budget
            .map_or_else(|| "-".to_string(), |b| b.to_string());
        let last = st.last_event_ms.map_or_else(|| "-".to_string(), ago);
        out.push_str(&format!(
            "{:<32} {:>12} {:>14} {:>14} {:>14}  {}{}\n",
            st.name,
            st.events,
            st.bytes,
            st.disk_bytes,
            budget,
            last,
            if st.paused {
                "  PAUSED (disk budget)"
            } else {
                ""
            }
        ));
    }
    for m in &s.mqtt {
        out.push_str(&format!(
            "mqtt {} ({}): {}, received {}, stored {}, duplicates {}, unrouted {}, connection errors {}\n",
            m.broker,
            m.client_id,
            if m.connected { "connected" } else { "DISCONNECTED" },
            m.received,
            m.stored,
            m.duplicates,
            m.unrouted,
            m.connection_errors
        ));
    }
    for d in &s.serial {
        out.push_str(&format!(
            "serial {}: {}, frames {}, bad frames {}, disconnects {}{}\n",
            d.device,
            if d.connected { "open" } else { "NOT OPEN" },
            d.frames,
            d.bad_frames,
            d.disconnects,
            d.last_error
                .as_ref()
                .map_or_else(String::new, |e| format!(", last error: {e}"))
        ));
    }
    for w in &s.watch {
        out.push_str(&format!(
            "watch {}: files {}, bytes {}, found stored after a crash {}, errors {}\n",
            w.dir, w.files, w.bytes, w.already_stored, w.errors
        ));
    }
    for p in &s.pipe {
        out.push_str(&format!(
            "command {}: events {}, bytes {}, failures {}{}\n",
            p.command,
            p.events,
            p.bytes,
            p.failures,
            p.last_error
                .as_ref()
                .map_or_else(String::new, |e| format!(", last error: {e}"))
        ));
    }
    for x in &s.sensors {
        out.push_str(&format!(
            "sensor {} ({} {}): {}, readings {}, failures {}{}\n",
            x.id,
            x.driver,
            x.device,
            if x.up { "up" } else { "DOWN" },
            x.readings,
            x.failures,
            x.last_error
                .as_ref()
                .map_or_else(String::new, |e| format!(", last error: {e}"))
        ));
    }
    for r in &s.replication {
        out.push_str(&format!(
            "replicate {} -> {}: {}, lag {} bytes ({:.1} s), replicated {} bytes, resends recognised {}{}{}\n",
            r.stream,
            r.to,
            if r.connected { "replicating" } else { "NOT REPLICATING" },
            r.lag_bytes,
            r.lag_ms as f64 / 1000.0,
            r.replicated_bytes,
            r.duplicate_frames,
            match r.gaps {
                0 => String::new(),
                n => format!(", GAPS {n} ({} bytes given up before the cloud had them)", r.gap_bytes),
            },
            r.last_error
                .as_ref()
                .map_or_else(String::new, |e| format!(", last error: {e}"))
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
    out
}

fn ago(ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    format!("{:.1} s ago", (now - ms).max(0) as f64 / 1000.0)
}

/// Fetches the status from a running edge's HTTP address.
pub async fn fetch(addr: SocketAddr) -> anyhow::Result<Status> {
    tributary::node::http::fetch_status(addr)
        .await
        .map_err(anyhow::Error::msg)
}

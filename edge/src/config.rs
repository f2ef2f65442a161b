//! The edge node's configuration file (TOML): the node sections it shares with the
//! cloud ([`tributary::node::config`]: `data_dir`, `[quic]`, `[http]`, `[tls]`,
//! `[log]`, `[policies]`), the local streams, and the sources that feed them. Unknown
//! keys are refused; every error names its key and line. A commented example for each
//! kind of gateway is in the repository's `config/` folder.
//!
//! ```toml
//! [[stream]]
//! name = "site/sensors"          # scope/stream, created on start
//! segments = 2
//! disk_budget_mb = 512
//! when_full = "pause"            # or "drop-oldest", "drop-oldest-unreplicated"
//!
//! [[mqtt]]
//! broker = "127.0.0.1:1883"
//! client_id = "gateway-1"
//! [[mqtt.route]]
//! filter = "sensors/+/reading"
//! stream = "site/sensors"
//! qos = 1
//! key = "topic-level:1"          # or "topic", "json:FIELD", "none"
//!
//! [[serial]]
//! device = "/dev/serial/by-id/usb-FTDI-if00"
//! baud = 115200
//! framing = "lines"              # or "cobs" (binary records with a CRC-32)
//! stream = "site/sensors"
//! ```
//!
//! Replication to the cloud: `[cloud]` and `[[replicate]]`, see
//! [`crate::replicate::config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use tributary::node::config::NodeSettings;
use tributary::node::config::{
    from_toml, ConfigError, Defaults, RawGrant, RawListen, RawLog, RawNode, RawPolicies, RawTls,
    Validator,
};
use tributary::stream::validate_scoped_name;

use crate::lines::{column, LineFormat};
use crate::pipe::{PipeSpec, RawPipe};
use crate::replicate;
use crate::replicate::config::{CloudSpec, RawCloud, RawReplicate, ReplicateSpec};
use crate::sensor::{RawSensor, SensorSpec};
use crate::serial::{Framing, SerialConfig};
use crate::watch::{After, WatchSpec};

/// Default QUIC address of the edge's segment service (local readers, `trib`).
pub const DEFAULT_QUIC_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9290);
/// Default HTTP address of `/health`, `/metrics` and `/status`.
pub const DEFAULT_HTTP_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9291);

/// What the edge uses where neither flags nor file say: data in
/// `$XDG_DATA_HOME/tributary/edge` (else `~/.local/share/tributary/edge`).
pub fn defaults() -> Defaults {
    Defaults {
        data_dir: tributary::profile::data_home()
            .join("tributary")
            .join("edge"),
        quic_listen: DEFAULT_QUIC_LISTEN,
        http_listen: DEFAULT_HTTP_LISTEN,
    }
}

/// Memory the edge's log keeps for recently written data unless `[log] cache_mb` says
/// otherwise: enough for replication and local readers at the tail, small enough for a
/// gateway (the cloud's default is up to 320 MiB).
pub const DEFAULT_CACHE_MB: usize = 4;

/// The edge's log settings where `[log]` is silent.
fn edge_log() -> tributary::log::LogConfig {
    tributary::log::LogConfig {
        cache_bytes: DEFAULT_CACHE_MB << 20,
        ..Default::default()
    }
}

/// A whole edge configuration, validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EdgeConfig {
    /// The node sections.
    pub node: NodeSettings,
    /// `[[stream]]`: the local streams.
    pub streams: Vec<StreamSpec>,
    /// `[[mqtt]]`: MQTT brokers to subscribe to.
    pub mqtt: Vec<MqttSpec>,
    /// `[[serial]]`: serial devices to read.
    pub serial: Vec<SerialSpec>,
    /// `[[watch]]`: directories whose files become events.
    pub watch: Vec<WatchSpec>,
    /// `[[pipe]]`: commands whose runs become events.
    pub pipe: Vec<PipeSpec>,
    /// `[[sensor]]`: devices polled for readings.
    pub sensors: Vec<SensorSpec>,
    /// `[cloud]`: where to replicate.
    pub cloud: Option<CloudSpec>,
    /// `[[replicate]]`: which streams go where.
    pub replicate: Vec<ReplicateSpec>,
}

/// A serial device and where its frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSpec {
    /// Device, speed, framing.
    pub config: SerialConfig,
    /// Index into [`EdgeConfig::streams`].
    pub stream: usize,
    /// The routing key of its events (default: the device path).
    pub key: String,
}

/// A local stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// Scope.
    pub scope: String,
    /// Stream.
    pub stream: String,
    /// Fixed number of segments (key ranges).
    pub segments: u32,
    /// Bytes of this stream kept on disk at most; `None`: no budget.
    pub disk_budget: Option<u64>,
    /// What happens when the budget is reached.
    pub when_full: WhenFull,
}

impl StreamSpec {
    /// `scope/stream`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.scope, self.stream)
    }
}

/// What a stream does at its disk budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Stop taking data: sources pause (MQTT messages stay unacknowledged at the
    /// broker) until room is made (by retention, or by a user truncating the stream).
    #[default]
    Pause,
    /// Truncate the oldest data to make room; data not yet replicated is never dropped
    /// (the stream pauses instead).
    DropOldest,
    /// Truncate the oldest data to make room, also what the cloud does not hold yet
    /// (newest data wins over a long outage); the cloud stream gets a gap record for
    /// what was given up, with its range and event count.
    DropOldestUnreplicated,
}

/// An MQTT broker and what to take from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSpec {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Client id; with a persistent session the broker keeps our subscriptions and
    /// unacknowledged messages under it while we are away.
    pub client_id: String,
    /// Protocol version.
    pub version: MqttVersion,
    /// Username and password.
    pub credentials: Option<(String, String)>,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Topic filters and where their messages go.
    pub routes: Vec<MqttRoute>,
}

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MqttVersion {
    /// 3.1.1.
    #[default]
    V311,
    /// 5.
    V5,
}

/// One topic filter's messages into one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttRoute {
    /// Topic filter (`+` and `#` wildcards).
    pub filter: String,
    /// Index into [`EdgeConfig::streams`].
    pub stream: usize,
    /// Subscription QoS (0, 1 or 2).
    pub qos: u8,
    /// Where the routing key comes from.
    pub key: KeyFrom,
}

/// Where an MQTT message's routing key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KeyFrom {
    /// The whole topic (the default: per-topic order).
    #[default]
    Topic,
    /// One level of the topic, 0-based (`sensors/+/x` with level 1: the device).
    TopicLevel(usize),
    /// A top-level field of a JSON payload (strings as is, other values as JSON
    /// text); a message without it, or not JSON, gets the topic as key.
    JsonField(String),
    /// No key: events spread over the segments.
    None,
}

impl KeyFrom {
    /// The key of a message.
    pub fn key<'a>(&self, topic: &'a str, payload: &[u8]) -> std::borrow::Cow<'a, [u8]> {
        use std::borrow::Cow;
        match self {
            KeyFrom::Topic => Cow::Borrowed(topic.as_bytes()),
            KeyFrom::TopicLevel(n) => {
                Cow::Borrowed(topic.split('/').nth(*n).unwrap_or(topic).as_bytes())
            }
            KeyFrom::JsonField(field) => {
                match serde_json::from_slice::<serde_json::Value>(payload) {
                    Ok(serde_json::Value::Object(mut m)) => match m.remove(field) {
                        Some(serde_json::Value::String(s)) => Cow::Owned(s.into_bytes()),
                        Some(v) => Cow::Owned(v.to_string().into_bytes()),
                        None => Cow::Borrowed(topic.as_bytes()),
                    },
                    _ => Cow::Borrowed(topic.as_bytes()),
                }
            }
            KeyFrom::None => Cow::Borrowed(&[]),
        }
    }
}

/// Parses and validates an edge configuration; relative paths are joined to `base`.
pub fn parse(text: &str, base: &Path) -> Result<EdgeConfig, Vec<ConfigError>> {
    let (raw, unknown): (RawFile, _) = from_toml(text)?;
    let mut v = Validator::new(text, base);
    v.extend(unknown);
    let node = v.node(
        RawNode {
            data_dir: raw.data_dir,
            quic: raw.quic,
            http: raw.http,
            tls: raw.tls,
            log: raw.log,
            policies: raw.policies,
            grant: raw.grant,
        },
        edge_log(),
    );
    let streams = streams(&mut v, raw.stream);
    let (cloud, replicate) = replicate::config::parse(&mut v, raw.cloud, raw.replicate, &streams);
    let pipe = crate::pipe::parse(&mut v, raw.pipe, &streams);
    let sensors = crate::sensor::parse(&mut v, raw.sensor, &streams);
    let mqtt = raw
        .mqtt
        .into_iter()
        .enumerate()
        .filter_map(|(i, m)| mqtt(&mut v, i, m, &streams))
        .collect();
    let serial = raw
        .serial
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| serial(&mut v, i, s, &streams))
        .collect();
    let watch = raw
        .watch
        .into_iter()
        .enumerate()
        .filter_map(|(i, w)| watch(&mut v, i, w, &streams))
        .collect();
    v.finish(EdgeConfig {
        node,
        streams,
        mqtt,
        serial,
        watch,
        pipe,
        sensors,
        cloud,
        replicate,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    data_dir: Option<Spanned<PathBuf>>,
    quic: Option<RawListen>,
    http: Option<RawListen>,
    tls: Option<Spanned<RawTls>>,
    log: Option<RawLog>,
    policies: Option<RawPolicies>,
    grant: Option<Vec<Spanned<RawGrant>>>,
    cloud: Option<Spanned<RawCloud>>,
    #[serde(default)]
    replicate: Vec<Spanned<RawReplicate>>,
    #[serde(default)]
    stream: Vec<Spanned<RawStream>>,
    #[serde(default)]
    mqtt: Vec<Spanned<RawMqtt>>,
    #[serde(default)]
    serial: Vec<Spanned<RawSerial>>,
    #[serde(default)]
    watch: Vec<Spanned<RawWatch>>,
    #[serde(default)]
    pipe: Vec<Spanned<RawPipe>>,
    #[serde(default)]
    sensor: Vec<Spanned<RawSensor>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    dir: Spanned<PathBuf>,
    stream: Spanned<String>,
    settle_ms: Option<Spanned<u64>>,
    poll_ms: Option<Spanned<u64>>,
    after: Option<Spanned<String>>,
}

fn watch(
    v: &mut Validator<'_>,
    i: usize,
    raw: Spanned<RawWatch>,
    streams: &[StreamSpec],
) -> Option<WatchSpec> {
    let w = raw.into_inner();
    let key = |k: &str| format!("watch[{i}].{k}");
    let stream = stream_ref(v, &key("stream"), &w.stream, streams);
    let dir = v.path(&key("dir"), &w.dir)?;
    let mut ms = |k: &str, val: &Option<Spanned<u64>>, default: u64| {
        Duration::from_millis(v.within(&key(k), val.as_ref(), 10..=3_600_000, default))
    };
    let settle = ms("settle_ms", &w.settle_ms, 2000);
    let poll = ms("poll_ms", &w.poll_ms, 500);
    let after = match w.after.as_ref().map(|a| (a.get_ref().as_str(), a)) {
        None | Some(("delete", _)) => After::Delete,
        Some(("keep", _)) => After::Keep,
        Some((other, a)) => v.error(
            &key("after"),
            a.span().start,
            format!("{other:?}: expected \"delete\" or \"keep\""),
        )?,
    };
    Some(WatchSpec {
        dir,
        stream: stream?,
        settle,
        poll,
        after,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSerial {
    device: Spanned<PathBuf>,
    baud: Option<Spanned<u32>>,
    framing: Option<Spanned<String>>,
    max_frame_bytes: Option<Spanned<usize>>,
    utf8: Option<bool>,
    format: Option<Spanned<String>>,
    columns: Option<Spanned<Vec<String>>>,
    units: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    stream: Spanned<String>,
    key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStream {
    name: Spanned<String>,
    segments: Option<Spanned<u32>>,
    disk_budget_mb: Option<Spanned<u64>>,
    when_full: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    broker: Spanned<String>,
    client_id: Spanned<String>,
    version: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    keep_alive_secs: Option<Spanned<u64>>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    filter: Spanned<String>,
    stream: Spanned<String>,
    qos: Option<Spanned<u8>>,
    key: Option<Spanned<String>>,
}

fn streams(v: &mut Validator<'_>, raw: Vec<Spanned<RawStream>>) -> Vec<StreamSpec> {
    let mut out: Vec<StreamSpec> = Vec::new();
    for (i, s) in raw.into_iter().enumerate() {
        let s = s.into_inner();
        let key = |k: &str| format!("stream[{i}].{k}");
        let name = s.name.get_ref();
        let at = s.name.span().start;
        let Some((scope, stream)) = name.split_once('/') else {
            v.error::<()>(&key("name"), at, format!("{name:?} is not SCOPE/STREAM"));
            continue;
        };
        if let Err(e) = validate_scoped_name(scope).and(validate_scoped_name(stream)) {
            v.error::<()>(&key("name"), at, format!("{name:?}: {e}"));
            continue;
        }
        if out.iter().any(|o| o.scope == scope && o.stream == stream) {
            v.error::<()>(&key("name"), at, format!("{name:?} is configured twice"));
            continue;
        }
        let segments = v.within(&key("segments"), s.segments.as_ref(), 1..=64, 1);
        let disk_budget = match s.disk_budget_mb {
            Some(mb) if *mb.get_ref() == 0 || *mb.get_ref() > (1 << 30) => v.error(
                &key("disk_budget_mb"),
                mb.span().start,
                "must be between 1 and 1073741824".into(),
            ),
            Some(mb) => Some(*mb.get_ref() << 20),
            None => None,
        };
        let when_full = match s.when_full.as_ref().map(|w| (w.get_ref().as_str(), w)) {
            None | Some(("pause", _)) => WhenFull::Pause,
            Some(("drop-oldest", _)) => WhenFull::DropOldest,
            Some(("drop-oldest-unreplicated", _)) => WhenFull::DropOldestUnreplicated,
            Some((other, w)) => {
                v.error::<()>(
                    &key("when_full"),
                    w.span().start,
                    format!(
                        "{other:?}: expected \"pause\", \"drop-oldest\" or \"drop-oldest-unreplicated\""
                    ),
                );
                WhenFull::Pause
            }
        };
        out.push(StreamSpec {
            scope: scope.to_string(),
            stream: stream.to_string(),
            segments,
            disk_budget,
            when_full,
        });
    }
    out
}

/// The index of the configured stream `name`, or an error at `key`.
pub(crate) fn stream_ref(
    v: &mut Validator<'_>,
    key: &str,
    name: &Spanned<String>,
    streams: &[StreamSpec],
) -> Option<usize> {
    let found = streams.iter().position(|s| s.name() == *name.get_ref());
    if found.is_none() {
        v.error::<()>(
            key,
            name.span().start,
            format!("{:?} is not a configured [[stream]] name", name.get_ref()),
        );
    }
    found
}

fn serial(
    v: &mut Validator<'_>,
    i: usize,
    raw: Spanned<RawSerial>,
    streams: &[StreamSpec],
) -> Option<SerialSpec> {
    let at = raw.span().start;
    let s = raw.into_inner();
    let key = |k: &str| format!("serial[{i}].{k}");
    let stream = stream_ref(v, &key("stream"), &s.stream, streams);
    let device = v.path(&key("device"), &s.device)?;
    let max_len = s.max_frame_bytes.as_ref().map(|m| *m.get_ref());
    let framing = match s.framing.as_ref().map(|f| (f.get_ref().as_str(), f)) {
        None | Some(("lines", _)) => Framing::Lines {
            max_len: max_len.unwrap_or(4096),
            utf8: s.utf8.unwrap_or(false),
        },
        Some(("cobs", _)) => Framing::Cobs {
            max_len: max_len.unwrap_or(4096),
        },
        Some((other, f)) => v.error(
            &key("framing"),
            f.span().start,
            format!("{other:?}: expected \"lines\" or \"cobs\""),
        )?,
    };
    let mut config = SerialConfig::new(
        device,
        s.baud.as_ref().map_or(9600, |b| *b.get_ref()),
        framing,
    );
    let key_name = s.key.unwrap_or_else(|| config.device.display().to_string());
    let format = match s.format.as_ref().map(|f| (f.get_ref().as_str(), f)) {
        None | Some(("raw", _)) => None,
        Some(("nmea", _)) => Some(LineFormat::Nmea),
        Some(("json", _)) => Some(LineFormat::Json {
            units: s
                .units
                .as_ref()
                .map(|u| u.get_ref().clone())
                .unwrap_or_default(),
        }),
        Some(("csv", f)) => match &s.columns {
            Some(c) if c.get_ref().iter().any(|c| column(c).is_some()) => Some(LineFormat::Csv {
                columns: c.get_ref().iter().map(|c| column(c)).collect(),
            }),
            _ => v.error(
                &key("columns"),
                f.span().start,
                "the csv format needs columns = [\"name:unit\", ...]".into(),
            )?,
        },
        Some((other, f)) => v.error(
            &key("format"),
            f.span().start,
            format!("{other:?}: expected \"raw\", \"nmea\", \"json\" or \"csv\""),
        )?,
    };
    let misplaced = [
        ("columns", s.columns.as_ref().map(|c| c.span().start), "csv"),
        ("units", s.units.as_ref().map(|u| u.span().start), "json"),
    ];
    for (k, at, wants) in misplaced {
        if let Some(at) = at.filter(|_| format.as_ref().map(LineFormat::name) != Some(wants)) {
            v.error::<()>(&key(k), at, format!("only with format = \"{wants}\""));
        }
    }
    config.readings = format.map(|f| (key_name.clone(), f));
    if let Err(e) = config.validate() {
        v.error::<()>(&key("device"), at, format!("{e:#}"));
    }
    Some(SerialSpec {
        key: key_name,
        config,
        stream: stream?,
    })
}

fn mqtt(
    v: &mut Validator<'_>,
    i: usize,
    raw: Spanned<RawMqtt>,
    streams: &[StreamSpec],
) -> Option<MqttSpec> {
    let at = raw.span().start;
    let m = raw.into_inner();
    let key = |k: &str| format!("mqtt[{i}].{k}");
    let (host, port) = match m.broker.get_ref().rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => match p.parse::<u16>() {
            Ok(p) if p > 0 => (h.trim_matches(['[', ']']).to_string(), p),
            _ => v.error(
                &key("broker"),
                m.broker.span().start,
                format!("{:?}: bad port", m.broker.get_ref()),
            )?,
        },
        _ => v.error(
            &key("broker"),
            m.broker.span().start,
            format!("{:?} is not HOST:PORT", m.broker.get_ref()),
        )?,
    };
    let client_id = m.client_id.get_ref().clone();
    if client_id.is_empty() || client_id.len() > 128 {
        v.error::<()>(
            &key("client_id"),
            m.client_id.span().start,
            "must be 1 to 128 characters".into(),
        );
    }
    let version = match m.version.as_ref().map(|s| (s.get_ref().as_str(), s)) {
        None | Some(("3.1.1", _)) => MqttVersion::V311,
        Some(("5", _)) => MqttVersion::V5,
        Some((other, s)) => v.error(
            &key("version"),
            s.span().start,
            format!("{other:?}: expected \"3.1.1\" or \"5\""),
        )?,
    };
    let credentials = match (m.username, m.password) {
        (Some(u), Some(p)) => Some((u.into_inner(), p.into_inner())),
        (None, None) => None,
        _ => v.error(
            &key("username"),
            at,
            "username and password go together".into(),
        )?,
    };
    let keep_alive = Duration::from_secs(v.within(
        &key("keep_alive_secs"),
        m.keep_alive_secs.as_ref(),
        5..=3600,
        30,
    ));
    if m.route.is_empty() {
        v.error::<()>(
            &key("route"),
            at,
            "at least one [[mqtt.route]] is needed".into(),
        );
    }
    let mut routes = Vec::new();
    for (j, r) in m.route.into_iter().enumerate() {
        let r = r.into_inner();
        let key = |k: &str| format!("mqtt[{i}].route[{j}].{k}");
        if !rumqttc::valid_filter(r.filter.get_ref()) {
            v.error::<()>(
                &key("filter"),
                r.filter.span().start,
                format!("{:?} is not an MQTT topic filter", r.filter.get_ref()),
            );
        }
        let stream = stream_ref(v, &key("stream"), &r.stream, streams);
        let qos = match r.qos {
            Some(q) if *q.get_ref() > 2 => {
                v.error::<()>(&key("qos"), q.span().start, "must be 0, 1 or 2".into());
                1
            }
            Some(q) => *q.get_ref(),
            None => 1,
        };
        let from = match r.key.as_ref().map(|k| (k.get_ref().as_str(), k)) {
            None | Some(("topic", _)) => KeyFrom::Topic,
            Some(("none", _)) => KeyFrom::None,
            Some((s, k)) => {
                if let Some(level) = s.strip_prefix("topic-level:") {
                    match level.parse() {
                        Ok(n) => KeyFrom::TopicLevel(n),
                        Err(_) => {
                            v.error::<()>(
                                &key("key"),
                                k.span().start,
                                format!("{s:?}: the level is a number"),
                            );
                            KeyFrom::Topic
                        }
                    }
                } else if let Some(field) = s.strip_prefix("json:").filter(|f| !f.is_empty()) {
                    KeyFrom::JsonField(field.to_string())
                } else {
                    v.error::<()>(
                        &key("key"),
                        k.span().start,
                        format!(
                            "{s:?}: expected \"topic\", \"topic-level:N\", \"json:FIELD\" or \"none\""
                        ),
                    );
                    KeyFrom::Topic
                }
            }
        };
        if let Some(stream) = stream {
            routes.push(MqttRoute {
                filter: r.filter.into_inner(),
                stream,
                qos,
                key: from,
            });
        }
    }
    Some(MqttSpec {
        host,
        port,
        client_id,
        version,
        credentials,
        keep_alive,
        routes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        parse(text, Path::new("/etc/t"))
            .expect_err("accepted")
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn the_log_cache_is_small_unless_configured() {
        let base = Path::new("/etc/t");
        let cfg = parse("", base).expect("empty config");
        assert_eq!(cfg.node.log.cache_bytes, DEFAULT_CACHE_MB << 20);
        let cfg = parse("[log]\ncache_mb = 16\n", base).expect("cache_mb");
        assert_eq!(cfg.node.log.cache_bytes, 16 << 20);
    }

    #[test]
    fn the_shipped_examples_are_valid() {
        let c = parse(
            include_str!("../../config/edge-mqtt-pi.toml"),
            Path::new("/etc/t"),
        )
        .expect("edge-mqtt-pi.toml");
        assert_eq!(c.mqtt.len(), 1);
        assert_eq!(c.replicate[0].to(), "factory-3/sensors");
        assert!(c.cloud.is_some());
        let c = parse(
            include_str!("../../config/edge-serial-gateway.toml"),
            Path::new("/etc/t"),
        )
        .expect("edge-serial-gateway.toml");
        assert_eq!(c.serial.len(), 3);
        assert_eq!(c.serial[1].key, "probe-1");
        assert_eq!(c.sensors.len(), 5);
        let c = parse(
            include_str!("../../config/edge-camera-gateway.toml"),
            Path::new("/etc/t"),
        )
        .expect("edge-camera-gateway.toml");
        assert_eq!(c.watch.len(), 1);
        assert_eq!(c.pipe[0].max_bytes, 16 << 20);
        assert_eq!(c.replicate[0].max_bytes_per_s, Some(2 << 20));
        assert_eq!(c.cloud.map(|c| c.endpoints.len()), Some(1));
    }

    #[test]
    fn streams_and_routes_are_mapped() {
        let c = parse(
            "[[stream]]\nname = \"site/s\"\nsegments = 2\ndisk_budget_mb = 3\n\
             when_full = \"drop-oldest\"\n\
             [[mqtt]]\nbroker = \"localhost:1883\"\nclient_id = \"gw\"\nversion = \"5\"\n\
             [[mqtt.route]]\nfilter = \"a/+/b\"\nstream = \"site/s\"\nqos = 2\n\
             key = \"topic-level:1\"\n",
            Path::new("/etc/t"),
        )
        .expect("valid");
        assert_eq!(
            c.streams,
            vec![StreamSpec {
                scope: "site".into(),
                stream: "s".into(),
                segments: 2,
                disk_budget: Some(3 << 20),
                when_full: WhenFull::DropOldest,
            }]
        );
        let m = &c.mqtt[0];
        assert_eq!((m.host.as_str(), m.port), ("localhost", 1883));
        assert_eq!(m.version, MqttVersion::V5);
        assert_eq!(
            m.routes,
            vec![MqttRoute {
                filter: "a/+/b".into(),
                stream: 0,
                qos: 2,
                key: KeyFrom::TopicLevel(1),
            }]
        );
    }

    #[test]
    fn every_error_names_key_and_line() {
        let e = errors(
            "[[stream]]\nname = \"nos\"\n\
             [[stream]]\nname = \"a/b\"\nwhen_full = \"explode\"\n\
             [[mqtt]]\nbroker = \"host\"\nclient_id = \"x\"\n\
             [[mqtt]]\nbroker = \"h:1\"\nclient_id = \"x\"\n\
             [[mqtt.route]]\nfilter = \"a/#/b\"\nstream = \"c/d\"\nqos = 3\nkey = \"json:\"\n",
        );
        let want = [
            "line 2: stream[0].name: \"nos\" is not SCOPE/STREAM",
            "line 5: stream[1].when_full: \"explode\"",
            "line 7: mqtt[0].broker: \"host\" is not HOST:PORT",
            "line 13: mqtt[1].route[0].filter: \"a/#/b\" is not an MQTT topic filter",
            "line 14: mqtt[1].route[0].stream: \"c/d\" is not a configured [[stream]]",
            "line 15: mqtt[1].route[0].qos: must be 0, 1 or 2",
            "line 16: mqtt[1].route[0].key: \"json:\"",
        ];
        assert_eq!(e.len(), want.len(), "{e:#?}");
        for (got, want) in e.iter().zip(want) {
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
        let e = &errors("[[stream]]\nname = \"a/b\"\ncolour = 1\n")[0];
        assert!(e.starts_with("line 3: "), "{e}");
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn every_unknown_key_is_named_in_its_table_with_the_other_errors() {
        let e = errors(
            "[[stream]]\nname = \"a/b\"\nsegmnts = 3\n\
             [[mqtt]]\nbroker = \"h:1\"\nclient_id = \"x\"\n\
             [[mqtt.route]]\nfilter = \"t\"\nstream = \"a/b\"\n\
             [[mqtt]]\nbroker = \"h:1\"\nclient_id = \"y\"\nkeepalive = 5\n\
             [[mqtt.route]]\nfilter = \"t\"\nstream = \"a/b\"\n\
             [[mqtt.route]]\nfilter = \"u\"\nstream = \"a/b\"\nqos = 7\npriority = 1\n",
        );
        let want = [
            "line 3: stream[0].segmnts: unknown field",
            "line 13: mqtt[1].keepalive: unknown field",
            "line 20: mqtt[1].route[1].qos: must be 0, 1 or 2",
            "line 21: mqtt[1].route[1].priority: unknown field",
        ];
        assert_eq!(e.len(), want.len(), "{e:#?}");
        for (got, want) in e.iter().zip(want) {
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
    }

    #[test]
    fn replication_errors_name_key_and_line() {
        let e = errors(
            "[[stream]]\nname = \"a/b\"\n\
             [cloud]\nendpoints = [\"nohost\"]\nca = \"ca.pem\"\n\
             [[replicate]]\nstream = \"a/c\"\n\
             [[replicate]]\nstream = \"a/b\"\nto = \"x\"\n\
             [[replicate]]\nstream = \"a/b\"\nmax_kib_per_s = 0\n",
        );
        let want = [
            "line 3: cloud.cert: missing",
            "line 3: cloud.key: missing",
            "line 4: cloud.endpoints[0]: \"nohost\" is not HOST:PORT",
            "line 7: replicate[0].stream: \"a/c\" is not a configured [[stream]]",
            "line 10: replicate[1].to: \"x\" is not SCOPE/STREAM",
            "line 13: replicate[2].max_kib_per_s: must be between 1",
        ];
        assert_eq!(e.len(), want.len(), "{e:#?}");
        for (got, want) in e.iter().zip(want) {
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
        let e = errors("[[stream]]\nname = \"a/b\"\n[[replicate]]\nstream = \"a/b\"\n");
        assert!(e[0].contains("needs a [cloud] section"), "{e:?}");
        let e = errors(
            "[[grant]]\nidentity = \"edge\"\nstreams = [\"a\", \"a/*-{identity}\"]\n\
             allow = [\"read\", \"wrte\"]\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("line 3: grant[0].streams[0]: \"a\" is not"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("line 4: grant[0].allow[1]: \"wrte\" is not one of create, write"),
            "{e:?}"
        );
        // Least privilege: a grant says what it allows.
        let e = errors("[[grant]]\nidentity = \"edge\"\nstreams = [\"a/b\"]\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("line 1: grant[0].allow: a grant says"),
            "{e:?}"
        );
    }

    #[test]
    fn commands_are_checked() {
        let e = errors(
            "[[stream]]\nname = \"a/b\"\n\
             [[pipe]]\ncommand = []\nstream = \"a/b\"\n\
             [[pipe]]\ncommand = [\"x\"]\nstream = \"a/b\"\nmax_event_mb = 0\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("line 4: pipe[0].command: must name a program"),
            "{e:?}"
        );
        assert!(e[1].starts_with("line 9: pipe[1].max_event_mb"), "{e:?}");
        let c = parse(
            "[[stream]]\nname = \"a/b\"\n[[pipe]]\ncommand = [\"/usr/bin/cam\", \"-o\", \"-\"]\n\
             stream = \"a/b\"\nevery_secs = 5\n",
            Path::new("/etc"),
        )
        .expect("valid");
        assert_eq!(c.pipe[0].key, "cam");
        assert_eq!(c.pipe[0].every, Duration::from_secs(5));
    }

    #[test]
    fn sensors_and_line_formats_are_checked() {
        let e = errors(
            "[[stream]]\nname = \"a/b\"\n\
             [[sensor]]\nid = \"t\"\ndriver = \"bme999\"\nstream = \"a/b\"\n\
             [[sensor]]\nid = \"t2\"\ndriver = \"sht3x\"\nstream = \"a/b\"\naddress = 0x50\nslave = 2\n\
             [[sensor]]\nid = \"m\"\ndriver = \"modbus\"\nstream = \"a/b\"\nport = \"/dev/x\"\nslave = 1\n\
             [[sensor.register]]\nname = \"r\"\naddress = 65535\ntype = \"f32\"\n\
             [[serial]]\ndevice = \"/dev/y\"\nstream = \"a/b\"\nformat = \"csv\"\n\
             [[serial]]\ndevice = \"/dev/z\"\nstream = \"a/b\"\nformat = \"nmea\"\nunits = { t = \"C\" }\n",
        );
        let want = [
            "line 5: sensor[0].driver: \"bme999\": expected",
            "line 7: sensor[1].bus: missing: the sht3x driver needs it",
            "line 11: sensor[1].address: 0x50: the sht3x answers at 0x44 to 0x45",
            "line 12: sensor[1].slave: not a key of the sht3x driver",
            "line 21: sensor[2].register[0].address: the value runs past register 65535",
            "line 26: serial[0].columns: the csv format needs columns",
            "line 31: serial[1].units: only with format = \"json\"",
        ];
        assert_eq!(e.len(), want.len(), "{e:#?}");
        for (got, want) in e.iter().zip(want) {
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
        let c = parse(
            "[[stream]]\nname = \"a/b\"\n\
             [[sensor]]\nid = \"adc\"\ndriver = \"ads1115\"\nstream = \"a/b\"\nbus = \"/dev/i2c-1\"\n\
             inputs = [\"a0\", \"diff23\"]\nrange_v = 4.096\n\
             [[serial]]\ndevice = \"/dev/y\"\nstream = \"a/b\"\nformat = \"csv\"\ncolumns = [\"t:Cel\", \"\"]\n",
            Path::new("/etc"),
        )
        .expect("valid");
        assert_eq!(c.sensors[0].device.location(), "/dev/i2c-1@0x48");
        assert_eq!(c.sensors[0].every, Duration::from_secs(10));
        let (sensor, format) = c.serial[0].config.readings.clone().expect("readings");
        assert_eq!((sensor.as_str(), format.name()), ("/dev/y", "csv"));
    }

    #[test]
    fn keys_from_topic_level_and_json() {
        let k =
            |from: KeyFrom, topic, payload: &str| from.key(topic, payload.as_bytes()).into_owned();
        assert_eq!(k(KeyFrom::Topic, "a/b", "x"), b"a/b");
        assert_eq!(k(KeyFrom::TopicLevel(1), "s/dev7/t", "x"), b"dev7");
        assert_eq!(k(KeyFrom::TopicLevel(9), "s/dev7/t", "x"), b"s/dev7/t");
        let j = || KeyFrom::JsonField("id".into());
        assert_eq!(k(j(), "t", r#"{"id":"d1","v":2}"#), b"d1");
        assert_eq!(k(j(), "t", r#"{"id":42}"#), b"42");
        assert_eq!(k(j(), "t", r#"{"v":1}"#), b"t");
        assert_eq!(k(j(), "t", "not json"), b"t");
        assert_eq!(k(KeyFrom::None, "t", "x"), b"");
    }
}

//! The `[cloud]` and `[[replicate]]` sections: where the edge replicates, as whom, and
//! which local streams go to which cloud streams.
//!
//! ```toml
//! [cloud]
//! endpoints = ["cloud.example.net:9190"]   # tried in turn until one answers
//! server_name = "cloud.example.net"        # in the cloud's certificate
//! ca = "cloud-ca.pem"                      # the CA that signed the cloud's certificate
//! cert = "gateway-17.pem"                  # this edge's identity (common name)
//! key = "gateway-17.key"
//!
//! [[replicate]]
//! stream = "site/sensors"                  # a [[stream]]
//! to = "factory-3/sensors"                 # cloud scope/stream (default: the same)
//! priority = 10                            # higher drains first (default 0)
//! max_kib_per_s = 512                      # bandwidth cap (default: none)
//! ```

use serde::Deserialize;
use toml::Spanned;
use tributary::node::config::Validator;
use tributary::stream::validate_scoped_name;
use tributary::tls::Identity;

use crate::config::StreamSpec;

/// The cloud the edge replicates to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudSpec {
    /// `host:port` of the cloud's segment service, tried in turn.
    pub endpoints: Vec<String>,
    /// The name in the cloud's certificate.
    pub server_name: String,
    /// The cloud's CA, this edge's certificate and key.
    pub identity: Identity,
}

/// One local stream replicated to one cloud stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicateSpec {
    /// Index into the edge's streams.
    pub stream: usize,
    /// Cloud scope.
    pub to_scope: String,
    /// Cloud stream.
    pub to_stream: String,
    /// Higher drains first.
    pub priority: i32,
    /// Bytes per second at most; `None`: no cap.
    pub max_bytes_per_s: Option<u64>,
}

impl ReplicateSpec {
    /// `scope/stream` in the cloud.
    pub fn to(&self) -> String {
        format!("{}/{}", self.to_scope, self.to_stream)
    }
}

/// `[cloud]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCloud {
    endpoints: Option<Vec<Spanned<String>>>,
    server_name: Option<Spanned<String>>,
    ca: Option<Spanned<std::path::PathBuf>>,
    cert: Option<Spanned<std::path::PathBuf>>,
    key: Option<Spanned<std::path::PathBuf>>,
}

/// `[[replicate]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplicate {
    stream: Spanned<String>,
    to: Option<Spanned<String>>,
    priority: Option<Spanned<i32>>,
    max_kib_per_s: Option<Spanned<u64>>,
}

/// Validates `[cloud]` and `[[replicate]]`.
pub fn parse(
    v: &mut Validator<'_>,
    cloud: Option<Spanned<RawCloud>>,
    replicate: Vec<Spanned<RawReplicate>>,
    streams: &[StreamSpec],
) -> (Option<CloudSpec>, Vec<ReplicateSpec>) {
    let cloud_at = cloud.as_ref().map(|c| c.span().start);
    let cloud = cloud.and_then(|c| parse_cloud(v, c));
    let mut out: Vec<ReplicateSpec> = Vec::new();
    for (i, r) in replicate.into_iter().enumerate() {
        let at = r.span().start;
        let r = r.into_inner();
        let key = |k: &str| format!("replicate[{i}].{k}");
        if cloud_at.is_none() && i == 0 {
            v.error::<()>(
                &key("stream"),
                at,
                "replication needs a [cloud] section (endpoints, server_name, ca, cert, key)"
                    .into(),
            );
        }
        let found = streams.iter().position(|s| s.name() == *r.stream.get_ref());
        let Some(stream) = found else {
            v.error::<()>(
                &key("stream"),
                r.stream.span().start,
                format!(
                    "{:?} is not a configured [[stream]] name",
                    r.stream.get_ref()
                ),
            );
            continue;
        };
        if out.iter().any(|o| o.stream == stream) {
            v.error::<()>(
                &key("stream"),
                r.stream.span().start,
                format!("{:?} is replicated twice", r.stream.get_ref()),
            );
            continue;
        }
        let (to_scope, to_stream) = match &r.to {
            None => (
                streams[stream].scope.clone(),
                streams[stream].stream.clone(),
            ),
            Some(to) => match to.get_ref().split_once('/') {
                Some((s, t))
                    if validate_scoped_name(s).is_ok() && validate_scoped_name(t).is_ok() =>
                {
                    (s.to_string(), t.to_string())
                }
                _ => {
                    v.error::<()>(
                        &key("to"),
                        to.span().start,
                        format!("{:?} is not SCOPE/STREAM", to.get_ref()),
                    );
                    continue;
                }
            },
        };
        if out
            .iter()
            .any(|o| o.to_scope == to_scope && o.to_stream == to_stream)
        {
            v.error::<()>(
                &key("to"),
                r.to.as_ref().map_or(at, |t| t.span().start),
                format!("two local streams replicate to {to_scope}/{to_stream}"),
            );
            continue;
        }
        let max_bytes_per_s = match &r.max_kib_per_s {
            Some(k) if *k.get_ref() == 0 || *k.get_ref() > (1 << 30) => {
                v.error::<()>(
                    &key("max_kib_per_s"),
                    k.span().start,
                    "must be between 1 and 1073741824 (leave it out for no cap)".into(),
                );
                None
            }
            Some(k) => Some(*k.get_ref() << 10),
            None => None,
        };
        out.push(ReplicateSpec {
            stream,
            to_scope,
            to_stream,
            priority: r.priority.map_or(0, |p| *p.get_ref()),
            max_bytes_per_s,
        });
    }
    (cloud, out)
}

fn parse_cloud(v: &mut Validator<'_>, raw: Spanned<RawCloud>) -> Option<CloudSpec> {
    let at = raw.span().start;
    let c = raw.into_inner();
    let mut endpoints = Vec::new();
    for (i, e) in c.endpoints.iter().flatten().enumerate() {
        let ok = e
            .get_ref()
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if ok {
            endpoints.push(e.get_ref().clone());
        } else {
            v.error::<()>(
                &format!("cloud.endpoints[{i}]"),
                e.span().start,
                format!("{:?} is not HOST:PORT", e.get_ref()),
            );
        }
    }
    if c.endpoints.as_ref().is_none_or(|e| e.is_empty()) {
        v.error::<()>(
            "cloud.endpoints",
            at,
            "missing: at least one HOST:PORT".into(),
        );
    }
    let mut file = |k: &str, p: &Option<Spanned<std::path::PathBuf>>| match p {
        Some(p) => v.path(&format!("cloud.{k}"), p),
        None => v.error(&format!("cloud.{k}"), at, "missing".into()),
    };
    let ca = file("ca", &c.ca);
    let cert = file("cert", &c.cert);
    let key = file("key", &c.key);
    let server_name = match &c.server_name {
        Some(n) if n.get_ref().trim().is_empty() => v.error(
            "cloud.server_name",
            n.span().start,
            "must not be empty".into(),
        ),
        Some(n) => Some(n.get_ref().clone()),
        None => Some(tributary::node::config::DEFAULT_SERVER_NAME.to_string()),
    };
    Some(CloudSpec {
        endpoints,
        server_name: server_name?,
        identity: Identity {
            ca: ca?,
            cert: cert?,
            key: key?,
        },
    })
}

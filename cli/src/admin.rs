//! `trib scope ...` and `trib stream ...`.

use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use tributary::service::Client;
use tributary::stream::{
    segment_name, KeyRange, RetentionPolicy, ScalingPolicy, SegmentId, StreamConfig, StreamCut,
};

use crate::connect::scoped;

#[derive(Debug, Subcommand)]
pub enum ScopeCmd {
    /// Creates a scope.
    Create {
        /// Scope name.
        scope: String,
    },
    /// Lists scopes.
    List,
    /// Deletes an empty scope.
    Delete {
        /// Scope name.
        scope: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct Policies {
    /// Segments of a fixed stream, or the minimum of a scaling one.
    #[arg(long, default_value_t = 1)]
    segments: u32,
    /// Scale automatically at this many events/s per segment.
    #[arg(long, conflicts_with = "scale_kib")]
    scale_events: Option<u64>,
    /// Scale automatically at this many KiB/s per segment.
    #[arg(long)]
    scale_kib: Option<u64>,
    /// Into how many segments a hot segment splits.
    #[arg(long, default_value_t = 2)]
    scale_factor: u32,
    /// Keep at least this many seconds of data.
    #[arg(long, conflicts_with = "retention_bytes")]
    retention_seconds: Option<u64>,
    /// Keep at least this many bytes.
    #[arg(long)]
    retention_bytes: Option<u64>,
}

impl Policies {
    fn config(&self) -> StreamConfig {
        let scaling = match (self.scale_events, self.scale_kib) {
            (Some(t), _) => ScalingPolicy::EventRate {
                target_events_per_s: t,
                scale_factor: self.scale_factor,
                min_segments: self.segments,
            },
            (None, Some(t)) => ScalingPolicy::ByteRate {
                target_kib_per_s: t,
                scale_factor: self.scale_factor,
                min_segments: self.segments,
            },
            (None, None) => ScalingPolicy::Fixed {
                segments: self.segments,
            },
        };
        let retention = match (self.retention_seconds, self.retention_bytes) {
            (Some(seconds), _) => RetentionPolicy::Time { seconds },
            (None, Some(bytes)) => RetentionPolicy::Size { bytes },
            (None, None) => RetentionPolicy::Forever,
        };
        StreamConfig { scaling, retention }
    }
}

#[derive(Debug, Subcommand)]
pub enum StreamCmd {
    /// Creates a stream.
    Create {
        /// SCOPE/STREAM.
        stream: String,
        #[command(flatten)]
        policies: Policies,
    },
    /// Changes a stream's scaling and retention.
    Update {
        /// SCOPE/STREAM.
        stream: String,
        #[command(flatten)]
        policies: Policies,
    },
    /// Lists the streams of a scope.
    List {
        /// Scope name.
        scope: String,
    },
    /// Shows a stream's segments, key ranges, lengths and successors.
    Describe {
        /// SCOPE/STREAM.
        stream: String,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Splits one active segment (`--split NUMBER.EPOCH`) or merges two neighbours
    /// (`--merge NUMBER.EPOCH NUMBER.EPOCH`).
    Scale {
        /// SCOPE/STREAM.
        stream: String,
        /// Segment to split.
        #[arg(long, conflicts_with = "merge")]
        split: Option<String>,
        /// Into how many segments.
        #[arg(long, default_value_t = 2)]
        into: u64,
        /// Two neighbouring segments to merge.
        #[arg(long, num_args = 2)]
        merge: Option<Vec<String>>,
    },
    /// Seals a stream: no more events.
    Seal {
        /// SCOPE/STREAM.
        stream: String,
    },
    /// Drops everything before a stream cut (`NUMBER.EPOCH:OFFSET,...`, as
    /// `trib read --json` and checkpoints print them).
    Truncate {
        /// SCOPE/STREAM.
        stream: String,
        /// The cut.
        #[arg(long)]
        at: String,
    },
    /// Deletes a sealed stream.
    Delete {
        /// SCOPE/STREAM.
        stream: String,
    },
}

pub async fn scope(c: &Client, cmd: ScopeCmd) -> Result<()> {
    match cmd {
        ScopeCmd::Create { scope } => {
            c.create_scope(&scope).await?;
            eprintln!("created scope {scope}");
        }
        ScopeCmd::List => {
            for s in c.list_scopes().await? {
                println!("{s}");
            }
        }
        ScopeCmd::Delete { scope } => {
            c.delete_scope(&scope).await?;
            eprintln!("deleted scope {scope}");
        }
    }
    Ok(())
}

fn parse_id(s: &str) -> Result<SegmentId> {
    let bad = || anyhow!("{s:?} is not a segment (NUMBER.EPOCH, e.g. 0.0)");
    let (n, e) = s.split_once('.').ok_or_else(bad)?;
    Ok(SegmentId {
        number: n.parse().map_err(|_| bad())?,
        epoch: e.parse().map_err(|_| bad())?,
    })
}

pub async fn stream(c: &Client, cmd: StreamCmd) -> Result<()> {
    match cmd {
        StreamCmd::Create { stream, policies } => {
            let (scope, name) = scoped(&stream)?;
            let meta = c.create_stream(scope, name, policies.config()).await?;
            eprintln!(
                "created stream {stream} with {} segment(s)",
                meta.active().len()
            );
        }
        StreamCmd::Update { stream, policies } => {
            let (scope, name) = scoped(&stream)?;
            c.update_stream(scope, name, policies.config()).await?;
            eprintln!("updated stream {stream}");
        }
        StreamCmd::List { scope } => {
            for s in c.list_streams(&scope).await? {
                println!("{s}");
            }
        }
        StreamCmd::Describe { stream, json } => describe(c, &stream, json).await?,
        StreamCmd::Scale {
            stream,
            split,
            into,
            merge,
        } => {
            let (scope, name) = scoped(&stream)?;
            let meta = c.describe_stream(scope, name).await?;
            let (seal, ranges) = match (split, merge) {
                (Some(s), None) => {
                    let id = parse_id(&s)?;
                    let rec = meta.segment(id)?;
                    (vec![id], rec.range.split(into))
                }
                (None, Some(m)) if m.len() == 2 => {
                    let ids = [parse_id(&m[0])?, parse_id(&m[1])?];
                    let (a, b) = (meta.segment(ids[0])?.range, meta.segment(ids[1])?.range);
                    let range = KeyRange {
                        low: a.low.min(b.low),
                        high: a.high.max(b.high),
                    };
                    (ids.to_vec(), vec![range])
                }
                _ => bail!("give --split NUMBER.EPOCH or --merge NUMBER.EPOCH NUMBER.EPOCH"),
            };
            let new = c.scale_stream(scope, name, &seal, &ranges).await?;
            let new: Vec<String> = new
                .iter()
                .map(|i| format!("{}.{}", i.number, i.epoch))
                .collect();
            eprintln!("scaled {stream}: new segments {}", new.join(", "));
        }
        StreamCmd::Seal { stream } => {
            let (scope, name) = scoped(&stream)?;
            c.seal_stream(scope, name).await?;
            eprintln!("sealed {stream}");
        }
        StreamCmd::Truncate { stream, at } => {
            let (scope, name) = scoped(&stream)?;
            let cut: StreamCut = at.parse()?;
            c.truncate_stream(scope, name, &cut).await?;
            eprintln!("truncated {stream} at {cut}");
        }
        StreamCmd::Delete { stream } => {
            let (scope, name) = scoped(&stream)?;
            c.delete_stream(scope, name).await?;
            eprintln!("deleted {stream}");
        }
    }
    Ok(())
}

async fn describe(c: &Client, stream: &str, json: bool) -> Result<()> {
    let (scope, name) = scoped(stream)?;
    let meta = c.describe_stream(scope, name).await?;
    let mut segments = Vec::new();
    for rec in meta.segments.values() {
        let info = c
            .segment_info(&segment_name(scope, name, rec.id))
            .await
            .ok();
        let ids = |v: &[SegmentId]| -> Vec<String> {
            v.iter()
                .map(|i| format!("{}.{}", i.number, i.epoch))
                .collect()
        };
        segments.push(serde_json::json!({
            "segment": format!("{}.{}", rec.id.number, rec.id.epoch),
            "range": rec.range.to_string(),
            "active": rec.sealed_epoch.is_none(),
            "start": info.as_ref().map(|i| i.start),
            "length": info.as_ref().map(|i| i.length),
            "deleted": info.is_none(),
            "predecessors": ids(&rec.predecessors),
            "successors": ids(&rec.successors),
        }));
    }
    let out = serde_json::json!({
        "stream": stream,
        "sealed": meta.sealed,
        "epoch": meta.epoch,
        "scaling": serde_json::to_value(meta.config.scaling)?,
        "retention": serde_json::to_value(meta.config.retention)?,
        "head": meta.head_cut().to_string(),
        "segments": segments,
    });
    if json {
        println!("{out}");
        return Ok(());
    }
    println!(
        "{stream}: epoch {}, {}, scaling {}, retention {}",
        meta.epoch,
        if meta.sealed { "sealed" } else { "open" },
        out["scaling"],
        out["retention"]
    );
    println!("head: {}", out["head"].as_str().unwrap_or(""));
    println!(
        "{:<10} {:<20} {:<8} {:>12} {:>12}  successors",
        "segment", "range", "state", "start", "length"
    );
    for s in segments {
        let num = |k: &str| s[k].as_u64().map_or("-".to_string(), |v| v.to_string());
        println!(
            "{:<10} {:<20} {:<8} {:>12} {:>12}  {}",
            s["segment"].as_str().unwrap_or(""),
            s["range"].as_str().unwrap_or(""),
            if s["deleted"] == true {
                "deleted"
            } else if s["active"] == true {
                "active"
            } else {
                "sealed"
            },
            num("start"),
            num("length"),
            s["successors"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default()
        );
    }
    Ok(())
}

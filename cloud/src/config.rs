//! The cloud node's configuration file: the node sections every node shares (see
//! [`tributary::node::config`]) and `[tier2]`, where segment data goes for the long
//! term.
//!
//! ```toml
//! [tier2]
//! kind = "s3"                       # "fs" (the default), "s3" or "none"
//! endpoint = "http://127.0.0.1:3900" # S3 only; default: AWS for the region
//! region = "us-east-1"
//! bucket = "tributary"
//! prefix = "cluster-1/node-1/"      # one prefix per node
//! path_style = true
//! access_key_id = "GK..."           # both or neither; neither: the AWS chain
//! secret_access_key = "..."
//! # kind = "fs": path = "/mnt/nfs/tributary" (default: DATA_DIR/tier2)
//! flush_interval_secs = 10
//! chunk_mb = 16
//! max_backlog_mb = 1024
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use tributary::log::LogConfig;
use tributary::node::config::{
    from_toml, ConfigError, NodeSettings, RawGrant, RawListen, RawLog, RawNode, RawPolicies,
    RawTls, Validator,
};

/// Default pass interval.
const DEFAULT_FLUSH_SECS: u64 = 10;
/// Default largest chunk, in MiB.
const DEFAULT_CHUNK_MB: u64 = 16;
/// Default backlog bound, in MiB.
const DEFAULT_BACKLOG_MB: u64 = 1024;
/// Largest backlog bound, in MiB (16 TiB).
const MAX_BACKLOG_MB: u64 = 1 << 24;

/// A cloud node's file, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudSettings {
    /// The node sections.
    pub node: NodeSettings,
    /// `[tier2]`.
    pub tier2: Tier2Settings,
}

impl Default for CloudSettings {
    /// The settings of an empty file.
    fn default() -> Self {
        parse("", Path::new("/"))
            .unwrap_or_else(|errors| unreachable!("an empty file is valid: {errors:?}"))
    }
}

/// Memory the cloud node's log keeps for recently written data unless `[log]
/// cache_mb` says otherwise, on a machine with at least 8 times as much (see
/// [`default_cache_bytes`]). Tier-2 passes start once a quarter of `max_backlog_mb`
/// (256 MiB) waits, and move it oldest first: a cache that still holds it spares the
/// disk from reading it back. With 64 MiB, a standalone node under `trib bench write`
/// read 380–400 MB/s back from its own disk; with 320 MiB, 0–124 MB/s, and took about
/// 12 % more (see ARCHITECTURE.md, Tier-2).
pub const DEFAULT_CACHE_MB: usize = 320;

/// The cache of a node whose config does not set one: [`DEFAULT_CACHE_MB`], but no
/// more than an eighth of the memory the node may use (`MemTotal`, or a lower cgroup
/// limit: a container or a systemd `MemoryMax`), and at least 16 MiB. A full cache
/// stays full, so on a 1 GiB VM 320 MiB would be a third of the machine.
pub fn default_cache_bytes(memory_bytes: Option<u64>) -> usize {
    let eighth = memory_bytes.map_or(u64::MAX, |m| m / 8);
    let bytes = ((DEFAULT_CACHE_MB as u64) << 20).min(eighth).max(16 << 20);
    usize::try_from(bytes).unwrap_or(DEFAULT_CACHE_MB << 20)
}

/// The memory this process may use: the machine's, or its cgroup's limit if lower.
/// `None` if neither can be read.
pub fn usable_memory() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let total = read("/proc/meminfo").and_then(|m| {
        let kb = m.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
        let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb.saturating_mul(1024))
    });
    // "0::/path" (v2) or "4:memory:/path" (v1). The group's ancestors count too (a
    // limit on a systemd slice), and in a container whose group is the mount's root
    // only the root's file exists. An unlimited group says "max" (v2) or a number near
    // 2^63 (v1), which the machine's total undercuts.
    let limit = read("/proc/self/cgroup").and_then(|c| {
        c.lines()
            .filter_map(|line| {
                let mut f = line.splitn(3, ':');
                let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
                let (root, file) = match controllers {
                    "" => ("/sys/fs/cgroup", "memory.max"),
                    c if c.split(',').any(|c| c == "memory") => {
                        ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
                    }
                    _ => return None,
                };
                Path::new(path)
                    .ancestors()
                    .filter_map(|group| {
                        let group = group.to_string_lossy();
                        let at = format!("{root}{}/{file}", group.trim_end_matches('/'));
                        read(&at)?.trim().parse::<u64>().ok()
                    })
                    .min()
            })
            .min()
    });
    match (total, limit) {
        (Some(t), Some(l)) => Some(t.min(l)),
        (t, l) => t.or(l),
    }
}

fn cloud_log() -> LogConfig {
    LogConfig {
        cache_bytes: default_cache_bytes(usable_memory()),
        ..LogConfig::default()
    }
}

/// Where Tier-2 is and how data moves there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier2Settings {
    /// The backend.
    pub backend: Backend,
    /// How often data moves (and sooner once a quarter of `max_backlog_bytes` waits).
    pub flush_interval: Duration,
    /// Largest chunk, in bytes.
    pub chunk_bytes: u64,
    /// Bytes that may wait in the log before appends are refused.
    pub max_backlog_bytes: u64,
}

impl Default for Tier2Settings {
    fn default() -> Self {
        Tier2Settings {
            backend: Backend::Fs(None),
            flush_interval: Duration::from_secs(DEFAULT_FLUSH_SECS),
            chunk_bytes: DEFAULT_CHUNK_MB << 20,
            max_backlog_bytes: DEFAULT_BACKLOG_MB << 20,
        }
    }
}

/// A Tier-2 backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// No Tier-2: the log keeps everything.
    None,
    /// A directory (`None`: `DATA_DIR/tier2`).
    Fs(Option<PathBuf>),
    /// An S3-compatible object store.
    S3(S3Settings),
}

/// An S3 bucket and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// Endpoint URL (`None`: AWS).
    pub endpoint: Option<String>,
    /// Region (`None`: from the AWS environment, else `us-east-1`).
    pub region: Option<String>,
    /// Bucket.
    pub bucket: String,
    /// Prefix of every object name (ends with `/` unless empty).
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), as MinIO and Garage want.
    pub path_style: bool,
    /// Static credentials (`None`: the AWS environment, profile, or instance role).
    pub credentials: Option<(String, String)>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    data_dir: Option<Spanned<PathBuf>>,
    quic: Option<RawListen>,
    http: Option<RawListen>,
    tls: Option<Spanned<RawTls>>,
    log: Option<RawLog>,
    policies: Option<RawPolicies>,
    grant: Option<Vec<Spanned<RawGrant>>>,
    tier2: Option<Spanned<RawTier2>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier2 {
    kind: Option<Spanned<String>>,
    path: Option<Spanned<PathBuf>>,
    endpoint: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    bucket: Option<Spanned<String>>,
    prefix: Option<Spanned<String>>,
    path_style: Option<bool>,
    access_key_id: Option<Spanned<String>>,
    secret_access_key: Option<Spanned<String>>,
    flush_interval_secs: Option<Spanned<u64>>,
    chunk_mb: Option<Spanned<u64>>,
    max_backlog_mb: Option<Spanned<u64>>,
}

/// Parses and validates a cloud node's file; relative paths are joined to `base`.
pub fn parse(text: &str, base: &Path) -> Result<CloudSettings, Vec<ConfigError>> {
    let (raw, unknown): (RawFile, _) = from_toml(text)?;
    let mut v = Validator::new(text, base);
    v.extend(unknown);
    let mut node = v.node(
        RawNode {
            data_dir: raw.data_dir,
            quic: raw.quic,
            http: raw.http,
            tls: raw.tls,
            log: raw.log,
            policies: raw.policies,
            grant: raw.grant,
        },
        cloud_log(),
    );
    let tier2 = match raw.tier2 {
        Some(t) => tier2(&mut v, t),
        None => Tier2Settings::default(),
    };
    node.log.max_tier2_backlog_bytes = tier2.max_backlog_bytes;
    v.finish(CloudSettings { node, tier2 })
}

fn tier2(v: &mut Validator<'_>, t: Spanned<RawTier2>) -> Tier2Settings {
    let at = t.span().start;
    let t = t.into_inner();
    let kind = t.kind.as_ref().map_or("fs", |k| k.get_ref().as_str());
    let pos = |s: &Option<Spanned<String>>| s.as_ref().map(|s| s.span().start);
    let kind_keys = [
        ("fs", "path", t.path.as_ref().map(|p| p.span().start)),
        ("s3", "endpoint", pos(&t.endpoint)),
        ("s3", "region", pos(&t.region)),
        ("s3", "bucket", pos(&t.bucket)),
        ("s3", "prefix", pos(&t.prefix)),
        ("s3", "path_style", t.path_style.map(|_| at)),
        ("s3", "access_key_id", pos(&t.access_key_id)),
        ("s3", "secret_access_key", pos(&t.secret_access_key)),
    ];
    for (for_kind, key, given) in kind_keys {
        if let Some(p) = given.filter(|_| kind != for_kind) {
            v.error::<()>(
                &format!("tier2.{key}"),
                p,
                format!("only for kind = \"{for_kind}\" (this is kind = \"{kind}\")"),
            );
        }
    }
    let backend = match kind {
        "none" => Backend::None,
        "fs" => Backend::Fs(t.path.as_ref().and_then(|p| v.path("tier2.path", p))),
        "s3" => s3(v, at, &t).map_or(Backend::None, Backend::S3),
        other => {
            let pos = t.kind.as_ref().map_or(at, |k| k.span().start);
            v.error::<()>(
                "tier2.kind",
                pos,
                format!("{other:?} is not a Tier-2 kind (expected \"fs\", \"s3\" or \"none\")"),
            );
            Backend::None
        }
    };
    let d = Tier2Settings::default();
    Tier2Settings {
        backend,
        flush_interval: Duration::from_secs(v.within(
            "tier2.flush_interval_secs",
            t.flush_interval_secs.as_ref(),
            1..=86_400,
            d.flush_interval.as_secs(),
        )),
        chunk_bytes: v.within(
            "tier2.chunk_mb",
            t.chunk_mb.as_ref(),
            1..=1024,
            d.chunk_bytes >> 20,
        ) << 20,
        max_backlog_bytes: v.within(
            "tier2.max_backlog_mb",
            t.max_backlog_mb.as_ref(),
            1..=MAX_BACKLOG_MB,
            d.max_backlog_bytes >> 20,
        ) << 20,
    }
}

fn s3(v: &mut Validator<'_>, at: usize, t: &RawTier2) -> Option<S3Settings> {
    let bucket = match &t.bucket {
        None => v.error(
            "tier2.bucket",
            at,
            "missing: kind = \"s3\" needs a bucket".into(),
        ),
        Some(b) if !valid_bucket(b.get_ref()) => v.error(
            "tier2.bucket",
            b.span().start,
            format!(
                "{:?} is not a bucket name (3-63 of a-z 0-9 . -, starting and ending with a \
                 letter or digit)",
                b.get_ref()
            ),
        ),
        Some(b) => Some(b.get_ref().clone()),
    };
    let endpoint = match &t.endpoint {
        Some(e) if !(e.get_ref().starts_with("http://") || e.get_ref().starts_with("https://")) => {
            v.error(
                "tier2.endpoint",
                e.span().start,
                format!("{:?} is not an http:// or https:// URL", e.get_ref()),
            )
        }
        Some(e) => Some(Some(e.get_ref().clone())),
        None => Some(None),
    };
    let region = match &t.region {
        Some(r) if r.get_ref().trim().is_empty() => {
            v.error("tier2.region", r.span().start, "must not be empty".into())
        }
        r => Some(r.as_ref().map(|r| r.get_ref().clone())),
    };
    let prefix = match &t.prefix {
        Some(p) if !valid_prefix(p.get_ref()) => v.error(
            "tier2.prefix",
            p.span().start,
            format!(
                "{:?} is not a prefix (A-Z a-z 0-9 . _ - /, no leading /, no empty part)",
                p.get_ref()
            ),
        ),
        Some(p) if !p.get_ref().is_empty() && !p.get_ref().ends_with('/') => {
            Some(format!("{}/", p.get_ref()))
        }
        p => Some(p.as_ref().map_or_else(String::new, |p| p.get_ref().clone())),
    };
    let credentials = match (&t.access_key_id, &t.secret_access_key) {
        (Some(id), Some(secret)) => Some(Some((id.get_ref().clone(), secret.get_ref().clone()))),
        (None, None) => Some(None),
        (Some(k), None) | (None, Some(k)) => v.error(
            "tier2.access_key_id",
            k.span().start,
            "access_key_id and secret_access_key go together (or leave both out for the \
             AWS environment, profile or instance role)"
                .into(),
        ),
    };
    Some(S3Settings {
        endpoint: endpoint?,
        region: region?,
        bucket: bucket?,
        prefix: prefix?,
        path_style: t.path_style.unwrap_or(false),
        credentials: credentials?,
    })
}

fn valid_bucket(b: &str) -> bool {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&b.len())
        && b.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && edge_ok(b.chars().next())
        && edge_ok(b.chars().last())
}

fn valid_prefix(p: &str) -> bool {
    let body = p.strip_suffix('/').unwrap_or(p);
    p.is_empty()
        || (!p.starts_with('/')
            && body.split('/').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> String {
        parse(text, Path::new("/etc/t"))
            .expect_err("invalid")
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn defaults_to_a_directory_under_the_data_dir() {
        let s = parse("", Path::new("/etc/t")).expect("valid");
        assert_eq!(s.tier2, Tier2Settings::default());
        assert_eq!(s.tier2.backend, Backend::Fs(None));
        assert_eq!(s.node.log.cache_bytes, default_cache_bytes(usable_memory()));
    }

    #[test]
    fn the_default_cache_is_at_most_an_eighth_of_memory() {
        const MIB: u64 = 1 << 20;
        let mb = |m: Option<u64>| default_cache_bytes(m.map(|m| m * MIB)) as u64 / MIB;
        assert_eq!(mb(None), 320);
        assert_eq!(mb(Some(64 << 10)), 320);
        assert_eq!(mb(Some(2048)), 256);
        assert_eq!(mb(Some(1024)), 128);
        assert_eq!(mb(Some(64)), 16, "at least 16 MiB");
        assert!(
            usable_memory().is_some_and(|m| m > 0),
            "this machine's memory"
        );
    }

    #[test]
    fn s3_settings_are_read_and_checked() {
        let s = parse(
            "[tier2]\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:3900\"\nbucket = \"tier2\"\n\
             prefix = \"node-1\"\npath_style = true\naccess_key_id = \"GK1\"\n\
             secret_access_key = \"s\"\nflush_interval_secs = 2\nchunk_mb = 4\nmax_backlog_mb = 64\n",
            Path::new("/etc/t"),
        )
        .expect("valid");
        let Backend::S3(s3) = &s.tier2.backend else {
            panic!("{:?}", s.tier2.backend)
        };
        assert_eq!(s3.prefix, "node-1/");
        assert_eq!(s3.credentials, Some(("GK1".into(), "s".into())));
        assert_eq!(s.tier2.chunk_bytes, 4 << 20);
        assert_eq!(s.node.log.max_tier2_backlog_bytes, 64 << 20);

        let e = errors("[tier2]\nkind = \"s3\"\nprefix = \"/abs\"\naccess_key_id = \"k\"\n");
        assert!(e.contains("tier2.bucket: missing"), "{e}");
        assert!(e.contains("line 3: tier2.prefix"), "{e}");
        assert!(e.contains("line 4: tier2.access_key_id"), "{e}");
        let e = errors("[tier2]\nkind = \"fs\"\nbucket = \"b\"\nchunk_mb = 0\n");
        assert!(
            e.contains("line 3: tier2.bucket: only for kind = \"s3\""),
            "{e}"
        );
        assert!(e.contains("line 4: tier2.chunk_mb"), "{e}");
        let e = errors("[tier2]\nkind = \"tape\"\n");
        assert!(e.contains("line 2: tier2.kind"), "{e}");
        let e = errors("[tier2]\nbucket_name = \"b\"\n");
        assert!(e.contains("tier2.bucket_name: unknown field"), "{e}");
        let e = errors("[tier2]\nkind = \"s3\"\nbucket = \"No_Such\"\n");
        assert!(e.contains("line 3: tier2.bucket"), "{e}");
    }
}

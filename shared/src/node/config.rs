//! Configuration files (TOML) of the nodes that serve segments — the cloud's standalone
//! node and the edge node share these sections; the edge adds its own. Every section and
//! key is optional; unknown keys are refused; every error names its key and line.
//! Command-line flags override the file, the file overrides the defaults. Relative paths
//! in a file are relative to the file's directory.
//!
//! ```toml
//! data_dir = "/var/lib/tributary"
//! [quic]
//! listen = "127.0.0.1:9190"
//! [http]
//! listen = "127.0.0.1:9191"
//! [tls]            # all of ca, cert, key, or no [tls] for the development PKI
//! ca = "ca.pem"
//! cert = "server.pem"
//! key = "server.key"
//! server_name = "localhost"
//! revoked = "revoked.txt"   # revoked client certificates' serials (SIGHUP rereads)
//! [log]
//! max_file_bytes = 67108864
//! max_batch_mb = 4
//! commit_delay_us = 0
//! cache_mb = 64
//! reserve_mb = 32  # free space kept on the disk: below it appends wait (disk full)
//! [policies]       # automatic scaling and retention
//! tick_secs = 10
//! scale_window_secs = 120
//! [[grant]]        # who may do what, by client certificate common name (see
//! identity = "ops" # `service::access`); with a [tls] identity, what is not granted is
//! admin = true     # refused; without [tls], every client the dev CA signed may do all
//! [[grant]]
//! identity = "gateway-*"
//! streams = ["factory-3/*-{identity}"]
//! allow = ["mirror"]
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::Spanned;

use crate::controller::PolicySettings;
use crate::log::LogConfig;
use crate::profile::line_of;
use crate::service::{Access, Grant, Verb};
use crate::stream::validate_scoped_name;

/// Default name clients expect in the server certificate.
pub const DEFAULT_SERVER_NAME: &str = "localhost";

const MAX_COMMIT_DELAY_US: u64 = 10_000_000;
const MIN_FILE_BYTES: u64 = 4096;
const MAX_CACHE_MB: u64 = 1 << 20;
const MAX_RESERVE_MB: u64 = 1 << 20;

/// The node's own TLS identity, from the `[tls]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA client certificates must be signed by.
    pub ca: PathBuf,
    /// The server certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The name clients connect with (in the server certificate).
    pub server_name: String,
    /// Revoked client certificates: a file of serial numbers (see
    /// [`crate::tls::Revoked`]), read at start and on SIGHUP.
    pub revoked: Option<PathBuf>,
}

impl TlsFiles {
    /// The node's own identity: its certificate and key, and the CA of its clients.
    pub fn identity(&self) -> crate::tls::Identity {
        crate::tls::Identity {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

/// What `check-config` prints of a file's certificates, after the file itself checked:
/// per (section, identity, serves?) the problems and warnings of
/// [`crate::tls::check_files`], each line starting with `file: section:`. True when
/// there is no problem.
pub fn report_identities(file: &Path, identities: &[(&str, crate::tls::Identity, bool)]) -> bool {
    let mut ok = true;
    for (section, id, server) in identities {
        let (problems, warnings) = crate::tls::check_files(id, *server);
        for p in &problems {
            eprintln!("{}: {section}: {p}", file.display());
        }
        for w in &warnings {
            eprintln!("{}: {section}: warning: {w}", file.display());
        }
        ok &= problems.is_empty();
    }
    ok
}

/// What the node sections of a file say, validated; `None` where they say nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeSettings {
    /// `data_dir`.
    pub data_dir: Option<PathBuf>,
    /// `[quic] listen`.
    pub quic_listen: Option<SocketAddr>,
    /// `[http] listen`.
    pub http_listen: Option<SocketAddr>,
    /// `[tls]`.
    pub tls: Option<TlsFiles>,
    /// `[log]`, over the defaults of [`LogConfig`].
    pub log: LogConfig,
    /// `[policies]`, over the defaults of [`PolicySettings`].
    pub policies: PolicySettings,
    /// `[[grant]]`.
    pub access: Access,
}

/// A node's complete configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Where everything is kept.
    pub data_dir: PathBuf,
    /// The segment service's QUIC address.
    pub quic_listen: SocketAddr,
    /// The health and metrics HTTP address.
    pub http_listen: SocketAddr,
    /// The node's TLS identity; `None`: the development PKI in `data_dir/tls`.
    pub tls: Option<TlsFiles>,
    /// The segment log's tuning.
    pub log: LogConfig,
    /// How often and over which window scaling and retention run.
    pub policies: PolicySettings,
    /// What each client identity may do.
    pub access: Access,
}

/// Command-line flags that override the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--listen`.
    pub quic_listen: Option<SocketAddr>,
    /// `--http`.
    pub http_listen: Option<SocketAddr>,
}

/// What a kind of node uses where neither flags nor file say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The QUIC address.
    pub quic_listen: SocketAddr,
    /// The HTTP address.
    pub http_listen: SocketAddr,
}

impl NodeConfig {
    /// Flags over the file over the defaults.
    pub fn new(file: NodeSettings, flags: Overrides, defaults: Defaults) -> NodeConfig {
        NodeConfig {
            data_dir: flags
                .data_dir
                .or(file.data_dir)
                .unwrap_or(defaults.data_dir),
            quic_listen: flags
                .quic_listen
                .or(file.quic_listen)
                .unwrap_or(defaults.quic_listen),
            http_listen: flags
                .http_listen
                .or(file.http_listen)
                .unwrap_or(defaults.http_listen),
            tls: file.tls,
            log: file.log,
            policies: file.policies,
            access: file.access,
        }
    }
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// The key, dotted (`quic.listen`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Every problem found in one file; displayed one line per problem, each starting with
/// `FILE:LINE:`.
#[derive(Debug)]
pub struct ConfigErrors {
    /// The file.
    pub path: PathBuf,
    /// The problems (at least one).
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:", self.path.display())?;
            if let Some(l) = e.line {
                write!(f, "{l}:")?;
            }
            write!(f, " {}: {}", e.key, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads the file at `path` and hands its text and directory to `parse`.
pub fn load<T>(
    path: &Path,
    parse: impl FnOnce(&str, &Path) -> Result<T, Vec<ConfigError>>,
) -> Result<T, ConfigErrors> {
    let errs = |errors| ConfigErrors {
        path: path.to_path_buf(),
        errors,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        errs(vec![ConfigError {
            line: None,
            key: "(file)".into(),
            message: e.to_string(),
        }])
    })?;
    parse(&text, path.parent().unwrap_or(Path::new(""))).map_err(errs)
}

/// Parses a file of only the node sections (the cloud's standalone node); relative
/// paths are joined to `base`.
pub fn parse(text: &str, base: &Path) -> Result<NodeSettings, Vec<ConfigError>> {
    let (raw, unknown): (RawNode, _) = from_toml(text)?;
    let mut v = Validator::new(text, base);
    v.extend(unknown);
    let settings = v.node(raw, LogConfig::default());
    v.finish(settings)
}

/// Unknown keys reported from one file at most (each costs a parse).
const MAX_UNKNOWN_KEYS: usize = 50;

/// Deserializes TOML, a syntax or type error named by its key and line. Unknown keys
/// do not stop it: each is reported and the rest of the file read on, so the value
/// comes back with every unknown key (for the validator to add its own problems to);
/// any other error ends it, with the unknown keys found before.
pub fn from_toml<T: DeserializeOwned>(
    text: &str,
) -> Result<(T, Vec<ConfigError>), Vec<ConfigError>> {
    let mut text = text.to_string();
    let mut unknown = Vec::new();
    loop {
        let e = match toml::from_str(&text) {
            Ok(v) => return Ok((v, unknown)),
            Err(e) => e,
        };
        let at = e.span().map(|s| s.start);
        unknown.push(ConfigError {
            line: at.map(|a| line_of(&text, a)),
            key: at.map_or_else(|| "(file)".into(), |a| key_at(&text, a)),
            message: e.message().trim().to_string(),
        });
        // An unknown `key = value` line is read past by blanking it (same length, so
        // offsets and lines stay); an unknown section is not (its keys would move).
        let line = at.and_then(|a| line_span(&text, a));
        match line {
            Some((start, end))
                if e.message().contains("unknown field")
                    && !text[start..end].trim_start().starts_with('[')
                    && unknown.len() < MAX_UNKNOWN_KEYS =>
            {
                let blank = " ".repeat(end - start);
                text.replace_range(start..end, &blank);
            }
            _ => {
                unknown.sort_by_key(|e| e.line);
                return Err(unknown);
            }
        }
    }
}

/// The byte range of the line holding byte `offset` (without its newline).
fn line_span(text: &str, offset: usize) -> Option<(usize, usize)> {
    let offset = offset.min(text.len());
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    Some((start, end))
}

/// The node sections as written. A file with more sections declares these fields
/// itself (serde cannot flatten with `deny_unknown_fields`) and hands them over.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    /// `data_dir`.
    pub data_dir: Option<Spanned<PathBuf>>,
    /// `[quic]`.
    pub quic: Option<RawListen>,
    /// `[http]`.
    pub http: Option<RawListen>,
    /// `[tls]`.
    pub tls: Option<Spanned<RawTls>>,
    /// `[log]`.
    pub log: Option<RawLog>,
    /// `[policies]`.
    pub policies: Option<RawPolicies>,
    /// `[[grant]]`.
    pub grant: Option<Vec<Spanned<RawGrant>>>,
}

/// `[[grant]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrant {
    identity: Option<Spanned<String>>,
    admin: Option<bool>,
    streams: Option<Vec<Spanned<String>>>,
    allow: Option<Vec<Spanned<String>>>,
}

/// `[policies]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicies {
    tick_secs: Option<Spanned<u64>>,
    scale_window_secs: Option<Spanned<u64>>,
}

/// `[quic]` or `[http]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    listen: Option<Spanned<String>>,
}

/// `[tls]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    ca: Option<Spanned<PathBuf>>,
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
    server_name: Option<Spanned<String>>,
    revoked: Option<Spanned<PathBuf>>,
}

/// `[log]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    max_file_bytes: Option<Spanned<u64>>,
    max_batch_mb: Option<Spanned<u64>>,
    commit_delay_us: Option<Spanned<u64>>,
    cache_mb: Option<Spanned<u64>>,
    reserve_mb: Option<Spanned<u64>>,
}

/// Checks raw values, collecting every problem with its key and line.
#[derive(Debug)]
pub struct Validator<'a> {
    text: &'a str,
    base: &'a Path,
    errors: Vec<ConfigError>,
}

impl<'a> Validator<'a> {
    /// A validator of `text`, relative paths joined to `base`.
    pub fn new(text: &'a str, base: &'a Path) -> Self {
        Validator {
            text,
            base,
            errors: Vec::new(),
        }
    }

    /// Adds problems found before validation (unknown keys).
    pub fn extend(&mut self, errors: Vec<ConfigError>) {
        self.errors.extend(errors);
    }

    /// `value` if no problem was found, else every problem (in the file's order).
    pub fn finish<T>(mut self, value: T) -> Result<T, Vec<ConfigError>> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            self.errors.sort_by_key(|e| e.line);
            Err(self.errors)
        }
    }

    /// The node sections; `log` holds what `[log]` leaves unsaid (the edge keeps less
    /// in memory than the cloud).
    pub fn node(&mut self, raw: RawNode, log: LogConfig) -> NodeSettings {
        let data_dir = raw.data_dir.as_ref().and_then(|d| self.path("data_dir", d));
        let quic_listen = raw
            .quic
            .and_then(|q| q.listen)
            .and_then(|a| self.addr("quic.listen", &a));
        let http_listen = raw
            .http
            .and_then(|h| h.listen)
            .and_then(|a| self.addr("http.listen", &a));
        let own_tls = raw.tls.is_some();
        let tls = raw.tls.and_then(|t| self.tls(t));
        let log = self.log(raw.log.unwrap_or_default(), log);
        let policies = self.policies(raw.policies.unwrap_or_default());
        // Least privilege: a node with an identity of its own, for remote clients,
        // refuses what is not granted. Only the development PKI, whose CA signs for
        // this machine's user alone, lets every client it signed do everything.
        let access = match raw.grant {
            Some(grants) => self.grants(grants),
            None if own_tls => Access::granted(Vec::new()),
            None => Access::open(),
        };
        NodeSettings {
            data_dir,
            quic_listen,
            http_listen,
            tls,
            log,
            policies,
            access,
        }
    }

    fn grants(&mut self, raw: Vec<Spanned<RawGrant>>) -> Access {
        let mut grants = Vec::new();
        for (i, g) in raw.into_iter().enumerate() {
            let at = g.span().start;
            let g = g.into_inner();
            let key = |k: &str| format!("grant[{i}].{k}");
            let Some(identity) = g.identity else {
                self.error::<()>(
                    &key("identity"),
                    at,
                    "missing: the client certificate's common name (or a pattern: \"gateway-*\")"
                        .into(),
                );
                continue;
            };
            if identity.get_ref().trim().is_empty() {
                self.error::<()>(
                    &key("identity"),
                    identity.span().start,
                    "must not be empty".into(),
                );
                continue;
            }
            let mut streams = Vec::new();
            for (j, p) in g.streams.unwrap_or_default().into_iter().enumerate() {
                // `*` and `{identity}` stand for name characters.
                let plain = p.get_ref().replace("{identity}", "x").replace('*', "x");
                let ok = plain.split_once('/').is_some_and(|(scope, stream)| {
                    validate_scoped_name(scope).is_ok() && validate_scoped_name(stream).is_ok()
                });
                if ok {
                    streams.push(p.into_inner());
                } else {
                    self.error::<()>(
                        &format!("grant[{i}].streams[{j}]"),
                        p.span().start,
                        format!(
                            "{:?} is not SCOPE/STREAM (either may hold * and {{identity}})",
                            p.get_ref()
                        ),
                    );
                }
            }
            let mut allow = Vec::new();
            for (j, v) in g.allow.iter().flatten().enumerate() {
                match Verb::parse(v.get_ref()) {
                    Some(verb) => allow.push(verb),
                    None => {
                        self.error::<()>(
                            &format!("grant[{i}].allow[{j}]"),
                            v.span().start,
                            format!(
                                "{:?} is not one of {}",
                                v.get_ref(),
                                Verb::ALL.map(Verb::name).join(", ")
                            ),
                        );
                    }
                }
            }
            let admin = g.admin.unwrap_or(false);
            if !admin && (streams.is_empty() || g.allow.is_none()) {
                self.error::<()>(
                    &key(if streams.is_empty() {
                        "streams"
                    } else {
                        "allow"
                    }),
                    at,
                    "a grant says what it allows on which streams: streams = [\"SCOPE/STREAM\"] \
                     and allow = [\"create\", \"write\", \"mirror\", \"read\"] (any of them), \
                     or admin = true"
                        .into(),
                );
            }
            grants.push(Grant {
                identity: identity.into_inner(),
                admin,
                streams,
                allow,
            });
        }
        Access::granted(grants)
    }

    /// Records a problem at byte `at`; returns `None` for the caller's convenience.
    pub fn error<T>(&mut self, key: &str, at: usize, message: String) -> Option<T> {
        self.errors.push(ConfigError {
            line: Some(line_of(self.text, at)),
            key: key.into(),
            message,
        });
        None
    }

    /// `s` if given and within `range`, else `default`; an error at `key` if given
    /// and outside.
    pub fn within<T>(
        &mut self,
        key: &str,
        s: Option<&Spanned<T>>,
        range: std::ops::RangeInclusive<T>,
        default: T,
    ) -> T
    where
        T: PartialOrd + Copy + std::fmt::Display,
    {
        match s {
            None => default,
            Some(n) if range.contains(n.get_ref()) => *n.get_ref(),
            Some(n) => {
                self.error::<()>(
                    key,
                    n.span().start,
                    format!("must be between {} and {}", range.start(), range.end()),
                );
                default
            }
        }
    }

    /// A path, joined to the file's directory if relative.
    pub fn path(&mut self, key: &str, p: &Spanned<PathBuf>) -> Option<PathBuf> {
        if p.get_ref().as_os_str().is_empty() {
            return self.error(key, p.span().start, "must not be empty".into());
        }
        Some(self.base.join(p.get_ref()))
    }

    /// A socket address.
    pub fn addr(&mut self, key: &str, a: &Spanned<String>) -> Option<SocketAddr> {
        match a.get_ref().parse() {
            Ok(addr) => Some(addr),
            Err(_) => self.error(
                key,
                a.span().start,
                format!(
                    "{:?} is not an address (expected IP:PORT, e.g. \"127.0.0.1:9190\")",
                    a.get_ref()
                ),
            ),
        }
    }

    fn tls(&mut self, t: Spanned<RawTls>) -> Option<TlsFiles> {
        let at = t.span().start;
        let t = t.into_inner();
        let ca = t.ca.as_ref().and_then(|p| self.path("tls.ca", p));
        let cert = t.cert.as_ref().and_then(|p| self.path("tls.cert", p));
        let key = t.key.as_ref().and_then(|p| self.path("tls.key", p));
        let server_name = match &t.server_name {
            Some(n) if n.get_ref().trim().is_empty() => self.error(
                "tls.server_name",
                n.span().start,
                "must not be empty".into(),
            ),
            Some(n) => Some(n.get_ref().clone()),
            None => Some(DEFAULT_SERVER_NAME.to_string()),
        };
        for (name, given) in [("ca", &t.ca), ("cert", &t.cert), ("key", &t.key)] {
            if given.is_none() {
                self.error::<()>(
                    &format!("tls.{name}"),
                    at,
                    "missing: [tls] needs ca, cert and key together \
                     (leave out [tls] for the development PKI)"
                        .into(),
                );
            }
        }
        let revoked = t.revoked.as_ref().and_then(|p| self.path("tls.revoked", p));
        Some(TlsFiles {
            ca: ca?,
            cert: cert?,
            key: key?,
            server_name: server_name?,
            revoked,
        })
    }

    fn log(&mut self, l: RawLog, defaults: LogConfig) -> LogConfig {
        let mut c = defaults;
        if let Some(v) = l.max_file_bytes {
            if *v.get_ref() < MIN_FILE_BYTES {
                self.error::<()>(
                    "log.max_file_bytes",
                    v.span().start,
                    format!("must be at least {MIN_FILE_BYTES}"),
                );
            }
            c.max_file_bytes = *v.get_ref();
        }
        let batch_mb = c.max_batch_bytes as u64 >> 20;
        c.max_batch_bytes = (self.within(
            "log.max_batch_mb",
            l.max_batch_mb.as_ref(),
            1..=1024,
            batch_mb,
        ) << 20) as usize;
        if let Some(v) = l.commit_delay_us {
            if *v.get_ref() > MAX_COMMIT_DELAY_US {
                self.error::<()>(
                    "log.commit_delay_us",
                    v.span().start,
                    format!("must be at most {MAX_COMMIT_DELAY_US} (10 s)"),
                );
            }
            c.commit_delay = Duration::from_micros(*v.get_ref());
        }
        if let Some(v) = l.cache_mb {
            let mb = *v.get_ref();
            // The bytes must fit a usize too (32-bit gateways).
            match usize::try_from(mb << 20) {
                Ok(bytes) if (1..=MAX_CACHE_MB).contains(&mb) => c.cache_bytes = bytes,
                _ => {
                    self.error::<()>(
                        "log.cache_mb",
                        v.span().start,
                        format!("must be between 1 and {MAX_CACHE_MB}"),
                    );
                }
            }
        }
        if let Some(v) = l.reserve_mb {
            let mb = *v.get_ref();
            if mb > MAX_RESERVE_MB {
                self.error::<()>(
                    "log.reserve_mb",
                    v.span().start,
                    format!("must be at most {MAX_RESERVE_MB}"),
                );
            } else {
                c.reserve_bytes = mb << 20;
            }
        }
        c
    }

    fn policies(&mut self, p: RawPolicies) -> PolicySettings {
        let mut s = PolicySettings::default();
        for (key, v, out) in [
            ("policies.tick_secs", p.tick_secs, &mut s.tick),
            (
                "policies.scale_window_secs",
                p.scale_window_secs,
                &mut s.scale_window,
            ),
        ] {
            *out = Duration::from_secs(self.within(key, v.as_ref(), 1..=86_400, out.as_secs()));
        }
        s
    }
}

/// The dotted key on the line holding byte `offset`, for parse errors, which toml
/// reports with a span but not the key: the nearest `[section]` header above, and the
/// `key =` of the line itself.
fn key_at(text: &str, offset: usize) -> String {
    let line_no = line_of(text, offset);
    // Elements of arrays of tables seen so far, per path (`mqtt`, `mqtt[0].route`).
    let mut arrays: std::collections::HashMap<String, usize> = Default::default();
    // `[a.b]` or `[[a.b]]` as a path, each array named with its element's index:
    // `mqtt[1].route[0]`.
    let mut header = |l: &str| {
        let l = l.trim();
        if !l.starts_with('[') {
            return None;
        }
        let array = l.starts_with("[[");
        let name = l.trim_start_matches('[').split(']').next().unwrap_or("");
        let parts: Vec<&str> = name.split('.').map(str::trim).collect();
        let mut path = String::new();
        for (i, p) in parts.iter().enumerate() {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(p);
            let last = i + 1 == parts.len();
            if array && last {
                let n = arrays.entry(path.clone()).or_insert(0);
                *n += 1;
                path.push_str(&format!("[{}]", *n - 1));
            } else if let Some(n) = arrays.get(&path) {
                path.push_str(&format!("[{}]", n - 1));
            }
        }
        Some(path)
    };
    let mut section = None;
    let mut key = None;
    for (i, l) in text.lines().enumerate().take(line_no) {
        if let Some(h) = header(l) {
            section = Some(h);
            key = None;
        } else if i + 1 == line_no {
            key = l
                .split_once('=')
                .map(|(k, _)| k.trim().trim_matches(['"', '\'']).to_string());
        }
    }
    match (section, key) {
        (Some(s), Some(k)) => format!("{s}.{k}"),
        (None, Some(k)) => k,
        (Some(s), None) => s,
        (None, None) => "(file)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            data_dir: "/default".into(),
            quic_listen: "127.0.0.1:7".parse().expect("addr"),
            http_listen: "127.0.0.1:8".parse().expect("addr"),
        }
    }

    fn errors(text: &str) -> Vec<String> {
        parse(text, Path::new("/etc/t"))
            .expect_err("accepted")
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn empty_file_means_defaults_and_flags_win() {
        let s = parse("", Path::new("/etc/t")).expect("empty");
        assert_eq!(s, NodeSettings::default());
        let file = parse(
            "data_dir = \"d\"\n[quic]\nlisten = \"127.0.0.1:1\"\n[http]\nlisten = \"127.0.0.1:2\"\n",
            Path::new("/etc/t"),
        )
        .expect("file");
        let c = NodeConfig::new(file.clone(), Overrides::default(), defaults());
        assert_eq!(c.data_dir, PathBuf::from("/etc/t/d"));
        assert_eq!(c.quic_listen, "127.0.0.1:1".parse().expect("addr"));
        assert_eq!(c.http_listen, "127.0.0.1:2".parse().expect("addr"));
        let c = NodeConfig::new(
            file,
            Overrides {
                data_dir: Some("/x".into()),
                quic_listen: Some("127.0.0.1:3".parse().expect("addr")),
                http_listen: None,
            },
            defaults(),
        );
        assert_eq!(c.data_dir, PathBuf::from("/x"));
        assert_eq!(c.quic_listen, "127.0.0.1:3".parse().expect("addr"));
        assert_eq!(c.http_listen, "127.0.0.1:2".parse().expect("addr"));
    }

    #[test]
    fn full_file_is_mapped() {
        let s = parse(
            "[tls]\nca = \"/p/ca.pem\"\ncert = \"s.pem\"\nkey = \"s.key\"\nrevoked = \"r.txt\"\n\
             [log]\nmax_file_bytes = 8192\ncommit_delay_us = 500\ncache_mb = 2\n",
            Path::new("/etc/t"),
        )
        .expect("file");
        assert_eq!(
            s.tls,
            Some(TlsFiles {
                ca: "/p/ca.pem".into(),
                cert: "/etc/t/s.pem".into(),
                key: "/etc/t/s.key".into(),
                server_name: "localhost".into(),
                revoked: Some("/etc/t/r.txt".into()),
            })
        );
        assert_eq!(s.log.max_file_bytes, 8192);
        assert_eq!(s.log.commit_delay, Duration::from_micros(500));
        assert_eq!(s.log.cache_bytes, 2 << 20);
        s.log.validate().expect("valid log config");
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        assert_eq!(
            errors("[quic]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n").len(),
            1
        );
        let e = &errors("[quic]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n")[0];
        assert!(
            e.starts_with("line 3: quic.listen_port: unknown field"),
            "{e}"
        );
        let e = &errors("\n[quick]\nlisten = \"x\"\n")[0];
        assert!(e.starts_with("line 2: quick: unknown field"), "{e}");
        let e = &errors("colour = 1\n")[0];
        assert!(e.starts_with("line 1: colour: unknown field"), "{e}");
    }

    #[test]
    fn type_and_syntax_errors_name_the_key() {
        let e = &errors("[log]\n\ncache_mb = \"big\"\n")[0];
        assert!(e.starts_with("line 3: log.cache_mb: "), "{e}");
        let e = &errors("[http]\nlisten = 127.0.0.1:9\n")[0];
        assert!(e.starts_with("line 2: http.listen: "), "{e}");
        let e = &errors("[log]\nmax_file_bytes = -1\n")[0];
        assert!(e.starts_with("line 2: log.max_file_bytes: "), "{e}");
    }

    #[test]
    fn every_validation_error_is_reported() {
        let e = errors(
            "data_dir = \"\"\n[quic]\nlisten = \"localhost\"\n[http]\nlisten = \"1.2.3.4\"\n\
             [tls]\ncert = \"c.pem\"\n[log]\nmax_file_bytes = 0\ncommit_delay_us = 20000000\n\
             cache_mb = 0\n",
        );
        let want = [
            "line 1: data_dir: must not be empty",
            "line 3: quic.listen: \"localhost\" is not an address",
            "line 5: http.listen: \"1.2.3.4\" is not an address",
            "line 6: tls.ca: missing",
            "line 6: tls.key: missing",
            "line 9: log.max_file_bytes: must be at least 4096",
            "line 10: log.commit_delay_us: must be at most",
            "line 11: log.cache_mb: must be between 1 and",
        ];
        assert_eq!(e.len(), want.len(), "{e:#?}");
        for (got, want) in e.iter().zip(want) {
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
    }

    #[test]
    fn errors_display_one_line_each_with_the_file() {
        let e = |line, key: &str| ConfigError {
            line,
            key: key.into(),
            message: "bad".into(),
        };
        let errs = ConfigErrors {
            path: "/etc/t/c.toml".into(),
            errors: vec![e(Some(2), "quic.listen"), e(None, "(file)")],
        };
        assert_eq!(
            errs.to_string(),
            "/etc/t/c.toml:2: quic.listen: bad\n/etc/t/c.toml: (file): bad"
        );
    }
}

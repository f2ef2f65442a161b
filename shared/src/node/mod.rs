//! A node that serves segments: the cloud's standalone node and the edge node are both
//! one of these, with their own work around it. Everything lives under one data
//! directory:
//!
//! ```text
//! DATA_DIR/log/                  the segment log (its sled metadata store also holds
//!                                the controller's scopes, streams and reader groups)
//! DATA_DIR/tier2/                the cloud's default Tier-2 (a directory)
//! DATA_DIR/tls/                  the development PKI (without [tls] in the config)
//! DATA_DIR/client/profile.toml   how local clients reach the node (development PKI)
//! ```
//!
//! [`Node::start`] opens the log and the controller, starts the policies and the
//! segment service over QUIC; [`Node::serve_http`] adds health, metrics and status
//! over HTTP; [`Node::shutdown`] stops it all in order.

pub mod config;
pub mod http;
pub mod systemd;
pub mod tiering;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::controller::Controller;
use crate::log::{RestoreReport, SegmentLog};
use crate::profile::ClientProfile;
use crate::service::{Policy, SegmentServer, ServiceMetrics};
use crate::tls::{server_config, DevPki, Identity, Revoked};

use self::config::{NodeConfig, DEFAULT_SERVER_NAME};
use self::http::{HealthCheck, HttpServer, MetricsFn, StatusFn};
use self::tiering::{TierMetrics, Tiering};

/// Common name of the development PKI's client certificate.
const DEV_CLIENT_NAME: &str = "tributary-client";
/// How long shutdown waits for requests still using the segment log.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Why a node could not start or stop cleanly: what it was doing, and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{doing}: {source}")]
pub struct NodeError {
    doing: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

fn context<T, E>(r: Result<T, E>, doing: impl FnOnce() -> String) -> Result<T, NodeError>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    r.map_err(|e| NodeError {
        doing: doing(),
        source: e.into(),
    })
}

/// Logs of a node's process: to standard error, at `info` unless `RUST_LOG` says
/// otherwise, in colour only on a terminal. Under systemd (`JOURNAL_STREAM` set)
/// lines carry no timestamp of their own: journald stamps each.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        fmt.without_time().init();
    } else {
        fmt.init();
    }
}

impl Node {
    /// The segment service's counters and the lags edges report.
    pub fn service_metrics(&self) -> Arc<ServiceMetrics> {
        self.server.metrics()
    }

    /// Whether the node is healthy: its segment log open and taking writes. The HTTP
    /// `/health` and the systemd watchdog ask this.
    pub fn health(&self) -> HealthCheck {
        health_check(Arc::downgrade(&self.log))
    }
}

/// A running node.
pub struct Node {
    data_dir: PathBuf,
    log: Arc<SegmentLog>,
    controller: Arc<Controller>,
    server: SegmentServer,
    quic_addr: SocketAddr,
    server_name: String,
    profile_path: Option<PathBuf>,
    policies: tokio::task::JoinHandle<()>,
    tiering: Option<(tokio::task::JoinHandle<()>, Arc<TierMetrics>)>,
    restored: Option<RestoreReport>,
    http: Option<HttpServer>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("data_dir", &self.data_dir)
            .field("quic_addr", &self.quic_addr)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Opens the log and the controller under `cfg.data_dir` (created if needed),
    /// starts the policies and the segment service on `cfg.quic_listen`. Without
    /// `cfg.tls` it makes (or reuses) the development PKI and writes the client profile.
    /// With `tiering`, data moves to Tier-2 in the background, and a node whose log
    /// directory is empty first restores what Tier-2 holds (see
    /// [`SegmentLog::restore_from_tier2`]).
    pub async fn start(cfg: &NodeConfig, tiering: Option<Tiering>) -> Result<Node, NodeError> {
        context(std::fs::create_dir_all(&cfg.data_dir), || {
            format!("creating the data directory {}", cfg.data_dir.display())
        })?;
        // Absolute, so the client profile's paths hold from any working directory.
        let data = context(std::fs::canonicalize(&cfg.data_dir), || {
            format!("the data directory {}", cfg.data_dir.display())
        })?;
        let log_dir = data.join("log");
        let opening = || {
            format!(
                "opening the segment log in {} (if a frame is damaged, the node's `repair` \
                 command says what cutting the log there drops, and with --yes does it)",
                log_dir.display()
            )
        };
        let mut log_config = cfg.log.clone();
        if let Some(ledger) = std::env::var_os(DURABLE_LEDGER_ENV) {
            // Power-loss tests only: see `log::faults::Faults::ledger`.
            let seam = context(crate::log::faults::Faults::ledger(ledger.as_ref()), || {
                format!("{DURABLE_LEDGER_ENV}: opening the ledger")
            })?;
            log_config.faults = Some(crate::log::faults::FaultSeam(seam));
        }
        let mut restored = None;
        let log = match &tiering {
            Some(t) => {
                restored = context(
                    SegmentLog::restore_from_tier2(&log_dir, t.backend.as_ref()).await,
                    || format!("restoring {} from Tier-2", log_dir.display()),
                )?;
                if let Some(report) = &restored {
                    tracing::warn!("{report}");
                }
                context(
                    SegmentLog::open_tiered(&log_dir, log_config, t.backend.clone()),
                    opening,
                )?
            }
            None => context(SegmentLog::open(&log_dir, log_config), opening)?,
        };
        let log = Arc::new(log);
        let controller = Arc::new(context(Controller::open(log.clone()).await, || {
            "opening the controller".into()
        })?);

        let (identity, dev_pki, server_name) = match &cfg.tls {
            Some(t) => (
                Identity {
                    ca: t.ca.clone(),
                    cert: t.cert.clone(),
                    key: t.key.clone(),
                },
                None,
                t.server_name.clone(),
            ),
            None => {
                let pki = context(DevPki::ensure(&data.join("tls"), DEV_CLIENT_NAME), || {
                    "making the development PKI".into()
                })?;
                (
                    pki.server.clone(),
                    Some(pki),
                    DEFAULT_SERVER_NAME.to_string(),
                )
            }
        };
        let tls = context(server_config(&identity), || "server TLS".into())?;
        let policy = policy(cfg)?;
        let server = context(
            SegmentServer::start_with(cfg.quic_listen, tls, controller.clone(), policy),
            || format!("listening on {} (QUIC)", cfg.quic_listen),
        )?;
        let quic_addr = context(server.local_addr(), || "the QUIC address".into())?;

        let profile_path = match &dev_pki {
            Some(pki) => {
                let path = data.join("client").join("profile.toml");
                let profile = ClientProfile {
                    endpoint: reachable(quic_addr),
                    server_name: server_name.clone(),
                    ca: pki.client.ca.clone(),
                    cert: pki.client.cert.clone(),
                    key: pki.client.key.clone(),
                };
                context(profile.save(&path), || {
                    format!("writing the client profile {}", path.display())
                })?;
                Some(path)
            }
            None => None,
        };
        let policies = controller.clone().spawn_policies(cfg.policies);
        let tiering = tiering.map(|t| {
            let metrics = Arc::new(TierMetrics::default());
            if let Some(r) = &restored {
                metrics.restored(r);
            }
            (
                tiering::spawn(Arc::downgrade(&log), &t, metrics.clone()),
                metrics,
            )
        });
        Ok(Node {
            data_dir: data,
            log,
            controller,
            server,
            quic_addr,
            server_name,
            profile_path,
            policies,
            tiering,
            restored,
            http: None,
        })
    }

    /// Serves `/health`, `/metrics` (the node's own, then `extra_metrics`) and, if
    /// given, `/status` over HTTP on `addr`; returns the address.
    pub async fn serve_http(
        &mut self,
        addr: SocketAddr,
        extra_metrics: Option<MetricsFn>,
        status: Option<StatusFn>,
    ) -> Result<SocketAddr, NodeError> {
        let http = context(
            HttpServer::start(
                addr,
                health_check(Arc::downgrade(&self.log)),
                metrics(
                    Arc::downgrade(&self.log),
                    self.server.metrics(),
                    self.tiering.as_ref().map(|(_, m)| m.clone()),
                    extra_metrics,
                ),
                status,
            )
            .await,
            || format!("listening on {addr} (HTTP)"),
        )?;
        let addr = http.local_addr();
        self.http = Some(http);
        Ok(addr)
    }

    /// The data directory (absolute).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The segment log.
    pub fn log(&self) -> &Arc<SegmentLog> {
        &self.log
    }

    /// The controller.
    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }

    /// The QUIC address the segment service listens on.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The name clients expect in the server certificate.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// What the node restored from Tier-2 when it started, if it did.
    pub fn restored(&self) -> Option<&RestoreReport> {
        self.restored.as_ref()
    }

    /// The tiering task's counters (`None` without Tier-2).
    pub fn tier_metrics(&self) -> Option<&Arc<TierMetrics>> {
        self.tiering.as_ref().map(|(_, m)| m)
    }

    /// The client profile written for the development PKI (`None` with `[tls]`).
    pub fn profile_path(&self) -> Option<&Path> {
        self.profile_path.as_deref()
    }

    /// Takes what `cfg` says now of grants, revoked certificates and the node's own
    /// `[tls]` certificate (the SIGHUP of both nodes): requests are checked against the
    /// new grants from now on, connections of revoked certificates are closed, new
    /// connections get the new certificate, and the rest go on. Nothing changes if any
    /// of it cannot be read.
    pub fn reload(&self, cfg: &NodeConfig) -> Result<(), NodeError> {
        // Grants are open only on the development PKI: a reload cannot move a node
        // between it and a [tls] identity (the server's certificate stays as it is).
        if cfg.tls.is_some() == self.profile_path.is_some() {
            return context(
                Err::<(), _>("SIGHUP cannot add or remove [tls]; restart the node"),
                || "reloading".into(),
            );
        }
        let policy = policy(cfg)?;
        let revoked = policy.revoked.len();
        let tls = match &cfg.tls {
            Some(t) => {
                let id = Identity {
                    ca: t.ca.clone(),
                    cert: t.cert.clone(),
                    key: t.key.clone(),
                };
                Some(context(server_config(&id), || "server TLS".into())?)
            }
            None => None,
        };
        let closed = self.server.reload(policy, tls);
        tracing::info!(
            revoked,
            closed,
            "grants, revoked certificates and the TLS identity reloaded"
        );
        Ok(())
    }

    /// Stops in order: the segment service (draining, every connection closed), the
    /// HTTP server, the policies, the controller, and last the segment log, flushed and
    /// closed. Callers drop their own handles to the log and controller first.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        self.server.shutdown().await;
        if let Some(http) = self.http {
            http.shutdown().await;
        }
        self.policies.abort();
        let _ = self.policies.await;
        if let Some((task, _)) = self.tiering {
            task.abort();
            let _ = task.await;
        }
        drop(self.controller);
        close_log(self.log).await
    }
}

/// The node's `repair` command: if recovery refuses the node's log for a damaged
/// frame, what cutting it there drops, and with `apply` the cut (see
/// [`crate::log::repair`]). Empty: the log opens, nothing to repair.
pub fn repair_log(
    cfg: &NodeConfig,
    tier2: Option<Arc<dyn crate::log::Tier2>>,
    apply: bool,
) -> Result<Vec<crate::log::repair::Cut>, NodeError> {
    let dir = cfg.data_dir.join("log");
    context(
        crate::log::repair::repair(&dir, &cfg.log, tier2, apply),
        || format!("repairing the segment log in {}", dir.display()),
    )
}

/// What the `repair` command prints: `Ok` when there is nothing to repair or the cuts
/// were made, `Err` when damage was found and left as it is (no `--yes`).
pub fn repair_report(cuts: &[crate::log::repair::Cut], applied: bool) -> Result<String, String> {
    if cuts.is_empty() {
        return Ok("the log opens: nothing to repair".into());
    }
    let lines: Vec<String> = cuts.iter().map(ToString::to_string).collect();
    if applied {
        Ok(format!("{}\ncut: the log opens now", lines.join("\n")))
    } else {
        Err(format!(
            "{}\nnothing changed: run again with --yes to cut the log there",
            lines.join("\n")
        ))
    }
}

/// The grants and revoked certificates `cfg` names.
fn policy(cfg: &NodeConfig) -> Result<Policy, NodeError> {
    if cfg.access.refuses_all() {
        tracing::warn!(
            "no [[grant]] with a [tls] identity: every client is refused; add grants \
             (see config/cloud-standalone.toml)"
        );
    }
    let revoked = match cfg.tls.as_ref().and_then(|t| t.revoked.as_ref()) {
        Some(path) => context(Revoked::load(path), || {
            format!("the revocation list {}", path.display())
        })?,
        None => Revoked::default(),
    };
    Ok(Policy {
        access: cfg.access.clone(),
        revoked,
    })
}

/// Where a local client reaches an address we listen on (the wildcard is not).
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

fn health_check(log: Weak<SegmentLog>) -> HealthCheck {
    Arc::new(move || {
        let log = log.upgrade().ok_or("the segment log is closed")?;
        if let Some(reason) = log.failure() {
            return Err(format!("the segment log failed: {reason}"));
        }
        // Serving, and what the operator should know.
        let mut notes = Vec::new();
        if log.disk_full() {
            notes.push(DISK_FULL_NOTE.to_string());
        }
        notes.extend(log.damaged().iter().map(damage_note));
        Ok(notes)
    })
}

/// An error and its causes on one line (as `{:#}` prints them), each once: a cause
/// whose text the line holds already (an error that prints its source too) is left
/// out, where `{:#}` would say it twice.
pub fn error_line<'a>(
    chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut out = String::new();
    for e in chain {
        let text = e.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// For power-loss tests of a whole node: a file to which the log appends each log file's
/// durable length as it grows (see [`crate::log::faults::Faults::ledger`]). Never set in
/// production.
pub const DURABLE_LEDGER_ENV: &str = "TRIBUTARY_TEST_DURABLE_LEDGER";

/// What `/health` and `status` say of a full disk.
pub const DISK_FULL_NOTE: &str = "disk full: appends wait until there is room on the log's \
     disk (free space, or truncate a stream); reads go on";

/// One damaged range for `/health` and `status`: what, and what the operator can do.
pub fn damage_note(d: &crate::log::repair::Damage) -> String {
    format!(
        "damaged: bytes {}..{} of segment {} cannot be read ({}); every other byte and \
         segment is served. Readers stop there: read on with a stream cut past it, or \
         truncate the stream past it to drop it for good",
        d.from, d.to, d.segment, d.reason
    )
}

fn metrics(
    log: Weak<SegmentLog>,
    service: Arc<ServiceMetrics>,
    tier: Option<Arc<TierMetrics>>,
    extra: Option<MetricsFn>,
) -> MetricsFn {
    Arc::new(move || {
        let mut out = String::from(
            "# HELP tributary_up Whether the node is serving.\n\
             # TYPE tributary_up gauge\n\
             tributary_up 1\n",
        );
        out.push_str(&service.render());
        if let Some(log) = log.upgrade() {
            out.push_str(&format!(
                "# HELP tributary_segments Segments in the segment log.\n\
                 # TYPE tributary_segments gauge\n\
                 tributary_segments {}\n",
                log.list().len()
            ));
            out.push_str(&format!(
                "# HELP tributary_log_disk_full Whether appends are refused for want of \
                 space on the log's disk (below its reserve).\n\
                 # TYPE tributary_log_disk_full gauge\n\
                 tributary_log_disk_full {}\n",
                u8::from(log.disk_full())
            ));
            out.push_str(&format!(
                "# HELP tributary_log_damaged_ranges Byte ranges of segments reads could not \
                 serve since the start (damaged frames or chunks; at most 64).\n\
                 # TYPE tributary_log_damaged_ranges gauge\n\
                 tributary_log_damaged_ranges {}\n",
                log.damaged().len()
            ));
            log.fsync_histogram().render(&mut out);
            if let Some(tier) = &tier {
                out.push_str(&tier.render(&log));
            }
        }
        if let Some(extra) = &extra {
            out.push_str(&extra());
        }
        out
    })
}

/// Closes the segment log once nothing else uses it (requests still finishing may hold
/// it for a moment). If some still do after [`CLOSE_WAIT`], it is left to close when
/// the last one ends: everything acknowledged is durable either way.
async fn close_log(mut log: Arc<SegmentLog>) -> Result<(), NodeError> {
    let deadline = Instant::now() + CLOSE_WAIT;
    loop {
        match Arc::try_unwrap(log) {
            Ok(log) => {
                let closed = tokio::task::spawn_blocking(move || log.close()).await;
                let closed = context(closed, || "closing the segment log".into())?;
                return context(closed, || "closing the segment log".into());
            }
            Err(shared) if Instant::now() < deadline => {
                log = shared;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(shared) => {
                tracing::warn!(
                    users = Arc::strong_count(&shared) - 1,
                    "the segment log is still in use; it closes when the last request ends"
                );
                return Ok(());
            }
        }
    }
}

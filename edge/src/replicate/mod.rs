//! Exactly-once replication of local streams to cloud streams (mirror mode).
//!
//! One QUIC connection (mutual TLS, the edge's certificate) carries every replicated
//! stream. Per stream, the replicator asks the cloud to make the target stream a
//! mirror of the local one (`MirrorStream`), then copies each segment's bytes in a
//! mirror session of its own (a QUIC stream with the stream's priority). Every frame
//! is a conditional append at its offset, so a resend after a reconnect or a crash of
//! either side is acknowledged without being stored twice, and the session's setup
//! reply (the cloud segment's length) says where to resume: there is no dedup window,
//! only offsets. When a local segment is sealed by a scale and fully copied, the scale
//! is replayed in the cloud (same segment numbers), and its successors are copied.
//!
//! Acknowledged offsets are kept in the node's metadata store (tree
//! `edge-replicated`), so the disk budget knows what is safe to drop even while the
//! cloud is unreachable. Lag (bytes and the age of the oldest unreplicated byte) is
//! sampled every second, shown in `status` and metrics, and reported to the cloud.
//! While the cloud is unreachable data stays in the local streams (their disk budget
//! applies) and replication resumes with capped exponential backoff and jitter.
//!
//! Data the edge gives up before the cloud has it (the disk budget with
//! `drop_unreplicated`, a user's truncate, a repair) is never skipped silently: the
//! copier finds the cloud's copy ending before the local segment's start and sends a
//! **gap record** for that range ([`tributary::event::Gap`]: with the events counted
//! and the reason, where the edge recorded its drop in tree `edge-dropped`); the cloud
//! stores it in the stream, readers receive it, both sides count it, and the copy goes
//! on after it.

pub mod config;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tributary::event::Gap;
use tributary::log::{LogError, SegmentLog};
use tributary::service::Client;
use tributary::stream::{segment_name, SegmentId, SourceStream};
use tributary::wire::ReplicationLag;

use self::config::{CloudSpec, ReplicateSpec};
use crate::local::LocalStream;

/// Bytes per mirror frame (at most; a read returns what the segment has).
const FRAME_BYTES: usize = 1 << 20;
/// How long a copier waits at a segment's tail before checking again.
const TAIL_WAIT: Duration = Duration::from_secs(1);
/// Retry delays after a failure: from this, doubling, up to the maximum.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// How often the `[cloud]` certificate and key files are checked for a change while
/// connected (a rotated certificate is taken by reconnecting).
const CERT_CHECK_EVERY: Duration = Duration::from_secs(2);
/// How often lag is sampled, and reported to the cloud.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
const REPORT_EVERY: Duration = Duration::from_secs(2);

/// One replicated stream's progress, shared by the replicator, the disk budget and
/// `status`.
#[derive(Debug)]
pub struct Replica {
    spec: ReplicateSpec,
    /// The local stream's name.
    name: String,
    /// Acknowledged offsets, persisted.
    tree: sled::Tree,
    /// What the edge dropped before the cloud had it, until a gap record says so:
    /// key segment name, NUL, first offset (u64 BE); value a [`Dropped`] in JSON.
    dropped: sled::Tree,
    /// Per local segment: the offset below which the cloud holds every byte durably.
    acked: Mutex<HashMap<String, u64>>,
    /// Local segments a copier is sending frames of now.
    sending: Mutex<std::collections::HashSet<String>>,
    /// Per local segment: (length, when first seen) samples not yet acknowledged.
    samples: Mutex<HashMap<String, VecDeque<(u64, Instant)>>>,
    connected: AtomicBool,
    replicated_bytes: AtomicU64,
    duplicate_frames: AtomicU64,
    gaps: AtomicU64,
    gap_bytes: AtomicU64,
    lag_bytes: AtomicU64,
    lag_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// While it lives, its segment is being sent (see [`Replica::is_sending`]).
struct Sending<'a>(&'a Replica, String);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        lock(&self.0.sending).remove(&self.1);
    }
}

/// What `status` shows of a replicated stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The local stream.
    pub stream: String,
    /// The cloud stream.
    pub to: String,
    /// Replicating now (connected, no error since).
    pub connected: bool,
    /// Bytes the cloud acknowledged since the edge started.
    pub replicated_bytes: u64,
    /// Frames the cloud recognised as stored already (resends).
    pub duplicate_frames: u64,
    /// Gap records the cloud stored since the edge started: ranges the edge gave up
    /// before the cloud had them.
    #[serde(default)]
    pub gaps: u64,
    /// Bytes those gap records stand for.
    #[serde(default)]
    pub gap_bytes: u64,
    /// Bytes the edge holds that the cloud does not.
    pub lag_bytes: u64,
    /// Age of the oldest of them, in milliseconds.
    pub lag_ms: u64,
    /// The last error, if any since the last success.
    pub last_error: Option<String>,
}

/// Bytes the edge dropped from a replicated segment before the cloud had them, as
/// recorded when it dropped them.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Dropped {
    /// End of the range (its start is in the key).
    to: u64,
    /// Whole events in it.
    events: u64,
    /// Why.
    reason: String,
    /// When (ms since the Unix epoch).
    at_ms: u64,
}

fn dropped_key(segment: &str, from: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(segment.len() + 9);
    k.extend_from_slice(segment.as_bytes());
    k.push(0);
    k.extend_from_slice(&from.to_be_bytes());
    k
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Replica {
    /// The replica of `local` per `spec`, with the offsets acknowledged before.
    pub fn open(local: &LocalStream, spec: ReplicateSpec) -> anyhow::Result<Arc<Replica>> {
        let tree = local
            .log()
            .meta_tree("edge-replicated")
            .context("opening the replication state")?;
        let dropped = local
            .log()
            .meta_tree("edge-dropped")
            .context("opening the replication state")?;
        let mut acked = HashMap::new();
        for kv in tree.iter() {
            let (k, v) = kv.context("reading the replication state")?;
            if let (Ok(name), Ok(off)) = (String::from_utf8(k.to_vec()), <[u8; 8]>::try_from(&*v)) {
                acked.insert(name, u64::from_be_bytes(off));
            }
        }
        Ok(Arc::new(Replica {
            spec,
            name: local.spec().name(),
            tree,
            dropped,
            acked: Mutex::new(acked),
            sending: Mutex::new(Default::default()),
            samples: Mutex::new(HashMap::new()),
            connected: AtomicBool::new(false),
            replicated_bytes: AtomicU64::new(0),
            duplicate_frames: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            gap_bytes: AtomicU64::new(0),
            lag_bytes: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }))
    }

    /// What the configuration says.
    pub fn spec(&self) -> &ReplicateSpec {
        &self.spec
    }

    /// The offset below which the cloud holds every byte of the local `segment`.
    pub fn acked(&self, segment: &str) -> u64 {
        lock(&self.acked).get(segment).copied().unwrap_or(0)
    }

    /// Marks `segment` as being sent until the guard is dropped: frames may be in
    /// flight, and the cloud may hold more of it than is acknowledged.
    fn sending<'a>(&'a self, segment: &str) -> Sending<'a> {
        lock(&self.sending).insert(segment.to_string());
        Sending(self, segment.to_string())
    }

    /// Whether frames of `segment` may be in flight (the cloud may hold more of it
    /// than [`Replica::acked`] says).
    pub fn is_sending(&self, segment: &str) -> bool {
        lock(&self.sending).contains(segment)
    }

    /// Records that the cloud holds `segment` up to `offset`; `copied` when it got the
    /// bytes (not a gap record standing for them).
    fn set_acked(&self, segment: &str, offset: u64, copied: bool) {
        let before = lock(&self.acked).insert(segment.to_string(), offset);
        if copied {
            let grown = offset.saturating_sub(before.unwrap_or(offset));
            self.replicated_bytes.fetch_add(grown, Ordering::Relaxed);
        }
        if before != Some(offset) {
            if let Err(e) = self.tree.insert(segment, &offset.to_be_bytes()) {
                tracing::warn!(%segment, error = %e, "cannot persist the replicated offset");
            }
        }
    }

    /// Records that the edge drops `segment`'s bytes from `from` to `to`, holding
    /// `events` whole events, before the cloud has them; the gap record sent for them
    /// will say so.
    pub fn record_dropped(
        &self,
        segment: &str,
        from: u64,
        to: u64,
        events: u64,
        reason: &str,
    ) -> anyhow::Result<()> {
        let d = Dropped {
            to,
            events,
            reason: reason.to_string(),
            at_ms: unix_ms(),
        };
        let v = serde_json::to_vec(&d).context("encoding a drop record")?;
        self.dropped
            .insert(dropped_key(segment, from), v)
            .context("recording dropped data")?;
        self.dropped.flush().context("recording dropped data")?;
        Ok(())
    }

    /// The gap record for `segment`'s bytes from `from` to `to`, which the cloud lacks
    /// and the edge no longer holds (or cannot read: `why`): events and reason from the
    /// drops recorded, when they cover the range exactly.
    fn gap(&self, segment: &str, from: u64, to: u64, why: Option<String>) -> Gap {
        let mut prefix = segment.as_bytes().to_vec();
        prefix.push(0);
        let mut records = Vec::new();
        for kv in self.dropped.scan_prefix(&prefix).flatten() {
            let (k, v) = kv;
            let start = k
                .get(prefix.len()..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes);
            if let (Some(start), Ok(d)) = (start, serde_json::from_slice::<Dropped>(&v)) {
                if start < to && d.to > from {
                    records.push((start, d));
                }
            }
        }
        // Exactly covered: from `from` to `to`, each record starting where one ends.
        let mut at = from;
        for (start, d) in &records {
            at = if *start == at { d.to } else { u64::MAX };
        }
        let exact = at == to;
        let mut reasons: Vec<&str> = records.iter().map(|(_, d)| d.reason.as_str()).collect();
        reasons.dedup();
        Gap {
            segment: segment.to_string(),
            from,
            to,
            events: exact.then(|| records.iter().map(|(_, d)| d.events).sum()),
            reason: match (why, reasons.is_empty()) {
                (Some(why), _) => why,
                (None, true) => "the edge truncated them before the cloud had them (a user's \
                                 truncate, retention or a repair; the edge recorded no drop \
                                 of its own)"
                    .to_string(),
                (None, false) => reasons.join("; "),
            },
            dropped_ms: records.iter().map(|(_, d)| d.at_ms).min(),
            noticed_ms: unix_ms(),
        }
    }

    /// The cloud stored the gap record `gap`: count it, and forget the drops it covers.
    fn gap_stored(&self, gap: &Gap) {
        self.gaps.fetch_add(1, Ordering::Relaxed);
        self.gap_bytes.fetch_add(gap.bytes(), Ordering::Relaxed);
        let mut prefix = gap.segment.as_bytes().to_vec();
        prefix.push(0);
        for kv in self.dropped.scan_prefix(&prefix).flatten() {
            let done = serde_json::from_slice::<Dropped>(&kv.1).map_or(true, |d| d.to <= gap.to);
            if done {
                let _ = self.dropped.remove(kv.0);
            }
        }
    }

    fn failed(&self, e: &anyhow::Error) {
        self.connected.store(false, Ordering::Relaxed);
        *lock(&self.last_error) = Some(format!("{e:#}"));
    }

    fn ok(&self) {
        self.connected.store(true, Ordering::Relaxed);
        *lock(&self.last_error) = None;
    }

    /// Samples the lengths of `local`'s segments and updates the lag.
    pub fn sample(&self, local: &LocalStream) {
        let s = local.spec();
        let Ok(meta) = local.controller().describe(&s.scope, &s.stream) else {
            return;
        };
        let now = Instant::now();
        let (mut bytes, mut oldest) = (0, None::<Instant>);
        let mut samples = lock(&self.samples);
        for r in meta.segments.values() {
            let name = segment_name(&s.scope, &s.stream, r.id);
            let Ok(info) = local.log().info(&name) else {
                continue;
            };
            let acked = self.acked(&name);
            let q = samples.entry(name).or_default();
            if q.back().is_none_or(|(l, _)| *l < info.length) && info.length > acked {
                q.push_back((info.length, now));
            }
            // A sample is replicated once every byte below its length is.
            while q.front().is_some_and(|(l, _)| *l <= acked) {
                q.pop_front();
            }
            bytes += info.length.saturating_sub(acked.max(info.start));
            if let Some((_, t)) = q.front() {
                oldest = Some(oldest.map_or(*t, |o: Instant| o.min(*t)));
            }
        }
        self.lag_bytes.store(bytes, Ordering::Relaxed);
        let age = match (bytes, oldest) {
            (0, _) | (_, None) => 0,
            (_, Some(t)) => t.elapsed().as_millis() as u64,
        };
        self.lag_ms.store(age, Ordering::Relaxed);
    }

    /// The status now.
    pub fn status(&self) -> ReplicaStatus {
        ReplicaStatus {
            stream: self.name.clone(),
            to: self.spec.to(),
            connected: self.connected.load(Ordering::Relaxed),
            replicated_bytes: self.replicated_bytes.load(Ordering::Relaxed),
            duplicate_frames: self.duplicate_frames.load(Ordering::Relaxed),
            gaps: self.gaps.load(Ordering::Relaxed),
            gap_bytes: self.gap_bytes.load(Ordering::Relaxed),
            lag_bytes: self.lag_bytes.load(Ordering::Relaxed),
            lag_ms: self.lag_ms.load(Ordering::Relaxed),
            last_error: lock(&self.last_error).clone(),
        }
    }
}

/// The TLS and QUIC settings of the replication connection: the edge's identity, and
/// BBR congestion control (see [`tributary::tls::lossy_link_transport`]).
pub fn client_tls(identity: &tributary::tls::Identity) -> anyhow::Result<quinn::ClientConfig> {
    let mut tls =
        tributary::tls::client_config(identity).context("the [cloud] certificate, key or CA")?;
    tls.transport_config(tributary::tls::lossy_link_transport(
        tributary::tls::DEFAULT_IDLE_TIMEOUT,
    ));
    Ok(tls)
}

/// Replicates `replicas` to `cloud` until `stopped` turns true. Each connection reads
/// the edge's certificate and key from disk, and one is made anew when they change, so
/// a gateway's certificate is rotated by replacing its files.
pub async fn run(
    cloud: CloudSpec,
    replicas: Vec<(Arc<LocalStream>, Arc<Replica>)>,
    mut stopped: watch::Receiver<bool>,
) {
    if replicas.is_empty() {
        return;
    }
    let sampler = {
        let (replicas, mut stopped) = (replicas.clone(), stopped.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tokio::select! {
                    _ = every.tick() => replicas.iter().for_each(|(l, r)| r.sample(l)),
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
        })
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        let client = tokio::select! {
            c = connect(&cloud) => c,
            _ = stopped.wait_for(|s| *s) => break,
        };
        match client {
            Ok((client, stamp)) => {
                tracing::info!(cloud = %client.server_addr(), "replication connected");
                backoff = BACKOFF_MIN;
                let mut tasks = tokio::task::JoinSet::new();
                for (l, r) in &replicas {
                    tasks.spawn(replicate_stream(client.clone(), l.clone(), r.clone()));
                }
                tasks.spawn(report(client.clone(), replicas.clone()));
                tokio::select! {
                    () = client.closed() => {}
                    () = changed(&cloud.identity, stamp) => {
                        tracing::info!("the [cloud] certificate changed on disk: connecting again with it");
                    }
                    _ = stopped.wait_for(|s| *s) => {}
                }
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                let lost = client.is_closed();
                client.close().await;
                for (_, r) in &replicas {
                    r.connected.store(false, Ordering::Relaxed);
                    if lost {
                        r.failed(&anyhow!("the connection to the cloud was lost"));
                    }
                }
                if *stopped.borrow() {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "cloud unreachable; data stays on the edge");
                for (_, r) in &replicas {
                    r.failed(&e);
                }
            }
        }
        let jitter = rand::thread_rng().gen_range(0.5..1.0);
        tokio::select! {
            () = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
            _ = stopped.wait_for(|s| *s) => break,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    sampler.abort();
}

/// When the certificate and key files were last changed, and their sizes.
type Stamp = Vec<Option<(std::time::SystemTime, u64)>>;

fn stamp(id: &tributary::tls::Identity) -> Stamp {
    [&id.cert, &id.key]
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// Resolves once the certificate or key files differ from `before`.
async fn changed(id: &tributary::tls::Identity, before: Stamp) {
    loop {
        tokio::time::sleep(CERT_CHECK_EVERY).await;
        if stamp(id) != before {
            return;
        }
    }
}

/// Connects to the first endpoint that answers, with the certificate on disk now;
/// returns the connection and the files' stamp as they were read.
async fn connect(cloud: &CloudSpec) -> anyhow::Result<(Client, Stamp)> {
    let stamp = stamp(&cloud.identity);
    let tls = client_tls(&cloud.identity)?;
    let mut errors = Vec::new();
    for endpoint in &cloud.endpoints {
        let addrs = match tokio::net::lookup_host(endpoint).await {
            Ok(a) => a.collect::<Vec<_>>(),
            Err(e) => {
                errors.push(format!("{endpoint}: {e}"));
                continue;
            }
        };
        for addr in addrs {
            match Client::connect(addr, &cloud.server_name, tls.clone()).await {
                Ok(c) => return Ok((c, stamp)),
                Err(e) => errors.push(format!("{endpoint} ({addr}): {e}")),
            }
        }
    }
    Err(anyhow!("no cloud endpoint answered: {}", errors.join("; ")))
}

/// Reports every replica's lag to the cloud, for its metrics.
async fn report(client: Client, replicas: Vec<(Arc<LocalStream>, Arc<Replica>)>) {
    let mut every = tokio::time::interval(REPORT_EVERY);
    loop {
        every.tick().await;
        let lags = replicas
            .iter()
            .map(|(_, r)| ReplicationLag {
                stream: r.spec.to(),
                bytes: r.lag_bytes.load(Ordering::Relaxed),
                millis: r.lag_ms.load(Ordering::Relaxed),
            })
            .collect();
        if let Err(e) = client.report_replication(lags).await {
            tracing::debug!(error = %e, "reporting replication lag failed");
            if client.is_closed() {
                return;
            }
        }
    }
}

/// Replicates one stream over `client` until the connection is lost. Failures that
/// are not the connection's (e.g. the cloud refusing the stream) are retried with
/// backoff.
async fn replicate_stream(client: Client, local: Arc<LocalStream>, r: Arc<Replica>) {
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        let e = mirror(&client, &local, &r).await;
        if client.is_closed() {
            return;
        }
        let wait = backoff.after(started.elapsed());
        tracing::warn!(stream = %r.name, to = %r.spec.to(), error = %format!("{e:#}"), retry_in = ?wait, "replication failed");
        r.failed(&e);
        let jitter = rand::thread_rng().gen_range(0.5..1.0);
        tokio::time::sleep(wait.mul_f64(jitter)).await;
    }
}

/// Waits between tries of something that fails: doubling from [`BACKOFF_MIN`] up to
/// [`BACKOFF_MAX`] while tries fail quickly, and from the minimum again after a try
/// that ran at least [`BACKOFF_MAX`] before it failed (it was working: one failure
/// after hours of replication should not wait as long as the tenth in a row).
#[derive(Debug, Default)]
struct Backoff {
    failed_quickly: u32,
}

impl Backoff {
    /// The wait after a try that ran for `ran` (before jitter).
    fn after(&mut self, ran: Duration) -> Duration {
        if ran >= BACKOFF_MAX {
            self.failed_quickly = 0;
        }
        let wait = BACKOFF_MIN
            .saturating_mul(1 << self.failed_quickly.min(16))
            .min(BACKOFF_MAX);
        self.failed_quickly = self.failed_quickly.saturating_add(1);
        wait
    }
}

/// Makes the cloud stream follow the local one: replays the scales whose sealed
/// segments are fully copied, copies every segment the mirror has, and starts over
/// each time a segment is finished. Returns only on failure.
async fn mirror(client: &Client, local: &Arc<LocalStream>, r: &Arc<Replica>) -> anyhow::Error {
    let spec = local.spec().clone();
    let log = local.log().clone();
    // Segments sealed and fully copied.
    let mut done: BTreeSet<SegmentId> = BTreeSet::new();
    let mut running: BTreeSet<SegmentId> = BTreeSet::new();
    let mut copiers = tokio::task::JoinSet::new();
    let source = match local
        .controller()
        .stream_uid(&spec.scope, &spec.stream)
        .await
    {
        Ok(uid) => SourceStream {
            stream: spec.name(),
            uid,
        },
        Err(e) => return e.into(),
    };
    loop {
        let step = async {
            let meta = local
                .controller()
                .describe_settled(&spec.scope, &spec.stream)
                .await?;
            let mut scales = Vec::new();
            let mut lengths = Vec::new();
            for s in meta.scale_history() {
                if !s.sealed.iter().all(|id| done.contains(id)) {
                    break;
                }
                for id in &s.sealed {
                    let name = segment_name(&spec.scope, &spec.stream, *id);
                    lengths.push((*id, log.info(&name)?.length));
                }
                scales.push(s);
            }
            let cloud = client
                .mirror_stream(
                    &r.spec.to_scope,
                    &r.spec.to_stream,
                    &source,
                    meta.config,
                    scales,
                    lengths,
                )
                .await?;
            r.ok();
            for rec in cloud.segments.values() {
                if done.contains(&rec.id) || running.contains(&rec.id) {
                    continue;
                }
                let local = segment_name(&spec.scope, &spec.stream, rec.id);
                let remote = segment_name(&r.spec.to_scope, &r.spec.to_stream, rec.id);
                running.insert(rec.id);
                let (client, log, r, id) = (client.clone(), log.clone(), r.clone(), rec.id);
                copiers.spawn(async move {
                    copy(&client, &log, &r, &local, &remote).await.map(|()| id)
                });
            }
            anyhow::Ok(())
        };
        if let Err(e) = step.await {
            return e;
        }
        match copiers.join_next().await {
            Some(Ok(Ok(id))) => {
                running.remove(&id);
                done.insert(id);
            }
            Some(Ok(Err(e))) => return e,
            Some(Err(e)) => return anyhow!("a segment copier failed: {e}"),
            // Nothing to copy: every segment is done (a sealed stream).
            None => std::future::pending::<()>().await,
        }
    }
}

/// Copies the local `segment` into the cloud's `remote` from where the cloud's copy
/// ends, until the local segment is sealed and every byte is acknowledged.
async fn copy(
    client: &Client,
    log: &SegmentLog,
    r: &Replica,
    segment: &str,
    remote: &str,
) -> anyhow::Result<()> {
    let mut session = client
        .mirror_session(remote)
        .await
        .with_context(|| format!("opening a mirror session to {remote}"))?;
    session.set_priority(r.spec.priority);
    let mut offset = session.length;
    let info = match log.info(segment) {
        Ok(i) => i,
        Err(LogError::NoSuchSegment(_)) if offset > 0 => {
            // Truncated away locally after it was replicated.
            r.set_acked(segment, offset, false);
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if offset > info.length {
        bail!(
            "the cloud's {remote} holds {offset} bytes, more than the edge's {segment} ({}): \
             they are not copies of one another",
            info.length
        );
    }
    r.set_acked(segment, offset, false);
    let Some(mut acks) = session.take_acks() else {
        bail!("the mirror session has no acknowledgements");
    };
    // Gap records sent and not acknowledged yet, in order.
    let gaps: Mutex<VecDeque<Gap>> = Mutex::new(VecDeque::new());
    // The local segment starts after the cloud's copy ends: those bytes are gone.
    let gap = (offset < info.start).then(|| r.gap(segment, offset, info.start, None));
    let acker = async {
        while let Some(a) = acks.next().await? {
            if a.duplicate {
                r.duplicate_frames.fetch_add(1, Ordering::Relaxed);
            }
            let stored_gap = {
                let mut q = lock(&gaps);
                match q.front() {
                    Some(g) if g.to == a.end_offset => q.pop_front(),
                    _ => None,
                }
            };
            match stored_gap {
                Some(g) => {
                    r.set_acked(segment, a.end_offset, false);
                    r.gap_stored(&g);
                }
                None => r.set_acked(segment, a.end_offset, true),
            }
        }
        anyhow::Ok(())
    };
    let send_gap = |g: Gap| {
        tracing::warn!(stream = %r.name, to = %r.spec.to(), %segment, from = g.from, to = g.to,
            events = ?g.events, reason = %g.reason, "data the cloud will not get: sending a gap record");
        lock(&gaps).push_back(g.clone());
        g
    };
    let sender = async {
        if let Some(g) = gap {
            let g = send_gap(g);
            session.send_gap(&g).await?;
            offset = g.to;
        }
        let _sending = r.sending(segment);
        let mut pace = Pace::new(r.spec.max_bytes_per_s);
        // An event boundary at or after `offset` (the session starts at one: every
        // frame ends at one, but for the pieces of an event longer than a frame).
        let mut boundary = offset;
        loop {
            let read = match log.read(segment, offset, FRAME_BYTES, TAIL_WAIT).await {
                Ok(read) => read,
                // Damaged on the edge (a bad frame, a lost file): the cloud cannot have
                // those bytes; it gets a gap record and the rest.
                Err(LogError::Unreadable {
                    from, to, reason, ..
                }) if from == offset && to > from => {
                    let why = format!("unreadable on the edge: {reason}");
                    let g = send_gap(r.gap(segment, from, to, Some(why)));
                    session.send_gap(&g).await?;
                    (offset, boundary) = (to, to);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if read.is_empty() {
                if read.end_of_segment {
                    session.finish()?;
                    return anyhow::Ok(offset);
                }
                continue;
            }
            let take = frame_len(&read.parts, offset, &mut boundary);
            let parts = prefix(&read.parts, take);
            pace.take(take).await;
            session.send(offset, &parts).await?;
            offset += take as u64;
        }
    };
    tokio::pin!(acker);
    let end = tokio::select! {
        end = sender => end?,
        a = &mut acker => {
            a?;
            bail!("the cloud ended the mirror session of {remote}");
        }
    };
    acker.await?;
    let acked = r.acked(segment);
    if acked != end {
        bail!("the cloud acknowledged {remote} up to {acked}, not to its end {end}");
    }
    Ok(())
}

/// Bytes of `parts` (read at `start`) to send as one frame: up to the last event
/// boundary in them, so that the cloud's copy ends between events (a gap record that
/// follows it then follows a whole event); all of them when they are a piece of one
/// event longer than a read. `boundary` is an event boundary at or after `start`, moved
/// on to the last one known.
fn frame_len(parts: &[Bytes], start: u64, boundary: &mut u64) -> usize {
    let len: usize = parts.iter().map(Bytes::len).sum();
    let end = start + len as u64;
    let mut last = None;
    while *boundary <= end {
        if *boundary > start {
            last = Some(*boundary);
        }
        let at = (*boundary - start) as usize;
        let Some(event) = tributary::event::framed_len_at(&bytes_at(parts, at, 4)) else {
            break;
        };
        *boundary += event;
    }
    last.map_or(len, |b| (b - start) as usize)
}

/// Up to `n` bytes of `parts` from byte `at`.
fn bytes_at(parts: &[Bytes], mut at: usize, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    for p in parts {
        if at >= p.len() {
            at -= p.len();
            continue;
        }
        let take = (p.len() - at).min(n - out.len());
        out.extend_from_slice(&p[at..at + take]);
        at = 0;
        if out.len() == n {
            break;
        }
    }
    out
}

/// The first `n` bytes of `parts`, as slices of them.
fn prefix(parts: &[Bytes], mut n: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    for p in parts {
        if n == 0 {
            break;
        }
        let take = p.len().min(n);
        out.push(p.slice(..take));
        n -= take;
    }
    out
}

/// A bandwidth cap: `take(n)` waits until `n` more bytes fit under the rate.
struct Pace {
    bytes_per_s: Option<u64>,
    next: Instant,
}

impl Pace {
    fn new(bytes_per_s: Option<u64>) -> Self {
        Pace {
            bytes_per_s,
            next: Instant::now(),
        }
    }

    async fn take(&mut self, n: usize) {
        let Some(rate) = self.bytes_per_s else {
            return;
        };
        let now = Instant::now();
        if self.next > now {
            tokio::time::sleep(self.next - now).await;
        }
        self.next = self.next.max(now) + Duration::from_secs_f64(n as f64 / rate as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_end_at_event_boundaries_but_for_pieces_of_long_events() {
        use tributary::event::frame_event;
        let (a, b, c) = (
            frame_event(b"k", &[1; 10]),
            frame_event(b"k", &[2; 20]),
            frame_event(b"k", &[3; 5000]),
        );
        let (la, lb) = (a.len(), b.len());
        // a, b whole and the start of c, split over parts: a and b go.
        let parts = [a.clone(), b.slice(..5), b.slice(5..), c.slice(..100)];
        let mut boundary = 0;
        assert_eq!(frame_len(&parts, 0, &mut boundary), la + lb);
        assert_eq!(boundary, (la + lb + c.len()) as u64);
        // Inside c: pieces, up to its end, then whole events again.
        let start = (la + lb) as u64;
        let piece = [c.slice(..1000)];
        assert_eq!(frame_len(&piece, start, &mut boundary), 1000);
        let rest = [c.slice(1000..), a.clone(), b.slice(..3)];
        assert_eq!(
            frame_len(&rest, start + 1000, &mut boundary),
            c.len() - 1000 + la
        );
        assert_eq!(prefix(&rest, 10).iter().map(Bytes::len).sum::<usize>(), 10);
    }

    #[test]
    fn backoff_doubles_while_tries_fail_quickly_and_starts_over_after_a_long_run() {
        let mut b = Backoff::default();
        let quick = Duration::from_millis(10);
        let waits: Vec<u64> = (0..9).map(|_| b.after(quick).as_millis() as u64).collect();
        assert_eq!(
            waits,
            [200, 400, 800, 1600, 3200, 6400, 12_800, 15_000, 15_000]
        );
        // Replicating for a while, then a failure: the minimum again, then doubling.
        assert_eq!(b.after(BACKOFF_MAX), BACKOFF_MIN);
        assert_eq!(b.after(quick), BACKOFF_MIN * 2);
    }
}

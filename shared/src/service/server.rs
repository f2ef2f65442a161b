//! Server side of the segment service.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::controller::{Controller, MIRROR_SHIFT};
use crate::event::{frame_gap, Gap};
use crate::log::{
    AppendOptions, AttributeCondition, AttributeUpdate, LogError, SegmentLog, Ticket,
};
use crate::node::http::label_value;
use crate::service::access::Access;
use crate::service::peers::{PeerCert, Peers, Policy};
use crate::stream::{is_large_event_segment, segment_stream, MirrorSource};
use crate::wire::{
    encode_control, read_data_frame, read_frame, write_data_frame, DataHeader, ErrorCode,
    ReplicationLag, Request, Response, SegmentInfoWire, WireError, MAX_FRAME_LEN, PROTOCOL_VERSION,
};

/// Largest control request the server reads (control messages are small).
const MAX_CONTROL_LEN: usize = 64 << 10;
/// Largest read reply.
const MAX_READ_LEN: u32 = 4 << 20;
/// Longest a read waits at the tail.
const MAX_WAIT_MS: u32 = 60_000;
/// Appends of one session waiting for their acknowledgement, at most.
const MAX_UNACKED_APPENDS: usize = 4096;
/// QUIC application error code sent when closing a stream or connection we refuse.
const REFUSED: u32 = 1;

/// Longest a shutdown waits for in-flight requests before closing connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters of a segment server, for `/metrics`.
#[derive(Debug, Default)]
pub struct ServiceMetrics {
    /// Connections accepted (handshake done).
    pub connections: AtomicU64,
    /// Connections or requests refused (TLS, version, malformed frames).
    pub refused: AtomicU64,
    /// Events acknowledged as durable.
    pub appended_events: AtomicU64,
    /// Payload bytes acknowledged as durable.
    pub appended_bytes: AtomicU64,
    /// Blocks recognised as resends and not stored again.
    pub duplicate_blocks: AtomicU64,
    /// Bytes edges replicated into mirror streams, durable (their events are counted
    /// on the edge: a mirror frame is bytes, not whole events).
    pub mirrored_bytes: AtomicU64,
    /// Bytes served to readers.
    pub read_bytes: AtomicU64,
    /// The last replication lag each edge reported, per (edge identity, stream).
    lags: Mutex<BTreeMap<(String, String), (ReplicationLag, Instant)>>,
    /// Gap records stored and the bytes they stand for, per (edge identity, stream).
    gaps: Mutex<BTreeMap<(String, String), (u64, u64)>>,
}

impl ServiceMetrics {
    /// Records the replication lag an edge reported.
    pub fn record_lag(&self, edge: &str, streams: Vec<ReplicationLag>) {
        let mut lags = self.lags.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        for l in streams {
            lags.insert((edge.to_string(), l.stream.clone()), (l, now));
        }
    }

    /// Counts a gap record `edge` stored in its mirror `stream`, for `bytes` lost.
    pub fn record_gap(&self, edge: &str, stream: &str, bytes: u64) {
        let mut gaps = self.gaps.lock().unwrap_or_else(|e| e.into_inner());
        let g = gaps
            .entry((edge.to_string(), stream.to_string()))
            .or_default();
        g.0 += 1;
        g.1 += bytes;
    }

    /// The last lag reported per (edge identity, stream), and how long ago.
    pub fn lags(&self) -> Vec<(String, ReplicationLag, Duration)> {
        let lags = self.lags.lock().unwrap_or_else(|e| e.into_inner());
        lags.iter()
            .map(|((edge, _), (l, at))| (edge.clone(), l.clone(), at.elapsed()))
            .collect()
    }

    /// Prometheus text exposition of the counters.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, help, v) in [
            (
                "tributary_connections_total",
                "Client connections accepted.",
                &self.connections,
            ),
            (
                "tributary_refused_total",
                "Connections or requests refused.",
                &self.refused,
            ),
            (
                "tributary_appended_events_total",
                "Events acknowledged as durable.",
                &self.appended_events,
            ),
            (
                "tributary_appended_bytes_total",
                "Event bytes acknowledged as durable.",
                &self.appended_bytes,
            ),
            (
                "tributary_mirrored_bytes_total",
                "Bytes edges replicated into mirror streams, acknowledged as durable.",
                &self.mirrored_bytes,
            ),
            (
                "tributary_duplicate_blocks_total",
                "Resent append blocks recognised and not stored again.",
                &self.duplicate_blocks,
            ),
            (
                "tributary_read_bytes_total",
                "Bytes served to readers.",
                &self.read_bytes,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                v.load(Ordering::Relaxed)
            ));
        }
        let gaps = self.gaps.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let gap_rows = |f: fn(&(u64, u64)) -> u64| {
            gaps.iter()
                .map(|((edge, stream), g)| (edge.as_str(), stream.as_str(), f(g) as f64))
                .collect::<Vec<_>>()
        };
        edge_family(
            &mut out,
            "tributary_mirror_gaps_total",
            "counter",
            "Gap records stored: data an edge gave up before this node had it.",
            &gap_rows(|g| g.0),
        );
        edge_family(
            &mut out,
            "tributary_mirror_gap_bytes_total",
            "counter",
            "Bytes those gap records stand for.",
            &gap_rows(|g| g.1),
        );
        let lags = self.lags();
        let lag_rows = |f: fn(&ReplicationLag, &Duration) -> f64| {
            lags.iter()
                .map(|(edge, l, age)| (edge.as_str(), l.stream.as_str(), f(l, age)))
                .collect::<Vec<_>>()
        };
        edge_family(
            &mut out,
            "tributary_edge_replication_lag_bytes",
            "gauge",
            "Bytes an edge holds that its mirror stream does not (as the edge last reported).",
            &lag_rows(|l, _| l.bytes as f64),
        );
        edge_family(
            &mut out,
            "tributary_edge_replication_lag_seconds",
            "gauge",
            "Age of the oldest of them (as the edge last reported).",
            &lag_rows(|l, _| l.millis as f64 / 1000.0),
        );
        edge_family(
            &mut out,
            "tributary_edge_replication_report_age_seconds",
            "gauge",
            "Seconds since the edge last reported its lag.",
            &lag_rows(|_, age| age.as_secs_f64()),
        );
        out
    }
}

/// A metric family labelled by edge and stream, in the Prometheus text format; nothing
/// without rows.
fn edge_family(out: &mut String, name: &str, kind: &str, help: &str, rows: &[(&str, &str, f64)]) {
    if rows.is_empty() {
        return;
    }
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    for (edge, stream, v) in rows {
        out.push_str(&format!(
            "{name}{{edge=\"{}\",stream=\"{}\"}} {v}\n",
            label_value(edge),
            label_value(stream)
        ));
    }
}

/// What every connection task shares.
#[derive(Debug)]
struct Shared {
    controller: Arc<Controller>,
    peers: Arc<Peers>,
    metrics: Arc<ServiceMetrics>,
    /// Becomes true when the server starts draining.
    draining: watch::Receiver<bool>,
    /// Requests being served; shutdown waits until none is left.
    in_flight: Arc<watch::Sender<usize>>,
}

/// Temporary segments of large events a connection created and has not merged or
/// deleted yet; they are deleted when the connection ends (`None` from then on).
type Temps = Arc<Mutex<Option<HashSet<String>>>>;

/// Counts a request as in flight while it lives.
struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    fn new(counter: &Arc<watch::Sender<usize>>) -> Self {
        counter.send_modify(|n| *n += 1);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl Shared {
    fn log(&self) -> &SegmentLog {
        self.controller.log()
    }

    fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }
}

/// A running segment server: the segments of a controller's log and the controller's
/// scopes, streams and reader groups, over QUIC.
#[derive(Debug)]
pub struct SegmentServer {
    endpoint: quinn::Endpoint,
    peers: Arc<Peers>,
    accept: tokio::task::JoinHandle<()>,
    drain: watch::Sender<bool>,
    in_flight: Arc<watch::Sender<usize>>,
    metrics: Arc<ServiceMetrics>,
}

impl SegmentServer {
    /// Listens on `addr` (port 0 picks one) and serves `controller` (and its log) to
    /// clients whose certificates `tls` accepts, each within what `access` grants it.
    pub fn start(
        addr: SocketAddr,
        tls: quinn::ServerConfig,
        controller: Arc<Controller>,
        access: Access,
    ) -> std::io::Result<Self> {
        let policy = Policy {
            access,
            ..Policy::default()
        };
        Self::start_with(addr, tls, controller, policy)
    }

    /// As [`SegmentServer::start`], enforcing `policy` (grants and revoked
    /// certificates).
    pub fn start_with(
        addr: SocketAddr,
        tls: quinn::ServerConfig,
        controller: Arc<Controller>,
        policy: Policy,
    ) -> std::io::Result<Self> {
        let endpoint = super::quic_endpoint(addr, Some(tls))?;
        let (drain, draining) = watch::channel(false);
        let in_flight = Arc::new(watch::Sender::new(0));
        let metrics = Arc::new(ServiceMetrics::default());
        let peers = Arc::new(Peers::new(policy));
        let shared = Arc::new(Shared {
            controller,
            peers: peers.clone(),
            metrics: metrics.clone(),
            draining,
            in_flight: in_flight.clone(),
        });
        let ep = endpoint.clone();
        let accept = tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(conn) => serve_connection(conn, shared).await,
                        Err(e) => {
                            shared.metrics.refused.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(error = %e, "connection refused during handshake")
                        }
                    }
                });
            }
        });
        Ok(SegmentServer {
            endpoint,
            peers,
            accept,
            drain,
            in_flight,
            metrics,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The server's counters.
    pub fn metrics(&self) -> Arc<ServiceMetrics> {
        self.metrics.clone()
    }

    /// Puts `policy` in force for every request from now on, closes the connections
    /// whose certificate it revokes, and, with `tls`, answers new connections with that
    /// identity (live ones keep theirs). Returns how many connections it closed.
    pub fn reload(&self, policy: Policy, tls: Option<quinn::ServerConfig>) -> usize {
        if let Some(tls) = tls {
            self.endpoint.set_server_config(Some(tls));
        }
        self.peers.replace(policy)
    }

    /// Drains and stops: refuses new connections and requests, stops reading append
    /// data, acknowledges every append already taken (or refuses it with an error if
    /// storage fails), replies `ShuttingDown` to the rest, then closes every
    /// connection. Nothing a client sent is left in doubt: it was acknowledged, or
    /// refused and not stored.
    pub async fn shutdown(self) {
        self.endpoint.set_server_config(None);
        self.accept.abort();
        let _ = self.drain.send(true);
        let mut in_flight = self.in_flight.subscribe();
        if tokio::time::timeout(DRAIN_TIMEOUT, in_flight.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::warn!("requests still running after the drain timeout; closing anyway");
        }
        self.endpoint.close(0u32.into(), b"server shutting down");
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, self.endpoint.wait_idle()).await;
    }
}

async fn reply(send: &mut quinn::SendStream, r: &Response) -> Result<(), quinn::WriteError> {
    send.write_all(&encode_control(r)).await
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error {
        code,
        message: message.into(),
    }
}

fn wire_error(e: &WireError) -> Response {
    match e {
        WireError::TooLarge { .. } => error(ErrorCode::TooLarge, e.to_string()),
        _ => error(ErrorCode::Malformed, e.to_string()),
    }
}

async fn serve_connection(conn: quinn::Connection, shared: Arc<Shared>) {
    let peer = conn.remote_address();
    // Handshake on the first stream.
    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
        return;
    };
    let hello = match read_frame(&mut recv, MAX_CONTROL_LEN).await {
        Ok(Some(f)) => f.control::<Request>(),
        Ok(None) => Err(WireError::Malformed("no hello".into())),
        Err(e) => Err(e),
    };
    // Registered before its certificate is checked, so a reload that revokes it in
    // between closes it.
    let peer_cert = PeerCert::of(&conn);
    let identity = peer_cert.identity.clone();
    let _registered = shared.peers.enter(conn.clone(), peer_cert.clone());
    let refusal = shared.peers.refusal(&peer_cert);
    let answer = match hello {
        Ok(Request::Hello { .. }) if refusal.is_some() => {
            let why = refusal.unwrap_or_default();
            tracing::info!(%peer, %why, "refusing a connection");
            error(ErrorCode::Unauthorized, why)
        }
        Ok(Request::Hello { versions, client }) if versions.contains(&PROTOCOL_VERSION) => {
            tracing::debug!(%peer, %client, "client connected");
            Response::HelloOk {
                version: PROTOCOL_VERSION,
            }
        }
        Ok(Request::Hello { versions, .. }) => error(
            ErrorCode::UnsupportedVersion,
            format!("this server speaks version {PROTOCOL_VERSION}, the client {versions:?}"),
        ),
        Ok(_) => error(
            ErrorCode::UnexpectedMessage,
            "the first request must be Hello",
        ),
        Err(e) => wire_error(&e),
    };
    let ok = matches!(answer, Response::HelloOk { .. });
    if reply(&mut send, &answer).await.is_err() || send.finish().is_err() || !ok {
        shared.metrics.refused.fetch_add(1, Ordering::Relaxed);
        // Let the error reply reach the client before closing.
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
        conn.close(REFUSED.into(), b"handshake failed");
        return;
    }
    shared.metrics.connections.fetch_add(1, Ordering::Relaxed);
    let temps: Temps = Arc::new(Mutex::new(Some(HashSet::new())));
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (shared, temps, identity) = (shared.clone(), temps.clone(), identity.clone());
        let guard = InFlight::new(&shared.in_flight);
        tokio::spawn(async move {
            serve_stream(send, recv, &shared, &temps, &identity).await;
            drop(guard);
        });
    }
    // The client is gone: a large event it did not merge will never be (a reconnecting
    // writer starts the event over in a new temporary segment).
    let left = lock(&temps).take().unwrap_or_default();
    for name in left {
        delete_abandoned(shared.log(), &name).await;
    }
}

fn lock(temps: &Temps) -> std::sync::MutexGuard<'_, Option<HashSet<String>>> {
    temps.lock().unwrap_or_else(|e| e.into_inner())
}

/// Deletes the temporary segment of a large event whose connection ended.
async fn delete_abandoned(log: &SegmentLog, name: &str) {
    match log.delete(name).await {
        Ok(()) | Err(LogError::NoSuchSegment(_)) => {}
        Err(e) => {
            tracing::info!(segment = %name, error = %e, "cannot delete an abandoned large event; the next start will")
        }
    }
}

/// One request: read it, answer it, finish the stream. A bad frame gets an error reply
/// and closes only this stream.
async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: &Shared,
    temps: &Temps,
    identity: &str,
) {
    let req = match read_frame(&mut recv, MAX_CONTROL_LEN).await {
        Ok(Some(f)) => f.control::<Request>(),
        Ok(None) => return,
        Err(e) => Err(e),
    };
    let req = match req {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(error = %e, "refusing a malformed request");
            shared.metrics.refused.fetch_add(1, Ordering::Relaxed);
            let _ = reply(&mut send, &wire_error(&e)).await;
            let _ = recv.stop(REFUSED.into());
            let _ = send.finish();
            return;
        }
    };
    let answer = if shared.is_draining() {
        error(ErrorCode::ShuttingDown, "the server is shutting down")
    } else if let Err(why) = shared
        .peers
        .check(identity, &req)
        .and_then(|()| group_access(shared, identity, &req))
    {
        tracing::info!(%identity, %why, "refusing an unauthorized request");
        shared.metrics.refused.fetch_add(1, Ordering::Relaxed);
        error(ErrorCode::Unauthorized, why)
    } else {
        match req {
            Request::SetupAppend { segment, .. }
            | Request::MergeSegments { target: segment, .. }
            | Request::MergeWithAttributes { target: segment, .. }
                if shared.controller.is_mirror_segment(&segment) =>
            {
                error(
                    ErrorCode::Unauthorized,
                    format!("{segment} belongs to a mirror stream: only its edge's replication writes to it"),
                )
            }
            Request::SetupMirror { segment } if !mirror_fed_by(shared, &segment, identity) => {
                let why = match shared.controller.mirror_of(&segment) {
                    None => format!("{segment} is not a segment of a mirror stream (MirrorStream makes one)"),
                    Some(None) => format!("{segment}: its mirror stream has no source yet (MirrorStream claims it)"),
                    Some(Some(owner)) => format!("{segment} belongs to the mirror of {owner}; {identity:?} may not write to it"),
                };
                error(ErrorCode::Unauthorized, why)
            }
            Request::SetupAppend { segment, writer_id } => {
                let kind = SessionKind::Append { writer_id };
                return session(send, recv, shared, segment, kind).await;
            }
            Request::SetupMirror { segment } => {
                let kind = SessionKind::Mirror {
                    edge: identity.into(),
                };
                return session(send, recv, shared, segment, kind).await;
            }
            Request::ReportReplication { streams } => {
                shared.metrics.record_lag(identity, streams);
                Response::Ok
            }
            Request::Read {
                segment,
                offset,
                max_len,
                wait_ms,
            } => {
                let wait = Duration::from_millis(u64::from(wait_ms.min(MAX_WAIT_MS)));
                let max = max_len.min(MAX_READ_LEN) as usize;
                let mut draining = shared.draining.clone();
                let read = tokio::select! {
                    r = shared.log().read(&segment, offset, max, wait) => r,
                    () = drained(&mut draining) => Err(LogError::Closed),
                };
                match read {
                    Ok(r) => {
                        let h = DataHeader::Read {
                            offset: r.offset,
                            end_of_segment: r.end_of_segment,
                        };
                        let len = r.len();
                        shared
                            .metrics
                            .read_bytes
                            .fetch_add(len as u64, Ordering::Relaxed);
                        let _ = write_data_frame(&mut send, &h, &r.parts).await;
                        let _ = send.finish();
                        return;
                    }
                    Err(e) => Response::error(&e),
                }
            }
            Request::Hello { .. } => error(
                ErrorCode::UnexpectedMessage,
                "Hello is only the first request",
            ),
            other => match segment_control(shared, temps, &other).await {
                Some(r) => r,
                None => stream_control(&shared.controller, identity, other).await,
            },
        }
    };
    let _ = reply(&mut send, &answer).await;
    end_reply(send, shared.is_draining()).await;
}

/// Ends a reply stream. While the server drains, waits (briefly) until the client has
/// the reply: closing the connection right after would drop it.
async fn end_reply(mut send: quinn::SendStream, draining: bool) {
    let _ = send.finish();
    if draining {
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    }
}

/// Resolves when the server starts draining.
async fn drained(draining: &mut watch::Receiver<bool>) {
    let _ = draining.wait_for(|d| *d).await;
}

/// A request on an existing reader group needs `read` on every stream of the group's
/// set, as creating it did (the grants check only the scope).
fn group_access(shared: &Shared, identity: &str, req: &Request) -> Result<(), String> {
    let (scope, group) = match req {
        Request::SyncReader { scope, group, .. }
        | Request::Checkpoint { scope, group, .. }
        | Request::GroupPosition { scope, group, .. }
        | Request::DescribeReaderGroup { scope, group }
        | Request::DeleteReaderGroup { scope, group } => (scope, group),
        _ => return Ok(()),
    };
    // Loading the group costs a metadata read per sync: only where grants apply.
    if !shared.peers.restricted() {
        return Ok(());
    }
    match shared.controller.group_streams(scope, group) {
        Some(streams) => shared.peers.check(
            identity,
            &Request::CreateReaderGroup {
                scope: scope.clone(),
                group: group.clone(),
                streams,
                from: crate::wire::StartFrom::Head,
            },
        ),
        None => Ok(()),
    }
}

/// Whether `identity` feeds the mirror stream of `segment` (its recorded source).
fn mirror_fed_by(shared: &Shared, segment: &str, identity: &str) -> bool {
    matches!(shared.controller.mirror_of(segment), Some(Some(owner)) if owner.identity == identity)
}

/// Requests on the controller's scopes, streams and reader groups; `identity` is the
/// client's.
async fn stream_control(c: &Controller, identity: &str, req: Request) -> Response {
    use crate::controller::ControllerError;
    let answer = |r: Result<Response, ControllerError>| match r {
        Ok(r) => r,
        Err(e) => Response::controller_error(&e),
    };
    let ok = |r: Result<(), ControllerError>| answer(r.map(|()| Response::Ok));
    match req {
        Request::CreateScope { scope } => ok(c.create_scope(&scope)),
        Request::ListScopes => answer(c.list_scopes().map(Response::Names)),
        Request::DeleteScope { scope } => ok(c.delete_scope(&scope)),
        Request::CreateStream {
            scope,
            stream,
            config,
        } => answer(
            c.create_stream(&scope, &stream, config)
                .await
                .map(|m| Response::Stream(Box::new(m))),
        ),
        Request::UpdateStream {
            scope,
            stream,
            config,
        } => answer(
            c.update_stream(&scope, &stream, config)
                .await
                .map(|m| Response::Stream(Box::new(m))),
        ),
        Request::ListStreams { scope } => answer(c.list_streams(&scope).map(Response::Names)),
        Request::DescribeStream { scope, stream } => answer(
            c.describe_settled(&scope, &stream)
                .await
                .map(|m| Response::Stream(Box::new(m))),
        ),
        Request::ScaleStream {
            scope,
            stream,
            seal,
            ranges,
        } => answer(
            c.scale(&scope, &stream, &seal, &ranges)
                .await
                .map(Response::Segments),
        ),
        Request::SealStream { scope, stream } => ok(c.seal_stream(&scope, &stream).await),
        Request::TruncateStream { scope, stream, cut } => {
            ok(c.truncate_stream(&scope, &stream, &cut).await)
        }
        Request::DeleteStream { scope, stream } => ok(c.delete_stream(&scope, &stream).await),
        Request::StreamTail { scope, stream } => {
            answer(c.tail_cut(&scope, &stream).map(Response::Cut))
        }
        Request::WriterPositions {
            scope,
            stream,
            writer_id,
        } => answer(
            c.writer_positions(&scope, &stream, writer_id)
                .await
                .map(Response::WriterPositions),
        ),
        Request::CreateReaderGroup {
            scope,
            group,
            streams,
            from,
        } => ok(c.create_reader_group(&scope, &group, &streams, &from)),
        Request::DeleteReaderGroup { scope, group } => ok(c.delete_reader_group(&scope, &group)),
        Request::SyncReader {
            scope,
            group,
            reader,
            report,
            leave,
        } => answer(
            c.sync_reader(&scope, &group, &reader, &report, leave)
                .map(Response::Assignment),
        ),
        Request::DescribeReaderGroup { scope, group } => {
            answer(c.describe_reader_group(&scope, &group).map(Response::Group))
        }
        Request::Checkpoint { scope, group, name } => {
            answer(c.checkpoint(&scope, &group, &name).map(Response::GroupCut))
        }
        Request::GroupPosition { scope, group, name } => answer(
            c.group_position(&scope, &group, name.as_deref())
                .map(Response::GroupCut),
        ),
        Request::MirrorStream {
            scope,
            stream,
            source,
            config,
            scales,
            lengths,
        } => {
            let source = MirrorSource {
                identity: identity.to_string(),
                stream: source,
            };
            answer(
                c.mirror_stream(&scope, &stream, &source, config, &scales, &lengths)
                    .await
                    .map(|m| Response::Stream(Box::new(m))),
            )
        }
        Request::Hello { .. }
        | Request::SetupAppend { .. }
        | Request::SetupMirror { .. }
        | Request::ReportReplication { .. }
        | Request::Read { .. }
        | Request::CreateSegment { .. }
        | Request::SealSegment { .. }
        | Request::TruncateSegment { .. }
        | Request::MergeSegments { .. }
        | Request::MergeWithAttributes { .. }
        | Request::DeleteSegment { .. }
        | Request::SegmentInfo { .. } => {
            error(ErrorCode::UnexpectedMessage, "not a controller request")
        }
    }
}

/// Requests on single segments; `None` if `req` is not one. Keeps track of the large
/// events' temporary segments this connection creates.
async fn segment_control(shared: &Shared, temps: &Temps, req: &Request) -> Option<Response> {
    let log = shared.log();
    let done = |r: Result<(), LogError>| match r {
        Ok(()) => Response::Ok,
        Err(e) => Response::error(&e),
    };
    Some(match req {
        Request::CreateSegment { segment } => {
            let r = log.create(segment).await;
            if r.is_ok() && is_large_event_segment(segment) {
                let open = lock(temps).as_mut().map(|t| t.insert(segment.clone()));
                if open.is_none() {
                    // The connection ended while this request ran.
                    delete_abandoned(log, segment).await;
                }
            }
            done(r)
        }
        Request::SealSegment { segment } => done(log.seal(segment).await.map(|_| ())),
        Request::TruncateSegment { segment, offset } => done(log.truncate(segment, *offset).await),
        Request::MergeSegments { target, source } => {
            merge(shared, temps, target, source, &[]).await.1
        }
        Request::MergeWithAttributes {
            target,
            source,
            attributes,
        } => match merge(shared, temps, target, source, attributes).await {
            (Some(offset), _) => Response::Merged { offset },
            (None, r) => r,
        },
        Request::DeleteSegment { segment } => {
            let r = log.delete(segment).await;
            if r.is_ok() {
                forget(temps, segment);
            }
            done(r)
        }
        Request::SegmentInfo { segment } => match log.info(segment) {
            Ok(i) => Response::Info(SegmentInfoWire {
                name: i.name,
                start: i.start,
                length: i.length,
                sealed: i.sealed,
            }),
            Err(e) => Response::error(&e),
        },
        _ => return None,
    })
}

/// The connection no longer has to delete this temporary segment.
fn forget(temps: &Temps, name: &str) {
    if let Some(t) = lock(temps).as_mut() {
        t.remove(name);
    }
}

/// A merge; returns the offset where the source starts in the target (or `None`) and
/// the plain reply. A large event merged onto its stream segment counts as one event
/// of its length for the metrics and the scaling policy.
async fn merge(
    shared: &Shared,
    temps: &Temps,
    target: &str,
    source: &str,
    attributes: &[AttributeUpdate],
) -> (Option<u64>, Response) {
    let log = shared.log();
    let large = is_large_event_segment(source) && !is_large_event_segment(target);
    let length = match log.info(source) {
        Ok(i) => i.length,
        Err(e) => return (None, Response::error(&e)),
    };
    // A large event merged into a stream segment is one more event there.
    let mut attributes = attributes.to_vec();
    if large {
        attributes.extend(crate::event::counted(1));
    }
    match log.merge_with(target, source, &attributes).await {
        Ok(offset) => {
            forget(temps, source);
            if large {
                shared
                    .metrics
                    .appended_events
                    .fetch_add(1, Ordering::Relaxed);
                shared.controller.record_append(target, 1, length);
            }
            (Some(offset), Response::Ok)
        }
        Err(e) => (None, Response::error(&e)),
    }
}

/// What the acknowledging task sends, in order.
enum Pending {
    /// Stored once `ticket` is durable; then `reply` goes out.
    Stored {
        ticket: Ticket,
        events: u32,
        bytes: u64,
        /// For a gap record: the bytes it stands for.
        gap: Option<u64>,
        reply: Response,
    },
    /// Stored before (perhaps by an earlier session whose appends still wait for
    /// their fsync): `reply` goes out once everything submitted is durable.
    Duplicate(Response),
    /// The session ends with this error.
    Failed(Response),
}

/// What a session's data frames are.
#[derive(Debug, Clone)]
enum SessionKind {
    /// Blocks of whole events of one writer (`SetupAppend`).
    Append { writer_id: u128 },
    /// Bytes of a mirror's source segment at given offsets, and gap records
    /// (`SetupMirror`), from the edge `edge`.
    Mirror { edge: Arc<str> },
}

/// An append or mirror session: data frames in, acknowledgements out, in order.
///
/// Appends: each block is stored with the writer's attribute set to its last event
/// number under the condition "greater than stored", so a resent block is
/// acknowledged as a duplicate and not stored again.
///
/// Mirror: each frame is stored only at its offset (a conditional append on the
/// segment's length). What the segment already holds of a resent frame is
/// acknowledged without being stored again, and only the rest is appended; a frame
/// beyond the end is refused (`Conflict`) and the sender resumes from the length.
/// Offsets on the wire are the source's: past a gap record, the segment's shift
/// ([`MIRROR_SHIFT`]) tells them from the mirror's.
async fn session(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: &Shared,
    segment: String,
    kind: SessionKind,
) {
    let log = shared.controller.log().clone();
    // Appends of an earlier session may still wait for their fsync; what we report
    // must include them, or the client would resend them.
    // A mirror session's view of the segment's shift attribute (source minus mirror
    // offsets; see `MIRROR_SHIFT`): every append it makes is conditional on it.
    let mut shift: Option<i64> = None;
    let setup = log.settle().await.and_then(|()| {
        let last_event_number = match kind {
            SessionKind::Append { writer_id } => log.attribute(&segment, writer_id)?,
            SessionKind::Mirror { .. } => {
                shift = log.attribute(&segment, MIRROR_SHIFT)?;
                None
            }
        };
        Ok(Response::AppendSetup {
            last_event_number,
            length: log
                .info(&segment)?
                .length
                .saturating_add_signed(shift.unwrap_or(0)),
        })
    });
    let setup = setup.unwrap_or_else(|e| Response::error(&e));
    let ok = matches!(setup, Response::AppendSetup { .. });
    if reply(&mut send, &setup).await.is_err() || !ok {
        let _ = send.finish();
        return;
    }
    let (tx, mut rx) = mpsc::channel::<Pending>(MAX_UNACKED_APPENDS);
    let acker = {
        let draining_acker = shared.draining.clone();
        let log = log.clone();
        let controller = shared.controller.clone();
        let metrics = shared.metrics.clone();
        let segment = segment.clone();
        let edge = match &kind {
            SessionKind::Mirror { edge } => Some(edge.clone()),
            SessionKind::Append { .. } => None,
        };
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                let r = match p {
                    Pending::Stored {
                        ticket,
                        events,
                        bytes,
                        gap,
                        reply,
                    } => match log.durable(ticket).await {
                        Ok(()) => {
                            if let (Some(lost), Some(edge), Some((scope, stream))) =
                                (gap, &edge, segment_stream(&segment))
                            {
                                metrics.record_gap(edge, &format!("{scope}/{stream}"), lost);
                            }
                            if edge.is_some() {
                                metrics.mirrored_bytes.fetch_add(bytes, Ordering::Relaxed);
                            } else {
                                metrics
                                    .appended_events
                                    .fetch_add(u64::from(events), Ordering::Relaxed);
                                metrics.appended_bytes.fetch_add(bytes, Ordering::Relaxed);
                            }
                            // A large event's chunks count when it is merged.
                            if events > 0 && !is_large_event_segment(&segment) {
                                controller.record_append(&segment, u64::from(events), bytes);
                            }
                            reply
                        }
                        Err(e) => Response::error(&e),
                    },
                    Pending::Duplicate(reply) => {
                        metrics.duplicate_blocks.fetch_add(1, Ordering::Relaxed);
                        match log.settle().await {
                            Ok(()) => reply,
                            Err(e) => Response::error(&e),
                        }
                    }
                    Pending::Failed(r) => r,
                };
                let last = matches!(r, Response::Error { .. });
                if reply(&mut send, &r).await.is_err() || last {
                    break;
                }
            }
            let draining = *draining_acker.borrow();
            end_reply(send, draining).await;
        })
    };
    let mut draining = shared.draining.clone();
    loop {
        // The payload as it arrived, in pieces the log holds instead of copying.
        let mut data = Vec::new();
        let frame = tokio::select! {
            f = read_data_frame(&mut recv, MAX_FRAME_LEN, &mut data) => f,
            () = drained(&mut draining) => {
                // Everything taken so far is acknowledged first (the acker sends in
                // order); what the client sent after it was not read and is refused.
                let r = error(ErrorCode::ShuttingDown, "the server is shutting down; blocks not acknowledged were not stored");
                let _ = tx.send(Pending::Failed(r)).await;
                let _ = recv.stop(REFUSED.into());
                break;
            }
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                let _ = tx.send(Pending::Failed(wire_error(&e))).await;
                let _ = recv.stop(REFUSED.into());
                break;
            }
        };
        let p = match (&kind, frame) {
            (
                SessionKind::Append { writer_id },
                DataHeader::Append {
                    event_number,
                    event_count,
                },
            ) => append_block(&log, &segment, *writer_id, event_number, event_count, &data).await,
            (SessionKind::Mirror { .. }, DataHeader::Mirror { offset }) => {
                mirror_block(&log, &segment, offset, &data, &mut shift).await
            }
            (SessionKind::Mirror { .. }, DataHeader::MirrorGap { offset }) => {
                mirror_gap(&log, &segment, offset, &data, &mut shift).await
            }
            (kind, _) => Pending::Failed(error(
                ErrorCode::UnexpectedMessage,
                match kind {
                    SessionKind::Append { .. } => "expected an append data frame",
                    SessionKind::Mirror { .. } => "expected a mirror data frame",
                },
            )),
        };
        let stop = matches!(p, Pending::Failed(_));
        if tx.send(p).await.is_err() || stop {
            let _ = recv.stop(REFUSED.into());
            break;
        }
    }
    drop(tx);
    let _ = acker.await;
}

async fn append_block(
    log: &SegmentLog,
    segment: &str,
    writer_id: u128,
    event_number: i64,
    event_count: u32,
    data: &[Bytes],
) -> Pending {
    let len: usize = data.iter().map(Bytes::len).sum();
    let mut attributes = vec![AttributeUpdate {
        id: writer_id,
        value: event_number,
        condition: AttributeCondition::Greater,
    }];
    attributes.extend(crate::event::counted(u64::from(event_count)));
    let opts = AppendOptions {
        expected_length: None,
        attributes,
    };
    loop {
        match log.submit_append(segment, data, &opts) {
            Ok((offset, ticket)) => {
                return Pending::Stored {
                    ticket,
                    events: event_count,
                    bytes: len as u64,
                    gap: None,
                    reply: Response::Appended {
                        event_number,
                        end_offset: offset + len as u64,
                        duplicate: false,
                    },
                }
            }
            Err(LogError::Backpressure(_)) => log.wait_for_room().await,
            Err(LogError::AttributeConflict { .. }) => {
                let end_offset = log.info(segment).map(|i| i.length).unwrap_or(0);
                return Pending::Duplicate(Response::Appended {
                    event_number,
                    end_offset,
                    duplicate: true,
                });
            }
            Err(e) => return Pending::Failed(Response::error(&e)),
        }
    }
}

/// The condition every append of a mirror session carries: the segment's shift is
/// still what the session saw (`seen`), else another session stored a gap record since
/// and this one's offsets are stale. It sets the value it checks (`value`).
fn shift_guard(seen: Option<i64>, value: i64) -> Vec<AttributeUpdate> {
    vec![AttributeUpdate {
        id: MIRROR_SHIFT,
        value,
        condition: AttributeCondition::Equals(seen),
    }]
}

fn stale_session(segment: &str) -> Pending {
    Pending::Failed(error(
        ErrorCode::Conflict,
        format!("{segment} took a gap record from another session: open a new session"),
    ))
}

/// Stores a mirror frame at source offset `source_offset` (the segment's offset plus
/// the shift), or what the segment does not hold of it yet.
async fn mirror_block(
    log: &SegmentLog,
    segment: &str,
    source_offset: u64,
    data: &[Bytes],
    seen: &mut Option<i64>,
) -> Pending {
    let shift = seen.unwrap_or(0);
    let len = data.iter().map(|b| b.len() as u64).sum::<u64>();
    let Some(end_source) = source_offset.checked_add(len) else {
        let why = format!("a mirror frame at {source_offset} runs past the largest offset");
        return Pending::Failed(error(ErrorCode::Malformed, why));
    };
    // In the segment's offsets; bytes before its start (a frame resent from before a
    // gap record) count as stored.
    let first = i128::from(source_offset) - i128::from(shift);
    let offset = u64::try_from(first.max(0)).unwrap_or(u64::MAX);
    let end = u64::try_from((first + i128::from(len)).max(0)).unwrap_or(u64::MAX);
    let mut at = offset;
    loop {
        let part = match at + len - end {
            0 => Cow::Borrowed(data),
            stored => Cow::Owned(skip(data, stored as usize)),
        };
        let opts = AppendOptions {
            expected_length: Some(at),
            attributes: shift_guard(*seen, shift),
        };
        match log.submit_append(segment, &*part, &opts) {
            Ok((_, ticket)) => {
                *seen = Some(shift);
                return Pending::Stored {
                    ticket,
                    events: 0,
                    bytes: end - at,
                    gap: None,
                    reply: Response::Mirrored {
                        end_offset: end_source,
                        duplicate: false,
                    },
                };
            }
            Err(LogError::Backpressure(_)) => log.wait_for_room().await,
            Err(LogError::BadOffset { actual, .. }) if actual >= end => {
                return Pending::Duplicate(Response::Mirrored {
                    end_offset: end_source,
                    duplicate: true,
                })
            }
            // The frame's beginning is stored (a resend with other boundaries).
            Err(LogError::BadOffset { actual, .. }) if actual > at => at = actual,
            Err(LogError::AttributeConflict { .. }) => return stale_session(segment),
            Err(LogError::BadOffset { actual, .. }) => {
                let actual = actual.saturating_add_signed(shift);
                return Pending::Failed(error(
                    ErrorCode::Conflict,
                    format!(
                        "segment {segment} holds {actual} bytes; a mirror frame at {source_offset} \
                         would leave a gap (continue from {actual})"
                    ),
                ));
            }
            Err(e) => return Pending::Failed(Response::error(&e)),
        }
    }
}

/// Stores a gap record: the source gave up its bytes from `source_offset` (where the
/// segment ends) to the record's end. The same append sets the segment's new shift,
/// so the source's next bytes, at the record's end, go right after the record.
async fn mirror_gap(
    log: &SegmentLog,
    segment: &str,
    source_offset: u64,
    data: &[Bytes],
    seen: &mut Option<i64>,
) -> Pending {
    let shift = seen.unwrap_or(0);
    let body: Vec<u8> = data.iter().flat_map(|b| b.iter().copied()).collect();
    let gap: Gap = match ciborium::from_reader(&body[..]) {
        Ok(g) => g,
        Err(e) => {
            let why = format!("a gap record that does not decode: {e}");
            return Pending::Failed(error(ErrorCode::Malformed, why));
        }
    };
    if gap.from != source_offset || gap.to <= gap.from {
        let why = format!(
            "a gap record from {} to {} sent at {source_offset}",
            gap.from, gap.to
        );
        return Pending::Failed(error(ErrorCode::Malformed, why));
    }
    let framed = frame_gap(&gap);
    let at = i128::from(source_offset) - i128::from(shift);
    let after = at + framed.len() as i128;
    let (Ok(at), Ok(new_shift)) = (u64::try_from(at), i64::try_from(i128::from(gap.to) - after))
    else {
        let why = format!("a gap record at {source_offset} out of this segment's range");
        return Pending::Failed(error(ErrorCode::Malformed, why));
    };
    let opts = AppendOptions {
        expected_length: Some(at),
        attributes: shift_guard(*seen, new_shift),
    };
    loop {
        match log.submit_append(segment, std::slice::from_ref(&framed), &opts) {
            Ok((_, ticket)) => {
                *seen = Some(new_shift);
                tracing::warn!(%segment, from = gap.from, to = gap.to, events = ?gap.events, reason = %gap.reason,
                    "the edge gave up data before it was replicated: a gap record is stored");
                return Pending::Stored {
                    ticket,
                    events: 0,
                    bytes: framed.len() as u64,
                    gap: Some(gap.bytes()),
                    reply: Response::Mirrored {
                        end_offset: gap.to,
                        duplicate: false,
                    },
                };
            }
            Err(LogError::Backpressure(_)) => log.wait_for_room().await,
            Err(LogError::AttributeConflict { .. }) => return stale_session(segment),
            Err(LogError::BadOffset { actual, .. }) => {
                let actual = actual.saturating_add_signed(shift);
                return Pending::Failed(error(
                    ErrorCode::Conflict,
                    format!(
                        "segment {segment} holds {actual} bytes; a gap record from {source_offset} \
                         does not follow them (continue from {actual})"
                    ),
                ));
            }
            Err(e) => return Pending::Failed(Response::error(&e)),
        }
    }
}

/// `data` without its first `n` bytes.
fn skip(data: &[Bytes], mut n: usize) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(data.len());
    for b in data {
        if n >= b.len() {
            n -= b.len();
        } else {
            out.push(b.slice(n..));
            n = 0;
        }
    }
    out
}

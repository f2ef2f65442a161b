//! Client side of the segment service.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use crate::log::AttributeUpdate;
use crate::stream::{
    GroupCut, GroupSegment, KeyRange, ReaderReport, ScaleRecord, SegmentId, SourceStream,
    StreamConfig, StreamCut, StreamMeta,
};
use crate::wire::{
    encode_control, read_frame, write_data_frame, DataHeader, ErrorCode, Frame, GroupInfo,
    ReplicationLag, Request, Response, SegmentInfoWire, StartFrom, WireError, WriterPosition,
    MAX_FRAME_LEN, PROTOCOL_VERSION,
};

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection could not be made (unreachable, TLS refused, ...).
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// Server address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The connection or stream failed.
    #[error("connection lost: {0}")]
    Connection(String),
    /// The server refused the request.
    #[error("server refused ({code:?}): {message}")]
    Server {
        /// Stable error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The server sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The caller's input cannot be sent (too large, invalid).
    #[error("{0}")]
    InvalidInput(String),
    /// The writer or reader stopped after an earlier error.
    #[error("{0}")]
    Failed(String),
    /// An event longer than the reader takes ([`crate::service::ReaderConfig::max_event_bytes`]).
    #[error(
        "the event at offset {offset} of segment {}.{} takes {size} bytes; this reader \
         takes at most {max} (ReaderConfig::max_event_bytes){}",
        segment.number,
        segment.epoch,
        if *offset == *started_at {
            " — or no event starts there: a stream cut must be at an event boundary \
             (as `trib stream describe`, a group's position or an event's offset give it)"
        } else {
            ""
        }
    )]
    EventTooLarge {
        /// Segment it is in.
        segment: SegmentId,
        /// Its offset there.
        offset: u64,
        /// Where the reader started reading the segment (a stream cut's offset there):
        /// if it is `offset`, the cut may be off an event boundary.
        started_at: u64,
        /// Bytes it takes, framing included.
        size: u64,
        /// The reader's limit.
        max: u64,
    },
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Io(e) => ClientError::Connection(e.to_string()),
            other => ClientError::Protocol(other.to_string()),
        }
    }
}

fn conn_err(e: impl ToString) -> ClientError {
    ClientError::Connection(e.to_string())
}

fn refused(r: Response) -> ClientError {
    match r {
        Response::Error { code, message } => ClientError::Server { code, message },
        other => ClientError::Protocol(format!("unexpected reply {other:?}")),
    }
}

impl ClientError {
    /// The server or the connection went away (restart, network): reconnecting and
    /// retrying may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Connection(_) => true,
            ClientError::Server { code, .. } => {
                matches!(code, ErrorCode::ShuttingDown | ErrorCode::Busy)
            }
            ClientError::Protocol(_)
            | ClientError::InvalidInput(_)
            | ClientError::Failed(_)
            | ClientError::EventTooLarge { .. } => false,
        }
    }
}

/// A connection to a Tributary server: its segments, scopes, streams and reader
/// groups. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    server_name: String,
    tls: quinn::ClientConfig,
}

impl Client {
    /// Connects, authenticates both ways with `tls`, and does the protocol handshake.
    /// `server_name` must be in the server's certificate.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        tls: quinn::ClientConfig,
    ) -> Result<Self, ClientError> {
        // Loopback servers are reached from loopback (tests and namespaces use only that).
        let bind: SocketAddr = match (addr.is_ipv4(), addr.ip().is_loopback()) {
            (true, true) => ([127, 0, 0, 1], 0).into(),
            (true, false) => ([0, 0, 0, 0], 0).into(),
            (false, true) => (std::net::Ipv6Addr::LOCALHOST, 0).into(),
            (false, false) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let cerr = |reason: String| ClientError::Connect { addr, reason };
        let mut endpoint = super::quic_endpoint(bind, None).map_err(|e| cerr(e.to_string()))?;
        endpoint.set_default_client_config(tls.clone());
        let conn = endpoint
            .connect(addr, server_name)
            .map_err(|e| cerr(e.to_string()))?
            .await
            .map_err(|e| cerr(e.to_string()))?;
        let client = Client {
            endpoint,
            conn,
            server_name: server_name.to_string(),
            tls,
        };
        let hello = Request::Hello {
            versions: vec![PROTOCOL_VERSION],
            client: format!("tributary {}", env!("CARGO_PKG_VERSION")),
        };
        match client.call(&hello).await {
            Ok(Response::HelloOk { .. }) => Ok(client),
            // With mutual TLS, a refused client certificate surfaces on first use.
            Ok(other) => Err(cerr(refused(other).to_string())),
            Err(e) => Err(cerr(e.to_string())),
        }
    }

    /// A new connection to the same server with the same identity.
    pub async fn reconnect(&self) -> Result<Client, ClientError> {
        Client::connect(
            self.conn.remote_address(),
            &self.server_name,
            self.tls.clone(),
        )
        .await
    }

    /// The connection is gone (closed by either side or lost).
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Resolves when the connection is gone.
    pub async fn closed(&self) {
        self.conn.closed().await;
    }

    /// The server's address.
    pub fn server_addr(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// One request on its own stream, one control reply.
    async fn call(&self, req: &Request) -> Result<Response, ClientError> {
        let r = async {
            let (mut send, mut recv) = self.conn.open_bi().await.map_err(conn_err)?;
            send.write_all(&encode_control(req))
                .await
                .map_err(conn_err)?;
            send.finish().map_err(conn_err)?;
            match read_frame(&mut recv, MAX_FRAME_LEN).await? {
                Some(f) => Ok(f.control::<Response>()?),
                None => Err(ClientError::Connection(
                    "the server closed the stream".into(),
                )),
            }
        };
        r.await.map_err(|e| self.why(e))
    }

    /// Replaces a bare "connection lost" by the reason the connection closed (a TLS
    /// alert such as an unknown CA, the server shutting down, ...).
    fn why(&self, e: ClientError) -> ClientError {
        match (e, self.conn.close_reason()) {
            (ClientError::Connection(_), Some(reason)) => {
                ClientError::Connection(reason.to_string())
            }
            (e, _) => e,
        }
    }

    async fn ok(&self, req: Request) -> Result<(), ClientError> {
        match self.call(&req).await? {
            Response::Ok => Ok(()),
            other => Err(refused(other)),
        }
    }

    /// Creates a segment.
    pub async fn create_segment(&self, segment: &str) -> Result<(), ClientError> {
        self.ok(Request::CreateSegment {
            segment: segment.into(),
        })
        .await
    }

    /// Seals a segment.
    pub async fn seal_segment(&self, segment: &str) -> Result<(), ClientError> {
        self.ok(Request::SealSegment {
            segment: segment.into(),
        })
        .await
    }

    /// Truncates a segment below `offset`.
    pub async fn truncate_segment(&self, segment: &str, offset: u64) -> Result<(), ClientError> {
        self.ok(Request::TruncateSegment {
            segment: segment.into(),
            offset,
        })
        .await
    }

    /// Merges the sealed `source` onto `target`.
    pub async fn merge_segments(&self, target: &str, source: &str) -> Result<(), ClientError> {
        self.ok(Request::MergeSegments {
            target: target.into(),
            source: source.into(),
        })
        .await
    }

    /// Merges the sealed `source` onto `target` and applies `attributes` to `target` in
    /// the same atomic step; returns the offset in `target` where the source's data
    /// starts. A failed condition is refused with `Conflict` and merges nothing.
    pub async fn merge_with_attributes(
        &self,
        target: &str,
        source: &str,
        attributes: &[AttributeUpdate],
    ) -> Result<u64, ClientError> {
        let req = Request::MergeWithAttributes {
            target: target.into(),
            source: source.into(),
            attributes: attributes.to_vec(),
        };
        self.expect(req, |r| match r {
            Response::Merged { offset } => Ok(offset),
            other => Err(other),
        })
        .await
    }

    /// Deletes a segment.
    pub async fn delete_segment(&self, segment: &str) -> Result<(), ClientError> {
        self.ok(Request::DeleteSegment {
            segment: segment.into(),
        })
        .await
    }

    /// A segment's state.
    pub async fn segment_info(&self, segment: &str) -> Result<SegmentInfoWire, ClientError> {
        match self
            .call(&Request::SegmentInfo {
                segment: segment.into(),
            })
            .await?
        {
            Response::Info(i) => Ok(i),
            other => Err(refused(other)),
        }
    }

    /// Reads up to `max_len` bytes from `offset`, waiting up to `wait` at the tail.
    /// Returns the bytes and whether they end a sealed segment.
    pub async fn read(
        &self,
        segment: &str,
        offset: u64,
        max_len: u32,
        wait: Duration,
    ) -> Result<(Bytes, bool), ClientError> {
        let req = Request::Read {
            segment: segment.into(),
            offset,
            max_len,
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        };
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(conn_err)?;
        send.write_all(&encode_control(&req))
            .await
            .map_err(conn_err)?;
        send.finish().map_err(conn_err)?;
        match read_frame(&mut recv, MAX_FRAME_LEN).await? {
            Some(Frame::Data(DataHeader::Read { end_of_segment, .. }, data)) => {
                Ok((data, end_of_segment))
            }
            Some(f @ Frame::Control(_)) => Err(refused(f.control::<Response>()?)),
            Some(other) => Err(ClientError::Protocol(format!("unexpected frame {other:?}"))),
            None => Err(ClientError::Connection(
                "the server closed the stream".into(),
            )),
        }
    }

    /// Opens an append session to `segment` as `writer_id`.
    pub async fn append_session(
        &self,
        segment: &str,
        writer_id: u128,
    ) -> Result<AppendSession, ClientError> {
        let req = Request::SetupAppend {
            segment: segment.into(),
            writer_id,
        };
        match self.open_session(&req).await? {
            (
                send,
                recv,
                Response::AppendSetup {
                    last_event_number,
                    length,
                },
            ) => Ok(AppendSession {
                send,
                acks: Some(AckStream { recv }),
                last_event_number,
                length,
            }),
            (_, _, other) => Err(refused(other)),
        }
    }

    /// Opens a mirror session to `segment`, a segment of a mirror stream (see
    /// [`Client::mirror_stream`]); its `length` says where to continue.
    pub async fn mirror_session(&self, segment: &str) -> Result<MirrorSession, ClientError> {
        let req = Request::SetupMirror {
            segment: segment.into(),
        };
        match self.open_session(&req).await? {
            (send, recv, Response::AppendSetup { length, .. }) => Ok(MirrorSession {
                send,
                acks: Some(MirrorAcks { recv }),
                length,
            }),
            (_, _, other) => Err(refused(other)),
        }
    }

    /// Sends a session's request on a new stream; returns the stream and the reply.
    async fn open_session(
        &self,
        req: &Request,
    ) -> Result<(quinn::SendStream, quinn::RecvStream, Response), ClientError> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(conn_err)?;
        send.write_all(&encode_control(req))
            .await
            .map_err(conn_err)?;
        match read_frame(&mut recv, MAX_FRAME_LEN).await? {
            Some(f) => Ok((send, recv, f.control::<Response>()?)),
            None => Err(ClientError::Connection(
                "the server closed the stream".into(),
            )),
        }
    }

    /// Makes `scope/stream` the mirror of `source`, this client's stream configured
    /// with `config`, and replays the scales of `scales` it does not have yet; each
    /// segment they seal must hold its length in `lengths`. Returns the mirror's
    /// metadata. A mirror fed by another source (another identity, or another stream
    /// id) is refused with [`ErrorCode::Conflict`](crate::wire::ErrorCode::Conflict).
    pub async fn mirror_stream(
        &self,
        scope: &str,
        stream: &str,
        source: &SourceStream,
        config: StreamConfig,
        scales: Vec<ScaleRecord>,
        lengths: Vec<(SegmentId, u64)>,
    ) -> Result<StreamMeta, ClientError> {
        let req = Request::MirrorStream {
            scope: scope.into(),
            stream: stream.into(),
            source: source.clone(),
            config,
            scales,
            lengths,
        };
        self.expect(req, stream_meta).await
    }

    /// Reports this edge's replication lag to the server (for its metrics).
    pub async fn report_replication(
        &self,
        streams: Vec<ReplicationLag>,
    ) -> Result<(), ClientError> {
        self.ok(Request::ReportReplication { streams }).await
    }

    async fn expect<T>(
        &self,
        req: Request,
        pick: impl FnOnce(Response) -> Result<T, Response>,
    ) -> Result<T, ClientError> {
        pick(self.call(&req).await?).map_err(refused)
    }

    /// Creates a scope.
    pub async fn create_scope(&self, scope: &str) -> Result<(), ClientError> {
        self.ok(Request::CreateScope {
            scope: scope.into(),
        })
        .await
    }

    /// All scopes.
    pub async fn list_scopes(&self) -> Result<Vec<String>, ClientError> {
        self.expect(Request::ListScopes, |r| match r {
            Response::Names(n) => Ok(n),
            other => Err(other),
        })
        .await
    }

    /// Deletes an empty scope.
    pub async fn delete_scope(&self, scope: &str) -> Result<(), ClientError> {
        self.ok(Request::DeleteScope {
            scope: scope.into(),
        })
        .await
    }

    /// Creates a stream.
    pub async fn create_stream(
        &self,
        scope: &str,
        stream: &str,
        config: StreamConfig,
    ) -> Result<StreamMeta, ClientError> {
        let req = Request::CreateStream {
            scope: scope.into(),
            stream: stream.into(),
            config,
        };
        self.expect(req, stream_meta).await
    }

    /// Changes a stream's scaling and retention.
    pub async fn update_stream(
        &self,
        scope: &str,
        stream: &str,
        config: StreamConfig,
    ) -> Result<StreamMeta, ClientError> {
        let req = Request::UpdateStream {
            scope: scope.into(),
            stream: stream.into(),
            config,
        };
        self.expect(req, stream_meta).await
    }

    /// The streams of a scope.
    pub async fn list_streams(&self, scope: &str) -> Result<Vec<String>, ClientError> {
        let req = Request::ListStreams {
            scope: scope.into(),
        };
        self.expect(req, |r| match r {
            Response::Names(n) => Ok(n),
            other => Err(other),
        })
        .await
    }

    /// A stream's metadata: segments, ranges, successors, policies.
    pub async fn describe_stream(
        &self,
        scope: &str,
        stream: &str,
    ) -> Result<StreamMeta, ClientError> {
        let req = Request::DescribeStream {
            scope: scope.into(),
            stream: stream.into(),
        };
        self.expect(req, stream_meta).await
    }

    /// Seals `seal` and creates successors over `ranges`; returns the new segments.
    pub async fn scale_stream(
        &self,
        scope: &str,
        stream: &str,
        seal: &[SegmentId],
        ranges: &[KeyRange],
    ) -> Result<Vec<SegmentId>, ClientError> {
        let req = Request::ScaleStream {
            scope: scope.into(),
            stream: stream.into(),
            seal: seal.to_vec(),
            ranges: ranges.to_vec(),
        };
        self.expect(req, |r| match r {
            Response::Segments(s) => Ok(s),
            other => Err(other),
        })
        .await
    }

    /// Seals a stream.
    pub async fn seal_stream(&self, scope: &str, stream: &str) -> Result<(), ClientError> {
        self.ok(Request::SealStream {
            scope: scope.into(),
            stream: stream.into(),
        })
        .await
    }

    /// Drops everything before `cut`.
    pub async fn truncate_stream(
        &self,
        scope: &str,
        stream: &str,
        cut: &StreamCut,
    ) -> Result<(), ClientError> {
        self.ok(Request::TruncateStream {
            scope: scope.into(),
            stream: stream.into(),
            cut: cut.clone(),
        })
        .await
    }

    /// Deletes a sealed stream.
    pub async fn delete_stream(&self, scope: &str, stream: &str) -> Result<(), ClientError> {
        self.ok(Request::DeleteStream {
            scope: scope.into(),
            stream: stream.into(),
        })
        .await
    }

    /// The stream's tail.
    pub async fn stream_tail(&self, scope: &str, stream: &str) -> Result<StreamCut, ClientError> {
        let req = Request::StreamTail {
            scope: scope.into(),
            stream: stream.into(),
        };
        self.expect(req, cut).await
    }

    /// What each segment of the stream holds from `writer_id`.
    pub async fn writer_positions(
        &self,
        scope: &str,
        stream: &str,
        writer_id: u128,
    ) -> Result<Vec<WriterPosition>, ClientError> {
        let req = Request::WriterPositions {
            scope: scope.into(),
            stream: stream.into(),
            writer_id,
        };
        self.expect(req, |r| match r {
            Response::WriterPositions(p) => Ok(p),
            other => Err(other),
        })
        .await
    }

    /// Creates a reader group on the stream set `streams` of `scope` — a stream name,
    /// or names and patterns (`sensors-*`, which takes in new streams as they appear),
    /// comma-separated — starting at `from` (nothing happens if it exists for this
    /// set).
    pub async fn create_reader_group(
        &self,
        scope: &str,
        group: &str,
        streams: &str,
        from: StartFrom,
    ) -> Result<(), ClientError> {
        self.ok(Request::CreateReaderGroup {
            scope: scope.into(),
            group: group.into(),
            streams: streams.into(),
            from,
        })
        .await
    }

    /// Deletes a reader group.
    pub async fn delete_reader_group(&self, scope: &str, group: &str) -> Result<(), ClientError> {
        self.ok(Request::DeleteReaderGroup {
            scope: scope.into(),
            group: group.into(),
        })
        .await
    }

    /// A reader's sync with its group (see [`crate::stream::GroupState`]).
    pub async fn sync_reader(
        &self,
        scope: &str,
        group: &str,
        reader: &str,
        report: ReaderReport,
        leave: bool,
    ) -> Result<Vec<(GroupSegment, u64)>, ClientError> {
        let req = Request::SyncReader {
            scope: scope.into(),
            group: group.into(),
            reader: reader.into(),
            report,
            leave,
        };
        self.expect(req, |r| match r {
            Response::Assignment(a) => Ok(a),
            other => Err(other),
        })
        .await
    }

    /// A reader group's stream, readers, position and checkpoints.
    pub async fn describe_reader_group(
        &self,
        scope: &str,
        group: &str,
    ) -> Result<GroupInfo, ClientError> {
        let req = Request::DescribeReaderGroup {
            scope: scope.into(),
            group: group.into(),
        };
        self.expect(req, |r| match r {
            Response::Group(g) => Ok(g),
            other => Err(other),
        })
        .await
    }

    /// Saves the group's position as checkpoint `name` and returns it.
    pub async fn checkpoint(
        &self,
        scope: &str,
        group: &str,
        name: &str,
    ) -> Result<GroupCut, ClientError> {
        let req = Request::Checkpoint {
            scope: scope.into(),
            group: group.into(),
            name: name.into(),
        };
        self.expect(req, group_cut).await
    }

    /// Checkpoint `name` of a group, or its current position for `None`.
    pub async fn group_position(
        &self,
        scope: &str,
        group: &str,
        name: Option<&str>,
    ) -> Result<GroupCut, ClientError> {
        let req = Request::GroupPosition {
            scope: scope.into(),
            group: group.into(),
            name: name.map(str::to_string),
        };
        self.expect(req, group_cut).await
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"bye");
        self.endpoint.wait_idle().await;
    }
}

fn stream_meta(r: Response) -> Result<StreamMeta, Response> {
    match r {
        Response::Stream(m) => Ok(*m),
        other => Err(other),
    }
}

fn group_cut(r: Response) -> Result<GroupCut, Response> {
    match r {
        Response::GroupCut(c) => Ok(c),
        other => Err(other),
    }
}

fn cut(r: Response) -> Result<StreamCut, Response> {
    match r {
        Response::Cut(c) => Ok(c),
        other => Err(other),
    }
}

/// The acknowledgements of an append session, in order.
#[derive(Debug)]
pub struct AckStream {
    recv: quinn::RecvStream,
}

impl AckStream {
    /// The next acknowledgement; `None` when the server ended the session cleanly
    /// (after the client finished it).
    pub async fn next(&mut self) -> Result<Option<Ack>, ClientError> {
        match read_frame(&mut self.recv, MAX_FRAME_LEN).await? {
            Some(f) => match f.control::<Response>()? {
                Response::Appended {
                    event_number,
                    end_offset,
                    duplicate,
                } => Ok(Some(Ack {
                    event_number,
                    end_offset,
                    duplicate,
                })),
                other => Err(refused(other)),
            },
            None => Ok(None),
        }
    }
}

/// An acknowledgement of an append session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Last event number of the acknowledged block.
    pub event_number: i64,
    /// Segment offset after it.
    pub end_offset: u64,
    /// It had been stored before and was not stored again.
    pub duplicate: bool,
}

/// Pipelined appends to one segment: [`AppendSession::send`] does not wait for earlier
/// acknowledgements; [`AppendSession::ack`] returns them in order.
#[derive(Debug)]
pub struct AppendSession {
    send: quinn::SendStream,
    acks: Option<AckStream>,
    /// Last event number the segment held from this writer when the session opened.
    pub last_event_number: Option<i64>,
    /// Segment length when the session opened.
    pub length: u64,
}

impl AppendSession {
    /// Sends a block of `event_count` whole events whose last is number `event_number`:
    /// the bytes of `block`'s pieces in order, handed to QUIC without copying them.
    pub async fn send(
        &mut self,
        event_number: i64,
        event_count: u32,
        block: &[Bytes],
    ) -> Result<(), ClientError> {
        let h = DataHeader::Append {
            event_number,
            event_count,
        };
        write_data_frame(&mut self.send, &h, block)
            .await
            .map_err(conn_err)
    }

    /// The next acknowledgement, in order.
    pub async fn ack(&mut self) -> Result<Ack, ClientError> {
        let Some(acks) = self.acks.as_mut() else {
            return Err(ClientError::InvalidInput(
                "the acknowledgements were taken by take_acks".into(),
            ));
        };
        match acks.next().await? {
            Some(a) => Ok(a),
            None => Err(ClientError::Connection(
                "the server ended the session".into(),
            )),
        }
    }

    /// Takes the acknowledgement half, to read it from another task.
    pub fn take_acks(&mut self) -> Option<AckStream> {
        self.acks.take()
    }

    /// Ends the session after the blocks sent so far.
    pub fn finish(&mut self) -> Result<(), ClientError> {
        self.send.finish().map_err(conn_err)
    }
}

/// The acknowledgements of a mirror session, in order.
#[derive(Debug)]
pub struct MirrorAcks {
    recv: quinn::RecvStream,
}

impl MirrorAcks {
    /// The next acknowledgement; `None` when the server ended the session cleanly
    /// (after the client finished it).
    pub async fn next(&mut self) -> Result<Option<MirrorAck>, ClientError> {
        match read_frame(&mut self.recv, MAX_FRAME_LEN).await? {
            Some(f) => match f.control::<Response>()? {
                Response::Mirrored {
                    end_offset,
                    duplicate,
                } => Ok(Some(MirrorAck {
                    end_offset,
                    duplicate,
                })),
                other => Err(refused(other)),
            },
            None => Ok(None),
        }
    }
}

/// An acknowledgement of a mirror session: the segment holds every byte below
/// `end_offset`, durably.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorAck {
    /// Segment offset after the frame.
    pub end_offset: u64,
    /// Every byte of the frame had been stored before.
    pub duplicate: bool,
}

/// Copies a source segment's bytes into a mirror segment: [`MirrorSession::send`]
/// does not wait for earlier acknowledgements; [`MirrorAcks`] returns them in order.
#[derive(Debug)]
pub struct MirrorSession {
    send: quinn::SendStream,
    acks: Option<MirrorAcks>,
    /// The mirror segment's length when the session opened: where to continue.
    pub length: u64,
}

impl MirrorSession {
    /// Sends the source's bytes at `offset` (handed to QUIC as they are, not copied).
    pub async fn send(&mut self, offset: u64, parts: &[Bytes]) -> Result<(), ClientError> {
        let h = DataHeader::Mirror { offset };
        write_data_frame(&mut self.send, &h, parts)
            .await
            .map_err(conn_err)
    }

    /// Tells the mirror that the source no longer holds its bytes from `gap.from` (where
    /// the mirror ends) to `gap.to`: the mirror stores a gap record and the session
    /// goes on at `gap.to`.
    pub async fn send_gap(&mut self, gap: &crate::event::Gap) -> Result<(), ClientError> {
        let h = DataHeader::MirrorGap { offset: gap.from };
        let mut body = Vec::new();
        ciborium::into_writer(gap, &mut body)
            .map_err(|e| ClientError::Protocol(format!("encoding a gap record: {e}")))?;
        write_data_frame(&mut self.send, &h, &[Bytes::from(body)])
            .await
            .map_err(conn_err)
    }

    /// Sets the QUIC priority of the session's data against the connection's other
    /// streams (higher goes first).
    pub fn set_priority(&self, priority: i32) {
        let _ = self.send.set_priority(priority);
    }

    /// Takes the acknowledgement half, to read it from another task.
    pub fn take_acks(&mut self) -> Option<MirrorAcks> {
        self.acks.take()
    }

    /// Ends the session after the bytes sent so far.
    pub fn finish(&mut self) -> Result<(), ClientError> {
        self.send.finish().map_err(conn_err)
    }
}

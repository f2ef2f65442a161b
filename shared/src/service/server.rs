//! Server side of the segment service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::log::{
    AppendOptions, AttributeCondition, AttributeUpdate, LogError, SegmentLog, Ticket,
};
use crate::wire::{
    encode_control, encode_data, read_frame, DataHeader, ErrorCode, Frame, Request, Response,
    SegmentInfoWire, WireError, MAX_FRAME_LEN, PROTOCOL_VERSION,
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

/// A running segment server.
#[derive(Debug)]
pub struct SegmentServer {
    endpoint: quinn::Endpoint,
    accept: tokio::task::JoinHandle<()>,
}

impl SegmentServer {
    /// Listens on `addr` (port 0 picks one) and serves `log` to clients whose
    /// certificates `tls` accepts.
    pub fn start(
        addr: SocketAddr,
        tls: quinn::ServerConfig,
        log: Arc<SegmentLog>,
    ) -> std::io::Result<Self> {
        let endpoint = quinn::Endpoint::server(tls, addr)?;
        let ep = endpoint.clone();
        let accept = tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(conn) => serve_connection(conn, log).await,
                        Err(e) => tracing::info!(error = %e, "connection refused during handshake"),
                    }
                });
            }
        });
        Ok(SegmentServer { endpoint, accept })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Stops accepting, closes every connection and waits until they are gone.
    pub async fn shutdown(self) {
        self.endpoint.close(0u32.into(), b"server shutting down");
        self.accept.abort();
        self.endpoint.wait_idle().await;
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

async fn serve_connection(conn: quinn::Connection, log: Arc<SegmentLog>) {
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
    let answer = match hello {
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
        // Let the error reply reach the client before closing.
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
        conn.close(REFUSED.into(), b"handshake failed");
        return;
    }
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(serve_stream(send, recv, log.clone()));
    }
}

/// One request: read it, answer it, finish the stream. A bad frame gets an error reply
/// and closes only this stream.
async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    log: Arc<SegmentLog>,
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
            let _ = reply(&mut send, &wire_error(&e)).await;
            let _ = recv.stop(REFUSED.into());
            let _ = send.finish();
            return;
        }
    };
    let answer = match req {
        Request::SetupAppend { segment, writer_id } => {
            return append_session(send, recv, log, segment, writer_id).await;
        }
        Request::Read {
            segment,
            offset,
            max_len,
            wait_ms,
        } => {
            let wait = Duration::from_millis(u64::from(wait_ms.min(MAX_WAIT_MS)));
            match log
                .read(&segment, offset, max_len.min(MAX_READ_LEN) as usize, wait)
                .await
            {
                Ok(r) => {
                    let h = DataHeader::Read {
                        offset: r.offset,
                        end_of_segment: r.end_of_segment,
                    };
                    let sent = async {
                        send.write_all(&encode_data(&h, r.data.len())).await?;
                        send.write_all(&r.data).await
                    };
                    let _ = sent.await;
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
        other => control(&log, other).await,
    };
    let _ = reply(&mut send, &answer).await;
    let _ = send.finish();
}

async fn control(log: &SegmentLog, req: Request) -> Response {
    let done = |r: Result<(), LogError>| match r {
        Ok(()) => Response::Ok,
        Err(e) => Response::error(&e),
    };
    match req {
        Request::CreateSegment { segment } => done(log.create(&segment).await),
        Request::SealSegment { segment } => done(log.seal(&segment).await.map(|_| ())),
        Request::TruncateSegment { segment, offset } => done(log.truncate(&segment, offset).await),
        Request::MergeSegments { target, source } => {
            done(log.merge(&target, &source).await.map(|_| ()))
        }
        Request::DeleteSegment { segment } => done(log.delete(&segment).await),
        Request::SegmentInfo { segment } => match log.info(&segment) {
            Ok(i) => Response::Info(SegmentInfoWire {
                name: i.name,
                start: i.start,
                length: i.length,
                sealed: i.sealed,
            }),
            Err(e) => Response::error(&e),
        },
        Request::Hello { .. } | Request::SetupAppend { .. } | Request::Read { .. } => {
            error(ErrorCode::UnexpectedMessage, "not a control request")
        }
    }
}

/// What the acknowledging task sends, in order.
enum Pending {
    Stored {
        event_number: i64,
        end_offset: u64,
        ticket: Ticket,
    },
    Duplicate {
        event_number: i64,
        end_offset: u64,
    },
    Failed(Response),
}

/// An append session: data frames in, `Appended` acknowledgements out, in order. Each
/// block is stored with the writer's attribute set to its last event number under the
/// condition "greater than stored", so a resent block is acknowledged as a duplicate
/// and not stored again.
async fn append_session(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    log: Arc<SegmentLog>,
    segment: String,
    writer_id: u128,
) {
    let setup = match log.info(&segment) {
        Ok(i) => Response::AppendSetup {
            last_event_number: i.attributes.get(&writer_id).copied(),
            length: i.length,
        },
        Err(e) => Response::error(&e),
    };
    let ok = matches!(setup, Response::AppendSetup { .. });
    if reply(&mut send, &setup).await.is_err() || !ok {
        let _ = send.finish();
        return;
    }
    let (tx, mut rx) = mpsc::channel::<Pending>(MAX_UNACKED_APPENDS);
    let acker = {
        let log = log.clone();
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                let r = match p {
                    Pending::Stored {
                        event_number,
                        end_offset,
                        ticket,
                    } => match log.durable(ticket).await {
                        Ok(()) => Response::Appended {
                            event_number,
                            end_offset,
                            duplicate: false,
                        },
                        Err(e) => Response::error(&e),
                    },
                    Pending::Duplicate {
                        event_number,
                        end_offset,
                    } => Response::Appended {
                        event_number,
                        end_offset,
                        duplicate: true,
                    },
                    Pending::Failed(r) => r,
                };
                let last = matches!(r, Response::Error { .. });
                if reply(&mut send, &r).await.is_err() || last {
                    break;
                }
            }
            let _ = send.finish();
        })
    };
    loop {
        let frame = match read_frame(&mut recv, MAX_FRAME_LEN).await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                let _ = tx.send(Pending::Failed(wire_error(&e))).await;
                let _ = recv.stop(REFUSED.into());
                break;
            }
        };
        let (event_number, data) = match frame {
            Frame::Data(DataHeader::Append { event_number, .. }, data) => (event_number, data),
            _ => {
                let r = error(
                    ErrorCode::UnexpectedMessage,
                    "expected an append data frame",
                );
                let _ = tx.send(Pending::Failed(r)).await;
                let _ = recv.stop(REFUSED.into());
                break;
            }
        };
        let p = append_block(&log, &segment, writer_id, event_number, &data).await;
        let stop = matches!(p, Pending::Failed(_));
        if tx.send(p).await.is_err() || stop {
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
    data: &Bytes,
) -> Pending {
    let opts = AppendOptions {
        expected_length: None,
        attributes: vec![AttributeUpdate {
            id: writer_id,
            value: event_number,
            condition: AttributeCondition::Greater,
        }],
    };
    loop {
        match log.submit_append(segment, data, &opts) {
            Ok((offset, ticket)) => {
                return Pending::Stored {
                    event_number,
                    end_offset: offset + data.len() as u64,
                    ticket,
                }
            }
            Err(LogError::Backpressure(_)) => log.wait_for_room().await,
            Err(LogError::AttributeConflict { .. }) => {
                let end_offset = log.info(segment).map(|i| i.length).unwrap_or(0);
                return Pending::Duplicate {
                    event_number,
                    end_offset,
                };
            }
            Err(e) => return Pending::Failed(Response::error(&e)),
        }
    }
}

//! The wire protocol: one codec, used by the server and the client.
//!
//! Everything runs over QUIC with TLS 1.3 and mutual authentication (ALPN
//! [`ALPN`]). Each request opens its own bidirectional QUIC stream, so a bad request
//! closes only that stream. On every stream, messages are frames:
//!
//! ```text
//! frame:   len u32 BE (bytes after this field, at most MAX_FRAME_LEN)
//!          kind u8    1 = control, 2 = data
//! control: CBOR of a `Request` (client to server) or `Response` (server to client)
//! data:    header_len u16 BE, CBOR of a `DataHeader`, then raw payload bytes
//!          (appended or read segment bytes, never re-encoded)
//! ```
//!
//! A connection starts with a stream carrying `Request::Hello` (the versions the client
//! speaks), answered by `Response::HelloOk` with the version chosen, or an error, after
//! which the server closes the connection. See `docs/protocol.md`.

mod codec;
mod messages;

pub use codec::{
    decode_frame, encode_control, read_data_frame, read_frame, write_data_frame, Frame, WireError,
};
pub use messages::{
    DataHeader, ErrorCode, GroupInfo, ReplicationLag, Request, Response, SegmentInfoWire,
    StartFrom, WriterPosition,
};

/// ALPN protocol id of Tributary's protocol.
pub const ALPN: &[u8] = b"tributary";
/// Protocol version this build speaks. 2: mirror streams have one source (`MirrorStream`
/// says which edge stream it copies), reader groups read stream sets (segments named
/// with their stream, positions a cut per stream). Version 1 peers are refused with
/// `UnsupportedVersion` at the handshake. Gap records (`DataHeader::MirrorGap`) came
/// later within version 2: an older server refuses the frame, and an older reader stops
/// at a gap record as at an event too large to take.
pub const PROTOCOL_VERSION: u16 = 2;
/// Largest frame, header included: 16 MiB of payload plus room for headers.
pub const MAX_FRAME_LEN: usize = (16 << 20) + 4096;

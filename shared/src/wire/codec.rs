//! Frame encoding and decoding. Pure functions plus one async reader.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::messages::DataHeader;
use super::MAX_FRAME_LEN;

const KIND_CONTROL: u8 = 1;
const KIND_DATA: u8 = 2;

/// Why bytes on a stream are not a frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A frame announced more bytes than allowed.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame's bytes do not decode.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The stream failed or ended mid-frame.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A control message, still CBOR (decode with [`Frame::control`]).
    Control(Bytes),
    /// A data frame: header and raw payload.
    Data(DataHeader, Bytes),
}

impl Frame {
    /// Decodes a control frame's message.
    pub fn control<T: DeserializeOwned>(&self) -> Result<T, WireError> {
        match self {
            Frame::Control(b) => ciborium::from_reader(b.as_ref())
                .map_err(|e| WireError::Malformed(format!("control message: {e}"))),
            Frame::Data(..) => Err(WireError::Malformed(
                "expected a control message, got data".into(),
            )),
        }
    }
}

/// Encodes a control message as a frame.
pub fn encode_control<T: Serialize>(msg: &T) -> Bytes {
    let mut body = Vec::new();
    // Serializing our own message types into a Vec cannot fail.
    let _ = ciborium::into_writer(msg, &mut body);
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.put_u32((1 + body.len()) as u32);
    out.put_u8(KIND_CONTROL);
    out.put_slice(&body);
    out.freeze()
}

/// Encodes a data frame's header; the payload is written after it as is. Returns the
/// header bytes to send before `payload_len` bytes of payload (see
/// [`write_data_frame`]).
fn encode_data(header: &DataHeader, payload_len: usize) -> Bytes {
    let mut h = Vec::new();
    let _ = ciborium::into_writer(header, &mut h);
    let mut out = BytesMut::with_capacity(7 + h.len());
    out.put_u32((1 + 2 + h.len() + payload_len) as u32);
    out.put_u8(KIND_DATA);
    out.put_u16(h.len() as u16);
    out.put_slice(&h);
    out.freeze()
}

/// Decodes one frame body (the bytes after the length field).
pub fn decode_frame(mut body: Bytes) -> Result<Frame, WireError> {
    if body.is_empty() {
        return Err(WireError::Malformed("empty frame".into()));
    }
    match body.get_u8() {
        KIND_CONTROL => Ok(Frame::Control(body)),
        KIND_DATA => {
            if body.len() < 2 {
                return Err(WireError::Malformed("data frame without header".into()));
            }
            let hlen = body.get_u16() as usize;
            if body.len() < hlen {
                return Err(WireError::Malformed("data header longer than frame".into()));
            }
            let header = decode_data_header(&body.split_to(hlen))?;
            Ok(Frame::Data(header, body))
        }
        k => Err(WireError::Malformed(format!("unknown frame kind {k}"))),
    }
}

fn decode_data_header(h: &[u8]) -> Result<DataHeader, WireError> {
    ciborium::from_reader(h).map_err(|e| WireError::Malformed(format!("data header: {e}")))
}

/// Reads one frame; `Ok(None)` at a clean end of stream. Refuses a frame longer than
/// `max_len` before reading it.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_len: usize,
) -> Result<Option<Frame>, WireError> {
    let Some(len) = read_len(r, max_len).await? else {
        return Ok(None);
    };
    // Read into uninitialised capacity: a data frame is up to a mebibyte, and zeroing
    // it first cost as much as reading it.
    let mut body = BytesMut::with_capacity(len);
    while body.len() < len {
        let want = len - body.len();
        let mut rest = (&mut body).limit(want);
        if r.read_buf(&mut rest).await? == 0 {
            return Err(WireError::Malformed("stream ended inside a frame".into()));
        }
    }
    decode_frame(body.freeze()).map(Some)
}

/// Writes one data frame to a QUIC stream: `header`, then `payload`'s pieces handed to
/// QUIC as they are (not copied).
pub async fn write_data_frame(
    w: &mut quinn::SendStream,
    header: &DataHeader,
    payload: &[Bytes],
) -> Result<(), quinn::WriteError> {
    let len = payload.iter().map(Bytes::len).sum();
    let mut frame = Vec::with_capacity(payload.len() + 1);
    frame.push(encode_data(header, len));
    frame.extend_from_slice(payload);
    w.write_all_chunks(&mut frame).await
}

/// Reads one data frame from a QUIC stream, its payload as the pieces it arrived in
/// (appended to `payload`), so a server stores it without copying it first; `Ok(None)`
/// at a clean end of stream. Anything but a data frame is an error. Refuses a frame
/// longer than `max_len` before reading it.
pub async fn read_data_frame(
    r: &mut quinn::RecvStream,
    max_len: usize,
    payload: &mut Vec<Bytes>,
) -> Result<Option<DataHeader>, WireError> {
    let Some(len) = read_len(r, max_len).await? else {
        return Ok(None);
    };
    let ended = |e| match e {
        quinn::ReadExactError::FinishedEarly(_) => {
            WireError::Malformed("stream ended inside a frame".into())
        }
        quinn::ReadExactError::ReadError(e) => WireError::Io(e.into()),
    };
    let mut head = [0u8; 3];
    if len < head.len() {
        return Err(WireError::Malformed("data frame without header".into()));
    }
    r.read_exact(&mut head).await.map_err(ended)?;
    if head[0] != KIND_DATA {
        return Err(WireError::Malformed(format!(
            "expected a data frame, got one of kind {}",
            head[0]
        )));
    }
    let hlen = usize::from(u16::from_be_bytes([head[1], head[2]]));
    let Some(mut rest) = len.checked_sub(head.len() + hlen) else {
        return Err(WireError::Malformed("data header longer than frame".into()));
    };
    let mut h = vec![0u8; hlen];
    r.read_exact(&mut h).await.map_err(ended)?;
    let header = decode_data_header(&h)?;
    while rest > 0 {
        let Some(chunk) = r
            .read_chunk(rest, true)
            .await
            .map_err(|e| WireError::Io(e.into()))?
        else {
            return Err(WireError::Malformed("stream ended inside a frame".into()));
        };
        rest -= chunk.bytes.len();
        payload.push(chunk.bytes);
    }
    Ok(Some(header))
}

/// Reads a frame's length field; `Ok(None)` at a clean end of stream.
async fn read_len<R: AsyncRead + Unpin>(
    r: &mut R,
    max_len: usize,
) -> Result<Option<usize>, WireError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(WireError::Malformed(
                "stream ended inside a frame header".into(),
            ));
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max_len.min(MAX_FRAME_LEN) {
        return Err(WireError::TooLarge {
            len,
            max: max_len.min(MAX_FRAME_LEN),
        });
    }
    Ok(Some(len))
}

#[cfg(test)]
mod tests {
    use super::super::messages::{Request, Response};
    use super::*;

    #[tokio::test]
    async fn control_and_data_roundtrip_through_a_stream() {
        let req = Request::Read {
            segment: "s/0".into(),
            offset: 7,
            max_len: 100,
            wait_ms: 5,
        };
        let mut wire = encode_control(&req).to_vec();
        let payload = b"raw bytes, not re-encoded";
        let h = DataHeader::Append {
            event_number: 3,
            event_count: 2,
        };
        wire.extend_from_slice(&encode_data(&h, payload.len()));
        wire.extend_from_slice(payload);
        let mut r = &wire[..];
        let f = read_frame(&mut r, MAX_FRAME_LEN)
            .await
            .expect("ok")
            .expect("frame");
        assert_eq!(f.control::<Request>().expect("request"), req);
        let f = read_frame(&mut r, MAX_FRAME_LEN)
            .await
            .expect("ok")
            .expect("frame");
        assert_eq!(f, Frame::Data(h, Bytes::from_static(payload)));
        assert!(read_frame(&mut r, MAX_FRAME_LEN)
            .await
            .expect("ok")
            .is_none());
    }

    #[tokio::test]
    async fn oversized_truncated_and_garbage_frames_are_errors() {
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1];
        assert!(matches!(
            read_frame(&mut r, MAX_FRAME_LEN).await,
            Err(WireError::TooLarge { .. })
        ));
        let full = encode_control(&Response::Ok);
        let mut r = &full[..full.len() - 1];
        assert!(matches!(
            read_frame(&mut r, MAX_FRAME_LEN).await,
            Err(WireError::Malformed(_))
        ));
        let mut r: &[u8] = &[0, 0, 0, 3, 1, 0xff, 0xff];
        let f = read_frame(&mut r, MAX_FRAME_LEN).await.expect("a frame");
        assert!(f.expect("some").control::<Request>().is_err());
        let mut r: &[u8] = &[0, 0, 0, 1, 9];
        assert!(read_frame(&mut r, MAX_FRAME_LEN).await.is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_frame_bodies_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            if let Ok(f) = decode_frame(Bytes::from(b)) {
                let _ = f.control::<Request>();
                let _ = f.control::<Response>();
            }
        }
    }
}

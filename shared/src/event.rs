//! Events inside a segment. Each is framed as
//!
//! ```text
//! len      u32 BE   bytes after this field (key_len + key + payload)
//! key_len  u16 BE
//! key      routing key bytes (may be empty)
//! payload
//! ```
//!
//! The segment log stores bytes; this framing is how writers and readers agree on where
//! one event ends and which routing key it was written with.
//!
//! A *large* event (more than one log append, up to [`MAX_LARGE_EVENT_BYTES`]) has the
//! same frame, only long: it is written in chunks into a temporary segment that is then
//! merged onto the stream segment in one atomic step (see
//! [`crate::controller::Controller::append_large_event`] and
//! [`crate::service::EventWriter::write_large`]), and readers reassemble it from as
//! many reads as it takes.
//!
//! A **gap record** marks data that a mirror stream's source gave up before the cloud
//! had it (see [`Gap`]). It has the same framing with the top bit of `len` set (no
//! event comes near 2 GiB), an empty key, and a CBOR [`Gap`] as its payload; readers
//! hand it out as a distinct item, never as an event.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::log::{AttributeCondition, AttributeId, AttributeUpdate};

/// Bytes of framing around the key and the payload.
pub const EVENT_HEADER_LEN: usize = 6;
/// Longest routing key.
pub const MAX_KEY_LEN: usize = u16::MAX as usize;
/// Largest payload of one event written in chunks (a large event): 1 GiB.
pub const MAX_LARGE_EVENT_BYTES: u64 = 1 << 30;
/// Most bytes one event may take in a segment: the largest payload with the longest
/// routing key and the framing. Readers hold up to this much by default.
pub const MAX_FRAMED_EVENT_BYTES: u64 =
    MAX_LARGE_EVENT_BYTES + (EVENT_HEADER_LEN + MAX_KEY_LEN) as u64;

/// Segment attribute: the events stored in the segment. Every path that appends events
/// keeps it (the segment service's appends and large events, the edge's sources), by
/// adding to it ([`AttributeCondition::Add`]), so `status` counts every event.
pub const EVENTS_ATTRIBUTE: AttributeId = 0x7472_6962_6564_6765_0000_0000_0000_0001;
/// Segment attribute: when the last of them was stored, in ms since the Unix epoch.
pub const LAST_EVENT_ATTRIBUTE: AttributeId = 0x7472_6962_6564_6765_0000_0000_0000_0002;

/// The attribute updates that count `n` events stored now (see [`EVENTS_ATTRIBUTE`]).
pub fn counted(n: u64) -> [AttributeUpdate; 2] {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    [
        AttributeUpdate {
            id: EVENTS_ATTRIBUTE,
            value: i64::try_from(n).unwrap_or(i64::MAX),
            condition: AttributeCondition::Add,
        },
        AttributeUpdate {
            id: LAST_EVENT_ATTRIBUTE,
            value: now,
            condition: AttributeCondition::Always,
        },
    ]
}

/// The bit of an event's length field that marks a gap record.
const GAP_FLAG: u32 = 1 << 31;

/// One event as read back from a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Routing key it was written with.
    pub key: Bytes,
    /// Payload (of a gap record: the record's CBOR).
    pub payload: Bytes,
    /// Set when this is a gap record, not an event.
    pub gap: Option<Gap>,
}

/// Data a mirror stream's source gave up before the cloud had it: the edge truncated
/// (its disk budget, retention, a user, a repair) bytes it had not replicated. The
/// mirror then holds this record where the bytes would have been, and goes on with
/// what follows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The source segment (its name on the edge).
    pub segment: String,
    /// First byte lost, as an offset in the source segment.
    pub from: u64,
    /// End of the bytes lost (the first one the mirror has again).
    pub to: u64,
    /// Events lost, when the edge counted them as it dropped them.
    pub events: Option<u64>,
    /// Why the edge gave them up.
    pub reason: String,
    /// When the edge dropped them (ms since the Unix epoch), when it recorded that.
    pub dropped_ms: Option<u64>,
    /// When the edge found the cloud lacked them and sent this record.
    pub noticed_ms: u64,
}

impl Gap {
    /// Bytes lost.
    pub fn bytes(&self) -> u64 {
        self.to.saturating_sub(self.from)
    }
}

/// A gap record framed for a segment.
pub fn frame_gap(gap: &Gap) -> Bytes {
    let mut body = Vec::new();
    // Serializing a struct of strings and integers into memory does not fail.
    let _ = ciborium::into_writer(gap, &mut body);
    let mut b = BytesMut::with_capacity(EVENT_HEADER_LEN + body.len());
    b.put_u32(GAP_FLAG | (2 + body.len()) as u32);
    b.put_u16(0);
    b.put_slice(&body);
    b.freeze()
}

/// Bytes an event of this key and payload takes in a segment.
pub fn framed_len(key: &[u8], payload: &[u8]) -> usize {
    EVENT_HEADER_LEN + key.len() + payload.len()
}

/// Appends one framed event to `out`. The caller keeps `key` within [`MAX_KEY_LEN`]
/// and the framed event within `u32` (the writer checks both).
pub fn encode_event(out: &mut BytesMut, key: &[u8], payload: &[u8]) {
    out.reserve(framed_len(key, payload));
    out.put_u32((2 + key.len() + payload.len()) as u32);
    out.put_u16(key.len() as u16);
    out.put_slice(key);
    out.put_slice(payload);
}

/// The framing of an event whose `payload_len` payload bytes follow it, as written
/// ahead of a large event's payload. Refuses a key above [`MAX_KEY_LEN`] and a payload
/// above [`MAX_LARGE_EVENT_BYTES`].
pub fn event_header(key: &[u8], payload_len: u64) -> Result<Bytes, String> {
    if key.len() > MAX_KEY_LEN {
        return Err(format!(
            "routing key of {} bytes; the limit is {MAX_KEY_LEN}",
            key.len()
        ));
    }
    if payload_len > MAX_LARGE_EVENT_BYTES {
        return Err(format!(
            "event of {payload_len} bytes; the limit is {MAX_LARGE_EVENT_BYTES}"
        ));
    }
    let mut b = BytesMut::with_capacity(EVENT_HEADER_LEN + key.len());
    // Within u32: the payload limit plus the longest key is far below 4 GiB.
    b.put_u32((2 + key.len() as u64 + payload_len) as u32);
    b.put_u16(key.len() as u16);
    b.put_slice(key);
    Ok(b.freeze())
}

/// Bytes the event framed at the start of `buf` takes, framing included, read from its
/// length field; `None` while fewer than 4 bytes are there. Says nothing about whether
/// the rest of the frame is valid.
pub fn framed_len_at(buf: &[u8]) -> Option<u64> {
    let len: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    Some(4 + u64::from(u32::from_be_bytes(len) & !GAP_FLAG))
}

/// One framed event as a new buffer.
pub fn frame_event(key: &[u8], payload: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    encode_event(&mut b, key, payload);
    b.freeze()
}

/// Bytes in a segment that are not a valid event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed event at byte {at} of the block: {reason}")]
pub struct MalformedEvent {
    /// Position in the buffer.
    pub at: usize,
    /// What is wrong.
    pub reason: &'static str,
}

/// Splits whole events off the front of `buf`; returns them and how many bytes they
/// took. A partial event at the end is left for the next read.
pub fn decode_events(buf: &Bytes) -> Result<(Vec<Event>, usize), MalformedEvent> {
    let mut events = Vec::new();
    let mut pos = 0;
    while buf.len() - pos >= EVENT_HEADER_LEN {
        let field = u32::from_be_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]);
        let len = (field & !GAP_FLAG) as usize;
        if len < 2 {
            return Err(MalformedEvent {
                at: pos,
                reason: "length shorter than its key length field",
            });
        }
        if buf.len() - pos - 4 < len {
            break;
        }
        let key_len = u16::from_be_bytes([buf[pos + 4], buf[pos + 5]]) as usize;
        if key_len > len - 2 {
            return Err(MalformedEvent {
                at: pos,
                reason: "key longer than the event",
            });
        }
        let key_start = pos + EVENT_HEADER_LEN;
        let payload = buf.slice(key_start + key_len..pos + 4 + len);
        let gap = if field & GAP_FLAG == 0 {
            None
        } else if key_len > 0 {
            return Err(MalformedEvent {
                at: pos,
                reason: "a gap record with a routing key",
            });
        } else {
            Some(
                ciborium::from_reader(&payload[..]).map_err(|_| MalformedEvent {
                    at: pos,
                    reason: "a gap record that does not decode",
                })?,
            )
        };
        events.push(Event {
            key: buf.slice(key_start..key_start + key_len),
            payload,
            gap,
        });
        pos += 4 + len;
    }
    Ok((events, pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_with_partial_tail() {
        let mut b = BytesMut::new();
        encode_event(&mut b, b"k1", b"one");
        encode_event(&mut b, b"", b"");
        encode_event(&mut b, b"key", b"three");
        let all = b.freeze();
        let cut = all.slice(..all.len() - 2);
        let (ev, used) = decode_events(&cut).expect("valid");
        assert_eq!(ev.len(), 2);
        assert_eq!(&ev[0].key[..], b"k1");
        assert_eq!(&ev[0].payload[..], b"one");
        assert!(ev[1].key.is_empty() && ev[1].payload.is_empty());
        assert_eq!(used, framed_len(b"k1", b"one") + framed_len(b"", b""));
        let (ev, used) = decode_events(&all).expect("valid");
        assert_eq!(ev.len(), 3);
        assert_eq!(&ev[2].payload[..], b"three");
        assert_eq!(used, all.len());
    }

    #[test]
    fn a_large_events_header_frames_it_like_any_other() {
        let payload = vec![7u8; 3000];
        let mut whole = BytesMut::from(&event_header(b"cam", 3000).expect("header")[..]);
        whole.extend_from_slice(&payload);
        assert_eq!(whole.freeze(), frame_event(b"cam", &payload));
        assert_eq!(
            framed_len_at(&frame_event(b"cam", &payload)),
            Some(framed_len(b"cam", &payload) as u64)
        );
        assert_eq!(framed_len_at(&[0, 0, 1]), None);
        assert!(event_header(b"", MAX_LARGE_EVENT_BYTES + 1).is_err());
        assert!(event_header(&vec![0; MAX_KEY_LEN + 1], 1).is_err());
    }

    #[test]
    fn a_gap_record_decodes_between_events_and_only_as_a_gap() {
        let gap = Gap {
            segment: "site/s/0.#epoch.0".into(),
            from: 100,
            to: 5000,
            events: Some(7),
            reason: "disk budget".into(),
            dropped_ms: None,
            noticed_ms: 1,
        };
        let mut b = BytesMut::new();
        encode_event(&mut b, b"k", b"before");
        let framed = frame_gap(&gap);
        b.extend_from_slice(&framed);
        encode_event(&mut b, b"k", b"after");
        let all = b.freeze();
        assert_eq!(framed_len_at(&framed), Some(framed.len() as u64));
        let (ev, used) = decode_events(&all).expect("valid");
        assert_eq!(used, all.len());
        assert_eq!(ev.len(), 3);
        assert_eq!((ev[0].gap.as_ref(), ev[2].gap.as_ref()), (None, None));
        assert_eq!(ev[1].gap.as_ref(), Some(&gap));
        assert_eq!(framed_len(&ev[1].key, &ev[1].payload), framed.len());
        // A flagged frame whose body is not a gap record is refused.
        let mut bad = BytesMut::new();
        bad.put_u32(GAP_FLAG | 4);
        bad.put_u16(0);
        bad.put_slice(b"\xff\xff");
        assert!(decode_events(&bad.freeze()).is_err());
    }

    #[test]
    fn garbage_is_refused_not_misread() {
        let bad = Bytes::from_static(&[0, 0, 0, 4, 0, 9, 1, 2]);
        assert!(decode_events(&bad).is_err());
        let bad = Bytes::from_static(&[0, 0, 0, 1, 0, 0, 1, 2]);
        assert!(decode_events(&bad).is_err());
    }
}

//! Events inside a segment: each is a 4-byte big-endian length followed by its bytes.
//! The segment log stores bytes; this framing is how writers and readers agree on
//! where one event ends.

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes the length prefix takes.
pub const EVENT_HEADER_LEN: usize = 4;

/// Appends one framed event to `out`.
pub fn encode_event(out: &mut BytesMut, payload: &[u8]) {
    out.reserve(EVENT_HEADER_LEN + payload.len());
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
}

/// One framed event as a new buffer.
pub fn frame_event(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    encode_event(&mut b, payload);
    b.freeze()
}

/// Splits whole events off the front of `buf`; returns them and how many bytes they
/// took. A partial event at the end is left for the next read.
pub fn decode_events(buf: &Bytes) -> (Vec<Bytes>, usize) {
    let mut events = Vec::new();
    let mut pos = 0;
    while buf.len() - pos >= EVENT_HEADER_LEN {
        let mut h = [0u8; EVENT_HEADER_LEN];
        h.copy_from_slice(&buf[pos..pos + EVENT_HEADER_LEN]);
        let len = u32::from_be_bytes(h) as usize;
        if buf.len() - pos - EVENT_HEADER_LEN < len {
            break;
        }
        events.push(buf.slice(pos + EVENT_HEADER_LEN..pos + EVENT_HEADER_LEN + len));
        pos += EVENT_HEADER_LEN + len;
    }
    (events, pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_with_partial_tail() {
        let mut b = BytesMut::new();
        encode_event(&mut b, b"one");
        encode_event(&mut b, b"");
        encode_event(&mut b, b"three");
        let all = b.freeze();
        let cut = all.slice(..all.len() - 2);
        let (ev, used) = decode_events(&cut);
        assert_eq!(ev, vec![Bytes::from_static(b"one"), Bytes::new()]);
        assert_eq!(used, 11);
        let (ev, used) = decode_events(&all);
        assert_eq!(ev.len(), 3);
        assert_eq!(used, all.len());
    }
}

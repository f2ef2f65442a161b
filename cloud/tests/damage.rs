//! A bit rotted in the log, black-box: the real standalone, two streams written, a
//! SIGKILL, one byte flipped in the data of a frame of the file recovery replays. The
//! node starts; the other stream serves every event; the damaged one serves every
//! event before and after the damaged frame, and a read of it gets an error naming the
//! range; `/health` (200) and `/status` say what is damaged and what to do.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{connect, free_tcp_port, http_get, last_log_file, runtime, Node};
use tributary::event::decode_events;
use tributary::profile::ClientProfile;
use tributary::service::{Client, ClientError, EventWriter, WriterConfig};
use tributary::stream::{segment_name, RetentionPolicy, ScalingPolicy, SegmentId, StreamConfig};
use tributary::wire::ErrorCode;

const EVENTS: usize = 300;

fn payload(stream: &str, i: usize) -> Vec<u8> {
    let mut p = format!("{stream}:{i:05}:").into_bytes();
    p.resize(400, b'.');
    p
}

fn start(dir: &Path, config: &Path, http: SocketAddr) -> Node {
    let config = config.to_str().expect("utf-8 path");
    Node::start(dir, "node.log", &["--config", config], http)
}

fn seg0(stream: &str) -> String {
    segment_name(
        "s",
        stream,
        SegmentId {
            number: 0,
            epoch: 0,
        },
    )
}

/// The payloads of the events in `bytes`, in order.
fn payloads(bytes: &[u8]) -> Vec<Vec<u8>> {
    let (events, used) = decode_events(&bytes::Bytes::copy_from_slice(bytes)).expect("events");
    assert_eq!(used, bytes.len(), "whole events");
    events.into_iter().map(|e| e.payload.to_vec()).collect()
}

/// Every byte of segment `name` from `from` on, or the error that stopped the read.
async fn read_from(c: &Client, name: &str, from: u64) -> (Vec<u8>, Option<ClientError>) {
    let mut out = Vec::new();
    loop {
        match c
            .read(name, from + out.len() as u64, 1 << 20, Duration::ZERO)
            .await
        {
            Ok((b, _)) if b.is_empty() => return (out, None),
            Ok((b, _)) => out.extend_from_slice(&b),
            Err(e) => return (out, Some(e)),
        }
    }
}

/// The position of the data of the `n`th append frame of log file `path` (frames:
/// body_len u32 LE, crc u32, kind u8, batch u64, segment u64, data offset u64,
/// attribute count u16 and attributes, data), and its segment id.
fn nth_append_data(path: &Path, n: usize) -> (u64, u64) {
    let bytes = std::fs::read(path).expect("log file");
    let mut pos = 32;
    let mut seen = 0;
    while pos + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4")) as usize;
        if len == 0 {
            break;
        }
        let body = &bytes[pos + 8..pos + 8 + len];
        if body[0] == 1 {
            let seg = u64::from_le_bytes(body[9..17].try_into().expect("8"));
            let attrs = u16::from_le_bytes(body[25..27].try_into().expect("2")) as usize;
            let data = pos + 8 + 27 + attrs * 24;
            if seen == n && data < pos + 8 + len {
                return (data as u64, seg);
            }
            seen += 1;
        }
        pos += 8 + len;
    }
    panic!("no append frame {n} in {}", path.display());
}

#[test]
fn a_flipped_byte_in_the_replayed_log_file_is_kept_to_its_range_and_the_node_starts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let config = tmp.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[quic]\nlisten = \"127.0.0.1:0\"\n[tier2]\nkind = \"none\"\n",
            data.display()
        ),
    )
    .expect("config");
    let http: SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
    let node = start(tmp.path(), &config, http);
    let profile = ClientProfile::load(data.join("client/profile.toml")).expect("profile");
    let rt = runtime();
    rt.block_on(async {
        let c = connect(&profile).await;
        c.create_scope("s").await.expect("scope");
        for stream in ["a", "b"] {
            let cfg = StreamConfig {
                scaling: ScalingPolicy::Fixed { segments: 1 },
                retention: RetentionPolicy::Forever,
            };
            c.create_stream("s", stream, cfg).await.expect("stream");
        }
        // Many small batches: each flush is a frame of its own.
        for stream in ["a", "b"] {
            let mut w = EventWriter::new(&c, "s", stream, WriterConfig::default())
                .await
                .expect("writer");
            for i in 0..EVENTS {
                w.write(b"k", &payload(stream, i)).await.expect("write");
                if i % 10 == 9 {
                    w.flush().await.expect("flush");
                }
            }
            w.close().await.expect("close");
        }
    });
    node.kill();

    // A bit rots in the data of the 5th append frame of the file recovery replays.
    let active = last_log_file(&data);
    let (at, _) = nth_append_data(&active, 5);
    let mut bytes = std::fs::read(&active).expect("read");
    bytes[at as usize + 100] ^= 0x08;
    std::fs::write(&active, bytes).expect("write");

    let node = start(tmp.path(), &config, http);
    let (code, health) = http_get(http, "/health").expect("health");
    assert_eq!(code, 200, "{health}");
    assert!(health.starts_with("ok\ndamaged: bytes "), "{health}");
    assert!(
        health.contains("stream cut past it"),
        "what to do: {health}"
    );
    let (_, status) = http_get(http, "/status").expect("status");
    assert!(status.contains("\"damaged\":[{"), "{status}");

    let profile = ClientProfile::load(data.join("client/profile.toml")).expect("profile");
    rt.block_on(async {
        let c = connect(&profile).await;
        let mut damaged = None;
        for stream in ["a", "b"] {
            let name = seg0(stream);
            let (before, err) = read_from(&c, &name, 0).await;
            let mut got = payloads(&before);
            if let Some(e) = err {
                // The damaged stream: an error naming the range, then the rest.
                let ClientError::Server {
                    code: ErrorCode::Storage,
                    message,
                } = &e
                else {
                    panic!("expected a storage error naming the range, got {e}");
                };
                let want = format!("bytes {}..", before.len());
                assert!(
                    message.contains(&want) && message.contains(&name),
                    "{message} (want {want})"
                );
                assert!(health.contains(&name), "{health}");
                let to: u64 = message
                    .split(&want)
                    .nth(1)
                    .and_then(|r| r.split(|ch: char| !ch.is_ascii_digit()).next())
                    .and_then(|n| n.parse().ok())
                    .expect("the range's end");
                let (after, err) = read_from(&c, &name, to).await;
                assert!(err.is_none(), "{err:?}");
                let lost = EVENTS - got.len() - payloads(&after).len();
                assert!((1..=10).contains(&lost), "one frame's events lost: {lost}");
                got.extend(payloads(&after));
                damaged = Some((stream, lost));
            } else {
                assert_eq!(got.len(), EVENTS, "the other stream serves every event");
            }
            // In order, every event outside the damaged range.
            let mut want = (0..EVENTS).map(|i| payload(stream, i));
            for p in &got {
                assert!(want.any(|w| &w == p), "out of order or unknown event");
            }
        }
        let (stream, lost) = damaged.expect("one stream is damaged");
        eprintln!("stream {stream}: {lost} events in the damaged frame");
        // Appends go on, in both streams.
        for stream in ["a", "b"] {
            let mut w = EventWriter::new(&c, "s", stream, WriterConfig::default())
                .await
                .expect("writer");
            w.write(b"k", b"after the damage").await.expect("write");
            w.close().await.expect("close");
        }
    });
    let status = node.terminate();
    assert!(status.success(), "exit status {status}");
}

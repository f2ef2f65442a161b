//! Mirror streams and grants over the real segment service (QUIC, mutual TLS): the
//! protocol the edge's replicator speaks, and who may speak it.

mod common;

use bytes::Bytes;

use common::{connect, fixed, serve_with, Node};
use tributary::service::{Access, ClientError, Grant, Verb};
use tributary::stream::{segment_name, SegmentId, SourceStream, StreamMeta};
use tributary::tls::{client_config, CertAuthority, DevPki, Identity};
use tributary::wire::ErrorCode;

fn seg0() -> SegmentId {
    SegmentId {
        number: 0,
        epoch: 0,
    }
}

/// The edge stream `site/s` with id `uid`.
fn source(uid: u128) -> SourceStream {
    SourceStream {
        stream: "site/s".into(),
        uid,
    }
}

/// Makes `scope/stream` the mirror of `source(1)` and copies `bytes` into its first
/// segment, acknowledged; returns that segment's name.
async fn mirror_bytes(
    c: &tributary::service::Client,
    scope: &str,
    stream: &str,
    bytes: &'static [u8],
) -> String {
    c.mirror_stream(scope, stream, &source(1), fixed(1), vec![], vec![])
        .await
        .expect("mirror");
    let name = segment_name(scope, stream, seg0());
    let mut s = c.mirror_session(&name).await.expect("session");
    let mut acks = s.take_acks().expect("acks");
    s.send(0, &[Bytes::from_static(bytes)]).await.expect("send");
    acks.next().await.expect("ack").expect("ack");
    name
}

/// A client of the server at `addr` with the TLS identity `id`.
async fn connect_as(
    addr: std::net::SocketAddr,
    id: &Identity,
) -> Result<tributary::service::Client, ClientError> {
    tributary::service::Client::connect(addr, "localhost", client_config(id).expect("tls")).await
}

fn code(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::Server { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test]
async fn mirror_frames_are_stored_once_at_their_offsets() {
    let node = Node::start().await;
    let c = node.client().await;
    let meta = c
        .mirror_stream("m", "s", &source(1), fixed(1), vec![], vec![])
        .await
        .expect("mirror");
    assert!(meta.mirror);
    let name = segment_name("m", "s", seg0());
    let data: Bytes = (0..100_000u32).map(|i| (i % 251) as u8).collect();

    let mut s = c.mirror_session(&name).await.expect("session");
    assert_eq!(s.length, 0);
    let mut acks = s.take_acks().expect("acks");
    s.send(0, &[data.slice(..10_000), data.slice(10_000..40_000)])
        .await
        .expect("send");
    s.send(40_000, &[data.slice(40_000..60_000)])
        .await
        .expect("send");
    // A resend of the first frame: acknowledged, not stored again.
    s.send(0, &[data.slice(..40_000)]).await.expect("resend");
    // A resend with other boundaries: only what is missing is stored.
    s.send(50_000, &[data.slice(50_000..80_000)])
        .await
        .expect("overlap");
    let a: Vec<_> = [
        acks.next().await,
        acks.next().await,
        acks.next().await,
        acks.next().await,
    ]
    .into_iter()
    .map(|a| a.expect("ack").expect("ack"))
    .collect();
    assert_eq!(
        a.iter()
            .map(|a| (a.end_offset, a.duplicate))
            .collect::<Vec<_>>(),
        vec![
            (40_000, false),
            (60_000, false),
            (40_000, true),
            (80_000, false)
        ]
    );
    // A frame beyond the end would leave a gap: refused, and the session ends.
    s.send(90_000, &[data.slice(90_000..)]).await.expect("send");
    let e = acks.next().await.expect_err("gap refused");
    assert_eq!(code(&e), Some(ErrorCode::Conflict), "{e}");
    assert!(e.to_string().contains("80000"), "{e}");

    // A new session resumes at the length.
    let mut s = c.mirror_session(&name).await.expect("session");
    assert_eq!(s.length, 80_000);
    let mut acks = s.take_acks().expect("acks");
    s.send(80_000, &[data.slice(80_000..)]).await.expect("send");
    s.finish().expect("finish");
    assert_eq!(
        acks.next().await.expect("ack").expect("ack").end_offset,
        100_000
    );
    assert!(acks.next().await.expect("end").is_none());
    let mut got = Vec::new();
    while got.len() < data.len() {
        let (b, _) = c
            .read(&name, got.len() as u64, 1 << 20, std::time::Duration::ZERO)
            .await
            .expect("read");
        got.extend_from_slice(&b);
    }
    assert_eq!(got, data, "the mirror segment is byte-identical");

    // Only replication writes to a mirror, and it scales only with its source.
    let e = c
        .append_session(&name, 7)
        .await
        .expect_err("append refused");
    assert_eq!(code(&e), Some(ErrorCode::Unauthorized), "{e}");
    let temp = tributary::stream::large_event_segment_name();
    c.create_segment(&temp).await.expect("temporary segment");
    let e = c
        .merge_segments(&name, &temp)
        .await
        .expect_err("a merge into a mirror refused");
    assert_eq!(code(&e), Some(ErrorCode::Unauthorized), "{e}");
    let r = meta.segments[&0].range.split(2);
    let e = c
        .scale_stream("m", "s", &[seg0()], &r)
        .await
        .expect_err("scale refused");
    assert!(e.to_string().contains("mirror"), "{e}");
    // A plain stream is not a mirror, and stays what it is.
    c.create_stream("m", "plain", fixed(1))
        .await
        .expect("create");
    let e = c
        .mirror_session(&segment_name("m", "plain", seg0()))
        .await
        .expect_err("not a mirror");
    assert_eq!(code(&e), Some(ErrorCode::Unauthorized), "{e}");
    let e = c
        .mirror_stream("m", "plain", &source(1), fixed(1), vec![], vec![])
        .await
        .expect_err("not a mirror");
    assert!(e.to_string().contains("not a mirror"), "{e}");
}

#[tokio::test]
async fn a_mirror_replays_its_sources_scales_once_their_segments_are_complete() {
    let node = Node::start().await;
    let c = node.client().await;
    // The source: a stream scaled twice.
    let mut src = StreamMeta::new(fixed(1)).expect("meta");
    let all = src.segments[&0].range;
    let split = src.scale(&[seg0()], &all.split(2)).expect("split");
    let merged = src.scale(&split, &[all]).expect("merge");
    let history = src.scale_history();

    let name0 = mirror_bytes(&c, "m", "s", b"0123456789").await;
    // The scale seals segment 0, which holds 10 bytes; the source says 20.
    let e = c
        .mirror_stream(
            "m",
            "s",
            &source(1),
            fixed(1),
            history[..1].to_vec(),
            vec![(seg0(), 20)],
        )
        .await
        .expect_err("incomplete");
    assert!(e.to_string().contains("holds 10 bytes"), "{e}");
    assert!(!c.segment_info(&name0).await.expect("info").sealed);
    // Complete: the scale is replayed, with the source's segment numbers.
    let m = c
        .mirror_stream(
            "m",
            "s",
            &source(1),
            fixed(1),
            history[..1].to_vec(),
            vec![(seg0(), 10)],
        )
        .await
        .expect("replayed");
    assert_eq!(m.epoch, 1);
    assert!(c.segment_info(&name0).await.expect("info").sealed);
    for id in &split {
        assert!(m.segments.contains_key(&id.number));
    }
    // Replaying again is harmless; the next scale needs its own segments' lengths.
    let lengths = vec![(seg0(), 10), (split[0], 0), (split[1], 0)];
    let m = c
        .mirror_stream("m", "s", &source(1), fixed(1), history.clone(), lengths)
        .await
        .expect("second scale");
    assert_eq!(m.epoch, 2);
    assert_eq!(m.segments, src.segments);
    assert_eq!(m.active()[0].id, merged[0]);
}

#[tokio::test]
async fn grants_limit_each_identity_and_a_foreign_ca_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = DevPki::ensure(&dir.path().join("pki"), "admin").expect("pki");
    let ca = CertAuthority::load(&dir.path().join("pki"))
        .expect("ca")
        .expect("ca exists");
    let issue = |name: &str, ca: &CertAuthority, ca_pem: &std::path::Path| {
        let c = ca.issue_client(name, 30).expect("issue");
        let (cert, key) = (
            dir.path().join(format!("{name}.pem")),
            dir.path().join(format!("{name}.key")),
        );
        c.write(&cert, &key).expect("write");
        Identity {
            ca: ca_pem.to_path_buf(),
            cert,
            key,
        }
    };
    let edge = issue("edge-1", &ca, &pki.client.ca);
    let analyst = issue("analyst", &ca, &pki.client.ca);
    let access = Access::granted(vec![
        Grant {
            identity: "admin".into(),
            admin: true,
            ..Grant::default()
        },
        Grant {
            identity: "edge-1".into(),
            admin: false,
            streams: vec!["site/*".into()],
            allow: vec![Verb::Mirror],
        },
        Grant {
            identity: "analyst".into(),
            admin: false,
            streams: vec!["site/temps".into()],
            allow: vec![Verb::Read],
        },
    ]);
    let (server, _controller) = serve_with(
        &dir.path().join("data"),
        &pki,
        ([127, 0, 0, 1], 0).into(),
        access,
    )
    .await;
    let addr = server.local_addr().expect("addr");
    let admin = connect(addr, &pki).await;
    let e1 = connect_as(addr, &edge).await.expect("edge-1 connects");

    e1.mirror_stream("site", "temps", &source(1), fixed(1), vec![], vec![])
        .await
        .expect("granted");
    let e = e1
        .mirror_stream("other", "temps", &source(1), fixed(1), vec![], vec![])
        .await
        .expect_err("not granted");
    assert_eq!(code(&e), Some(ErrorCode::Unauthorized), "{e}");
    assert!(e.to_string().contains("edge-1"), "{e}");
    let e = e1.list_scopes().await.expect_err("admin only");
    assert_eq!(code(&e), Some(ErrorCode::Unauthorized), "{e}");
    // Nothing was written for the refused request.
    assert_eq!(admin.list_scopes().await.expect("admin"), vec!["site"]);

    // A certificate from another CA never gets a connection.
    let foreign_dir = dir.path().join("foreign");
    std::fs::create_dir_all(&foreign_dir).expect("dir");
    let foreign = CertAuthority::generate("foreign").expect("ca");
    foreign.write(&foreign_dir).expect("write");
    let mut id = issue("edge-1", &foreign, &pki.client.ca);
    id.ca = pki.client.ca.clone();
    let r = connect_as(addr, &id).await;
    assert!(r.is_err(), "a foreign CA's certificate was accepted");
    assert_eq!(admin.list_scopes().await.expect("admin"), vec!["site"]);
    // A reader group over a stream the analyst may not read: none of its requests
    // pass, although it may read another stream of the scope.
    admin
        .create_stream("site", "secret", fixed(1))
        .await
        .expect("stream");
    admin
        .create_reader_group("site", "gs", "secret", tributary::wire::StartFrom::Head)
        .await
        .expect("group");
    let a = connect_as(addr, &analyst).await.expect("analyst connects");
    a.create_reader_group("site", "ga", "temps", tributary::wire::StartFrom::Head)
        .await
        .expect("its own group");
    let refused = [
        a.describe_reader_group("site", "gs").await.map(|_| ()),
        a.group_position("site", "gs", None).await.map(|_| ()),
        a.sync_reader("site", "gs", "r", Default::default(), false)
            .await
            .map(|_| ()),
        a.delete_reader_group("site", "gs").await,
    ];
    for r in refused {
        let e = r.expect_err("another stream's group");
        assert_eq!(code(&e), Some(ErrorCode::Unauthorized), "{e}");
        assert!(e.to_string().contains("site/secret"), "{e}");
    }
    a.describe_reader_group("site", "ga")
        .await
        .expect("its own group");
    server.shutdown().await;
}

#[tokio::test]
async fn a_mirror_has_one_source_and_refuses_every_other() {
    let node = Node::start().await;
    // The dev PKI's client ("test-client") feeds the mirror; gateway-b is another edge
    // the same CA signed (no grants: every identity may do everything else).
    let a = node.client().await;
    let ca = CertAuthority::load(&node.dir.path().join("pki"))
        .expect("ca")
        .expect("ca exists");
    let cert = ca.issue_client("gateway-b", 30).expect("issue");
    let b_id = Identity {
        ca: node.pki.client.ca.clone(),
        cert: node.dir.path().join("b.pem"),
        key: node.dir.path().join("b.key"),
    };
    cert.write(&b_id.cert, &b_id.key).expect("write");
    let b = connect_as(node.addr, &b_id)
        .await
        .expect("gateway-b connects");

    // The first source claims the mirror.
    let name = mirror_bytes(&a, "f", "sensors", b"gateway a's bytes").await;

    // Another gateway's stream of the same name: refused, naming the owner.
    let e = b
        .mirror_stream("f", "sensors", &source(1), fixed(1), vec![], vec![])
        .await
        .expect_err("another identity");
    assert_eq!(code(&e), Some(ErrorCode::Conflict), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("test-client's site/s"), "{msg}");
    assert!(msg.contains("gateway-b's site/s"), "{msg}");
    assert!(
        msg.contains("{gateway}"),
        "the hint names the safe form: {msg}"
    );
    // ... and so is a mirror session of its own, which MirrorStream never gave it.
    let e = b.mirror_session(&name).await.expect_err("not the owner");
    assert_eq!(code(&e), Some(ErrorCode::Unauthorized), "{e}");
    assert!(e.to_string().contains("test-client"), "{e}");
    // The same identity with another local stream, or the same stream created anew
    // (a new data dir: a new stream id), is not the source either.
    let other = SourceStream {
        stream: "site/other".into(),
        uid: 1,
    };
    let e = a
        .mirror_stream("f", "sensors", &other, fixed(1), vec![], vec![])
        .await
        .expect_err("another local stream");
    assert_eq!(code(&e), Some(ErrorCode::Conflict), "{e}");
    let e = a
        .mirror_stream("f", "sensors", &source(2), fixed(1), vec![], vec![])
        .await
        .expect_err("a re-created stream");
    assert!(e.to_string().contains("created anew"), "{e}");

    // Nothing was written: the mirror holds gateway a's bytes, and its source is a.
    let (got, _) = a
        .read(&name, 0, 1 << 20, std::time::Duration::ZERO)
        .await
        .expect("read");
    assert_eq!(&got[..], b"gateway a's bytes");
    let meta = a.describe_stream("f", "sensors").await.expect("describe");
    let owner = meta.source.expect("a source is recorded");
    assert_eq!(
        (owner.identity.as_str(), owner.stream),
        ("test-client", source(1))
    );
    // The owner goes on where it was.
    let s = a.mirror_session(&name).await.expect("session");
    assert_eq!(s.length, 17);
}

/// `n` events "e{i}" numbered from `from`, framed as a segment holds them.
fn events(from: usize, n: usize) -> Bytes {
    let mut b = bytes::BytesMut::new();
    for i in from..from + n {
        tributary::event::encode_event(&mut b, b"k", format!("e{i}").as_bytes());
    }
    b.freeze()
}

#[tokio::test]
async fn a_gap_record_stands_for_what_the_source_gave_up_and_the_copy_goes_on_after_it() {
    let node = Node::start().await;
    let c = node.client().await;
    let mut src = StreamMeta::new(fixed(1)).expect("meta");
    let all = src.segments[&0].range;
    src.scale(&[seg0()], &all.split(2)).expect("split");
    c.mirror_stream("m", "g", &source(1), fixed(1), vec![], vec![])
        .await
        .expect("mirror");
    let name = segment_name("m", "g", seg0());
    let (first, after) = (events(0, 10), events(20, 5));
    let gap_from = first.len() as u64;
    let gap_to = gap_from + 5_000;
    let end = gap_to + after.len() as u64;
    let gap = tributary::event::Gap {
        segment: "site/s/0.#epoch.0".into(),
        from: gap_from,
        to: gap_to,
        events: Some(10),
        reason: "a test".into(),
        dropped_ms: Some(1),
        noticed_ms: 2,
    };

    let mut s = c.mirror_session(&name).await.expect("session");
    let mut acks = s.take_acks().expect("acks");
    s.send(0, std::slice::from_ref(&first)).await.expect("send");
    s.send_gap(&gap).await.expect("gap");
    s.send(gap_to, std::slice::from_ref(&after))
        .await
        .expect("send");
    let mut ends = Vec::new();
    for _ in 0..3 {
        ends.push(acks.next().await.expect("ack").expect("ack").end_offset);
    }
    assert_eq!(
        ends,
        [gap_from, gap_to, end],
        "acknowledged in the source's offsets"
    );
    s.finish().expect("finish");
    assert!(acks.next().await.expect("end").is_none());

    // A new connection's session continues at the source's end (the shift is the
    // segment's durable attribute: the edge test restarts the cloud process); resends
    // from before and after the gap are duplicates; a gap that does not start at the
    // end is refused; a scale seals the segment at the source's length.
    let c = node.client().await;
    let mut s = c.mirror_session(&name).await.expect("session");
    assert_eq!(s.length, end);
    let mut acks = s.take_acks().expect("acks");
    s.send(0, std::slice::from_ref(&first)).await.expect("send");
    s.send(gap_to, std::slice::from_ref(&after))
        .await
        .expect("send");
    for _ in 0..2 {
        assert!(acks.next().await.expect("ack").expect("ack").duplicate);
    }
    let wrong = tributary::event::Gap {
        from: end + 1,
        to: end + 10,
        ..gap.clone()
    };
    s.send_gap(&wrong).await.expect("gap");
    let e = acks.next().await.expect_err("refused");
    assert_eq!(code(&e), Some(ErrorCode::Conflict), "{e}");
    assert!(
        e.to_string().contains(&format!("continue from {end}")),
        "{e}"
    );
    // Two sessions at once: once one stores a gap record, the other's offsets are
    // stale, and its next frame is refused rather than stored past the record.
    let mut a = c.mirror_session(&name).await.expect("session a");
    let mut b = c.mirror_session(&name).await.expect("session b");
    let (mut a_acks, mut b_acks) = (a.take_acks().expect("acks"), b.take_acks().expect("acks"));
    let second = tributary::event::Gap {
        from: end,
        to: end + 100,
        ..gap.clone()
    };
    b.send_gap(&second).await.expect("gap");
    assert_eq!(
        b_acks.next().await.expect("ack").expect("ack").end_offset,
        end + 100
    );
    // Longer than the record: before, its tail was stored after it, at wrong offsets.
    a.send(end, &[events(30, 40)]).await.expect("send");
    let e = a_acks.next().await.expect_err("stale");
    assert_eq!(code(&e), Some(ErrorCode::Conflict), "{e}");
    assert!(e.to_string().contains("open a new session"), "{e}");
    let end = end + 100;

    let history = src.scale_history();
    let m = c
        .mirror_stream("m", "g", &source(1), fixed(1), history, vec![(seg0(), end)])
        .await
        .expect("sealed at the source's length");
    assert_eq!(m.epoch, 1);

    // A reader gets the events, and the gap record in its place.
    c.create_reader_group("m", "r", "g", tributary::wire::StartFrom::Head)
        .await
        .expect("group");
    let mut r = tributary::service::EventReader::join(
        &c,
        "m",
        "r",
        "r1",
        tributary::service::ReaderConfig::default(),
    )
    .await
    .expect("join");
    let mut items = Vec::new();
    while let Some(e) = r
        .next(std::time::Duration::from_millis(500))
        .await
        .expect("read")
    {
        items.push(match e.gap {
            Some(g) => format!("gap {}..{} {:?}", g.from, g.to, g.events),
            None => String::from_utf8_lossy(&e.payload).into_owned(),
        });
    }
    let mut want: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();
    want.push(format!("gap {gap_from}..{gap_to} Some(10)"));
    want.extend((20..25).map(|i| format!("e{i}")));
    want.push(format!("gap {}..{end} Some(10)", end - 100));
    assert_eq!(items, want);
}

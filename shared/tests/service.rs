//! The segment service end to end over real QUIC with real mutual TLS on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tributary::controller::Controller;
use tributary::log::{LogConfig, SegmentLog};
use tributary::service::{Client, ClientError, SegmentServer};
use tributary::tls::{client_config, server_config, DevPki};
use tributary::wire::{encode_control, read_frame, ErrorCode, Request, Response, MAX_FRAME_LEN};

struct Node {
    _dir: tempfile::TempDir,
    pki: DevPki,
    data: std::path::PathBuf,
    server: Option<SegmentServer>,
    addr: std::net::SocketAddr,
}

impl Node {
    async fn start() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = DevPki::ensure(&dir.path().join("pki"), "test-client").expect("pki");
        let data = dir.path().join("data");
        let mut n = Node {
            _dir: dir,
            pki,
            data,
            server: None,
            addr: ([127, 0, 0, 1], 0).into(),
        };
        n.restart().await;
        n
    }

    /// Stops the server and the log (if running), reopens the log, serves it again.
    async fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        let log = Arc::new(SegmentLog::open(&self.data, LogConfig::default()).expect("log"));
        let controller = Arc::new(Controller::open(log).await.expect("controller"));
        let tls = server_config(&self.pki.server).expect("server tls");
        let server = SegmentServer::start(
            ([127, 0, 0, 1], 0).into(),
            tls,
            controller,
            tributary::service::Access::open(),
        )
        .expect("start");
        self.addr = server.local_addr().expect("addr");
        self.server = Some(server);
    }

    async fn client(&self) -> Client {
        let tls = client_config(&self.pki.client).expect("client tls");
        Client::connect(self.addr, "localhost", tls)
            .await
            .expect("connect")
    }
}

async fn read_all(c: &Client, seg: &str) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let (data, _) = c
            .read(seg, out.len() as u64, 1 << 20, Duration::ZERO)
            .await
            .expect("read");
        if data.is_empty() {
            return out;
        }
        out.extend_from_slice(&data);
    }
}

fn block(n: i64) -> Vec<u8> {
    format!("event-{n};").into_bytes()
}

#[tokio::test]
async fn pipelined_appends_reads_and_control_over_quic() {
    let node = Node::start().await;
    let c = node.client().await;
    c.create_segment("s/0").await.expect("create");
    let mut sess = c.append_session("s/0", 42).await.expect("session");
    assert_eq!(sess.last_event_number, None);
    let mut want = Vec::new();
    for n in 1..=500 {
        sess.send(n, 1, &[block(n).into()]).await.expect("send");
        want.extend_from_slice(&block(n));
    }
    for n in 1..=500 {
        let ack = sess.ack().await.expect("ack");
        assert_eq!((ack.event_number, ack.duplicate), (n, false));
    }
    assert_eq!(read_all(&c, "s/0").await, want);
    // A tail read waits for data that arrives meanwhile.
    let reader = {
        let tls = client_config(&node.pki.client).expect("tls");
        let c2 = Client::connect(node.addr, "localhost", tls)
            .await
            .expect("connect");
        let at = want.len() as u64;
        tokio::spawn(async move { c2.read("s/0", at, 100, Duration::from_secs(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    sess.send(501, 1, &[Bytes::from_static(b"late")])
        .await
        .expect("send");
    sess.ack().await.expect("ack");
    let (data, _) = reader.await.expect("join").expect("tail read");
    assert_eq!(&data[..], b"late");
    c.seal_segment("s/0").await.expect("seal");
    let info = c.segment_info("s/0").await.expect("info");
    assert!(info.sealed);
    match c.segment_info("nope").await {
        Err(ClientError::Server {
            code: ErrorCode::NoSuchSegment,
            ..
        }) => {}
        other => panic!("expected NoSuchSegment, got {other:?}"),
    }
}

#[tokio::test]
async fn a_resend_after_reconnect_and_restart_is_stored_once() {
    let mut node = Node::start().await;
    {
        let c = node.client().await;
        c.create_segment("s").await.expect("create");
        let mut sess = c.append_session("s", 7).await.expect("session");
        for n in 1..=100 {
            sess.send(n, 1, &[block(n).into()]).await.expect("send");
        }
        for _ in 1..=100 {
            sess.ack().await.expect("ack");
        }
    }
    node.restart().await;
    let c = node.client().await;
    let mut sess = c.append_session("s", 7).await.expect("session");
    assert_eq!(sess.last_event_number, Some(100));
    // The writer does not trust it and resends from 51: 51..=100 are duplicates.
    for n in 51..=150 {
        sess.send(n, 1, &[block(n).into()]).await.expect("send");
    }
    let mut dups = 0;
    for n in 51..=150 {
        let ack = sess.ack().await.expect("ack");
        assert_eq!(ack.event_number, n);
        dups += usize::from(ack.duplicate);
    }
    assert_eq!(dups, 50);
    let want: Vec<u8> = (1..=150).flat_map(block).collect();
    assert_eq!(read_all(&c, "s").await, want);
}

#[tokio::test]
async fn a_client_from_a_foreign_ca_is_refused_and_writes_nothing() {
    let node = Node::start().await;
    let other = tempfile::tempdir().expect("tempdir");
    let foreign = DevPki::ensure(other.path(), "intruder").expect("foreign pki");
    // Trusts our server's CA, but presents a certificate from another CA.
    let mut id = foreign.client.clone();
    id.ca = node.pki.client.ca.clone();
    let tls = client_config(&id).expect("tls");
    let refused = async {
        let c = Client::connect(node.addr, "localhost", tls).await?;
        c.create_segment("intruded").await
    };
    let e = refused
        .await
        .expect_err("a foreign certificate must be refused");
    println!("refused with: {e}");
    assert!(
        e.to_string().contains("certificate") || e.to_string().contains("CA"),
        "refused for another reason: {e}"
    );
    let c = node.client().await;
    assert!(c.segment_info("intruded").await.is_err(), "nothing written");
}

#[tokio::test]
async fn garbage_and_oversized_frames_get_errors_while_others_go_on() {
    let node = Node::start().await;
    let good = node.client().await;
    good.create_segment("s").await.expect("create");
    let mut sess = good.append_session("s", 1).await.expect("session");

    // A raw connection that speaks the handshake, then sends garbage and a huge frame.
    let tls = client_config(&node.pki.client).expect("tls");
    let mut ep = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).expect("endpoint");
    ep.set_default_client_config(tls);
    let conn = ep
        .connect(node.addr, "localhost")
        .expect("connect")
        .await
        .expect("handshake");
    let ask = |bytes: Vec<u8>| {
        let conn = conn.clone();
        async move {
            let (mut s, mut r) = conn.open_bi().await.expect("stream");
            s.write_all(&bytes).await.expect("write");
            let _ = s.finish();
            read_frame(&mut r, MAX_FRAME_LEN)
                .await
                .expect("a reply")
                .expect("a frame")
                .control::<Response>()
                .expect("a response")
        }
    };
    let hello = ask(encode_control(&Request::Hello {
        versions: vec![tributary::wire::PROTOCOL_VERSION],
        client: "raw".into(),
    })
    .to_vec())
    .await;
    assert!(matches!(hello, Response::HelloOk { .. }));
    let garbage = ask(vec![0, 0, 0, 5, 1, 0xde, 0xad, 0xbe, 0xef]).await;
    assert!(
        matches!(
            garbage,
            Response::Error {
                code: ErrorCode::Malformed,
                ..
            }
        ),
        "{garbage:?}"
    );
    let huge = ask(vec![0x7f, 0xff, 0xff, 0xff, 1]).await;
    assert!(
        matches!(
            huge,
            Response::Error {
                code: ErrorCode::TooLarge,
                ..
            }
        ),
        "{huge:?}"
    );

    // The well-behaved client's session was not disturbed.
    for n in 1..=10 {
        sess.send(n, 1, &[block(n).into()]).await.expect("send");
    }
    for n in 1..=10 {
        assert_eq!(sess.ack().await.expect("ack").event_number, n);
    }
    let want: Vec<u8> = (1..=10).flat_map(block).collect();
    assert_eq!(read_all(&good, "s").await, want);
}

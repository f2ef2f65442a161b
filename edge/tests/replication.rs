//! Edge → cloud replication, end to end: a real edge process, a real cloud process in
//! its own network namespace (veth link), real QUIC with mutual TLS, a real mosquitto,
//! SIGKILLs of both sides, a real partition (the link taken down) and delay and loss
//! on the edge's datagrams (see `common::cloud` for why a relay applies those).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cloud::{Cloud, Faults, Netns, Pki, Relay};
use common::{publish, read_all, wait_status, Broker, Edge};
use rand::Rng;
use tributary::event::decode_events;
use tributary::service::{Client, EventReader, EventWriter, ReaderConfig, WriterConfig};
use tributary::stream::{segment_name, StreamMeta};

const SCOPE: &str = "site";
/// An event read back: its routing key and payload.
type KeyAndPayload = (Vec<u8>, Vec<u8>);
const STREAM: &str = "sensors";

/// The edge's config body: one stream, an optional MQTT source, replication as
/// `identity` (of `pki`) to `endpoint`.
fn edge_body(
    segments: u32,
    broker: Option<u16>,
    pki: &Pki,
    identity: &str,
    endpoint: std::net::SocketAddr,
    extra: &str,
) -> String {
    let mqtt = broker.map_or_else(String::new, |port| {
        format!(
            "[[mqtt]]\nbroker = \"127.0.0.1:{port}\"\nclient_id = \"edge-repl\"\n\
             [[mqtt.route]]\nfilter = \"sensors/+/reading\"\nstream = \"{SCOPE}/{STREAM}\"\n\
             qos = 1\nkey = \"topic-level:1\"\n"
        )
    });
    let id = pki.identity(identity);
    format!(
        "[[stream]]\nname = \"{SCOPE}/{STREAM}\"\nsegments = {segments}\n{mqtt}\
         [cloud]\nendpoints = [\"{endpoint}\"]\nserver_name = \"localhost\"\n\
         ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
         [[replicate]]\nstream = \"{SCOPE}/{STREAM}\"\n{extra}",
        id.ca.display(),
        id.cert.display(),
        id.key.display()
    )
}

const EDGE_GRANT: &str =
    "[[grant]]\nidentity = \"edge-1\"\nstreams = [\"site/*\"]\nallow = [\"mirror\"]\n";

/// The name of the stream's first segment.
fn segment0() -> String {
    let first = tributary::stream::SegmentId {
        number: 0,
        epoch: 0,
    };
    segment_name(SCOPE, STREAM, first)
}

/// Every byte of a segment.
async fn segment_bytes(c: &Client, name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let (b, _) = c
            .read(name, out.len() as u64, 4 << 20, Duration::ZERO)
            .await
            .expect("read");
        if b.is_empty() {
            return out;
        }
        out.extend_from_slice(&b);
    }
}

/// Checks that the cloud stream has the edge stream's segments, each byte-identical;
/// returns the cloud's metadata and each segment's bytes.
async fn assert_mirrored(edge: &Client, cloud: &Client) -> (StreamMeta, BTreeMap<u32, Vec<u8>>) {
    let em = edge.describe_stream(SCOPE, STREAM).await.expect("edge");
    let cm = cloud.describe_stream(SCOPE, STREAM).await.expect("cloud");
    assert_eq!(em.segments, cm.segments, "the same segments and history");
    assert_eq!(em.epoch, cm.epoch);
    assert!(cm.mirror);
    let mut out = BTreeMap::new();
    for rec in em.segments.values() {
        let name = segment_name(SCOPE, STREAM, rec.id);
        let (e, c) = (
            segment_bytes(edge, &name).await,
            segment_bytes(cloud, &name).await,
        );
        assert_eq!(e.len(), c.len(), "segment {name}: lengths");
        assert!(e == c, "segment {name}: the bytes differ");
        out.insert(rec.id.number, c);
    }
    (cm, out)
}

fn messages(keys: usize, per_key: usize) -> Vec<Vec<(String, Vec<u8>)>> {
    // Batches of one message per key, in sequence order.
    (0..per_key)
        .map(|seq| {
            (0..keys)
                .map(|k| {
                    (
                        format!("sensors/k{k}/reading"),
                        format!("k{k}:{seq}").into_bytes(),
                    )
                })
                .collect()
        })
        .collect()
}

/// Each (key, seq) of `keys × per_key` exactly once, in order per key (keys may
/// interleave).
fn assert_exactly_once_in_order(events: &[(Vec<u8>, Vec<u8>)], keys: usize, per_key: usize) {
    let mut next: HashMap<String, usize> = HashMap::new();
    for (key, payload) in events {
        let p = String::from_utf8_lossy(payload);
        let (k, seq) = p.split_once(':').expect("payload k:seq");
        assert_eq!(k.as_bytes(), key.as_slice(), "key of {p}");
        let seq: usize = seq.parse().expect("seq");
        let n = next.entry(k.to_string()).or_insert(0);
        assert_eq!(
            seq, *n,
            "key {k}: expected {n}, got {seq} (a loss, duplicate or reorder)"
        );
        *n += 1;
    }
    assert_eq!(next.len(), keys, "every key arrived");
    assert!(
        next.values().all(|n| *n == per_key),
        "every message arrived: {next:?}"
    );
}

fn events_of(bytes: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let (events, used) = decode_events(&Bytes::copy_from_slice(bytes)).expect("events");
    assert_eq!(used, bytes.len(), "whole events");
    events
        .into_iter()
        .map(|e| (e.key.to_vec(), e.payload.to_vec()))
        .collect()
}

/// What every test here starts from: a temp dir, the cloud's network namespace, a PKI
/// with the identities "admin" and "edge-1" to "edge-3", and the cloud (not started) granting
/// `grants`. Destructured in field order, the cloud is dropped (killed) first.
struct World {
    dir: tempfile::TempDir,
    net: Arc<Netns>,
    pki: Pki,
    cloud: Cloud,
}

fn world(grants: &str) -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = Arc::new(Netns::create());
    let pki = Pki::make(
        &dir.path().join("pki"),
        &["admin", "edge-1", "edge-2", "edge-3"],
    );
    let cloud = Cloud::new(&dir.path().join("cloud"), &net, &pki, grants);
    World {
        dir,
        net,
        pki,
        cloud,
    }
}

/// Starts an edge in `dir/name` with the config `body`, once it answers.
async fn start_edge(dir: &std::path::Path, name: &str, body: &str) -> Edge {
    let edge_dir = dir.join(name);
    std::fs::create_dir_all(&edge_dir).expect("dir");
    let mut edge = Edge::new(&edge_dir, body);
    edge.start();
    edge.ready().await;
    edge
}

/// Publishes `messages(keys, per_key)` in batches of ten rounds, `gap` apart.
fn publisher(port: u16, keys: usize, per_key: usize, gap: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for batch in messages(keys, per_key).chunks(10) {
            publish(port, batch.concat()).await;
            tokio::time::sleep(gap).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_message_reaches_the_cloud_once_through_kills_partition_delay_and_loss() {
    let World {
        dir,
        net,
        pki,
        mut cloud,
    } = world(EDGE_GRANT);
    cloud.start().await;
    // 100 ms round trip, 5 % loss each way.
    let relay = Relay::start(
        cloud.quic,
        Faults {
            delay: Duration::from_millis(50),
            loss: 0.05,
            rate: None,
        },
    )
    .await;
    let broker = Broker::start(dir.path());
    let body = edge_body(2, Some(broker.port), &pki, "edge-1", relay.addr, "");
    let mut edge = start_edge(dir.path(), "edge", &body).await;
    let (keys, per_key) = (8, 500);
    let publisher = publisher(broker.port, keys, per_key, Duration::from_millis(80));
    // A 30 s partition, from 10 s in.
    let partition = {
        let net = net.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            net.set_link(false);
            tokio::time::sleep(Duration::from_secs(30)).await;
            net.set_link(true);
        })
    };
    let (mut edge_kills, mut cloud_kills) = (0, 0);
    for cycle in 0..24 {
        let wait = rand::thread_rng().gen_range(500..2500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let down = Duration::from_millis(rand::thread_rng().gen_range(0..700));
        if cycle % 2 == 0 {
            edge.kill();
            edge_kills += 1;
            tokio::time::sleep(down).await;
            edge.start();
            edge.ready().await;
        } else {
            cloud.kill();
            cloud_kills += 1;
            tokio::time::sleep(down).await;
            cloud.start().await;
        }
    }
    partition.await.expect("partition");
    publisher.await.expect("publisher");
    assert!(edge_kills >= 10 && cloud_kills >= 10);

    let n = (keys * per_key) as u64;
    wait_status(&edge, 240, "every message stored and replicated", |s| {
        s.streams[0].events == n && s.replication[0].lag_bytes == 0 && s.replication[0].connected
    })
    .await;
    let (_, segments) = assert_mirrored(&edge.client().await, &cloud.admin(&pki).await).await;
    // Fixed segments: each key lives in one, in order.
    let all: Vec<_> = segments.values().flat_map(|b| events_of(b)).collect();
    assert_exactly_once_in_order(&all, keys, per_key);
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_scaled_on_the_edge_scales_the_same_in_the_cloud() {
    let World {
        dir,
        net: _net,
        pki,
        mut cloud,
    } = world(EDGE_GRANT);
    cloud.start().await;
    let broker = Broker::start(dir.path());
    let body = edge_body(1, Some(broker.port), &pki, "edge-1", cloud.quic, "");
    let edge = start_edge(dir.path(), "edge", &body).await;
    let (keys, per_key) = (6, 300);
    let publisher = publisher(broker.port, keys, per_key, Duration::from_millis(50));
    // Split, split one half again, then merge two neighbours: three scales while
    // messages arrive and replicate.
    let e = edge.client().await;
    for step in 0..3 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let meta = e.describe_stream(SCOPE, STREAM).await.expect("describe");
        let active = meta.active();
        let (seal, ranges) = match step {
            0 | 1 => (vec![active[0].id], active[0].range.split(2)),
            _ => {
                let r = tributary::stream::KeyRange {
                    low: active[1].range.low,
                    high: active[2].range.high,
                };
                (vec![active[1].id, active[2].id], vec![r])
            }
        };
        e.scale_stream(SCOPE, STREAM, &seal, &ranges)
            .await
            .expect("scale on the edge");
    }
    publisher.await.expect("publisher");
    let n = (keys * per_key) as u64;
    wait_status(&edge, 120, "every message stored and replicated", |s| {
        s.streams[0].events == n && s.replication[0].lag_bytes == 0
    })
    .await;
    let c = cloud.admin(&pki).await;
    let (cm, _) = assert_mirrored(&e, &c).await;
    assert_eq!(cm.epoch, 3, "three scales mirrored");
    // A cloud reader group reads every key in order, across the scales.
    let events = read_all(&c, SCOPE, STREAM, Duration::from_secs(2)).await;
    assert_exactly_once_in_order(&events, keys, per_key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_without_a_grant_or_from_a_foreign_ca_writes_nothing() {
    // edge-1 may write only to "other".
    let World {
        dir,
        net: _net,
        pki,
        mut cloud,
    } = world("[[grant]]\nidentity = \"edge-1\"\nstreams = [\"other/*\"]\nallow = [\"mirror\"]\n");
    let foreign = Pki::make(&dir.path().join("foreign"), &["edge-1"]);
    cloud.start().await;

    for (name, body) in [
        (
            "not granted",
            edge_body(1, None, &pki, "edge-1", cloud.quic, ""),
        ),
        ("foreign CA", {
            // The edge trusts the real cloud CA but presents a foreign certificate.
            let id = foreign.identity("edge-1");
            edge_body(1, None, &pki, "edge-1", cloud.quic, "")
                .replace(
                    &pki.identity("edge-1").cert.display().to_string(),
                    &id.cert.display().to_string(),
                )
                .replace(
                    &pki.identity("edge-1").key.display().to_string(),
                    &id.key.display().to_string(),
                )
        }),
    ] {
        let mut edge = start_edge(dir.path(), &name.replace(' ', "-"), &body).await;
        write_events(&edge, 0, 100).await;
        let s = wait_status(&edge, 30, &format!("{name}: refusal shown"), |s| {
            s.replication[0].last_error.is_some() && s.replication[0].lag_bytes > 0
        })
        .await;
        let err = s.replication[0].last_error.clone().unwrap_or_default();
        assert!(!s.replication[0].connected, "{name}: {s:?}");
        if name == "not granted" {
            assert!(
                err.contains("not granted") && err.contains("site/sensors"),
                "{name}: {err}"
            );
        }
        let admin = cloud.admin(&pki).await;
        assert!(
            admin.list_scopes().await.expect("scopes").is_empty(),
            "{name}: something was written"
        );
        assert_eq!(edge.terminate().code(), Some(0), "{}", edge.tail());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_is_read_as_one_stream_set_each_gateways_messages_once_in_order() {
    // Three gateways, each with its own broker and certificate, each mirroring into a
    // cloud stream of its own (one grant for all: "{identity}"), each SIGKILLed three
    // times; one reader group over "sensors-*", made before any of them existed.
    let World {
        dir,
        net: _net,
        pki,
        mut cloud,
    } = world(
        "[[grant]]\nidentity = \"edge-*\"\nstreams = [\"site/sensors-{identity}\"]\n\
         allow = [\"mirror\"]\n",
    );
    cloud.start().await;
    let admin = cloud.admin(&pki).await;
    admin.create_scope(SCOPE).await.expect("scope");
    admin
        .create_reader_group(
            SCOPE,
            "fleet",
            "sensors-*",
            tributary::wire::StartFrom::Head,
        )
        .await
        .expect("a group over a pattern that matches nothing yet");
    let names = ["edge-1", "edge-2", "edge-3"];
    let mut brokers = Vec::new();
    let mut edges = Vec::new();
    for name in names {
        let bdir = dir.path().join(format!("broker-{name}"));
        std::fs::create_dir_all(&bdir).expect("dir");
        let broker = Broker::start(&bdir);
        let to = format!("to = \"{SCOPE}/sensors-{name}\"\n");
        let body = edge_body(2, Some(broker.port), &pki, name, cloud.quic, &to);
        edges.push(start_edge(dir.path(), name, &body).await);
        brokers.push(broker);
    }
    let (keys, per_key) = (4, 300);
    let publishers: Vec<_> = brokers
        .iter()
        .map(|b| publisher(b.port, keys, per_key, Duration::from_millis(300)))
        .collect();
    // The group's reader reads while the gateways replicate and die.
    let reader = {
        let admin = admin.clone();
        tokio::spawn(async move {
            use tributary::service::{EventReader, ReaderConfig};
            let mut r = EventReader::join(&admin, SCOPE, "fleet", "r", ReaderConfig::default())
                .await
                .expect("join");
            let mut got: BTreeMap<String, Vec<KeyAndPayload>> = BTreeMap::new();
            let want = 3 * keys * per_key;
            let deadline = Instant::now() + Duration::from_secs(240);
            while got.values().map(Vec::len).sum::<usize>() < want && Instant::now() < deadline {
                if let Some(e) = r.next(Duration::from_secs(1)).await.expect("read") {
                    got.entry(e.stream.to_string())
                        .or_default()
                        .push((e.key.to_vec(), e.payload.to_vec()));
                }
            }
            // Nothing more arrives: no duplicate after the last expected event.
            if let Some(e) = r.next(Duration::from_secs(3)).await.expect("read") {
                panic!("an event more than expected: {e:?}");
            }
            got
        })
    };
    for cycle in 0..9 {
        tokio::time::sleep(Duration::from_millis(
            rand::thread_rng().gen_range(400..1500),
        ))
        .await;
        let edge = &mut edges[cycle % 3];
        edge.kill();
        tokio::time::sleep(Duration::from_millis(rand::thread_rng().gen_range(0..500))).await;
        edge.start();
        edge.ready().await;
    }
    for p in publishers {
        p.await.expect("publisher");
    }
    let got = reader.await.expect("reader");
    assert_eq!(
        got.keys().map(String::as_str).collect::<Vec<_>>(),
        ["sensors-edge-1", "sensors-edge-2", "sensors-edge-3"],
        "the group took in every gateway's stream"
    );
    for (stream, events) in &got {
        eprintln!("{stream}: {} events", events.len());
        // Each gateway's messages once, in order per key (two segments per stream).
        assert_exactly_once_in_order(events, keys, per_key);
    }
    // The group's position covers every stream of the set.
    let pos = admin
        .group_position(SCOPE, "fleet", None)
        .await
        .expect("position");
    assert_eq!(pos.streams.len(), 3, "{pos}");
    for edge in &edges {
        let s = edge.status().await.expect("status");
        assert_eq!(s.streams[0].events, (keys * per_key) as u64, "{s:?}");
    }
}

/// Every byte the edge's stream holds was acknowledged by the cloud (in this run of
/// the edge).
fn all_replicated(s: &tributary_edge::status::Status) -> bool {
    s.streams[0].bytes > 0 && s.replication[0].replicated_bytes == s.streams[0].bytes
}

/// Writes `n` events numbered from `from` to the edge's stream, and waits until they
/// are stored.
async fn write_events(edge: &Edge, from: usize, n: usize) {
    let e = edge.client().await;
    let mut w = EventWriter::new(&e, SCOPE, STREAM, WriterConfig::default())
        .await
        .expect("writer");
    for i in from..from + n {
        w.write(b"k", format!("event {i}").as_bytes())
            .await
            .expect("write");
    }
    w.flush().await.expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_mirroring_into_another_gateways_cloud_stream_is_refused() {
    // Both gateways may mirror into site/* (one grant for all, by pattern): only the
    // mirror's recorded source keeps them apart.
    let World {
        dir,
        net: _net,
        pki,
        mut cloud,
    } = world("[[grant]]\nidentity = \"edge-*\"\nstreams = [\"site/*\"]\nallow = [\"mirror\"]\n");
    cloud.start().await;
    let a = start_edge(
        dir.path(),
        "a",
        &edge_body(1, None, &pki, "edge-1", cloud.quic, ""),
    )
    .await;
    write_events(&a, 0, 200).await;
    wait_status(&a, 60, "edge-1 replicated", all_replicated).await;
    let admin = cloud.admin(&pki).await;
    let (_, before) = assert_mirrored(&a.client().await, &admin).await;

    // Another gateway, and the same gateway with a new data dir, into the same cloud
    // stream: each refused, naming who feeds it.
    for (name, identity, why) in [
        (
            "b",
            "edge-2",
            "give each edge stream a cloud stream of its own",
        ),
        ("a-again", "edge-1", "created anew"),
    ] {
        let mut other = start_edge(
            dir.path(),
            name,
            &edge_body(1, None, &pki, identity, cloud.quic, ""),
        )
        .await;
        write_events(&other, 0, 300).await;
        let s = wait_status(&other, 30, &format!("{name}: refusal shown"), |s| {
            s.replication[0].last_error.is_some() && s.replication[0].lag_bytes > 0
        })
        .await;
        let err = s.replication[0].last_error.clone().unwrap_or_default();
        assert!(
            err.contains("site/sensors mirrors edge-1's site/sensors")
                && err.contains(&format!("{identity}'s site/sensors"))
                && err.contains(why),
            "{name}: {err}"
        );
        assert!(!s.replication[0].connected, "{name}: {s:?}");
        assert_eq!(other.terminate().code(), Some(0), "{}", other.tail());
    }

    // Nothing was written into edge-1's mirror, which goes on.
    let (_, after) = assert_mirrored(&a.client().await, &admin).await;
    assert_eq!(before, after, "edge-1's mirror is untouched");
    write_events(&a, 200, 100).await;
    wait_status(&a, 60, "edge-1 goes on", all_replicated).await;
    let (_, segments) = assert_mirrored(&a.client().await, &admin).await;
    assert_eq!(segments.values().flat_map(|b| events_of(b)).count(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_taken_without_a_restart_and_a_revoked_one_is_cut_off() {
    let World {
        dir,
        net: _net,
        mut pki,
        mut cloud,
    } = world(EDGE_GRANT);
    cloud.start().await;
    let edge = start_edge(
        dir.path(),
        "edge",
        &edge_body(1, None, &pki, "edge-1", cloud.quic, ""),
    )
    .await;
    let pid = edge.pid();
    write_events(&edge, 0, 100).await;
    let s = wait_status(&edge, 60, "replicated", all_replicated).await;
    // Events written through the segment service count as the sources' do.
    assert_eq!(s.streams[0].events, 100, "{s:?}");
    assert!(s.streams[0].last_event_ms.is_some(), "{s:?}");

    // Rotation: a new certificate in place of the old files. The edge connects again
    // with it by itself; then the old one is revoked, and replication goes on.
    let old = pki.serial("edge-1");
    let new = pki.renew("edge-1");
    assert_ne!(old, new);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !edge.log().contains("connecting again with it") {
        assert!(
            Instant::now() < deadline,
            "rotation not noticed\n{}",
            edge.tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    write_events(&edge, 100, 50).await;
    wait_status(
        &edge,
        60,
        "replicated with the new certificate",
        all_replicated,
    )
    .await;
    cloud.revoke(&old).await;
    write_events(&edge, 150, 50).await;
    wait_status(
        &edge,
        60,
        "replicated after the old one is revoked",
        all_replicated,
    )
    .await;
    assert_eq!(edge.pid(), pid, "the edge was not restarted");
    assert!(
        !cloud
            .log()
            .contains("closing the connection of a revoked certificate"),
        "the rotated connection was taken for the revoked one"
    );

    // Revocation: the live connection is closed, and reconnecting is refused.
    let admin = cloud.admin(&pki).await;
    let (_, before) = assert_mirrored(&edge.client().await, &admin).await;
    cloud.revoke(&new).await;
    assert!(
        cloud
            .log()
            .contains("closing the connection of a revoked certificate"),
        "{}",
        cloud.tail()
    );
    write_events(&edge, 200, 100).await;
    let s = wait_status(&edge, 30, "refused as revoked", |s| {
        !s.replication[0].connected
            && s.replication[0].lag_bytes > 0
            && s.replication[0]
                .last_error
                .as_ref()
                .is_some_and(|e| e.contains("revoked"))
    })
    .await;
    let err = s.replication[0].last_error.clone().unwrap_or_default();
    assert!(err.contains(&new), "the refusal names the serial: {err}");
    let name = segment0();
    assert_eq!(
        segment_bytes(&admin, &name).await,
        before[&0],
        "nothing was written after the revocation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_from_a_long_offline_stretch_drains_with_lag_reported() {
    let World {
        dir,
        net: _net,
        pki,
        mut cloud,
    } = world(EDGE_GRANT);
    // The cloud is not there yet; 8 MiB/s cap on this stream.
    let body = edge_body(
        2,
        None,
        &pki,
        "edge-1",
        cloud.quic,
        "max_kib_per_s = 8192\n",
    );
    let edge = start_edge(dir.path(), "edge", &body).await;
    let e = edge.client().await;
    let mut w = EventWriter::new(&e, SCOPE, STREAM, WriterConfig::default())
        .await
        .expect("writer");
    let payload = vec![7u8; 32 << 10];
    let count = 1024; // 32 MiB
    for i in 0..count {
        w.write(format!("k{}", i % 16).as_bytes(), &payload)
            .await
            .expect("write");
    }
    w.flush().await.expect("flush");
    let backlog = wait_status(&edge, 30, "the backlog counted as lag", |s| {
        s.replication[0].lag_bytes >= 32 << 20 && s.replication[0].lag_ms > 0
    })
    .await;
    assert!(!backlog.replication[0].connected);
    let total = backlog.replication[0].lag_bytes;

    cloud.start().await;
    let start = Instant::now();
    let mut seen = Vec::new();
    let deadline = start + Duration::from_secs(120);
    loop {
        let s = edge.status().await.expect("status");
        let lag = s.replication[0].lag_bytes;
        seen.push(lag);
        if lag == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not drained: {s:?}\n{}",
            edge.tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        seen.iter().any(|l| *l > 0 && *l < total),
        "lag reported along the way: {seen:?}"
    );
    let took = start.elapsed();
    // 32 MiB at 8 MiB/s takes about 4 s once connected.
    assert!(took >= Duration::from_secs(3), "the cap held: {took:?}");
    let c = cloud.admin(&pki).await;
    assert_mirrored(&e, &c).await;
    // The cloud shows the edge's lag in its metrics.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = cloud.metrics().await;
        if m.contains(
            "tributary_edge_replication_lag_bytes{edge=\"edge-1\",stream=\"site/sensors\"} 0",
        ) {
            break;
        }
        assert!(Instant::now() < deadline, "cloud metrics:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_survives_a_change_of_the_edges_address() {
    let World {
        dir,
        net,
        pki,
        mut cloud,
    } = world(EDGE_GRANT);
    cloud.start().await;
    let body = edge_body(1, None, &pki, "edge-1", cloud.quic, "");
    let edge = start_edge(dir.path(), "edge", &body).await;
    let e = edge.client().await;
    let mut w = EventWriter::new(&e, SCOPE, STREAM, WriterConfig::default())
        .await
        .expect("writer");
    let mut n = 0;
    let mut write = async |w: &mut EventWriter, count: usize| {
        for _ in 0..count {
            w.write(b"k", format!("k:{n}").as_bytes())
                .await
                .expect("write");
            n += 1;
        }
        w.flush().await.expect("flush");
    };
    write(&mut w, 500).await;
    wait_status(&edge, 30, "replicating", |s| {
        s.replication[0].connected && s.replication[0].replicated_bytes > 0
    })
    .await;
    net.change_host_address(3);
    for _ in 0..20 {
        write(&mut w, 50).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(n, 1500);
    // Everything written was acknowledged by the cloud (in this run of the edge).
    wait_status(
        &edge,
        60,
        "replicated after the address change",
        all_replicated,
    )
    .await;
    assert_mirrored(&e, &cloud.admin(&pki).await).await;
    let connects = edge.log().matches("replication connected").count();
    assert_eq!(
        connects,
        1,
        "the connection migrated instead of reconnecting\n{}",
        edge.tail()
    );
}

/// An edge in `dir` with MQTT ingest from `broker` into one segment with a 1 MiB
/// budget, full as `when_full` says, replicating as edge-1 to `cloud`.
async fn budgeted_edge(
    dir: &std::path::Path,
    pki: &Pki,
    cloud: &Cloud,
    broker: &Broker,
    when_full: &str,
) -> Edge {
    let body = edge_body(1, Some(broker.port), pki, "edge-1", cloud.quic, "").replace(
        "segments = 1\n",
        &format!("segments = 1\ndisk_budget_mb = 1\nwhen_full = \"{when_full}\"\n"),
    );
    start_edge(dir, "edge", &body).await
}

/// Messages `k0:i:` for each i of `r`, padded to 1 KiB: each takes [`K0_FRAMED`] bytes in
/// a segment.
fn k0_messages(r: std::ops::Range<u64>) -> Vec<(String, Vec<u8>)> {
    r.map(|i| {
        let mut p = format!("k0:{i}:").into_bytes();
        p.resize(1024, b'.');
        ("sensors/k0/reading".to_string(), p)
    })
    .collect()
}

/// Bytes a [`k0_messages`] message takes in a segment (framing and key included).
const K0_FRAMED: u64 = 1024 + 6 + 2;

/// The number i of a `k0:i:` payload.
fn k0_number(p: &[u8]) -> u64 {
    let p = String::from_utf8_lossy(p);
    p.split(':')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("k0:i:")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_never_drops_what_the_cloud_does_not_hold() {
    let World {
        dir,
        net: _net,
        pki,
        mut cloud,
    } = world(EDGE_GRANT);
    let broker = Broker::start(dir.path());
    let edge = budgeted_edge(dir.path(), &pki, &cloud, &broker, "drop-oldest").await;
    // 2 MiB for a 1 MiB budget, while the cloud is away.
    let n = 2048;
    publish(broker.port, k0_messages(0..n)).await;
    wait_status(&edge, 30, "paused at the budget, nothing dropped", |s| {
        s.streams[0].paused && s.streams[0].disk_bytes >= 1 << 20
    })
    .await;
    // Still paused, still nothing dropped, a few budget checks later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(edge.status().await.expect("status").streams[0].paused);
    let e = edge.client().await;
    let name = segment0();
    assert_eq!(
        e.segment_info(&name).await.expect("info").start,
        0,
        "nothing dropped"
    );

    cloud.start().await;
    let s = wait_status(&edge, 60, "replicated, then room made", |s| {
        s.streams[0].events == n && s.replication[0].lag_bytes == 0 && !s.streams[0].paused
    })
    .await;
    assert!(s.streams[0].disk_bytes <= 1 << 20, "{s:?}");
    let start = e.segment_info(&name).await.expect("info").start;
    assert!(start > 0, "the oldest replicated data was dropped");
    // The cloud holds every message, once, in order.
    let c = cloud.admin(&pki).await;
    let events = events_of(&segment_bytes(&c, &name).await);
    let got: Vec<u64> = events.iter().map(|(_, p)| k0_number(p)).collect();
    assert_eq!(got, (0..n).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_the_edge_gives_up_reaches_the_cloud_as_a_gap_record_and_replication_goes_on() {
    let World {
        dir,
        net: _net,
        pki,
        mut cloud,
    } = world(EDGE_GRANT);
    let broker = Broker::start(dir.path());
    let when_full = "drop-oldest-unreplicated";
    let edge = budgeted_edge(dir.path(), &pki, &cloud, &broker, when_full).await;

    // 200 replicated; then 2 MiB for a 1 MiB budget while the cloud is away: the
    // budget drops data the cloud never got.
    cloud.start().await;
    publish(broker.port, k0_messages(0..200)).await;
    wait_status(&edge, 30, "200 replicated", |s| {
        s.streams[0].events == 200 && all_replicated(s)
    })
    .await;
    cloud.kill();
    publish(broker.port, k0_messages(200..2248)).await;
    let e = edge.client().await;
    let name = segment0();
    wait_status(
        &edge,
        30,
        "all stored, within the budget by dropping",
        |s| s.streams[0].events == 2248 && s.streams[0].disk_bytes <= 1 << 20,
    )
    .await;
    let start = e.segment_info(&name).await.expect("info").start;
    assert!(
        start > 200 * K0_FRAMED,
        "unreplicated data was dropped: start {start}"
    );

    // The cloud comes back, and more arrives: everything the edge still has reaches
    // the cloud after one gap record for what it gave up.
    cloud.start().await;
    publish(broker.port, k0_messages(2248..2348)).await;
    let s = wait_status(&edge, 60, "replicated again", |s| {
        s.streams[0].events == 2348 && s.replication[0].lag_bytes == 0 && s.replication[0].gaps == 1
    })
    .await;
    assert!(s.replication[0].last_error.is_none(), "{s:?}");

    let c = cloud.admin(&pki).await;
    let (mut numbers, mut gaps) = (Vec::new(), Vec::new());
    for item in read_items(&c).await {
        match item.gap {
            Some(g) => gaps.push((numbers.len(), item.offset, g)),
            None => numbers.push(k0_number(&item.payload)),
        }
    }
    // (The budget may have dropped more while the cloud came back.)
    let first_kept = numbers.get(200).copied().expect("messages after the gap");
    assert!(first_kept * K0_FRAMED >= start, "{first_kept}");
    let want: Vec<u64> = (0..200).chain(first_kept..2348).collect();
    assert_eq!(numbers, want, "every message the edge kept, once, in order");
    assert_eq!(gaps.len(), 1, "one gap record: {gaps:?}");
    let (at, offset, g) = &gaps[0];
    assert_eq!(
        *at, 200,
        "the gap record stands where the lost messages were"
    );
    assert_eq!(*offset, 200 * K0_FRAMED);
    assert_eq!(
        (g.from, g.to),
        (200 * K0_FRAMED, first_kept * K0_FRAMED),
        "{g:?}"
    );
    let lost = first_kept - 200;
    assert_eq!(s.replication[0].gap_bytes, lost * K0_FRAMED, "{s:?}");
    assert_eq!(
        g.events,
        Some(lost),
        "the edge counted what it dropped: {g:?}"
    );
    assert!(g.reason.contains("drop-oldest-unreplicated"), "{g:?}");
    assert!(g.dropped_ms.is_some() && g.segment == name, "{g:?}");
    let m = cloud.metrics().await;
    for line in [
        format!("tributary_mirror_gaps_total{{edge=\"edge-1\",stream=\"{SCOPE}/{STREAM}\"}} 1"),
        format!(
            "tributary_mirror_gap_bytes_total{{edge=\"edge-1\",stream=\"{SCOPE}/{STREAM}\"}} {}",
            lost * K0_FRAMED
        ),
    ] {
        assert!(m.contains(&line), "{line} in\n{m}");
    }
    let mirrored = m
        .lines()
        .find_map(|l| l.strip_prefix("tributary_mirrored_bytes_total "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        mirrored.is_some_and(|b| b > 0),
        "replicated bytes counted:\n{m}"
    );

    // Restarts of both sides change nothing: the copy resumes after the gap record.
    cloud.kill();
    cloud.start().await;
    publish(broker.port, k0_messages(2348..2400)).await;
    let c = cloud.admin(&pki).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let all = loop {
        let all = read_items(&c).await;
        if all.last().is_some_and(|i| k0_number(&i.payload) == 2399) {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "the last message never reached the cloud"
        );
    };
    assert_eq!(
        all.iter().filter(|i| i.gap.is_some()).count(),
        1,
        "still one gap"
    );
    let last: Vec<u64> = all
        .iter()
        .rev()
        .take(52)
        .map(|i| k0_number(&i.payload))
        .collect();
    assert_eq!(last, (2348..2400).rev().collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_damaged_on_the_edge_reaches_the_cloud_as_a_gap_record() {
    let World {
        dir,
        net: _net,
        pki,
        mut cloud,
    } = world(EDGE_GRANT);
    let body = edge_body(1, None, &pki, "edge-1", cloud.quic, "");
    let mut edge = start_edge(dir.path(), "edge", &body).await;
    // Ten blocks of ten events (each its own log frame) while the cloud is away.
    for b in 0..10 {
        write_events(&edge, b * 10, 10).await;
    }
    edge.kill();
    // A bit rots in the data of the edge's fifth append frame (one block's).
    let wal = edge.dir.join("data/log/wal");
    let mut files: Vec<_> = std::fs::read_dir(&wal)
        .expect("wal")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let active = files.last().expect("a log file").clone();
    let mut bytes = std::fs::read(&active).expect("read");
    let (mut pos, mut appends) = (32, 0);
    let data_at = loop {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4")) as usize;
        if bytes[pos + 8] == 1 {
            appends += 1;
            if appends == 5 {
                let attrs = u16::from_le_bytes(bytes[pos + 33..pos + 35].try_into().expect("2"));
                break pos + 8 + 27 + attrs as usize * 24;
            }
        }
        pos += 8 + len;
    };
    bytes[data_at + 20] ^= 0x04;
    std::fs::write(&active, bytes).expect("write");

    edge.start();
    edge.ready().await;
    cloud.start().await;
    let s = wait_status(&edge, 60, "the damaged frame sent as a gap", |s| {
        s.replication[0].gaps == 1
    })
    .await;
    assert!(s.replication[0].gap_bytes > 0, "{s:?}");
    let c = cloud.admin(&pki).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let items = loop {
        let items = read_items(&c).await;
        if items
            .last()
            .is_some_and(|i| i.payload.as_ref() == b"event 99")
        {
            break items;
        }
        assert!(
            Instant::now() < deadline,
            "the last event never reached the cloud"
        );
    };
    let gaps: Vec<_> = items.iter().filter_map(|i| i.gap.as_ref()).collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert!(
        gaps[0].reason.contains("unreadable on the edge"),
        "{gaps:?}"
    );
    let events: Vec<String> = items
        .iter()
        .filter(|i| i.gap.is_none())
        .map(|i| String::from_utf8_lossy(&i.payload).into_owned())
        .collect();
    // One block of ten (the frame's; which one depends on the frames before it) is
    // lost, the others arrive once, in order.
    let lost = (0..100)
        .find(|i| !events.contains(&format!("event {i}")))
        .expect("a block lost");
    assert_eq!(lost % 10, 0, "a whole block: {events:?}");
    let want: Vec<String> = (0..100)
        .filter(|i| !(lost..lost + 10).contains(i))
        .map(|i| format!("event {i}"))
        .collect();
    assert_eq!(events, want);
}

/// Every item of the stream (events and gap records), from a new group.
async fn read_items(c: &Client) -> Vec<tributary::service::ReadEvent> {
    let group = format!("items-{}", rand::random::<u32>());
    c.create_reader_group(SCOPE, &group, STREAM, tributary::wire::StartFrom::Head)
        .await
        .expect("group");
    let mut r = EventReader::join(c, SCOPE, &group, "r", ReaderConfig::default())
        .await
        .expect("join");
    let mut out = Vec::new();
    while let Some(item) = r.next(Duration::from_secs(2)).await.expect("read") {
        out.push(item);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_priority_stream_drains_first_on_a_slow_uplink() {
    let World {
        dir,
        net: _net,
        pki,
        mut cloud,
    } = world(EDGE_GRANT);
    // A 4 MiB/s uplink.
    let relay = Relay::start(
        cloud.quic,
        Faults {
            delay: Duration::from_millis(5),
            loss: 0.0,
            rate: Some(4 << 20),
        },
    )
    .await;
    let id = pki.identity("edge-1");
    let body = format!(
        "[[stream]]\nname = \"site/video\"\n[[stream]]\nname = \"site/sensors\"\n\
         [cloud]\nendpoints = [\"{}\"]\nserver_name = \"localhost\"\n\
         ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
         [[replicate]]\nstream = \"site/video\"\npriority = 0\n\
         [[replicate]]\nstream = \"site/sensors\"\npriority = 10\n",
        relay.addr,
        id.ca.display(),
        id.cert.display(),
        id.key.display()
    );
    let edge = start_edge(dir.path(), "edge", &body).await;
    // Backlogs while the cloud is away: 24 MiB of video, 8 MiB of sensor data.
    let e = edge.client().await;
    for (stream, mib) in [("video", 24), ("sensors", 8)] {
        let mut w = EventWriter::new(&e, SCOPE, stream, WriterConfig::default())
            .await
            .expect("writer");
        let payload = vec![1u8; 64 << 10];
        for _ in 0..mib * 16 {
            w.write(b"k", &payload).await.expect("write");
        }
        w.flush().await.expect("flush");
    }
    wait_status(&edge, 30, "both backlogs counted", |s| {
        s.replication.iter().all(|r| r.lag_bytes >= 3 << 20)
    })
    .await;
    cloud.start().await;
    // When the sensor stream has drained, most of the video is still waiting (with
    // equal priorities about 15 of its 24 MiB are left at that moment, with these
    // about 23).
    let s = wait_status(&edge, 90, "the sensor backlog drained", |s| {
        s.replication[1].lag_bytes == 0 && s.replication[1].connected
    })
    .await;
    let video_left = s.replication[0].lag_bytes;
    assert!(
        video_left > 18 << 20,
        "the video stream drained alongside: {video_left} bytes left"
    );
    wait_status(&edge, 120, "the video backlog drained", |s| {
        s.replication[0].lag_bytes == 0
    })
    .await;
}

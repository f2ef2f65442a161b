//! Replication throughput: a backlog in an edge stream drained into a cloud node,
//! versus a raw quinn transfer of the same bytes (the same sockets and TLS setup, one QUIC stream,
//! a receiver that reads and drops them), in the same run. On loopback, and through a
//! relay adding 50 ms of round trip and 1 % loss each way. Both nodes run in this
//! process, each with its own segment log on disk; the cloud fsyncs what it stores.
//! Both transfers read the backlog from the edge's log, after one untimed read that
//! brings it into the page cache.
//!
//!     cargo bench -p tributary-edge --bench replication [-- MIB [WAN_MIB [ROUNDS]]]
//!
//! Defaults: a 1 GiB backlog on loopback (its drain time is the "1 GiB backlog"
//! figure), 64 MiB through the WAN relay. The loopback pair runs ROUNDS times (default
//! 3), each on a fresh backlog, and the medians are printed last: on 2 shared cores
//! one transfer varies by up to a third from run to run. The cloud node runs with
//! `[log] max_batch_mb = 32`, the edge with the default 4.

#[path = "../tests/common/cloud.rs"]
#[allow(dead_code)]
mod cloud;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tributary::node::config::{Defaults, NodeConfig, NodeSettings, Overrides};
use tributary::node::Node;
use tributary::profile::ClientProfile;
use tributary::service::quic_endpoint;
use tributary::stream::{segment_name, SegmentId};
use tributary::tls::{server_config, DevPki};
use tributary_edge::config::{StreamSpec, WhenFull};
use tributary_edge::local::{LocalStream, Submitted};
use tributary_edge::replicate::config::{CloudSpec, ReplicateSpec};
use tributary_edge::replicate::Replica;

const EVENT: usize = 64 << 10;

async fn node(dir: &Path, batch_mib: usize) -> Node {
    let local: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut settings = NodeSettings::default();
    settings.log.max_batch_bytes = batch_mib << 20;
    let cfg = NodeConfig::new(
        settings,
        Overrides::default(),
        Defaults {
            data_dir: dir.to_path_buf(),
            quic_listen: local,
            http_listen: local,
        },
    );
    Node::start(&cfg, None).await.expect("node")
}

fn seg0() -> SegmentId {
    SegmentId {
        number: 0,
        epoch: 0,
    }
}

/// A local stream holding `bytes` of 64 KiB events.
async fn backlog(edge: &Node, stream: &str, bytes: u64) -> Arc<LocalStream> {
    let s = LocalStream::open(
        edge.controller().clone(),
        StreamSpec {
            scope: "bench".into(),
            stream: stream.into(),
            segments: 1,
            disk_budget: None,
            when_full: WhenFull::Pause,
        },
    )
    .await
    .expect("stream");
    let payload = vec![0x5a; EVENT];
    let mut last = None;
    for _ in 0..bytes.div_ceil(EVENT as u64) {
        if let Submitted::Stored(t) = s.submit(b"k", &payload, None).await.expect("submit") {
            last = Some(t);
        }
    }
    if let Some(t) = last {
        s.durable(t).await.expect("durable");
    }
    s
}

/// The bench stream's only segment: its name and length.
fn segment(local: &LocalStream) -> (String, u64) {
    let name = segment_name("bench", &local.spec().stream, seg0());
    let length = local.log().info(&name).expect("info").length;
    (name, length)
}

/// Reads `local`'s segment from its log 1 MiB at a time, handing each read's pieces to
/// `each`.
async fn read_segment(local: &LocalStream, mut each: impl AsyncFnMut(Vec<Bytes>)) {
    let (name, length) = segment(local);
    let mut offset = 0;
    while offset < length {
        let r = local
            .log()
            .read(&name, offset, 1 << 20, Duration::ZERO)
            .await
            .expect("read");
        offset += r.len() as u64;
        each(r.parts).await;
    }
}

/// Reads `local`'s segment once, untimed. The log writes with direct I/O, so a backlog
/// just written is not in the page cache: without this, whichever of the raw transfer
/// and replication ran first would also pay for reading it from disk.
async fn warm(local: &LocalStream) {
    read_segment(local, async |_| {}).await;
}

/// Replicates `local` to the cloud at `endpoint`; returns bytes and seconds.
async fn replicate(
    local: &Arc<LocalStream>,
    to: &str,
    endpoint: SocketAddr,
    id: &ClientProfile,
) -> (u64, f64) {
    let (name, length) = segment(local);
    let r = Replica::open(
        local,
        ReplicateSpec {
            stream: 0,
            to_scope: "cloud".into(),
            to_stream: to.into(),
            priority: 0,
            max_bytes_per_s: None,
        },
    )
    .expect("replica");
    let cloud = CloudSpec {
        endpoints: vec![endpoint.to_string()],
        server_name: id.server_name.clone(),
        identity: id.identity(),
    };
    let (stop, stopped) = watch::channel(false);
    let start = Instant::now();
    let task = tokio::spawn(tributary_edge::replicate::run(
        cloud,
        vec![(local.clone(), r.clone())],
        stopped,
    ));
    while r.acked(&name) < length {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = stop.send(true);
    let _ = task.await;
    (length, secs)
}

/// Sends the bytes of `local`'s segment over one QUIC stream to a receiver that drops
/// them; returns bytes and seconds (until the receiver has read the last byte). Both
/// ends hand QUIC its buffers without copying them, as replication does.
async fn raw(local: &Arc<LocalStream>, pki: &DevPki, faults: Option<cloud::Faults>) -> (u64, f64) {
    let server = quic_endpoint(
        ([127, 0, 0, 1], 0).into(),
        Some(server_config(&pki.server).expect("server tls")),
    )
    .expect("server");
    let server_addr = server.local_addr().expect("addr");
    let receiver = tokio::spawn(async move {
        let conn = server
            .accept()
            .await
            .expect("incoming")
            .await
            .expect("conn");
        let mut recv = conn.accept_uni().await.expect("stream");
        let mut n = 0u64;
        while let Some(c) = recv.read_chunk(1 << 20, true).await.expect("read") {
            n += c.bytes.len() as u64;
        }
        let _ = conn.closed().await;
        n
    });
    let relay = match faults {
        Some(f) => Some(cloud::Relay::start(server_addr, f).await),
        None => None,
    };
    let target = relay.as_ref().map_or(server_addr, |r| r.addr);
    let mut client = quic_endpoint(([127, 0, 0, 1], 0).into(), None).expect("client");
    // The same sockets, TLS and QUIC settings as replication.
    client.set_default_client_config(
        tributary_edge::replicate::client_tls(&pki.client).expect("tls"),
    );
    let (_, length) = segment(local);
    let start = Instant::now();
    let conn = client
        .connect(target, "localhost")
        .expect("connect")
        .await
        .expect("handshake");
    let mut send = conn.open_uni().await.expect("stream");
    read_segment(local, async |mut parts| {
        send.write_all_chunks(&mut parts).await.expect("send")
    })
    .await;
    send.finish().expect("finish");
    let _ = send.stopped().await;
    conn.close(0u32.into(), b"done");
    let got = receiver.await.expect("receiver");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(got, length, "the receiver got every byte");
    (length, secs)
}

/// CPU seconds this process has used (user and system), from `/proc/self/stat`.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which ends with the last ')'): utime is the 12th,
    // stime the 13th, in clock ticks (100 per second on Linux).
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split(' ')
        .collect();
    let ticks = |i: usize| fields[i].parse::<f64>().expect("ticks");
    (ticks(11) + ticks(12)) / 100.0
}

/// The middle value (the upper one of the two middle values if there is an even number).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let mut sizes = args.iter().filter_map(|a| a.parse::<u64>().ok());
    let lan_mib = sizes.next().unwrap_or(1024);
    let wan_mib = sizes.next().unwrap_or(64);
    let rounds = sizes.next().unwrap_or(3).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        // The cloud with `[log] max_batch_mb = 32` (more per fsync), the edge with the
        // default 4.
        let cloud = node(&dir.path().join("cloud"), 32).await;
        let edge = node(&dir.path().join("edge"), 4).await;
        let profile = ClientProfile::load(cloud.profile_path().expect("profile")).expect("profile");
        let pki = DevPki::paths(&cloud.data_dir().join("tls"));

        let (mut raws, mut repls, mut ratios, mut drains) = (vec![], vec![], vec![], vec![]);
        for round in 1..=rounds {
            println!("round {round}: filling a {lan_mib} MiB backlog ({} KiB events)...", EVENT >> 10);
            let name = format!("lan{round}");
            let lan = backlog(&edge, &name, lan_mib << 20).await;
            warm(&lan).await;
            let cpu = cpu_secs();
            let (bytes, raw_s) = raw(&lan, &pki, None).await;
            let (cpu, raw_cpu) = {
                let now = cpu_secs();
                (now, now - cpu)
            };
            let (_, repl_s) = replicate(&lan, &name, cloud.quic_addr(), &profile).await;
            let repl_cpu = cpu_secs() - cpu;
            let (r, p) = (mib_s(bytes, raw_s), mib_s(bytes, repl_s));
            println!("loopback, {lan_mib} MiB: raw quinn {r:.1} MiB/s ({raw_s:.2} s), replication {p:.1} MiB/s ({repl_s:.2} s), ratio {:.2}", p / r);
            println!("CPU time (user + system, all threads): raw quinn {raw_cpu:.2} s, replication {repl_cpu:.2} s");
            raws.push(r);
            repls.push(p);
            ratios.push(p / r);
            drains.push(repl_s);
        }
        println!(
            "loopback, median of {rounds}: raw quinn {:.1} MiB/s, replication {:.1} MiB/s, ratio {:.2}; time to drain the {lan_mib} MiB backlog: {:.2} s",
            median(&mut raws),
            median(&mut repls),
            median(&mut ratios),
            median(&mut drains)
        );

        // WAN_MIB 0 leaves the lossy link out.
        if wan_mib > 0 {
            let wan_faults = cloud::Faults {
                delay: Duration::from_millis(25),
                loss: 0.01,
                rate: None,
            };
            let wan = backlog(&edge, "wan", wan_mib << 20).await;
            warm(&wan).await;
            let (bytes, raw_s) = raw(&wan, &pki, Some(wan_faults)).await;
            let relay = cloud::Relay::start(cloud.quic_addr(), wan_faults).await;
            let (_, repl_s) = replicate(&wan, "wan", relay.addr, &profile).await;
            let (r, p) = (mib_s(bytes, raw_s), mib_s(bytes, repl_s));
            println!("50 ms RTT, 1 % loss each way, {wan_mib} MiB: raw quinn {r:.1} MiB/s ({raw_s:.2} s), replication {p:.1} MiB/s ({repl_s:.2} s), ratio {:.2}", p / r);
        }
        edge.shutdown().await.expect("edge");
        cloud.shutdown().await.expect("cloud");
    });
}

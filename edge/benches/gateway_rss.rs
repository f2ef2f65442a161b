//! The edge's memory on a busy gateway: MQTT sensors publish QoS 1 messages of 100
//! bytes at a steady rate (default 10,000/s for 60 s, 64 topics) to mosquitto; a
//! `tributary-edge` process (release build) stores them and replicates the stream to a
//! cloud node on loopback, with the edge's default log settings (a 4 MiB read cache)
//! and 20 ms group commits. Prints the rate achieved, that every message reached the
//! cloud, and the edge's peak RSS (VmHWM; target ≤ 32 MiB).
//!
//!     [BENCH_RATE=10000] [BENCH_MQTT=5] [TRIBUTARY_EDGE_BIN=target/gateway/tributary-edge] \
//!         cargo bench -p tributary-edge --bench gateway_rss [-- SECONDS]
//!
//! `TRIBUTARY_EDGE_BIN` measures another build of the edge. The figure that counts is
//! the build shipped to aarch64 gateways: static musl, profile `gateway`. Its x86-64
//! twin has the same libc and allocator and runs natively (under qemu the RSS would be
//! qemu's):
//!
//!     ./cross/build x86_64-unknown-linux-musl
//!     TRIBUTARY_EDGE_BIN=$PWD/target/x86_64-unknown-linux-musl/gateway/tributary-edge \
//!         cargo bench -p tributary-edge --bench gateway_rss
//!
//! The default build (glibc, profile `release`) peaks about 5 MiB higher: more heap
//! held by glibc's malloc, and libc.so mapped besides the binary.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tributary::node::config::{Defaults, NodeConfig, NodeSettings, Overrides};
use tributary::node::Node;
use tributary::profile::ClientProfile;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(60);
    let rate: u64 = std::env::var("BENCH_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10_000);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(rate, secs));
}

async fn run(rate: u64, secs: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let local: SocketAddr = ([127, 0, 0, 1], 0).into();
    let cloud = Node::start(
        &NodeConfig::new(
            NodeSettings::default(),
            Overrides::default(),
            Defaults {
                data_dir: dir.path().join("cloud"),
                quic_listen: local,
                http_listen: local,
            },
        ),
        None,
    )
    .await
    .expect("cloud node");
    let profile = ClientProfile::load(cloud.profile_path().expect("dev profile")).expect("profile");
    let id = profile.identity();

    let broker = common::Broker::with_settings(
        dir.path(),
        "max_inflight_messages 0\nmax_queued_messages 0\n",
    );
    let port = broker.port;

    // BENCH_MQTT=5: the edge subscribes with MQTT 5, whose receive maximum bounds the
    // messages in flight to it (with 3.1.1 the broker's setting does: unlimited here).
    let version = match std::env::var("BENCH_MQTT").as_deref() {
        Ok("5") => "version = \"5\"\n",
        _ => "",
    };
    let mut edge = common::Edge::new(
        dir.path(),
        &format!(
            "[log]\ncommit_delay_us = 20000\n\
             [[stream]]\nname = \"site/sensors\"\nsegments = 2\n\
             [[mqtt]]\nbroker = \"127.0.0.1:{port}\"\nclient_id = \"rss-edge\"\n{version}\
             [[mqtt.route]]\nfilter = \"sensors/+/reading\"\nstream = \"site/sensors\"\n\
             key = \"topic-level:1\"\n\
             [cloud]\nendpoints = [\"{}\"]\nserver_name = \"{}\"\n\
             ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
             [[replicate]]\nstream = \"site/sensors\"\n",
            cloud.quic_addr(),
            profile.server_name,
            id.ca.display(),
            id.cert.display(),
            id.key.display()
        ),
    );
    edge.start();
    edge.ready().await;
    let pid = edge.pid().expect("edge pid");
    let idle_rss = common::proc_status_kib(pid, "VmRSS:");

    // The sensors: `rate` messages a second, in 10 ms ticks.
    let n = rate * secs;
    let mut o = MqttOptions::new("rss-sensors", "127.0.0.1", port);
    o.set_inflight(1000);
    let (client, mut events) = AsyncClient::new(o, 1000);
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        let payload = vec![b'x'; 100];
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut sent = 0u64;
        while sent < n {
            tick.tick().await;
            let due = (rate * started.elapsed().as_millis() as u64 / 1000).min(n);
            while sent < due {
                client
                    .publish(
                        format!("sensors/s{}/reading", sent % 64),
                        QoS::AtLeastOnce,
                        false,
                        payload.clone(),
                    )
                    .await
                    .expect("publish");
                sent += 1;
            }
        }
        client
    });
    let mut acked = 0;
    let mut peak_sampled = 0;
    let mut sample = tokio::time::interval(Duration::from_millis(100));
    while acked < n {
        tokio::select! {
            e = events.poll() => match e {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            },
            _ = sample.tick() => peak_sampled = peak_sampled.max(common::proc_status_kib(pid, "VmRSS:")),
        }
    }
    let published_in = started.elapsed();
    let _client = sender.await.expect("sender");

    // Everything stored on the edge and held by the cloud.
    let status = common::wait_status(&edge, 300, "all stored and replicated", |s| {
        s.streams[0].events >= n && s.replication.iter().all(|r| r.lag_bytes == 0)
    })
    .await;
    let drained_in = started.elapsed();
    let peak = common::proc_status_kib(pid, "VmHWM:");
    println!(
        "published {n} QoS 1 messages of 100 B at {:.0}/s (target {rate}/s) in {:.1} s; \
         the edge stored {} and the cloud held them all {:.1} s after the start",
        n as f64 / published_in.as_secs_f64(),
        published_in.as_secs_f64(),
        status.streams[0].events,
        drained_in.as_secs_f64()
    );
    println!(
        "edge RSS: idle {:.1} MiB, peak {:.1} MiB (VmHWM; sampled max {:.1} MiB); target <= 32 MiB",
        idle_rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        peak_sampled as f64 / 1024.0
    );
    let mib = |key| common::proc_status_kib(pid, key) as f64 / 1024.0;
    println!(
        "edge RSS at the end: heap and stacks {:.1} MiB, the binary and other mapped files \
         {:.1} MiB ({})",
        mib("RssAnon:"),
        mib("RssFile:") + mib("RssShmem:"),
        common::edge_bin().display()
    );
    assert!(edge.terminate().success(), "{}", edge.tail());
    drop(broker);
    drop(cloud);
}

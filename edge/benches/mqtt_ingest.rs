//! MQTT ingest with the edge in the path versus mosquitto delivering to a plain
//! subscriber, in the same run, on the same broker: N QoS 1 messages of 100 bytes are
//! queued at the broker for a persistent session while the consumer is away, then the
//! consumer connects and the drain rate is measured. Rounds alternate the two (single
//! runs vary by ±20 % on 2 cores beside a CPU-bound broker); the median ratio is the
//! figure. Also prints the edge's peak RSS.
//!
//!     [BENCH_ROUNDS=5] [BENCH_INFLIGHT=1000] cargo bench -p tributary-edge --bench mqtt_ingest [-- N]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Publishes `n` QoS 1 messages of 100 bytes; returns when the broker has them all.
async fn publish(port: u16, n: u64) {
    let mut o = MqttOptions::new("bench-publisher", "127.0.0.1", port);
    o.set_inflight(1000);
    let (client, mut events) = AsyncClient::new(o, 1000);
    let sender = tokio::spawn(async move {
        let payload = vec![b'x'; 100];
        for i in 0..n {
            client
                .publish(
                    format!("bench/k{}", i % 16),
                    QoS::AtLeastOnce,
                    false,
                    payload.clone(),
                )
                .await
                .expect("publish");
        }
        client
    });
    let mut acked = 0;
    while acked < n {
        if let Event::Incoming(Packet::PubAck(_)) = events.poll().await.expect("publisher") {
            acked += 1;
        }
    }
    let _ = sender.await;
}

/// A plain subscriber's session: made once, then drained of `n` queued messages.
async fn plain(port: u16, n: u64) -> f64 {
    let opts = || {
        let mut o = MqttOptions::new("bench-plain", "127.0.0.1", port);
        o.set_clean_session(false).set_inflight(1000);
        o
    };
    let (c, mut e) = AsyncClient::new(opts(), 100);
    c.subscribe("bench/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    while !matches!(
        e.poll().await.expect("poll"),
        Event::Incoming(Packet::SubAck(_))
    ) {}
    c.disconnect().await.expect("disconnect");
    while e.poll().await.is_ok() {}
    publish(port, n).await;
    let (_c, mut e) = AsyncClient::new(opts(), 100);
    let (mut got, mut first) = (0, None);
    while got < n {
        if let Event::Incoming(Packet::Publish(_)) = e.poll().await.expect("poll") {
            first.get_or_insert_with(Instant::now);
            got += 1;
        }
    }
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    n as f64 / secs
}

/// The edge's session: made by a first run, then drained of `n` queued messages.
/// Returns the drain rate and the edge's peak RSS in KiB.
async fn edge(dir: &Path, port: u16, n: u64, round: u32) -> (f64, u64) {
    let dir = dir.join(format!("round-{round}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut e = common::Edge::new(
        &dir,
        &format!(
            "[[stream]]\nname = \"bench/mqtt\"\n\
             [[mqtt]]\nbroker = \"127.0.0.1:{port}\"\nclient_id = \"bench-edge-{round}\"\n\
             [[mqtt.route]]\nfilter = \"bench/#\"\nstream = \"bench/mqtt\"\nqos = 1\n"
        ),
    );
    e.start();
    common::wait_status(&e, 30, "subscribed", |s| s.mqtt[0].connected).await;
    e.terminate();
    publish(port, n).await;
    e.start();
    e.ready().await;
    let mut t0 = None;
    loop {
        let got = e.status().await.map_or(0, |s| s.streams[0].events);
        if got > 0 {
            t0.get_or_insert((Instant::now(), got));
        }
        if got >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (t0, base) = t0.expect("started");
    let rate = (n - base) as f64 / t0.elapsed().as_secs_f64();
    let peak = common::proc_status_kib(e.pid().expect("running"), "VmHWM:");
    (rate, peak)
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; test runners (nextest --all-targets) list or run
    // bench targets without it: nothing to do then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    // The broker's in-flight window per client: a consumer that acknowledges only once
    // a message is on disk needs one wider than its fsync latency times the rate.
    let inflight: u64 = std::env::var("BENCH_INFLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = common::Broker::with_settings(
        dir.path(),
        &format!("max_inflight_messages {inflight}\nmax_queued_messages 0\n"),
    );
    let port = broker.port;
    // Both on 2 cores beside a CPU-bound broker: single runs vary a lot, so rounds
    // alternate the two and the median ratio is the figure.
    let rounds: u32 = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    println!("MQTT ingest, {n} QoS 1 messages of 100 bytes drained from a mosquitto queue (max_inflight_messages {inflight}):");
    let (mut ratios, mut peak) = (Vec::new(), 0);
    for round in 0..rounds {
        let plain_rate = plain(port, n).await;
        let (edge_rate, rss) = edge(dir.path(), port, n, round).await;
        peak = peak.max(rss);
        ratios.push(edge_rate / plain_rate);
        println!(
            "  round {round}: plain subscriber {plain_rate:>8.0} msg/s, tributary-edge (stored, fsync'ed) {edge_rate:>8.0} msg/s, ratio {:.2}",
            edge_rate / plain_rate
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "  median ratio edge / plain                {:>6.2}",
        ratios[ratios.len() / 2]
    );
    println!(
        "  edge peak RSS                            {:>6.1} MiB",
        peak as f64 / 1024.0
    );
}

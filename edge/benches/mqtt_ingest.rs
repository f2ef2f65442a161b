//! MQTT ingest with the edge in the path versus mosquitto delivering to a plain
//! subscriber, in the same run, on the same broker: N QoS 1 messages of 100 bytes are
//! queued at the broker for a persistent session while the consumer is away, then the
//! consumer connects and the drain rate is measured. Rounds alternate the two (single
//! runs vary by ±20 % on 2 cores beside a CPU-bound broker); the median ratio is the
//! figure. Also prints the edge's peak RSS.
//!
//!     [BENCH_ROUNDS=5] [BENCH_INFLIGHT=1000] cargo bench -p tributary-edge --bench mqtt_ingest [-- N]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_tcp(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

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

async fn status(http: u16) -> serde_json::Value {
    let fetch = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", http))
            .await
            .ok()?;
        s.write_all(b"GET /status HTTP/1.1\r\nHost: e\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()
    };
    fetch.await.unwrap_or(serde_json::Value::Null)
}

fn events(s: &serde_json::Value) -> u64 {
    s["streams"][0]["events"].as_u64().unwrap_or(0)
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The edge's session: made by a first run, then drained of `n` queued messages.
async fn edge(dir: &Path, port: u16, n: u64, round: u32) -> (f64, u64) {
    let dir = dir.join(format!("round-{round}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let http = free_port();
    let config = dir.join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[quic]\nlisten = \"127.0.0.1:{}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n\
             [[stream]]\nname = \"bench/mqtt\"\n\
             [[mqtt]]\nbroker = \"127.0.0.1:{port}\"\nclient_id = \"bench-edge-{round}\"\n\
             [[mqtt.route]]\nfilter = \"bench/#\"\nstream = \"bench/mqtt\"\nqos = 1\n",
            free_port()
        ),
    )
    .expect("config");
    let start = || {
        Kill(
            Command::new(env!("CARGO_BIN_EXE_tributary-edge"))
                .args(["run", "--config"])
                .arg(&config)
                .stderr(Stdio::null())
                .spawn()
                .expect("tributary-edge"),
        )
    };
    let first = start();
    wait_tcp(http);
    while status(http).await["mqtt"][0]["connected"] != serde_json::Value::Bool(true) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = Command::new("kill").arg(first.0.id().to_string()).status();
    drop(first);
    publish(port, n).await;
    let e = start();
    wait_tcp(http);
    let mut t0 = None;
    loop {
        let got = events(&status(http).await);
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
    (rate, peak_rss_kib(e.0.id()))
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
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_inflight_messages {inflight}\nmax_queued_messages 0\n"
        ),
    )
    .expect("mosquitto.conf");
    let _broker = Kill(
        Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (scripts/test installs it)"),
    );
    wait_tcp(port);
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

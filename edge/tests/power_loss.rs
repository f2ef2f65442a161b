//! Power losses of a gateway during MQTT ingest, 50 of them: the edge (a real process,
//! a real mosquitto, QoS 1) is SIGKILLed at a random moment while messages arrive, and
//! then every log file loses what was not fsync'ed — the lengths its log reported
//! durable through `TRIBUTARY_TEST_DURABLE_LEDGER`, the rest cut off, as a disk that
//! loses its write cache would. After each restart, every message published so far is
//! stored exactly once: one the edge had acknowledged to the broker must have survived
//! (the broker does not send it again), one it had not is sent again by the broker.
//! Not covered: sled's unsynced writes (its own crash safety), the page cache of
//! directories.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{publish, read_all, Broker, Edge};
use rand::Rng;
use tributary::log::faults::Faults;

const CYCLES: usize = 50;
const PER_CYCLE: usize = 40;

fn config(port: u16) -> String {
    format!(
        "[[stream]]\nname = \"site/data\"\n\
         [log]\nmax_file_bytes = 65536\n\
         [[mqtt]]\nbroker = \"127.0.0.1:{port}\"\nclient_id = \"power-loss-edge\"\n\
         [[mqtt.route]]\nfilter = \"data\"\nstream = \"site/data\"\nqos = 1\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_fifty_power_losses_during_ingest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path());
    let ledger = dir.path().join("durable.ledger");
    let mut edge = Edge::new(dir.path(), &config(broker.port)).env(
        tributary::node::DURABLE_LEDGER_ENV,
        &ledger.to_string_lossy(),
    );
    let mut published = 0;
    for cycle in 0..CYCLES {
        edge.start();
        edge.ready().await;
        // Messages arrive; the power goes at a random moment among them.
        let msgs: Vec<(String, Vec<u8>)> = (published..published + PER_CYCLE)
            .map(|i| {
                let mut p = format!("m{i:06}:").into_bytes();
                p.resize(300, b'.');
                ("data".to_string(), p)
            })
            .collect();
        let port = broker.port;
        let publisher = tokio::spawn(async move { publish(port, msgs).await });
        let wait = rand::thread_rng().gen_range(0..120);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        edge.kill();
        let wal = std::fs::canonicalize(dir.path().join("data/log/wal")).expect("wal dir");
        Faults::apply_ledger(&ledger, &wal).expect("power loss");
        publisher.await.expect("publisher");
        published += PER_CYCLE;

        // Back: the broker sends again what was not acknowledged.
        edge.start();
        edge.ready().await;
        let client = edge.client().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let got = loop {
            let got = read_all(&client, "site", "data", Duration::from_millis(300)).await;
            if got.len() >= published || std::time::Instant::now() > deadline {
                break got;
            }
        };
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (_, p) in &got {
            let id = String::from_utf8_lossy(&p[..7]).into_owned();
            *seen.entry(id).or_default() += 1;
        }
        let missing: Vec<usize> = (0..published)
            .filter(|i| !seen.contains_key(&format!("m{i:06}")))
            .collect();
        let twice: Vec<&String> = seen
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, _)| k)
            .collect();
        assert!(
            missing.is_empty() && twice.is_empty(),
            "after power loss {cycle}: missing {missing:?}, stored twice {twice:?}"
        );
        edge.kill();
    }
    println!("{CYCLES} power losses during ingest: every one of {published} messages stored once");
}

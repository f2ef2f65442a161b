//! Disk budgets under each policy, fed by MQTT through a real mosquitto.

mod common;

use std::time::Duration;

use common::{publish, read_all, wait_status, Broker, Edge};
use tributary::service::{EventReader, ReaderConfig};
use tributary::wire::StartFrom;

const SIZE: usize = 10 << 10;

fn config(port: u16, when_full: &str) -> String {
    format!(
        "[[stream]]\nname = \"site/data\"\ndisk_budget_mb = 1\nwhen_full = \"{when_full}\"\n\
         [[mqtt]]\nbroker = \"127.0.0.1:{port}\"\nclient_id = \"budget-edge\"\n\
         [[mqtt.route]]\nfilter = \"data\"\nstream = \"site/data\"\nqos = 1\n"
    )
}

/// Message `n`: its number, then padding to 10 KiB.
fn messages(range: std::ops::RangeInclusive<u64>) -> Vec<(String, Vec<u8>)> {
    range
        .map(|n| {
            let mut p = format!("{n} ").into_bytes();
            p.resize(SIZE, b'.');
            ("data".to_string(), p)
        })
        .collect()
}

fn number(payload: &[u8]) -> u64 {
    std::str::from_utf8(payload)
        .ok()
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad payload"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_taking_messages_at_the_budget_and_loses_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path());
    let mut edge = Edge::new(dir.path(), &config(broker.port, "pause"));
    edge.start();
    edge.ready().await;
    publish(broker.port, messages(1..=150)).await;

    // 1 MiB holds about 100 of the 150: the stream pauses there and stays paused.
    wait_status(&edge, 20, "paused at the budget", |s| s.streams[0].paused).await;
    // Events submitted before the pause may still be waiting for their fsync (status
    // counts durable ones): count once they are, then again later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = edge.status().await.expect("status");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s2 = edge.status().await.expect("status");
    assert_eq!(
        s.streams[0].events, s2.streams[0].events,
        "stored more while paused"
    );
    let stored = s2.streams[0].events;
    assert!((90..150).contains(&stored), "{s2:?}");
    assert!(s2.streams[0].disk_bytes >= 1 << 20, "{s2:?}");

    // A reader takes what is there; the user truncates what it read: room again.
    let client = edge.client().await;
    client
        .create_reader_group("site", "app", "data", StartFrom::Head)
        .await
        .expect("group");
    let mut reader = EventReader::join(&client, "site", "app", "r", ReaderConfig::default())
        .await
        .expect("join");
    let mut got = Vec::new();
    while let Some(e) = reader.next(Duration::from_secs(1)).await.expect("read") {
        got.push(number(&e.payload));
    }
    assert_eq!(got.len() as u64, stored);
    let cut = client.stream_tail("site", "data").await.expect("tail");
    client
        .truncate_stream("site", "data", &cut)
        .await
        .expect("truncate");

    wait_status(&edge, 20, "the rest stored after the truncation", |s| {
        s.streams[0].events == 150 && !s.streams[0].paused
    })
    .await;
    while let Some(e) = reader.next(Duration::from_secs(1)).await.expect("read") {
        got.push(number(&e.payload));
    }
    assert_eq!(
        got,
        (1..=150).collect::<Vec<_>>(),
        "each message once, in order"
    );
    assert_eq!(edge.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_keeps_the_newest_data_within_the_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path());
    let mut edge = Edge::new(dir.path(), &config(broker.port, "drop-oldest"));
    edge.start();
    edge.ready().await;
    publish(broker.port, messages(1..=300)).await;

    let s = wait_status(&edge, 30, "all stored, within the budget", |s| {
        s.streams[0].events == 300 && s.streams[0].disk_bytes <= 1 << 20
    })
    .await;
    assert!(!s.streams[0].paused, "{s:?}");
    assert_eq!(s.streams[0].bytes as usize, 300 * (SIZE + 6 + 4), "{s:?}");

    let client = edge.client().await;
    let got: Vec<u64> = read_all(&client, "site", "data", Duration::from_secs(1))
        .await
        .iter()
        .map(|(_, p)| number(p))
        .collect();
    let first = *got.first().expect("something kept");
    assert!(first > 100, "the oldest were dropped: {first}");
    assert_eq!(
        got,
        (first..=300).collect::<Vec<_>>(),
        "the newest, whole and in order"
    );
    assert_eq!(edge.terminate().code(), Some(0));
}

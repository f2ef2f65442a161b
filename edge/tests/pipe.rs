//! The command source with a real `tributary-edge` process: each run's output is one
//! event, read back whole; failing and oversized runs store nothing.

mod common;

use std::time::Duration;

use common::{read_all, wait_status, Edge};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_run_of_a_command_is_one_event_and_failed_runs_store_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 3.5 MB per run (more than one log frame), a run that fails half-way, and one
    // that writes more than its limit.
    let body = "[[stream]]\nname = \"cam/clips\"\n[[stream]]\nname = \"cam/bad\"\n\
        [[pipe]]\ncommand = [\"sh\", \"-c\", \"seq 1 500000\"]\nstream = \"cam/clips\"\n\
        key = \"front\"\nevery_secs = 1\n\
        [[pipe]]\ncommand = [\"sh\", \"-c\", \"echo half a clip; exit 3\"]\nstream = \"cam/bad\"\n\
        [[pipe]]\ncommand = [\"sh\", \"-c\", \"head -c 3000000 /dev/zero\"]\nstream = \"cam/bad\"\n\
        max_event_mb = 1\n";
    let mut edge = Edge::new(dir.path(), body);
    edge.start();
    edge.ready().await;
    let s = wait_status(&edge, 30, "two runs stored, the others failed", |s| {
        s.pipe[0].events >= 2 && s.pipe[1].failures >= 1 && s.pipe[2].failures >= 1
    })
    .await;
    assert!(
        s.pipe[1]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("exit status: 3")),
        "{s:?}"
    );
    assert!(
        s.pipe[2]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("larger than max_event_mb")),
        "{s:?}"
    );
    let want: String = (1..=500_000).map(|i| format!("{i}\n")).collect();
    let c = edge.client().await;
    let events = read_all(&c, "cam", "clips", Duration::from_secs(1)).await;
    assert!(events.len() >= 2);
    for (key, payload) in &events {
        assert_eq!(key, b"front");
        assert!(payload == want.as_bytes(), "a run's output, whole");
    }
    assert!(read_all(&c, "cam", "bad", Duration::from_millis(500))
        .await
        .is_empty());
    assert_eq!(edge.terminate().code(), Some(0), "{}", edge.tail());
}

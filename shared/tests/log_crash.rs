//! Crash test with real processes: a child appends numbered events to many segments and
//! prints each acknowledgment; the parent SIGKILLs it at random moments, reopens the log
//! and checks that every acknowledged event is present exactly once, in order, and that
//! nothing torn is visible.
//!
//! The child is this same test binary, run with `CRASH_CHILD_DIR` set.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use tributary::event::{decode_events, frame_event};
use tributary::log::{AppendOptions, LogConfig, LogError, SegmentLog};

const SEGMENTS: u32 = 8;
const KILLS: usize = 50;
const CHILD_ENV: &str = "CRASH_CHILD_DIR";

fn config() -> LogConfig {
    LogConfig {
        // Small files: kills land during rolls and checkpoints too.
        max_file_bytes: 64 << 10,
        ..LogConfig::default()
    }
}

/// Event `num` of segment `seg`: seg, num, a variable-length filler, and a CRC.
fn event(seg: u32, num: u64) -> Bytes {
    let mut p = Vec::new();
    p.extend_from_slice(&seg.to_be_bytes());
    p.extend_from_slice(&num.to_be_bytes());
    p.extend(std::iter::repeat_n((num % 251) as u8, (num % 300) as usize));
    let crc = crc32c::crc32c(&p);
    p.extend_from_slice(&crc.to_be_bytes());
    frame_event(b"", &p)
}

/// Parses a segment's bytes; panics on anything torn, duplicated or out of order.
fn check_segment(seg: u32, data: &Bytes) -> u64 {
    let (events, used) = decode_events(data).expect("well-formed events");
    assert_eq!(
        used,
        data.len(),
        "segment {seg}: a partial event is visible"
    );
    for (i, e) in events.iter().enumerate() {
        let (body, crc) = e.payload.split_at(e.payload.len() - 4);
        assert_eq!(
            crc32c::crc32c(body).to_be_bytes(),
            crc,
            "segment {seg}: event {i} is damaged"
        );
        let s = u32::from_be_bytes(body[0..4].try_into().expect("4 bytes"));
        let n = u64::from_be_bytes(body[4..12].try_into().expect("8 bytes"));
        assert_eq!(
            (s, n),
            (seg, i as u64),
            "segment {seg}: event {i} out of order"
        );
    }
    events.len() as u64
}

async fn read_segment(log: &SegmentLog, name: &str) -> Bytes {
    let info = log.info(name).expect("info");
    let mut out = Vec::with_capacity(info.length as usize);
    while (out.len() as u64) < info.length {
        let r = log
            .read(name, out.len() as u64, 1 << 20, Duration::ZERO)
            .await
            .expect("read");
        out.extend_from_slice(&r.to_bytes());
    }
    Bytes::from(out)
}

/// The child: recover, then append forever, printing `seg num` once durable.
async fn child(dir: &Path) {
    let log = SegmentLog::open(dir, config()).expect("child open");
    let mut next = Vec::new();
    for s in 0..SEGMENTS {
        let name = format!("seg/{s}");
        match log.create(&name).await {
            Ok(()) | Err(LogError::SegmentExists(_)) => {}
            Err(e) => panic!("create: {e}"),
        }
        next.push(check_segment(s, &read_segment(&log, &name).await));
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY").expect("stdout");
    out.flush().expect("flush");
    let mut in_flight = std::collections::VecDeque::new();
    let mut s = 0u32;
    loop {
        let num = next[s as usize];
        match log.submit_append(
            &format!("seg/{s}"),
            &event(s, num),
            &AppendOptions::default(),
        ) {
            Ok((_, t)) => {
                in_flight.push_back((t, s, num));
                next[s as usize] += 1;
                s = (s + 1) % SEGMENTS;
            }
            Err(LogError::Backpressure(_)) => {}
            Err(e) => panic!("append: {e}"),
        }
        if in_flight.len() >= 64 {
            let (t, _, _) = *in_flight.front().expect("non-empty");
            log.durable(t).await.expect("durable");
            while let Some(&(t, s, n)) = in_flight.front() {
                if !log.is_durable(t).expect("durable") {
                    break;
                }
                writeln!(out, "{s} {n}").expect("stdout");
                in_flight.pop_front();
            }
            out.flush().expect("flush");
        }
    }
}

#[test]
fn crash_child_entry() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // Only runs as the child of `acknowledged_events_survive_sigkill`.
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(child(Path::new(&dir)));
}

#[test]
fn acknowledged_events_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let exe = std::env::current_exe().expect("current exe");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut acked: HashMap<u32, u64> = HashMap::new();
    let mut total_acks = 0u64;
    for round in 0..KILLS {
        let mut child = Command::new(&exe)
            .args([
                "crash_child_entry",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Kill at a random moment: sometimes during recovery, mostly while appending.
        let early = rng.gen_bool(0.2);
        let wait = Duration::from_millis(rng.gen_range(0..if early { 30 } else { 400 }));
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut ready = false;
        let mut ready_at = Instant::now();
        loop {
            if early || (ready && ready_at.elapsed() >= wait) {
                if early {
                    std::thread::sleep(wait);
                }
                break;
            }
            assert!(Instant::now() < deadline, "child never became ready");
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(5)) {
                if l.ends_with("READY") {
                    ready = true;
                    ready_at = Instant::now();
                }
                if let Some((s, n)) = l.split_once(' ') {
                    record(&mut acked, &mut total_acks, s, n);
                }
            }
        }
        child.kill().expect("SIGKILL"); // std sends SIGKILL
        let status = child.wait().expect("wait");
        assert!(
            !status.success(),
            "round {round}: the child exited by itself"
        );
        reader.join().expect("reader");
        for l in rx.try_iter() {
            if let Some((s, n)) = l.split_once(' ') {
                record(&mut acked, &mut total_acks, s, n);
            }
        }

        // Reopen and check every segment.
        rt.block_on(async {
            let log = SegmentLog::open(dir.path(), config()).expect("reopen after SIGKILL");
            for s in 0..SEGMENTS {
                let name = format!("seg/{s}");
                let Ok(_) = log.info(&name) else {
                    assert!(
                        acked.is_empty() || !acked.contains_key(&s),
                        "segment {s} lost"
                    );
                    continue;
                };
                let n = check_segment(s, &read_segment(&log, &name).await);
                if let Some(&max) = acked.get(&s) {
                    assert!(
                        n > max,
                        "round {round}: segment {s} has {n} events but event {max} was acknowledged"
                    );
                }
            }
            log.close().expect("close");
        });
    }
    println!("{KILLS} kills, {total_acks} acknowledged events verified");
    assert!(
        total_acks > 1000,
        "too few acknowledgments to mean anything"
    );
}

fn record(acked: &mut HashMap<u32, u64>, total: &mut u64, s: &str, n: &str) {
    // A line cut by the kill does not parse and is ignored.
    if let (Ok(s), Ok(n)) = (s.parse::<u32>(), n.parse::<u64>()) {
        let e = acked.entry(s).or_insert(0);
        *e = (*e).max(n);
        *total += 1;
    }
}

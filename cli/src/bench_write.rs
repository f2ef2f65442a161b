//! `trib bench write`: events through a running server (writers over QUIC with TLS,
//! routing keys, pipelined appends), and in the same run `trib bench log` on this
//! machine, with the ratio of the two.
//!
//! Each writer has its own connection and writes `--event-bytes` events with routing
//! keys spread over the stream's segments, as fast as the writer takes them. Latency
//! is measured on one event in 64: from `write` to the moment the writer reports every
//! event up to it durable.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tributary::service::{Client, EventWriter, WriterConfig, MAX_EVENT_BYTES};
use tributary::stream::{RetentionPolicy, ScalingPolicy, StreamConfig};

use crate::bench_log;

/// One event in this many has its latency measured.
const SAMPLE_EVERY: i64 = 64;
/// Routing keys used.
const KEYS: usize = 1024;

/// Options of `trib bench write`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Concurrent writers, each on its own connection.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Segments of the benchmark stream.
    #[arg(long, default_value_t = 4)]
    segments: u32,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 100)]
    event_bytes: usize,
    /// Duration of each phase, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Directory for the `bench log` phase; use the disk the server writes to.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// Scope of the benchmark stream (created if missing; the stream is deleted after).
    #[arg(long, default_value = "bench")]
    scope: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

struct WriterResult {
    events: u64,
    latencies_us: Vec<u32>,
}

pub async fn run(c: &Client, args: Args) -> Result<()> {
    if args.writers == 0 || args.segments == 0 {
        bail!("--writers and --segments must be at least 1");
    }
    if args.event_bytes == 0 || args.event_bytes > MAX_EVENT_BYTES {
        bail!("--event-bytes must be between 1 and {MAX_EVENT_BYTES}");
    }
    let run_for = Duration::try_from_secs_f64(args.seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow!("--seconds must be a positive number"))?;

    // Phase 1: the storage engine alone, same machine, same run.
    let log_args = bench_log::Args {
        dir: args.dir.clone(),
        appenders: args.writers,
        segments: args.segments as usize,
        event_bytes: args.event_bytes,
        seconds: args.seconds,
        window: 10_000,
        commit_delay_us: 0,
        json: true,
    };
    let log = tokio::task::spawn_blocking(move || bench_log::measure(&log_args))
        .await
        .context("the log benchmark")??;

    // Phase 2: through the server.
    match c.create_scope(&args.scope).await {
        Ok(()) => {}
        Err(tributary::service::ClientError::Server {
            code: tributary::wire::ErrorCode::ScopeExists,
            ..
        }) => {}
        Err(e) => return Err(e.into()),
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let stream = format!("write-{}-{nanos:x}", std::process::id());
    let config = StreamConfig {
        scaling: ScalingPolicy::Fixed {
            segments: args.segments,
        },
        retention: RetentionPolicy::Forever,
    };
    c.create_stream(&args.scope, &stream, config).await?;
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|k| format!("key-{k}")).collect());
    let start = Instant::now();
    let deadline = start + run_for;
    let mut tasks = Vec::new();
    for _ in 0..args.writers {
        let conn = c.reconnect().await?;
        let w = EventWriter::new(&conn, &args.scope, &stream, WriterConfig::default()).await?;
        let (keys, event_bytes) = (keys.clone(), args.event_bytes);
        tasks.push(tokio::spawn(async move {
            let r = write_loop(w, &keys, event_bytes, deadline).await;
            conn.close().await;
            r
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.context("a writer task")??);
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    c.seal_stream(&args.scope, &stream).await?;
    c.delete_stream(&args.scope, &stream).await?;

    let events: u64 = results.iter().map(|r| r.events).sum();
    let bytes = events * args.event_bytes as u64;
    let mut lat: Vec<u32> = results
        .iter()
        .flat_map(|r| r.latencies_us.iter().copied())
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let events_per_s = events as f64 / elapsed;
    let mb_per_s = bytes as f64 / elapsed / 1e6;
    let log_events_per_s = log["events_per_s"].as_f64().unwrap_or(f64::NAN);
    let ratio = events_per_s / log_events_per_s;
    let out = serde_json::json!({
        "events_per_s": events_per_s,
        "mb_per_s": mb_per_s,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "write_amp": null,
        "writers": args.writers,
        "segments": args.segments,
        "event_bytes": args.event_bytes,
        "seconds": args.seconds,
        "elapsed_s": elapsed,
        "events": events,
        "payload_bytes": bytes,
        "log_events_per_s": log_events_per_s,
        "log_mb_per_s": log["mb_per_s"],
        "ratio_to_log": ratio,
        "log": log,
    });
    if args.json {
        println!("{out}");
    } else {
        println!(
            "write bench: {} writers, {} segments, {} B events, {} s, through {}",
            args.writers,
            args.segments,
            args.event_bytes,
            args.seconds,
            c.server_addr()
        );
        println!("events/s:        {events_per_s:.0}  ({events} events in {elapsed:.3} s)");
        println!("MB/s (payload):  {mb_per_s:.2}");
        println!(
            "ack latency:     p50 {} µs, p99 {} µs (1 event in {SAMPLE_EVERY})",
            pct(0.5),
            pct(0.99)
        );
        println!(
            "bench log:       {log_events_per_s:.0} events/s, {:.2} MB/s (same machine, same run)",
            log["mb_per_s"].as_f64().unwrap_or(f64::NAN)
        );
        println!("write / log:     {ratio:.3}");
    }
    Ok(())
}

async fn write_loop(
    mut w: EventWriter,
    keys: &[String],
    event_bytes: usize,
    deadline: Instant,
) -> Result<WriterResult> {
    let samples: Arc<Mutex<VecDeque<(i64, Instant)>>> = Arc::default();
    let watcher = {
        let samples = samples.clone();
        let mut acked = w.acknowledged();
        tokio::spawn(async move {
            let mut lat = Vec::new();
            while acked.changed().await.is_ok() {
                let through = *acked.borrow_and_update();
                let now = Instant::now();
                let Ok(mut s) = samples.lock() else { break };
                while s.front().is_some_and(|(n, _)| *n <= through) {
                    if let Some((_, t)) = s.pop_front() {
                        lat.push(now.duration_since(t).as_micros().min(u32::MAX as u128) as u32);
                    }
                }
            }
            lat
        })
    };
    let payload = vec![b'x'; event_bytes];
    let mut events = 0u64;
    let mut i = 0usize;
    while Instant::now() < deadline {
        for _ in 0..256 {
            // Only sampled events read the clock (it cost about 8 % of the client's CPU
            // at 100 B when every event did).
            let t = (events % SAMPLE_EVERY as u64 == 0).then(Instant::now);
            let n = w.write(keys[i % keys.len()].as_bytes(), &payload).await?;
            if let Some(t) = t {
                if let Ok(mut s) = samples.lock() {
                    s.push_back((n, t));
                }
            }
            i = i.wrapping_add(7919);
            events += 1;
        }
    }
    w.close().await?;
    let latencies_us = watcher.await.unwrap_or_default();
    Ok(WriterResult {
        events,
        latencies_us,
    })
}

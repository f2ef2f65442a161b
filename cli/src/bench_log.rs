//! `trib bench log`: append throughput, ack latency and write amplification of the
//! segment log, next to what the same disk does with plain sequential writes of the
//! log's average batch size, each followed by `fdatasync`.
//!
//! Each appender is a std thread (the log's writer is its own thread, no async runtime
//! is involved in the hot path) that submits appends without waiting, keeps up to
//! `--window` of them in flight, and polls [`SegmentLog::is_durable`] to acknowledge
//! them in order; with nothing to do it blocks on its oldest ticket. An event's latency runs from just before its submission to the poll
//! that saw it durable.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use tributary::log::direct::DirectFile;
use tributary::log::{AppendOptions, LogConfig, LogError, SegmentLog, Ticket};

/// Submissions between two opportunistic acknowledgement polls (besides the polls made
/// when the window is full or the log pushes back). Keeps latencies honest without
/// hammering the log's durable mark.
const POLL_EVERY: u64 = 16;

/// Longest run of the raw-disk baseline.
const RAW_MAX_SECONDS: f64 = 3.0;

/// Smallest write of the raw-disk baseline.
const RAW_MIN_WRITE: usize = 4096;

/// Options of `trib bench log`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Data directory: a fresh subdirectory is created in it and removed at the end.
    #[arg(long)]
    pub dir: PathBuf,
    /// Concurrent appender threads.
    #[arg(long, default_value_t = 4)]
    pub appenders: usize,
    /// Segments, spread over the appenders (appender i writes segments i, i+N, ...).
    #[arg(long, default_value_t = 1)]
    pub segments: usize,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 100)]
    pub event_bytes: usize,
    /// Duration of the append phase, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Largest number of appends in flight (submitted, not yet durable) per appender.
    #[arg(long, default_value_t = 10_000)]
    pub window: usize,
    /// The log's group-commit delay, in microseconds.
    #[arg(long, default_value_t = 0)]
    pub commit_delay_us: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Removes the bench directory when dropped, whatever happened.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one appender did.
#[derive(Debug, Default)]
struct Appended {
    events: u64,
    bytes: u64,
    latencies_us: Vec<u32>,
    /// Distinct tickets received, ascending (one per group commit joined).
    tickets: Vec<Ticket>,
    backpressured: u64,
    done: Option<Instant>,
}

/// Runs the benchmark and prints its figures.
pub fn run(args: &Args) -> Result<()> {
    let out = measure(args)?;
    if args.json {
        println!("{out}");
    } else {
        print_text(&out);
    }
    Ok(())
}

/// Runs the benchmark; returns its figures as the JSON object `--json` prints.
pub fn measure(args: &Args) -> Result<serde_json::Value> {
    let run_for = validate(args)?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let scratch = Scratch(
        args.dir
            .join(format!("trib-bench-log-{}-{nanos:08x}", std::process::id())),
    );
    std::fs::create_dir(&scratch.0).with_context(|| format!("creating {}", scratch.0.display()))?;

    let config = LogConfig {
        commit_delay: Duration::from_micros(args.commit_delay_us),
        ..LogConfig::default()
    };
    let log_dir = scratch.0.join("log");
    let log = Arc::new(
        SegmentLog::open(&log_dir, config)
            .with_context(|| format!("opening a segment log in {}", log_dir.display()))?,
    );
    let names: Vec<String> = (0..args.segments).map(|i| format!("bench/{i}")).collect();
    create_segments(&log, &names)?;

    let written_before = process_write_bytes();
    let start = Instant::now();
    let deadline = start + run_for;
    let results = std::thread::scope(|s| -> Result<Vec<Appended>> {
        let mut handles = Vec::with_capacity(args.appenders);
        for me in 0..args.appenders {
            let (log, names) = (&*log, &names);
            let h = std::thread::Builder::new()
                .name(format!("appender-{me}"))
                .spawn_scoped(s, move || append_loop(log, names, me, args, deadline))
                .context("starting an appender thread")?;
            handles.push(h);
        }
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("an appender panicked"))?)
            .collect()
    })?;
    let log = Arc::try_unwrap(log).map_err(|_| anyhow!("the segment log is still shared"))?;
    log.close().context("closing the segment log")?;
    let written_after = process_write_bytes();
    // Free the log's files (and their page cache) before the raw baseline, so both
    // phases start from the same memory and disk state.
    std::fs::remove_dir_all(&log_dir).with_context(|| format!("removing {}", log_dir.display()))?;

    let events: u64 = results.iter().map(|r| r.events).sum();
    let bytes: u64 = results.iter().map(|r| r.bytes).sum();
    let backpressured: u64 = results.iter().map(|r| r.backpressured).sum();
    let done = results.iter().filter_map(|r| r.done).max().unwrap_or(start);
    let elapsed = done.duration_since(start).as_secs_f64().max(1e-9);
    let mut latencies: Vec<u32> = results
        .iter()
        .flat_map(|r| r.latencies_us.iter().copied())
        .collect();
    latencies.sort_unstable();
    let mut tickets: Vec<Ticket> = results
        .iter()
        .flat_map(|r| r.tickets.iter().copied())
        .collect();
    tickets.sort_unstable();
    tickets.dedup();
    let batches = tickets.len().max(1);
    let batch_bytes_avg = bytes as f64 / batches as f64;
    let write_amp = match (written_before, written_after) {
        (Some(b), Some(a)) if bytes > 0 => Some(a.saturating_sub(b) as f64 / bytes as f64),
        _ => None,
    };
    let events_per_s = events as f64 / elapsed;
    let mb_per_s = bytes as f64 / elapsed / 1e6;
    let (p50_us, p99_us) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));

    let raw_write = (batch_bytes_avg.round() as usize).max(RAW_MIN_WRITE);
    let raw_for = Duration::from_secs_f64(args.seconds.min(RAW_MAX_SECONDS));
    let (raw_mb_per_s, raw_writes_per_s, raw_buffered_mb_per_s, raw_direct_mb_per_s) =
        raw_baselines(&scratch.0, raw_write, raw_for)?;
    let ratio_to_raw = mb_per_s / raw_mb_per_s.max(1e-9);

    Ok(serde_json::json!({
        "events_per_s": events_per_s,
        "mb_per_s": mb_per_s,
        "p50_us": p50_us,
        "p99_us": p99_us,
        "write_amp": write_amp,
        "raw_mb_per_s": raw_mb_per_s,
        "raw_writes_per_s": raw_writes_per_s,
        "raw_buffered_mb_per_s": raw_buffered_mb_per_s,
        "raw_direct_mb_per_s": raw_direct_mb_per_s,
        "raw_write_bytes": raw_write,
        "ratio_to_raw": ratio_to_raw,
        "appenders": args.appenders,
        "segments": args.segments,
        "event_bytes": args.event_bytes,
        "seconds": args.seconds,
        "window": args.window,
        "commit_delay_us": args.commit_delay_us,
        "elapsed_s": elapsed,
        "events": events,
        "payload_bytes": bytes,
        "batches": batches,
        "batch_bytes_avg": batch_bytes_avg,
        "backpressured": backpressured,
    }))
}

fn print_text(v: &serde_json::Value) {
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let amp = v["write_amp"]
        .as_f64()
        .map_or("n/a (no /proc/self/io)".to_string(), |w| format!("{w:.3}"));
    println!(
        "log bench: {} appenders, {} segments, {} B events, {} s, window {}, commit delay {} µs",
        v["appenders"],
        v["segments"],
        v["event_bytes"],
        v["seconds"],
        v["window"],
        v["commit_delay_us"]
    );
    println!(
        "events/s:        {:.0}  ({} events in {:.3} s)",
        f("events_per_s"),
        v["events"],
        f("elapsed_s")
    );
    println!("MB/s (payload):  {:.2}", f("mb_per_s"));
    println!(
        "ack latency:     p50 {} µs, p99 {} µs",
        v["p50_us"], v["p99_us"]
    );
    println!("write amp:       {amp}");
    println!(
        "avg batch:       {:.0} B over {} group commits",
        f("batch_bytes_avg"),
        v["batches"]
    );
    let direct = v["raw_direct_mb_per_s"]
        .as_f64()
        .map_or("no direct I/O here".to_string(), |d| {
            format!("direct {d:.2}")
        });
    println!(
        "raw disk:        {:.2} MB/s, {:.0} writes/s ({} B writes + fdatasync; the better of buffered {:.2} and {direct} MB/s)",
        f("raw_mb_per_s"),
        f("raw_writes_per_s"),
        v["raw_write_bytes"],
        f("raw_buffered_mb_per_s"),
    );
    println!("log / raw:       {:.3}", f("ratio_to_raw"));
}

/// Checks the options; returns the duration of the append phase.
fn validate(args: &Args) -> Result<Duration> {
    let max_event = LogConfig::default().max_append_bytes;
    if args.appenders == 0 || args.segments == 0 || args.window == 0 {
        bail!("--appenders, --segments and --window must be at least 1");
    }
    if args.event_bytes == 0 || args.event_bytes > max_event {
        bail!("--event-bytes must be between 1 and {max_event}");
    }
    match Duration::try_from_secs_f64(args.seconds) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => bail!("--seconds must be a positive number"),
    }
}

/// Creates the segments, all submitted at once so they share a few group commits.
fn create_segments(log: &Arc<SegmentLog>, names: &[String]) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime")?;
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for name in names {
            let (log, name) = (log.clone(), name.clone());
            set.spawn(async move {
                let r = log.create(&name).await;
                r.with_context(|| format!("creating segment {name}"))
            });
        }
        while let Some(r) = set.join_next().await {
            r.context("a segment creation task failed")??;
        }
        Ok(())
    })
}

/// One appender: submits to its share of the segments until `deadline`, then waits for
/// everything it submitted to be durable.
fn append_loop(
    log: &SegmentLog,
    names: &[String],
    me: usize,
    args: &Args,
    deadline: Instant,
) -> Result<Appended> {
    let mut mine: Vec<&str> = names
        .iter()
        .skip(me)
        .step_by(args.appenders)
        .map(String::as_str)
        .collect();
    if mine.is_empty() {
        mine.push(&names[me % names.len()]);
    }
    let opts = AppendOptions::default();
    let mut payload: Vec<u8> = (0..args.event_bytes)
        .map(|i| (i % 251) as u8 ^ me as u8)
        .collect();
    // Only to block on the oldest ticket when there is nothing else to do, so idle
    // appenders sleep instead of taking CPU from the log's writer.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("building an appender runtime")?;
    let wait_oldest = |inflight: &VecDeque<(Ticket, Instant)>| -> Result<()> {
        if let Some(&(t, _)) = inflight.front() {
            rt.block_on(log.durable(t))?;
        }
        Ok(())
    };
    let mut out = Appended::default();
    let mut inflight: VecDeque<(Ticket, Instant)> = VecDeque::with_capacity(args.window);
    let mut acked: Option<Ticket> = None;
    let mut next = 0;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if inflight.len() >= args.window {
            if ack(log, &mut inflight, &mut acked, &mut out.latencies_us)? == 0 {
                wait_oldest(&inflight)?;
            }
            continue;
        }
        let counter = (out.events + 1).to_le_bytes();
        let n = counter.len().min(payload.len());
        payload[..n].copy_from_slice(&counter[..n]);
        match log.submit_append(mine[next], &payload, &opts) {
            Ok((_, ticket)) => {
                out.events += 1;
                out.bytes += payload.len() as u64;
                if out.tickets.last() != Some(&ticket) {
                    out.tickets.push(ticket);
                }
                inflight.push_back((ticket, now));
                next = (next + 1) % mine.len();
                if out.events % POLL_EVERY == 0 {
                    ack(log, &mut inflight, &mut acked, &mut out.latencies_us)?;
                }
            }
            Err(LogError::Backpressure(_)) => {
                out.backpressured += 1;
                ack(log, &mut inflight, &mut acked, &mut out.latencies_us)?;
                rt.block_on(log.wait_for_room());
            }
            Err(e) => return Err(e).with_context(|| format!("appending to {}", mine[next])),
        }
    }
    while !inflight.is_empty() {
        if ack(log, &mut inflight, &mut acked, &mut out.latencies_us)? == 0 {
            wait_oldest(&inflight)?;
        }
    }
    out.done = Some(Instant::now());
    Ok(out)
}

/// Acknowledges the durable appends at the front of `inflight`, recording their
/// latencies; returns how many. `acked` is the highest ticket known durable.
fn ack(
    log: &SegmentLog,
    inflight: &mut VecDeque<(Ticket, Instant)>,
    acked: &mut Option<Ticket>,
    latencies_us: &mut Vec<u32>,
) -> Result<usize> {
    let now = Instant::now();
    let mut n = 0;
    while let Some(&(ticket, at)) = inflight.front() {
        if acked.is_none_or(|a| ticket > a) {
            if !log.is_durable(ticket)? {
                break;
            }
            *acked = Some(ticket);
        }
        let us = now.saturating_duration_since(at).as_micros();
        latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
        inflight.pop_front();
        n += 1;
    }
    Ok(n)
}

/// Nearest-rank percentile of sorted values (0 when there are none).
fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Bytes this process has caused to be written to storage (`write_bytes` of
/// `/proc/self/io`, all threads), if the kernel tells.
fn process_write_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The raw disk at `size`-byte writes: buffered and direct, each for `run_for`.
/// Returns (best MB/s, its writes/s, buffered MB/s, direct MB/s if supported).
fn raw_baselines(
    dir: &Path,
    size: usize,
    run_for: Duration,
) -> Result<(f64, f64, f64, Option<f64>)> {
    let buffered =
        raw_baseline(dir, size, run_for, false)?.context("buffered writes are always possible")?;
    let direct = raw_baseline(dir, size, run_for, true)?;
    let best = direct.filter(|d| d.0 > buffered.0).unwrap_or(buffered);
    Ok((best.0, best.1, buffered.0, direct.map(|d| d.0)))
}

/// Sequential writes of `size` bytes to a fresh file in `dir`, each followed by
/// `fdatasync`, for `run_for` (at least one): through the page cache, or with direct
/// I/O as the log writes where it can (block-aligned, the last partial block written
/// again with the next write). Returns (MB/s, writes/s), or `None` if the file system
/// refuses direct I/O.
fn raw_baseline(
    dir: &Path,
    size: usize,
    run_for: Duration,
    direct: bool,
) -> Result<Option<(f64, f64)>> {
    let path = dir.join("raw");
    let mut file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut direct = if direct {
        match DirectFile::open(&path, &file, 0)
            .with_context(|| format!("opening {} for direct I/O", path.display()))?
        {
            Some(d) => Some(d),
            None => return Ok(None),
        }
    } else {
        None
    };
    let buf: Vec<u8> = (0..size).map(|i| (i % 251) as u8 + 1).collect();
    let start = Instant::now();
    let mut writes = 0u64;
    while writes == 0 || start.elapsed() < run_for {
        match &mut direct {
            Some(d) => {
                let (mut block, at) = d.buffer(size);
                block.extend_from_slice(&buf);
                d.write(writes * size as u64, &mut block, at)
            }
            None => file.write_all(&buf),
        }
        .and_then(|()| file.sync_data())
        .with_context(|| format!("writing {}", path.display()))?;
        writes += 1;
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    Ok(Some((
        (writes * size as u64) as f64 / secs / 1e6,
        writes as f64 / secs,
    )))
}

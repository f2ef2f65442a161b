//! Historical reads: a segment read from the head out of Tier-2 (Garage, a real S3
//! server on loopback) versus out of the local log, in the same run.
//!
//! `cargo bench -p tributary-cloud --bench tier2_read [-- MIB]` (default 1024 MiB).
//!
//! The segment is written through the segment log, read back from the log (reopened, so
//! the log's own cache is cold; the OS page cache is not dropped), moved to Tier-2 in
//! 16 MiB chunks, then read back from Tier-2 twice after reopening: with the default
//! cache (64 MiB: two chunks prefetched ahead of the reader) and with a 16 MiB cache
//! (room for the current chunk only: no prefetch). Every read is checked against the
//! CRC of what was written.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::garage::Garage;
use tributary::log::{AppendOptions, LogConfig, MoveStats, SegmentLog, Tier2};
use tributary_cloud::s3::S3Tier2;

const SEGMENT: &str = "bench/history/0";
const APPEND: usize = 1 << 20;
const CHUNK: u64 = 16 << 20;

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// Reads the whole segment from the head in 1 MiB reads; returns the CRC and the time.
async fn read_all(log: &SegmentLog, len: u64) -> (u32, Duration) {
    let started = Instant::now();
    let mut crc = 0u32;
    let mut at = 0;
    while at < len {
        let r = log
            .read(SEGMENT, at, APPEND, Duration::ZERO)
            .await
            .expect("read");
        assert!(!r.is_empty());
        crc = r.parts.iter().fold(crc, |c, p| crc32c::crc32c_append(c, p));
        at += r.len() as u64;
    }
    (crc, started.elapsed())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; test runners listing or running targets do not.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let mib: u64 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(1024);
    let tmp = tempfile::tempdir().expect("tempdir");
    let garage = Garage::start(&tmp.path().join("garage"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tier2: Arc<dyn Tier2> = Arc::new(S3Tier2::new(&garage.settings("bench/")).await);
        let dir = tmp.path().join("log");
        let open = |cache_bytes: usize| {
            let cfg = LogConfig {
                cache_bytes,
                ..LogConfig::default()
            };
            SegmentLog::open_tiered(&dir, cfg, tier2.clone()).expect("open log")
        };

        let log = open(64 << 20);
        log.create(SEGMENT).await.expect("create");
        let block: Vec<u8> = (0..APPEND).map(|i| (i * 7 % 251) as u8).collect();
        let len = mib * APPEND as u64;
        let mut written_crc = 0u32;
        let started = Instant::now();
        for i in 0..mib {
            let mut b = block.clone();
            b[..8].copy_from_slice(&i.to_le_bytes());
            written_crc = crc32c::crc32c_append(written_crc, &b);
            log.append(SEGMENT, &b, &AppendOptions::default())
                .await
                .expect("append");
        }
        let write = started.elapsed();
        log.close().expect("close");

        let log = open(64 << 20);
        let (crc, local) = read_all(&log, len).await;
        assert_eq!(crc, written_crc, "the log read back other bytes");

        let started = Instant::now();
        let mut stats = MoveStats::default();
        log.move_to_tier2(CHUNK, &mut stats)
            .await
            .expect("move to Tier-2");
        let moved = started.elapsed();
        assert_eq!(stats.bytes_moved, len);
        log.close().expect("close");

        let log = open(64 << 20);
        let (crc, tier2_prefetch) = read_all(&log, len).await;
        assert_eq!(crc, written_crc, "Tier-2 read back other bytes");
        log.close().expect("close");

        let log = open(CHUNK as usize);
        let (crc, tier2_plain) = read_all(&log, len).await;
        assert_eq!(crc, written_crc, "Tier-2 read back other bytes");
        log.close().expect("close");

        println!(
            "historical read of {mib} MiB (1 MiB reads, {} MiB chunks, Garage on loopback)",
            CHUNK >> 20
        );
        println!(
            "  write to the log        {:8.1} MiB/s",
            mib_per_s(len, write)
        );
        println!(
            "  move log -> Tier-2      {:8.1} MiB/s ({} chunks)",
            mib_per_s(len, moved),
            stats.chunks_written
        );
        println!(
            "  read from the log       {:8.1} MiB/s",
            mib_per_s(len, local)
        );
        println!(
            "  read from Tier-2        {:8.1} MiB/s (2 chunks prefetched)",
            mib_per_s(len, tier2_prefetch)
        );
        println!(
            "  read from Tier-2        {:8.1} MiB/s (no prefetch)",
            mib_per_s(len, tier2_plain)
        );
        println!(
            "  ratio Tier-2 / log      {:8.2} (prefetch), {:.2} (no prefetch)",
            local.as_secs_f64() / tier2_prefetch.as_secs_f64(),
            local.as_secs_f64() / tier2_plain.as_secs_f64()
        );
    });
}

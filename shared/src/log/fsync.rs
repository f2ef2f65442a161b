//! How long the log's group-commit fsyncs take: a fixed-bucket histogram, updated by
//! the sync thread without locks and rendered as `tributary_log_fsync_seconds`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (the last bucket is +Inf).
pub const BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// fsync durations so far.
#[derive(Debug, Default)]
pub struct FsyncHistogram {
    /// Per bucket (not cumulative), then +Inf.
    counts: [AtomicU64; BUCKETS.len() + 1],
    /// Sum in nanoseconds.
    sum_ns: AtomicU64,
}

impl FsyncHistogram {
    /// Records one fsync.
    pub fn record(&self, took: Duration) {
        let s = took.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    /// fsyncs recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Appends the histogram in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let name = "tributary_log_fsync_seconds";
        out.push_str(&format!(
            "# HELP {name} Time of each group-commit fsync of the segment log.\n# TYPE {name} histogram\n"
        ));
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            out.push_str(&format!("{name}_bucket{{le=\"{le}\"}} {cumulative}\n"));
        }
        out.push_str(&format!(
            "{name}_sum {}\n{name}_count {cumulative}\n",
            self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_sum_in_seconds() {
        let h = FsyncHistogram::default();
        h.record(Duration::from_micros(300));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(2));
        let mut out = String::new();
        h.render(&mut out);
        assert!(
            out.contains("tributary_log_fsync_seconds_bucket{le=\"0.0005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("tributary_log_fsync_seconds_bucket{le=\"0.005\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("tributary_log_fsync_seconds_bucket{le=\"1\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("tributary_log_fsync_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("tributary_log_fsync_seconds_count 3\n"),
            "{out}"
        );
        assert!(
            out.contains("tributary_log_fsync_seconds_sum 2.0033\n"),
            "{out}"
        );
        assert_eq!(h.count(), 3);
    }
}

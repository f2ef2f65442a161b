//! When a stream should scale: split a segment whose load stayed above the policy's
//! target for the whole window, merge two neighbours that both stayed below half of it.

use super::model::{KeyRange, ScalingPolicy, SegmentId, StreamMeta};

/// The measured load of one active segment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadSample {
    /// Segment.
    pub segment: SegmentId,
    /// Events per second, averaged over the window.
    pub events_per_s: f64,
    /// Bytes per second, averaged over the window.
    pub bytes_per_s: f64,
    /// Seconds the rate has stayed on the same side of the target.
    pub sustained_s: u64,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScaleDecision {
    /// Seal `segment` and create successors over `into`.
    Split {
        /// The hot segment.
        segment: SegmentId,
        /// The successors' ranges.
        into: Vec<KeyRange>,
    },
    /// Seal two neighbours and create one successor over `range`.
    Merge {
        /// The cold neighbours.
        segments: [SegmentId; 2],
        /// Their combined range.
        range: KeyRange,
    },
}

/// Decides the scales due for `meta` given per-segment loads; each segment takes part
/// in at most one decision. `window_s` is how long a load must be sustained.
pub fn scale_decision(
    meta: &StreamMeta,
    loads: &[LoadSample],
    window_s: u64,
) -> Vec<ScaleDecision> {
    let (target, factor, min) = match meta.config.scaling {
        ScalingPolicy::Fixed { .. } => return Vec::new(),
        ScalingPolicy::EventRate {
            target_events_per_s,
            scale_factor,
            min_segments,
        } => (target_events_per_s as f64, scale_factor, min_segments),
        ScalingPolicy::ByteRate {
            target_kib_per_s,
            scale_factor,
            min_segments,
        } => (target_kib_per_s as f64 * 1024.0, scale_factor, min_segments),
    };
    let by_bytes = matches!(meta.config.scaling, ScalingPolicy::ByteRate { .. });
    if meta.sealed {
        return Vec::new();
    }
    let rate = |l: &LoadSample| {
        if by_bytes {
            l.bytes_per_s
        } else {
            l.events_per_s
        }
    };
    let load = |id: SegmentId| loads.iter().find(|l| l.segment == id);
    let active = meta.active();
    let mut out = Vec::new();
    let mut used: Vec<SegmentId> = Vec::new();
    for s in &active {
        if let Some(l) = load(s.id) {
            if rate(l) > target
                && l.sustained_s >= window_s
                && s.range.high - s.range.low >= u64::from(factor)
            {
                out.push(ScaleDecision::Split {
                    segment: s.id,
                    into: s.range.split(u64::from(factor)),
                });
                used.push(s.id);
            }
        }
    }
    let mut count = active.len() + out.len() * (factor as usize - 1);
    let cold = |id: SegmentId| {
        load(id).is_some_and(|l| rate(l) < target / 2.0 && l.sustained_s >= window_s)
    };
    for w in active.windows(2) {
        if count <= min as usize {
            break;
        }
        let (a, b) = (w[0], w[1]);
        if used.contains(&a.id) || used.contains(&b.id) || !cold(a.id) || !cold(b.id) {
            continue;
        }
        out.push(ScaleDecision::Merge {
            segments: [a.id, b.id],
            range: KeyRange {
                low: a.range.low,
                high: b.range.high,
            },
        });
        used.extend([a.id, b.id]);
        count -= 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::model::{RetentionPolicy, StreamConfig};
    use super::*;

    fn meta(min: u32) -> StreamMeta {
        StreamMeta::new(StreamConfig {
            scaling: ScalingPolicy::EventRate {
                target_events_per_s: 100,
                scale_factor: 2,
                min_segments: min,
            },
            retention: RetentionPolicy::Forever,
        })
        .expect("valid")
    }

    fn sample(segment: SegmentId, events_per_s: f64, sustained_s: u64) -> LoadSample {
        LoadSample {
            segment,
            events_per_s,
            bytes_per_s: 0.0,
            sustained_s,
        }
    }

    #[test]
    fn a_sustained_hot_segment_splits_and_a_brief_spike_does_not() {
        let m = meta(1);
        let s = m.active()[0].id;
        assert!(scale_decision(&m, &[sample(s, 500.0, 10)], 60).is_empty());
        let d = scale_decision(&m, &[sample(s, 500.0, 60)], 60);
        assert_eq!(
            d,
            vec![ScaleDecision::Split {
                segment: s,
                into: KeyRange::ALL.split(2)
            }]
        );
    }

    #[test]
    fn cold_neighbours_merge_but_never_below_the_minimum() {
        let mut m = meta(1);
        let s = m.active()[0].id;
        let halves = m.scale(&[s], &KeyRange::ALL.split(2)).expect("split");
        let cold: Vec<LoadSample> = halves.iter().map(|h| sample(*h, 1.0, 600)).collect();
        let d = scale_decision(&m, &cold, 60);
        assert_eq!(
            d,
            vec![ScaleDecision::Merge {
                segments: [halves[0], halves[1]],
                range: KeyRange::ALL
            }]
        );
        let m2 = meta(2);
        let a: Vec<SegmentId> = m2.active().iter().map(|x| x.id).collect();
        let cold: Vec<LoadSample> = a.iter().map(|h| sample(*h, 1.0, 600)).collect();
        assert!(
            scale_decision(&m2, &cold, 60).is_empty(),
            "min_segments = 2"
        );
        // A fixed stream never scales.
        m.config.scaling = ScalingPolicy::Fixed { segments: 2 };
        assert!(scale_decision(&m, &cold, 60).is_empty());
    }
}

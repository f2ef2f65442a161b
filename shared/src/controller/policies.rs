//! The policies the controller applies by itself, once per tick: automatic scaling
//! (from the appends the segment service reports) and retention (truncation at a
//! stream cut recorded earlier). Samples are kept in memory: after a restart,
//! retention waits for new samples, so data is kept longer, never dropped early.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{meta_err, Controller, Result};
use crate::stream::{
    scale_decision, segment_name, LoadSample, RetentionPolicy, ScaleDecision, ScalingPolicy,
    StreamCut, StreamMeta,
};

/// How often and over which windows the policies run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicySettings {
    /// Time between ticks; each tick records a retention sample.
    pub tick: Duration,
    /// How long a segment's load must stay above (or well below) its target before
    /// it splits (or merges).
    pub scale_window: Duration,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            tick: Duration::from_secs(10),
            scale_window: Duration::from_secs(120),
        }
    }
}

/// Where a segment's rate stands against its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Hot,
    Normal,
    Cold,
}

/// Retention samples kept per stream, at most.
const MAX_SAMPLES: usize = 100_000;

#[derive(Debug, Default)]
pub(super) struct PolicyState {
    last_tick: Option<Instant>,
    /// Per stream (`scope/stream`): tail cuts, oldest first.
    samples: HashMap<String, VecDeque<(Instant, StreamCut)>>,
    /// Per segment name: its side and since when.
    sides: HashMap<String, (Side, Instant)>,
}

impl Controller {
    /// Counts a stored append block for the scaling policy.
    pub fn record_append(&self, segment: &str, events: u64, bytes: u64) {
        let Ok(mut load) = self.load.lock() else {
            return;
        };
        // Called for every acknowledged block: allocate the key only once per tick.
        match load.get_mut(segment) {
            Some(e) => *e = (e.0 + events, e.1 + bytes),
            None => {
                load.insert(segment.to_string(), (events, bytes));
            }
        }
    }

    /// Runs the policies every `settings.tick` until the task is aborted.
    pub fn spawn_policies(
        self: Arc<Self>,
        settings: PolicySettings,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(settings.tick);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if let Err(e) = self.tick(&settings).await {
                    tracing::warn!(error = %e, "stream policies failed; retrying next tick");
                }
            }
        })
    }

    /// One pass of the scaling and retention policies over every stream.
    pub async fn tick(&self, settings: &PolicySettings) -> Result<()> {
        let now = Instant::now();
        let load = std::mem::take(&mut *self.load.lock().map_err(meta_err)?);
        let elapsed = {
            let mut st = self.policy.lock().map_err(meta_err)?;
            let e = st.last_tick.map(|t| now.duration_since(t));
            st.last_tick = Some(now);
            e
        };
        let keys: Vec<String> = self
            .streams
            .iter()
            .keys()
            .filter_map(|k| k.ok())
            .map(|k| String::from_utf8_lossy(&k).to_string())
            .collect();
        for key in keys {
            let Some((scope, stream)) = key.split_once('/') else {
                continue;
            };
            // One stream's failure (e.g. a scale that raced a client's) does not stop
            // the others; it is retried at the next tick.
            if let Err(e) = self
                .tick_stream(scope, stream, &load, elapsed, now, settings)
                .await
            {
                tracing::warn!(%scope, %stream, error = %e, "stream policies failed");
            }
        }
        Ok(())
    }

    async fn tick_stream(
        &self,
        scope: &str,
        stream: &str,
        load: &HashMap<String, (u64, u64)>,
        elapsed: Option<Duration>,
        now: Instant,
        settings: &PolicySettings,
    ) -> Result<()> {
        let meta = self.describe(scope, stream)?;
        if meta.sealed {
            return Ok(());
        }
        // A mirror scales when its source does (see `Controller::mirror_stream`).
        if let Some(elapsed) = elapsed.filter(|_| !meta.mirror) {
            for d in self.scale_decisions(scope, stream, &meta, load, elapsed, settings)? {
                let (seal, ranges) = match d {
                    ScaleDecision::Split { segment, into } => (vec![segment], into),
                    ScaleDecision::Merge { segments, range } => (segments.to_vec(), vec![range]),
                };
                tracing::info!(%scope, %stream, ?seal, "automatic scale");
                self.scale(scope, stream, &seal, &ranges).await?;
            }
        }
        if let Some(cut) = self.retention_cut(scope, stream, &meta, now)? {
            tracing::info!(%scope, %stream, %cut, "retention truncates the stream");
            self.truncate_stream(scope, stream, &cut).await?;
        }
        Ok(())
    }

    fn scale_decisions(
        &self,
        scope: &str,
        stream: &str,
        meta: &StreamMeta,
        load: &HashMap<String, (u64, u64)>,
        elapsed: Duration,
        settings: &PolicySettings,
    ) -> Result<Vec<ScaleDecision>> {
        let (target, by_bytes) = match meta.config.scaling {
            ScalingPolicy::Fixed { .. } => return Ok(Vec::new()),
            ScalingPolicy::EventRate {
                target_events_per_s,
                ..
            } => (target_events_per_s as f64, false),
            ScalingPolicy::ByteRate {
                target_kib_per_s, ..
            } => (target_kib_per_s as f64 * 1024.0, true),
        };
        let secs = elapsed.as_secs_f64().max(0.001);
        let now = Instant::now();
        let mut st = self.policy.lock().map_err(meta_err)?;
        let mut samples = Vec::new();
        for rec in meta.active() {
            let name = segment_name(scope, stream, rec.id);
            let (events, bytes) = load.get(&name).copied().unwrap_or((0, 0));
            let (events_per_s, bytes_per_s) = (events as f64 / secs, bytes as f64 / secs);
            let rate = if by_bytes { bytes_per_s } else { events_per_s };
            let side = if rate > target {
                Side::Hot
            } else if rate < target / 2.0 {
                Side::Cold
            } else {
                Side::Normal
            };
            let since = match st.sides.get(&name) {
                Some((s, since)) if *s == side => *since,
                _ => {
                    // The rate was on this side for the whole interval just measured.
                    let since = now.checked_sub(elapsed).unwrap_or(now);
                    st.sides.insert(name.clone(), (side, since));
                    since
                }
            };
            samples.push(LoadSample {
                segment: rec.id,
                events_per_s,
                bytes_per_s,
                sustained_s: now.duration_since(since).as_secs(),
            });
        }
        Ok(scale_decision(
            meta,
            &samples,
            settings.scale_window.as_secs(),
        ))
    }

    /// Records a sample of the tail and returns the cut retention truncates at, if
    /// any: the newest sample older than the time limit, or the newest one that
    /// leaves at least the size limit after it.
    fn retention_cut(
        &self,
        scope: &str,
        stream: &str,
        meta: &StreamMeta,
        now: Instant,
    ) -> Result<Option<StreamCut>> {
        if meta.config.retention == RetentionPolicy::Forever {
            return Ok(None);
        }
        let tail = self.tail_cut(scope, stream)?;
        let key = format!("{scope}/{stream}");
        let mut st = self.policy.lock().map_err(meta_err)?;
        let samples = st.samples.entry(key).or_default();
        if samples.back().is_none_or(|(_, c)| *c != tail) {
            samples.push_back((now, tail));
        }
        while samples.len() > MAX_SAMPLES {
            samples.pop_front();
        }
        // Samples that no longer fit the stream (behind the head) are useless.
        samples.retain(|(_, c)| self.cut_is_ahead(scope, stream, meta, c));
        let chosen = match meta.config.retention {
            RetentionPolicy::Forever => None,
            RetentionPolicy::Time { seconds } => samples
                .iter()
                .rposition(|(t, _)| now.duration_since(*t) >= Duration::from_secs(seconds)),
            RetentionPolicy::Size { bytes } => samples
                .iter()
                .rposition(|(_, c)| self.bytes_after(scope, stream, meta, c) >= bytes),
        };
        let Some(i) = chosen else { return Ok(None) };
        let cut = samples[i].1.clone();
        samples.drain(..=i);
        if cut == meta.head_cut() {
            return Ok(None);
        }
        Ok(Some(cut))
    }

    /// Every segment of the cut still exists and starts at or before the cut.
    fn cut_is_ahead(&self, scope: &str, stream: &str, meta: &StreamMeta, cut: &StreamCut) -> bool {
        let head_before = meta.before(&meta.head_cut());
        cut.positions.iter().all(|(id, off)| {
            !head_before.contains(id)
                && self
                    .log
                    .info(&segment_name(scope, stream, *id))
                    .is_ok_and(|i| i.start <= *off)
        })
    }

    /// Bytes in the stream after `cut`.
    fn bytes_after(&self, scope: &str, stream: &str, meta: &StreamMeta, cut: &StreamCut) -> u64 {
        let before = meta.before(cut);
        meta.segments
            .values()
            .filter(|r| !before.contains(&r.id))
            .filter_map(|r| {
                let len = self
                    .log
                    .info(&segment_name(scope, stream, r.id))
                    .ok()?
                    .length;
                Some(len.saturating_sub(cut.positions.get(&r.id).copied().unwrap_or(0)))
            })
            .sum()
    }
}

//! Disk budgets: a stream with `disk_budget_mb` keeps at most that many bytes on disk
//! (segment bytes not yet truncated). At the budget, `when_full` decides:
//!
//! - `pause`: the stream stops taking events; its sources wait (the MQTT source stops
//!   acknowledging, so the broker keeps the messages). It resumes when room is made:
//!   by the stream's retention, or by a user truncating it (`trib stream truncate`).
//! - `drop-oldest`: the oldest tenth of the budget is truncated, at event boundaries,
//!   to make room. In a replicated stream the cut never passes what the cloud has
//!   acknowledged: data not yet replicated is never dropped. When nothing can be
//!   dropped, the stream pauses instead (and resumes once replication makes room).
//! - `drop-oldest-unreplicated`: the same, also past what the cloud holds (newest data
//!   wins over a long outage). What the cloud never got is recorded (range, events,
//!   time) and becomes a gap record in the cloud stream (see [`crate::replicate`]).
//!
//! The state shows in `status` (`paused`) and metrics (`tributary_edge_stream_paused`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tributary::event::decode_events;
use tributary::stream::{segment_name, StreamCut};

use crate::config::WhenFull;
use crate::local::LocalStream;
use crate::status::stream_status;

/// How often budgets are checked (sources also pause at once when a submit crosses
/// the budget).
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Checks every budgeted stream until `shutdown` turns true.
pub async fn enforce(streams: Vec<Arc<LocalStream>>, mut shutdown: watch::Receiver<bool>) {
    let streams: Vec<_> = streams
        .into_iter()
        .filter(|s| s.spec().disk_budget.is_some())
        .collect();
    if streams.is_empty() {
        return;
    }
    let mut every = tokio::time::interval(CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        for s in &streams {
            check(s).await;
        }
    }
}

/// Applies one stream's budget now.
pub async fn check(s: &LocalStream) {
    let Some(budget) = s.spec().disk_budget else {
        return;
    };
    let used = stream_status(s).disk_bytes;
    s.set_disk_used(used);
    let full = used >= budget;
    match s.spec().when_full {
        WhenFull::Pause => {
            if full != s.is_paused() {
                if full {
                    tracing::warn!(stream = %s.spec().name(), used, budget, "disk budget reached: sources paused");
                } else {
                    tracing::info!(stream = %s.spec().name(), used, budget, "below the disk budget: sources resumed");
                }
            }
            s.set_paused(full);
        }
        WhenFull::DropOldest | WhenFull::DropOldestUnreplicated => {
            if !full {
                s.set_paused(false);
                return;
            }
            let drop = used - budget + budget / 10;
            match drop_oldest(s, drop).await {
                Ok(dropped) => {
                    tracing::info!(stream = %s.spec().name(), dropped, budget, "disk budget reached: oldest data truncated");
                    s.set_disk_used(used.saturating_sub(dropped));
                    s.set_paused(false);
                }
                Err(e) => {
                    tracing::error!(stream = %s.spec().name(), error = %e, "disk budget reached and nothing could be dropped: sources paused");
                    s.set_paused(true);
                }
            }
        }
    }
}

/// Truncates about `amount` bytes off the front of the stream, spread over its segments
/// in proportion to what each keeps, each cut at an event boundary. Returns the bytes
/// dropped.
async fn drop_oldest(s: &LocalStream, amount: u64) -> anyhow::Result<u64> {
    let spec = s.spec();
    let meta = s
        .controller()
        .describe_settled(&spec.scope, &spec.stream)
        .await?;
    let log = s.log();
    let mut kept = Vec::new();
    for r in meta.segments.values() {
        let name = segment_name(&spec.scope, &spec.stream, r.id);
        let info = log.info(&name)?;
        if r.sealed_epoch.is_some() && info.length > info.start {
            anyhow::bail!(
                "segment {name} was sealed by a scale and still holds data; \
                 truncate the stream by hand"
            );
        }
        kept.push((r.id, name, info.start, info.length));
    }
    let total: u64 = kept.iter().map(|(_, _, start, len)| len - start).sum();
    let mut cut = StreamCut::default();
    let mut dropped = 0;
    let unreplicated_too = spec.when_full == WhenFull::DropOldestUnreplicated;
    for (id, name, start, length) in kept {
        let share = ((length - start) as u128 * amount as u128 / total.max(1) as u128) as u64;
        // What the cloud holds, in a replicated stream: never passed unless allowed,
        // and not while frames are in flight (the cloud may hold more than
        // acknowledged, up to inside an event: a gap must not start there).
        let acked = s.replica().map_or(length, |r| r.acked(&name).min(length));
        let sending = s.replica().is_some_and(|r| r.is_sending(&name));
        let limit = if unreplicated_too && !sending {
            length
        } else {
            acked
        };
        let (offset, lost_events) =
            event_boundary(s, &name, start, limit, start + share, acked).await?;
        if let (Some(r), true) = (s.replica(), offset > acked.max(start)) {
            // Recorded before the cut, so the gap record can say what was lost.
            r.record_dropped(
                &name,
                acked.max(start),
                offset,
                lost_events,
                "the disk budget was full while the cloud lacked this data \
                 (when_full = \"drop-oldest-unreplicated\")",
            )?;
            tracing::warn!(stream = %spec.name(), segment = %name, from = acked.max(start), to = offset,
                events = lost_events, "disk budget: dropping data the cloud does not hold yet");
        }
        dropped += offset - start;
        cut.positions.insert(id, offset);
    }
    if dropped == 0 {
        anyhow::bail!(match s.replica() {
            Some(_) => "no whole event that the cloud holds already to drop",
            None => "no whole event to drop",
        });
    }
    s.controller()
        .truncate_stream(&spec.scope, &spec.stream, &cut)
        .await?;
    Ok(dropped)
}

/// The first event boundary at or after `target`, or the last one at or below `limit`
/// if that comes first, reading events from `start`; with the number of events before
/// it that start at or after `count_from`. Never past an event that `count_from` (what
/// the cloud holds) falls inside: the cloud holds its beginning, and a gap record
/// after that would break its framing.
async fn event_boundary(
    s: &LocalStream,
    segment: &str,
    start: u64,
    limit: u64,
    target: u64,
    count_from: u64,
) -> anyhow::Result<(u64, u64)> {
    let mut counted = 0;
    let mut offset = start;
    let mut want = 1 << 20;
    while offset < target.min(limit) {
        let r = s.log().read(segment, offset, want, Duration::ZERO).await?;
        if r.is_empty() {
            break;
        }
        let data = r.to_bytes();
        let (events, used) = decode_events(&data)?;
        if events.is_empty() {
            // One event longer than what was read: read enough for it.
            want = data.len().saturating_mul(2).min(64 << 20);
            continue;
        }
        // Stop at the first boundary past the target.
        let mut pos = offset;
        for e in &events {
            let next = pos + tributary::event::framed_len(&e.key, &e.payload) as u64;
            if next > limit || (pos < count_from && next > count_from) {
                return Ok((pos, counted));
            }
            counted += u64::from(pos >= count_from);
            pos = next;
            if pos >= target {
                return Ok((pos, counted));
            }
        }
        offset += used as u64;
    }
    Ok((offset, counted))
}

//! Mirror streams: the cloud's copy of an edge stream, segment for segment. The edge's
//! replicator copies each segment's bytes (conditional appends, see the segment
//! service) and has the controller replay the source's scales here, each one only
//! once the segments it seals hold all of their source's bytes. Replaying the scale
//! history gives the same segment numbers, so `scope/stream/N.#epoch.E` names the
//! same data on both sides.
//!
//! Offsets match too, until the source gives up bytes the mirror never got: then the
//! mirror stores a gap record ([`crate::event::Gap`]) where they would have been and
//! goes on with the bytes after them. From there a source offset is the mirror's plus
//! the segment's *shift*, kept as its attribute [`MIRROR_SHIFT`] (set by the append
//! that stores the gap record, so the two never disagree).

use crate::log::{AttributeId, LogError, SegmentLog};
use crate::stream::{
    segment_name, segment_stream, validate_scoped_name, KeyRange, MirrorSource, ScaleRecord,
    SegmentId, StreamConfig, StreamMeta,
};

use super::{Controller, ControllerError, Result};

/// The attribute of a mirror segment holding its shift: source offset minus mirror
/// offset, for the bytes after its last gap record (absent: 0). Writers' ids never
/// reach a mirror segment, which takes only its source's replication.
pub const MIRROR_SHIFT: AttributeId = u128::MAX;

/// The durable shift of mirror segment `name` (see [`MIRROR_SHIFT`]).
pub fn mirror_shift(log: &SegmentLog, name: &str) -> std::result::Result<i64, LogError> {
    Ok(log.attribute(name, MIRROR_SHIFT)?.unwrap_or(0))
}

impl Controller {
    /// Makes `scope/stream` the mirror of `source`, an edge stream configured with
    /// `config`: creates it (and its scope) if missing, then replays each scale of
    /// `scales` it does not have yet, in order. A scale is replayed only if every
    /// segment it seals holds exactly its length in `lengths`. Returns the mirror's
    /// metadata.
    ///
    /// A mirror has one source, recorded when it is created (or, for a mirror made
    /// before sources were recorded, by the first source after): any other edge
    /// stream, of another edge or of a re-created data dir, is refused with
    /// [`ControllerError::MirrorOwned`] and changes nothing.
    pub async fn mirror_stream(
        &self,
        scope: &str,
        stream: &str,
        source: &MirrorSource,
        config: StreamConfig,
        scales: &[ScaleRecord],
        lengths: &[(SegmentId, u64)],
    ) -> Result<StreamMeta> {
        match self.create_scope(scope) {
            Ok(()) | Err(ControllerError::ScopeExists(_)) => {}
            Err(e) => return Err(e),
        }
        let _change = self.changes.lock().await;
        let name = format!("{scope}/{stream}");
        let diverged = |why: String| ControllerError::Mirror(format!("{name}: {why}"));
        let mut meta = match self.describe(scope, stream) {
            Ok(mut m) if m.mirror => {
                match &m.source {
                    Some(owner) if **owner == *source => {}
                    Some(owner) => {
                        let hint = if owner.identity == source.identity
                            && owner.stream.stream == source.stream.stream
                        {
                            ": the edge's stream was created anew (a new data dir?), and its \
                             bytes are not the ones this mirror holds; replicate it to a new \
                             cloud stream, or delete this one (README: re-creating a gateway)"
                        } else {
                            ": give each edge stream a cloud stream of its own (in a fleet \
                             file, e.g. to = \"scope/sensors-{gateway}\") and read them \
                             together as a stream set"
                        };
                        return Err(ControllerError::MirrorOwned {
                            stream: name.clone(),
                            owner: owner.clone(),
                            refused: Box::new(source.clone()),
                            hint,
                        });
                    }
                    None => {
                        m.source = Some(Box::new(source.clone()));
                        self.persist(scope, stream, &m)?;
                    }
                }
                m
            }
            Ok(_) => {
                return Err(diverged(
                    "the stream exists and is not a mirror; delete it or replicate elsewhere"
                        .into(),
                ))
            }
            Err(ControllerError::NoSuchStream(_)) => {
                validate_scoped_name(stream)?;
                let mut m = StreamMeta::new(config)?;
                m.mirror = true;
                m.source = Some(Box::new(source.clone()));
                self.persist(scope, stream, &m)?;
                self.reconcile(scope, stream, &m).await?;
                m
            }
            Err(e) => return Err(e),
        };
        let todo: Vec<&ScaleRecord> = scales.iter().filter(|s| s.epoch > meta.epoch).collect();
        if !todo.is_empty() {
            // The lengths checked below must include appends still waiting for fsync.
            self.log.settle().await?;
        }
        for s in todo {
            if s.epoch != meta.epoch + 1 {
                return Err(diverged(format!(
                    "the mirror is at epoch {}; the next scale sent is epoch {}",
                    meta.epoch, s.epoch
                )));
            }
            for id in &s.sealed {
                let want = lengths.iter().find(|(i, _)| i == id).map(|(_, l)| *l);
                // In the source's offsets (past a gap record they differ).
                let name = segment_name(scope, stream, *id);
                let have = match self.log.info(&name) {
                    Ok(i) => i
                        .length
                        .saturating_add_signed(mirror_shift(&self.log, &name)?),
                    Err(LogError::NoSuchSegment(_)) => 0,
                    Err(e) => return Err(e.into()),
                };
                if want != Some(have) {
                    return Err(diverged(format!(
                        "segment {id} holds {have} bytes, its source {}; it is sealed only \
                         once it holds all of them",
                        want.map_or("did not say".to_string(), |w| w.to_string())
                    )));
                }
            }
            let ranges: Vec<KeyRange> = s.created.iter().map(|(_, r)| *r).collect();
            let created = meta.scale(&s.sealed, &ranges)?;
            let expected: Vec<SegmentId> = s.created.iter().map(|(id, _)| *id).collect();
            if created != expected {
                return Err(diverged(format!(
                    "scale of epoch {} made {created:?} here, {expected:?} at the source",
                    s.epoch
                )));
            }
            self.persist(scope, stream, &meta)?;
            self.reconcile(scope, stream, &meta).await?;
        }
        Ok(meta)
    }

    /// Whether the segment `name` belongs to a mirror stream.
    pub fn is_mirror_segment(&self, name: &str) -> bool {
        self.mirror_of(name).is_some()
    }

    /// If the segment `name` belongs to a mirror stream: who feeds it (`Some(None)`
    /// for a mirror not claimed yet).
    pub fn mirror_of(&self, name: &str) -> Option<Option<Box<MirrorSource>>> {
        segment_stream(name)
            .and_then(|(scope, stream)| self.describe(scope, stream).ok())
            .filter(|m| m.mirror)
            .map(|m| m.source)
    }
}

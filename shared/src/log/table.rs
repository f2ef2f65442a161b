//! The segment table: the state machine the log replays. Pure, no I/O.
//!
//! The same [`Table`] type is kept twice by a container: the *pending* table, which
//! validates operations as they are submitted (so pipelined conditional appends see each
//! other), and the *durable* table, which applies operations after their batch is
//! fsync'ed and is what readers see. Recovery replays frames into a durable table.
//!
//! Data placement: every segment owns a "data id" (its segment id) whose bytes are
//! written by appends to it. A segment's content is a list of [`Piece`]s, each a range
//! of some data id. A merge moves the source's pieces to the end of the target, so no
//! byte is copied; the source's data id then belongs to the target.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt};

use serde::{Deserialize, Serialize};

use super::error::{LogError, Result};
use super::format::Op;

/// Identifier of a segment attribute (a writer id is a UUID, hence 128 bits).
pub type AttributeId = u128;

/// Where a condition looks up an attribute the table does not hold: `(segment id,
/// attribute id) -> value`. The log's pending table holds only the attributes set by
/// batches not yet durable, and looks the others up in the durable table, so that a
/// segment's attributes (an MQTT source keeps one per packet id: tens of thousands)
/// are in memory once.
pub type AttributeBase<'a> = &'a dyn Fn(u64, AttributeId) -> Option<i64>;

/// When an attribute update applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttributeCondition {
    /// Always.
    Always,
    /// Only if the new value is greater than the current one; an absent attribute counts
    /// as smaller than any value. This is the idempotent writer's check: the value is the
    /// writer's last event number.
    Greater,
    /// Only if the current value is this one (`None`: the attribute is absent).
    Equals(Option<i64>),
    /// Only if the current value is not this one (an absent attribute is not). The
    /// edge's MQTT ingest stores a redelivered message unless the packet id's
    /// attribute holds that message's fingerprint.
    NotEquals(i64),
    /// Always, and the value is added to the current one (absent: 0): a counter that
    /// any number of writers keep. What is stored (and logged) is the sum.
    Add,
}

/// One attribute update carried by an append or a merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributeUpdate {
    /// Attribute id.
    pub id: AttributeId,
    /// New value.
    pub value: i64,
    /// Condition under which it applies; if any condition of an append fails, nothing of
    /// that append is stored.
    pub condition: AttributeCondition,
}

/// Conditions and attribute updates of an append.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendOptions {
    /// Append only if the segment's current length (including appends submitted but not
    /// yet durable) is this.
    pub expected_length: Option<u64>,
    /// Attribute updates stored atomically with the data.
    pub attributes: Vec<AttributeUpdate>,
}

/// A range of a data id that forms part of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    /// Offset in the segment where the piece starts.
    pub seg_offset: u64,
    /// Whose data.
    pub data_id: u64,
    /// Offset in that data id.
    pub data_offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The state of one segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentState {
    /// Internal id, never reused.
    pub id: u64,
    /// Name.
    pub name: String,
    /// First offset still stored (everything below was truncated).
    pub start: u64,
    /// Length: offset of the next append.
    pub length: u64,
    /// Bytes written to this segment's own data id.
    pub own_len: u64,
    /// Sealed segments take no more appends.
    pub sealed: bool,
    /// Attributes.
    #[serde(with = "packed_attributes")]
    pub attributes: BTreeMap<AttributeId, i64>,
    /// Where the bytes in `[start, length)` live, in segment order.
    pub pieces: Vec<Piece>,
}

/// Data of `data_id` below `below` is no longer part of any segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    /// Whose data.
    pub data_id: u64,
    /// Everything below this data offset is released (`u64::MAX`: all of it).
    pub below: u64,
}

/// All segments of a container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Table {
    segs: HashMap<u64, SegmentState>,
    #[serde(skip)]
    names: HashMap<String, u64>,
    next_id: u64,
}

impl PartialEq for Table {
    fn eq(&self, other: &Self) -> bool {
        self.segs == other.segs && self.next_id == other.next_id
    }
}

/// Longest segment name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Checks a segment name: 1 to 255 bytes of `A-Z a-z 0-9 . _ - / #`, no empty path
/// part, no `.` or `..` part.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(LogError::InvalidName {
            name: name.chars().take(300).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 255 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-/#".contains(&b))
    {
        return bad("only A-Z a-z 0-9 . _ - / # are allowed");
    }
    if name
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return bad("empty, '.' or '..' path part");
    }
    Ok(())
}

impl Table {
    /// Rebuilds the name index after deserialization.
    pub fn reindex(&mut self) {
        self.names = self.segs.values().map(|s| (s.name.clone(), s.id)).collect();
    }

    /// The segment with this name.
    pub fn get(&self, name: &str) -> Result<&SegmentState> {
        self.names
            .get(name)
            .and_then(|id| self.segs.get(id))
            .ok_or_else(|| LogError::NoSuchSegment(name.to_string()))
    }

    /// The segment with this id.
    pub fn by_id(&self, id: u64) -> Option<&SegmentState> {
        self.segs.get(&id)
    }

    /// All segments, by id.
    pub fn segments(&self) -> impl Iterator<Item = &SegmentState> {
        self.segs.values()
    }

    /// Validates a create.
    pub fn check_create(&self, name: &str) -> Result<Op> {
        validate_name(name)?;
        if self.names.contains_key(name) {
            return Err(LogError::SegmentExists(name.to_string()));
        }
        Ok(Op::Create {
            seg: self.next_id,
            name: name.to_string(),
        })
    }

    /// Validates an append of `len` bytes without applying it (tests; appends go
    /// through [`Table::append`]).
    #[cfg(test)]
    pub fn check_append(
        &self,
        name: &str,
        len: u64,
        opts: &AppendOptions,
        base: AttributeBase<'_>,
    ) -> Result<(Op, u64)> {
        self.clone().append(name, len, opts, base)
    }

    /// Validates an append of `len` bytes and applies it, with one lookup; returns the
    /// op (for the batch) and the segment offset where the data will start. Conditions
    /// on attributes this table lacks consult `base`.
    pub fn append(
        &mut self,
        name: &str,
        len: u64,
        opts: &AppendOptions,
        base: AttributeBase<'_>,
    ) -> Result<(Op, u64)> {
        let s = self
            .names
            .get(name)
            .and_then(|id| self.segs.get_mut(id))
            .ok_or_else(|| LogError::NoSuchSegment(name.to_string()))?;
        if s.sealed {
            return Err(LogError::Sealed(name.to_string()));
        }
        if let Some(expected) = opts.expected_length {
            if expected != s.length {
                return Err(LogError::BadOffset {
                    segment: name.to_string(),
                    expected,
                    actual: s.length,
                });
            }
        }
        let attrs = check_attributes(name, s, &opts.attributes, base)?;
        let (data_offset, offset) = (s.own_len, s.length);
        s.apply_append(data_offset, len, &attrs)
            .map_err(LogError::Failed)?;
        let op = Op::Append {
            seg: s.id,
            data_offset,
            len,
            attrs,
        };
        Ok((op, offset))
    }

    /// Validates a seal; returns `None` if the segment is already sealed.
    pub fn check_seal(&self, name: &str) -> Result<Option<Op>> {
        let s = self.get(name)?;
        Ok((!s.sealed).then_some(Op::Seal { seg: s.id }))
    }

    /// Validates a truncation; returns `None` if nothing would change.
    pub fn check_truncate(&self, name: &str, offset: u64) -> Result<Option<Op>> {
        let s = self.get(name)?;
        if offset > s.length {
            return Err(LogError::BeyondEnd {
                segment: name.to_string(),
                offset,
                length: s.length,
            });
        }
        Ok((offset > s.start).then_some(Op::Truncate {
            seg: s.id,
            start: offset,
        }))
    }

    /// Validates a merge of `source` onto the end of `target` that also applies
    /// `attributes` to `target` (their conditions checked against `target`, then `base`).
    pub fn check_merge(
        &self,
        target: &str,
        source: &str,
        attributes: &[AttributeUpdate],
        base: AttributeBase<'_>,
    ) -> Result<Op> {
        let t = self.get(target)?;
        let s = self.get(source)?;
        let bad = |reason| {
            Err(LogError::BadMerge {
                target: target.to_string(),
                source_name: source.to_string(),
                reason,
            })
        };
        if t.id == s.id {
            return bad("a segment cannot be merged into itself");
        }
        if !s.sealed {
            return bad("the source must be sealed first");
        }
        if t.sealed {
            return Err(LogError::Sealed(target.to_string()));
        }
        if s.start != 0 {
            return bad("the source has been truncated");
        }
        let attrs = check_attributes(target, t, attributes, base)?;
        Ok(Op::Merge {
            target: t.id,
            source: s.id,
            attrs,
        })
    }

    /// Validates a delete.
    pub fn check_delete(&self, name: &str) -> Result<Op> {
        Ok(Op::Delete {
            seg: self.get(name)?.id,
        })
    }

    /// Applies a validated (or replayed) operation; returns the data it releases. An
    /// error means the operation does not fit this state: a replayed log that says so is
    /// corrupt.
    pub fn apply(&mut self, op: &Op) -> std::result::Result<Vec<Release>, String> {
        match op {
            Op::Create { seg, name } => {
                if *seg < self.next_id || self.names.contains_key(name) {
                    return Err(format!("create of {name:?} with id {seg} conflicts"));
                }
                self.next_id = seg + 1;
                self.names.insert(name.clone(), *seg);
                self.segs.insert(
                    *seg,
                    SegmentState {
                        id: *seg,
                        name: name.clone(),
                        start: 0,
                        length: 0,
                        own_len: 0,
                        sealed: false,
                        attributes: BTreeMap::new(),
                        pieces: Vec::new(),
                    },
                );
                Ok(Vec::new())
            }
            Op::Append {
                seg,
                data_offset,
                len,
                attrs,
            } => {
                seg_mut(&mut self.segs, *seg)?.apply_append(*data_offset, *len, attrs)?;
                Ok(Vec::new())
            }
            Op::Seal { seg } => {
                seg_mut(&mut self.segs, *seg)?.sealed = true;
                Ok(Vec::new())
            }
            Op::Truncate { seg, start } => {
                let s = seg_mut(&mut self.segs, *seg)?;
                if *start > s.length || *start < s.start {
                    return Err(format!("truncate of segment {seg} to {start} does not fit"));
                }
                s.start = *start;
                let mut released = Vec::new();
                let keep_from = s
                    .pieces
                    .iter()
                    .position(|p| p.seg_offset + p.len > *start)
                    .unwrap_or(s.pieces.len());
                for p in s.pieces.drain(..keep_from) {
                    released.push(Release {
                        data_id: p.data_id,
                        below: p.data_offset + p.len,
                    });
                }
                if let Some(p) = s.pieces.first_mut() {
                    if p.seg_offset < *start {
                        let cut = start - p.seg_offset;
                        p.seg_offset += cut;
                        p.data_offset += cut;
                        p.len -= cut;
                        released.push(Release {
                            data_id: p.data_id,
                            below: p.data_offset,
                        });
                    }
                }
                Ok(released)
            }
            Op::Merge {
                target,
                source,
                attrs,
            } => {
                let src = self
                    .segs
                    .remove(source)
                    .ok_or_else(|| format!("merge of unknown segment id {source}"))?;
                self.names.remove(&src.name);
                let t = seg_mut(&mut self.segs, *target)?;
                if t.sealed || !src.sealed || src.start != 0 {
                    return Err(format!("merge of {source} into {target} does not fit"));
                }
                let base = t.length;
                t.pieces.extend(src.pieces.iter().map(|p| Piece {
                    seg_offset: base + p.seg_offset,
                    ..*p
                }));
                t.length += src.length;
                for (id, v) in attrs {
                    t.attributes.insert(*id, *v);
                }
                Ok(Vec::new())
            }
            Op::Delete { seg } => {
                let s = self
                    .segs
                    .remove(seg)
                    .ok_or_else(|| format!("delete of unknown segment id {seg}"))?;
                self.names.remove(&s.name);
                let mut ids: Vec<u64> = s.pieces.iter().map(|p| p.data_id).collect();
                ids.push(s.id);
                ids.sort_unstable();
                ids.dedup();
                Ok(ids
                    .into_iter()
                    .map(|data_id| Release {
                        data_id,
                        below: u64::MAX,
                    })
                    .collect())
            }
        }
    }

    /// Attribute `id` of the segment with id `seg`.
    pub fn attribute(&self, seg: u64, id: AttributeId) -> Option<i64> {
        self.segs.get(&seg)?.attributes.get(&id).copied()
    }

    /// A copy without attributes (the pending table's start: see [`AttributeBase`]).
    pub fn without_attributes(&self) -> Table {
        let segs = self
            .segs
            .iter()
            .map(|(id, s)| {
                let s = SegmentState {
                    attributes: BTreeMap::new(),
                    pieces: s.pieces.clone(),
                    name: s.name.clone(),
                    ..*s
                };
                (*id, s)
            })
            .collect();
        Table {
            segs,
            names: self.names.clone(),
            next_id: self.next_id,
        }
    }

    /// Drops attribute `id` of segment `seg` from this table (it is in the durable
    /// one now).
    pub fn forget_attribute(&mut self, seg: u64, id: AttributeId) {
        if let Some(s) = self.segs.get_mut(&seg) {
            s.attributes.remove(&id);
        }
    }

    /// For each data id still part of some segment, the lowest data offset that is.
    /// Used on recovery to drop index entries of released data.
    pub fn live_data(&self) -> HashMap<u64, u64> {
        let mut live: HashMap<u64, u64> = HashMap::new();
        for s in self.segs.values() {
            for p in &s.pieces {
                live.entry(p.data_id)
                    .and_modify(|o| *o = (*o).min(p.data_offset))
                    .or_insert(p.data_offset);
            }
        }
        live
    }
}

/// Checks attribute updates against a segment's attributes, in order (a later update
/// sees an earlier one); returns the final value of each attribute set.
fn check_attributes(
    name: &str,
    s: &SegmentState,
    updates: &[AttributeUpdate],
    base: AttributeBase<'_>,
) -> Result<Vec<(AttributeId, i64)>> {
    let mut attrs: Vec<(AttributeId, i64)> = Vec::with_capacity(updates.len());
    for u in updates {
        // The current value, looked up only for a condition that needs it.
        let current = || {
            attrs
                .iter()
                .rev()
                .find(|(id, _)| *id == u.id)
                .map(|(_, v)| *v)
                .or_else(|| s.attributes.get(&u.id).copied())
                .or_else(|| base(s.id, u.id))
        };
        let refused = match u.condition {
            AttributeCondition::Always => None,
            AttributeCondition::Greater => {
                Some(current()).filter(|c| c.is_some_and(|c| u.value <= c))
            }
            AttributeCondition::Equals(e) => Some(current()).filter(|c| *c != e),
            AttributeCondition::NotEquals(v) => Some(current()).filter(|c| *c == Some(v)),
            AttributeCondition::Add => None,
        };
        let value = match u.condition {
            AttributeCondition::Add => current().unwrap_or(0).saturating_add(u.value),
            _ => u.value,
        };
        if let Some(current) = refused {
            return Err(LogError::AttributeConflict {
                segment: name.to_string(),
                id: u.id,
                current,
            });
        }
        attrs.retain(|(id, _)| *id != u.id);
        attrs.push((u.id, value));
    }
    Ok(attrs)
}

/// A segment's attributes in a checkpoint: one byte string of (id delta from the
/// previous id as LEB128, value as 8 bytes little-endian) in id order. An MQTT source's
/// packet-id attributes are consecutive ids, so each takes 9 bytes instead of a CBOR
/// map entry's 28: a busy gateway's checkpoint is a third the size.
mod packed_attributes {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serializer};

    use super::AttributeId;

    pub fn serialize<S: Serializer>(
        attrs: &BTreeMap<AttributeId, i64>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut out = Vec::with_capacity(attrs.len() * 10);
        let mut prev = 0;
        for (id, v) in attrs {
            let mut delta = id - prev;
            prev = *id;
            loop {
                let byte = (delta & 0x7f) as u8;
                delta >>= 7;
                if delta == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
            out.extend_from_slice(&v.to_le_bytes());
        }
        s.serialize_bytes(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<AttributeId, i64>, D::Error> {
        // Not `deserialize_bytes`: ciborium reads a byte string that way only up to its
        // 4 KiB scratch buffer, and refuses a longer one ("invalid type: bytes,
        // expected bytes"), so a segment with more than about 400 attributes (an MQTT
        // source keeps one per packet id) made the checkpoint unreadable, and the node
        // would not start.
        d.deserialize_byte_buf(Packed)
    }

    pub(super) struct Packed;

    impl Visitor<'_> for Packed {
        type Value = BTreeMap<AttributeId, i64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("packed segment attributes")
        }

        fn visit_bytes<E: Error>(self, mut b: &[u8]) -> Result<Self::Value, E> {
            let mut attrs = BTreeMap::new();
            let mut prev: AttributeId = 0;
            while !b.is_empty() {
                let mut delta: AttributeId = 0;
                let mut shift = 0;
                loop {
                    let (&byte, rest) = b
                        .split_first()
                        .ok_or_else(|| E::custom("attribute id cut short"))?;
                    b = rest;
                    let part = AttributeId::from(byte & 0x7f);
                    if shift >= 128 || (part << shift) >> shift != part {
                        return Err(E::custom("attribute id longer than 128 bits"));
                    }
                    delta |= part << shift;
                    shift += 7;
                    if byte & 0x80 == 0 {
                        break;
                    }
                }
                let id = prev
                    .checked_add(delta)
                    .filter(|id| attrs.is_empty() || *id > prev)
                    .ok_or_else(|| E::custom("attribute ids out of order"))?;
                let (v, rest) = b
                    .split_first_chunk::<8>()
                    .ok_or_else(|| E::custom("attribute value cut short"))?;
                b = rest;
                attrs.insert(id, i64::from_le_bytes(*v));
                prev = id;
            }
            Ok(attrs)
        }
    }
}

fn seg_mut(
    segs: &mut HashMap<u64, SegmentState>,
    id: u64,
) -> std::result::Result<&mut SegmentState, String> {
    segs.get_mut(&id)
        .ok_or_else(|| format!("operation on unknown segment id {id}"))
}

impl SegmentState {
    /// Applies an append of `len` bytes of its own data at `data_offset`.
    fn apply_append(
        &mut self,
        data_offset: u64,
        len: u64,
        attrs: &[(AttributeId, i64)],
    ) -> std::result::Result<(), String> {
        if self.sealed || data_offset != self.own_len {
            return Err(format!(
                "append to segment {} at data offset {data_offset} does not fit \
                 (own length {}, sealed {})",
                self.id, self.own_len, self.sealed
            ));
        }
        match self.pieces.last_mut() {
            Some(p) if p.data_id == self.id && p.data_offset + p.len == data_offset => p.len += len,
            _ if len > 0 => self.pieces.push(Piece {
                seg_offset: self.length,
                data_id: self.id,
                data_offset,
                len,
            }),
            _ => {}
        }
        self.own_len += len;
        self.length += len;
        for (id, v) in attrs {
            self.attributes.insert(*id, *v);
        }
        Ok(())
    }

    /// Splits `[offset, offset + len)` of this segment into ranges of data ids, in order:
    /// `(data_id, data_offset, len)`. The range must lie within `[start, length)`.
    pub fn locate(&self, offset: u64, len: u64) -> Vec<(u64, u64, u64)> {
        let end = offset + len;
        let first = self
            .pieces
            .partition_point(|p| p.seg_offset + p.len <= offset);
        let mut out = Vec::new();
        for p in &self.pieces[first..] {
            if p.seg_offset >= end {
                break;
            }
            let from = offset.max(p.seg_offset);
            let to = end.min(p.seg_offset + p.len);
            out.push((p.data_id, p.data_offset + (from - p.seg_offset), to - from));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_survive_a_checkpoint_and_damage_is_an_error() {
        let mut t = Table::default();
        let op = t.check_create("s").expect("create");
        t.apply(&op).expect("apply");
        let ids = [0, 1, 2, 3, 1 << 70, (1 << 70) + 1, u128::MAX];
        let attributes = ids
            .iter()
            .enumerate()
            .map(|(i, id)| AttributeUpdate {
                id: *id,
                value: if i % 2 == 0 {
                    i64::MIN + i as i64
                } else {
                    i as i64
                },
                condition: AttributeCondition::Always,
            })
            .collect();
        let opts = AppendOptions {
            expected_length: None,
            attributes,
        };
        t.append("s", 1, &opts, &nothing).expect("append");
        let mut buf = Vec::new();
        ciborium::into_writer(&t, &mut buf).expect("encode");
        let mut back: Table = ciborium::from_reader(&buf[..]).expect("decode");
        back.reindex();
        assert_eq!(back, t);
        assert_eq!(back.get("s").expect("s").attributes.len(), ids.len());
        // As many attributes as an MQTT source keeps (one per packet id): far more
        // than a CBOR decoder's scratch buffer.
        let many = (0..5_000u128)
            .map(|id| AttributeUpdate {
                id: (1 << 100) + (id << 16),
                value: id as i64 * 7919,
                condition: AttributeCondition::Always,
            })
            .collect();
        let opts = AppendOptions {
            expected_length: None,
            attributes: many,
        };
        let mut big = t.clone();
        big.append("s", 1, &opts, &nothing).expect("append");
        let mut buf = Vec::new();
        ciborium::into_writer(&big, &mut buf).expect("encode");
        assert!(buf.len() > 40_000, "{}", buf.len());
        let mut back: Table = ciborium::from_reader(&buf[..]).expect("decode a big table");
        back.reindex();
        assert_eq!(back, big);
        // Damaged packed attributes are an error, never a wrong table.
        use serde::de::Visitor;
        type E = serde::de::value::Error;
        let good = [0x05, 1, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            packed_attributes::Packed
                .visit_bytes::<E>(&good)
                .expect("good"),
            BTreeMap::from([(5, 1)])
        );
        for bad in [
            &good[..5],                                              // value cut short
            &[0x85, 0x80][..],                                       // id cut short
            &[0xff; 20][..],                                         // id longer than 128 bits
            &[&good[..], &[0, 1, 0, 0, 0, 0, 0, 0, 0]].concat()[..], // delta 0: repeated id
        ] {
            assert!(
                packed_attributes::Packed.visit_bytes::<E>(bad).is_err(),
                "{bad:?}"
            );
        }
    }

    /// No durable table behind: every attribute is in the table under test.
    fn nothing(_: u64, _: AttributeId) -> Option<i64> {
        None
    }

    fn run(t: &mut Table, op: Op) -> Vec<Release> {
        t.apply(&op).expect("applies")
    }

    fn append(t: &mut Table, name: &str, len: u64) -> u64 {
        let (_, off) = t
            .append(name, len, &AppendOptions::default(), &nothing)
            .expect("valid");
        off
    }

    #[test]
    fn names_are_validated() {
        for ok in ["a", "scope/stream/0.#epoch.0", "A-b_c"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(256);
        for bad in ["", "a//b", "/a", "a/", "a b", "a/../b", "é", long.as_str()] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn merge_then_truncate_releases_the_right_data() {
        let mut t = Table::default();
        let op = t.check_create("t").expect("create");
        run(&mut t, op);
        let op = t.check_create("s").expect("create");
        run(&mut t, op);
        append(&mut t, "t", 10);
        append(&mut t, "s", 5);
        let op = t.check_seal("s").expect("seal").expect("op");
        run(&mut t, op);
        let op = t.check_merge("t", "s", &[], &nothing).expect("merge");
        run(&mut t, op);
        assert!(t.get("s").is_err());
        assert_eq!(append(&mut t, "t", 3), 15);
        let seg = t.get("t").expect("t");
        assert_eq!(seg.length, 18);
        assert_eq!(seg.locate(8, 9), vec![(0, 8, 2), (1, 0, 5), (0, 10, 2)]);
        let op = t.check_truncate("t", 12).expect("ok").expect("op");
        let rel = run(&mut t, op);
        assert_eq!(
            rel,
            vec![
                Release {
                    data_id: 0,
                    below: 10
                },
                Release {
                    data_id: 1,
                    below: 2
                }
            ]
        );
        let live = t.live_data();
        assert_eq!(live.get(&0), Some(&10));
        assert_eq!(live.get(&1), Some(&2));
    }

    #[test]
    fn attribute_conditions() {
        let mut t = Table::default();
        let op = t.check_create("s").expect("create");
        run(&mut t, op);
        let upd = |value, condition| AppendOptions {
            expected_length: None,
            attributes: vec![AttributeUpdate {
                id: 9,
                value,
                condition,
            }],
        };
        t.append("s", 1, &upd(5, AttributeCondition::Greater), &nothing)
            .expect("absent < 5");
        assert!(matches!(
            t.check_append("s", 1, &upd(5, AttributeCondition::Greater), &nothing),
            Err(LogError::AttributeConflict {
                current: Some(5),
                ..
            })
        ));
        assert!(t
            .check_append(
                "s",
                1,
                &upd(1, AttributeCondition::Equals(Some(4))),
                &nothing
            )
            .is_err());
        assert!(t
            .check_append(
                "s",
                1,
                &upd(1, AttributeCondition::Equals(Some(5))),
                &nothing
            )
            .is_ok());
        assert!(t
            .check_append("s", 1, &upd(1, AttributeCondition::NotEquals(5)), &nothing)
            .is_err());
        assert!(t
            .check_append("s", 1, &upd(1, AttributeCondition::NotEquals(4)), &nothing)
            .is_ok());
        // An attribute the table does not hold is looked up in the base.
        let bare = t.without_attributes();
        let base = |seg, id| (seg == 0 && id == 9).then_some(5);
        assert!(matches!(
            bare.check_append("s", 1, &upd(5, AttributeCondition::Greater), &base),
            Err(LogError::AttributeConflict {
                current: Some(5),
                ..
            })
        ));
        assert!(bare
            .check_append("s", 1, &upd(6, AttributeCondition::Greater), &base)
            .is_ok());
    }

    #[test]
    fn a_merge_sets_the_targets_attributes_under_their_conditions() {
        let mut t = Table::default();
        for name in ["t", "s"] {
            let op = t.check_create(name).expect("create");
            run(&mut t, op);
        }
        append(&mut t, "s", 4);
        let op = t.check_seal("s").expect("seal").expect("op");
        run(&mut t, op);
        let upd = |value| AttributeUpdate {
            id: 7,
            value,
            condition: AttributeCondition::Greater,
        };
        let op = t.check_merge("t", "s", &[upd(3)], &nothing).expect("merge");
        run(&mut t, op);
        assert_eq!(t.get("t").expect("t").attributes.get(&7), Some(&3));
        let op = t.check_create("s2").expect("create");
        run(&mut t, op);
        let op = t.check_seal("s2").expect("seal").expect("op");
        run(&mut t, op);
        assert!(matches!(
            t.check_merge("t", "s2", &[upd(3)], &nothing),
            Err(LogError::AttributeConflict {
                current: Some(3),
                ..
            })
        ));
        assert!(t.get("s2").is_ok(), "a refused merge leaves the source");
    }
}

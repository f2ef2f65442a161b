//! Low-rate metadata in sled: the latest checkpoint and the extent index of every log
//! file older than it. Written once per log file roll (and once at recovery when more
//! than one file was replayed), never per append.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{LogError, Result};
use super::index::{chunk_name, decode_file_index, encode_file_index, Chunk, Extent};
use super::table::Table;

const CHECKPOINT_KEY: &[u8] = b"checkpoint";
const FILE_INDEX_PREFIX: &[u8] = b"fileidx/";
const CHUNK_PREFIX: &[u8] = b"chunk/";

/// The durable state after batch `seq`; every later frame is in files `>= replay_from`.
/// Read as owning its table; written borrowing it (`Checkpoint<&Table>`): a table with
/// many attributes is megabytes, not worth a copy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint<T = Table> {
    /// Last batch whose effects are included.
    pub seq: u64,
    /// First log file to replay.
    pub replay_from: u64,
    /// The segment table.
    pub table: T,
}

/// Named metadata trees and their entries, in key order.
pub type Trees = BTreeMap<String, Vec<(Vec<u8>, Vec<u8>)>>;

/// The sled database of one container.
#[derive(Debug)]
pub struct Meta {
    db: sled::Db,
    path: PathBuf,
}

/// Removes the empty snapshot files an open of the metadata store leaves when the disk
/// fills under it: sled takes an empty `snap.*` file for a corrupt snapshot and will not
/// open again. An empty file holds nothing to lose.
pub(crate) fn forget_empty_snapshots(meta_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(meta_dir) else {
        return;
    };
    for e in entries.flatten() {
        let empty = e.metadata().is_ok_and(|m| m.is_file() && m.len() == 0);
        if empty && e.file_name().to_string_lossy().starts_with("snap.") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl Meta {
    /// Opens (or creates) the store at `path`. sled locks its directory; a container
    /// closed a moment ago may still hold the lock while sled's threads wind down, so
    /// this waits up to 2 s for it before saying another process has the container.
    pub fn open(path: &Path) -> Result<Self> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let opened = sled::Config::new()
                .path(path)
                .mode(sled::Mode::LowSpace)
                .cache_capacity(8 << 20)
                .open();
            let reason = match opened {
                Ok(db) => {
                    return Ok(Meta {
                        db,
                        path: path.to_path_buf(),
                    })
                }
                // sled reports its lock as a plain I/O error with this text.
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                    if std::time::Instant::now() < deadline {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        continue;
                    }
                    "the container is open in another process (its metadata store is locked)"
                        .to_string()
                }
                Err(e) => e.to_string(),
            };
            return Err(LogError::Meta {
                path: path.to_path_buf(),
                reason,
            });
        }
    }

    /// A named tree in the same store, for metadata that lives next to the log (the
    /// controller's scopes, streams and reader groups).
    pub fn tree(&self, name: &str) -> Result<sled::Tree> {
        self.db.open_tree(name).map_err(|e| self.err(e))
    }

    fn err(&self, reason: impl ToString) -> LogError {
        LogError::Meta {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    /// The latest checkpoint, if any was ever written.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        let Some(v) = self.db.get(CHECKPOINT_KEY).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let mut cp: Checkpoint = ciborium::from_reader(&v[..])
            .map_err(|e| self.err(format!("unreadable checkpoint: {e}")))?;
        cp.table.reindex();
        Ok(Some(cp))
    }

    /// The extent indexes of all files older than the checkpoint.
    pub fn file_indexes(&self) -> Result<BTreeMap<u64, Vec<(u64, Extent)>>> {
        let mut out = BTreeMap::new();
        for kv in self.db.scan_prefix(FILE_INDEX_PREFIX) {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            let id = std::str::from_utf8(&k[FILE_INDEX_PREFIX.len()..])
                .ok()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or_else(|| self.err("malformed file index key"))?;
            let ext = decode_file_index(&v, id)
                .map_err(|e| self.err(format!("index of file {id}: {e}")))?;
            out.insert(id, ext);
        }
        Ok(out)
    }

    /// Encodes a checkpoint of `table` after batch `seq` for [`Meta::save`]. The log
    /// writer calls it under the durable state's read lock.
    pub fn encode_checkpoint(&self, seq: u64, replay_from: u64, table: &Table) -> Result<Vec<u8>> {
        let cp = Checkpoint {
            seq,
            replay_from,
            table,
        };
        let mut buf = Vec::new();
        ciborium::into_writer(&cp, &mut buf).map_err(|e| self.err(e))?;
        Ok(buf)
    }

    /// Atomically stores an encoded checkpoint and the indexes of files it retires from
    /// replay, then fsyncs.
    pub fn save(&self, checkpoint: Vec<u8>, indexes: &[(u64, Vec<(u64, Extent)>)]) -> Result<()> {
        let mut batch = sled::Batch::default();
        batch.insert(CHECKPOINT_KEY, checkpoint);
        for (id, ext) in indexes {
            batch.insert(index_key(*id), encode_file_index(ext));
        }
        self.db.apply_batch(batch).map_err(|e| self.err(e))?;
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records (and fsyncs) that a chunk on Tier-2 holds a range of a data id.
    pub fn put_chunk(&self, data_id: u64, c: &Chunk) -> Result<()> {
        let mut v = Vec::with_capacity(12);
        v.extend_from_slice(&c.len.to_le_bytes());
        v.extend_from_slice(&c.crc.to_le_bytes());
        self.db
            .insert(chunk_key(data_id, c.data_offset), v)
            .map_err(|e| self.err(e))?;
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Forgets chunks (by data id and offset), durably: their objects may be deleted
    /// once this returns.
    pub fn remove_chunks(&self, chunks: impl IntoIterator<Item = (u64, u64)>) -> Result<()> {
        let mut removed = false;
        for (data_id, data_offset) in chunks {
            self.db
                .remove(chunk_key(data_id, data_offset))
                .map_err(|e| self.err(e))?;
            removed = true;
        }
        if removed {
            self.db.flush().map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Every chunk recorded, by data id and offset.
    pub fn chunks(&self) -> Result<Vec<(u64, Chunk)>> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix(CHUNK_PREFIX) {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            let k = &k[CHUNK_PREFIX.len()..];
            if k.len() != 16 || v.len() != 12 {
                return Err(self.err("malformed chunk record"));
            }
            let u = |b: &[u8]| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                a
            };
            let data_id = u64::from_be_bytes(u(&k[0..8]));
            let data_offset = u64::from_be_bytes(u(&k[8..16]));
            out.push((
                data_id,
                Chunk {
                    data_offset,
                    len: u64::from_le_bytes(u(&v[0..8])),
                    crc: u32::from_le_bytes([v[8], v[9], v[10], v[11]]),
                    name: chunk_name(data_id, data_offset).into(),
                },
            ));
        }
        Ok(out)
    }

    /// Every named tree (the metadata kept next to the log) with its entries.
    pub fn dump_trees(&self) -> Result<Trees> {
        let mut out = BTreeMap::new();
        for name in self.db.tree_names() {
            if name == self.db.name() {
                continue;
            }
            let tree = self.db.open_tree(&name).map_err(|e| self.err(e))?;
            let mut entries = Vec::new();
            for kv in tree.iter() {
                let (k, v) = kv.map_err(|e| self.err(e))?;
                entries.push((k.to_vec(), v.to_vec()));
            }
            out.insert(String::from_utf8_lossy(&name).into_owned(), entries);
        }
        Ok(out)
    }

    /// Writes named trees (into an empty store, on a restore from Tier-2) and fsyncs.
    pub fn load_trees(&self, trees: &Trees) -> Result<()> {
        for (name, entries) in trees {
            let tree = self.tree(name)?;
            for (k, v) in entries {
                tree.insert(&k[..], &v[..]).map_err(|e| self.err(e))?;
            }
        }
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Forgets a deleted file's index (no fsync: a leftover index is harmless).
    pub fn remove_file_index(&self, file_id: u64) -> Result<()> {
        self.db
            .remove(index_key(file_id))
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

fn chunk_key(data_id: u64, data_offset: u64) -> Vec<u8> {
    let mut k = CHUNK_PREFIX.to_vec();
    k.extend_from_slice(&data_id.to_be_bytes());
    k.extend_from_slice(&data_offset.to_be_bytes());
    k
}

fn index_key(file_id: u64) -> Vec<u8> {
    let mut k = FILE_INDEX_PREFIX.to_vec();
    k.extend_from_slice(format!("{file_id:016x}").as_bytes());
    k
}

//! Tier-2: long-term storage that segment data moves to from the log (cloud side).
//!
//! A backend stores named, immutable objects: data **chunks**, each written once,
//! whole, and recorded in the metadata store only after the backend says it is
//! durable, and the **manifest**: a full one, replaced whole now and then, and deltas
//! on it, each written once (see [`crate::log::manifest`]). That works on every backend, S3 included, which cannot append to an
//! object; a backend that can append says so in [`Tier2::supports_append`], for layouts
//! that may use it later.
//!
//! Object names are flat: `[A-Za-z0-9._-]`, not starting with `.`. A backend maps them
//! under its own root (a directory, a bucket and prefix).

use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use bytes::Bytes;

/// A boxed future, so that [`Tier2`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a Tier-2 backend reports when it fails.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Tier2Error(pub String);

/// A Tier-2 backend.
pub trait Tier2: Send + Sync + std::fmt::Debug {
    /// Where the objects are, for messages (`file:///mnt/t2`, `s3://bucket/prefix`).
    fn describe(&self) -> String;
    /// Whether an existing object can be appended to (a filesystem can, S3 cannot).
    fn supports_append(&self) -> bool;
    /// Stores a whole object durably, replacing any object of that name.
    fn put<'a>(&'a self, name: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), Tier2Error>>;
    /// Reads a whole object; `Ok(None)` if there is none of that name.
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, Tier2Error>>;
    /// Deletes an object; deleting a missing object succeeds.
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Tier2Error>>;
    /// The names of all objects.
    fn list(&self) -> BoxFuture<'_, Result<Vec<String>, Tier2Error>>;
}

/// Checks an object name (see the module docs).
pub fn check_name(name: &str) -> Result<(), Tier2Error> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Tier2Error(format!("invalid object name {name:?}")))
    }
}

/// Tier-2 on a local or network filesystem (an NFS mount, or a directory under the data
/// dir in standalone mode). An object is written to a temporary file, fsync'ed, renamed
/// into place, and the directory fsync'ed.
#[derive(Debug, Clone)]
pub struct FsTier2 {
    root: PathBuf,
}

impl FsTier2 {
    /// Objects live directly under `root` (created if absent).
    pub fn new(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(FsTier2 { root })
    }

    fn path(&self, name: &str) -> Result<PathBuf, Tier2Error> {
        check_name(name)?;
        Ok(self.root.join(name))
    }
}

fn err(path: &Path, e: std::io::Error) -> Tier2Error {
    Tier2Error(format!("{}: {e}", path.display()))
}

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Tier2Error> + Send + 'static,
) -> BoxFuture<'static, Result<T, Tier2Error>> {
    Box::pin(async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Tier2Error(format!("filesystem task failed: {e}")))?
    })
}

/// Writes `data` into `f`, the new empty file at `path`, and fsyncs it. Its whole
/// blocks go with direct I/O where the file system takes it: through the page cache, a
/// standalone node's chunk writes were about a third of its CPU under `trib bench
/// write` (perf: the kernel's `copy_folio_from_iter_atomic`). The last partial block,
/// and everything on a file system without direct I/O, goes through the page cache.
fn write_synced(f: &std::fs::File, path: &Path, data: &[u8]) -> std::io::Result<()> {
    // An object under one block (the manifest) has nothing to write directly.
    let handle = match data.len() >= super::direct::BLOCK {
        true => super::direct::open_direct(path)?,
        false => None,
    };
    let direct = match handle {
        Some(d) => match super::direct::write_blocks(&d, data) {
            Ok(n) => n,
            // Opened for direct I/O but not allowed to write that way (some FUSE and
            // network file systems): all through the page cache.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => 0,
            Err(e) => return Err(e),
        },
        None => 0,
    };
    f.write_all_at(&data[direct..], direct as u64)?;
    f.sync_all()
}

/// Temporary files of objects being written end with this (never a valid name's end
/// in listings: they are skipped).
const TMP_SUFFIX: &str = ".tmp-write";

impl Tier2 for FsTier2 {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn supports_append(&self) -> bool {
        true
    }

    fn put<'a>(&'a self, name: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), Tier2Error>> {
        let paths = self.path(name).map(|p| (p, self.root.clone()));
        Box::pin(async move {
            let (path, root) = paths?;
            blocking(move || {
                let mut tmp = path.clone().into_os_string();
                tmp.push(TMP_SUFFIX);
                let tmp = PathBuf::from(tmp);
                let f = std::fs::File::create(&tmp).map_err(|e| err(&tmp, e))?;
                write_synced(&f, &tmp, &data).map_err(|e| err(&tmp, e))?;
                std::fs::rename(&tmp, &path).map_err(|e| err(&path, e))?;
                std::fs::File::open(&root)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| err(&root, e))
            })
            .await
        })
    }

    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, Tier2Error>> {
        let path = self.path(name);
        Box::pin(async move {
            let path = path?;
            blocking(move || {
                let f = match std::fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(err(&path, e)),
                };
                let len = f.metadata().map_err(|e| err(&path, e))?.len();
                let mut buf = vec![0u8; len as usize];
                f.read_exact_at(&mut buf, 0).map_err(|e| err(&path, e))?;
                Ok(Some(Bytes::from(buf)))
            })
            .await
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Tier2Error>> {
        let path = self.path(name);
        Box::pin(async move {
            let path = path?;
            blocking(move || match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(err(&path, e)),
            })
            .await
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<String>, Tier2Error>> {
        let root = self.root.clone();
        blocking(move || {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&root).map_err(|e| err(&root, e))? {
                let entry = entry.map_err(|e| err(&root, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.ends_with(TMP_SUFFIX) && check_name(&name).is_ok() {
                    out.push(name);
                }
            }
            out.sort();
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::direct::BLOCK;

    #[tokio::test]
    async fn fs_objects_of_any_length_read_back_as_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t2 = FsTier2::new(dir.path()).expect("tier2");
        // Empty, below a block, whole blocks, and past a direct-write stretch (1 MiB)
        // with a partial block at the end.
        for (i, len) in [0, 100, BLOCK, 3 * BLOCK, (1 << 20) + BLOCK + 7]
            .into_iter()
            .enumerate()
        {
            let data: Bytes = (0..len)
                .map(|b| (b % 251) as u8)
                .collect::<Vec<u8>>()
                .into();
            let name = format!("obj-{i}");
            t2.put(&name, data.clone()).await.expect("put");
            let got = t2.get(&name).await.expect("get").expect("object");
            assert_eq!(got.len(), len, "length of a {len}-byte object");
            assert!(got == data, "bytes of a {len}-byte object");
            // Replaced whole by a shorter one.
            t2.put(&name, data.slice(..len / 2)).await.expect("put");
            let got = t2.get(&name).await.expect("get").expect("object");
            assert!(got == data.slice(..len / 2), "a {len}-byte object replaced");
        }
    }
}

//! Tier-2: long-term storage that segment data moves to from the log (cloud side).
//!
//! Data moves in whole, immutable chunks: each chunk is written once, completely, and
//! recorded in the metadata store only after the backend says it is durable. That works
//! on every backend, S3 included, which cannot append to an object; a backend that can
//! append says so in [`Tier2::supports_append`], for layouts that may use it later.

use std::future::Future;
use std::io::Write;
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
    /// Whether an existing chunk can be appended to (a filesystem can, S3 cannot).
    fn supports_append(&self) -> bool;
    /// Stores a whole chunk durably, replacing any chunk of that name.
    fn write_chunk<'a>(
        &'a self,
        name: &'a str,
        data: Bytes,
    ) -> BoxFuture<'a, Result<(), Tier2Error>>;
    /// Reads a whole chunk.
    fn read_chunk<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Bytes, Tier2Error>>;
    /// Deletes a chunk; deleting a missing chunk succeeds.
    fn delete_chunk<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Tier2Error>>;
}

/// Tier-2 on a local or network filesystem (an NFS mount, or a directory under the data
/// dir in standalone mode). A chunk is written to a temporary file, fsync'ed, renamed
/// into place, and the directory fsync'ed.
#[derive(Debug, Clone)]
pub struct FsTier2 {
    root: PathBuf,
}

impl FsTier2 {
    /// Chunks live directly under `root` (created if absent).
    pub fn new(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(FsTier2 { root })
    }

    fn path(&self, name: &str) -> Result<PathBuf, Tier2Error> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(Tier2Error(format!("invalid chunk name {name:?}")));
        }
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

impl Tier2 for FsTier2 {
    fn supports_append(&self) -> bool {
        true
    }

    fn write_chunk<'a>(
        &'a self,
        name: &'a str,
        data: Bytes,
    ) -> BoxFuture<'a, Result<(), Tier2Error>> {
        let paths = self.path(name).map(|p| (p, self.root.clone()));
        Box::pin(async move {
            let (path, root) = paths?;
            blocking(move || {
                let tmp = path.with_extension("tmp");
                let mut f = std::fs::File::create(&tmp).map_err(|e| err(&tmp, e))?;
                f.write_all(&data)
                    .and_then(|_| f.sync_all())
                    .map_err(|e| err(&tmp, e))?;
                std::fs::rename(&tmp, &path).map_err(|e| err(&path, e))?;
                std::fs::File::open(&root)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| err(&root, e))
            })
            .await
        })
    }

    fn read_chunk<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Bytes, Tier2Error>> {
        let path = self.path(name);
        Box::pin(async move {
            let path = path?;
            blocking(move || {
                let f = std::fs::File::open(&path).map_err(|e| err(&path, e))?;
                let len = f.metadata().map_err(|e| err(&path, e))?.len();
                let mut buf = vec![0u8; len as usize];
                f.read_exact_at(&mut buf, 0).map_err(|e| err(&path, e))?;
                Ok(Bytes::from(buf))
            })
            .await
        })
    }

    fn delete_chunk<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Tier2Error>> {
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
}

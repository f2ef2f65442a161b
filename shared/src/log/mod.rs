//! The segment log: durable storage of segments, shared by edge and cloud.
//!
//! A *container* ([`SegmentLog`]) holds many segments over one write-ahead log with
//! group commit (see [`writer`]). The log is the storage: segment data is read back from
//! the log files (through a bounded cache of recent data), never copied into a second
//! local file, so a byte appended is written to disk once. On-disk layout of a
//! container directory:
//!
//! ```text
//! DIR/wal/{file_id:016x}.log   log files, format in [`format`]
//! DIR/meta/                    sled: latest checkpoint + extent index of older files,
//!                              Tier-2 chunk records, metadata trees
//! ```
//!
//! With a Tier-2 ([`tier2`]), data moves from the log into chunks there, and a
//! [`manifest`] written after each move lets a node whose disk is lost come back from
//! Tier-2 alone.
//!
//! Guarantees: an append is acknowledged (its [`Ticket`] durable) only after
//! `fdatasync`; a torn tail is cut on recovery; a corrupted frame or a missing file is
//! reported as [`LogError::Corrupt`] / [`LogError::MissingFile`], never served.

mod cache;
mod config;
mod container;
pub mod direct;
mod error;
pub mod faults;
mod files;
pub mod format;
pub mod fsync;
mod index;
pub mod manifest;
mod meta;
pub mod repair;
pub mod room;
mod table;
pub mod tier2;
pub mod writer;

pub use config::LogConfig;
pub use container::{MoveStats, ReadResult, SegmentInfo, SegmentLog, Ticket};
pub use error::{LogError, Result};
pub use manifest::{MissingData, RestoreReport};
pub use table::{
    validate_name, AppendOptions, AttributeCondition, AttributeId, AttributeUpdate, MAX_NAME_LEN,
};
pub use tier2::{FsTier2, Tier2, Tier2Error};
pub use writer::{Payload, SHARED_MIN};

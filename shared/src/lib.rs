//! Tributary: durable stream storage for the edge and the cloud.
//!
//! This crate is the public library. Today it holds the storage engine every stream
//! stands on ([`log`]) and the event framing used inside segments ([`event`]).

pub mod event;
pub mod log;

//! The segment service: segments of a [`crate::log::SegmentLog`] served over QUIC with
//! the [`crate::wire`] protocol, and its client. The edge and the cloud serve segments
//! with this same code.

mod client;
mod server;

pub use client::{Ack, AppendSession, ClientError, SegmentClient};
pub use server::SegmentServer;

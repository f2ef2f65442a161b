//! The segment service: segments of a [`crate::log::SegmentLog`] served over QUIC with
//! the [`crate::wire`] protocol, and its client. The edge and the cloud serve segments
//! with this same code.

mod access;
mod client;
mod large;
mod peers;
mod reader;
mod server;
mod udp;
mod writer;

pub use access::{Access, Grant, Verb};
pub use client::{
    Ack, AckStream, AppendSession, Client, ClientError, MirrorAck, MirrorAcks, MirrorSession,
};
pub use peers::{Policy, REVOKED};
pub use reader::{EventReader, ReadEvent, ReaderConfig};
pub use server::{SegmentServer, ServiceMetrics};
pub use udp::{quic_endpoint, RECV_BUFFER};
pub use writer::{EventWriter, WriterConfig, WriterStats, MAX_EVENT_BYTES};

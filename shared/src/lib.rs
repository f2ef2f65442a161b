//! Tributary: durable stream storage for the edge and the cloud.
//!
//! This crate is the public library: the storage engine every stream stands on
//! ([`log`]), the stream model of scopes, streams, segments and reader groups
//! ([`stream`]) and the [`controller`] that keeps it, the event framing used inside
//! segments ([`event`]), the wire protocol ([`wire`]), TLS helpers ([`tls`]), the
//! service over QUIC with its client, event writer and event reader ([`service`]), and
//! the client profile that says how to reach a node ([`profile`]), the [`node`]
//! that puts log, controller and service together for the cloud and the edge, and the
//! CBOR encoding of sensor readings ([`reading`]).

pub mod controller;
pub mod event;
pub mod log;
pub mod node;
pub mod profile;
pub mod reading;
pub mod service;
pub mod stream;
pub mod tls;
pub mod wire;

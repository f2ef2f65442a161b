//! `tributary-edge`: the gateway daemon's library — configuration, sources and the
//! local node they feed.
//!
//! The edge is a [`tributary::node::Node`] (the same segment log, controller and
//! segment service as the cloud's standalone node, so `trib` works against it) plus
//! sources that store into local streams in-process ([`local`]): MQTT ([`mqtt`]),
//! serial devices ([`serial`]) and watched directories of video files ([`watch`]), with disk budgets ([`budget`]) and a status report
//! ([`status`]).

pub mod budget;
pub mod config;
pub mod fleet;
pub mod lines;
pub mod local;
pub mod modbus;
pub mod mqtt;
pub mod pipe;
pub mod replicate;
pub mod run;
pub mod sensor;
pub mod serial;
pub mod status;
pub mod watch;

//! `tributary-edge`: the gateway daemon's library — configuration, sources and the
//! local node they feed.
//!
//! - [`serial`]: the serial source — reads a serial device, decodes frames, hands
//!   them on, and survives the device coming and going.

pub mod serial;

//! The cloud node as a library: its configuration file, the S3 Tier-2 backend, the
//! standalone node and its status, used by the `tributary-cloud` binary, its tests and benchmarks.

pub mod certs;
pub mod config;
pub mod s3;
pub mod standalone;
pub mod status;

//! `tributary-edge`: the gateway daemon's library — configuration, sources and the
//! local node they feed.

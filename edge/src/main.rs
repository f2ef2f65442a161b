//! `tributary-edge`: the gateway daemon. Its sources, local streams and replicator come
//! with the "Edge node" and "replication" issues; today it only reports that.

fn main() -> anyhow::Result<()> {
    anyhow::bail!(
        "tributary-edge {}: the edge daemon is not built yet (see the project's issues)",
        env!("CARGO_PKG_VERSION")
    )
}

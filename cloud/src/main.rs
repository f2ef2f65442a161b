//! `tributary-cloud`: controller, segment store and tiering. The standalone node comes
//! with the "Streams over QUIC" issue; today it only reports that.

fn main() -> anyhow::Result<()> {
    anyhow::bail!(
        "tributary-cloud {}: the cloud node is not built yet (see the project's issues)",
        env!("CARGO_PKG_VERSION")
    )
}

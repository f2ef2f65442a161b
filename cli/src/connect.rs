//! Finding the server: the client profile, and `SCOPE/STREAM` arguments.

use std::path::Path;

use anyhow::{bail, Context, Result};
use tributary::profile::{default_profile_path, ClientProfile};
use tributary::service::Client;
use tributary::tls::client_config;

/// Connects with the profile at `path`, or the default one.
pub async fn connect(path: Option<&Path>) -> Result<Client> {
    let path = path.map_or_else(default_profile_path, Path::to_path_buf);
    if !path.exists() {
        bail!(
            "no client profile at {} (start `tributary-cloud standalone` once, which writes it, \
             or pass --profile FILE)",
            path.display()
        );
    }
    let profile = ClientProfile::load(&path)?;
    let tls = client_config(&profile.identity())
        .with_context(|| format!("the TLS identity of profile {}", path.display()))?;
    Client::connect(profile.endpoint, &profile.server_name, tls)
        .await
        .with_context(|| format!("profile {}", path.display()))
}

/// Splits `SCOPE/STREAM`.
pub fn scoped(s: &str) -> Result<(&str, &str)> {
    match s.split_once('/') {
        Some((scope, stream)) if !scope.is_empty() && !stream.is_empty() => Ok((scope, stream)),
        _ => bail!("{s:?} is not SCOPE/STREAM"),
    }
}

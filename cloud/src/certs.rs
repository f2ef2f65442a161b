//! `tributary-cloud certs`: a CA, a server certificate and client certificates for a
//! deployment, written as PEM files into one directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tributary::tls::CertAuthority;

/// Common name of a CA made by `certs`.
const CA_COMMON_NAME: &str = "Tributary CA";

/// Issues into `out`: reuses the CA in `out/ca.pem` + `out/ca.key` if there is one,
/// else makes one; then `server.pem`/`server.key` for `server_names` and
/// `<client>.pem`/`<client>.key` for each of `clients`. Keys are written with mode 0600.
/// Returns the files written.
pub fn run(
    out: &Path,
    server_names: &[String],
    clients: &[String],
) -> anyhow::Result<Vec<PathBuf>> {
    if server_names.is_empty() {
        bail!("at least one --server-name is needed");
    }
    for n in server_names {
        if n.is_empty() || n.contains(|c: char| c.is_whitespace() || c.is_control()) {
            bail!("--server-name {n:?}: not a DNS name or IP address");
        }
    }
    for c in clients {
        check_client_name(c)?;
    }
    let mut written = Vec::new();
    let ca = match CertAuthority::load(out)? {
        Some(ca) => ca,
        None => {
            let ca = CertAuthority::generate(CA_COMMON_NAME)?;
            ca.write(out)?;
            let (cert, key) = CertAuthority::paths(out);
            written.extend([cert, key]);
            ca
        }
    };
    let files = |name: &str| {
        (
            out.join(format!("{name}.pem")),
            out.join(format!("{name}.key")),
        )
    };
    let (cert, key) = files("server");
    ca.issue_server(server_names)
        .context("issuing the server certificate")?
        .write(&cert, &key)?;
    written.extend([cert, key]);
    for c in clients {
        let (cert, key) = files(c);
        ca.issue_client(c)
            .with_context(|| format!("issuing the client certificate {c:?}"))?
            .write(&cert, &key)?;
        written.extend([cert, key]);
    }
    Ok(written)
}

/// A client name is also a file name in the output directory.
fn check_client_name(name: &str) -> anyhow::Result<()> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || !ok_chars || name.starts_with('.') {
        bail!("--client {name:?}: use letters, digits, '-', '_' and '.' (not first)");
    }
    if name == "ca" || name == "server" {
        bail!("--client {name:?}: the name is taken by the CA or server files");
    }
    Ok(())
}

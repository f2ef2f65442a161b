//! `tributary-cloud certs`: a CA, a server certificate and client certificates for a
//! deployment, written as PEM files into one directory.

use std::path::Path;

use anyhow::{bail, Context};
use tributary::tls::CertAuthority;

/// Common name of a CA made by `certs`.
const CA_COMMON_NAME: &str = "Tributary CA";

/// Issues into `out`: reuses the CA in `out/ca.pem` + `out/ca.key` if there is one,
/// else makes one; then `server.pem`/`server.key` for `server_names` (if any) and
/// `<client>.pem`/`<client>.key` for each of `clients`, each valid for `days` days.
/// Issuing a client again renews it: a new key and serial for the same identity, so
/// the old certificate can be revoked once the new one is in place. Keys are written
/// with mode 0600. Returns what to print: each file written, each certificate's serial
/// and last day.
pub fn run(
    out: &Path,
    server_names: &[String],
    clients: &[String],
    days: u32,
) -> anyhow::Result<Vec<String>> {
    if server_names.is_empty() && clients.is_empty() {
        bail!("nothing to issue: give --server-name, --client, or both");
    }
    if days == 0 {
        bail!("--days must be at least 1");
    }
    for n in server_names {
        if n.is_empty() || n.contains(|c: char| c.is_whitespace() || c.is_control()) {
            bail!("--server-name {n:?}: not a DNS name or IP address");
        }
    }
    for c in clients {
        check_client_name(c)?;
    }
    let mut report = Vec::new();
    let ca = match CertAuthority::load(out)? {
        Some(ca) => ca,
        None => {
            let ca = CertAuthority::generate(CA_COMMON_NAME)?;
            ca.write(out)?;
            let (cert, key) = CertAuthority::paths(out);
            report.extend([cert, key].map(|f| format!("wrote {}", f.display())));
            ca
        }
    };
    let mut issue = |name: &str, cert: tributary::tls::IssuedCert| -> anyhow::Result<()> {
        let (pem, key) = (
            out.join(format!("{name}.pem")),
            out.join(format!("{name}.key")),
        );
        cert.write(&pem, &key)?;
        report.extend([&pem, &key].map(|f| format!("wrote {}", f.display())));
        report.push(format!(
            "{name}: serial {}, valid until {}",
            cert.serial, cert.not_after
        ));
        Ok(())
    };
    if !server_names.is_empty() {
        let c = ca
            .issue_server(server_names, days)
            .context("issuing the server certificate")?;
        issue("server", c)?;
    }
    for c in clients {
        let cert = ca
            .issue_client(c, days)
            .with_context(|| format!("issuing the client certificate {c:?}"))?;
        issue(c, cert)?;
    }
    Ok(report)
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

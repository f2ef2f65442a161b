//! TLS for every connection: a development PKI made with rcgen, and mutual-TLS (TLS 1.3)
//! configurations for quinn. The ring provider is passed explicitly, so no process-wide
//! default provider is needed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::wire::ALPN;

/// What TLS set-up can fail with.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read, written or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// The certificates and keys do not make a valid configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A TLS identity on disk: the CA that peers must be signed by, and our certificate and
/// key (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// CA certificate.
    pub ca: PathBuf,
    /// Our certificate.
    pub cert: PathBuf,
    /// Our private key.
    pub key: PathBuf,
}

/// The development PKI: a CA, a server identity for `localhost`/`127.0.0.1`, and a client
/// identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    /// The server's identity.
    pub server: Identity,
    /// A client's identity.
    pub client: Identity,
}

impl DevPki {
    /// The files of a development PKI in `dir`.
    pub fn paths(dir: &Path) -> Self {
        let f = |n: &str| dir.join(n);
        DevPki {
            server: Identity {
                ca: f("ca.pem"),
                cert: f("server.pem"),
                key: f("server.key"),
            },
            client: Identity {
                ca: f("ca.pem"),
                cert: f("client.pem"),
                key: f("client.key"),
            },
        }
    }

    /// Loads the development PKI in `dir`, creating it if it is not there. `client_name`
    /// is the client certificate's common name (the identity the server sees). The CA's
    /// key is kept as `ca.key`, so more certificates can be issued later.
    pub fn ensure(dir: &Path, client_name: &str) -> Result<Self, TlsError> {
        let pki = Self::paths(dir);
        if pki.server.cert.exists() && pki.client.cert.exists() {
            return Ok(pki);
        }
        // An incomplete PKI (interrupted creation) is made again from scratch.
        let ca = CertAuthority::generate("Tributary development CA")?;
        ca.write(dir)?;
        let server = ca.issue_server(&["localhost".into(), "127.0.0.1".into()], DEV_VALID_DAYS)?;
        server.write(&pki.server.cert, &pki.server.key)?;
        // The client certificate is written last: its presence means the PKI is complete.
        ca.issue_client(client_name, DEV_VALID_DAYS)?
            .write(&pki.client.cert, &pki.client.key)?;
        Ok(pki)
    }
}

/// Common name of server certificates.
const SERVER_COMMON_NAME: &str = "tributary-server";

/// Days a certificate of `tributary-cloud certs` is valid unless told otherwise.
pub const DEFAULT_VALID_DAYS: u32 = 365;
/// Days the development PKI's certificates are valid: it lives on one machine, for
/// its user alone, and a demo should not stop working after a year.
const DEV_VALID_DAYS: u32 = 3650;

/// The date `days` days after 1970-01-01, as (year, month, day) (the civil calendar,
/// after Howard Hinnant's `civil_from_days`).
fn civil_date(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

/// Days since 1970-01-01, today.
fn today() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| (d.as_secs() / 86_400) as i64)
}

/// A certificate authority that issues server and client certificates: the one way
/// certificates are made (the development PKI and `tributary-cloud certs` both use it).
#[derive(Debug)]
pub struct CertAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// Its serial number, hex (what a revocation list names).
    pub serial: String,
    /// The last day it is valid, `YYYY-MM-DD`.
    pub not_after: String,
}

impl std::fmt::Debug for IssuedCert {
    /// The certificate only: the key is secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// Writes the certificate to `cert` and the key to `key` (mode 0600).
    pub fn write(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        write(key, &self.key_pem, true)?;
        write(cert, &self.cert_pem, false)
    }
}

impl CertAuthority {
    /// A new self-signed CA named `common_name`.
    pub fn generate(common_name: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(CertAuthority {
            cert_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// An existing CA: its certificate and private key, PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let ca_err = |e: rcgen::Error| TlsError::Config(format!("CA: {e}"));
        let key = KeyPair::from_pem(key_pem).map_err(ca_err)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(ca_err)?;
        Ok(CertAuthority {
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    /// The CA kept in `dir` (`ca.pem`, `ca.key`): `None` if neither file is there, an
    /// error if only one is, or if they cannot be read.
    pub fn load(dir: &Path) -> Result<Option<Self>, TlsError> {
        let (cert, key) = Self::paths(dir);
        match (cert.exists(), key.exists()) {
            (false, false) => return Ok(None),
            (true, true) => {}
            (true, false) => return Err(file_err(&key, "missing, but the CA certificate exists")),
            (false, true) => return Err(file_err(&cert, "missing, but the CA key exists")),
        }
        let cert_pem = std::fs::read_to_string(&cert).map_err(|e| file_err(&cert, e))?;
        let key_pem = std::fs::read_to_string(&key).map_err(|e| file_err(&key, e))?;
        let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| file_err(&key, e))?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key_pair).map_err(|e| file_err(&cert, e))?;
        Ok(Some(CertAuthority { cert_pem, issuer }))
    }

    /// Where a CA is kept in `dir`: `ca.pem` and `ca.key`.
    pub fn paths(dir: &Path) -> (PathBuf, PathBuf) {
        (dir.join("ca.pem"), dir.join("ca.key"))
    }

    /// Writes the CA to `dir` (`ca.pem`, and `ca.key` with mode 0600), creating `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), TlsError> {
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        let (cert, key) = Self::paths(dir);
        write(&key, &self.issuer.key().serialize_pem(), true)?;
        write(&cert, &self.cert_pem, false)
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for `names` (DNS names or IP addresses; clients connect
    /// with one of them as the server name), valid from yesterday for `days` days.
    pub fn issue_server(&self, names: &[String], days: u32) -> Result<IssuedCert, TlsError> {
        self.issue(
            names.to_vec(),
            SERVER_COMMON_NAME,
            ExtendedKeyUsagePurpose::ServerAuth,
            days,
        )
    }

    /// A client certificate whose common name, the identity the server sees, is
    /// `name`, valid from yesterday for `days` days. Issuing again for the same name
    /// renews it: a new key and serial, the same identity.
    pub fn issue_client(&self, name: &str, days: u32) -> Result<IssuedCert, TlsError> {
        self.issue(vec![], name, ExtendedKeyUsagePurpose::ClientAuth, days)
    }

    fn issue(
        &self,
        names: Vec<String>,
        common_name: &str,
        usage: ExtendedKeyUsagePurpose,
        days: u32,
    ) -> Result<IssuedCert, TlsError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(names)?;
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.extended_key_usages = vec![usage];
        // A positive 127-bit random serial (DER integers are signed).
        let serial = (crate::stream::random_id() >> 1).to_be_bytes();
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        // From yesterday: a gateway's clock a little behind still accepts it.
        let (y, m, d) = civil_date(today() - 1);
        p.not_before = rcgen::date_time_ymd(y, m, d);
        let (y, m, d) = civil_date(today() + i64::from(days));
        p.not_after = rcgen::date_time_ymd(y, m, d);
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: serial_hex(&serial),
            not_after: format!("{y:04}-{m:02}-{d:02}"),
        })
    }
}

/// Certificates no longer accepted, by serial number: a file of hex serials (as
/// `tributary-cloud certs` prints them; colons and case do not matter), one per line,
/// `#` starting a comment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked {
    serials: std::collections::BTreeSet<String>,
}

impl Revoked {
    /// Reads the list in `path`.
    pub fn load(path: &Path) -> Result<Revoked, TlsError> {
        let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
        let mut serials = std::collections::BTreeSet::new();
        for (i, line) in text.lines().enumerate() {
            let s = line.split('#').next().unwrap_or("").trim().replace(':', "");
            if s.is_empty() {
                continue;
            }
            if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(file_err(
                    path,
                    format!(
                        "line {}: {:?} is not a hex serial number",
                        i + 1,
                        line.trim()
                    ),
                ));
            }
            serials.insert(serial_hex_str(&s));
        }
        Ok(Revoked { serials })
    }

    /// Whether the certificate with this serial (as [`serial_hex`] writes it) is
    /// revoked.
    pub fn contains(&self, serial: &str) -> bool {
        self.serials.contains(serial)
    }

    /// How many serials it lists.
    pub fn len(&self) -> usize {
        self.serials.len()
    }

    /// Whether it lists none.
    pub fn is_empty(&self) -> bool {
        self.serials.is_empty()
    }
}

fn serial_hex_str(hex: &str) -> String {
    let t = hex.trim_start_matches('0').to_ascii_lowercase();
    if t.is_empty() {
        "0".into()
    } else {
        t
    }
}

/// A serial number as a revocation list writes it: lowercase hex, no leading zeros.
pub fn serial_hex(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    serial_hex_str(&hex)
}

fn file_err(path: &Path, e: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn write(path: &Path, pem: &str, secret: bool) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    if secret {
        o.mode(0o600);
    }
    let mut f = o.open(path).map_err(|e| file_err(path, e))?;
    if secret {
        // The mode above applies only to a new file.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| file_err(path, e))?;
    }
    std::io::Write::write_all(&mut f, pem.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| file_err(path, e))
}

fn load(
    id: &Identity,
) -> Result<
    (
        rustls::RootCertStore,
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
    ),
    TlsError,
> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&id.ca).map_err(|e| file_err(&id.ca, e))? {
        roots
            .add(ca.map_err(|e| file_err(&id.ca, e))?)
            .map_err(|e| file_err(&id.ca, e))?;
    }
    if roots.is_empty() {
        return Err(file_err(&id.ca, "no CA certificate in the file"));
    }
    let certs = CertificateDer::pem_file_iter(&id.cert)
        .map_err(|e| file_err(&id.cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(&id.cert, e))?;
    if certs.is_empty() {
        return Err(file_err(&id.cert, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&id.key).map_err(|e| file_err(&id.key, e))?;
    Ok((roots, certs, key))
}

/// Warned of by [`check_files`]: a certificate that expires within this many days.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// What `check-config` says of an identity's files before a node relies on them:
/// problems (a file missing, unreadable or not PEM; the key not the certificate's; a
/// certificate expired or not valid yet) and warnings (one expiring within
/// [`EXPIRY_WARNING_DAYS`]). `server`: the identity a node serves with (else a client's).
pub fn check_files(id: &Identity, server: bool) -> (Vec<String>, Vec<String>) {
    let (mut problems, mut warnings) = (Vec::new(), Vec::new());
    let (roots_der, certs, _) = match (load(id), load_ca_der(&id.ca)) {
        (Ok(l), Ok(cas)) => (cas, l.1, l.2),
        (Err(e), _) | (_, Err(e)) => return (vec![e.to_string()], warnings),
    };
    // Building the TLS configuration checks that the key is the certificate's.
    let built = if server {
        server_config(id).map(drop)
    } else {
        client_config(id).map(drop)
    };
    if let Err(e) = built {
        problems.push(format!(
            "{} and {}: {e}",
            id.cert.display(),
            id.key.display()
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let files = std::iter::once((&id.cert, certs[0].as_ref()))
        .chain(roots_der.iter().map(|d| (&id.ca, d.as_ref())));
    for (path, der) in files {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            problems.push(format!("{}: not an X.509 certificate", path.display()));
            continue;
        };
        let v = cert.validity();
        let (from, until) = (v.not_before.timestamp(), v.not_after.timestamp());
        let subject = cert.subject().to_string();
        if until < now {
            problems.push(format!(
                "{}: the certificate of {subject} expired on {}",
                path.display(),
                v.not_after
            ));
        } else if from > now {
            problems.push(format!(
                "{}: the certificate of {subject} is not valid before {}",
                path.display(),
                v.not_before
            ));
        } else if until - now < EXPIRY_WARNING_DAYS * 86_400 {
            warnings.push(format!(
                "{}: the certificate of {subject} expires on {} (in {} days): renew it",
                path.display(),
                v.not_after,
                (until - now) / 86_400
            ));
        }
    }
    (problems, warnings)
}

/// The CA file's certificates, as DER.
fn load_ca_der(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_err(e: impl ToString) -> TlsError {
    TlsError::Config(e.to_string())
}

/// Server side: TLS 1.3, our certificate, and clients must present a certificate
/// signed by the identity's CA.
pub fn server_config(id: &Identity) -> Result<quinn::ServerConfig, TlsError> {
    let (roots, certs, key) = load(id)?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(config_err)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(config_err)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(cfg).map_err(config_err)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut t = quinn::TransportConfig::default();
    t.mtu_discovery_config(Some(mtu_discovery()));
    // Room for a replicating edge's data in flight on a long link (8 MiB per stream:
    // 50 ms at 160 MiB/s), bounded per connection.
    t.stream_receive_window(quinn::VarInt::from_u32(8 << 20));
    t.receive_window(quinn::VarInt::from_u32(32 << 20));
    server.transport_config(Arc::new(t));
    Ok(server)
}

/// Client side: TLS 1.3, the server must be signed by the identity's CA, and we
/// present our certificate.
pub fn client_config(id: &Identity) -> Result<quinn::ClientConfig, TlsError> {
    let (roots, certs, key) = load(id)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(config_err)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).map_err(config_err)?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(transport(DEFAULT_IDLE_TIMEOUT));
    Ok(client)
}

/// The largest UDP payload a connection may grow to. Path MTU discovery searches up to
/// it, and every endpoint accepts it from its peer ([`crate::service::quic_endpoint`]);
/// a sender never exceeds what its peer accepts, whatever it discovers.
///
/// Not a full jumbo frame (8952): quinn sends up to 10 packets in one segmentation
/// offload (GSO) call, which the kernel refuses beyond one 64 KiB UDP datagram (65,507
/// bytes over IPv4), and quinn drops such a batch without a word. 10 packets of 6550
/// bytes fit.
pub const MAX_UDP_PAYLOAD: u16 = 6550;

/// Path MTU discovery up to [`MAX_UDP_PAYLOAD`]: a link that carries jumbo frames (a
/// data centre, loopback) needs about a sixth of the packets; others stay at what they
/// carry (1472 bytes of payload on Ethernet).
fn mtu_discovery() -> quinn::MtuDiscoveryConfig {
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    mtu
}

/// How long a client waits without hearing from the server before it declares the
/// connection lost (and its writers and readers reconnect).
pub const DEFAULT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// QUIC transport settings for a connection declared lost after `idle_timeout` of
/// silence; keep-alives go out four times per timeout, so a live but quiet connection
/// never times out.
pub fn transport(idle_timeout: std::time::Duration) -> Arc<quinn::TransportConfig> {
    Arc::new(transport_config(idle_timeout))
}

/// The settings of [`transport`] with BBR congestion control, for links that lose
/// packets at random (cellular gateways): a loss-based controller (Cubic, quinn's
/// default) takes every loss for congestion and, at 50 ms RTT and 1 % loss, holds a
/// transfer near 0.3 MB/s. The edge replicates with this.
pub fn lossy_link_transport(idle_timeout: std::time::Duration) -> Arc<quinn::TransportConfig> {
    let mut t = transport_config(idle_timeout);
    t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    Arc::new(t)
}

fn transport_config(idle_timeout: std::time::Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.mtu_discovery_config(Some(mtu_discovery()));
    t.keep_alive_interval(Some(idle_timeout / 4));
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle_timeout) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_files_finds_missing_mismatched_expired_and_expiring_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let ca = CertAuthority::generate("test CA").expect("ca");
        ca.write(d).expect("write ca");
        let id = |name: &str, key: &str| Identity {
            ca: d.join("ca.pem"),
            cert: d.join(format!("{name}.pem")),
            key: d.join(format!("{key}.key")),
        };
        for (name, days) in [("good", 365), ("old", 0), ("soon", 10)] {
            let c = ca.issue_client(name, days).expect("issue");
            c.write(
                &d.join(format!("{name}.pem")),
                &d.join(format!("{name}.key")),
            )
            .expect("write");
        }
        assert_eq!(check_files(&id("good", "good"), false), (vec![], vec![]));
        let (p, _) = check_files(&id("old", "old"), false);
        assert!(p.len() == 1 && p[0].contains("expired"), "{p:?}");
        let (p, w) = check_files(&id("soon", "soon"), false);
        assert!(
            p.is_empty() && w.len() == 1 && w[0].contains("renew it"),
            "{p:?} {w:?}"
        );
        let (p, _) = check_files(&id("good", "soon"), false);
        assert!(p.len() == 1 && p[0].contains("good.pem and"), "{p:?}");
        let (p, _) = check_files(&id("none", "good"), false);
        assert!(p.len() == 1 && p[0].contains("none.pem"), "{p:?}");
    }

    #[test]
    fn issued_certificates_carry_their_serial_and_validity() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(20_000), (2024, 10, 4));
        assert_eq!(civil_date(-1), (1969, 12, 31));
        let ca = CertAuthority::generate("test CA").expect("ca");
        let a = ca.issue_client("gw-1", 30).expect("issue");
        let b = ca.issue_client("gw-1", 30).expect("renew");
        assert_ne!(a.serial, b.serial, "a renewal has a serial of its own");
        let der = CertificateDer::from_pem_slice(a.cert_pem.as_bytes()).expect("pem");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
        assert_eq!(serial_hex(cert.raw_serial()), a.serial);
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
            / 86_400;
        assert_eq!(days, 31, "from yesterday, for 30 days");
        let (y, m, d) = civil_date(today() + 30);
        assert_eq!(a.not_after, format!("{y:04}-{m:02}-{d:02}"));
    }

    #[test]
    fn a_revocation_list_is_hex_serials_one_per_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("revoked.txt");
        std::fs::write(&path, "# gateways we lost\nAB:CD  # pi-17\n\n00ef12\n").expect("write");
        let r = Revoked::load(&path).expect("list");
        assert_eq!(r.len(), 2);
        assert!(r.contains("abcd") && r.contains("ef12") && !r.contains("ab"));
        std::fs::write(&path, "abcd\npi-17\n").expect("write");
        let e = Revoked::load(&path).expect_err("not hex").to_string();
        assert!(e.contains("line 2") && e.contains("pi-17"), "{e}");
    }
}

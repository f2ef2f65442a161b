//! TLS for every connection: a development PKI made with rcgen, and mutual-TLS (TLS 1.3)
//! configurations for quinn. The ring provider is passed explicitly, so no process-wide
//! default provider is needed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
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
    /// is the client certificate's common name (the identity the server sees).
    pub fn ensure(dir: &Path, client_name: &str) -> Result<Self, TlsError> {
        let pki = Self::paths(dir);
        if pki.server.cert.exists() && pki.client.cert.exists() {
            return Ok(pki);
        }
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Tributary development CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, &ca_key);

        let leaf = |names: Vec<String>, cn: &str, usage| -> Result<(String, String), TlsError> {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(names)?;
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![usage];
            let cert = p.signed_by(&key, &issuer)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            "tributary-server",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert, client_key) =
            leaf(vec![], client_name, ExtendedKeyUsagePurpose::ClientAuth)?;
        write(&pki.server.ca, &ca_cert.pem(), false)?;
        write(&pki.server.cert, &server_cert, false)?;
        write(&pki.server.key, &server_key, true)?;
        write(&pki.client.key, &client_key, true)?;
        // Written last: its presence means the PKI is complete.
        write(&pki.client.cert, &client_cert, false)?;
        Ok(pki)
    }
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
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
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

/// How long a client waits without hearing from the server before it declares the
/// connection lost (and its writers and readers reconnect).
pub const DEFAULT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// QUIC transport settings for a connection declared lost after `idle_timeout` of
/// silence; keep-alives go out four times per timeout, so a live but quiet connection
/// never times out.
pub fn transport(idle_timeout: std::time::Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(idle_timeout / 4));
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle_timeout) {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

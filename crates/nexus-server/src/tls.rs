//! TLS, both ways: the certificate and key that make the listener HTTPS (`--tls-cert` and
//! `--tls-key`, see [`crate::listener`]), and the trust roots of outgoing connections (webhook
//! deliveries, the command line's client subcommands, and the backends: PostgreSQL, NATS and
//! RabbitMQ over TLS): the platform's store, plus the PEM bundle in `SSL_CERT_FILE` when it is
//! set. The backends' crates read no environment: [`trust_roots`] is handed to them.
//!
//! rustls with *ring*, handed to each configuration explicitly: the binary has one crypto provider
//! (the NATS client builds ring too) and this crate never installs a process-wide default, so no
//! client or server anywhere depends on the order things start in. (lapin's TLS connector
//! installs ring as the default when it first connects over `amqps://`; ring being the only
//! provider built, that changes nothing.)
//!
//! `SSL_CERT_FILE` adds to the platform's roots instead of replacing them (OpenSSL, and the
//! `rustls-native-certs` crate, replace them): a webhook to a public endpoint keeps working when
//! the operator adds a private CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The environment variable that names a PEM bundle of extra trust roots.
pub const CERT_FILE_ENV: &str = "SSL_CERT_FILE";

/// The platform's bundle of trusted roots: the first of these that exists (the list Go's
/// `crypto/x509` reads on Linux; Debian's first). Elsewhere, `rustls-native-certs` asks the OS.
const PLATFORM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Arch, Gentoo
    "/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL 6
    "/etc/ssl/ca-bundle.pem",             // openSUSE
    "/etc/pki/tls/cacert.pem",            // OpenELEC
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // CentOS, RHEL 7
    "/etc/ssl/cert.pem",                  // Alpine
];

/// A certificate, key or bundle that cannot be used; each names its file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {} is not usable PEM: {message}", path.display())]
    Pem { what: &'static str, path: PathBuf, message: String },
    #[error("the TLS certificate {} and key {} cannot serve together: {message}", cert.display(), key.display())]
    Pair { cert: PathBuf, key: PathBuf, message: String },
    #[error("HTTPS client: {0}")]
    Client(String),
}

/// The one crypto provider.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The listener's TLS configuration: the certificate chain in `cert` (PEM, the server's
/// certificate first), the private key in `key` (PEM: PKCS#8, PKCS#1 or SEC1), TLS 1.2 and 1.3,
/// ALPN `http/1.1` (the server speaks HTTP/1 only).
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    const CERT: &str = "TLS certificate file";
    const KEY: &str = "TLS key file";
    let chain = certificates(&read(cert, CERT)?, cert, CERT)?;
    let pem = read(key, KEY)?;
    let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        what: KEY,
        path: key.to_owned(),
        message: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no private key in it".to_owned(),
            other => other.to_string(),
        },
    })?;
    let pair = |message: String| TlsError::Pair { cert: cert.to_owned(), key: key.to_owned(), message };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| pair(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| pair(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The trust roots of outgoing HTTPS and of the backends' TLS: the platform's, plus every
/// certificate of `extra` (the `SSL_CERT_FILE` bundle), which must be readable and hold at least
/// one certificate.
pub fn trust_roots(extra: Option<&Path>) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut roots = platform_roots();
    if let Some(path) = extra {
        const WHAT: &str = "SSL_CERT_FILE bundle";
        let added = certificates(&read(path, WHAT)?, path, WHAT)?;
        for (n, cert) in added.iter().enumerate() {
            RootCertStore::empty().add(cert.clone()).map_err(|e| TlsError::Pem {
                what: WHAT,
                path: path.to_owned(),
                message: format!("certificate {} is not a usable trust root: {e}", n + 1),
            })?;
        }
        roots.extend(added);
    }
    Ok(roots)
}

/// `builder` trusting [`trust_roots`]`(extra)`, over rustls and ring.
pub fn https_client(
    builder: reqwest::ClientBuilder,
    extra: Option<&Path>,
) -> Result<reqwest::ClientBuilder, TlsError> {
    let mut builder = builder.use_rustls_tls().tls_built_in_root_certs(false);
    for root in trust_roots(extra)? {
        let certificate =
            reqwest::Certificate::from_der(&root).map_err(|e| TlsError::Client(e.to_string()))?;
        builder = builder.add_root_certificate(certificate);
    }
    Ok(builder)
}

/// A client configuration trusting [`trust_roots`]`(extra)`, for connections reqwest does not
/// make (a WebSocket over TLS).
pub fn client_config(extra: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(trust_roots(extra)?);
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Client(e.to_string()))?
        .with_root_certificates(store)
        .with_no_client_auth())
}

/// The platform's roots that rustls can use (a bundle may hold certificates it cannot parse;
/// they are left out, as every TLS client does). None at all is not an error: then only
/// `SSL_CERT_FILE` is trusted.
fn platform_roots() -> Vec<CertificateDer<'static>> {
    let found = PLATFORM_BUNDLES.iter().map(Path::new).find(|path| path.is_file());
    let roots = match found {
        Some(path) => match std::fs::read(path) {
            Ok(pem) => CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect(),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read the platform's trust roots");
                Vec::new()
            }
        },
        None => rustls_native_certs::load_native_certs().certs,
    };
    roots.into_iter().filter(|cert| RootCertStore::empty().add(cert.clone()).is_ok()).collect()
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_owned(), source })
}

/// Every certificate of a PEM file: at least one, and no malformed one.
fn certificates(
    pem: &[u8],
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |message: String| TlsError::Pem { what, path: path.to_owned(), message };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certs.is_empty() {
        return Err(error("no certificate (-----BEGIN CERTIFICATE-----) in it".to_owned()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
        (dir, cert_path, key_path)
    }

    #[test]
    fn a_certificate_and_its_key_make_a_server_config() {
        let (_dir, cert, key) = pair();
        let config = server_config(&cert, &key).unwrap();
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
    }

    #[test]
    fn unusable_files_are_named_in_the_error() {
        let (dir, cert, key) = pair();
        let missing = dir.path().join("missing.pem");
        let error = server_config(&missing, &key).unwrap_err().to_string();
        assert!(error.contains("missing.pem") && error.contains("TLS certificate"), "{error}");
        // The key where the certificate should be, and the other way round.
        let error = server_config(&key, &key).unwrap_err().to_string();
        assert!(error.contains("key.pem") && error.contains("no certificate"), "{error}");
        let error = server_config(&cert, &cert).unwrap_err().to_string();
        assert!(error.contains("cert.pem") && error.contains("no private key"), "{error}");
        // A key that is not the certificate's.
        let (_other_dir, _, other_key) = pair();
        let error = server_config(&cert, &other_key).unwrap_err().to_string();
        assert!(error.contains("cannot serve together"), "{error}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not pem at all").unwrap();
        let error = trust_roots(Some(&garbage)).unwrap_err().to_string();
        assert!(error.contains("garbage.pem") && error.contains("SSL_CERT_FILE"), "{error}");
    }

    #[test]
    fn the_extra_bundle_adds_to_the_platform_roots() {
        let (_dir, cert, _) = pair();
        let platform = trust_roots(None).unwrap();
        let with_extra = trust_roots(Some(&cert)).unwrap();
        assert_eq!(with_extra.len(), platform.len() + 1);
        client_config(Some(&cert)).unwrap();
        https_client(reqwest::Client::builder(), Some(&cert)).unwrap().build().unwrap();
    }
}

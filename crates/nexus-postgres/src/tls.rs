//! TLS to PostgreSQL with libpq's meanings of `sslmode` and `sslrootcert`, over rustls with
//! *ring* (the binary's one crypto provider, passed explicitly: nothing process-wide is installed).
//!
//! tokio-postgres knows `sslmode` `disable`, `prefer` and `require` only, and no `sslrootcert`, so
//! both are taken off the URL here ([`split_url`]) and applied by the connector ([`MakeTls`]):
//!
//! | `sslmode` | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (the default) | when the server offers TLS | not at all, or its chain with `sslrootcert` |
//! | `require` | always | not at all, or its chain with `sslrootcert` |
//! | `verify-ca` | always | its chain |
//! | `verify-full` | always | its chain and that it names the host of the URL |
//!
//! As in libpq, a root certificate given with `prefer` or `require` makes them check the chain
//! (`verify-ca`), and `sslrootcert=system` needs `verify-full`. The chain is checked against
//! `sslrootcert`'s PEM bundle when the URL names one, else against the roots the caller passes
//! (the server passes the platform's and `SSL_CERT_FILE`'s); libpq's `~/.postgresql/root.crt` is
//! not read.

use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use nexus_core::StoreError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::config::SslMode as WireMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// libpq's `sslmode` values (less `allow`, which tokio-postgres cannot do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, StoreError> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => {
                return Err(invalid(
                    "sslmode=allow is not supported: use prefer (TLS when the server offers it) or disable",
                ));
            }
            other => {
                return Err(invalid(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                )));
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// `sslrootcert`: a PEM bundle, or `system` (the roots the caller passes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RootCert {
    File(PathBuf),
    System,
}

/// The TLS part of a connection URL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TlsParams {
    /// `None`: not in the URL (tokio-postgres's own value stands: `prefer` unless a key=value
    /// connection string says otherwise).
    pub(crate) mode: Option<SslMode>,
    pub(crate) root_cert: Option<RootCert>,
}

/// Takes `sslmode` and `sslrootcert` off the query of a `postgres://` URL (the rest is left as
/// written, for tokio-postgres). A `key=value` connection string is returned unchanged.
pub(crate) fn split_url(url: &str) -> Result<(Cow<'_, str>, TlsParams), StoreError> {
    let mut params = TlsParams::default();
    let Some(scheme_end) = url.find("://") else { return Ok((Cow::Borrowed(url), params)) };
    // tokio-postgres reads the credentials up to the first `@`; the query starts after them.
    let after_scheme = scheme_end + 3;
    let authority = url[after_scheme..].find('@').map_or(after_scheme, |at| after_scheme + at + 1);
    let Some(query_start) = url[authority..].find('?').map(|q| authority + q) else {
        return Ok((Cow::Borrowed(url), params));
    };
    let mut kept = Vec::new();
    for pair in url[query_start + 1..].split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => params.mode = Some(SslMode::parse(&percent_decode(value)?)?),
            "sslrootcert" => {
                let value = percent_decode(value)?;
                params.root_cert = Some(match value.as_str() {
                    "system" => RootCert::System,
                    "" => return Err(invalid("sslrootcert is empty")),
                    path => RootCert::File(PathBuf::from(path)),
                });
            }
            _ => kept.push(pair),
        }
    }
    let mut rest = url[..query_start].to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok((Cow::Owned(rest), params))
}

/// The connector for `params`, and the mode tokio-postgres negotiates with (set on `config`).
/// `roots` are trusted when the URL names no `sslrootcert` file.
pub(crate) fn connector(
    params: &TlsParams,
    config: &mut tokio_postgres::Config,
    roots: &[CertificateDer<'static>],
) -> Result<MakeTls, StoreError> {
    let mode = params.mode.unwrap_or(match config.get_ssl_mode() {
        WireMode::Disable => SslMode::Disable,
        WireMode::Require => SslMode::Require,
        _ => SslMode::Prefer,
    });
    config.ssl_mode(match mode {
        SslMode::Disable => WireMode::Disable,
        SslMode::Prefer => WireMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireMode::Require,
    });
    if params.root_cert == Some(RootCert::System) && mode != SslMode::VerifyFull && mode != SslMode::Disable {
        return Err(invalid(format!(
            "sslmode={} may not be used with sslrootcert=system (use verify-full)",
            mode.name()
        )));
    }
    // libpq: a root certificate makes `prefer` and `require` check the chain too.
    let check = match mode {
        SslMode::VerifyFull => Check::Full,
        SslMode::VerifyCa => Check::Chain,
        SslMode::Prefer | SslMode::Require if params.root_cert.is_some() => Check::Chain,
        _ => Check::Nothing,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match check {
        Check::Nothing => None,
        Check::Chain | Check::Full => Some(Arc::new(trusted(params, roots, mode)?)),
    };
    let verifier = Verifier { roots, check, algorithms: provider.signature_verification_algorithms };
    let mut tls = client_config(provider)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // What PostgreSQL 17 checks on direct TLS negotiation; older servers ignore it.
    tls.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(MakeTls { config: Arc::new(tls), mode })
}

fn client_config(
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, StoreError> {
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Unavailable(Box::new(e)))
}

/// The roots a verifying mode checks the server's chain against.
fn trusted(
    params: &TlsParams,
    roots: &[CertificateDer<'static>],
    mode: SslMode,
) -> Result<RootCertStore, StoreError> {
    let mut store = RootCertStore::empty();
    match &params.root_cert {
        Some(RootCert::File(path)) => {
            let pem = std::fs::read(path)
                .map_err(|e| invalid(format!("cannot read sslrootcert {}: {e}", path.display())))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(format!("sslrootcert {} is not usable PEM: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(invalid(format!(
                    "sslrootcert {} holds no certificate (-----BEGIN CERTIFICATE-----)",
                    path.display()
                )));
            }
            for (n, cert) in certs.into_iter().enumerate() {
                store.add(cert).map_err(|e| {
                    invalid(format!(
                        "certificate {} of sslrootcert {} is not a usable root: {e}",
                        n + 1,
                        path.display()
                    ))
                })?;
            }
        }
        Some(RootCert::System) | None => {
            store.add_parsable_certificates(roots.iter().cloned());
        }
    }
    if store.is_empty() {
        return Err(invalid(format!(
            "sslmode={} checks the server's certificate, but no trusted root is known: name a PEM \
             bundle with sslrootcert",
            mode.name()
        )));
    }
    Ok(store)
}

fn invalid(message: impl Into<String>) -> StoreError {
    StoreError::InvalidRequest(format!("PostgreSQL URL: {}", message.into()))
}

/// `%XX` escapes of a URL query value.
fn percent_decode(value: &str) -> Result<String, StoreError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or_else(|| invalid(format!("bad %-escape in '{value}'")))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid(format!("'{value}' is not UTF-8 once decoded")))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// `require` and `prefer` without a root certificate: encrypted, but anyone may answer.
    Nothing,
    /// `verify-ca`: signed by a trusted root, whatever host it names.
    Chain,
    /// `verify-full`: signed by a trusted root and naming the host connected to.
    Full,
}

/// The certificate check of the mode. The handshake's signatures are always verified (the server
/// holds the key of the certificate it sent), whatever the mode checks of the certificate.
struct Verifier {
    roots: Option<Arc<RootCertStore>>,
    check: Check,
    algorithms: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("check", &self.check).finish_non_exhaustive()
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else { return Ok(ServerCertVerified::assertion()) };
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        if self.check == Check::Full {
            rustls::client::verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// tokio-postgres's TLS hook: one per connection URL, cloned for every connection (pool,
/// appender, listener, leases).
#[derive(Clone)]
pub(crate) struct MakeTls {
    config: Arc<rustls::ClientConfig>,
    mode: SslMode,
}

impl MakeTlsConnect<Socket> for MakeTls {
    type Stream = TlsStream;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, host: &str) -> Result<Connect, io::Error> {
        // Called for every host, Unix sockets too (with ""), before the server is asked for TLS:
        // a name that cannot be checked fails the handshake, not this.
        Ok(Connect { config: self.config.clone(), host: host.to_owned(), mode: self.mode })
    }
}

/// The handshake with one host.
pub(crate) struct Connect {
    config: Arc<rustls::ClientConfig>,
    host: String,
    mode: SslMode,
}

impl TlsConnect<Socket> for Connect {
    type Stream = TlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<TlsStream, io::Error>> + Send>>;

    fn connect(self, socket: Socket) -> Self::Future {
        Box::pin(async move {
            let name = ServerName::try_from(self.host.clone()).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("'{}' is not a host name for TLS: {e}", self.host),
                )
            })?;
            let stream = tokio_rustls::TlsConnector::from(self.config)
                .connect(name, socket)
                .await
                .map_err(|error| explain(error, &self.host, self.mode))?;
            Ok(TlsStream(stream))
        })
    }
}

/// A refused certificate, said in the URL's terms.
fn explain(error: io::Error, host: &str, mode: SslMode) -> io::Error {
    let Some(rustls::Error::InvalidCertificate(why)) =
        error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return error;
    };
    let hint = match why {
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
            "the server's certificate is not valid for the host name '{host}' (sslmode={} checks \
             that the certificate names the host of the URL)",
            mode.name()
        ),
        CertificateError::UnknownIssuer => format!(
            "the server's certificate is not signed by a trusted root (sslmode={}; name the CA's \
             PEM bundle with sslrootcert)",
            mode.name()
        ),
        _ => format!("the server's certificate is refused (sslmode={})", mode.name()),
    };
    io::Error::new(error.kind(), format!("{hint}: {error}"))
}

/// A TLS session with the server.
pub(crate) struct TlsStream(tokio_rustls::client::TlsStream<Socket>);

impl tokio_postgres::tls::TlsStream for TlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // `tls-server-end-point` needs the certificate's signature hash; without it, SCRAM
        // authenticates without channel binding (`channel_binding=prefer`, the default).
        ChannelBinding::none()
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, TlsParams) {
        let (rest, params) = split_url(url).unwrap();
        (rest.into_owned(), params)
    }

    #[test]
    fn libpq_parameters_are_taken_off_the_url() {
        let (rest, params) = split(concat!(
            "postgres://u:p@db.example:5432/app",
            "?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x"
        ));
        assert_eq!(rest, "postgres://u:p@db.example:5432/app?application_name=x");
        assert_eq!(params.mode, Some(SslMode::VerifyFull));
        assert_eq!(params.root_cert, Some(RootCert::File(PathBuf::from("/etc/ca.pem"))));
        let (rest, params) = split("postgresql://h/db?sslrootcert=system&sslmode=verify-full");
        assert_eq!(rest, "postgresql://h/db");
        assert_eq!(params.root_cert, Some(RootCert::System));
        // A `?` in the password is the password's.
        let (rest, params) = split("postgres://u:p?q@h/db");
        assert_eq!((rest.as_str(), params), ("postgres://u:p?q@h/db", TlsParams::default()));
        let (rest, _) = split("host=h sslmode=require");
        assert_eq!(rest, "host=h sslmode=require");
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        for (url, needle) in [
            ("postgres://h/db?sslmode=verify", "sslmode=verify is not one of"),
            ("postgres://h/db?sslmode=allow", "sslmode=allow is not supported"),
            ("postgres://h/db?sslrootcert=", "sslrootcert is empty"),
            ("postgres://h/db?sslrootcert=%zz", "bad %-escape"),
        ] {
            match split_url(url) {
                Err(StoreError::InvalidRequest(message)) => assert!(message.contains(needle), "{message}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn modes_map_to_what_tokio_postgres_negotiates() {
        let connect = |url: &str| {
            let (rest, params) = split_url(url).unwrap();
            let mut config: tokio_postgres::Config = rest.parse().unwrap();
            connector(&params, &mut config, &[]).map(|tls| (config.get_ssl_mode(), tls.mode))
        };
        assert_eq!(connect("postgres://h/db").unwrap(), (WireMode::Prefer, SslMode::Prefer));
        assert_eq!(
            connect("postgres://h/db?sslmode=disable").unwrap(),
            (WireMode::Disable, SslMode::Disable)
        );
        assert_eq!(
            connect("postgres://h/db?sslmode=require").unwrap(),
            (WireMode::Require, SslMode::Require)
        );
        // Verifying with no root at all is refused before connecting, with what to do.
        match connect("postgres://h/db?sslmode=verify-ca") {
            Err(StoreError::InvalidRequest(message)) => assert!(message.contains("sslrootcert"), "{message}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        match connect("postgres://h/db?sslmode=require&sslrootcert=system") {
            Err(StoreError::InvalidRequest(message)) => {
                assert!(message.contains("use verify-full"), "{message}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        match connect("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem") {
            Err(StoreError::InvalidRequest(message)) => {
                assert!(message.contains("cannot read sslrootcert /nonexistent/ca.pem"), "{message}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}

//! TLS between gates and nodes with no certificate authority: a node makes
//! its own certificate on first start ([`NodeCert`]), and clients pin its
//! SHA-256 fingerprint, which the enrollment token carries
//! ([`EnrollmentCode`]). Names are not checked (a venue's node has no name
//! a CA could vouch for); the fingerprint is.
//!
//! [`agent`] is the one HTTP client of gates (`scanner sync`) and peer
//! nodes: plain HTTP where no fingerprint is pinned (tests, `127.0.0.1`),
//! pinned TLS where one is.

use std::fmt;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use sha2::{Digest, Sha256};
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, TcpConnector,
    Transport, TransportAdapter,
};

/// A node's certificate and its private key (PKCS#8), kept in the node's
/// database (readable by its owner only).
#[derive(Clone)]
pub struct NodeCert {
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

impl fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeCert({})", self.fingerprint())
    }
}

impl NodeCert {
    /// A new self-signed certificate (ECDSA P-256).
    pub fn generate() -> Result<NodeCert, String> {
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let params = rcgen::CertificateParams::new(vec!["gate-sync".to_owned()])
            .map_err(|e| e.to_string())?;
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        Ok(NodeCert {
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        })
    }

    /// The SHA-256 of the certificate, in hex: what clients pin.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.cert_der)
    }

    /// The node's TLS configuration.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(self.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            )
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(config))
    }
}

fn fingerprint_of(der: &[u8]) -> String {
    shared::hex::encode(&Sha256::digest(der))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What an enrollment token carries: the one-time token, and the
/// fingerprint of the node's certificate when it serves TLS, written
/// `TOKEN.FINGERPRINT` (a token never holds a `.`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrollmentCode {
    pub token: String,
    pub fingerprint: Option<String>,
}

impl EnrollmentCode {
    pub fn parse(text: &str) -> Result<EnrollmentCode, String> {
        let text = text.trim();
        match text.split_once('.') {
            None => Ok(EnrollmentCode {
                token: text.to_owned(),
                fingerprint: None,
            }),
            Some((token, fp)) => Ok(EnrollmentCode {
                token: token.to_owned(),
                fingerprint: Some(check_fingerprint(fp)?),
            }),
        }
    }
}

impl fmt::Display for EnrollmentCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.fingerprint {
            Some(fp) => write!(f, "{}.{fp}", self.token),
            None => f.write_str(&self.token),
        }
    }
}

/// A fingerprint as given (64 hex digits, either case), in lower case.
pub fn check_fingerprint(text: &str) -> Result<String, String> {
    shared::hex::decode::<32>(text.trim())
        .map(|b| shared::hex::encode(&b))
        .ok_or_else(|| {
            format!(
                "{text:?} is not a certificate fingerprint (64 hex digits; `gate-sync tls fingerprint` prints the node's)"
            )
        })
}

/// Splits `URL#FINGERPRINT` (how a peer is named) into the two.
pub fn split_pinned_url(text: &str) -> Result<(String, Option<String>), String> {
    match text.split_once('#') {
        None => Ok((text.trim_end_matches('/').to_owned(), None)),
        Some((url, fp)) => Ok((
            url.trim_end_matches('/').to_owned(),
            Some(check_fingerprint(fp)?),
        )),
    }
}

/// Whether `url` may be used without TLS: plain HTTP only to this machine.
pub fn plain_allowed(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The HTTP client of gates and peer nodes: answers are read with errors
/// as values, every request times out after `timeout`, and `https://`
/// connects only to the node whose certificate has fingerprint `pin`.
pub fn agent(pin: Option<&str>, timeout: Duration) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build();
    let tls = PinnedTls {
        config: pin.map(|fp| {
            let verifier = Pinned {
                fingerprint: fp.to_owned(),
                provider: provider(),
            };
            let config = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.dangerous()
                        .with_custom_certificate_verifier(Arc::new(verifier))
                        .with_no_client_auth()
                });
            config.map(Arc::new).map_err(|e| e.to_string())
        }),
    };
    ureq::Agent::with_parts(
        config,
        TcpConnector::default().chain(tls),
        DefaultResolver::default(),
    )
}

/// Accepts exactly the certificate with the pinned fingerprint.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint_of(end_entity);
        if got == self.fingerprint {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::General(format!(
            "the node's certificate has fingerprint {got}, not the pinned {}: \
             this is not the node this device enrolled with",
            self.fingerprint
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// ureq's TLS step, with the pinned configuration; `https://` without a
/// pin is refused, so a gate never talks TLS to a node it did not pin.
struct PinnedTls {
    config: Option<Result<Arc<ClientConfig>, String>>,
}

impl fmt::Debug for PinnedTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedTls").finish()
    }
}

impl<In: Transport> Connector<In> for PinnedTls {
    type Out = Either<In, PinnedTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let config = match &self.config {
            Some(Ok(config)) => config.clone(),
            Some(Err(e)) => return Err(ureq::Error::Tls(leak(e.clone()))),
            None => {
                return Err(ureq::Error::Tls(
                    "https:// needs the node's certificate fingerprint: enroll with the token the node printed",
                ));
            }
        };
        // The verifier checks the fingerprint, not the name.
        let name = ServerName::try_from("gate-sync").map_err(|_| ureq::Error::Tls("name"))?;
        let mut conn = ClientConnection::new(config, name.to_owned())
            .map_err(|e| ureq::Error::Io(std::io::Error::other(e)))?;
        let mut sock = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        sock.set_timeout(details.timeout);
        conn.complete_io(&mut sock)?;
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(Either::B(PinnedTransport {
            buffers,
            stream: StreamOwned { conn, sock },
        })))
    }
}

/// ureq's TLS errors are static strings; a configuration error is rare
/// (once per agent), so its text is kept for the life of the process.
fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

/// A TLS connection to a pinned node.
pub struct PinnedTransport {
    buffers: LazyBuffers,
    stream: StreamOwned<ClientConnection, TransportAdapter>,
}

impl fmt::Debug for PinnedTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedTransport").finish()
    }
}

impl Transport for PinnedTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = self.stream.read(input)?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

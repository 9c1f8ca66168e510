//! TLS for every outbound call: the system's trust roots, read once per process at the first
//! handshake that needs them instead of at start-up.
//!
//! Reading the roots means parsing every certificate under `/etc/ssl/certs` (a few milliseconds,
//! several hundred files): most processes never make an outbound TLS call before their first
//! sign-in or key fetch, and one without a CA bundle can still start and serve everything that
//! does not leave the machine. Verification is the platform verifier's (WebPKI over the roots
//! `SSL_CERT_FILE`, `SSL_CERT_DIR` or the system's default locations provide), unchanged.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// The client TLS configuration of outbound HTTP clients: TLS 1.2 and 1.3 with aws-lc-rs,
/// HTTP/1.1, and the process's one [`LazyRoots`] verifier.
pub fn client_config() -> rustls::ClientConfig {
    static VERIFIER: OnceLock<Arc<LazyRoots>> = OnceLock::new();
    let provider = provider();
    let verifier = VERIFIER.get_or_init(|| Arc::new(LazyRoots::new(provider.clone()))).clone();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())).clone()
}

/// The platform verifier, built (the trust roots read) at the first certificate to verify. A
/// machine without trust roots fails that handshake, and every later one, with the platform
/// verifier's error.
#[derive(Debug)]
struct LazyRoots {
    provider: Arc<CryptoProvider>,
    verifier: OnceLock<Result<rustls_platform_verifier::Verifier, rustls::Error>>,
}

impl LazyRoots {
    fn new(provider: Arc<CryptoProvider>) -> Self {
        Self { provider, verifier: OnceLock::new() }
    }

    fn verifier(&self) -> Result<&rustls_platform_verifier::Verifier, rustls::Error> {
        self.verifier
            .get_or_init(|| {
                let verifier = rustls_platform_verifier::Verifier::new(self.provider.clone());
                if let Err(error) = &verifier {
                    tracing::error!(%error, "no trust roots for outbound TLS: every HTTPS call will fail");
                }
                verifier
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl ServerCertVerifier for LazyRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier()?.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    // Handshake signatures need no roots: the provider's algorithms check them, as the platform
    // verifier's WebPKI verifier does.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

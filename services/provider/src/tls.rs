//! The provider's TLS configurations (rustls on ring), all with the
//! certificate `init` made:
//!
//! - [`https`]: ALPN `h2` and `http/1.1`, so gRPC clients and plain HTTPS
//!   clients (WKD lookups, `curl --http1.1`) share the port;
//! - [`starttls`]: the MX's STARTTLS;
//! - [`relay`]: implicit TLS that **requires** a client certificate issued
//!   by the provider's CA and valid now (rustls' `WebPkiClientVerifier`);
//!   which account it is, the relay looks up by the certificate's SHA-256.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(String);

fn tls_error(error: impl std::fmt::Display) -> TlsError {
    TlsError(error.to_string())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's certificate chain and key, from PEM.
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl ServerIdentity {
    pub fn from_pem(certificate_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(certificate_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(tls_error)?;
        if chain.is_empty() {
            return Err(TlsError("no certificate in the TLS certificate file".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(tls_error)?;
        Ok(Self { chain, key: Arc::new(key) })
    }

    fn config(
        &self,
        client_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ) -> Result<ServerConfig, TlsError> {
        let builder =
            ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().map_err(tls_error)?;
        let builder = match client_verifier {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        builder.with_single_cert(self.chain.clone(), self.key.clone_key()).map_err(tls_error)
    }
}

/// The HTTPS port: gRPC (HTTP/2) and HTTP/1.1.
pub fn https(identity: &ServerIdentity) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = identity.config(None)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The MX's STARTTLS.
pub fn starttls(identity: &ServerIdentity) -> Result<Arc<ServerConfig>, TlsError> {
    Ok(Arc::new(identity.config(None)?))
}

/// The relay: a client certificate from `ca_der` is required.
pub fn relay(identity: &ServerIdentity, ca_der: &[u8]) -> Result<Arc<ServerConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec())).map_err(tls_error)?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build().map_err(tls_error)?;
    Ok(Arc::new(identity.config(Some(verifier))?))
}

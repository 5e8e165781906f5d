//! The account's local TLS certificate, for STARTTLS on the IMAP and SMTP
//! gateways: self-signed for `localhost` and `127.0.0.1`, made once (at the
//! first start after the account was created) and kept in the account's data
//! directory, so a mail client can pin it.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the local certificate: {0}")]
    Certificate(String),
}

/// `<dir>/certificate.pem` and `<dir>/key.pem` (0600), made if missing.
pub fn local_certificate(dir: &Path) -> Result<(String, String), TlsError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Io { path, source }
    };
    let certificate_path = dir.join("certificate.pem");
    let key_path = dir.join("key.pem");
    if let (Ok(certificate), Ok(key)) = (std::fs::read_to_string(&certificate_path), std::fs::read_to_string(&key_path))
    {
        return Ok((certificate, key));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|error| TlsError::Certificate(error.to_string()))?;
    let (certificate, key) = (certified.cert.pem(), certified.signing_key.serialize_pem());
    // The key first, private from its creation; the certificate marks completion.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key_path)
        .map_err(io(&key_path))?;
    file.write_all(key.as_bytes()).and_then(|()| file.sync_all()).map_err(io(&key_path))?;
    std::fs::write(&certificate_path, &certificate).map_err(io(&certificate_path))?;
    Ok((certificate, key))
}

/// A rustls server configuration with the account's local certificate.
pub fn server_config(dir: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (certificate, key) = local_certificate(dir)?;
    let certificates: Vec<rustls::pki_types::CertificateDer<'static>> =
        rustls::pki_types::pem::PemObject::pem_slice_iter(certificate.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|error| TlsError::Certificate(error.to_string()))?;
    use rustls::pki_types::pem::PemObject as _;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())
        .map_err(|error| TlsError::Certificate(error.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Certificate(error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .map_err(|error| TlsError::Certificate(error.to_string()))?;
    Ok(Arc::new(config))
}

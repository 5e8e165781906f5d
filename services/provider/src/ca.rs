//! The provider's certificate authority (rcgen): made once at `init`, it
//! signs the provider's TLS certificate and the short-lived client
//! certificates users present to the relay. Clients fetch its certificate
//! once (`GET /ca.crt`, or `ProviderInfo`) and pin it by its SHA-256.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// How long the CA and the provider's TLS certificate are valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long an issued client certificate is valid.
pub const CLIENT_CERTIFICATE_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Clocks differ: certificates start a little in the past.
const BACKDATE: Duration = Duration::from_secs(300);
/// The largest CSR accepted (PEM): a 16384-bit RSA key fits.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("the CA: {0}")]
    Ca(String),
    #[error("a certificate signing request has at most {MAX_CSR_BYTES} bytes")]
    CsrTooLarge,
    #[error("not a valid PKCS#10 certificate signing request (PEM): {0}")]
    InvalidCsr(String),
    #[error("{0:?} cannot be named in a certificate")]
    Address(String),
}

/// SHA-256 of `der`: how certificates are pinned and recognized.
pub fn sha256(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

fn random_serial() -> SerialNumber {
    use rand::RngCore as _;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    // Positive and of full length.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0)
}

/// A client certificate just issued.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    pub pem: String,
    /// SHA-256 of its DER: the relay identifies the account by it.
    pub sha256: [u8; 32],
    pub not_after_unix: u64,
}

/// The CA: its certificate and its signing key. `Debug` shows the
/// fingerprint only.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    certificate_pem: String,
    certificate_der: Vec<u8>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("fingerprint", &self.fingerprint()).finish_non_exhaustive()
    }
}

fn ca_error(error: impl std::fmt::Display) -> CaError {
    CaError::Ca(error.to_string())
}

impl Ca {
    /// A new CA for `domain`; gives its key (PEM) to keep.
    pub fn generate(domain: &str) -> Result<(Self, Zeroizing<String>), CaError> {
        let key = KeyPair::generate().map_err(ca_error)?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, format!("{domain} provider CA"));
        params.distinguished_name.push(DnType::OrganizationName, format!("bitmask provider {domain}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + CA_VALIDITY).into();
        let certificate = params.self_signed(&key).map_err(ca_error)?;
        let ca = Self {
            certificate_pem: certificate.pem(),
            certificate_der: certificate.der().to_vec(),
            issuer: Issuer::new(params, key),
        };
        Ok((ca, key_pem))
    }

    /// The CA from its certificate and key (PEM).
    pub fn load(certificate_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(ca_error)?;
        use rustls::pki_types::pem::PemObject as _;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(certificate_pem.as_bytes()).map_err(ca_error)?;
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(ca_error)?;
        Ok(Self { issuer, certificate_pem: certificate_pem.to_owned(), certificate_der: der.to_vec() })
    }

    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate_der
    }

    /// SHA-256 of the CA certificate's DER, lowercase hex.
    pub fn fingerprint(&self) -> String {
        data_encoding::HEXLOWER.encode(&sha256(&self.certificate_der))
    }

    /// A TLS server certificate for `names` (DNS names or IP addresses), and
    /// its key (PEM).
    pub fn server_certificate(&self, names: &[String]) -> Result<(String, Zeroizing<String>), CaError> {
        let key = KeyPair::generate().map_err(ca_error)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(ca_error)?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + CA_VALIDITY).into();
        let certificate = params.signed_by(&key, &self.issuer).map_err(ca_error)?;
        Ok((certificate.pem(), Zeroizing::new(key.serialize_pem())))
    }

    /// A client certificate for `address` on the public key of `csr_pem`,
    /// valid [`CLIENT_CERTIFICATE_VALIDITY`] from `now`. Whatever the
    /// request asks for (names, usages, CA rights) is ignored: the
    /// certificate names `address` only (common name and rfc822Name) and is
    /// good for TLS client authentication only. The request's signature is
    /// checked (it proves the key is the requester's).
    pub fn issue_client_certificate(
        &self,
        csr_pem: &str,
        address: &str,
        now: SystemTime,
    ) -> Result<ClientCertificate, CaError> {
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(CaError::CsrTooLarge);
        }
        let request = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|error| CaError::InvalidCsr(error.to_string()))?;
        let email = rcgen::string::Ia5String::try_from(address).map_err(|_| CaError::Address(address.to_owned()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, address);
        params.subject_alt_names = vec![SanType::Rfc822Name(email)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let not_after = now + CLIENT_CERTIFICATE_VALIDITY;
        params.not_before = (now - BACKDATE).into();
        params.not_after = not_after.into();
        let signed = CertificateSigningRequestParams { params, public_key: request.public_key };
        let certificate = signed.signed_by(&self.issuer).map_err(ca_error)?;
        Ok(ClientCertificate {
            pem: certificate.pem(),
            sha256: sha256(certificate.der()),
            not_after_unix: unix_seconds(not_after),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn csr(names: Vec<String>) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn a_loaded_ca_is_the_generated_one() {
        let (ca, key) = Ca::generate("example.org").unwrap();
        let loaded = Ca::load(ca.certificate_pem(), &key).unwrap();
        assert_eq!(loaded.fingerprint(), ca.fingerprint());
        assert_eq!(ca.fingerprint().len(), 64);
        assert!(format!("{ca:?}").contains(&ca.fingerprint()));
        assert!(!format!("{ca:?}").contains("PRIVATE"));
        assert!(Ca::load(ca.certificate_pem(), "not a key").is_err());
    }

    #[test]
    fn client_certificates_name_the_address_whatever_the_request_asked() {
        let (ca, _) = Ca::generate("example.org").unwrap();
        let now = SystemTime::now();
        let issued =
            ca.issue_client_certificate(&csr(vec!["evil.example.net".into()]), "bob@example.org", now).unwrap();
        assert_eq!(issued.not_after_unix, unix_seconds(now + CLIENT_CERTIFICATE_VALIDITY));
        use rustls::pki_types::pem::PemObject as _;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(issued.pem.as_bytes()).unwrap();
        assert_eq!(sha256(&der), issued.sha256);
        // The DER holds the address and not the requested name.
        let contains = |needle: &[u8]| der.windows(needle.len()).any(|window| window == needle);
        assert!(contains(b"bob@example.org"));
        assert!(!contains(b"evil.example.net"));
    }

    #[test]
    fn bad_requests_are_refused() {
        let (ca, _) = Ca::generate("example.org").unwrap();
        let now = SystemTime::now();
        assert!(matches!(ca.issue_client_certificate("garbage", "a@example.org", now), Err(CaError::InvalidCsr(_))));
        let huge = "A".repeat(MAX_CSR_BYTES + 1);
        assert!(matches!(ca.issue_client_certificate(&huge, "a@example.org", now), Err(CaError::CsrTooLarge)));
        // A certificate is not a request.
        let (certificate, _) = ca.server_certificate(&["localhost".into()]).unwrap();
        assert!(matches!(ca.issue_client_certificate(&certificate, "a@example.org", now), Err(CaError::InvalidCsr(_))));
    }
}

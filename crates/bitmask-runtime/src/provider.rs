//! An account's side of the provider's `Accounts` API: sign-up and SRP-6a
//! login (the passphrase never leaves the machine; see `bitmask-auth`), and
//! the CA pin. Used by bitmaskd when an account is set up or started, and by
//! the store when a session expires.

use std::time::Duration;

use bitmask_auth::{ClientLogin, LoginSecret};
use bitmask_proto::provider::v1 as pb;
use bitmask_proto::provider::v1::accounts_client::AccountsClient;
use sha2::{Digest as _, Sha256};
use tonic::Status;

use crate::client::{ProviderChannel, connect_provider};

/// A session at the provider. Its `Debug` hides the token.
#[derive(Clone)]
pub struct Session {
    pub token: String,
    pub expires_in: Duration,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("expires_in", &self.expires_in).finish_non_exhaustive()
    }
}

/// The `Accounts` API of the provider at `url`, trusting only `ca_pem`.
pub async fn accounts(url: &str, ca_pem: &str, session_token: &str) -> Result<AccountsClient<ProviderChannel>, Status> {
    Ok(AccountsClient::new(connect_provider(url, ca_pem, session_token).await?))
}

/// Creates the account at the provider from an SRP verifier of `secret`,
/// with the provider's invite code (empty: none). ALREADY_EXISTS: the
/// account exists; PERMISSION_DENIED: the provider's sign-up policy refused
/// (no, or a bad, invite code; sign-up closed).
pub async fn sign_up(
    url: &str,
    ca_pem: &str,
    address: &str,
    secret: &LoginSecret,
    invite_code: &str,
) -> Result<(), Status> {
    let (srp_salt, srp_verifier) = bitmask_auth::verifier(address, secret);
    let request =
        pb::SignUpRequest { address: address.to_owned(), srp_salt, srp_verifier, invite_code: invite_code.to_owned() };
    accounts(url, ca_pem, "").await?.sign_up(request).await?;
    Ok(())
}

/// Replaces the account's SRP verifier at the provider with one of
/// `secret` (after a passphrase change), in the session `session_token`.
pub async fn change_login(
    url: &str,
    ca_pem: &str,
    address: &str,
    session_token: &str,
    secret: &LoginSecret,
) -> Result<(), Status> {
    let (srp_salt, srp_verifier) = bitmask_auth::verifier(address, secret);
    let request = pb::ChangeLoginRequest { srp_salt, srp_verifier };
    accounts(url, ca_pem, session_token).await?.change_login(request).await?;
    Ok(())
}

/// SRP-6a login; the provider must prove it knows the verifier before its
/// token is trusted. PERMISSION_DENIED: wrong passphrase, or no such account
/// (the provider does not say which); RESOURCE_EXHAUSTED: too many attempts
/// from this network, try again later.
pub async fn login(url: &str, ca_pem: &str, address: &str, secret: &LoginSecret) -> Result<Session, Status> {
    let mut client = accounts(url, ca_pem, "").await?;
    let login = ClientLogin::start();
    let start = pb::LoginStartRequest { address: address.to_owned(), srp_a: login.a_pub().to_vec() };
    let challenge = client.login_start(start).await?.into_inner();
    let proof = login
        .finish(address, secret, &challenge.srp_salt, &challenge.srp_b)
        .map_err(|error| Status::permission_denied(error.to_string()))?;
    let finish = pb::LoginFinishRequest { login_id: challenge.login_id, srp_m1: proof.m1.clone() };
    let reply = client.login_finish(finish).await?.into_inner();
    proof.verify_server(&reply.srp_m2).map_err(|error| Status::permission_denied(error.to_string()))?;
    Ok(Session { token: reply.session_token, expires_in: Duration::from_secs(reply.expires_in) })
}

/// SHA-256 of a PEM certificate's DER, lowercase hex: how a provider's CA is
/// shown to the user and compared.
pub fn ca_fingerprint(pem: &str) -> Result<String, Status> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| Status::invalid_argument("the provider's CA is not a PEM certificate"))?;
    Ok(Sha256::digest(der.as_ref()).iter().map(|byte| format!("{byte:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_is_the_sha256_of_the_der() {
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = rcgen::CertificateParams::new(vec!["localhost".into()])
            .and_then(|params| params.self_signed(&key))
            .unwrap();
        let expected: String = Sha256::digest(certificate.der()).iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(ca_fingerprint(&certificate.pem()).ok(), Some(expected));
        assert!(ca_fingerprint("not a certificate").is_err());
    }
}

//! The directory's rules, without gRPC: what an account may publish, and
//! what WKD serves.

use bitmask_keys::openpgp;

use crate::storage::{KeyStorage, NotAnAddress, PublishedKey, StorageError, normalize_address};

/// The largest key accepted for publication (armored).
pub const MAX_KEY_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("a published key has at most {MAX_KEY_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    NotAKey(String),
    #[error("publish exactly one certificate, not {0}")]
    CertificateCount(usize),
    #[error("the key carries secret key material: publish only the public key")]
    SecretKey,
    #[error("the key {fingerprint} cannot be published: {reason}")]
    Unusable { fingerprint: String, reason: String },
    #[error("the key {fingerprint} has no user id for {user}: an account publishes only its own key")]
    NotTheUsersAddress { fingerprint: String, user: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<NotAnAddress> for PublishError {
    fn from(error: NotAnAddress) -> Self {
        Self::Storage(error.into())
    }
}

/// Publishes `armored` (one public certificate, usable now, with a user id
/// for `user`) as the key of `user`, replacing the one there. Only `user`'s
/// address is published: the certificate's other user ids and its user
/// attributes are left out. The caller vouches that `user` is the account
/// asking (the gRPC edge checks its session).
pub fn publish(storage: &(impl KeyStorage + ?Sized), user: &str, armored: &[u8]) -> Result<PublishedKey, PublishError> {
    if armored.len() > MAX_KEY_BYTES {
        return Err(PublishError::TooLarge);
    }
    let mut certificates = openpgp::parse_certs(armored).map_err(|error| PublishError::NotAKey(error.to_string()))?;
    if certificates.len() != 1 {
        return Err(PublishError::CertificateCount(certificates.len()));
    }
    let certificate = certificates.remove(0);
    if openpgp::has_secret(&certificate) {
        return Err(PublishError::SecretKey);
    }
    let fingerprint = openpgp::fingerprint(&certificate);
    openpgp::usable(&certificate)
        .map_err(|error| PublishError::Unusable { fingerprint: fingerprint.clone(), reason: error.to_string() })?;
    let address = match normalize_address(user) {
        Ok(address) if openpgp::addresses(&certificate).contains(&address) => address,
        _ => return Err(PublishError::NotTheUsersAddress { fingerprint, user: user.to_owned() }),
    };
    let certificate = certificate
        .retain_userids(|userid| userid.userid().email_normalized().ok().flatten().as_deref() == Some(&address))
        .retain_user_attributes(|_| false);
    let armored = openpgp::export_public(&certificate, true)
        .map_err(|error| PublishError::NotAKey(error.to_string()))
        .and_then(|bytes| String::from_utf8(bytes).map_err(|_| PublishError::NotAKey("armor is not text".into())))?;
    let key = PublishedKey { address, fingerprint, armored };
    storage.put(&key)?;
    Ok(key)
}

/// What the provider's WKD HTTP layer serves at `hu/<hash>` of `domain`:
/// the binary (unarmored) public key, if one is published there.
pub fn wkd_key(
    storage: &(impl KeyStorage + ?Sized),
    domain: &str,
    hash: &str,
) -> Result<Option<Vec<u8>>, StorageError> {
    let Some(key) = storage.by_wkd_hash(domain, hash)? else {
        return Ok(None);
    };
    let certificates = openpgp::parse_certs(key.armored.as_bytes()).map_err(|_| StorageError::Damaged)?;
    let [certificate] = certificates.as_slice() else {
        return Err(StorageError::Damaged);
    };
    openpgp::export_public(certificate, false).map(Some).map_err(|_| StorageError::Damaged)
}

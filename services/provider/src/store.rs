//! The provider's own records, in trees of one sled database (shared with
//! the key directory's trees): accounts, issued client certificates and
//! the delivery log that deduplicates retried mail.
//!
//! - `provider/accounts`: lowercased address → [`Account`] (JSON): the SRP
//!   salt and verifier, never a passphrase;
//! - `provider/certificates`: SHA-256 of an issued certificate's DER →
//!   [`IssuedCertificate`] (JSON);
//! - `provider/delivered`: a keyed hash of (sender, recipient, Message-ID) → when the
//!   entry may be forgotten (seconds since the Unix epoch, big-endian), so
//!   neither addresses nor message ids are kept in the clear.
//!
//! Every write is flushed before it returns. Calls block (sled, fsync): run
//! them on the blocking pool.

use serde::{Deserialize, Serialize};

const ACCOUNTS: &[u8] = b"provider/accounts";
const CERTIFICATES: &[u8] = b"provider/certificates";
const DELIVERED: &[u8] = b"provider/delivered";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("a stored record is damaged")]
    Damaged,
}

/// An account: what SRP needs to check a login.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub salt: Vec<u8>,
    pub verifier: Vec<u8>,
    pub created_unix: u64,
}

impl std::fmt::Debug for Account {
    // The verifier is as good as a password hash: not shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account").field("created_unix", &self.created_unix).finish_non_exhaustive()
    }
}

/// A client certificate the CA issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCertificate {
    pub address: String,
    pub not_after_unix: u64,
}

#[derive(Debug, Clone)]
pub struct ProviderStore {
    db: sled::Db,
    accounts: sled::Tree,
    certificates: sled::Tree,
    delivered: sled::Tree,
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Damaged)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|_| StoreError::Damaged)
}

impl ProviderStore {
    /// The provider's trees in `db`.
    pub fn new(db: sled::Db) -> Result<Self, StoreError> {
        Ok(Self {
            accounts: db.open_tree(ACCOUNTS)?,
            certificates: db.open_tree(CERTIFICATES)?,
            delivered: db.open_tree(DELIVERED)?,
            db,
        })
    }

    /// Creates the account `address` (lowercased by the caller); false if it
    /// exists already (and it is left alone).
    pub fn create_account(&self, address: &str, account: &Account) -> Result<bool, StoreError> {
        let created = self.accounts.compare_and_swap(address, None::<&[u8]>, Some(encode(account)?))?.is_ok();
        if created {
            self.db.flush()?;
        }
        Ok(created)
    }

    /// Replaces an existing account's record (a new SRP verifier); false if
    /// there is no such account.
    pub fn replace_account(&self, address: &str, account: &Account) -> Result<bool, StoreError> {
        let Some(old) = self.accounts.get(address)? else { return Ok(false) };
        let replaced = self.accounts.compare_and_swap(address, Some(old), Some(encode(account)?))?.is_ok();
        if replaced {
            self.db.flush()?;
        }
        Ok(replaced)
    }

    pub fn account(&self, address: &str) -> Result<Option<Account>, StoreError> {
        self.accounts.get(address)?.map(|bytes| decode(&bytes)).transpose()
    }

    pub fn record_certificate(&self, sha256: &[u8; 32], certificate: &IssuedCertificate) -> Result<(), StoreError> {
        self.certificates.insert(sha256, encode(certificate)?)?;
        self.db.flush()?;
        Ok(())
    }

    pub fn certificate(&self, sha256: &[u8; 32]) -> Result<Option<IssuedCertificate>, StoreError> {
        self.certificates.get(sha256)?.map(|bytes| decode(&bytes)).transpose()
    }

    /// Whether `key` was delivered and is remembered at `now`.
    pub fn delivered(&self, key: &[u8; 32], now: u64) -> Result<bool, StoreError> {
        match self.delivered.get(key)? {
            Some(bytes) => {
                let until = <[u8; 8]>::try_from(bytes.as_ref()).map_err(|_| StoreError::Damaged)?;
                Ok(u64::from_be_bytes(until) > now)
            }
            None => Ok(false),
        }
    }

    /// Remembers `key` as delivered until `until`.
    pub fn mark_delivered(&self, key: &[u8; 32], until: u64) -> Result<(), StoreError> {
        self.delivered.insert(key, &until.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// Forgets deliveries remembered until `now` or before, and issued
    /// certificates expired by then; how many entries went.
    pub fn forget_expired(&self, now: u64) -> Result<usize, StoreError> {
        let mut forgotten = 0;
        for entry in self.delivered.iter() {
            let (key, value) = entry?;
            let expired =
                <[u8; 8]>::try_from(value.as_ref()).map(u64::from_be_bytes).map_or(true, |until| until <= now);
            if expired {
                self.delivered.remove(key)?;
                forgotten += 1;
            }
        }
        for entry in self.certificates.iter() {
            let (key, value) = entry?;
            let expired = decode::<IssuedCertificate>(&value).map_or(true, |issued| issued.not_after_unix <= now);
            if expired {
                self.certificates.remove(key)?;
                forgotten += 1;
            }
        }
        if forgotten > 0 {
            self.db.flush()?;
        }
        Ok(forgotten)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn store() -> (tempfile::TempDir, ProviderStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        (dir, ProviderStore::new(db).unwrap())
    }

    #[test]
    fn an_account_is_created_once() {
        let (_dir, store) = store();
        let account = Account { salt: vec![1; 32], verifier: vec![2; 256], created_unix: 5 };
        assert!(store.create_account("bob@example.org", &account).unwrap());
        let other = Account { salt: vec![3; 32], ..account.clone() };
        assert!(!store.create_account("bob@example.org", &other).unwrap());
        assert_eq!(store.account("bob@example.org").unwrap(), Some(account.clone()));
        assert_eq!(store.account("carol@example.org").unwrap(), None);
        assert!(!format!("{account:?}").contains("verifier"));
    }

    #[test]
    fn deliveries_and_certificates_expire() {
        let (_dir, store) = store();
        let key = [7u8; 32];
        assert!(!store.delivered(&key, 100).unwrap());
        store.mark_delivered(&key, 200).unwrap();
        assert!(store.delivered(&key, 100).unwrap());
        assert!(!store.delivered(&key, 200).unwrap());
        let issued = IssuedCertificate { address: "bob@example.org".into(), not_after_unix: 300 };
        store.record_certificate(&[1; 32], &issued).unwrap();
        assert_eq!(store.certificate(&[1; 32]).unwrap(), Some(issued));
        assert_eq!(store.forget_expired(250).unwrap(), 1);
        assert!(store.certificate(&[1; 32]).unwrap().is_some());
        assert_eq!(store.forget_expired(300).unwrap(), 1);
        assert_eq!(store.certificate(&[1; 32]).unwrap(), None);
    }
}

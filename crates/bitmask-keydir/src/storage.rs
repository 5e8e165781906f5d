//! What the key directory keeps: per (lowercased) address, the published
//! public key (armored) and its fingerprint; and an index from the Web Key
//! Directory lookup (domain, z-base-32 hash of the local part) to the
//! address.
//!
//! [`KeyStorage`] is the seam for other backends; [`SledKeyStorage`] is the
//! embedded default.

use serde::{Deserialize, Serialize};

/// The longest address accepted (RFC 5321's path limit, less the brackets).
const MAX_ADDRESS_BYTES: usize = 254;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record is damaged")]
    Damaged,
    #[error(transparent)]
    NotAnAddress(#[from] NotAnAddress),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an e-mail address")]
pub struct NotAnAddress(pub String);

/// `address` in the form the directory keys it by: `local@domain`, lowercased.
pub fn normalize_address(address: &str) -> Result<String, NotAnAddress> {
    let refuse = || NotAnAddress(address.to_owned());
    let (local, domain) = address.split_once('@').ok_or_else(refuse)?;
    let well_formed = !local.is_empty()
        && !domain.is_empty()
        && address.len() <= MAX_ADDRESS_BYTES
        && !domain.contains('@')
        && !address.contains('/')
        && !address.chars().any(|character| character.is_whitespace() || character.is_control());
    if !well_formed {
        return Err(refuse());
    }
    Ok(address.to_lowercase())
}

/// Where WKD looks `address` up: its domain and the z-base-32 SHA-1 of its
/// lowercased local part (the `hu/<hash>` of the WKD URLs).
pub fn wkd_location(address: &str) -> Result<(String, String), NotAnAddress> {
    let address = normalize_address(address)?;
    let refuse = || NotAnAddress(address.clone());
    let urls = bitmask_keys::wkd::urls(&address).map_err(|_| refuse())?;
    // https://<domain>/.well-known/openpgpkey/hu/<hash>?l=<local>
    let (_, after) = urls.direct.split_once("/hu/").ok_or_else(refuse)?;
    let (hash, _) = after.split_once('?').ok_or_else(refuse)?;
    let (_, domain) = address.split_once('@').ok_or_else(refuse)?;
    Ok((domain.to_owned(), hash.to_owned()))
}

/// A published key. Its `Debug` names the address and fingerprint only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedKey {
    /// Lowercased.
    pub address: String,
    /// Uppercase hex, as `bitmask_keys::openpgp::fingerprint` gives it.
    pub fingerprint: String,
    /// The ASCII-armored public certificate.
    pub armored: String,
}

impl std::fmt::Debug for PublishedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishedKey")
            .field("address", &self.address)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The key directory's storage. Every write is durable when it returns.
pub trait KeyStorage: Send + Sync + 'static {
    /// The key published for `address` (any case).
    fn get(&self, address: &str) -> Result<Option<PublishedKey>, StorageError>;
    /// Publishes `key` for `key.address`, replacing the key there.
    fn put(&self, key: &PublishedKey) -> Result<(), StorageError>;
    /// The key WKD finds at `domain` and `hash` (see [`wkd_location`]).
    fn by_wkd_hash(&self, domain: &str, hash: &str) -> Result<Option<PublishedKey>, StorageError>;
}

/// The embedded default: two trees of a sled database.
#[derive(Debug, Clone)]
pub struct SledKeyStorage {
    db: sled::Db,
    /// Address → [`PublishedKey`] (JSON).
    keys: sled::Tree,
    /// `domain \0 hash` → address.
    wkd: sled::Tree,
}

const KEYS_TREE: &[u8] = b"keydir/keys";
const WKD_TREE: &[u8] = b"keydir/wkd";

fn wkd_index_key(domain: &str, hash: &str) -> Vec<u8> {
    [domain.as_bytes(), b"\0", hash.as_bytes()].concat()
}

impl SledKeyStorage {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &std::path::Path) -> Result<Self, StorageError> {
        Self::with_db(sled::Config::new().path(dir).open()?)
    }

    /// The key directory's trees in an open database (one the provider
    /// shares with other parts, say).
    pub fn with_db(db: sled::Db) -> Result<Self, StorageError> {
        Ok(Self { keys: db.open_tree(KEYS_TREE)?, wkd: db.open_tree(WKD_TREE)?, db })
    }

    fn read(&self, address: &[u8]) -> Result<Option<PublishedKey>, StorageError> {
        self.keys
            .get(address)?
            .map(|record| serde_json::from_slice(&record).map_err(|_| StorageError::Damaged))
            .transpose()
    }
}

impl KeyStorage for SledKeyStorage {
    fn get(&self, address: &str) -> Result<Option<PublishedKey>, StorageError> {
        self.read(normalize_address(address)?.as_bytes())
    }

    fn put(&self, key: &PublishedKey) -> Result<(), StorageError> {
        let address = normalize_address(&key.address)?;
        let (domain, hash) = wkd_location(&address)?;
        let record = serde_json::to_vec(&PublishedKey { address: address.clone(), ..key.clone() })
            .map_err(|_| StorageError::Damaged)?;
        use sled::Transactional as _;
        (&self.keys, &self.wkd)
            .transaction(|(keys, wkd)| {
                keys.insert(address.as_bytes(), record.as_slice())?;
                wkd.insert(wkd_index_key(&domain, &hash), address.as_bytes())?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|error| match error {
                sled::transaction::TransactionError::Storage(error) => StorageError::Sled(error),
                sled::transaction::TransactionError::Abort(()) => StorageError::Damaged,
            })?;
        self.db.flush()?;
        Ok(())
    }

    fn by_wkd_hash(&self, domain: &str, hash: &str) -> Result<Option<PublishedKey>, StorageError> {
        let index_key = wkd_index_key(&domain.to_ascii_lowercase(), &hash.to_ascii_lowercase());
        match self.wkd.get(index_key)? {
            Some(address) => Ok(Some(self.read(&address)?.ok_or(StorageError::Damaged)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the WKD draft (section 3.1).
    #[test]
    fn wkd_location_of_the_drafts_example() {
        let (domain, hash) = wkd_location("Joe.Doe@Example.ORG").unwrap();
        assert_eq!(domain, "example.org");
        assert_eq!(hash, "iy9q119eutrkn8s1mk4r39qejnbu3n5q");
    }

    #[test]
    fn addresses() {
        assert_eq!(normalize_address("Alice@Example.ORG").unwrap(), "alice@example.org");
        for odd in ["", "alice", "@example.org", "alice@", "a@b@c", "a b@example.org", "a/b@example.org", "a\n@b"] {
            assert!(normalize_address(odd).is_err(), "{odd:?}");
        }
        assert!(normalize_address(&format!("{}@example.org", "a".repeat(250))).is_err());
    }

    #[test]
    fn put_get_replace_and_wkd_index() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SledKeyStorage::open(dir.path()).unwrap();
        assert_eq!(storage.get("alice@example.org").unwrap(), None);
        let key = PublishedKey { address: "Alice@Example.org".into(), fingerprint: "AA".into(), armored: "one".into() };
        storage.put(&key).unwrap();
        let stored = storage.get("ALICE@example.org").unwrap().unwrap();
        assert_eq!((stored.address.as_str(), stored.armored.as_str()), ("alice@example.org", "one"));

        storage.put(&PublishedKey { fingerprint: "BB".into(), armored: "two".into(), ..key }).unwrap();
        let (domain, hash) = wkd_location("alice@example.org").unwrap();
        assert_eq!(storage.by_wkd_hash(&domain, &hash).unwrap().unwrap().fingerprint, "BB");
        assert_eq!(storage.by_wkd_hash("example.com", &hash).unwrap(), None);
        drop(storage);

        // Durable: a reopened database has it.
        let reopened = SledKeyStorage::open(dir.path()).unwrap();
        assert_eq!(reopened.get("alice@example.org").unwrap().unwrap().armored, "two");
        assert!(!format!("{stored:?}").contains("one"), "Debug shows no key");
    }
}

//! What the provider keeps per user: opaque sealed documents ordered by a
//! per-user generation, blobs, and the sealed storage secrets. It never sees
//! a key: ids, revisions and contents are whatever the client sealed.
//!
//! [`SyncStorage`] is the seam for other backends (PostgreSQL for
//! deployments of several provider instances); [`SledStorage`] is the
//! embedded default.

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record is damaged")]
    Damaged,
    #[error("the secrets are at version {current}, not {expected}")]
    SecretsVersion { current: u64, expected: u64 },
    #[error("blob upload does not match its announced size")]
    BlobSize,
}

/// One document as the provider holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredDocument {
    pub id: Vec<u8>,
    pub rev: Vec<u8>,
    pub sealed: Vec<u8>,
    pub deleted: bool,
    pub generation: u64,
}

/// A document a client pushes, replacing `parent_rev` (empty: new).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedDocument {
    pub id: Vec<u8>,
    pub rev: Vec<u8>,
    pub parent_rev: Vec<u8>,
    pub sealed: Vec<u8>,
    pub deleted: bool,
}

/// An incoming message as the provider lists it (its bytes are apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingItem {
    pub id: String,
    pub size: u64,
    pub received_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// Stored at this generation (or already there: a retried push).
    Accepted(u64),
    /// The provider has another revision: the client merges and pushes again.
    Conflict(StoredDocument),
}

/// Per-user storage of a sync endpoint. Every write is durable when it returns.
pub trait SyncStorage: Send + Sync + 'static {
    /// Documents changed after `since`, in generation order, at most `limit`;
    /// and the generation read up to (the user's current one when fewer than
    /// `limit` came back).
    fn pull(&self, user: &str, since: u64, limit: usize) -> Result<(Vec<StoredDocument>, u64), StorageError>;
    fn push(&self, user: &str, document: PushedDocument) -> Result<PushOutcome, StorageError>;
    /// Several documents, durable together (one flush); by default one by one.
    fn push_many(&self, user: &str, documents: Vec<PushedDocument>) -> Result<Vec<PushOutcome>, StorageError> {
        documents.into_iter().map(|document| self.push(user, document)).collect()
    }
    fn has_blob(&self, user: &str, id: &[u8]) -> Result<bool, StorageError>;
    fn put_blob(&self, user: &str, id: &[u8], data: &[u8]) -> Result<(), StorageError>;
    fn get_blob(&self, user: &str, id: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    fn secrets(&self, user: &str) -> Result<Option<(Vec<u8>, u64)>, StorageError>;
    /// Compare-and-set on the version (0: none yet); returns the new version.
    fn put_secrets(&self, user: &str, blob: &[u8], expected_version: u64) -> Result<u64, StorageError>;

    /// Keeps an incoming message (already encrypted to the user) under a new
    /// id; durable when it returns.
    fn deposit_incoming(&self, user: &str, id: &str, received_ms: u64, data: &[u8]) -> Result<(), StorageError>;
    /// Incoming messages, oldest first, at most `limit` (0: all).
    fn list_incoming(&self, user: &str, limit: usize) -> Result<Vec<IncomingItem>, StorageError>;
    fn get_incoming(&self, user: &str, id: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Removes those of `ids` that exist; returns how many did.
    fn delete_incoming(&self, user: &str, ids: &[String]) -> Result<u32, StorageError>;
}

/// The embedded default: one sled database, a few trees per user.
#[derive(Debug, Clone)]
pub struct SledStorage {
    db: sled::Db,
}

fn tree_name(user: &str, kind: &str) -> Vec<u8> {
    // A length prefix keeps users whose names share a prefix apart.
    let mut name = (user.len() as u32).to_be_bytes().to_vec();
    name.extend_from_slice(user.as_bytes());
    name.extend_from_slice(kind.as_bytes());
    name
}

impl SledStorage {
    pub fn open(dir: &std::path::Path) -> Result<Self, StorageError> {
        Ok(Self { db: sled::Config::new().path(dir).mode(sled::Mode::HighThroughput).open()? })
    }

    fn tree(&self, user: &str, kind: &str) -> Result<sled::Tree, StorageError> {
        Ok(self.db.open_tree(tree_name(user, kind))?)
    }
}

const GENERATION: &[u8] = b"generation";
/// Incoming messages: `incoming` maps an id to its arrival time and size,
/// `incoming-data` to its bytes.
const INCOMING: &str = "incoming";
const INCOMING_DATA: &str = "incoming-data";
const SECRETS: &[u8] = b"secrets";

fn u64_of(bytes: &[u8]) -> Result<u64, StorageError> {
    bytes.try_into().map(u64::from_be_bytes).map_err(|_| StorageError::Damaged)
}

impl SyncStorage for SledStorage {
    fn pull(&self, user: &str, since: u64, limit: usize) -> Result<(Vec<StoredDocument>, u64), StorageError> {
        let (documents, generations, meta) =
            (self.tree(user, "documents")?, self.tree(user, "generations")?, self.tree(user, "meta")?);
        // Read the generation first and stop there: a push landing meanwhile
        // has a later generation and comes with the next pull.
        let current = meta.get(GENERATION)?.map(|bytes| u64_of(&bytes)).transpose()?.unwrap_or(0);
        let mut out = Vec::new();
        if since >= current {
            return Ok((out, current));
        }
        for entry in generations.range(since.saturating_add(1).to_be_bytes()..=current.to_be_bytes()) {
            if limit != 0 && out.len() >= limit {
                break;
            }
            let (_, id) = entry?;
            let record = documents.get(&id)?.ok_or(StorageError::Damaged)?;
            out.push(serde_json::from_slice(&record).map_err(|_| StorageError::Damaged)?);
        }
        Ok((out, current))
    }

    fn push(&self, user: &str, document: PushedDocument) -> Result<PushOutcome, StorageError> {
        let mut outcomes = self.push_many(user, vec![document])?;
        outcomes.pop().ok_or(StorageError::Damaged)
    }

    fn push_many(&self, user: &str, pushed: Vec<PushedDocument>) -> Result<Vec<PushOutcome>, StorageError> {
        let (documents, generations, meta) =
            (self.tree(user, "documents")?, self.tree(user, "generations")?, self.tree(user, "meta")?);
        use sled::Transactional as _;
        let outcomes = (&documents, &generations, &meta)
            .transaction(|(tx_documents, tx_generations, tx_meta)| {
                let abort = || sled::transaction::ConflictableTransactionError::Abort(());
                let mut generation = match tx_meta.get(GENERATION)? {
                    Some(bytes) => bytes.as_ref().try_into().map(u64::from_be_bytes).map_err(|_| abort())?,
                    None => 0,
                };
                let mut outcomes = Vec::with_capacity(pushed.len());
                for document in &pushed {
                    let current: Option<StoredDocument> = match tx_documents.get(&document.id)? {
                        Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|_| abort())?),
                        None => None,
                    };
                    // (No current version but a parent named: the client saw a version we lost; keep its own.)
                    match &current {
                        // A retried push of what is already there: nothing new.
                        Some(current) if current.rev == document.rev => {
                            outcomes.push(PushOutcome::Accepted(current.generation));
                            continue;
                        }
                        Some(current) if current.rev != document.parent_rev => {
                            outcomes.push(PushOutcome::Conflict(current.clone()));
                            continue;
                        }
                        _ => {}
                    }
                    generation += 1;
                    if let Some(current) = &current {
                        tx_generations.remove(&current.generation.to_be_bytes())?;
                    }
                    let stored = StoredDocument {
                        id: document.id.clone(),
                        rev: document.rev.clone(),
                        sealed: document.sealed.clone(),
                        deleted: document.deleted,
                        generation,
                    };
                    let bytes = serde_json::to_vec(&stored).map_err(|_| abort())?;
                    tx_documents.insert(document.id.as_slice(), bytes)?;
                    tx_generations.insert(&generation.to_be_bytes(), document.id.as_slice())?;
                    outcomes.push(PushOutcome::Accepted(generation));
                }
                tx_meta.insert(GENERATION, &generation.to_be_bytes())?;
                Ok(outcomes)
            })
            .map_err(|error: sled::transaction::TransactionError<()>| match error {
                sled::transaction::TransactionError::Storage(error) => StorageError::Sled(error),
                sled::transaction::TransactionError::Abort(()) => StorageError::Damaged,
            })?;
        self.db.flush()?;
        Ok(outcomes)
    }

    fn has_blob(&self, user: &str, id: &[u8]) -> Result<bool, StorageError> {
        Ok(self.tree(user, "blobs")?.contains_key(id)?)
    }

    fn put_blob(&self, user: &str, id: &[u8], data: &[u8]) -> Result<(), StorageError> {
        self.tree(user, "blobs")?.insert(id, data)?;
        self.db.flush()?;
        Ok(())
    }

    fn get_blob(&self, user: &str, id: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.tree(user, "blobs")?.get(id)?.map(|bytes| bytes.to_vec()))
    }

    fn secrets(&self, user: &str) -> Result<Option<(Vec<u8>, u64)>, StorageError> {
        let Some(bytes) = self.tree(user, "meta")?.get(SECRETS)? else { return Ok(None) };
        let (version, blob) = bytes.split_first_chunk::<8>().ok_or(StorageError::Damaged)?;
        Ok(Some((blob.to_vec(), u64::from_be_bytes(*version))))
    }

    fn put_secrets(&self, user: &str, blob: &[u8], expected_version: u64) -> Result<u64, StorageError> {
        let meta = self.tree(user, "meta")?;
        let current = self.secrets(user)?.map(|(_, version)| version).unwrap_or(0);
        if current != expected_version {
            return Err(StorageError::SecretsVersion { current, expected: expected_version });
        }
        let version = current + 1;
        let mut value = version.to_be_bytes().to_vec();
        value.extend_from_slice(blob);
        let previous = if current == 0 { None } else { meta.get(SECRETS)? };
        meta.compare_and_swap(SECRETS, previous, Some(value))?
            .map_err(|_| StorageError::SecretsVersion { current: current + 1, expected: expected_version })?;
        self.db.flush()?;
        Ok(version)
    }

    fn deposit_incoming(&self, user: &str, id: &str, received_ms: u64, data: &[u8]) -> Result<(), StorageError> {
        let (items, contents) = (self.tree(user, INCOMING)?, self.tree(user, INCOMING_DATA)?);
        let mut meta = received_ms.to_be_bytes().to_vec();
        meta.extend_from_slice(&(data.len() as u64).to_be_bytes());
        // The bytes first: an item is listed only once they are there.
        contents.insert(id.as_bytes(), data)?;
        items.insert(id.as_bytes(), meta)?;
        self.db.flush()?;
        Ok(())
    }

    fn list_incoming(&self, user: &str, limit: usize) -> Result<Vec<IncomingItem>, StorageError> {
        let mut out = Vec::new();
        for entry in self.tree(user, INCOMING)?.iter() {
            let (id, meta) = entry?;
            let (received, size) = meta.split_first_chunk::<8>().ok_or(StorageError::Damaged)?;
            out.push(IncomingItem {
                id: String::from_utf8(id.to_vec()).map_err(|_| StorageError::Damaged)?,
                size: u64_of(size)?,
                received_ms: u64::from_be_bytes(*received),
            });
        }
        out.sort_by(|a, b| (a.received_ms, &a.id).cmp(&(b.received_ms, &b.id)));
        if limit != 0 {
            out.truncate(limit);
        }
        Ok(out)
    }

    fn get_incoming(&self, user: &str, id: &str) -> Result<Option<Vec<u8>>, StorageError> {
        if !self.tree(user, INCOMING)?.contains_key(id.as_bytes())? {
            return Ok(None);
        }
        Ok(self.tree(user, INCOMING_DATA)?.get(id.as_bytes())?.map(|bytes| bytes.to_vec()))
    }

    fn delete_incoming(&self, user: &str, ids: &[String]) -> Result<u32, StorageError> {
        let (items, contents) = (self.tree(user, INCOMING)?, self.tree(user, INCOMING_DATA)?);
        let mut deleted = 0;
        for id in ids {
            // Unlisted first, then the bytes: never a listed item without them.
            if items.remove(id.as_bytes())?.is_some() {
                deleted += 1;
            }
            contents.remove(id.as_bytes())?;
        }
        self.db.flush()?;
        Ok(deleted)
    }
}

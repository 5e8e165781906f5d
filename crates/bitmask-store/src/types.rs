//! The store's domain types and errors.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// How conflicting edits of a collection's documents resolve when two
/// devices changed the same document (applied by sync).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictPolicy {
    /// Never changed after creation (content-addressed documents): versions
    /// that differ resolve to the greater of (live, content bytes), so a live
    /// version beats a deletion and devices agree on one content.
    Immutable,
    LastWriterWins,
    /// Three-way merge: array fields are sets, other fields last writer wins.
    MergeSets,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionDef {
    pub name: String,
    pub policy: ConflictPolicy,
    /// Never synced: state of this device only (e.g. UIDs).
    pub local_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDef {
    pub name: String,
    pub collection: String,
    /// JSON pointers into the content, e.g. "/mailbox", "/uid".
    pub fields: Vec<String>,
    pub unique: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub id: String,
    pub collection: String,
    pub rev: String,
    /// JSON text; "null" for a tombstone.
    pub content: String,
    pub deleted: bool,
    pub updated: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOp {
    pub id: String,
    pub collection: String,
    pub content: String,
    /// Write only if the current revision is this one ("" = absent).
    pub expected_rev: Option<String>,
    /// Write only if no live document has this id.
    pub create_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(PutOp),
    Delete {
        id: String,
        expected_rev: Option<String>,
    },
    /// Only checks that the document is at this revision ("" = absent).
    Check {
        id: String,
        rev: String,
    },
    AddToCounter {
        name: String,
        delta: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteResult {
    Rev(String),
    Counter(i64),
    Checked,
}

/// A committed change: the document as written, and its sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub sequence: u64,
    pub document: Document,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd)]
pub enum IndexValue {
    Text(String),
    Integer(i64),
    Boolean(bool),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    pub values: Vec<IndexValue>,
    pub inclusive: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub index: String,
    pub equal: Vec<IndexValue>,
    pub lower: Option<Bound>,
    pub upper: Option<Bound>,
    pub descending: bool,
    /// 0: no limit.
    pub limit: usize,
    pub page_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryPage {
    pub documents: Vec<Document>,
    /// Set when `limit` cut the result short.
    pub next_page_token: Option<String>,
}

/// Record counts (documents include tombstones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub documents: usize,
    pub blobs: usize,
    pub chunks: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreState {
    Uninitialized,
    Locked,
    Unlocked,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is locked: unlock it with the passphrase first")]
    Locked,
    #[error("the store has no secrets yet: initialize it with a passphrase first")]
    Uninitialized,
    #[error("the store is initialized already")]
    AlreadyInitialized,
    #[error("wrong passphrase or recovery code")]
    WrongCredential,
    #[error("the passphrase must not be empty")]
    EmptyPassphrase,
    #[error("no document {0:?}")]
    NotFound(String),
    #[error("document {id:?} is at revision {actual:?}, not {expected:?}")]
    Conflict { id: String, expected: String, actual: String },
    #[error("document {0:?} exists already")]
    AlreadyExists(String),
    #[error("no collection {0:?}: declare it first")]
    UnknownCollection(String),
    #[error("no index {0:?}: declare it first")]
    UnknownIndex(String),
    #[error("{0}")]
    SchemaChanged(String),
    #[error("invalid document {id:?}: {reason}")]
    InvalidDocument { id: String, reason: String },
    #[error("document {id:?} is {size} bytes, at most {max} are allowed (use a blob)")]
    TooLarge { id: String, size: usize, max: usize },
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("index {index:?} is unique and another document has the same key")]
    UniqueViolation { index: String },
    #[error(
        "the provider offered revision {offered:?} of {id:?}, older than the {known:?} it had: refused as a rollback"
    )]
    RolledBack { id: String, known: String, offered: String },
    #[error("stored data failed its integrity check ({0}): it was changed or damaged")]
    Corrupt(&'static str),
    #[error("invalid key derivation parameters: {0}")]
    Kdf(String),
    #[error("storage: {0}")]
    Storage(#[from] sled::Error),
    /// Refused before anything was written: the disk has too little room
    /// left (see `reserve.rs`).
    #[error("the disk is full")]
    DiskFull,
    /// A write failed on disk and the store closed its database: the process
    /// must start again (see `Store::close_after_failure`).
    #[error("the store is starting again after a write failed on disk")]
    Closed,
}

impl StoreError {
    /// The disk is full: nothing can be written until space is freed.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Self::DiskFull => true,
            Self::Storage(sled::Error::Io(io)) => io.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }

    /// Whether the error concerns one document only (sync quarantines such a
    /// document and goes on), rather than the store as a whole.
    pub fn concerns_one_document(&self) -> bool {
        match self {
            Self::NotFound(_)
            | Self::Conflict { .. }
            | Self::AlreadyExists(_)
            | Self::UnknownCollection(_)
            | Self::InvalidDocument { .. }
            | Self::TooLarge { .. }
            | Self::UniqueViolation { .. }
            | Self::RolledBack { .. }
            | Self::Corrupt(_) => true,
            Self::Locked
            | Self::Uninitialized
            | Self::AlreadyInitialized
            | Self::WrongCredential
            | Self::EmptyPassphrase
            | Self::UnknownIndex(_)
            | Self::SchemaChanged(_)
            | Self::InvalidQuery(_)
            | Self::Kdf(_)
            | Self::Storage(_)
            | Self::DiskFull
            | Self::Closed => false,
        }
    }
}

impl From<crate::secrets::SecretsError> for StoreError {
    fn from(error: crate::secrets::SecretsError) -> Self {
        use crate::secrets::SecretsError;
        match error {
            SecretsError::WrongCredential => Self::WrongCredential,
            SecretsError::EmptyPassphrase => Self::EmptyPassphrase,
            SecretsError::Kdf(message) => Self::Kdf(message),
        }
    }
}

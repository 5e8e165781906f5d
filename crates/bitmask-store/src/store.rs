//! The store proper: sled trees, the write path, queries and the change log.
//!
//! Trees (every key and value below is a keyed hash or ciphertext, except
//! sequence numbers and the sealed secrets record):
//! - `meta`: `secrets` (the sealed secrets record), `sequence` (u64);
//! - `documents`: storage key → sealed document record;
//! - `changes`: sequence → storage key, one entry per document, at its
//!   latest change (the replay log of `Watch`, and later of sync);
//! - `index`: index tag ‖ encoded values ‖ storage key → ();
//! - `counters`: counter key → sealed i64;
//! - `schema`: schema key → sealed collection or index definition;
//! - `blobs`: blob id → sealed metadata; `chunks`: upload prefix ‖ index →
//!   sealed chunk (see `blobs.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sled::Transactional as _;

use crate::crypto::{Keys, MasterKey};
use crate::secrets::{KdfParams, SecretsRecord};
use crate::types::*;

/// Larger payloads belong in blobs.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
pub const MAX_ID_BYTES: usize = 1024;
/// sled's page cache: its default (1 GiB) would let one account's store grow
/// to a gigabyte of resident memory on a large mailbox.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

const SECRETS: &[u8] = b"secrets";
const SEQUENCE: &[u8] = b"sequence";
const DOCUMENT_CONTEXT: &[u8] = b"document";
const COUNTER_CONTEXT: &[u8] = b"counter";
const SCHEMA_CONTEXT: &[u8] = b"schema";
const STORAGE_KEY_LEN: usize = 32;

/// What is sealed under a document's storage key.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DocumentRecord {
    pub(crate) id: String,
    pub(crate) collection: String,
    pub(crate) rev: String,
    pub(crate) content: Box<RawValue>,
    pub(crate) deleted: bool,
    pub(crate) updated_ms: u64,
    pub(crate) sequence: u64,
    /// The revision the provider holds, as far as this device knows.
    #[serde(default)]
    pub(crate) synced_rev: Option<String>,
    /// The content at `synced_rev`: the common ancestor of a three-way merge.
    #[serde(default)]
    pub(crate) base: Option<Box<RawValue>>,
}

impl DocumentRecord {
    pub(crate) fn live(&self) -> bool {
        !self.deleted
    }

    pub(crate) fn to_document(&self) -> Document {
        Document {
            id: self.id.clone(),
            collection: self.collection.clone(),
            rev: self.rev.clone(),
            content: self.content.get().to_owned(),
            deleted: self.deleted,
            updated: UNIX_EPOCH + Duration::from_millis(self.updated_ms),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Schema {
    pub(crate) collections: HashMap<String, CollectionDef>,
    pub(crate) indexes: HashMap<String, IndexDef>,
}

#[derive(Debug, Serialize, Deserialize)]
enum SchemaRecord {
    Collection(CollectionDef),
    Index(IndexDef),
}

#[derive(Debug)]
pub(crate) struct Unlocked {
    pub(crate) keys: Keys,
    pub(crate) schema: Schema,
}

/// The sled database and its trees. A failed write may leave sled with
/// changes in memory that are not on disk (and sled refuses every flush after
/// one failed), so the store closes it (see [`Store::close_after_failure`]).
#[derive(Debug)]
pub(crate) struct Trees {
    db: sled::Db,
    pub(crate) meta: sled::Tree,
    pub(crate) documents: sled::Tree,
    pub(crate) changes: sled::Tree,
    pub(crate) index: sled::Tree,
    pub(crate) counters: sled::Tree,
    pub(crate) schema: sled::Tree,
    pub(crate) blobs: sled::Tree,
    pub(crate) chunks: sled::Tree,
    /// Ids of blobs the provider has.
    pub(crate) synced_blobs: sled::Tree,
}

impl Trees {
    fn open(dir: &std::path::Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).mode(sled::Mode::HighThroughput).cache_capacity(CACHE_BYTES).open()?;
        Ok(Self {
            meta: db.open_tree("meta")?,
            documents: db.open_tree("documents")?,
            changes: db.open_tree("changes")?,
            index: db.open_tree("index")?,
            counters: db.open_tree("counters")?,
            schema: db.open_tree("schema")?,
            blobs: db.open_tree("blobs")?,
            chunks: db.open_tree("chunks")?,
            synced_blobs: db.open_tree("synced_blobs")?,
            db,
        })
    }

    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn load(&self, keys: &Keys, storage_key: &[u8]) -> Result<Option<DocumentRecord>, StoreError> {
        match self.documents.get(storage_key)? {
            Some(sealed) => Ok(Some(open_document(keys, storage_key, &sealed)?)),
            None => Ok(None),
        }
    }

    fn sequence(&self) -> Result<u64, StoreError> {
        Ok(self.meta.get(SEQUENCE)?.map(|bytes| u64_from(&bytes)).unwrap_or(0))
    }
}

/// One account's store. Thread-safe; every method blocks on disk I/O, so
/// async callers run it on a blocking thread.
#[derive(Debug)]
pub struct Store {
    account: String,
    dir: std::path::PathBuf,
    /// None once closed after a write failed on disk.
    trees: RwLock<Option<Arc<Trees>>>,
    /// Writes are refused until the disk has room again (`reserve.rs`).
    full: std::sync::atomic::AtomicBool,
    unlocked: RwLock<Option<Arc<RwLock<Unlocked>>>>,
    /// Serializes writers: one write (or batch) at a time computes and commits.
    writer: Mutex<()>,
    kdf: KdfParams,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
}

/// The edit count at the front of a revision ("3-9f2c…" → 3).
pub(crate) fn rev_number(rev: &str) -> u64 {
    rev.split('-').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0)
}

/// A new revision numbered `number`.
pub(crate) fn numbered_rev(number: u64) -> String {
    let mut random = [0u8; 6];
    rand::rngs::OsRng.fill_bytes(&mut random);
    format!("{number}-{}", data_encoding::HEXLOWER.encode(&random))
}

fn next_rev(previous: Option<&str>) -> String {
    numbered_rev(previous.map(rev_number).unwrap_or(0) + 1)
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The smallest key greater than every key that starts with `prefix`
/// (None: there is none).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Store {
    /// Opens (or creates) the store in `dir`. It starts locked, or
    /// uninitialized if it has no secrets yet.
    pub fn open(dir: &std::path::Path, account: &str) -> Result<Self, StoreError> {
        Self::open_with_kdf(dir, account, KdfParams::default())
    }

    /// Like [`Store::open`], with the KDF cost for a new passphrase.
    pub fn open_with_kdf(dir: &std::path::Path, account: &str, kdf: KdfParams) -> Result<Self, StoreError> {
        let trees = Trees::open(dir)?;
        // Without the reserve (the first start, or after a write failed on
        // disk) and no room for it, writes wait until there is some.
        let full = !crate::reserve::ensure(dir);
        Ok(Self {
            account: account.to_owned(),
            dir: dir.to_owned(),
            trees: RwLock::new(Some(Arc::new(trees))),
            full: std::sync::atomic::AtomicBool::new(full),
            unlocked: RwLock::new(None),
            writer: Mutex::new(()),
            kdf,
        })
    }

    /// The database (closed after a write failed on disk).
    pub(crate) fn trees(&self) -> Result<Arc<Trees>, StoreError> {
        read(&self.trees).as_ref().map(Arc::clone).ok_or(StoreError::Closed)
    }

    /// After an error: if it was the disk's (a full disk, an I/O error), sled
    /// may hold in memory what never reached the disk, it refuses every flush
    /// from then on, and dropping it waits for a flush that never ends. The
    /// database is closed for good (every later call answers
    /// [`StoreError::Closed`]) and the reserve is given back, so the process
    /// that owns the store can start again and open exactly what is on disk,
    /// which is everything that was acknowledged (`reserve.rs`). Returns
    /// whether it closed the store.
    pub fn close_after_failure(&self, error: &StoreError) -> bool {
        if !matches!(error, StoreError::Storage(sled::Error::Io(_))) {
            return false;
        }
        let Some(trees) = write(&self.trees).take() else { return false };
        // Never dropped: sled's drop would wait for the failed flush. The
        // process ends soon and the kernel closes the files.
        std::mem::forget(trees);
        crate::reserve::release(&self.dir);
        tracing::error!(%error, "a write failed on disk: the store is closed and must be opened again");
        true
    }

    /// Whether a write may go to sled now: not while the disk is full. Once
    /// it has [`crate::reserve::RESUME_BYTES`] free, the reserve is allocated
    /// again and writes are taken.
    pub(crate) fn check_room(&self) -> Result<(), StoreError> {
        if !self.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        if !crate::reserve::ensure(&self.dir) {
            return Err(StoreError::DiskFull);
        }
        self.full.store(false, std::sync::atomic::Ordering::SeqCst);
        tracing::info!("the disk has room again: writes are taken");
        Ok(())
    }

    pub fn state(&self) -> Result<StoreState, StoreError> {
        if read(&self.unlocked).is_some() {
            Ok(StoreState::Unlocked)
        } else if self.trees()?.meta.contains_key(SECRETS)? {
            Ok(StoreState::Locked)
        } else {
            Ok(StoreState::Uninitialized)
        }
    }

    fn secrets(&self) -> Result<SecretsRecord, StoreError> {
        let bytes = self.trees()?.meta.get(SECRETS)?.ok_or(StoreError::Uninitialized)?;
        serde_json::from_slice(&bytes).map_err(|_| StoreError::Corrupt("secrets record"))
    }

    fn save_secrets(&self, record: &SecretsRecord) -> Result<(), StoreError> {
        self.check_room()?;
        let bytes = serde_json::to_vec(record).map_err(|_| StoreError::Corrupt("secrets record"))?;
        self.trees()?.meta.insert(SECRETS, bytes)?;
        self.flush()?;
        Ok(())
    }

    /// Creates the storage secrets under `passphrase` and unlocks. Returns the
    /// recovery code, to be shown to the user once.
    pub fn initialize(&self, passphrase: &str) -> Result<zeroize::Zeroizing<String>, StoreError> {
        let _writer = lock(&self.writer);
        if self.trees()?.meta.contains_key(SECRETS)? {
            return Err(StoreError::AlreadyInitialized);
        }
        let master = MasterKey::generate();
        let (record, recovery_code) = SecretsRecord::create(&master, passphrase, self.kdf)?;
        self.save_secrets(&record)?;
        self.install(&master)?;
        Ok(recovery_code)
    }

    /// Stores a small sealed setting of this device (e.g. where to sync).
    pub fn set_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.check_room()?;
        let unlocked = self.unlocked()?;
        let unlocked = read(&unlocked);
        let key = unlocked.keys.schema_key("setting", name);
        self.trees()?.meta.insert(key, unlocked.keys.seal(&key, b"setting", value))?;
        self.flush()?;
        Ok(())
    }

    pub fn setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let unlocked = self.unlocked()?;
        let unlocked = read(&unlocked);
        let key = unlocked.keys.schema_key("setting", name);
        match self.trees()?.meta.get(key)? {
            Some(sealed) => {
                let plain =
                    unlocked.keys.open(&key, b"setting", &sealed).map_err(|_| StoreError::Corrupt("setting"))?;
                Ok(Some(plain.to_vec()))
            }
            None => Ok(None),
        }
    }

    /// The sealed secrets record, to back up at the provider (it opens only
    /// with the passphrase or the recovery code).
    pub fn export_secrets(&self) -> Result<Vec<u8>, StoreError> {
        Ok(self.trees()?.meta.get(SECRETS)?.ok_or(StoreError::Uninitialized)?.to_vec())
    }

    /// A second device: takes the secrets backed up by the first one and
    /// unlocks with the passphrase; a wrong passphrase stores nothing.
    pub fn initialize_from_backup(&self, backup: &[u8], passphrase: &str) -> Result<(), StoreError> {
        let _writer = lock(&self.writer);
        if self.trees()?.meta.contains_key(SECRETS)? {
            return Err(StoreError::AlreadyInitialized);
        }
        let record: SecretsRecord =
            serde_json::from_slice(backup).map_err(|_| StoreError::Corrupt("secrets backup"))?;
        let master = record.open_with_passphrase(passphrase)?;
        self.save_secrets(&record)?;
        self.install(&master)
    }

    /// Opens the secrets with the passphrase; a wrong one changes nothing.
    pub fn unlock(&self, passphrase: &str) -> Result<(), StoreError> {
        let master = self.secrets()?.open_with_passphrase(passphrase)?;
        self.install(&master)
    }

    pub fn unlock_with_recovery_code(&self, code: &str) -> Result<(), StoreError> {
        let master = self.secrets()?.open_with_recovery_code(code)?;
        self.install(&master)
    }

    /// Forgets the keys (they are zeroized when the last reader is done).
    pub fn lock(&self) {
        *write(&self.unlocked) = None;
    }

    /// Re-seals the secrets under a new passphrase, proven by the old
    /// passphrase or the recovery code.
    pub fn change_passphrase(&self, credential: Credential<'_>, new_passphrase: &str) -> Result<(), StoreError> {
        let _writer = lock(&self.writer);
        let record = self.secrets()?;
        let master = match credential {
            Credential::Passphrase(passphrase) => record.open_with_passphrase(passphrase)?,
            Credential::RecoveryCode(code) => record.open_with_recovery_code(code)?,
        };
        self.save_secrets(&record.with_passphrase(&master, new_passphrase)?)
    }

    fn install(&self, master: &MasterKey) -> Result<(), StoreError> {
        let keys = Keys::derive(master, &self.account);
        let mut schema = Schema::default();
        for entry in self.trees()?.schema.iter() {
            let (key, sealed) = entry?;
            let plain = keys.open(&key, SCHEMA_CONTEXT, &sealed).map_err(|_| StoreError::Corrupt("schema"))?;
            match serde_json::from_slice(&plain).map_err(|_| StoreError::Corrupt("schema"))? {
                SchemaRecord::Collection(def) => schema.collections.insert(def.name.clone(), def).map(drop),
                SchemaRecord::Index(def) => schema.indexes.insert(def.name.clone(), def).map(drop),
            };
        }
        *write(&self.unlocked) = Some(Arc::new(RwLock::new(Unlocked { keys, schema })));
        Ok(())
    }

    pub(crate) fn writer_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.writer)
    }

    pub(crate) fn changes_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.trees()?.changes.clone())
    }

    pub(crate) fn documents_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.trees()?.documents.clone())
    }

    pub(crate) fn meta_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.trees()?.meta.clone())
    }

    pub(crate) fn blobs_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.trees()?.blobs.clone())
    }

    pub(crate) fn synced_blobs_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.trees()?.synced_blobs.clone())
    }

    pub(crate) fn chunks_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.trees()?.chunks.clone())
    }

    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        self.trees()?.flush()
    }

    pub(crate) fn unlocked(&self) -> Result<Arc<RwLock<Unlocked>>, StoreError> {
        match &*read(&self.unlocked) {
            Some(unlocked) => Ok(Arc::clone(unlocked)),
            None if self.trees()?.meta.contains_key(SECRETS)? => Err(StoreError::Locked),
            None => Err(StoreError::Uninitialized),
        }
    }

    // --- schema ---------------------------------------------------------------

    pub fn declare_collection(&self, def: CollectionDef) -> Result<(), StoreError> {
        if def.name.is_empty() {
            return Err(StoreError::SchemaChanged("a collection needs a name".into()));
        }
        let _writer = lock(&self.writer);
        let unlocked = self.unlocked()?;
        let mut unlocked = write(&unlocked);
        match unlocked.schema.collections.get(&def.name) {
            Some(existing) if *existing == def => return Ok(()),
            Some(existing) => {
                return Err(StoreError::SchemaChanged(format!(
                    "collection {:?} is declared already with another policy ({:?}, local only: {})",
                    def.name, existing.policy, existing.local_only
                )));
            }
            None => {}
        }
        let key = unlocked.keys.schema_key("collection", &def.name);
        let record =
            serde_json::to_vec(&SchemaRecord::Collection(def.clone())).map_err(|_| StoreError::Corrupt("schema"))?;
        self.trees()?.schema.insert(key, unlocked.keys.seal(&key, SCHEMA_CONTEXT, &record))?;
        self.flush()?;
        unlocked.schema.collections.insert(def.name.clone(), def);
        Ok(())
    }

    /// Declares an index and indexes the collection's existing documents.
    pub fn declare_index(&self, def: IndexDef) -> Result<(), StoreError> {
        if def.name.is_empty() {
            return Err(StoreError::SchemaChanged("an index needs a name".into()));
        }
        if let Some(field) = def.fields.iter().find(|field| !field.is_empty() && !field.starts_with('/')) {
            return Err(StoreError::SchemaChanged(format!("field {field:?} is not a JSON pointer (like \"/uid\")")));
        }
        let _writer = lock(&self.writer);
        let unlocked = self.unlocked()?;
        let mut unlocked = write(&unlocked);
        if !unlocked.schema.collections.contains_key(&def.collection) {
            return Err(StoreError::UnknownCollection(def.collection));
        }
        match unlocked.schema.indexes.get(&def.name) {
            Some(existing) if *existing == def => return Ok(()),
            Some(_) => {
                return Err(StoreError::SchemaChanged(format!("index {:?} is declared already differently", def.name)));
            }
            None => {}
        }
        // Index what is there.
        let mut entries = BTreeMap::new();
        for entry in self.trees()?.documents.iter() {
            let (storage_key, sealed) = entry?;
            let record = open_document(&unlocked.keys, &storage_key, &sealed)?;
            if record.live() && record.collection == def.collection {
                for key in index_keys(&unlocked.keys, &def, &record, &storage_key) {
                    let prefix = &key[..key.len() - STORAGE_KEY_LEN];
                    if def.unique && entries.keys().any(|other: &Vec<u8>| other.starts_with(prefix)) {
                        return Err(StoreError::UniqueViolation { index: def.name });
                    }
                    entries.insert(key, ());
                }
            }
        }
        let key = unlocked.keys.schema_key("index", &def.name);
        let record =
            serde_json::to_vec(&SchemaRecord::Index(def.clone())).map_err(|_| StoreError::Corrupt("schema"))?;
        let mut batch = sled::Batch::default();
        for entry in entries.into_keys() {
            batch.insert(entry, &[]);
        }
        self.trees()?.index.apply_batch(batch)?;
        self.trees()?.schema.insert(key, unlocked.keys.seal(&key, SCHEMA_CONTEXT, &record))?;
        self.flush()?;
        unlocked.schema.indexes.insert(def.name.clone(), def);
        Ok(())
    }

    pub fn schema(&self) -> Result<(Vec<CollectionDef>, Vec<IndexDef>), StoreError> {
        let unlocked = self.unlocked()?;
        let unlocked = read(&unlocked);
        let mut collections: Vec<_> = unlocked.schema.collections.values().cloned().collect();
        let mut indexes: Vec<_> = unlocked.schema.indexes.values().cloned().collect();
        collections.sort_by(|a, b| a.name.cmp(&b.name));
        indexes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((collections, indexes))
    }

    // --- reads ----------------------------------------------------------------

    fn load(&self, keys: &Keys, storage_key: &[u8]) -> Result<Option<DocumentRecord>, StoreError> {
        match self.trees()?.documents.get(storage_key)? {
            Some(sealed) => open_document(keys, storage_key, &sealed).map(Some),
            None => Ok(None),
        }
    }

    /// The document, or None; tombstones only with `include_deleted`.
    pub fn get(&self, id: &str, include_deleted: bool) -> Result<Option<Document>, StoreError> {
        let unlocked = self.unlocked()?;
        let unlocked = read(&unlocked);
        let record = self.load(&unlocked.keys, &unlocked.keys.document_key(id))?;
        Ok(record.filter(|record| include_deleted || record.live()).map(|record| record.to_document()))
    }

    /// How many records each part of the store holds.
    pub fn stats(&self) -> StoreStats {
        match self.trees() {
            Ok(trees) => {
                StoreStats { documents: trees.documents.len(), blobs: trees.blobs.len(), chunks: trees.chunks.len() }
            }
            Err(_) => StoreStats::default(),
        }
    }

    /// The current sequence number (of the last committed change).
    pub fn sequence(&self) -> Result<u64, StoreError> {
        self.trees()?.sequence()
    }

    /// The latest change of every document changed after `since`, in order.
    pub fn changes_since(&self, since: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        let unlocked = self.unlocked()?;
        let unlocked = read(&unlocked);
        let mut changes = Vec::new();
        for entry in self.trees()?.changes.range(since.saturating_add(1).to_be_bytes()..) {
            if limit != 0 && changes.len() >= limit {
                break;
            }
            let (sequence, storage_key) = entry?;
            if let Some(record) = self.load(&unlocked.keys, &storage_key)? {
                changes.push(Change { sequence: u64_from(&sequence), document: record.to_document() });
            }
        }
        Ok(changes)
    }

    pub fn query(&self, query: &Query) -> Result<QueryPage, StoreError> {
        let unlocked = self.unlocked()?;
        let unlocked = read(&unlocked);
        let keys = &unlocked.keys;
        let def =
            unlocked.schema.indexes.get(&query.index).ok_or_else(|| StoreError::UnknownIndex(query.index.clone()))?;
        let bound_fields = query.lower.iter().chain(&query.upper).map(|bound| bound.values.len()).max().unwrap_or(0);
        if query.equal.len() + bound_fields > def.fields.len() {
            return Err(StoreError::InvalidQuery(format!(
                "index {:?} has {} fields, the query names {}",
                def.name,
                def.fields.len(),
                query.equal.len() + bound_fields
            )));
        }
        let mut prefix = keys.index_tag(&def.name).to_vec();
        for value in &query.equal {
            encode_value(keys, &def.name, value, &mut prefix);
        }
        let bound_key = |bound: &Bound| -> Result<Vec<u8>, StoreError> {
            let mut key = prefix.clone();
            for value in &bound.values {
                if matches!(value, IndexValue::Text(_)) {
                    return Err(StoreError::InvalidQuery(
                        "a range needs integer or boolean values: text is indexed by keyed hash, for equality only"
                            .into(),
                    ));
                }
                encode_value(keys, &def.name, value, &mut key);
            }
            Ok(key)
        };
        let mut start = prefix.clone();
        let mut end = prefix_end(&prefix);
        if let Some(lower) = &query.lower {
            let key = bound_key(lower)?;
            start = if lower.inclusive { key } else { prefix_end(&key).unwrap_or(key) };
        }
        if let Some(upper) = &query.upper {
            let key = bound_key(upper)?;
            end = if upper.inclusive { prefix_end(&key) } else { Some(key) };
        }
        if let Some(token) = &query.page_token {
            let last = data_encoding::HEXLOWER
                .decode(token.as_bytes())
                .map_err(|_| StoreError::InvalidQuery("malformed page token".into()))?;
            if query.descending {
                end = Some(last);
            } else {
                let mut after = last;
                after.push(0);
                start = after;
            }
        }
        let range = match end {
            Some(end) if end <= start => return Ok(QueryPage { documents: Vec::new(), next_page_token: None }),
            Some(end) => self.trees()?.index.range(start..end),
            None => self.trees()?.index.range(start..),
        };
        let entries: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            if query.descending { Box::new(range.rev()) } else { Box::new(range) };
        let mut documents = Vec::new();
        let mut last_key = None;
        for entry in entries {
            if query.limit != 0 && documents.len() >= query.limit {
                return Ok(QueryPage {
                    documents,
                    next_page_token: last_key.map(|key: sled::IVec| data_encoding::HEXLOWER.encode(&key)),
                });
            }
            let (key, _) = entry?;
            let storage_key = &key[key.len().saturating_sub(STORAGE_KEY_LEN)..];
            if let Some(record) = self.load(keys, storage_key)?.filter(DocumentRecord::live) {
                documents.push(record.to_document());
            }
            last_key = Some(key);
        }
        Ok(QueryPage { documents, next_page_token: None })
    }

    pub fn counter(&self, name: &str) -> Result<i64, StoreError> {
        let unlocked = self.unlocked()?;
        let unlocked = read(&unlocked);
        let key = unlocked.keys.counter_key(name);
        read_counter(&unlocked.keys, &self.trees()?.counters, &key)
    }

    // --- writes ---------------------------------------------------------------

    pub fn put(&self, op: PutOp) -> Result<(String, Change), StoreError> {
        let (mut results, mut changes) = self.apply(vec![Write::Put(op)])?;
        match (results.pop(), changes.pop()) {
            (Some(WriteResult::Rev(rev)), Some(change)) => Ok((rev, change)),
            _ => Err(StoreError::Corrupt("write result")),
        }
    }

    pub fn delete(&self, id: &str, expected_rev: Option<String>) -> Result<(String, Change), StoreError> {
        let (mut results, mut changes) = self.apply(vec![Write::Delete { id: id.to_owned(), expected_rev }])?;
        match (results.pop(), changes.pop()) {
            (Some(WriteResult::Rev(rev)), Some(change)) => Ok((rev, change)),
            _ => Err(StoreError::Corrupt("write result")),
        }
    }

    pub fn add_to_counter(&self, name: &str, delta: i64) -> Result<i64, StoreError> {
        // Adding nothing reads: it needs no room on the disk.
        if delta == 0 {
            return self.counter(name);
        }
        match self.apply(vec![Write::AddToCounter { name: name.to_owned(), delta }])?.0.pop() {
            Some(WriteResult::Counter(value)) => Ok(value),
            _ => Err(StoreError::Corrupt("write result")),
        }
    }

    /// Applies every write or none, durably; returns each write's result and
    /// the changes committed, in order.
    pub fn apply(&self, writes: Vec<Write>) -> Result<(Vec<WriteResult>, Vec<Change>), StoreError> {
        let _writer = lock(&self.writer);
        let unlocked = self.unlocked()?;
        let unlocked = read(&unlocked);
        let mut pending = Pending::new(self, &unlocked)?;
        let results = writes.into_iter().map(|write| pending.apply(write)).collect::<Result<Vec<_>, _>>()?;
        let changes = pending.commit()?;
        Ok((results, changes))
    }
}

/// How a passphrase change proves the user may make it.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    Passphrase(&'a str),
    RecoveryCode(&'a str),
}

pub(crate) fn u64_from(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

pub(crate) fn open_document(keys: &Keys, storage_key: &[u8], sealed: &[u8]) -> Result<DocumentRecord, StoreError> {
    let plain = keys.open(storage_key, DOCUMENT_CONTEXT, sealed).map_err(|_| StoreError::Corrupt("document"))?;
    serde_json::from_slice(&plain).map_err(|_| StoreError::Corrupt("document"))
}

fn read_counter(keys: &Keys, counters: &sled::Tree, key: &[u8]) -> Result<i64, StoreError> {
    match counters.get(key)? {
        None => Ok(0),
        Some(sealed) => {
            let plain = keys.open(key, COUNTER_CONTEXT, &sealed).map_err(|_| StoreError::Corrupt("counter"))?;
            let bytes: [u8; 8] = plain.as_slice().try_into().map_err(|_| StoreError::Corrupt("counter"))?;
            Ok(i64::from_be_bytes(bytes))
        }
    }
}

/// Type tag and fixed-length encoding, so concatenated values sort and
/// prefix-match correctly: text by keyed hash, integers order-preserving.
fn encode_value(keys: &Keys, index: &str, value: &IndexValue, out: &mut Vec<u8>) {
    match value {
        IndexValue::Boolean(value) => out.extend_from_slice(&[1, u8::from(*value)]),
        IndexValue::Integer(value) => {
            out.push(2);
            out.extend_from_slice(&((*value as u64) ^ (1 << 63)).to_be_bytes());
        }
        IndexValue::Text(value) => {
            out.push(3);
            out.extend_from_slice(&keys.index_text(index, value));
        }
    }
}

fn index_value(value: &serde_json::Value) -> Option<IndexValue> {
    match value {
        serde_json::Value::String(text) => Some(IndexValue::Text(text.clone())),
        serde_json::Value::Bool(value) => Some(IndexValue::Boolean(*value)),
        serde_json::Value::Number(number) => number.as_i64().map(IndexValue::Integer),
        _ => None,
    }
}

/// The index entries of a live document (none if a field is missing or not
/// a string, integer or boolean).
fn index_keys(keys: &Keys, def: &IndexDef, record: &DocumentRecord, storage_key: &[u8]) -> Vec<Vec<u8>> {
    if !record.live() || record.collection != def.collection {
        return Vec::new();
    }
    let Ok(content) = serde_json::from_str::<serde_json::Value>(record.content.get()) else { return Vec::new() };
    // One entry per combination: a field holding an array indexes each element.
    let mut prefixes = vec![keys.index_tag(&def.name).to_vec()];
    for field in &def.fields {
        let values: Vec<IndexValue> = match content.pointer(field) {
            Some(serde_json::Value::Array(items)) => items.iter().filter_map(index_value).collect(),
            Some(value) => index_value(value).into_iter().collect(),
            None => Vec::new(),
        };
        if values.is_empty() {
            return Vec::new();
        }
        prefixes = prefixes
            .iter()
            .flat_map(|prefix| {
                values.iter().map(move |value| {
                    let mut key = prefix.clone();
                    encode_value(keys, &def.name, value, &mut key);
                    key
                })
            })
            .collect();
    }
    prefixes.sort();
    prefixes.dedup();
    for key in &mut prefixes {
        key.extend_from_slice(storage_key);
    }
    prefixes
}

/// The sync bookkeeping a local write keeps from the version it replaces.
fn sync_fields(previous: Option<&DocumentRecord>) -> (Option<String>, Option<Box<RawValue>>) {
    previous.map(|previous| (previous.synced_rev.clone(), previous.base.clone())).unwrap_or_default()
}

pub(crate) fn null() -> Box<RawValue> {
    #[allow(clippy::expect_used)] // "null" is JSON
    RawValue::from_string("null".into()).expect("null is JSON")
}

/// The state of one batch while it is computed: what it read, and what it
/// will write. Nothing touches the disk until `commit`.
pub(crate) struct Pending<'a> {
    /// The database as the batch began: it commits there or not at all.
    trees: Arc<Trees>,
    unlocked: &'a Unlocked,
    sequence: u64,
    /// Documents as this batch has left them (None: absent).
    documents: HashMap<[u8; 32], Option<DocumentRecord>>,
    /// Sequence of each touched document before the batch.
    original_sequences: HashMap<[u8; 32], Option<u64>>,
    counters: HashMap<[u8; 32], i64>,
    /// Index entries: true = insert, false = remove.
    index: BTreeMap<Vec<u8>, bool>,
    changed: Vec<[u8; 32]>,
}

impl<'a> Pending<'a> {
    pub(crate) fn new(store: &Store, unlocked: &'a Unlocked) -> Result<Self, StoreError> {
        store.check_room()?;
        let trees = store.trees()?;
        Ok(Self {
            sequence: trees.sequence()?,
            trees,
            unlocked,
            documents: HashMap::new(),
            original_sequences: HashMap::new(),
            counters: HashMap::new(),
            index: BTreeMap::new(),
            changed: Vec::new(),
        })
    }

    pub(crate) fn current(&mut self, storage_key: [u8; 32]) -> Result<Option<&DocumentRecord>, StoreError> {
        if !self.documents.contains_key(&storage_key) {
            let record = self.trees.load(&self.unlocked.keys, &storage_key)?;
            self.original_sequences.insert(storage_key, record.as_ref().map(|record| record.sequence));
            self.documents.insert(storage_key, record);
        }
        Ok(self.documents.get(&storage_key).and_then(Option::as_ref))
    }

    fn check_rev(&mut self, id: &str, storage_key: [u8; 32], expected: &str) -> Result<(), StoreError> {
        let actual = self.current(storage_key)?.filter(|record| record.live()).map(|record| record.rev.clone());
        let actual = actual.unwrap_or_default();
        if actual != expected {
            return Err(StoreError::Conflict { id: id.to_owned(), expected: expected.to_owned(), actual });
        }
        Ok(())
    }

    fn apply(&mut self, write: Write) -> Result<WriteResult, StoreError> {
        match write {
            Write::Put(op) => self.put(op),
            Write::Delete { id, expected_rev } => self.delete(&id, expected_rev),
            Write::Check { id, rev } => {
                let storage_key = self.unlocked.keys.document_key(&id);
                self.check_rev(&id, storage_key, &rev)?;
                Ok(WriteResult::Checked)
            }
            Write::AddToCounter { name, delta } => {
                let key = self.unlocked.keys.counter_key(&name);
                let current = match self.counters.get(&key) {
                    Some(value) => *value,
                    None => read_counter(&self.unlocked.keys, &self.trees.counters, &key)?,
                };
                let value = current.checked_add(delta).ok_or_else(|| StoreError::InvalidDocument {
                    id: name.clone(),
                    reason: "counter overflow".into(),
                })?;
                self.counters.insert(key, value);
                Ok(WriteResult::Counter(value))
            }
        }
    }

    fn put(&mut self, op: PutOp) -> Result<WriteResult, StoreError> {
        let PutOp { id, collection, content, expected_rev, create_only } = op;
        if id.is_empty() || id.len() > MAX_ID_BYTES {
            return Err(StoreError::InvalidDocument { id, reason: format!("an id has 1 to {MAX_ID_BYTES} bytes") });
        }
        if content.len() > MAX_DOCUMENT_BYTES {
            return Err(StoreError::TooLarge { id, size: content.len(), max: MAX_DOCUMENT_BYTES });
        }
        if !self.unlocked.schema.collections.contains_key(&collection) {
            return Err(StoreError::UnknownCollection(collection));
        }
        let content = RawValue::from_string(content).map_err(|error| StoreError::InvalidDocument {
            id: id.clone(),
            reason: format!("content is not JSON: {error}"),
        })?;
        let storage_key = self.unlocked.keys.document_key(&id);
        if let Some(expected) = &expected_rev {
            self.check_rev(&id, storage_key, expected)?;
        }
        let previous = self.current(storage_key)?;
        if create_only && previous.is_some_and(DocumentRecord::live) {
            return Err(StoreError::AlreadyExists(id));
        }
        if let Some(previous) = previous.filter(|previous| previous.live() && previous.collection != collection) {
            return Err(StoreError::InvalidDocument {
                id,
                reason: format!("it belongs to collection {:?}", previous.collection),
            });
        }
        self.write_version(storage_key, id, collection, content, false)
    }

    fn delete(&mut self, id: &str, expected_rev: Option<String>) -> Result<WriteResult, StoreError> {
        let storage_key = self.unlocked.keys.document_key(id);
        if let Some(expected) = &expected_rev {
            self.check_rev(id, storage_key, expected)?;
        }
        let Some(previous) = self.current(storage_key)?.filter(|previous| previous.live()) else {
            return Err(StoreError::NotFound(id.to_owned()));
        };
        let collection = previous.collection.clone();
        self.write_version(storage_key, id.to_owned(), collection, null(), true)
    }

    /// Writes a new local version over the current one (a deletion writes a
    /// tombstone), keeping what sync knows of the document.
    fn write_version(
        &mut self,
        storage_key: [u8; 32],
        id: String,
        collection: String,
        content: Box<RawValue>,
        deleted: bool,
    ) -> Result<WriteResult, StoreError> {
        let previous = self.current(storage_key)?;
        let rev = next_rev(previous.map(|previous| previous.rev.as_str()));
        let (synced_rev, base) = sync_fields(previous);
        let record = DocumentRecord {
            id,
            collection,
            rev: rev.clone(),
            content,
            deleted,
            updated_ms: now_ms(),
            sequence: 0,
            synced_rev,
            base,
        };
        self.replace(storage_key, record)?;
        Ok(WriteResult::Rev(rev))
    }

    /// Puts `record` in place of the current version, moving its index entries.
    pub(crate) fn replace(&mut self, storage_key: [u8; 32], mut record: DocumentRecord) -> Result<(), StoreError> {
        let keys = &self.unlocked.keys;
        let indexes: Vec<&IndexDef> =
            self.unlocked.schema.indexes.values().filter(|def| def.collection == record.collection).collect();
        // Every check before any change: a refused record leaves the batch as it was
        // (sync skips a remote document it cannot take and goes on with the batch).
        let mut added = Vec::new();
        for def in &indexes {
            for key in index_keys(keys, def, &record, &storage_key) {
                if def.unique {
                    self.check_unique(def, &key)?;
                }
                added.push(key);
            }
        }
        if let Some(previous) = self.documents.get(&storage_key).and_then(Option::as_ref) {
            for def in &indexes {
                for key in index_keys(keys, def, previous, &storage_key) {
                    self.index.insert(key, false);
                }
            }
        }
        for key in added {
            self.index.insert(key, true);
        }
        self.sequence += 1;
        record.sequence = self.sequence;
        self.documents.insert(storage_key, Some(record));
        self.changed.retain(|key| *key != storage_key);
        self.changed.push(storage_key);
        Ok(())
    }

    fn check_unique(&self, def: &IndexDef, key: &[u8]) -> Result<(), StoreError> {
        let (prefix, own) = key.split_at(key.len() - STORAGE_KEY_LEN);
        let other_in_batch = self
            .index
            .range(prefix.to_vec()..)
            .take_while(|(other, _)| other.starts_with(prefix))
            .any(|(other, insert)| *insert && !other.ends_with(own));
        let mut other_on_disk = false;
        for entry in self.trees.index.scan_prefix(prefix) {
            let (other, _) = entry?;
            let removed_by_batch = self.index.get(other.as_ref()) == Some(&false);
            other_on_disk |= !other.ends_with(own) && !removed_by_batch;
        }
        if other_in_batch || other_on_disk {
            return Err(StoreError::UniqueViolation { index: def.name.clone() });
        }
        Ok(())
    }

    /// Writes everything in one transaction and flushes it to disk.
    pub(crate) fn commit(self) -> Result<Vec<Change>, StoreError> {
        let keys = &self.unlocked.keys;
        let mut documents = Vec::with_capacity(self.changed.len());
        let mut changes = Vec::with_capacity(self.changed.len());
        for storage_key in &self.changed {
            let Some(Some(record)) = self.documents.get(storage_key) else { continue };
            let plain =
                zeroize::Zeroizing::new(serde_json::to_vec(record).map_err(|_| StoreError::Corrupt("document"))?);
            documents.push((*storage_key, keys.seal(storage_key, DOCUMENT_CONTEXT, &plain)));
            changes.push(Change { sequence: record.sequence, document: record.to_document() });
        }
        let counters: Vec<([u8; 32], Vec<u8>)> = self
            .counters
            .iter()
            .map(|(key, value)| (*key, keys.seal(key, COUNTER_CONTEXT, &value.to_be_bytes())))
            .collect();
        if documents.is_empty() && counters.is_empty() {
            return Ok(changes);
        }
        let trees = &self.trees;
        (&trees.documents, &trees.changes, &trees.index, &trees.counters, &trees.meta)
            .transaction(|(tx_documents, tx_changes, tx_index, tx_counters, tx_meta)| {
                for (storage_key, sealed) in &documents {
                    if let Some(Some(old)) = self.original_sequences.get(storage_key) {
                        tx_changes.remove(&old.to_be_bytes())?;
                    }
                    tx_documents.insert(storage_key, sealed.as_slice())?;
                }
                // `documents` and `changes` are in the same order.
                for ((storage_key, _), change) in documents.iter().zip(&changes) {
                    tx_changes.insert(&change.sequence.to_be_bytes(), storage_key)?;
                }
                for (key, insert) in &self.index {
                    if *insert {
                        tx_index.insert(key.as_slice(), &[])?;
                    } else {
                        tx_index.remove(key.as_slice())?;
                    }
                }
                for (key, sealed) in &counters {
                    tx_counters.insert(key, sealed.as_slice())?;
                }
                tx_meta.insert(SEQUENCE, &self.sequence.to_be_bytes())?;
                Ok(())
            })
            .map_err(|error: sled::transaction::TransactionError<()>| match error {
                sled::transaction::TransactionError::Storage(error) => StoreError::Storage(error),
                sled::transaction::TransactionError::Abort(()) => StoreError::Corrupt("transaction"),
            })?;
        trees.flush()?;
        Ok(changes)
    }
}

//! What the provider keeps per user: opaque sealed documents ordered by a
//! per-user generation, blobs, and the sealed storage secrets. It never sees
//! a key: ids, revisions and contents are whatever the client sealed.
//!
//! [`SyncStorage`] is the seam for other backends (PostgreSQL for
//! deployments of several provider instances); [`SledStorage`] is the
//! embedded default.
//!
//! Incoming messages (up to the MX's 60 MiB) are written and read as
//! streams ([`SyncStorage::deposit_incoming_from`],
//! [`SyncStorage::read_incoming`]): the MX encrypts straight into storage
//! and a device fetches a chunk at a time, so neither holds the ciphertext
//! whole in memory. [`SledStorage`] keeps their bytes in files beside its
//! database, not as sled values: a sled value is copied on insert and on
//! serialization and stays in sled's page cache.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

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
    #[error("incoming message: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0:?} is not an incoming message id")]
    IncomingId(String),
}

/// Where the bytes of an incoming message or a blob are written as they
/// are made.
pub type ByteSink = dyn Write + Send + Sync;

/// An incoming message's or a blob's bytes, read from where they are kept.
pub type ByteReader = Box<dyn Read + Send>;

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
    /// [`SyncStorage::put_blob`] of the bytes `write` writes into the sink
    /// it is given, as they come; nothing is kept if `write` fails. Durable
    /// when it returns. By default the bytes are gathered in memory.
    fn put_blob_from(
        &self,
        user: &str,
        id: &[u8],
        write: &mut dyn FnMut(&mut ByteSink) -> std::io::Result<()>,
    ) -> Result<(), StorageError> {
        let mut data = Vec::new();
        write(&mut data)?;
        self.put_blob(user, id, &data)
    }
    /// A blob's bytes from `offset` as a reader, to be served a chunk at a
    /// time. By default [`SyncStorage::get_blob`], in memory.
    fn read_blob(&self, user: &str, id: &[u8], offset: u64) -> Result<Option<ByteReader>, StorageError> {
        Ok(self.get_blob(user, id)?.map(|data| {
            let mut reader = std::io::Cursor::new(data);
            reader.set_position(offset);
            Box::new(reader) as ByteReader
        }))
    }
    fn secrets(&self, user: &str) -> Result<Option<(Vec<u8>, u64)>, StorageError>;
    /// Compare-and-set on the version (0: none yet); returns the new version.
    fn put_secrets(&self, user: &str, blob: &[u8], expected_version: u64) -> Result<u64, StorageError>;

    /// Keeps an incoming message (already encrypted to the user) under a new
    /// id; durable when it returns.
    fn deposit_incoming(&self, user: &str, id: &str, received_ms: u64, data: &[u8]) -> Result<(), StorageError>;
    /// [`SyncStorage::deposit_incoming`] of the bytes `write` writes into
    /// the sink it is given, as it makes them (an encryption, say), so they
    /// need not be held whole; nothing is kept if `write` fails. Durable
    /// when it returns. By default the bytes are gathered in memory.
    fn deposit_incoming_from(
        &self,
        user: &str,
        id: &str,
        received_ms: u64,
        write: &mut dyn FnMut(&mut ByteSink) -> std::io::Result<()>,
    ) -> Result<(), StorageError> {
        let mut data = Vec::new();
        write(&mut data)?;
        self.deposit_incoming(user, id, received_ms, &data)
    }
    /// Incoming messages, oldest first, at most `limit` (0: all).
    fn list_incoming(&self, user: &str, limit: usize) -> Result<Vec<IncomingItem>, StorageError>;
    fn get_incoming(&self, user: &str, id: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// An incoming message's bytes as a reader, to be served a chunk at a
    /// time. By default [`SyncStorage::get_incoming`], in memory.
    fn read_incoming(&self, user: &str, id: &str) -> Result<Option<ByteReader>, StorageError> {
        Ok(self.get_incoming(user, id)?.map(|data| Box::new(std::io::Cursor::new(data)) as ByteReader))
    }
    /// Removes those of `ids` that exist; returns how many did.
    fn delete_incoming(&self, user: &str, ids: &[String]) -> Result<u32, StorageError>;
}

/// The embedded default: one sled database, a few trees per user; the bytes
/// of incoming messages in files under `incoming/` in the database's
/// directory, `incoming/<SHA-256 of the user, hex>/<id>`, written as
/// `<id>.<pid>.<n>.part`, synced and renamed before the item is listed. Items
/// deposited before those files existed keep their bytes in sled and are
/// read from there: both forms are read, nothing is migrated.
#[derive(Debug, Clone)]
pub struct SledStorage {
    db: sled::Db,
    incoming: PathBuf,
    blobs: PathBuf,
}

fn tree_name(user: &str, kind: &str) -> Vec<u8> {
    // A length prefix keeps users whose names share a prefix apart.
    let mut name = (user.len() as u32).to_be_bytes().to_vec();
    name.extend_from_slice(user.as_bytes());
    name.extend_from_slice(kind.as_bytes());
    name
}

impl SledStorage {
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let db = sled::Config::new().path(dir).mode(sled::Mode::HighThroughput).open()?;
        Ok(Self { db, incoming: dir.join(INCOMING_DIR), blobs: dir.join(BLOBS_DIR) })
    }

    fn tree(&self, user: &str, kind: &str) -> Result<sled::Tree, StorageError> {
        Ok(self.db.open_tree(tree_name(user, kind))?)
    }

    /// The directory of `user`'s incoming files.
    fn incoming_dir(&self, user: &str) -> PathBuf {
        self.incoming.join(data_encoding::HEXLOWER.encode(&Sha256::digest(user.as_bytes())))
    }

    /// The file of `user`'s blob `id`; none for an id longer than 64 bytes
    /// (such a blob is kept in sled).
    fn blob_file(&self, user: &str, id: &[u8]) -> Option<PathBuf> {
        (1..=64).contains(&id.len()).then(|| self.blobs_dir(user).join(data_encoding::HEXLOWER.encode(id)))
    }

    fn blobs_dir(&self, user: &str) -> PathBuf {
        self.blobs.join(data_encoding::HEXLOWER.encode(&Sha256::digest(user.as_bytes())))
    }

    /// The file of `user`'s incoming item `id`, if `id` can name one.
    fn incoming_file(&self, user: &str, id: &str) -> Option<PathBuf> {
        valid_incoming_id(id).then(|| self.incoming_dir(user).join(id))
    }
}

/// Whether `id` can name an incoming file: 1 to 64 ASCII letters and digits
/// (the ids `deposit` makes are 32 hexadecimal digits).
fn valid_incoming_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|byte| byte.is_ascii_alphanumeric())
}

/// Creates `dir` if it is missing, durably (its parent synced).
fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => sync_parent(dir),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(parent) => std::fs::File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}

/// A writer that counts what goes through it.
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.written += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the file `path` with `write`: synced and in place when it
/// returns, nothing left behind when it fails. Its size.
fn write_file(path: &Path, write: &mut dyn FnMut(&mut ByteSink) -> std::io::Result<()>) -> std::io::Result<u64> {
    // A name of its own for each writing: two uploads of one blob at once
    // (two devices) must not write into one file, or the first to finish
    // could put in place a file the other had cut short.
    static WRITINGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let writing = WRITINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut part = path.as_os_str().to_owned();
    part.push(format!(".{}.{writing}.part", std::process::id()));
    let part = PathBuf::from(part);
    let written = (|| {
        let file = std::fs::File::create(&part)?;
        let mut sink = Counting { inner: std::io::BufWriter::with_capacity(INCOMING_CHUNK, file), written: 0 };
        write(&mut sink)?;
        let file = sink.inner.into_inner().map_err(std::io::IntoInnerError::into_error)?;
        file.sync_all()?;
        std::fs::rename(&part, path)?;
        sync_parent(path)?;
        Ok(sink.written)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    written
}

/// How much of an incoming file is written or read at once.
pub const INCOMING_CHUNK: usize = 64 * 1024;

const GENERATION: &[u8] = b"generation";
/// Incoming messages: `incoming` maps an id to its arrival time and size,
/// `incoming-data` to its bytes (items deposited before the bytes went to
/// files); the files are in the directory `INCOMING_DIR`.
const INCOMING: &str = "incoming";
const INCOMING_DIR: &str = "incoming";
/// Blobs: files in the directory `BLOBS_DIR` (sled's own `blobs` directory
/// is another), or values of the `blobs` tree (blobs put before the files
/// existed, and those with ids longer than 64 bytes).
const BLOBS_DIR: &str = "blob-files";
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
        if let Some(path) = self.blob_file(user, id)
            && path.try_exists()?
        {
            return Ok(true);
        }
        Ok(self.tree(user, "blobs")?.contains_key(id)?)
    }

    fn put_blob(&self, user: &str, id: &[u8], data: &[u8]) -> Result<(), StorageError> {
        self.put_blob_from(user, id, &mut |sink| sink.write_all(data))
    }

    fn put_blob_from(
        &self,
        user: &str,
        id: &[u8],
        write: &mut dyn FnMut(&mut ByteSink) -> std::io::Result<()>,
    ) -> Result<(), StorageError> {
        let Some(path) = self.blob_file(user, id) else {
            let mut data = Vec::new();
            write(&mut data)?;
            self.tree(user, "blobs")?.insert(id, data)?;
            self.db.flush()?;
            return Ok(());
        };
        ensure_dir(&self.blobs)?;
        ensure_dir(&self.blobs_dir(user))?;
        write_file(&path, write)?;
        Ok(())
    }

    fn get_blob(&self, user: &str, id: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let Some(mut reader) = self.read_blob(user, id, 0)? else { return Ok(None) };
        let mut data = Vec::new();
        reader.read_to_end(&mut data)?;
        Ok(Some(data))
    }

    fn read_blob(&self, user: &str, id: &[u8], offset: u64) -> Result<Option<ByteReader>, StorageError> {
        if let Some(path) = self.blob_file(user, id) {
            match std::fs::File::open(path) {
                Ok(mut file) => {
                    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset))?;
                    return Ok(Some(Box::new(file)));
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error.into()),
            }
        }
        // Put before blobs went to files, or an id too long for a file name.
        let bytes = self.tree(user, "blobs")?.get(id)?;
        Ok(bytes.map(|bytes| {
            let mut reader = std::io::Cursor::new(bytes);
            reader.set_position(offset);
            Box::new(reader) as ByteReader
        }))
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
        self.deposit_incoming_from(user, id, received_ms, &mut |sink| sink.write_all(data))
    }

    fn deposit_incoming_from(
        &self,
        user: &str,
        id: &str,
        received_ms: u64,
        write: &mut dyn FnMut(&mut ByteSink) -> std::io::Result<()>,
    ) -> Result<(), StorageError> {
        let path = self.incoming_file(user, id).ok_or_else(|| StorageError::IncomingId(id.to_owned()))?;
        let items = self.tree(user, INCOMING)?;
        ensure_dir(&self.incoming)?;
        ensure_dir(&self.incoming_dir(user))?;
        // The bytes first: an item is listed only once they are there.
        let size = write_file(&path, write)?;
        let mut meta = received_ms.to_be_bytes().to_vec();
        meta.extend_from_slice(&size.to_be_bytes());
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
        let Some(mut reader) = self.read_incoming(user, id)? else { return Ok(None) };
        let mut data = Vec::new();
        reader.read_to_end(&mut data)?;
        Ok(Some(data))
    }

    fn read_incoming(&self, user: &str, id: &str) -> Result<Option<ByteReader>, StorageError> {
        if !self.tree(user, INCOMING)?.contains_key(id.as_bytes())? {
            return Ok(None);
        }
        if let Some(path) = self.incoming_file(user, id) {
            match std::fs::File::open(path) {
                Ok(file) => return Ok(Some(Box::new(file))),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error.into()),
            }
        }
        // Deposited before the bytes went to files.
        let bytes = self.tree(user, INCOMING_DATA)?.get(id.as_bytes())?;
        Ok(bytes.map(|bytes| Box::new(std::io::Cursor::new(bytes)) as ByteReader))
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
        // A crash here leaves files no item names: ciphertext nobody serves.
        for path in ids.iter().filter_map(|id| self.incoming_file(user, id)) {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const USER: &str = "bob@example.org";

    fn files(dir: &Path) -> Vec<String> {
        let mut names = Vec::new();
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries {
                let entry = entry.unwrap();
                if entry.file_type().unwrap().is_dir() {
                    names.extend(files(&entry.path()));
                } else {
                    names.push(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        names
    }

    #[test]
    fn incoming_bytes_are_written_and_read_as_streams() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SledStorage::open(dir.path()).unwrap();
        let message: Vec<u8> = (0..200_000u32).map(|n| (n % 251) as u8).collect();
        storage
            .deposit_incoming_from(USER, "a1", 7, &mut |sink| {
                for piece in message.chunks(1000) {
                    sink.write_all(piece)?;
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(
            storage.list_incoming(USER, 0).unwrap(),
            [IncomingItem { id: "a1".into(), size: 200_000, received_ms: 7 }]
        );
        let mut read = Vec::new();
        storage.read_incoming(USER, "a1").unwrap().unwrap().read_to_end(&mut read).unwrap();
        assert_eq!(read, message);
        assert_eq!(storage.get_incoming(USER, "a1").unwrap().unwrap(), message);
        // Another user's item is not there for this one.
        assert!(storage.read_incoming("carol@example.org", "a1").unwrap().is_none());
        assert_eq!(files(&dir.path().join(INCOMING_DIR)), ["a1"]);

        assert_eq!(storage.delete_incoming(USER, &["a1".into(), "b2".into()]).unwrap(), 1);
        assert!(storage.read_incoming(USER, "a1").unwrap().is_none());
        assert!(files(&dir.path().join(INCOMING_DIR)).is_empty());
    }

    #[test]
    fn a_failed_deposit_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SledStorage::open(dir.path()).unwrap();
        let failed = storage.deposit_incoming_from(USER, "a1", 7, &mut |sink| {
            sink.write_all(&[1; 100_000])?;
            Err(std::io::Error::other("encryption failed"))
        });
        assert!(matches!(failed, Err(StorageError::Io(_))), "{failed:?}");
        assert!(storage.list_incoming(USER, 0).unwrap().is_empty());
        assert!(files(&dir.path().join(INCOMING_DIR)).is_empty());
    }

    #[test]
    fn ids_that_cannot_name_a_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SledStorage::open(dir.path()).unwrap();
        for id in ["", "../a1", "a/b", "a1.part", &"a".repeat(65)] {
            let refused = storage.deposit_incoming(USER, id, 7, b"x");
            assert!(matches!(refused, Err(StorageError::IncomingId(_))), "{id:?}: {refused:?}");
            assert!(storage.read_incoming(USER, id).unwrap().is_none());
        }
        assert!(storage.list_incoming(USER, 0).unwrap().is_empty());
    }

    #[test]
    fn items_deposited_into_sled_are_still_read_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SledStorage::open(dir.path()).unwrap();
        // As deposits wrote them before the bytes went to files.
        let mut meta = 7u64.to_be_bytes().to_vec();
        meta.extend_from_slice(&3u64.to_be_bytes());
        storage.tree(USER, INCOMING_DATA).unwrap().insert("old1", &b"abc"[..]).unwrap();
        storage.tree(USER, INCOMING).unwrap().insert("old1", meta).unwrap();
        storage.deposit_incoming(USER, "new1", 8, b"defg").unwrap();

        let listed: Vec<String> = storage.list_incoming(USER, 0).unwrap().into_iter().map(|item| item.id).collect();
        assert_eq!(listed, ["old1", "new1"]);
        assert_eq!(storage.get_incoming(USER, "old1").unwrap().unwrap(), b"abc");
        assert_eq!(storage.get_incoming(USER, "new1").unwrap().unwrap(), b"defg");
        assert_eq!(storage.delete_incoming(USER, &["old1".into(), "new1".into()]).unwrap(), 2);
        assert!(storage.tree(USER, INCOMING_DATA).unwrap().is_empty());
        assert!(storage.list_incoming(USER, 0).unwrap().is_empty());
    }

    #[test]
    fn blobs_are_files_except_old_ones_and_long_ids() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SledStorage::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|n| (n % 253) as u8).collect();
        storage.put_blob(USER, b"new", &data).unwrap();
        let long = [7u8; 65];
        storage.put_blob(USER, &long, b"long").unwrap();
        // As put before blobs went to files.
        storage.tree(USER, "blobs").unwrap().insert("old", &b"abc"[..]).unwrap();
        let cut = storage.put_blob_from(USER, b"cut", &mut |sink| {
            sink.write_all(b"part")?;
            Err(std::io::Error::other("the upload was cut short"))
        });
        assert!(matches!(cut, Err(StorageError::Io(_))), "{cut:?}");

        assert_eq!(files(&dir.path().join(BLOBS_DIR)), [data_encoding::HEXLOWER.encode(b"new")]);
        for (id, expected) in [(&b"new"[..], &data[..]), (&long, b"long"), (b"old", b"abc")] {
            assert!(storage.has_blob(USER, id).unwrap());
            assert_eq!(storage.get_blob(USER, id).unwrap().unwrap(), expected);
            let mut rest = Vec::new();
            storage.read_blob(USER, id, 2).unwrap().unwrap().read_to_end(&mut rest).unwrap();
            assert_eq!(rest, expected[2..]);
        }
        assert!(!storage.has_blob(USER, b"cut").unwrap());
        assert!(!storage.has_blob("carol@example.org", b"new").unwrap());
        assert!(storage.read_blob(USER, b"none", 0).unwrap().is_none());
    }
}

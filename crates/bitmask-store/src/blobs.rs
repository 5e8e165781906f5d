//! Content-addressed blobs for large payloads (attachments), written and read
//! in chunks so a 25 MB message never sits in memory whole.
//!
//! A blob's id is a keyed hash of its SHA-256, so the same bytes are stored
//! once and the id reveals nothing. Chunks are sealed one by one under a key
//! bound to the upload's random prefix and the chunk's position, so chunks
//! cannot be reordered or moved between blobs; the sealed metadata records
//! the size and the number of chunks, so a truncated blob is detected.

use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::store::Store;
use crate::types::StoreError;

/// Plaintext bytes per sealed chunk.
pub const CHUNK_BYTES: usize = 64 * 1024;
const CHUNK_CONTEXT: &[u8] = b"blob chunk";
const META_CONTEXT: &[u8] = b"blob";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// Hex of the keyed content hash.
    pub id: String,
    pub size: u64,
    pub content_type: String,
    pub local_only: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct BlobMeta {
    prefix: [u8; 16],
    size: u64,
    chunks: u32,
    content_type: String,
    local_only: bool,
}

/// A blob being written; finish it with [`Store::finish_blob`] or drop it
/// with [`Store::abort_blob`].
#[derive(Debug)]
pub struct BlobUpload {
    prefix: [u8; 16],
    hasher: Sha256,
    buffer: Vec<u8>,
    chunks: u32,
    size: u64,
    content_type: String,
    local_only: bool,
}

fn chunk_key(prefix: &[u8; 16], index: u32) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..16].copy_from_slice(prefix);
    key[16..].copy_from_slice(&index.to_be_bytes());
    key
}

fn decode_id(id: &str) -> Result<Vec<u8>, StoreError> {
    data_encoding::HEXLOWER.decode(id.as_bytes()).map_err(|_| StoreError::NotFound(id.to_owned()))
}

impl Store {
    pub fn begin_blob(&self, content_type: &str, local_only: bool) -> Result<BlobUpload, StoreError> {
        self.unlocked()?;
        self.check_room()?;
        let mut prefix = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut prefix);
        Ok(BlobUpload {
            prefix,
            hasher: Sha256::new(),
            buffer: Vec::with_capacity(CHUNK_BYTES),
            chunks: 0,
            size: 0,
            content_type: content_type.to_owned(),
            local_only,
        })
    }

    /// Adds bytes to an upload; full chunks are sealed and written (not yet flushed).
    pub fn write_blob(&self, upload: &mut BlobUpload, mut data: &[u8]) -> Result<(), StoreError> {
        upload.hasher.update(data);
        upload.size += data.len() as u64;
        while !data.is_empty() {
            let take = (CHUNK_BYTES - upload.buffer.len()).min(data.len());
            upload.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            if upload.buffer.len() == CHUNK_BYTES {
                self.write_chunk(upload)?;
            }
        }
        Ok(())
    }

    fn write_chunk(&self, upload: &mut BlobUpload) -> Result<(), StoreError> {
        self.check_room()?;
        let unlocked = self.unlocked()?;
        let unlocked = crate::store::read(&unlocked);
        let key = chunk_key(&upload.prefix, upload.chunks);
        self.chunks_tree()?.insert(key, unlocked.keys.seal(&key, CHUNK_CONTEXT, &upload.buffer))?;
        upload.chunks += 1;
        upload.buffer.clear();
        Ok(())
    }

    /// Seals the last chunk, names the blob by its content and makes it
    /// durable. If the same content is stored already, the upload is dropped.
    pub fn finish_blob(&self, mut upload: BlobUpload, expected_size: Option<u64>) -> Result<BlobInfo, StoreError> {
        if let Some(expected) = expected_size.filter(|expected| *expected != upload.size) {
            self.abort_blob(upload)?;
            return Err(StoreError::InvalidDocument {
                id: "blob".into(),
                reason: format!("announced {expected} bytes, received a different amount"),
            });
        }
        if !upload.buffer.is_empty() || upload.chunks == 0 {
            self.write_chunk(&mut upload)?;
        }
        let unlocked = self.unlocked()?;
        let unlocked = crate::store::read(&unlocked);
        let digest: [u8; 32] = upload.hasher.clone().finalize().into();
        let id = unlocked.keys.blob_id(&digest);
        let info = BlobInfo {
            id: data_encoding::HEXLOWER.encode(&id),
            size: upload.size,
            content_type: upload.content_type.clone(),
            local_only: upload.local_only,
        };
        if self.blobs_tree()?.contains_key(id)? {
            drop(unlocked);
            self.abort_blob(upload)?;
            return Ok(info);
        }
        let meta = BlobMeta {
            prefix: upload.prefix,
            size: upload.size,
            chunks: upload.chunks,
            content_type: upload.content_type,
            local_only: upload.local_only,
        };
        let plain = serde_json::to_vec(&meta).map_err(|_| StoreError::Corrupt("blob"))?;
        self.blobs_tree()?.insert(id, unlocked.keys.seal(&id, META_CONTEXT, &plain))?;
        self.flush()?;
        Ok(info)
    }

    /// Removes the chunks of an unfinished upload.
    pub fn abort_blob(&self, upload: BlobUpload) -> Result<(), StoreError> {
        for index in 0..=upload.chunks {
            self.chunks_tree()?.remove(chunk_key(&upload.prefix, index))?;
        }
        Ok(())
    }

    fn blob_meta(&self, id: &str) -> Result<Option<(Vec<u8>, BlobMeta)>, StoreError> {
        let key = decode_id(id)?;
        let unlocked = self.unlocked()?;
        let unlocked = crate::store::read(&unlocked);
        let Some(sealed) = self.blobs_tree()?.get(&key)? else { return Ok(None) };
        let plain = unlocked.keys.open(&key, META_CONTEXT, &sealed).map_err(|_| StoreError::Corrupt("blob"))?;
        let meta = serde_json::from_slice(&plain).map_err(|_| StoreError::Corrupt("blob"))?;
        Ok(Some((key, meta)))
    }

    pub fn stat_blob(&self, id: &str) -> Result<Option<BlobInfo>, StoreError> {
        Ok(self.blob_meta(id)?.map(|(_, meta)| BlobInfo {
            id: id.to_owned(),
            size: meta.size,
            content_type: meta.content_type,
            local_only: meta.local_only,
        }))
    }

    /// The chunks covering `offset..offset+length` (length 0: to the end),
    /// opened one at a time by `each`.
    pub fn read_blob(
        &self,
        id: &str,
        offset: u64,
        length: u64,
        mut each: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let (_, meta) = self.blob_meta(id)?.ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        let end = if length == 0 { meta.size } else { offset.saturating_add(length).min(meta.size) };
        if offset >= end {
            return Ok(());
        }
        let unlocked = self.unlocked()?;
        let unlocked = crate::store::read(&unlocked);
        let first = (offset / CHUNK_BYTES as u64) as u32;
        let last = ((end - 1) / CHUNK_BYTES as u64) as u32;
        if last >= meta.chunks {
            return Err(StoreError::Corrupt("blob"));
        }
        for index in first..=last {
            let key = chunk_key(&meta.prefix, index);
            let sealed = self.chunks_tree()?.get(key)?.ok_or(StoreError::Corrupt("blob chunk"))?;
            let chunk =
                unlocked.keys.open(&key, CHUNK_CONTEXT, &sealed).map_err(|_| StoreError::Corrupt("blob chunk"))?;
            let chunk_start = u64::from(index) * CHUNK_BYTES as u64;
            let from = offset.saturating_sub(chunk_start) as usize;
            let to = ((end - chunk_start) as usize).min(chunk.len());
            if from > to || !each(&chunk[from..to]) {
                break;
            }
        }
        Ok(())
    }

    pub fn delete_blob(&self, id: &str) -> Result<bool, StoreError> {
        let Some((key, meta)) = self.blob_meta(id)? else { return Ok(false) };
        self.synced_blobs_tree()?.remove(&key)?;
        self.blobs_tree()?.remove(key)?;
        for index in 0..meta.chunks {
            self.chunks_tree()?.remove(chunk_key(&meta.prefix, index))?;
        }
        self.flush()?;
        Ok(true)
    }
}

/// Sealed blobs as the provider holds them: the sealed metadata, then each
/// sealed chunk, each with a 4-byte length in front.
impl Store {
    /// Blobs this device has and the provider does not (local-only ones excluded).
    pub fn unsynced_blobs(&self) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::new();
        for entry in self.blobs_tree()?.iter() {
            let (key, _) = entry?;
            if self.synced_blobs_tree()?.contains_key(&key)? {
                continue;
            }
            let id = data_encoding::HEXLOWER.encode(&key);
            if let Some((_, meta)) = self.blob_meta(&id)?
                && !meta.local_only
            {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    pub fn mark_blob_synced(&self, id: &str) -> Result<(), StoreError> {
        self.synced_blobs_tree()?.insert(decode_id(id)?, &[])?;
        self.flush()
    }

    /// The blob sealed as stored, for the provider (it opens nothing).
    pub fn export_blob(&self, id: &str) -> Result<Vec<u8>, StoreError> {
        let (key, meta) = self.blob_meta(id)?.ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        let sealed_meta = self.blobs_tree()?.get(&key)?.ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        let mut out = Vec::new();
        let mut frame = |bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            out.extend_from_slice(bytes);
        };
        frame(&sealed_meta);
        for index in 0..meta.chunks {
            let chunk =
                self.chunks_tree()?.get(chunk_key(&meta.prefix, index))?.ok_or(StoreError::Corrupt("blob chunk"))?;
            frame(&chunk);
        }
        Ok(out)
    }

    /// Takes in a blob from the provider after checking that its metadata
    /// and every chunk open under this account's keys and its id.
    pub fn import_blob(&self, id: &str, exported: &[u8]) -> Result<BlobInfo, StoreError> {
        let key = decode_id(id)?;
        self.check_room()?;
        let corrupt = || StoreError::Corrupt("synced blob");
        let mut frames = Vec::new();
        let mut rest = exported;
        while !rest.is_empty() {
            let (length, tail) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
            let length = u32::from_be_bytes(*length) as usize;
            let frame = tail.get(..length).ok_or_else(corrupt)?;
            frames.push(frame);
            rest = &tail[length..];
        }
        let (sealed_meta, chunks) = frames.split_first().ok_or_else(corrupt)?;
        let unlocked = self.unlocked()?;
        let unlocked = crate::store::read(&unlocked);
        let plain = unlocked.keys.open(&key, META_CONTEXT, sealed_meta).map_err(|_| corrupt())?;
        let meta: BlobMeta = serde_json::from_slice(&plain).map_err(|_| corrupt())?;
        if chunks.len() != meta.chunks as usize {
            return Err(corrupt());
        }
        let mut batch = sled::Batch::default();
        for (index, sealed) in chunks.iter().enumerate() {
            let chunk = chunk_key(&meta.prefix, index as u32);
            unlocked.keys.open(&chunk, CHUNK_CONTEXT, sealed).map_err(|_| corrupt())?;
            batch.insert(&chunk[..], *sealed);
        }
        self.chunks_tree()?.apply_batch(batch)?;
        self.blobs_tree()?.insert(&key, *sealed_meta)?;
        self.synced_blobs_tree()?.insert(&key, &[])?;
        self.flush()?;
        Ok(BlobInfo {
            id: id.to_owned(),
            size: meta.size,
            content_type: meta.content_type,
            local_only: meta.local_only,
        })
    }
}

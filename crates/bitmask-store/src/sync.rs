//! The client half of sync, without the network: what to send, and how to
//! take in what the provider sends.
//!
//! - [`Store::outgoing`] lists local changes not yet accepted by the
//!   provider, sealed for it: the id is the keyed storage key, the revision a
//!   keyed tag, the payload sealed with the revision bound in.
//! - [`Store::mark_pushed`] records what the provider accepted.
//! - [`Store::apply_remote`] opens a document from the provider, refuses one
//!   that was tampered with, swapped or rolled back, and resolves a conflict
//!   with a local edit by the collection's policy (documented on
//!   [`ConflictPolicy`]): `MergeSets` merges three ways against the last
//!   synced version (array fields as sets; other fields: a local change wins,
//!   and a deletion wins over an edit); `LastWriterWins` keeps the later
//!   write; `Immutable` accepts only an identical version.
//!
//! Revisions are "N-random": N counts edits and only grows, which is what
//! makes a rollback visible.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::Store;
use crate::store::{DocumentRecord, Pending, Unlocked, null, numbered_rev, open_document, read, rev_number, u64_from};
use crate::types::{Change, ConflictPolicy, StoreError};

const SYNC_CONTEXT: &[u8] = b"sync";
const PUSHED: &[u8] = b"sync pushed sequence";
const PULLED: &[u8] = b"sync pulled generation";

/// A local change, sealed for the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingDocument {
    pub id: Vec<u8>,
    pub rev: Vec<u8>,
    pub parent_rev: Vec<u8>,
    pub sealed: Vec<u8>,
    pub deleted: bool,
    pub sequence: u64,
    local_rev: String,
}

/// A document as the provider sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDocument {
    pub id: Vec<u8>,
    pub rev: Vec<u8>,
    pub sealed: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteOutcome {
    /// Already here.
    Unchanged,
    /// Taken as it came.
    Applied(Change),
    /// Merged with a local edit: the result is a new local change to push.
    Merged(Change),
}

/// Where sync stands: local changes up to `pushed_sequence` are at the
/// provider, and its changes up to `pulled_generation` are here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncCursor {
    pub pushed_sequence: u64,
    pub pulled_generation: u64,
}

/// What is sealed for the provider.
#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    id: String,
    collection: String,
    rev: String,
    content: Box<RawValue>,
    deleted: bool,
    updated_ms: u64,
}

fn meta_u64(store: &Store, key: &[u8]) -> Result<u64, StoreError> {
    Ok(store.meta_tree().get(key)?.map(|bytes| u64_from(&bytes)).unwrap_or(0))
}

impl Store {
    pub fn sync_cursor(&self) -> Result<SyncCursor, StoreError> {
        Ok(SyncCursor { pushed_sequence: meta_u64(self, PUSHED)?, pulled_generation: meta_u64(self, PULLED)? })
    }

    /// Records that the provider's changes up to `generation` are applied.
    pub fn set_pulled_generation(&self, generation: u64) -> Result<(), StoreError> {
        self.meta_tree().insert(PULLED, &generation.to_be_bytes())?;
        self.flush()
    }

    /// Local changes the provider does not have, at most `limit` (0: all),
    /// in sequence order.
    pub fn outgoing(&self, limit: usize) -> Result<Vec<OutgoingDocument>, StoreError> {
        let unlocked = self.unlocked()?;
        let unlocked = read(&unlocked);
        let keys = &unlocked.keys;
        let since = meta_u64(self, PUSHED)?;
        let mut out = Vec::new();
        for entry in self.changes_tree().range(since.saturating_add(1).to_be_bytes()..) {
            if limit != 0 && out.len() >= limit {
                break;
            }
            let (_, storage_key) = entry?;
            let Some(record) = self.documents_tree().get(&storage_key)? else { continue };
            let record = open_document(keys, &storage_key, &record)?;
            let local_only = unlocked.schema.collections.get(&record.collection).is_some_and(|def| def.local_only);
            if local_only {
                continue;
            }
            if record.synced_rev.as_deref() == Some(record.rev.as_str()) {
                continue; // it came from the provider
            }
            let payload = Payload {
                id: record.id.clone(),
                collection: record.collection.clone(),
                rev: record.rev.clone(),
                content: record.content.clone(),
                deleted: record.deleted,
                updated_ms: record.updated_ms,
            };
            let plain =
                zeroize::Zeroizing::new(serde_json::to_vec(&payload).map_err(|_| StoreError::Corrupt("document"))?);
            let rev = keys.rev_tag(&storage_key, &record.rev);
            let mut context = SYNC_CONTEXT.to_vec();
            context.extend_from_slice(&rev);
            out.push(OutgoingDocument {
                id: storage_key.to_vec(),
                parent_rev: record
                    .synced_rev
                    .as_deref()
                    .map(|synced| keys.rev_tag(&storage_key, synced))
                    .unwrap_or_default(),
                sealed: keys.seal(&storage_key, &context, &plain),
                rev,
                deleted: record.deleted,
                sequence: record.sequence,
                local_rev: record.rev,
            });
        }
        Ok(out)
    }

    /// Records which of `pushed` the provider accepted, and that everything
    /// up to `up_to_sequence` was offered (rejected ones come back merged).
    pub fn mark_pushed(&self, accepted: &[OutgoingDocument], up_to_sequence: u64) -> Result<(), StoreError> {
        let _writer = self.writer_lock();
        let unlocked = self.unlocked()?;
        let unlocked = read(&unlocked);
        let keys = &unlocked.keys;
        let mut batch = sled::Batch::default();
        for document in accepted {
            let Some(sealed) = self.documents_tree().get(&document.id)? else { continue };
            let mut record = open_document(keys, &document.id, &sealed)?;
            // Written again since it was offered: that version is still to push.
            if record.rev != document.local_rev {
                continue;
            }
            record.synced_rev = Some(record.rev.clone());
            record.base = Some(record.content.clone());
            let plain =
                zeroize::Zeroizing::new(serde_json::to_vec(&record).map_err(|_| StoreError::Corrupt("document"))?);
            batch.insert(document.id.as_slice(), keys.seal(&document.id, b"document", &plain));
        }
        self.documents_tree().apply_batch(batch)?;
        let pushed = meta_u64(self, PUSHED)?.max(up_to_sequence);
        self.meta_tree().insert(PUSHED, &pushed.to_be_bytes())?;
        self.flush()
    }

    /// Takes in one document from the provider.
    pub fn apply_remote(&self, remote: &RemoteDocument) -> Result<RemoteOutcome, StoreError> {
        let _writer = self.writer_lock();
        let unlocked = self.unlocked()?;
        let unlocked = read(&unlocked);
        let mut pending = Pending::new(self, &unlocked)?;
        Ok(match take_remote(&mut pending, &unlocked, remote)? {
            Taken::Unchanged => RemoteOutcome::Unchanged,
            Taken::Applied => RemoteOutcome::Applied(single(pending.commit()?)?),
            Taken::Merged => RemoteOutcome::Merged(single(pending.commit()?)?),
        })
    }

    /// Takes in a batch of documents from the provider in one transaction
    /// (one flush); any refused document refuses the batch. Returns the
    /// changes made.
    pub fn apply_remote_batch(&self, remotes: &[RemoteDocument]) -> Result<Vec<Change>, StoreError> {
        let _writer = self.writer_lock();
        let unlocked = self.unlocked()?;
        let unlocked = read(&unlocked);
        let mut pending = Pending::new(self, &unlocked)?;
        for remote in remotes {
            take_remote(&mut pending, &unlocked, remote)?;
        }
        pending.commit()
    }
}

/// What taking in a remote document did to the batch.
enum Taken {
    Unchanged,
    Applied,
    Merged,
}

fn take_remote(pending: &mut Pending<'_>, unlocked: &Unlocked, remote: &RemoteDocument) -> Result<Taken, StoreError> {
    let keys = &unlocked.keys;
    let storage_key: [u8; 32] =
        remote.id.as_slice().try_into().map_err(|_| StoreError::Corrupt("synced document id"))?;
    let mut context = SYNC_CONTEXT.to_vec();
    context.extend_from_slice(&remote.rev);
    // Sealed under this id and this revision tag: a swapped, altered or
    // re-labelled document does not open.
    let plain =
        keys.open(&storage_key, &context, &remote.sealed).map_err(|_| StoreError::Corrupt("synced document"))?;
    let payload: Payload = serde_json::from_slice(&plain).map_err(|_| StoreError::Corrupt("synced document"))?;
    if keys.document_key(&payload.id) != storage_key || keys.rev_tag(&storage_key, &payload.rev) != remote.rev {
        return Err(StoreError::Corrupt("synced document"));
    }

    let local = pending.current(storage_key)?;
    let Some(local) = local else {
        let record = remote_record(payload);
        pending.replace(storage_key, record)?;
        return Ok(Taken::Applied);
    };
    if local.rev == payload.rev {
        return Ok(Taken::Unchanged);
    }
    if let Some(synced) = &local.synced_rev {
        let (known, offered) = (rev_number(synced), rev_number(&payload.rev));
        if offered < known || (offered == known && *synced != payload.rev) {
            return Err(StoreError::RolledBack { id: payload.id, known: synced.clone(), offered: payload.rev });
        }
    }
    let local_edited = local.synced_rev.as_deref() != Some(local.rev.as_str());
    if !local_edited {
        let record = remote_record(payload);
        pending.replace(storage_key, record)?;
        return Ok(Taken::Applied);
    }
    // Both sides changed the document.
    let policy = unlocked
        .schema
        .collections
        .get(&payload.collection)
        .map(|def| def.policy)
        .unwrap_or(ConflictPolicy::LastWriterWins);
    let number = rev_number(&local.rev).max(rev_number(&payload.rev)) + 1;
    let merged = match policy {
        ConflictPolicy::Immutable => {
            if local.content.get() != payload.content.get() || local.deleted != payload.deleted {
                return Err(StoreError::ImmutableConflict(payload.id));
            }
            let record = remote_record(payload);
            pending.replace(storage_key, record)?;
            return Ok(Taken::Applied);
        }
        ConflictPolicy::LastWriterWins => {
            let remote_wins = (payload.updated_ms, payload.rev.as_str()) > (local.updated_ms, local.rev.as_str());
            if remote_wins {
                let record = remote_record(payload);
                pending.replace(storage_key, record)?;
                return Ok(Taken::Applied);
            }
            DocumentRecord {
                id: local.id.clone(),
                collection: local.collection.clone(),
                rev: numbered_rev(number),
                content: local.content.clone(),
                deleted: local.deleted,
                updated_ms: local.updated_ms,
                sequence: 0,
                synced_rev: Some(payload.rev.clone()),
                base: Some(payload.content.clone()),
            }
        }
        ConflictPolicy::MergeSets => {
            let deleted = local.deleted || payload.deleted;
            let content = if deleted {
                null()
            } else {
                let parse = |raw: &RawValue| serde_json::from_str::<Value>(raw.get()).unwrap_or(Value::Null);
                let base = local.base.as_deref().map(parse).unwrap_or(Value::Null);
                let value = merge_sets(&base, &parse(&local.content), &parse(&payload.content));
                RawValue::from_string(value.to_string()).map_err(|_| StoreError::Corrupt("merge"))?
            };
            DocumentRecord {
                id: local.id.clone(),
                collection: local.collection.clone(),
                rev: numbered_rev(number),
                content,
                deleted,
                updated_ms: local.updated_ms.max(payload.updated_ms),
                sequence: 0,
                synced_rev: Some(payload.rev.clone()),
                base: Some(payload.content.clone()),
            }
        }
    };
    pending.replace(storage_key, merged)?;
    Ok(Taken::Merged)
}

fn single(mut changes: Vec<Change>) -> Result<Change, StoreError> {
    changes.pop().ok_or(StoreError::Corrupt("write result"))
}

/// A remote version as the local record, in sync with the provider.
fn remote_record(payload: Payload) -> DocumentRecord {
    DocumentRecord {
        id: payload.id,
        collection: payload.collection,
        synced_rev: Some(payload.rev.clone()),
        rev: payload.rev,
        base: Some(payload.content.clone()),
        content: payload.content,
        deleted: payload.deleted,
        updated_ms: payload.updated_ms,
        sequence: 0,
    }
}

/// Three-way merge of JSON: array fields of objects merge as sets (both
/// sides' additions and removals relative to `base` are kept); for any other
/// value a local change wins, otherwise the remote version.
pub fn merge_sets(base: &Value, local: &Value, remote: &Value) -> Value {
    match (local, remote) {
        (Value::Object(local_map), Value::Object(remote_map)) => {
            let empty = serde_json::Map::new();
            let base_map = base.as_object().unwrap_or(&empty);
            let mut merged = serde_json::Map::new();
            for key in local_map.keys().chain(remote_map.keys()) {
                if merged.contains_key(key) {
                    continue;
                }
                let base_value = base_map.get(key).unwrap_or(&Value::Null);
                let value = match (local_map.get(key), remote_map.get(key)) {
                    (Some(Value::Array(local_items)), Some(Value::Array(remote_items))) => {
                        let base_items = base_value.as_array().map(Vec::as_slice).unwrap_or_default();
                        let mut items: Vec<Value> = remote_items
                            .iter()
                            .filter(|item| local_items.contains(item) || !base_items.contains(item))
                            .cloned()
                            .collect();
                        for item in local_items {
                            if !base_items.contains(item) && !items.contains(item) {
                                items.push(item.clone());
                            }
                        }
                        Value::Array(items)
                    }
                    (Some(local_value), Some(remote_value)) => {
                        if local_value != base_value {
                            local_value.clone()
                        } else {
                            remote_value.clone()
                        }
                    }
                    // Present on one side only: added there, or removed on the other.
                    (Some(local_value), None) => {
                        if base_map.contains_key(key) && local_value == base_value {
                            continue;
                        } else {
                            local_value.clone()
                        }
                    }
                    (None, Some(remote_value)) => {
                        if base_map.contains_key(key) && remote_value == base_value {
                            continue;
                        } else {
                            remote_value.clone()
                        }
                    }
                    (None, None) => continue,
                };
                merged.insert(key.clone(), value);
            }
            Value::Object(merged)
        }
        _ => {
            if local != base {
                local.clone()
            } else {
                remote.clone()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_fields_keep_both_sides_changes() {
        let base = json!({"flags": ["\\\\Seen"], "tags": ["work"]});
        let local = json!({"flags": ["\\\\Seen", "\\\\Flagged"], "tags": []});
        let remote = json!({"flags": ["\\\\Answered"], "tags": ["work", "urgent"]});
        let merged = merge_sets(&base, &local, &remote);
        // \\Seen removed remotely, \\Flagged added locally, \\Answered added remotely;
        // "work" removed locally, "urgent" added remotely.
        assert_eq!(merged, json!({"flags": ["\\\\Answered", "\\\\Flagged"], "tags": ["urgent"]}));
    }

    #[test]
    fn scalars_prefer_the_local_change() {
        let base = json!({"subscribed": true, "name": "a"});
        let local = json!({"subscribed": false, "name": "a"});
        let remote = json!({"subscribed": true, "name": "b"});
        assert_eq!(merge_sets(&base, &local, &remote), json!({"subscribed": false, "name": "b"}));
        // Fields added on either side stay; a field removed on one side and unchanged on the other goes.
        let base = json!({"old": 1});
        let local = json!({"old": 1, "mine": 2});
        let remote = json!({"theirs": 3});
        assert_eq!(merge_sets(&base, &local, &remote), json!({"mine": 2, "theirs": 3}));
    }
}

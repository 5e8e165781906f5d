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
//!   write; `Immutable`: see below.
//! - [`Store::apply_remote_batch`] takes a batch the same way, but a document
//!   it refuses does not stop the batch (nor the sync): it is skipped and
//!   quarantined, listed by [`Store::quarantined`] with its keyed id and the
//!   reason until a version of it is taken.
//!
//! Revisions are "N-random": N counts edits and only grows, which is what
//! makes a rollback visible. A merge writes a new revision numbered above
//! both sides, whose parent is the provider's version, and pushes it.
//!
//! # Immutable (content-addressed) documents
//!
//! Their id names their content (`message/<sha256>`), so the "same" document
//! is written again whenever the same bytes come back: after a deletion (the
//! mail model collects unreferenced messages, then the message is appended
//! again), on two devices, or on one device whose push the provider applied
//! but whose answer was lost, so that it later pulls back its own earlier
//! version. Two versions of one id resolve by a total order on what they hold
//! (`immutable_rank`): any live version beats a deletion (a re-creation is
//! never lost, on one device or several; a deletion may be undone, which
//! costs space, not data), and between live versions of different content
//! the greater content, byte by byte. If the remote version is the greater
//! one, or an equal deletion, it is taken as it is; otherwise the local one
//! is written as a merge and pushed. An equal live version is pushed as a
//! merge too: a device writes a document again to keep it for a new
//! reference (the mail model does so when a message gets a new copy), and
//! that write must become a revision newer than the provider's, or a
//! deletion made elsewhere from the provider's revision would win. Every
//! device picks the same winner from the same two versions, whoever wrote
//! which and whichever syncs first, and a resolution only moves the
//! provider's version up the order: devices that resolve the same conflict
//! apart meet at the provider, where the later push conflicts with an equal
//! or lesser version and is settled by at most one more merge of the same
//! content, which the others take without a conflict of their own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::Store;
use crate::crypto::Keys;
use crate::store::{
    DocumentRecord, Pending, Unlocked, now_ms, null, numbered_rev, open_document, read, rev_number, u64_from,
};
use crate::types::{Change, ConflictPolicy, StoreError};

const SYNC_CONTEXT: &[u8] = b"sync";
const PUSHED: &[u8] = b"sync pushed sequence";
const SECRETS_AGREED: &[u8] = b"sync secrets agreed";
const PULLED: &[u8] = b"sync pulled generation";
const QUARANTINE_CONTEXT: &[u8] = b"sync quarantine";
/// The quarantine keeps the latest this many records.
const MAX_QUARANTINED: usize = 1000;

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

/// A document from the provider that this device could not take (tampered
/// with, rolled back, or refused by a unique index): skipped so the rest of
/// the sync goes on, and kept on record until a version of it is taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    /// The keyed id the provider knows the document by.
    pub storage_key: Vec<u8>,
    /// The keyed revision tag it was offered at.
    pub rev: Vec<u8>,
    /// The document's id, when this device has a version of it.
    pub id: Option<String>,
    /// Why it was refused.
    pub reason: String,
    /// When it was refused (milliseconds since the Unix epoch).
    pub at_ms: u64,
}

/// What a batch from the provider did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedBatch {
    /// The changes made here.
    pub changes: Vec<Change>,
    /// The documents of the batch that were refused and quarantined.
    pub quarantined: Vec<Quarantined>,
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
    Ok(store.meta_tree()?.get(key)?.map(|bytes| u64_from(&bytes)).unwrap_or(0))
}

impl Store {
    pub fn sync_cursor(&self) -> Result<SyncCursor, StoreError> {
        Ok(SyncCursor { pushed_sequence: meta_u64(self, PUSHED)?, pulled_generation: meta_u64(self, PULLED)? })
    }

    /// The SHA-256 of the sealed secrets this device and the provider's
    /// backup last agreed on (None: never recorded).
    pub fn secrets_agreed(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta_tree()?.get(SECRETS_AGREED)?.map(|bytes| bytes.to_vec()))
    }

    /// Records that the provider's backup holds `secrets` (sealed) as they
    /// are here.
    pub fn set_secrets_agreed(&self, secrets: &[u8]) -> Result<(), StoreError> {
        use sha2::Digest as _;
        self.meta_tree()?.insert(SECRETS_AGREED, sha2::Sha256::digest(secrets).as_slice())?;
        self.flush()
    }

    /// Records that the provider's changes up to `generation` are applied.
    pub fn set_pulled_generation(&self, generation: u64) -> Result<(), StoreError> {
        self.meta_tree()?.insert(PULLED, &generation.to_be_bytes())?;
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
        for entry in self.changes_tree()?.range(since.saturating_add(1).to_be_bytes()..) {
            if limit != 0 && out.len() >= limit {
                break;
            }
            let (_, storage_key) = entry?;
            let Some(record) = self.documents_tree()?.get(&storage_key)? else { continue };
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
            let Some(sealed) = self.documents_tree()?.get(&document.id)? else { continue };
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
        self.documents_tree()?.apply_batch(batch)?;
        let pushed = meta_u64(self, PUSHED)?.max(up_to_sequence);
        self.meta_tree()?.insert(PUSHED, &pushed.to_be_bytes())?;
        self.flush()
    }

    /// Takes in one document from the provider; a refused one is an error
    /// (and is not quarantined: see [`Store::apply_remote_batch`]).
    pub fn apply_remote(&self, remote: &RemoteDocument) -> Result<RemoteOutcome, StoreError> {
        let _writer = self.writer_lock();
        let unlocked = self.unlocked()?;
        let unlocked = read(&unlocked);
        let mut pending = Pending::new(self, &unlocked)?;
        let outcome = match take_remote(&mut pending, &unlocked, remote)? {
            Taken::Unchanged => RemoteOutcome::Unchanged,
            Taken::Applied => RemoteOutcome::Applied(single(pending.commit()?)?),
            Taken::Merged => RemoteOutcome::Merged(single(pending.commit()?)?),
        };
        self.update_quarantine(&unlocked.keys, BTreeMap::from([(remote.id.clone(), None)]))?;
        Ok(outcome)
    }

    /// Takes in a batch of documents from the provider in one transaction
    /// (one flush). A document that cannot be taken (tampered with, rolled
    /// back, refused by a unique index) does not stop the batch: it is
    /// skipped and quarantined ([`Store::quarantined`]), and taking a version
    /// of it later clears that record. Only an error of the store as a whole
    /// (storage, locked) fails the batch.
    pub fn apply_remote_batch(&self, remotes: &[RemoteDocument]) -> Result<AppliedBatch, StoreError> {
        let _writer = self.writer_lock();
        let unlocked = self.unlocked()?;
        let unlocked = read(&unlocked);
        let mut pending = Pending::new(self, &unlocked)?;
        // Per storage key, the last outcome: refused (Some) or taken (None).
        let mut outcomes: BTreeMap<Vec<u8>, Option<Quarantined>> = BTreeMap::new();
        for remote in remotes {
            match take_remote(&mut pending, &unlocked, remote) {
                Ok(_) => {
                    outcomes.insert(remote.id.clone(), None);
                }
                Err(error) if error.concerns_one_document() => {
                    let id = <[u8; 32]>::try_from(remote.id.as_slice()).ok().and_then(|storage_key| {
                        pending.current(storage_key).ok().flatten().map(|local| local.id.clone())
                    });
                    let record = Quarantined {
                        storage_key: remote.id.clone(),
                        rev: remote.rev.clone(),
                        id,
                        reason: error.to_string(),
                        at_ms: now_ms(),
                    };
                    outcomes.insert(remote.id.clone(), Some(record));
                }
                Err(error) => return Err(error),
            }
        }
        let changes = pending.commit()?;
        let quarantined: Vec<Quarantined> = outcomes.values().flatten().cloned().collect();
        self.update_quarantine(&unlocked.keys, outcomes)?;
        Ok(AppliedBatch { changes, quarantined })
    }

    /// The documents from the provider that were refused and not taken since,
    /// oldest first.
    pub fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        let unlocked = self.unlocked()?;
        let unlocked = read(&unlocked);
        self.read_quarantine(&unlocked.keys)
    }

    fn read_quarantine(&self, keys: &Keys) -> Result<Vec<Quarantined>, StoreError> {
        let key = keys.schema_key("sync", "quarantine");
        let Some(sealed) = self.meta_tree()?.get(key)? else { return Ok(Vec::new()) };
        let plain = keys.open(&key, QUARANTINE_CONTEXT, &sealed).map_err(|_| StoreError::Corrupt("quarantine"))?;
        serde_json::from_slice(&plain).map_err(|_| StoreError::Corrupt("quarantine"))
    }

    /// Records refused documents (Some) and forgets taken ones (None).
    fn update_quarantine(
        &self,
        keys: &Keys,
        outcomes: BTreeMap<Vec<u8>, Option<Quarantined>>,
    ) -> Result<(), StoreError> {
        // The record is a report: one that does not open is started again
        // rather than failing every sync.
        let before = match self.read_quarantine(keys) {
            Err(StoreError::Corrupt(_)) => Vec::new(),
            other => other?,
        };
        let mut records: Vec<Quarantined> =
            before.iter().filter(|record| !outcomes.contains_key(&record.storage_key)).cloned().collect();
        records.extend(outcomes.into_values().flatten());
        if records == before {
            return Ok(());
        }
        let excess = records.len().saturating_sub(MAX_QUARANTINED);
        records.drain(..excess);
        let key = keys.schema_key("sync", "quarantine");
        let plain =
            zeroize::Zeroizing::new(serde_json::to_vec(&records).map_err(|_| StoreError::Corrupt("quarantine"))?);
        self.meta_tree()?.insert(key, keys.seal(&key, QUARANTINE_CONTEXT, &plain))?;
        self.flush()
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
        ConflictPolicy::Immutable | ConflictPolicy::LastWriterWins => {
            // Immutable: by what the versions hold (see `immutable_rank`);
            // last writer wins: by time, then revision.
            let local_wins = match policy {
                ConflictPolicy::Immutable => {
                    // A live local version of the same content wins too: it
                    // was written again for a new reference (see the module
                    // docs), and must stay a newer revision than the one a
                    // deletion elsewhere may descend from.
                    let (local_rank, remote_rank) = (
                        immutable_rank(local.deleted, &local.content),
                        immutable_rank(payload.deleted, &payload.content),
                    );
                    local_rank > remote_rank || (!local.deleted && local_rank == remote_rank)
                }
                _ => (payload.updated_ms, payload.rev.as_str()) <= (local.updated_ms, local.rev.as_str()),
            };
            if !local_wins {
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

/// The order in which versions of an immutable document win: any live
/// version beats a deletion (a re-creation is never lost to a deletion), and
/// between live versions the greater content, byte by byte. A total order on
/// what the versions hold, not on who wrote them when: every device picks the
/// same winner from the same versions, and a resolution only ever moves the
/// document up this order, so resolutions on several devices settle.
fn immutable_rank(deleted: bool, content: &RawValue) -> (bool, &[u8]) {
    if deleted { (false, &[]) } else { (true, content.get().as_bytes()) }
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
    fn immutable_versions_win_in_one_order() {
        let raw = |text: &str| RawValue::from_string(text.to_owned()).unwrap();
        let (a, b, tombstone) = (raw(r#"{"data":"a"}"#), raw(r#"{"data":"b"}"#), null());
        // (first deleted, first content, second deleted, second content, does the first win?)
        let table = [
            (false, &a, true, &tombstone, true),  // a live version beats a deletion
            (true, &tombstone, false, &a, false), // whichever side it is on
            (false, &b, false, &a, true),         // between live ones, the greater content
            (false, &a, false, &b, false),
            (false, &a, false, &a, false), // identical: neither is greater
            (true, &tombstone, true, &tombstone, false),
            (true, &b, false, &a, false), // a deleted version's content does not count
        ];
        for (first_deleted, first, second_deleted, second, first_wins) in table {
            let wins = immutable_rank(first_deleted, first) > immutable_rank(second_deleted, second);
            assert_eq!(wins, first_wins, "{first_deleted} {first} against {second_deleted} {second}");
        }
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

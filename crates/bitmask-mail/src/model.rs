//! The mail model over the store service.
//!
//! Documents (collections in brackets; "synced" ones go to the provider
//! sealed, "local" ones never leave the device):
//! - `mailbox/<id>` [mailboxes, synced, last writer wins]: name, subscribed,
//!   special use. The five default mailboxes have fixed ids, so two devices
//!   that create them agree.
//! - `message/<sha256>` [messages, synced, immutable]: the skeleton of one
//!   raw message and the content documents it refers to; shared by every
//!   copy of the message.
//! - `content/<sha256>` [contents, synced, immutable]: a leaf body, or a
//!   long stretch of the message, as it came (transfer encoding included):
//!   up to [`MAX_INLINE_CONTENT`] bytes inline (base64 in JSON), a larger one
//!   as a reference to a store blob (sealed 64 KiB chunks, named by a keyed
//!   hash of the bytes, so the same bytes are one blob). Documents written
//!   before blobs existed hold their bytes inline at any size; both forms
//!   are read.
//! - `copy/<random>` [copies, synced, set merge]: the message in one mailbox:
//!   mailbox, message, internal date, size and flags (the only mutable part;
//!   concurrent flag edits of two devices merge as sets).
//! - `uid/<copy id>` [uids, local]: the copy's UID and MODSEQ on this device.
//! - `mailbox-state/<mailbox id>` [mailbox-state, local]: UIDVALIDITY and
//!   the first UID no session has seen (`\Recent`).
//!
//! Counters (local): `uidnext/<mailbox id>` and `modseq/<mailbox id>`.
//!
//! This process is the only writer of mail documents on the device (the
//! SMTP gateway and incoming mail file through it), so one lock over the
//! in-memory state serializes UID assignment: UIDs are strictly ascending in
//! the order messages are added, and every write is one store batch, durable
//! before the call returns.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use bitmask_proto::store::v1 as pb;
use bitmask_proto::store::v1::store_client::StoreClient;
use bitmask_runtime::client::TracedChannel;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, MutexGuard, broadcast};
use tonic::Status;

use crate::converge;
use crate::split::{self, Segment};
use crate::types::{
    Entry, FlagOperation, Flags, MailError, MailEvent, MailboxInfo, Mailstore, SpecialUse, normalize_name,
};

mod synced;

const MAILBOXES: &str = "mailboxes";
const MESSAGES: &str = "messages";
const CONTENTS: &str = "contents";
const COPIES: &str = "copies";
const UIDS: &str = "uids";
const MAILBOX_STATE: &str = "mailbox-state";

const ALL_MAILBOXES: &str = "mailboxes-all";
const UIDS_BY_MAILBOX: &str = "uids-by-mailbox";
const COPIES_BY_MAILBOX: &str = "copies-by-mailbox";
const COPIES_BY_MESSAGE: &str = "copies-by-message";
const MESSAGES_BY_PART: &str = "messages-by-part";

/// The mailboxes every account has, with their fixed ids.
pub const DEFAULT_MAILBOXES: [(&str, &str, SpecialUse); 5] = [
    ("mailbox/inbox", "INBOX", SpecialUse::None),
    ("mailbox/sent", "Sent", SpecialUse::Sent),
    ("mailbox/drafts", "Drafts", SpecialUse::Drafts),
    ("mailbox/trash", "Trash", SpecialUse::Trash),
    ("mailbox/junk", "Junk", SpecialUse::Junk),
];

/// Documents fetched or written per store call.
const BATCH: usize = 500;
/// Documents per query page.
const PAGE: u32 = 5000;

impl From<Status> for MailError {
    fn from(status: Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
            | tonic::Code::FailedPrecondition => Self::Unavailable(message),
            tonic::Code::ResourceExhausted => Self::NoSpace(message),
            _ => Self::Store(message),
        }
    }
}

type Result<T, E = MailError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MailboxDoc {
    name: String,
    subscribed: bool,
    #[serde(default)]
    special_use: SpecialUse,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MailboxLocal {
    uid_validity: u32,
    recent_floor: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CopyDoc {
    mailbox: String,
    message: String,
    internal_date: i64,
    #[serde(default)]
    zone: i32,
    size: u64,
    flags: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UidDoc {
    mailbox: String,
    uid: u32,
    modseq: u64,
    copy: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MessageDoc {
    pub(crate) size: u64,
    pub(crate) skeleton: Vec<Segment>,
    /// The content ids the skeleton refers to (indexed, for collection).
    pub(crate) parts: Vec<String>,
}

/// Contents larger than this are kept as store blobs.
pub const MAX_INLINE_CONTENT: usize = 64 * 1024;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ContentDoc {
    /// The bytes, base64 (an inline content).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) data: String,
    /// The store blob that holds the bytes (a large content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) blob: Option<BlobRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BlobRef {
    pub(crate) id: String,
    pub(crate) size: u64,
}

/// Bytes per message of a blob upload.
const BLOB_UPLOAD_CHUNK: usize = 1 << 20;

#[derive(Debug)]
struct MailboxState {
    id: String,
    doc: MailboxDoc,
    local: MailboxLocal,
    uid_next: u32,
    highest_modseq: u64,
    entries: BTreeMap<u32, Entry>,
    by_copy: HashMap<Arc<str>, u32>,
}

impl MailboxState {
    fn info(&self) -> MailboxInfo {
        MailboxInfo {
            name: self.doc.name.clone(),
            uid_validity: self.local.uid_validity,
            uid_next: self.uid_next,
            subscribed: self.doc.subscribed,
            special_use: self.doc.special_use,
            messages: self.entries.len() as u32,
            unseen: self.entries.values().filter(|entry| !entry.flags.seen).count() as u32,
            recent: self.entries.range(self.local.recent_floor..).count() as u32,
            highest_modseq: self.highest_modseq,
        }
    }

    fn copy_doc(&self, entry: &Entry) -> CopyDoc {
        CopyDoc {
            mailbox: self.id.clone(),
            message: entry.message.to_string(),
            internal_date: entry.internal_date,
            zone: entry.zone_minutes,
            size: entry.size,
            flags: entry.flags.to_list(),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    mailboxes: BTreeMap<String, MailboxState>,
}

impl State {
    fn id_of(&self, name: &str) -> Option<String> {
        let name = normalize_name(name);
        self.mailboxes.values().find(|mailbox| mailbox.doc.name == name).map(|mailbox| mailbox.id.clone())
    }

    /// The mailbox and UID of a copy shown here.
    fn locate(&self, copy: &str) -> Option<(String, u32)> {
        self.mailboxes.values().find_map(|mailbox| mailbox.by_copy.get(copy).map(|uid| (mailbox.id.clone(), *uid)))
    }

    /// Takes a copy out of the shown state (its documents are deleted in
    /// the same step by the caller).
    fn remove(&mut self, mailbox_id: &str, uid: u32) -> Option<(String, Entry)> {
        let mailbox = self.mailboxes.get_mut(mailbox_id)?;
        let entry = mailbox.entries.remove(&uid)?;
        mailbox.by_copy.remove(&entry.copy);
        Some((mailbox.doc.name.clone(), entry))
    }

    fn get(&self, name: &str) -> Result<&MailboxState> {
        let id = self.id_of(name).ok_or_else(|| MailError::NoMailbox(name.to_owned()))?;
        self.mailboxes.get(&id).ok_or_else(|| MailError::NoMailbox(name.to_owned()))
    }

    fn get_mut(&mut self, name: &str) -> Result<&mut MailboxState> {
        let id = self.id_of(name).ok_or_else(|| MailError::NoMailbox(name.to_owned()))?;
        self.mailboxes.get_mut(&id).ok_or_else(|| MailError::NoMailbox(name.to_owned()))
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|since| since.as_secs() as i64).unwrap_or_default()
}

fn random_id(prefix: &str) -> String {
    let bytes: [u8; 16] = rand::random();
    format!("{prefix}/{}", data_encoding::HEXLOWER.encode(&bytes))
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    // Our document types always serialize.
    serde_json::to_vec(value).unwrap_or_default()
}

pub(crate) fn parse<T: for<'de> Deserialize<'de>>(document: &pb::Document) -> Result<T> {
    serde_json::from_slice(&document.content).map_err(|_| MailError::Damaged(document.id.clone()))
}

fn put(id: &str, collection: &str, content: Vec<u8>) -> pb::Write {
    pb::Write {
        op: Some(pb::write::Op::Put(pb::PutRequest {
            id: id.to_owned(),
            collection: collection.to_owned(),
            content,
            ..Default::default()
        })),
    }
}

fn delete(id: &str) -> pb::Write {
    pb::Write { op: Some(pb::write::Op::Delete(pb::DeleteRequest { id: id.to_owned(), expected_rev: String::new() })) }
}

/// The writes of a new copy in `mailbox` (its document, its UID record, the
/// counters), appended to `writes`; gives its UID and MODSEQ.
fn new_copy(mailbox: &MailboxState, copy_id: &str, copy: &CopyDoc, writes: &mut Vec<pb::Write>) -> (u32, u64) {
    let (uid, modseq) = (mailbox.uid_next, mailbox.highest_modseq + 1);
    writes.push(put(copy_id, COPIES, json(copy)));
    let uid_doc = UidDoc { mailbox: mailbox.id.clone(), uid, modseq, copy: copy_id.to_owned() };
    writes.push(put(&format!("uid/{copy_id}"), UIDS, json(&uid_doc)));
    writes.push(add_to_counter(format!("uidnext/{}", mailbox.id), 1));
    writes.push(add_to_counter(format!("modseq/{}", mailbox.id), 1));
    (uid, modseq)
}

fn add_to_counter(name: String, delta: i64) -> pb::Write {
    pb::Write { op: Some(pb::write::Op::AddToCounter(pb::AddToCounterRequest { name, delta })) }
}

fn text(value: &str) -> pb::IndexValue {
    pb::IndexValue { value: Some(pb::index_value::Value::Text(value.to_owned())) }
}

/// Raw messages recently read: messages never change, so a cached one is
/// always right. Bounded by bytes; the oldest read goes first.
#[derive(Debug, Default)]
struct RawCache {
    entries: HashMap<Arc<str>, Arc<Vec<u8>>>,
    order: std::collections::VecDeque<Arc<str>>,
    bytes: usize,
}

/// Bytes of raw messages kept in memory.
const RAW_CACHE_BYTES: usize = 32 << 20;

impl RawCache {
    fn get(&self, id: &str) -> Option<Arc<Vec<u8>>> {
        self.entries.get(id).cloned()
    }

    fn insert(&mut self, id: Arc<str>, raw: Arc<Vec<u8>>) {
        if raw.len() > RAW_CACHE_BYTES / 4 || self.entries.contains_key(&id) {
            return;
        }
        self.bytes += raw.len();
        self.entries.insert(id.clone(), raw);
        self.order.push_back(id);
        while self.bytes > RAW_CACHE_BYTES {
            let Some(oldest) = self.order.pop_front() else { break };
            if let Some(evicted) = self.entries.remove(&oldest) {
                self.bytes -= evicted.len();
            }
        }
    }
}

/// The mail model of one account.
#[derive(Debug)]
pub struct MailModel {
    store: StoreClient<TracedChannel>,
    state: Mutex<Option<State>>,
    events: broadcast::Sender<MailEvent>,
    raw_cache: std::sync::Mutex<RawCache>,
    /// The store's change sequence this model has applied up to (for
    /// `follow_sync`: changes after it are replayed, none is missed).
    applied: std::sync::atomic::AtomicU64,
    /// Moves after every change sessions could see (`Mailstore::version`).
    version: std::sync::atomic::AtomicU64,
    /// A write may have been applied without this process knowing: the
    /// state is loaded again before its next use.
    stale: std::sync::atomic::AtomicBool,
}

impl MailModel {
    pub fn new(store: TracedChannel) -> Arc<Self> {
        let store = StoreClient::new(store).max_decoding_message_size(256 << 20).max_encoding_message_size(256 << 20);
        Arc::new(Self {
            store,
            state: Mutex::new(None),
            events: broadcast::channel(4096).0,
            raw_cache: std::sync::Mutex::new(RawCache::default()),
            applied: std::sync::atomic::AtomicU64::new(0),
            version: std::sync::atomic::AtomicU64::new(0),
            stale: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Changes as they happen, for selected and idling sessions.
    pub fn subscribe(&self) -> broadcast::Receiver<MailEvent> {
        self.events.subscribe()
    }

    /// Tells sessions of a change already made to the state.
    fn emit(&self, event: MailEvent) {
        self.version.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = self.events.send(event);
    }

    pub(crate) fn client(&self) -> StoreClient<TracedChannel> {
        self.store.clone()
    }

    async fn batch(&self, writes: Vec<pb::Write>) -> Result<pb::BatchResponse> {
        match self.client().batch(pb::BatchRequest { writes }).await {
            Ok(reply) => Ok(reply.into_inner()),
            Err(status) => {
                self.after_failed_batch(&status);
                Err(status.into())
            }
        }
    }

    /// A batch failed in a way that does not say it was not applied (the
    /// store went away, or applied it and could not make it durable: a full
    /// disk): the state is read again from the store on next use, so UIDs
    /// and counters never go by a stale copy.
    fn after_failed_batch(&self, status: &Status) {
        let refused_before_applying = matches!(
            status.code(),
            tonic::Code::InvalidArgument
                | tonic::Code::AlreadyExists
                | tonic::Code::Aborted
                | tonic::Code::NotFound
                | tonic::Code::FailedPrecondition
                | tonic::Code::OutOfRange
        );
        if !refused_before_applying {
            self.stale.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    async fn counter(&self, name: String, delta: i64) -> Result<i64> {
        Ok(self.client().add_to_counter(pb::AddToCounterRequest { name, delta }).await?.into_inner().value)
    }

    async fn query_all(&self, index: &str, equal: Vec<pb::IndexValue>) -> Result<Vec<pb::Document>> {
        let mut documents = Vec::new();
        let mut page_token = Some(String::new());
        while let Some(token) = page_token {
            let page;
            (page, page_token) = self.query_page(index, &equal, false, token).await?;
            documents.extend(page);
        }
        Ok(documents)
    }

    /// One page of a query, and the token of the next page if there is one.
    async fn query_page(
        &self,
        index: &str,
        equal: &[pb::IndexValue],
        keys_only: bool,
        page_token: String,
    ) -> Result<(Vec<pb::Document>, Option<String>)> {
        let request = pb::QueryRequest {
            index: index.to_owned(),
            equal: equal.to_vec(),
            limit: PAGE,
            page_token,
            keys_only,
            ..Default::default()
        };
        let page = self.client().query(request).await?.into_inner();
        let next = (!page.next_page_token.is_empty()).then_some(page.next_page_token);
        Ok((page.documents, next))
    }

    pub(crate) async fn get_many(&self, ids: Vec<String>) -> Result<Vec<pb::Document>> {
        let mut documents = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH) {
            let reply = self.client().get_many(pb::GetManyRequest { ids: chunk.to_vec() }).await?.into_inner();
            documents.extend(reply.documents);
        }
        Ok(documents)
    }

    /// The state, loaded from the store on first use (the store may be
    /// locked when the gateway starts).
    async fn state(&self) -> Result<MutexGuard<'_, Option<State>>> {
        let mut guard = self.state.lock().await;
        if self.stale.swap(false, std::sync::atomic::Ordering::SeqCst) {
            *guard = None;
        }
        if guard.is_none() {
            *guard = Some(self.load().await?);
            self.version.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(guard)
    }

    async fn declare(&self) -> Result<()> {
        use pb::ConflictPolicy::{Immutable, LastWriterWins, MergeSets};
        for (name, policy, local_only) in [
            (MAILBOXES, LastWriterWins, false),
            (MESSAGES, Immutable, false),
            (CONTENTS, Immutable, false),
            (COPIES, MergeSets, false),
            (UIDS, LastWriterWins, true),
            (MAILBOX_STATE, LastWriterWins, true),
        ] {
            let definition = pb::CollectionDefinition { name: name.into(), conflict_policy: policy.into(), local_only };
            self.client().declare_collection(definition).await?;
        }
        for (name, collection, fields, unique) in [
            (ALL_MAILBOXES, MAILBOXES, vec![], false),
            (UIDS_BY_MAILBOX, UIDS, vec!["/mailbox", "/uid"], true),
            (COPIES_BY_MAILBOX, COPIES, vec!["/mailbox"], false),
            (COPIES_BY_MESSAGE, COPIES, vec!["/message"], false),
            (MESSAGES_BY_PART, MESSAGES, vec!["/parts"], false),
        ] {
            let definition = pb::IndexDefinition {
                name: name.into(),
                collection: collection.into(),
                fields: fields.into_iter().map(str::to_owned).collect(),
                unique,
            };
            self.client().declare_index(definition).await?;
        }
        Ok(())
    }

    async fn load(&self) -> Result<State> {
        self.declare().await?;
        // Whatever changes after this point, follow_sync replays.
        let sequence = self.client().get_state(pb::GetStateRequest {}).await?.into_inner().sequence;
        self.applied.store(sequence, std::sync::atomic::Ordering::SeqCst);
        let mut state = State::default();
        let documents = self.query_all(ALL_MAILBOXES, vec![]).await?;
        let mut docs: Vec<(String, MailboxDoc)> =
            documents.iter().map(|document| Ok((document.id.clone(), parse(document)?))).collect::<Result<_>>()?;
        // The default mailboxes are made once: one the user deleted (its
        // document is a tombstone) stays deleted.
        for (id, name, special_use) in DEFAULT_MAILBOXES {
            if !docs.iter().any(|(known, _)| known == id)
                && !docs.iter().any(|(_, doc)| doc.name == name)
                && !self.ever_known(id).await?
            {
                let doc = MailboxDoc { name: name.into(), subscribed: true, special_use };
                self.batch(vec![put(id, MAILBOXES, json(&doc))]).await?;
                docs.push((id.to_owned(), doc));
            }
        }
        let renames = converge::duplicates(docs.iter().map(|(id, doc)| (id.as_str(), doc.name.as_str())));
        let mut writes = Vec::new();
        for (id, name) in renames {
            if let Some((_, doc)) = docs.iter_mut().find(|(known, _)| *known == id) {
                doc.name = name;
                writes.push(put(&id, MAILBOXES, json(&*doc)));
            }
        }
        if !writes.is_empty() {
            self.batch(writes).await?;
        }
        for (id, doc) in docs {
            let mailbox = self.load_mailbox(id.clone(), doc).await?;
            state.mailboxes.insert(id, mailbox);
        }
        // Explanations whose decrypted copy came while this was not running.
        let superseded: Vec<(String, u32, String)> = state
            .mailboxes
            .values()
            .flat_map(|mailbox| {
                mailbox.entries.values().map(|entry| (mailbox.id.clone(), entry.uid, entry.copy.clone()))
            })
            .filter(|(_, _, copy)| {
                converge::incoming_twin(copy)
                    .is_some_and(|(decrypted, explained)| explained && state.locate(&decrypted).is_some())
            })
            .map(|(mailbox, uid, copy)| (mailbox, uid, copy.to_string()))
            .collect();
        for (mailbox_id, uid, copy) in superseded {
            self.batch(self.deletes_of(&copy).await?).await?;
            state.remove(&mailbox_id, uid);
        }
        Ok(state)
    }

    /// A mailbox's local state, entries, and UIDs for copies that have none
    /// yet (filed by another device while this one was off).
    async fn load_mailbox(&self, id: String, doc: MailboxDoc) -> Result<MailboxState> {
        let started = std::time::Instant::now();
        let local_id = format!("{MAILBOX_STATE}/{id}");
        let local = match self.client().get(pb::GetRequest { id: local_id.clone(), include_deleted: false }).await {
            Ok(document) => parse::<MailboxLocal>(&document.into_inner())?,
            Err(status) if status.code() == tonic::Code::NotFound => {
                let local = MailboxLocal { uid_validity: self.new_uid_validity().await?, recent_floor: 1 };
                self.batch(vec![put(&local_id, MAILBOX_STATE, json(&local))]).await?;
                local
            }
            Err(status) => return Err(status.into()),
        };
        let uid_next = self.counter(format!("uidnext/{id}"), 0).await? as u32 + 1;
        let highest_modseq = self.counter(format!("modseq/{id}"), 0).await? as u64;
        let mut mailbox = MailboxState {
            id: id.clone(),
            doc,
            local,
            uid_next,
            highest_modseq,
            entries: BTreeMap::new(),
            by_copy: HashMap::new(),
        };
        // A page at a time: a mailbox may hold 100,000 messages, and only
        // their entries stay in memory, not the documents they came from.
        let by_mailbox = [text(&id)];
        // The next page is read while this page's copies are (the store
        // serves both at once).
        let mut stale = Vec::new();
        let mut page = Some(self.query_page(UIDS_BY_MAILBOX, &by_mailbox, false, String::new()).await?);
        while let Some((uids, next_token)) = page.take() {
            let uid_docs: Vec<UidDoc> = uids.iter().map(parse).collect::<Result<_>>()?;
            drop(uids);
            let copy_ids = uid_docs.iter().map(|uid| uid.copy.clone()).collect();
            let copies = match next_token {
                Some(token) => {
                    let (copies, next) = tokio::join!(
                        self.get_many(copy_ids),
                        self.query_page(UIDS_BY_MAILBOX, &by_mailbox, false, token)
                    );
                    page = Some(next?);
                    copies?
                }
                None => self.get_many(copy_ids).await?,
            };
            for (uid, copy) in uid_docs.into_iter().zip(copies) {
                if copy.rev.is_empty() || copy.deleted {
                    // Expunged on another device while this one was off.
                    stale.push(delete(&format!("uid/{}", uid.copy)));
                    continue;
                }
                let copy_doc: CopyDoc = parse(&copy)?;
                if copy_doc.mailbox != id {
                    stale.push(delete(&format!("uid/{}", uid.copy)));
                    continue;
                }
                let copy_id: Arc<str> = Arc::from(uid.copy);
                mailbox.by_copy.insert(copy_id.clone(), uid.uid);
                mailbox.entries.insert(uid.uid, entry(uid.uid, copy_id, &copy_doc, uid.modseq));
            }
        }
        for chunk in stale.chunks(BATCH) {
            self.batch(chunk.to_vec()).await?;
        }
        // Copies without a UID here: filed elsewhere, synced in.
        let mut unnumbered = Vec::new();
        let mut page_token = Some(String::new());
        while let Some(token) = page_token {
            let copies;
            (copies, page_token) = self.query_page(COPIES_BY_MAILBOX, &by_mailbox, true, token).await?;
            unnumbered.extend(
                copies
                    .into_iter()
                    .map(|document| document.id)
                    .filter(|copy| !mailbox.by_copy.contains_key(copy.as_str())),
            );
        }
        let mut fresh: Vec<(String, CopyDoc)> = Vec::new();
        for document in self.get_many(unnumbered).await? {
            if !document.rev.is_empty() && !document.deleted {
                fresh.push((document.id.clone(), parse(&document)?));
            }
        }
        fresh.sort_by_key(|(_, copy)| copy.internal_date);
        for chunk in fresh.chunks(BATCH) {
            self.assign(&mut mailbox, chunk.to_vec(), false).await?;
        }
        tracing::info!(
            mailbox = %mailbox.id,
            messages = mailbox.entries.len(),
            ms = started.elapsed().as_millis() as u64,
            "mailbox loaded"
        );
        Ok(mailbox)
    }

    async fn new_uid_validity(&self) -> Result<u32> {
        let last = self.counter("uidvalidity".into(), 0).await?;
        let next = (now().clamp(1, i64::from(u32::MAX))).max(last + 1);
        self.counter("uidvalidity".into(), next - last).await?;
        Ok(next as u32)
    }

    /// Gives UIDs to copies already in the store (one batch), in order.
    async fn assign(&self, mailbox: &mut MailboxState, copies: Vec<(String, CopyDoc)>, notify: bool) -> Result<()> {
        if copies.is_empty() {
            return Ok(());
        }
        let count = copies.len() as i64;
        let mut writes = Vec::new();
        let mut added = Vec::new();
        for (offset, (copy_id, copy)) in copies.into_iter().enumerate() {
            let uid = mailbox.uid_next + offset as u32;
            let modseq = mailbox.highest_modseq + 1;
            let uid_doc = UidDoc { mailbox: mailbox.id.clone(), uid, modseq, copy: copy_id.clone() };
            writes.push(put(&format!("uid/{copy_id}"), UIDS, json(&uid_doc)));
            added.push(entry(uid, Arc::from(copy_id), &copy, modseq));
        }
        writes.push(add_to_counter(format!("uidnext/{}", mailbox.id), count));
        writes.push(add_to_counter(format!("modseq/{}", mailbox.id), 1));
        self.batch(writes).await?;
        mailbox.uid_next += count as u32;
        mailbox.highest_modseq += 1;
        for entry in added {
            let uid = entry.uid;
            mailbox.by_copy.insert(entry.copy.clone(), uid);
            mailbox.entries.insert(uid, entry);
            if notify {
                self.emit(MailEvent::Added { mailbox: mailbox.doc.name.clone(), uid });
            }
        }
        Ok(())
    }

    // --- mailboxes ----------------------------------------------------------

    pub async fn mailboxes(&self) -> Result<Vec<MailboxInfo>> {
        let guard = self.state().await?;
        let mut list: Vec<MailboxInfo> =
            guard.iter().flat_map(|state| state.mailboxes.values()).map(MailboxState::info).collect();
        list.sort_by(|a, b| (a.name != "INBOX", &a.name).cmp(&(b.name != "INBOX", &b.name)));
        Ok(list)
    }

    pub async fn mailbox(&self, name: &str) -> Result<MailboxInfo> {
        let guard = self.state().await?;
        let state = guard.as_ref().ok_or_else(|| MailError::NoMailbox(name.to_owned()))?;
        Ok(state.get(name)?.info())
    }

    pub async fn create_mailbox(&self, name: &str, special_use: SpecialUse) -> Result<MailboxInfo> {
        let name = normalize_name(name);
        if name.is_empty() || name.split('/').any(str::is_empty) {
            return Err(MailError::Refused(format!("{name:?} is not a valid mailbox name")));
        }
        let mut guard = self.state().await?;
        let state = guard.get_or_insert_with(State::default);
        // RFC 3501: creating a/b/c creates a and a/b when missing.
        let mut created = None;
        let levels: Vec<&str> = name.split('/').collect();
        for depth in 1..=levels.len() {
            let level = levels[..depth].join("/");
            if state.id_of(&level).is_some() {
                if depth == levels.len() {
                    return Err(MailError::MailboxExists(name));
                }
                continue;
            }
            let id = converge::id_for_new(&level, |id| state.mailboxes.contains_key(id));
            let use_here = if depth == levels.len() { special_use } else { SpecialUse::None };
            let doc = MailboxDoc { name: level, subscribed: false, special_use: use_here };
            self.batch(vec![put(&id, MAILBOXES, json(&doc))]).await?;
            let mailbox = self.load_mailbox(id.clone(), doc).await?;
            created = Some(mailbox.info());
            state.mailboxes.insert(id, mailbox);
        }
        self.emit(MailEvent::Mailboxes);
        created.ok_or(MailError::MailboxExists(name))
    }

    pub async fn delete_mailbox(&self, name: &str) -> Result<()> {
        let name = normalize_name(name);
        if name == "INBOX" {
            return Err(MailError::Refused("INBOX cannot be deleted".into()));
        }
        let mut guard = self.state().await?;
        let state = guard.as_mut().ok_or_else(|| MailError::NoMailbox(name.clone()))?;
        let mailbox = state.get(&name)?;
        let id = mailbox.id.clone();
        let mut writes = vec![delete(&id), delete(&format!("{MAILBOX_STATE}/{id}"))];
        let messages: Vec<String> = mailbox.entries.values().map(|entry| entry.message.to_string()).collect();
        for entry in mailbox.entries.values() {
            writes.push(delete(&entry.copy));
            writes.push(delete(&format!("uid/{}", entry.copy)));
        }
        for chunk in writes.chunks(BATCH) {
            self.batch(chunk.to_vec()).await?;
        }
        state.mailboxes.remove(&id);
        drop(guard);
        self.collect(messages).await?;
        self.emit(MailEvent::Mailboxes);
        Ok(())
    }

    pub async fn rename_mailbox(&self, name: &str, new_name: &str) -> Result<()> {
        let (name, new_name) = (normalize_name(name), normalize_name(new_name));
        if name == "INBOX" {
            return Err(MailError::Refused("renaming INBOX is not supported".into()));
        }
        if new_name.is_empty() || new_name.split('/').any(str::is_empty) {
            return Err(MailError::Refused(format!("{new_name:?} is not a valid mailbox name")));
        }
        let mut guard = self.state().await?;
        let state = guard.as_mut().ok_or_else(|| MailError::NoMailbox(name.clone()))?;
        state.get(&name)?;
        if state.id_of(&new_name).is_some() {
            return Err(MailError::MailboxExists(new_name));
        }
        let prefix = format!("{name}/");
        let mut writes = Vec::new();
        let mut renamed = Vec::new();
        for mailbox in state.mailboxes.values() {
            let new = if mailbox.doc.name == name {
                new_name.clone()
            } else if let Some(rest) = mailbox.doc.name.strip_prefix(&prefix) {
                format!("{new_name}/{rest}")
            } else {
                continue;
            };
            let doc = MailboxDoc { name: new, ..mailbox.doc.clone() };
            writes.push(put(&mailbox.id, MAILBOXES, json(&doc)));
            renamed.push((mailbox.id.clone(), doc));
        }
        self.batch(writes).await?;
        for (id, doc) in renamed {
            if let Some(mailbox) = state.mailboxes.get_mut(&id) {
                mailbox.doc = doc;
            }
        }
        self.emit(MailEvent::Mailboxes);
        Ok(())
    }

    pub async fn set_subscribed(&self, name: &str, subscribed: bool) -> Result<()> {
        let mut guard = self.state().await?;
        let state = guard.as_mut().ok_or_else(|| MailError::NoMailbox(name.to_owned()))?;
        let mailbox = state.get_mut(name)?;
        let doc = MailboxDoc { subscribed, ..mailbox.doc.clone() };
        self.batch(vec![put(&mailbox.id, MAILBOXES, json(&doc))]).await?;
        mailbox.doc = doc;
        self.emit(MailEvent::Mailboxes);
        Ok(())
    }

    // --- messages -----------------------------------------------------------

    /// The mailbox and its messages in UID order, as of now.
    pub async fn snapshot(&self, name: &str) -> Result<(MailboxInfo, Vec<Entry>)> {
        let guard = self.state().await?;
        let state = guard.as_ref().ok_or_else(|| MailError::NoMailbox(name.to_owned()))?;
        let mailbox = state.get(name)?;
        Ok((mailbox.info(), mailbox.entries.values().cloned().collect()))
    }

    /// One message by UID.
    pub async fn entry(&self, name: &str, uid: u32) -> Result<Option<Entry>> {
        let guard = self.state().await?;
        let state = guard.as_ref().ok_or_else(|| MailError::NoMailbox(name.to_owned()))?;
        Ok(state.get(name)?.entries.get(&uid).cloned())
    }

    /// Claims the mailbox's `\Recent` messages for one session: returns the
    /// first UID that is recent for it; later sessions see them as not recent.
    pub async fn claim_recent(&self, name: &str) -> Result<u32> {
        let mut guard = self.state().await?;
        let state = guard.as_mut().ok_or_else(|| MailError::NoMailbox(name.to_owned()))?;
        let mailbox = state.get_mut(name)?;
        let floor = mailbox.local.recent_floor;
        if floor < mailbox.uid_next {
            let local = MailboxLocal { recent_floor: mailbox.uid_next, ..mailbox.local.clone() };
            let id = format!("{MAILBOX_STATE}/{}", mailbox.id);
            self.batch(vec![put(&id, MAILBOX_STATE, json(&local))]).await?;
            mailbox.local = local;
        }
        Ok(floor)
    }

    /// Files a raw message: durable before it returns. Gives the mailbox's
    /// UIDVALIDITY and the new UID.
    pub async fn append(
        &self,
        name: &str,
        raw: &[u8],
        flags: &Flags,
        internal_date: Option<(i64, i32)>,
    ) -> Result<(u32, u32)> {
        let stored = self.store_message(raw).await?;
        let (internal_date, zone) = internal_date.unwrap_or((now(), 0));
        let mut guard = self.state().await?;
        let state = guard.as_mut().ok_or_else(|| MailError::NoMailbox(name.to_owned()))?;
        let mailbox = state.get_mut(name)?;
        let copy_id = random_id("copy");
        let copy = CopyDoc {
            mailbox: mailbox.id.clone(),
            message: stored.message_id,
            internal_date,
            zone,
            size: stored.size,
            flags: flags.to_list(),
        };
        let mut writes = stored.writes;
        let (uid, modseq) = new_copy(mailbox, &copy_id, &copy, &mut writes);
        self.batch(writes).await?;
        Ok(self.added(mailbox, copy_id, &copy, uid, modseq))
    }

    /// The copy's number in the mailbox after its writes are durable: the
    /// in-memory state follows, watchers are told; gives UIDVALIDITY and UID.
    fn added(&self, mailbox: &mut MailboxState, copy_id: String, copy: &CopyDoc, uid: u32, modseq: u64) -> (u32, u32) {
        mailbox.uid_next += 1;
        mailbox.highest_modseq = modseq;
        let copy_id: Arc<str> = Arc::from(copy_id);
        mailbox.by_copy.insert(copy_id.clone(), uid);
        mailbox.entries.insert(uid, entry(uid, copy_id, copy, modseq));
        self.emit(MailEvent::Added { mailbox: mailbox.doc.name.clone(), uid });
        (mailbox.local.uid_validity, uid)
    }

    /// Files a received message exactly once, under the copy id derived
    /// from the provider's `item` (see [`crate::incoming_copy_id`]): decrypted,
    /// or an `explained` failure. Without flags (so `\Recent` and unseen),
    /// with `extra` writes in the same batch (the incoming document's
    /// deletion and its done marker). If the copy exists already, or ever
    /// existed (a tombstone: filed and expunged since), by this device before
    /// a crash or by another device through sync, or if this is an
    /// explanation and the decrypted copy is or was known, nothing is filed
    /// again: only `extra` is written, and the answer is `None`. Otherwise the
    /// message is filed in `name`, durable before this returns (a decrypted
    /// copy deletes the item's explanation in the same batch), and the answer
    /// is the UIDVALIDITY and the new UID.
    pub async fn file_incoming(
        &self,
        name: &str,
        raw: &[u8],
        internal_date: (i64, i32),
        item: &str,
        explained: bool,
        extra: Vec<pb::Write>,
    ) -> Result<Option<(u32, u32)>> {
        let copy_id = converge::incoming_copy_id(item, explained);
        let twin = converge::incoming_copy_id(item, !explained);
        let known = async || {
            Ok::<_, MailError>(self.ever_known(&copy_id).await? || (explained && self.ever_known(&twin).await?))
        };
        if known().await? {
            self.write_extra(extra).await?;
            return Ok(None);
        }
        let stored = self.store_message(raw).await?;
        let (internal_date, zone) = internal_date;
        let mut guard = self.state().await?;
        let state = guard.as_mut().ok_or_else(|| MailError::NoMailbox(name.to_owned()))?;
        let replaced = if explained { None } else { state.locate(&twin) };
        let mailbox = state.get_mut(name)?;
        let copy = CopyDoc {
            mailbox: mailbox.id.clone(),
            message: stored.message_id,
            internal_date,
            zone,
            size: stored.size,
            flags: Vec::new(),
        };
        // Refused if the copy appeared (synced in) since the check above.
        let check =
            pb::Write { op: Some(pb::write::Op::Check(pb::CheckRevision { id: copy_id.clone(), rev: String::new() })) };
        let mut writes = stored.writes;
        writes.push(check);
        let (uid, modseq) = new_copy(mailbox, &copy_id, &copy, &mut writes);
        if replaced.is_some() {
            writes.extend([delete(&twin), delete(&format!("uid/{twin}"))]);
        }
        writes.extend(extra.iter().cloned());
        match self.client().batch(pb::BatchRequest { writes }).await {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::Aborted => {
                drop(guard);
                // A revision check failed: the copy is there now (filed
                // elsewhere), or an `extra` write's own check failed.
                if known().await? {
                    self.write_extra(extra).await?;
                    return Ok(None);
                }
                return Err(status.into());
            }
            Err(status) => {
                // The batch may have been applied with the reply lost.
                self.after_failed_batch(&status);
                drop(guard);
                return Err(status.into());
            }
        }
        let filed = self.added(mailbox, copy_id, &copy, uid, modseq);
        if let Some((mailbox_id, uid)) = replaced
            && let Some((mailbox, _)) = state.remove(&mailbox_id, uid)
        {
            self.emit(MailEvent::Expunged { mailbox, uid });
        }
        Ok(Some(filed))
    }

    /// Whether a document exists or existed (a tombstone).
    async fn ever_known(&self, copy_id: &str) -> Result<bool> {
        match self.client().get(pb::GetRequest { id: copy_id.to_owned(), include_deleted: true }).await {
            Ok(document) => Ok(!document.into_inner().rev.is_empty()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
            Err(status) => Err(status.into()),
        }
    }

    async fn write_extra(&self, extra: Vec<pb::Write>) -> Result<()> {
        if !extra.is_empty() {
            self.batch(extra).await?;
        }
        Ok(())
    }

    /// The writes that store a message's documents. Those stored already
    /// are written again (see [`MailModel::kept_alive`]).
    async fn store_message(&self, raw: &[u8]) -> Result<StoredMessage> {
        let split = split::split(raw);
        let mut ids = vec![split.message_id.clone()];
        ids.extend(split.contents.iter().map(|(id, _)| id.clone()));
        let existing = self.get_many(ids).await?;
        let live = |id: &str| existing.iter().find(|document| document.id == id && !document.rev.is_empty());
        if live(&split.message_id).is_some() {
            let writes = self.kept_alive(vec![split.message_id.clone()]).await?;
            return Ok(StoredMessage { message_id: split.message_id, size: split.size, writes });
        }
        let mut writes = Vec::new();
        for (id, bytes) in split.contents {
            if let Some(document) = live(&id) {
                writes.push(put(&id, CONTENTS, document.content.clone()));
                continue;
            }
            let content = if bytes.len() > MAX_INLINE_CONTENT {
                ContentDoc { blob: Some(self.put_blob(bytes).await?), ..ContentDoc::default() }
            } else {
                ContentDoc { data: data_encoding::BASE64.encode(&bytes), ..ContentDoc::default() }
            };
            writes.push(put(&id, CONTENTS, json(&content)));
        }
        let doc = MessageDoc { size: split.size, parts: split::parts(&split.skeleton), skeleton: split.skeleton };
        writes.push(put(&split.message_id, MESSAGES, json(&doc)));
        Ok(StoredMessage { message_id: split.message_id, size: split.size, writes })
    }

    /// The writes that put `messages` and their contents again, unchanged,
    /// for a new copy of them. Another device may have collected them (its
    /// last copy expunged) before it saw this copy; a new version written
    /// here beats that deletion when the two meet (the immutable order: a
    /// live version over a deletion), so the new copy never points at a
    /// message that is gone.
    async fn kept_alive(&self, mut messages: Vec<String>) -> Result<Vec<pb::Write>> {
        messages.sort();
        messages.dedup();
        let mut writes = Vec::new();
        let mut parts = Vec::new();
        for document in self.get_many(messages).await? {
            if document.rev.is_empty() || document.deleted {
                continue;
            }
            let doc: MessageDoc = parse(&document)?;
            parts.extend(doc.parts);
            writes.push(put(&document.id, MESSAGES, document.content));
        }
        parts.sort();
        parts.dedup();
        for document in self.get_many(parts).await? {
            if !document.rev.is_empty() && !document.deleted {
                writes.push(put(&document.id, CONTENTS, document.content));
            }
        }
        Ok(writes)
    }

    /// Keeps `bytes` as a store blob, sent a chunk at a time.
    async fn put_blob(&self, bytes: Vec<u8>) -> Result<BlobRef> {
        let size = bytes.len() as u64;
        let first = pb::PutBlobRequest {
            content_type: "application/octet-stream".into(),
            size,
            ..pb::PutBlobRequest::default()
        };
        let rest = bitmask_runtime::client::chunks_of(bytes, BLOB_UPLOAD_CHUNK, |data| pb::PutBlobRequest {
            data,
            ..pb::PutBlobRequest::default()
        });
        let info =
            self.client().put_blob(futures::stream::iter(std::iter::once(first).chain(rest))).await?.into_inner();
        Ok(BlobRef { id: info.id, size })
    }

    /// The bytes of a content kept as a blob.
    async fn read_blob(&self, blob: &BlobRef) -> Result<Vec<u8>> {
        let request = pb::GetBlobRequest { id: blob.id.clone(), offset: 0, length: 0 };
        let mut chunks = self.client().get_blob(request).await?.into_inner();
        let mut bytes = Vec::with_capacity(usize::try_from(blob.size).unwrap_or(0).min(64 << 20));
        while let Some(chunk) = chunks.message().await? {
            bytes.extend_from_slice(&chunk.data);
        }
        if bytes.len() as u64 != blob.size {
            return Err(MailError::Damaged(format!("blob {} has {} bytes, not {}", blob.id, bytes.len(), blob.size)));
        }
        Ok(bytes)
    }

    /// A message's raw bytes if the cache holds them.
    pub(crate) fn cached_raw(&self, message_id: &str) -> Option<Arc<Vec<u8>>> {
        self.raw_cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(message_id)
    }

    /// A message's raw bytes, exactly as appended.
    pub async fn raw(&self, message_id: &str) -> Result<Vec<u8>> {
        self.raws(&[Arc::from(message_id)])
            .await?
            .pop()
            .flatten()
            .map(|raw| raw.to_vec())
            .ok_or_else(|| MailError::Damaged(format!("{message_id} is gone")))
    }

    /// Several messages' raw bytes (None for one that is gone), read in
    /// batches and kept in the cache.
    pub async fn raws(&self, message_ids: &[Arc<str>]) -> Result<Vec<Option<Arc<Vec<u8>>>>> {
        let mut out: Vec<Option<Arc<Vec<u8>>>> = {
            let cache = self.raw_cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            message_ids.iter().map(|id| cache.get(id)).collect()
        };
        let missing: Vec<usize> = (0..message_ids.len()).filter(|index| out[*index].is_none()).collect();
        for chunk in missing.chunks(BATCH) {
            let ids: Vec<String> = chunk.iter().map(|index| message_ids[*index].to_string()).collect();
            let documents = self.get_many(ids).await?;
            let mut docs: Vec<Option<MessageDoc>> = Vec::with_capacity(documents.len());
            let mut parts: Vec<String> = Vec::new();
            for document in &documents {
                if document.rev.is_empty() || document.deleted {
                    docs.push(None);
                    continue;
                }
                let doc: MessageDoc = parse(document)?;
                parts.extend(doc.parts.iter().cloned());
                docs.push(Some(doc));
            }
            parts.sort();
            parts.dedup();
            let mut bytes: HashMap<String, Vec<u8>> = HashMap::new();
            for content in self.get_many(parts).await? {
                if content.rev.is_empty() || content.deleted {
                    continue;
                }
                let parsed: ContentDoc = parse(&content)?;
                let decoded = match parsed.blob {
                    Some(blob) => self.read_blob(&blob).await?,
                    None => data_encoding::BASE64
                        .decode(parsed.data.as_bytes())
                        .map_err(|_| MailError::Damaged(content.id.clone()))?,
                };
                bytes.insert(content.id, decoded);
            }
            for (index, doc) in chunk.iter().zip(docs) {
                let Some(doc) = doc else { continue };
                let raw = split::assemble(&doc.skeleton, doc.size, |id| bytes.get(id).map(Vec::as_slice))
                    .map_err(|missing| MailError::Damaged(missing.to_string()))?;
                let raw = Arc::new(raw);
                self.raw_cache
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .insert(message_ids[*index].clone(), raw.clone());
                out[*index] = Some(raw);
            }
        }
        Ok(out)
    }

    /// Changes the flags of `uids`; returns the entries that changed.
    pub async fn set_flags(
        &self,
        name: &str,
        uids: &[u32],
        operation: FlagOperation,
        flags: &Flags,
    ) -> Result<Vec<Entry>> {
        let mut guard = self.state().await?;
        let state = guard.as_mut().ok_or_else(|| MailError::NoMailbox(name.to_owned()))?;
        let mailbox = state.get_mut(name)?;
        let modseq = mailbox.highest_modseq + 1;
        let mut writes = Vec::new();
        let mut changed = Vec::new();
        for uid in uids {
            let Some(entry) = mailbox.entries.get(uid) else { continue };
            let mut new_flags = entry.flags.clone();
            new_flags.apply(operation, flags);
            if new_flags == entry.flags {
                continue;
            }
            let updated = Entry { flags: new_flags, modseq, ..entry.clone() };
            writes.push(put(&updated.copy, COPIES, json(&mailbox.copy_doc(&updated))));
            let uid_doc = UidDoc { mailbox: mailbox.id.clone(), uid: *uid, modseq, copy: updated.copy.to_string() };
            writes.push(put(&format!("uid/{}", updated.copy), UIDS, json(&uid_doc)));
            changed.push(updated);
        }
        if changed.is_empty() {
            return Ok(changed);
        }
        writes.push(add_to_counter(format!("modseq/{}", mailbox.id), 1));
        self.batch(writes).await?;
        mailbox.highest_modseq = modseq;
        for entry in &changed {
            mailbox.entries.insert(entry.uid, entry.clone());
            self.emit(MailEvent::FlagsChanged { mailbox: mailbox.doc.name.clone(), uid: entry.uid });
        }
        Ok(changed)
    }

    /// Copies `uids` to `destination` (flags kept); with `remove`, a move.
    /// Returns the destination's UIDVALIDITY and (source, new) UID pairs.
    pub async fn copy(
        &self,
        name: &str,
        uids: &[u32],
        destination: &str,
        remove: bool,
    ) -> Result<(u32, Vec<(u32, u32)>)> {
        let mut guard = self.state().await?;
        let state = guard.as_mut().ok_or_else(|| MailError::NoMailbox(name.to_owned()))?;
        let source_id = state.id_of(name).ok_or_else(|| MailError::NoMailbox(name.to_owned()))?;
        let destination_id = state.id_of(destination).ok_or_else(|| MailError::NoMailbox(destination.to_owned()))?;
        let sources: Vec<Entry> =
            uids.iter().filter_map(|uid| state.mailboxes.get(&source_id)?.entries.get(uid).cloned()).collect();
        let mut writes = self.kept_alive(sources.iter().map(|entry| entry.message.to_string()).collect()).await?;
        let target = state.mailboxes.get(&destination_id).ok_or_else(|| MailError::NoMailbox(destination.into()))?;
        let modseq = target.highest_modseq + 1;
        let mut pairs = Vec::new();
        let mut added = Vec::new();
        for (offset, source) in sources.iter().enumerate() {
            let uid = target.uid_next + offset as u32;
            let copy_id = random_id("copy");
            let entry = Entry { uid, copy: Arc::from(copy_id.as_str()), modseq, ..source.clone() };
            writes.push(put(&copy_id, COPIES, json(&target.copy_doc(&entry))));
            let uid_doc = UidDoc { mailbox: destination_id.clone(), uid, modseq, copy: copy_id.clone() };
            writes.push(put(&format!("uid/{copy_id}"), UIDS, json(&uid_doc)));
            pairs.push((source.uid, uid));
            added.push(entry);
        }
        if added.is_empty() {
            return Ok((target.local.uid_validity, pairs));
        }
        writes.push(add_to_counter(format!("uidnext/{destination_id}"), added.len() as i64));
        writes.push(add_to_counter(format!("modseq/{destination_id}"), 1));
        if remove && source_id != destination_id {
            for source in &sources {
                writes.push(delete(&source.copy));
                writes.push(delete(&format!("uid/{}", source.copy)));
            }
            writes.push(add_to_counter(format!("modseq/{source_id}"), 1));
        }
        self.batch(writes).await?;
        let validity = {
            let target =
                state.mailboxes.get_mut(&destination_id).ok_or_else(|| MailError::NoMailbox(destination.into()))?;
            target.uid_next += added.len() as u32;
            target.highest_modseq = modseq;
            for entry in added {
                target.by_copy.insert(entry.copy.clone(), entry.uid);
                self.emit(MailEvent::Added { mailbox: target.doc.name.clone(), uid: entry.uid });
                target.entries.insert(entry.uid, entry);
            }
            target.local.uid_validity
        };
        if remove
            && source_id != destination_id
            && let Some(source) = state.mailboxes.get_mut(&source_id)
        {
            source.highest_modseq += 1;
            for entry in &sources {
                source.entries.remove(&entry.uid);
                source.by_copy.remove(&entry.copy);
                self.emit(MailEvent::Expunged { mailbox: source.doc.name.clone(), uid: entry.uid });
            }
        }
        Ok((validity, pairs))
    }

    /// Removes the messages flagged `\Deleted` (only those in `uids`, when
    /// given) and collects documents no copy refers to any more. Returns the
    /// expunged UIDs in ascending order.
    pub async fn expunge(&self, name: &str, uids: Option<&[u32]>) -> Result<Vec<u32>> {
        let mut guard = self.state().await?;
        let state = guard.as_mut().ok_or_else(|| MailError::NoMailbox(name.to_owned()))?;
        let mailbox = state.get_mut(name)?;
        let doomed: Vec<Entry> = mailbox
            .entries
            .values()
            .filter(|entry| entry.flags.deleted && uids.is_none_or(|uids| uids.contains(&entry.uid)))
            .cloned()
            .collect();
        if doomed.is_empty() {
            return Ok(Vec::new());
        }
        let mut writes = Vec::new();
        for entry in &doomed {
            writes.push(delete(&entry.copy));
            writes.push(delete(&format!("uid/{}", entry.copy)));
        }
        writes.push(add_to_counter(format!("modseq/{}", mailbox.id), 1));
        for chunk in writes.chunks(BATCH * 2) {
            self.batch(chunk.to_vec()).await?;
        }
        mailbox.highest_modseq += 1;
        for entry in &doomed {
            mailbox.entries.remove(&entry.uid);
            mailbox.by_copy.remove(&entry.copy);
            self.emit(MailEvent::Expunged { mailbox: mailbox.doc.name.clone(), uid: entry.uid });
        }
        drop(guard);
        self.collect(doomed.iter().map(|entry| entry.message.to_string()).collect()).await?;
        Ok(doomed.iter().map(|entry| entry.uid).collect())
    }

    /// Deletes the message documents (and their contents) that no copy
    /// refers to any more.
    async fn collect(&self, mut messages: Vec<String>) -> Result<()> {
        messages.sort();
        messages.dedup();
        let mut writes = Vec::new();
        let mut doomed_parts = Vec::new();
        for message in messages {
            if !self.referenced(COPIES_BY_MESSAGE, &message).await? {
                let request = pb::GetRequest { id: message.clone(), include_deleted: false };
                let doc: MessageDoc = match self.client().get(request).await {
                    Ok(document) => parse(&document.into_inner())?,
                    Err(status) if status.code() == tonic::Code::NotFound => continue,
                    Err(status) => return Err(status.into()),
                };
                self.batch(vec![delete(&message)]).await?;
                for part in doc.parts {
                    if !self.referenced(MESSAGES_BY_PART, &part).await? {
                        writes.push(delete(&part));
                        doomed_parts.push(part);
                    }
                }
            }
        }
        // The blobs of large contents go with their documents (after them: a
        // crash in between leaves a blob behind, never a content without one).
        let mut blobs = Vec::new();
        for content in self.get_many(doomed_parts).await? {
            if !content.rev.is_empty()
                && !content.deleted
                && let Ok(ContentDoc { blob: Some(blob), .. }) = parse::<ContentDoc>(&content)
            {
                blobs.push(blob.id);
            }
        }
        for chunk in writes.chunks(BATCH) {
            self.batch(chunk.to_vec()).await?;
        }
        for blob in blobs {
            if let Err(status) = self.client().delete_blob(pb::DeleteBlobRequest { id: blob }).await
                && status.code() != tonic::Code::NotFound
            {
                tracing::warn!(error = %status.message(), "deleting the blob of a content");
            }
        }
        Ok(())
    }

    async fn referenced(&self, index: &str, id: &str) -> Result<bool> {
        let request = pb::QueryRequest {
            index: index.into(),
            equal: vec![text(id)],
            limit: 1,
            keys_only: true,
            ..Default::default()
        };
        Ok(!self.client().query(request).await?.into_inner().documents.is_empty())
    }
}

struct StoredMessage {
    message_id: String,
    size: u64,
    writes: Vec<pb::Write>,
}

fn entry(uid: u32, copy: Arc<str>, doc: &CopyDoc, modseq: u64) -> Entry {
    Entry {
        uid,
        copy,
        message: Arc::from(doc.message.as_str()),
        flags: Flags::from_list(&doc.flags),
        internal_date: doc.internal_date,
        zone_minutes: doc.zone,
        size: doc.size,
        modseq,
    }
}

impl Mailstore for MailModel {
    async fn mailboxes(&self) -> Result<Vec<MailboxInfo>> {
        MailModel::mailboxes(self).await
    }
    async fn mailbox(&self, name: &str) -> Result<MailboxInfo> {
        MailModel::mailbox(self, name).await
    }
    async fn create_mailbox(&self, name: &str, special_use: SpecialUse) -> Result<MailboxInfo> {
        MailModel::create_mailbox(self, name, special_use).await
    }
    async fn delete_mailbox(&self, name: &str) -> Result<()> {
        MailModel::delete_mailbox(self, name).await
    }
    async fn rename_mailbox(&self, name: &str, new_name: &str) -> Result<()> {
        MailModel::rename_mailbox(self, name, new_name).await
    }
    async fn set_subscribed(&self, name: &str, subscribed: bool) -> Result<()> {
        MailModel::set_subscribed(self, name, subscribed).await
    }
    async fn snapshot(&self, name: &str) -> Result<(MailboxInfo, Vec<Entry>)> {
        MailModel::snapshot(self, name).await
    }
    async fn claim_recent(&self, name: &str) -> Result<u32> {
        MailModel::claim_recent(self, name).await
    }
    async fn append(
        &self,
        name: &str,
        raw: &[u8],
        flags: &Flags,
        internal_date: Option<(i64, i32)>,
    ) -> Result<(u32, u32)> {
        MailModel::append(self, name, raw, flags, internal_date).await
    }
    async fn raw(&self, message: &str) -> Result<Vec<u8>> {
        MailModel::raw(self, message).await
    }
    fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::SeqCst)
    }
    async fn raws(&self, messages: &[Arc<str>]) -> Result<Vec<Option<Arc<Vec<u8>>>>> {
        MailModel::raws(self, messages).await
    }
    async fn set_flags(&self, name: &str, uids: &[u32], operation: FlagOperation, flags: &Flags) -> Result<Vec<Entry>> {
        MailModel::set_flags(self, name, uids, operation, flags).await
    }
    async fn copy(&self, name: &str, uids: &[u32], destination: &str, remove: bool) -> Result<(u32, Vec<(u32, u32)>)> {
        MailModel::copy(self, name, uids, destination, remove).await
    }
    async fn expunge(&self, name: &str, uids: Option<&[u32]>) -> Result<Vec<u32>> {
        MailModel::expunge(self, name, uids).await
    }
}

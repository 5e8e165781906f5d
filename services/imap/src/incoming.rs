//! The incoming-mail processor: mail the provider's MX accepted, as the
//! store's sync keeps it (a local blob holding the raw message encrypted to
//! the account's key, and a local-only document `incoming/<item>`), is
//! decrypted, verified and marked (`bitmask_mail::incoming`, with the key
//! service doing the cryptography), filed in INBOX, and the sender's key is
//! learned.
//!
//! Exactly once, never lost: the filed copy has the deterministic id
//! `copy/in-<item>` (`copy/in-<item>-explained` for an explanation, which a
//! decrypted copy replaces: see `bitmask_mail::incoming_copy_id`), written
//! in one store batch with the deletion of the incoming document and the `incoming-done/<item>` marker (which tells the
//! store's sync to delete the item at the provider). A crash before the
//! batch leaves the item waiting; after it, the item is done. An item filed
//! already (a retry, or another device that processed it) is only marked
//! done. A failure (the key service or the store away) is retried with
//! back-off, one item at a time, oldest first; a message that cannot be
//! decrypted is filed as a readable explanation with its bytes attached.
//!
//! Nothing is retried forever: each attempt is counted in a local document
//! `incoming-attempts/<item>` *before* it starts (so an attempt that kills
//! the process counts too), and given back when it failed for a reason
//! that is not the item's (a service away or restarting, the store locked
//! or full). After [`MAX_ATTEMPTS`] the item is filed as an explanation
//! with its bytes attached; if even that cannot be written, it waits and is
//! reported (`bitmaskctl mail status`) with the last error.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bitmask_mail::MailModel;
use bitmask_mail::incoming::{self, Checked, Filed, Step};
use bitmask_proto::keys::v1 as keys_pb;
use bitmask_proto::keys::v1::keys_client::KeysClient;
use bitmask_proto::store::v1 as pb;
use bitmask_proto::store::v1::store_client::StoreClient;
use bitmask_runtime::client::TracedChannel;
use serde::Deserialize;
use tokio::time::Instant;
use tonic::{Code, Status};

/// Waiting items, one document each (local only).
pub const INCOMING: &str = "incoming";
/// Markers of filed items, for the store's sync (local only).
pub const DONE: &str = "incoming-done";
/// Every waiting item, oldest first.
pub const BY_RECEIVED: &str = "incoming-by-received";
/// Attempts at each waiting item, and the last error (local only).
pub const ATTEMPTS: &str = "incoming-attempts";
/// Every attempts document.
const ATTEMPTS_ALL: &str = "incoming-attempts-all";
/// Attempts counted against an item before it is filed as an explanation.
pub const MAX_ATTEMPTS: u32 = 4;
/// The store counter of items filed as undecryptable on this device.
pub const UNDECRYPTABLE: &str = "incoming-undecryptable";
/// Where incoming mail is filed.
const MAILBOX: &str = "INBOX";
/// Bytes per message of a request stream to the key service.
const CHUNK: usize = 256 << 10;
/// Messages up to this size travel through the key service.
const MAX_MESSAGE: usize = 80 << 20;
/// The most plaintext one decryption may give: the key service's own cap
/// (`bitmask_keys::openpgp::MAX_PLAINTEXT`, 64 MiB), checked here again.
const MAX_PLAINTEXT: usize = 64 << 20;
/// One item's processing is given up (and retried) after this long.
const ITEM_TIMEOUT: Duration = Duration::from_secs(300);
/// Learning keys from a filed message is given up after this long.
const LEARN_TIMEOUT: Duration = Duration::from_secs(30);
/// The first wait before following the store again (it may be unlocked in
/// a moment: the account is starting), doubled up to the second.
const RESTART_FIRST: Duration = Duration::from_millis(50);
const RESTART_MAX: Duration = Duration::from_secs(1);
/// The longest wait before an item that failed is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// An incoming document's content, as the store's sync writes it.
#[derive(Debug, Deserialize)]
struct IncomingDoc {
    item: String,
    blob: String,
    #[serde(default)]
    size: u64,
    received_ms: i64,
}

/// The processor of one account.
#[derive(Debug)]
pub struct Processor {
    /// The account's address (lower case).
    address: String,
    store: StoreClient<TracedChannel>,
    keys: KeysClient<TracedChannel>,
    model: Arc<MailModel>,
    /// The account's secret key has been seen (decryption may begin).
    key_ready: AtomicBool,
    /// Test fault injection: filing items whose id starts with this fails
    /// (`BITMASK_FAULT_REFUSE_FILING`; never set in use).
    refuse_filing: Option<String>,
}

/// What is known of the attempts at one item.
#[derive(Debug, Default, serde::Serialize, Deserialize)]
pub struct Attempts {
    pub attempts: u32,
    #[serde(default)]
    pub last_error: String,
}

/// An item that failed: when to try again.
#[derive(Debug)]
struct Retry {
    attempts: u32,
    due: Instant,
}

impl Processor {
    pub fn new(address: &str, store: TracedChannel, keys: TracedChannel, model: Arc<MailModel>) -> Self {
        Self {
            address: address.to_lowercase(),
            store: StoreClient::new(store)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            keys: KeysClient::new(keys).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE),
            model,
            key_ready: AtomicBool::new(false),
            refuse_filing: std::env::var("BITMASK_FAULT_REFUSE_FILING").ok().filter(|prefix| !prefix.is_empty()),
        }
    }

    /// Processes waiting items and then new ones as they arrive, for as
    /// long as the process runs (the store may be locked at first, or
    /// restart: it is tried again soon, then every second).
    pub async fn run(self: Arc<Self>) {
        let mut retries = HashMap::new();
        let mut delay = RESTART_FIRST;
        loop {
            let started = Instant::now();
            let outcome = self.follow(&mut retries).await;
            if started.elapsed() > RESTART_MAX {
                delay = RESTART_FIRST;
            }
            match outcome {
                Ok(()) => tracing::debug!("the store's change stream ended"),
                Err(status) if matches!(status.code(), Code::FailedPrecondition | Code::Unavailable) => {
                    tracing::debug!(error = %status.message(), "incoming mail waits for the store");
                }
                Err(status) => tracing::warn!(error = %status.message(), "processing incoming mail"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RESTART_MAX);
        }
    }

    /// One pass over the waiting items, then one more whenever an item
    /// arrives or a retry is due, until the change stream fails.
    async fn follow(&self, retries: &mut HashMap<String, Retry>) -> Result<(), Status> {
        self.declare().await?;
        // Watching first: an item written after this is announced, one
        // written before is found by the pass.
        let request =
            pb::WatchRequest { collections: vec![INCOMING.into()], since_sequence: None, include_content: false };
        let mut changes = self.store.clone().watch(request).await?.into_inner();
        loop {
            let next = self.pass(retries).await?;
            let deadline = Instant::now() + next.unwrap_or(MAX_BACKOFF);
            loop {
                tokio::select! {
                    change = changes.message() => match change? {
                        None => return Ok(()),
                        // Our own deletions are announced too: no new work.
                        Some(change) if change.document.as_ref().is_some_and(|document| document.deleted) => continue,
                        Some(_) => {
                            // One pass takes every item waiting: the other
                            // announcements already here need no pass of
                            // their own (under a burst there is one each).
                            while let Some(change) = futures::FutureExt::now_or_never(changes.message()) {
                                if change?.is_none() {
                                    return Ok(());
                                }
                            }
                            break;
                        }
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
    }

    async fn declare(&self) -> Result<(), Status> {
        let mut store = self.store.clone();
        for name in [INCOMING, DONE, ATTEMPTS] {
            let definition = pb::CollectionDefinition {
                name: name.into(),
                conflict_policy: pb::ConflictPolicy::LastWriterWins.into(),
                local_only: true,
            };
            store.declare_collection(definition).await?;
        }
        let index = pb::IndexDefinition {
            name: BY_RECEIVED.into(),
            collection: INCOMING.into(),
            fields: vec!["/received_ms".into()],
            unique: false,
        };
        store.declare_index(index).await?;
        let index = pb::IndexDefinition {
            name: ATTEMPTS_ALL.into(),
            collection: ATTEMPTS.into(),
            fields: vec![],
            unique: false,
        };
        store.declare_index(index).await?;
        Ok(())
    }

    /// Waiting items that failed at least once: their ids and attempts.
    pub async fn problems(store: &TracedChannel) -> Result<Vec<(String, Attempts)>, Status> {
        let mut client = StoreClient::new(store.clone());
        let request = pb::QueryRequest { index: ATTEMPTS_ALL.into(), limit: 100, ..Default::default() };
        let documents = match client.query(request).await {
            Ok(page) => page.into_inner().documents,
            // Not declared yet: nothing ever arrived.
            Err(status)
                if matches!(status.code(), Code::NotFound | Code::FailedPrecondition | Code::InvalidArgument) =>
            {
                return Ok(Vec::new());
            }
            Err(status) => return Err(status),
        };
        Ok(documents
            .into_iter()
            .filter_map(|document| {
                let attempts: Attempts = serde_json::from_slice(&document.content).ok()?;
                let item = document.id.strip_prefix(&format!("{ATTEMPTS}/")).unwrap_or(&document.id).to_owned();
                (!attempts.last_error.is_empty()).then_some((item, attempts))
            })
            .collect())
    }

    /// Every waiting item, oldest first.
    /// How many items wait, and how many were filed as undecryptable here
    /// (for the Mail API's status).
    pub async fn counts(store: &TracedChannel) -> Result<(u32, u32), Status> {
        let mut client = StoreClient::new(store.clone());
        let request = pb::QueryRequest { index: BY_RECEIVED.into(), keys_only: true, ..Default::default() };
        let waiting = match client.query(request).await {
            Ok(page) => page.into_inner().documents.len() as u32,
            // Not declared yet: nothing ever arrived.
            Err(status)
                if matches!(status.code(), Code::NotFound | Code::FailedPrecondition | Code::InvalidArgument) =>
            {
                0
            }
            Err(status) => return Err(status),
        };
        let counter = pb::AddToCounterRequest { name: UNDECRYPTABLE.into(), delta: 0 };
        let undecryptable = client.add_to_counter(counter).await?.into_inner().value;
        Ok((waiting, u32::try_from(undecryptable).unwrap_or(0)))
    }

    async fn waiting(&self) -> Result<Vec<pb::Document>, Status> {
        let mut documents = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = pb::QueryRequest { index: BY_RECEIVED.into(), limit: 500, page_token, ..Default::default() };
            let page = self.store.clone().query(request).await?.into_inner();
            documents.extend(page.documents);
            if page.next_page_token.is_empty() {
                return Ok(documents);
            }
            page_token = page.next_page_token;
        }
    }

    /// Processes every waiting item that is due, one at a time; returns how
    /// long until the next retry is due, if any item waits for one.
    async fn pass(&self, retries: &mut HashMap<String, Retry>) -> Result<Option<Duration>, Status> {
        let documents = self.waiting().await?;
        retries.retain(|id, _| documents.iter().any(|document| &document.id == id));
        let mut next: Option<Instant> = None;
        for document in documents {
            if let Some(retry) = retries.get(&document.id)
                && retry.due > Instant::now()
            {
                next = Some(next.map_or(retry.due, |next| next.min(retry.due)));
                continue;
            }
            let outcome = match tokio::time::timeout(ITEM_TIMEOUT, self.process(&document)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(Status::deadline_exceeded("processing took too long")),
            };
            match outcome {
                Ok(()) => {
                    retries.remove(&document.id);
                }
                Err(status) => {
                    let retry =
                        retries.entry(document.id.clone()).or_insert(Retry { attempts: 0, due: Instant::now() });
                    retry.attempts += 1;
                    let backoff = Duration::from_secs(1 << (retry.attempts - 1).min(10)).min(MAX_BACKOFF);
                    retry.due = Instant::now() + backoff;
                    next = Some(next.map_or(retry.due, |next| next.min(retry.due)));
                    tracing::warn!(
                        document = %document.id,
                        attempts = retry.attempts,
                        retry_in_s = backoff.as_secs(),
                        code = ?status.code(),
                        error = %status.message(),
                        "incoming message not filed yet"
                    );
                }
            }
        }
        Ok(next.map(|due| due.saturating_duration_since(Instant::now())))
    }

    /// Files one item (or only marks it done if it was filed before).
    async fn process(&self, document: &pb::Document) -> Result<(), Status> {
        let doc: IncomingDoc = serde_json::from_slice(&document.content)
            .map_err(|error| Status::data_loss(format!("{} is damaged: {error}", document.id)))?;
        let item = doc.item.as_str();
        // Filed before: the decrypted copy (an explanation does not stop
        // this device from filing what it can decrypt).
        let copy_id = bitmask_mail::incoming_copy_id(item, false);
        let mut done = vec![
            pb::Write {
                op: Some(pb::write::Op::Delete(pb::DeleteRequest {
                    id: document.id.clone(),
                    expected_rev: document.rev.clone(),
                })),
            },
            pb::Write {
                op: Some(pb::write::Op::Put(pb::PutRequest {
                    id: format!("{DONE}/{item}"),
                    collection: DONE.into(),
                    // The blob too: if it outlives this (a crash before it
                    // is deleted below), the store deletes it with the marker.
                    content: serde_json::json!({ "item": item, "blob": doc.blob }).to_string().into_bytes(),
                    ..Default::default()
                })),
            },
        ];
        let attempts_id = format!("{ATTEMPTS}/{item}");
        let known = self.attempts(&attempts_id).await?;
        if known.is_some() {
            done.push(pb::Write {
                op: Some(pb::write::Op::Delete(pb::DeleteRequest {
                    id: attempts_id.clone(),
                    expected_rev: String::new(),
                })),
            });
        }
        if self.filed_before(&copy_id).await? {
            // A retry after a crash, or another device filed it.
            self.store.clone().batch(pb::BatchRequest { writes: done }).await?;
            self.delete_blob(&doc.blob).await;
            tracing::info!(item, "incoming message was filed before");
            return Ok(());
        }
        let recorded = known.is_some();
        let known = known.unwrap_or_default();
        if known.attempts >= MAX_ATTEMPTS {
            return self.file_unfiled(document, &doc, known, done).await;
        }
        // Written below, before the attempt: it goes with the item.
        if !recorded {
            done.push(pb::Write {
                op: Some(pb::write::Op::Delete(pb::DeleteRequest {
                    id: attempts_id.clone(),
                    expected_rev: String::new(),
                })),
            });
        }
        // Counted before it starts: an attempt that kills the process counts.
        let counted = Attempts { attempts: known.attempts + 1, last_error: known.last_error.clone() };
        self.set_attempts(&attempts_id, &counted).await?;
        let outcome = self.attempt(document, &doc, done).await;
        if let Err(status) = &outcome {
            let attempts = if is_transient(status) { known.attempts } else { counted.attempts };
            let record = Attempts { attempts, last_error: format!("{:?}: {}", status.code(), status.message()) };
            if let Err(error) = self.set_attempts(&attempts_id, &record).await {
                tracing::debug!(error = %error.message(), "recording an attempt at an incoming item");
            }
        }
        outcome
    }

    /// The attempts at an item so far (None: none was recorded).
    async fn attempts(&self, id: &str) -> Result<Option<Attempts>, Status> {
        match self.store.clone().get(pb::GetRequest { id: id.to_owned(), include_deleted: false }).await {
            Ok(document) => Ok(Some(serde_json::from_slice(&document.into_inner().content).unwrap_or_default())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status),
        }
    }

    async fn set_attempts(&self, id: &str, attempts: &Attempts) -> Result<(), Status> {
        let put = pb::PutRequest {
            id: id.to_owned(),
            collection: ATTEMPTS.into(),
            content: serde_json::to_vec(attempts).unwrap_or_default(),
            ..Default::default()
        };
        self.store.clone().put(put).await.map(drop)
    }

    /// Files the explanation of an item that failed [`MAX_ATTEMPTS`] times,
    /// with its bytes (as the provider kept them) attached.
    async fn file_unfiled(
        &self,
        document: &pb::Document,
        doc: &IncomingDoc,
        known: Attempts,
        done: Vec<pb::Write>,
    ) -> Result<(), Status> {
        let item = doc.item.as_str();
        let encrypted = self.read_blob(&doc.blob, doc.size).await?;
        let filed =
            incoming::unfiled(&self.address, item, doc.received_ms, known.attempts, &known.last_error, &encrypted);
        let date = (doc.received_ms.div_euclid(1000), 0);
        self.model
            .file_incoming(MAILBOX, &filed.raw, date, item, true, done)
            .await
            .map_err(|error| Status::unavailable(format!("filing the explanation of {}: {error}", document.id)))?;
        self.delete_blob(&doc.blob).await;
        tracing::warn!(
            item,
            attempts = known.attempts,
            "an incoming message that could not be filed is filed as an explanation"
        );
        Ok(())
    }

    /// One attempt at reading and filing an item.
    async fn attempt(
        &self,
        document: &pb::Document,
        doc: &IncomingDoc,
        mut done: Vec<pb::Write>,
    ) -> Result<(), Status> {
        let item = doc.item.as_str();
        let encrypted = match self.read_blob(&doc.blob, doc.size).await {
            Ok(encrypted) => encrypted,
            Err(status) if status.code() == Code::NotFound => {
                // The local copy is gone (it should not be): the item is
                // still at the provider, so the document goes and the
                // store fetches the item again.
                tracing::warn!(item, "the local copy of an incoming item is missing: fetching it again");
                let forget = pb::Write {
                    op: Some(pb::write::Op::Delete(pb::DeleteRequest {
                        id: document.id.clone(),
                        expected_rev: document.rev.clone(),
                    })),
                };
                self.store.clone().batch(pb::BatchRequest { writes: vec![forget] }).await?;
                return Ok(());
            }
            Err(status) => return Err(status),
        };
        let filed = self.read(doc, encrypted).await?;
        let explained = matches!(filed.encryption, incoming::Encryption::Failed);
        if explained {
            done.push(pb::Write {
                op: Some(pb::write::Op::AddToCounter(pb::AddToCounterRequest { name: UNDECRYPTABLE.into(), delta: 1 })),
            });
        }
        if self.refuse_filing.as_deref().is_some_and(|prefix| item.starts_with(prefix)) {
            return Err(Status::internal("filing refused (BITMASK_FAULT_REFUSE_FILING)"));
        }
        let date = (doc.received_ms.div_euclid(1000), 0);
        let uid =
            self.model.file_incoming(MAILBOX, &filed.raw, date, item, explained, done).await.map_err(status_of_mail)?;
        self.delete_blob(&doc.blob).await;
        tracing::info!(
            item,
            uid = uid.map(|(_, uid)| uid),
            encryption = filed.encryption.header_value(),
            signature = %filed.signature.header_value(),
            "incoming message filed"
        );
        // After filing, so a slow key fetch never delays the mail.
        self.learn(filed).await;
        Ok(())
    }

    async fn filed_before(&self, copy_id: &str) -> Result<bool, Status> {
        match self.store.clone().get(pb::GetRequest { id: copy_id.to_owned(), include_deleted: true }).await {
            Ok(document) => Ok(!document.into_inner().rev.is_empty()),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(status),
        }
    }

    async fn read_blob(&self, id: &str, size: u64) -> Result<Vec<u8>, Status> {
        let request = pb::GetBlobRequest { id: id.to_owned(), offset: 0, length: 0 };
        let mut stream = self.store.clone().get_blob(request).await?.into_inner();
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(MAX_MESSAGE));
        while let Some(chunk) = stream.message().await? {
            bytes.extend_from_slice(&chunk.data);
        }
        Ok(bytes)
    }

    async fn delete_blob(&self, id: &str) {
        match self.store.clone().delete_blob(pb::DeleteBlobRequest { id: id.to_owned() }).await {
            Ok(_) => {}
            Err(status) if status.code() == Code::NotFound => {}
            // Only space is lost: the item is filed and done.
            Err(status) => tracing::warn!(blob = id, error = %status.message(), "deleting an incoming blob"),
        }
    }

    /// Reads an item; a signature by a key not known here is read again
    /// after looking the sender's key up (the provider's directory, WKD),
    /// so mail from a correspondent of the same provider verifies at once.
    ///
    /// The item's bytes go as soon as the provider's layer is off (a big
    /// message is held in about two copies at most): a second reading
    /// reads them from the store again.
    async fn read(&self, doc: &IncomingDoc, encrypted: Vec<u8>) -> Result<Filed, Status> {
        let filed = self.read_once(doc, encrypted).await?;
        if !matches!(filed.signature, incoming::Signature::CouldNotVerify)
            || matches!(filed.encryption, incoming::Encryption::Failed)
        {
            return Ok(filed);
        }
        let Some(sender) = incoming::from_address(&filed.raw) else { return Ok(filed) };
        if self.discover(&sender).await {
            drop(filed);
            let encrypted = self.read_blob(&doc.blob, doc.size).await?;
            return self.read_once(doc, encrypted).await;
        }
        Ok(filed)
    }

    /// Looks up the key of a sender we have none for; whether one was found.
    async fn discover(&self, sender: &str) -> bool {
        let lookup = |fetch: bool| keys_pb::GetKeyRequest {
            selector: Some(keys_pb::get_key_request::Selector::Address(sender.to_owned())),
            fetch,
        };
        // Known already (the signer is someone else): nothing to learn.
        if self.keys.clone().get_key(lookup(false)).await.is_ok() {
            return false;
        }
        match tokio::time::timeout(LEARN_TIMEOUT, self.keys.clone().get_key(lookup(true))).await {
            Ok(Ok(key)) => {
                tracing::info!(fingerprint = %key.into_inner().fingerprint, "found the key of an incoming message's sender");
                true
            }
            Ok(Err(status)) => {
                tracing::debug!(error = %status.message(), "no key found for an incoming message's sender");
                false
            }
            Err(_) => false,
        }
    }

    /// The provider's layer off, then the sender's protection read.
    async fn read_once(&self, doc: &IncomingDoc, encrypted: Vec<u8>) -> Result<Filed, Status> {
        self.wait_for_key().await?;
        let sent = match self.decrypt(&encrypted).await {
            Ok((plaintext, _)) => plaintext,
            Err(status) if is_permanent(&status) => {
                tracing::warn!(item = %doc.item, error = %status.message(), "an incoming message cannot be decrypted");
                return Ok(incoming::undecryptable(
                    &self.address,
                    &doc.item,
                    doc.received_ms,
                    status.message(),
                    &encrypted,
                ));
            }
            Err(status) => return Err(status),
        };
        drop(encrypted);
        let mut step = incoming::process(sent);
        loop {
            step = match step {
                Step::File(filed) => return Ok(filed),
                Step::Decrypt(then) => match self.decrypt(then.ciphertext()).await {
                    Ok((plaintext, checked)) => then.decrypted(plaintext, checked),
                    Err(status) if is_permanent(&status) => {
                        tracing::info!(item = %doc.item, error = %status.message(), "the sender's encryption cannot be read");
                        then.failed()
                    }
                    Err(status) => return Err(status),
                },
                Step::Verify { data, detached, then } => match self.verify(data, detached).await {
                    Ok(checked) => then.verified(checked),
                    // A signature that cannot even be read is a bad one.
                    Err(status) if is_permanent(&status) => then.verified(Checked::Invalid),
                    Err(status) => return Err(status),
                },
            };
        }
    }

    /// Decryption needs the account's key, which bitmaskd has the key
    /// service make right after the store is unlocked: until it exists,
    /// "not for us" would be wrong, so the item waits.
    async fn wait_for_key(&self) -> Result<(), Status> {
        if self.key_ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        let request = keys_pb::ListKeysRequest { address: self.address.clone(), only_secret: true };
        let keys = self.keys.clone().list_keys(request).await?.into_inner().keys;
        if keys.is_empty() {
            return Err(Status::failed_precondition("the account has no key yet"));
        }
        self.key_ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn decrypt(&self, ciphertext: &[u8]) -> Result<(Vec<u8>, Checked), Status> {
        let options = keys_pb::DecryptRequest {
            item: Some(keys_pb::decrypt_request::Item::Options(keys_pb::DecryptOptions { verify: true })),
        };
        let data = |chunk: Vec<u8>| keys_pb::DecryptRequest { item: Some(keys_pb::decrypt_request::Item::Data(chunk)) };
        let mut keys = self.keys.clone();
        chunked(options, ciphertext, data, move |requests| async move {
            let mut stream = keys.decrypt(requests).await?.into_inner();
            let mut plaintext = Vec::with_capacity(ciphertext.len());
            let mut checked = Checked::None;
            while let Some(message) = stream.message().await? {
                // The key service stops there itself (a compression bomb); a
                // reply that does not is refused the same way, for good.
                if plaintext.len() + message.data.len() > MAX_PLAINTEXT {
                    return Err(Status::invalid_argument(format!(
                        "the decrypted message is larger than {MAX_PLAINTEXT} bytes"
                    )));
                }
                plaintext.extend_from_slice(&message.data);
                if let Some(signature) = message.signature {
                    checked = checked_from(signature);
                }
            }
            Ok::<_, Status>((plaintext, checked))
        })
        .await
    }

    async fn verify(&self, data: Vec<u8>, detached: Option<Vec<u8>>) -> Result<Checked, Status> {
        let options = keys_pb::VerifyOptions { detached_signature: detached.unwrap_or_default() };
        let options = keys_pb::VerifyRequest { item: Some(keys_pb::verify_request::Item::Options(options)) };
        let piece = |chunk: Vec<u8>| keys_pb::VerifyRequest { item: Some(keys_pb::verify_request::Item::Data(chunk)) };
        let mut keys = self.keys.clone();
        chunked(options, &data, piece, move |requests| async move {
            let reply = keys.verify(requests).await?.into_inner();
            Ok::<_, Status>(reply.signature.map(checked_from).unwrap_or_default())
        })
        .await
    }

    /// Imports what the message offers as its sender's key; a failure is
    /// only logged. (Given the filed message, which is not needed after.)
    async fn learn(&self, filed: Filed) {
        let request = keys_pb::LearnFromMessageRequest {
            message: filed.raw,
            verified_sender: filed.verified_sender.unwrap_or_default(),
        };
        match tokio::time::timeout(LEARN_TIMEOUT, self.keys.clone().learn_from_message(request)).await {
            Ok(Ok(reply)) => {
                for result in reply.into_inner().results {
                    tracing::info!(
                        fingerprint = %result.fingerprint,
                        imported = result.imported,
                        reason = %result.reason,
                        "a key offered by incoming mail"
                    );
                }
            }
            Ok(Err(status)) => tracing::warn!(error = %status.message(), "learning keys from incoming mail"),
            Err(_) => tracing::warn!("learning keys from incoming mail took too long"),
        }
    }
}

/// A client-streaming call with `data` sent in chunks of [`CHUNK`] bytes
/// after `first`: a chunk is copied only when the call is ready for it (a
/// few wait at most), never the whole of `data` at once.
async fn chunked<Request, Call, T>(
    first: Request,
    data: &[u8],
    piece: impl Fn(Vec<u8>) -> Request,
    call: impl FnOnce(tokio_stream::wrappers::ReceiverStream<Request>) -> Call,
) -> Result<T, Status>
where
    Call: std::future::Future<Output = Result<T, Status>>,
    Request: Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let feed = async move {
        // A send fails when the call is over (refused): nothing more to send.
        if sender.send(first).await.is_err() {
            return;
        }
        for chunk in data.chunks(CHUNK) {
            if sender.send(piece(chunk.to_vec())).await.is_err() {
                return;
            }
        }
    };
    // Both at once: the call reads its reply while the rest is fed.
    let (reply, ()) = tokio::join!(call(tokio_stream::wrappers::ReceiverStream::new(receiver)), feed);
    reply
}

/// Whether a failure is the situation's rather than the item's: a service
/// away or restarting, the store locked or full. Such an attempt is not
/// counted against the item.
fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::FailedPrecondition | Code::Cancelled | Code::Unknown | Code::ResourceExhausted
    )
}

/// A mail model error as a status, keeping what kind of failure it was.
fn status_of_mail(error: bitmask_mail::MailError) -> Status {
    match error {
        bitmask_mail::MailError::Unavailable(message) => Status::unavailable(message),
        bitmask_mail::MailError::NoSpace(message) => Status::resource_exhausted(message),
        other => Status::internal(other.to_string()),
    }
}

/// Whether the key service refused the data itself (retrying cannot help),
/// rather than failing to answer.
fn is_permanent(status: &Status) -> bool {
    matches!(status.code(), Code::InvalidArgument | Code::PermissionDenied)
}

fn checked_from(outcome: keys_pb::SignatureOutcome) -> Checked {
    match outcome.status() {
        keys_pb::SignatureStatus::Valid => {
            Checked::Valid { fingerprint: outcome.fingerprint, signer_addresses: outcome.signer_addresses }
        }
        keys_pb::SignatureStatus::Invalid => Checked::Invalid,
        keys_pb::SignatureStatus::UnknownSigner => Checked::UnknownSigner,
        keys_pb::SignatureStatus::None | keys_pb::SignatureStatus::Unspecified => Checked::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_large_plaintext_is_permanent_and_the_caps_agree() {
        assert!(is_permanent(&Status::invalid_argument("the decrypted message is larger than 67108864 bytes")));
        assert!(!is_permanent(&Status::unavailable("the key service is restarting")));
        assert_eq!(MAX_PLAINTEXT, bitmask_keys::openpgp::MAX_PLAINTEXT);
    }
}

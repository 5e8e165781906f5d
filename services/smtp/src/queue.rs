//! The outgoing queue, kept in the store so that the `250` a mail client
//! gets means the message is on disk: the message itself in a local blob,
//! its envelope and delivery state in a local document (`outbox/<id>`). Both
//! stay on this device: another device must not send it a second time.

use std::time::{Duration, SystemTime};

use bitmask_proto::store::v1 as pb;
use bitmask_proto::store::v1::store_client::StoreClient;
use bitmask_runtime::client::{TracedChannel, chunks_of};
use serde::{Deserialize, Serialize};
use tonic::Status;

const COLLECTION: &str = "outbox";
const ALL: &str = "outbox-all";
pub const CHUNK: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Queued,
    Sending,
    Deferred,
    Sent,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    /// "encrypt", "sign-only" or "" (decided when sent).
    #[serde(default)]
    pub treatment: String,
    pub state: State,
    #[serde(default)]
    pub last_reply: String,
}

/// One queued message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub from: String,
    pub recipients: Vec<Recipient>,
    pub subject: String,
    pub size: u64,
    pub blob: String,
    pub queued_at: u64,
    pub attempts: u32,
    pub next_attempt: u64,
    #[serde(default)]
    pub last_error: String,
}

impl Entry {
    /// The state of the whole entry, from its recipients'.
    pub fn state(&self) -> State {
        let states: Vec<State> = self.recipients.iter().map(|recipient| recipient.state).collect();
        if states.contains(&State::Sending) {
            State::Sending
        } else if states.contains(&State::Deferred) {
            State::Deferred
        } else if states.contains(&State::Queued) {
            State::Queued
        } else if states.contains(&State::Failed) {
            State::Failed
        } else {
            State::Sent
        }
    }

    /// Whether some recipient still waits for delivery.
    pub fn pending(&self) -> bool {
        self.recipients
            .iter()
            .any(|recipient| matches!(recipient.state, State::Queued | State::Deferred | State::Sending))
    }
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|since| since.as_secs()).unwrap_or_default()
}

/// How long to wait before attempt `attempts + 1`: 15 s, 1 min, 5, 15, 30,
/// then hourly. The first retry comes soon: the usual temporary failure is
/// the provider restarting, or the relay certificate not issued yet.
pub fn backoff(attempts: u32) -> Duration {
    let seconds = match attempts {
        0 | 1 => 15,
        2 => 60,
        3 => 5 * 60,
        4 => 15 * 60,
        5 => 30 * 60,
        _ => 60 * 60,
    };
    Duration::from_secs(seconds)
}

/// Gives up on a message this long after it was queued.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(5 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct Queue {
    store: StoreClient<TracedChannel>,
}

impl Queue {
    pub fn new(store: TracedChannel) -> Self {
        Self { store: StoreClient::new(store).max_decoding_message_size(64 << 20) }
    }

    async fn declare(&self) -> Result<(), Status> {
        let mut store = self.store.clone();
        let collection = pb::CollectionDefinition {
            name: COLLECTION.into(),
            conflict_policy: pb::ConflictPolicy::LastWriterWins.into(),
            local_only: true,
        };
        store.declare_collection(collection).await?;
        let index =
            pb::IndexDefinition { name: ALL.into(), collection: COLLECTION.into(), fields: vec![], unique: false };
        store.declare_index(index).await?;
        Ok(())
    }

    /// Queues a message durably; returns its queue id.
    pub async fn enqueue(
        &self,
        from: &str,
        recipients: &[String],
        raw: Vec<u8>,
        subject: String,
    ) -> Result<Entry, Status> {
        self.declare().await?;
        // A Date and a Message-ID where the client gave none (RFC 6409 8.2,
        // 8.3): a retried relay then carries the same id, and the provider
        // delivers it once.
        let domain = from.rsplit_once('@').map(|(_, domain)| domain).unwrap_or("localhost");
        let unique: [u8; 15] = rand::random();
        let message_id = format!("<{}@{domain}>", data_encoding::BASE32_NOPAD.encode(&unique).to_lowercase());
        let date = chrono::Utc::now().to_rfc2822();
        let raw = bitmask_smtp::submission::complete(raw, &date, &message_id);
        let size = raw.len() as u64;
        // The first message names the blob; the data follows a chunk at a
        // time (not a second copy of the whole message).
        let first =
            pb::PutBlobRequest { content_type: "message/rfc822".into(), size, local_only: true, ..Default::default() };
        let chunks = std::iter::once(first)
            .chain(chunks_of(raw, CHUNK, |data| pb::PutBlobRequest { data, ..Default::default() }));
        let blob = self.store.clone().put_blob(tokio_stream::iter(chunks)).await?.into_inner();
        let bytes: [u8; 12] = rand::random();
        let id = data_encoding::BASE32_NOPAD.encode(&bytes);
        let entry = Entry {
            id: id.clone(),
            from: from.to_owned(),
            recipients: recipients
                .iter()
                .map(|address| Recipient {
                    address: address.clone(),
                    treatment: String::new(),
                    state: State::Queued,
                    last_reply: String::new(),
                })
                .collect(),
            subject,
            size,
            blob: blob.id,
            queued_at: now(),
            attempts: 0,
            next_attempt: 0,
            last_error: String::new(),
        };
        self.save(&entry).await?;
        Ok(entry)
    }

    pub async fn save(&self, entry: &Entry) -> Result<(), Status> {
        let content = serde_json::to_vec(entry).map_err(|error| Status::internal(error.to_string()))?;
        let put = pb::PutRequest {
            id: format!("outbox/{}", entry.id),
            collection: COLLECTION.into(),
            content,
            ..Default::default()
        };
        self.store.clone().put(put).await?;
        Ok(())
    }

    /// Every entry, oldest first.
    pub async fn entries(&self) -> Result<Vec<Entry>, Status> {
        self.declare().await?;
        let query = pb::QueryRequest { index: ALL.into(), ..Default::default() };
        let documents = self.store.clone().query(query).await?.into_inner().documents;
        let mut entries: Vec<Entry> =
            documents.iter().filter_map(|document| serde_json::from_slice(&document.content).ok()).collect();
        entries.sort_by_key(|entry| (entry.queued_at, entry.id.clone()));
        Ok(entries)
    }

    pub async fn message(&self, entry: &Entry) -> Result<Vec<u8>, Status> {
        let request = pb::GetBlobRequest { id: entry.blob.clone(), offset: 0, length: 0 };
        let mut stream = self.store.clone().get_blob(request).await?.into_inner();
        let mut raw = Vec::with_capacity(entry.size as usize);
        while let Some(chunk) = stream.message().await? {
            raw.extend_from_slice(&chunk.data);
        }
        Ok(raw)
    }

    /// Forgets an entry and its message.
    pub async fn remove(&self, entry: &Entry) -> Result<(), Status> {
        let delete = pb::DeleteRequest { id: format!("outbox/{}", entry.id), expected_rev: String::new() };
        self.store.clone().delete(delete).await?;
        let _ = self.store.clone().delete_blob(pb::DeleteBlobRequest { id: entry.blob.clone() }).await;
        Ok(())
    }
}

//! The network half of sync: the store talks to the provider's sync endpoint
//! over TLS (the provider's CA pinned), with the session token from login.
//! One sync pushes local changes (merging what the provider answers as
//! conflicts), then pulls the provider's changes, in rounds until nothing is
//! left to push. It is resumable at any point: the store records what was
//! pushed and pulled only after it happened, and the provider takes a
//! retried document once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bitmask_proto::store::v1 as pb;
use bitmask_proto::sync::v1 as sync_pb;
use bitmask_proto::sync::v1::sync_endpoint_client::SyncEndpointClient;
use bitmask_store::{Change, RemoteDocument, Store, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::{Notify, mpsc};
use tonic::Status;

/// The store setting that holds where to sync.
const CONFIG_SETTING: &str = "sync";
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Local writes are pushed this long after the last one.
pub const DEBOUNCE: Duration = Duration::from_secs(1);
const ROUNDS: usize = 3;
/// Documents per push message stream.
const PUSH_BATCH: usize = 500;

#[derive(Clone, Serialize, Deserialize)]
pub struct SyncConfig {
    pub url: String,
    pub ca_certificate_pem: String,
    pub user: String,
    pub session_token: String,
    pub interval_seconds: u32,
    /// The SRP login secret (see `bitmask-auth`), to log in again when the
    /// session expires; empty: no automatic re-login.
    #[serde(default)]
    pub login_secret: Vec<u8>,
}

impl std::fmt::Debug for SyncConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncConfig").field("url", &self.url).field("user", &self.user).finish_non_exhaustive()
    }
}

impl SyncConfig {
    /// Logs in again with the kept login secret, for a new session token.
    pub async fn relogin(&self) -> Result<SyncConfig, Status> {
        let secret = bitmask_auth::LoginSecret::from_bytes(&self.login_secret)
            .map_err(|_| Status::unauthenticated("the session expired and no login secret is kept: log in again"))?;
        let session =
            bitmask_runtime::provider::login(&self.url, &self.ca_certificate_pem, &self.user, &secret).await?;
        let mut renewed = self.clone();
        renewed.session_token.clone_from(&session.token);
        Ok(renewed)
    }

    pub fn interval(&self) -> Duration {
        match self.interval_seconds {
            0 => DEFAULT_INTERVAL,
            seconds => Duration::from_secs(seconds.into()),
        }
    }
}

/// What `GetSyncStatus` reports.
#[derive(Debug, Default, Clone)]
pub struct SyncState {
    pub running: bool,
    pub last_time: Option<SystemTime>,
    pub last_result: String,
    /// A configuration given before the store could seal it (a new device).
    pub pending_config: Option<SyncConfig>,
}

pub type EndpointClient = SyncEndpointClient<bitmask_runtime::client::ProviderChannel>;

/// Connects to the endpoint, trusting only the pinned CA.
pub async fn connect(config: &SyncConfig) -> Result<EndpointClient, Status> {
    let channel =
        bitmask_runtime::client::connect_provider(&config.url, &config.ca_certificate_pem, &config.session_token)
            .await?;
    Ok(SyncEndpointClient::new(channel).max_decoding_message_size(64 << 20))
}

/// The store's sync configuration, if any.
pub fn load_config(store: &Store) -> Result<Option<SyncConfig>, StoreError> {
    match store.setting(CONFIG_SETTING)? {
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|_| StoreError::Corrupt("sync setting")),
        None => Ok(None),
    }
}

pub fn save_config(store: &Store, config: &SyncConfig) -> Result<(), StoreError> {
    let bytes = zeroize::Zeroizing::new(serde_json::to_vec(config).map_err(|_| StoreError::Corrupt("sync setting"))?);
    store.set_setting(CONFIG_SETTING, &bytes)
}

/// The storage secrets backed up at the provider (for a second device).
pub async fn fetch_secrets(config: &SyncConfig) -> Result<Vec<u8>, Status> {
    let mut client = connect(config).await?;
    let secrets = client.get_secrets(sync_pb::GetSecretsRequest {}).await?.into_inner();
    Ok(secrets.blob)
}

fn blocking_error(error: tokio::task::JoinError) -> Status {
    Status::internal(format!("store task failed: {error}"))
}

pub(crate) async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    work: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Status> {
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || crate::recovering(&store, work))
        .await
        .map_err(blocking_error)?
        .map_err(crate::status_of)
}

fn progress(phase: pb::sync_progress::Phase, done: u64, total: u64, message: impl Into<String>) -> pb::SyncProgress {
    pb::SyncProgress {
        phase: phase.into(),
        documents_done: done,
        documents_total: total,
        bytes_done: 0,
        bytes_total: 0,
        message: message.into(),
    }
}

/// Runs one sync; reports progress on `updates` (if the caller listens) and
/// hands every change it made locally to `publish`.
pub async fn run(
    store: &Arc<Store>,
    config: &SyncConfig,
    updates: Option<&mpsc::Sender<Result<pb::SyncProgress, Status>>>,
    publish: &(dyn Fn(Change) + Sync),
) -> Result<(u64, u64), Status> {
    let report = |update: pb::SyncProgress| async move {
        if let Some(updates) = updates {
            let _ = updates.send(Ok(update)).await;
        }
    };
    report(progress(pb::sync_progress::Phase::Connecting, 0, 0, config.url.clone())).await;
    let mut client = connect(config).await?;
    // The provider keeps the sealed secrets, so a new device can recover;
    // after a passphrase change they differ and are replaced.
    let local_secrets = blocking(store, |store| store.export_secrets()).await?;
    let (remote_secrets, version) = match client.get_secrets(sync_pb::GetSecretsRequest {}).await {
        Ok(secrets) => {
            let secrets = secrets.into_inner();
            (Some(secrets.blob), secrets.version)
        }
        Err(status) if status.code() == tonic::Code::NotFound => (None, 0),
        Err(status) => return Err(status),
    };
    // The backup is replaced only by a device whose secrets changed since it
    // last agreed with it (a passphrase change here): a device that did not
    // change them must not put back the old passphrase's seal over a change
    // made on another device.
    let agreed = blocking(store, |store| store.secrets_agreed()).await?;
    let changed_here = agreed.is_none_or(|agreed| agreed != Sha256::digest(&local_secrets).as_slice());
    match remote_secrets {
        Some(remote) if remote == local_secrets => {
            if changed_here {
                blocking(store, move |store| store.set_secrets_agreed(&remote)).await?;
            }
        }
        Some(_) if !changed_here => {
            tracing::warn!(
                "the passphrase was changed on another device: this device keeps the one it has until it is changed here too"
            );
        }
        _ => {
            let secrets = sync_pb::SealedSecrets { blob: local_secrets.clone(), version: 0 };
            let request = sync_pb::PutSecretsRequest { secrets: Some(secrets), expected_version: version };
            client.put_secrets(request).await?;
            blocking(store, move |store| store.set_secrets_agreed(&local_secrets)).await?;
        }
    }
    // Incoming items filed before this push are acknowledged after it.
    let filed = crate::incoming::filed(store).await?;
    let (mut sent, mut received, mut blobs_sent) = (0u64, 0u64, 0u64);
    for _ in 0..ROUNDS {
        // Push, in batches: the outgoing changes are read and sealed a batch at a time.
        let mut conflicts = Vec::new();
        loop {
            let outgoing = blocking(store, |store| store.outgoing(PUSH_BATCH)).await?;
            if outgoing.is_empty() {
                break;
            }
            // The blobs first: a blob is kept before any document that names
            // it is written, so every blob these documents name goes up now,
            // and no document reaches the provider (and other devices)
            // before its blob; a push cut in between could otherwise leave
            // the blob on this device only, to be deleted here while another
            // device keeps the document alive.
            blobs_sent += push_blobs(store, &mut client).await?;
            let up_to = outgoing.iter().map(|document| document.sequence).max().unwrap_or(0);
            let header = sync_pb::PushRequest {
                item: Some(sync_pb::push_request::Item::Header(sync_pb::PushHeader { device: String::new() })),
            };
            let documents = outgoing.iter().map(|document| sync_pb::PushRequest {
                item: Some(sync_pb::push_request::Item::Document(sync_pb::SyncedDocument {
                    id: document.id.clone(),
                    rev: document.rev.clone(),
                    parent_rev: document.parent_rev.clone(),
                    sealed: document.sealed.clone(),
                    deleted: document.deleted,
                    generation: 0,
                })),
            });
            let requests: Vec<_> = std::iter::once(header).chain(documents).collect();
            let reply = client.push(tokio_stream::iter(requests)).await?.into_inner();
            let rejected: Vec<&[u8]> = reply.conflicts.iter().map(|conflict| conflict.id.as_slice()).collect();
            let accepted: Vec<_> =
                outgoing.iter().filter(|document| !rejected.contains(&document.id.as_slice())).cloned().collect();
            sent += accepted.len() as u64;
            blocking(store, move |store| store.mark_pushed(&accepted, up_to)).await?;
            conflicts.extend(reply.conflicts);
            report(progress(pb::sync_progress::Phase::Sending, sent, 0, "")).await;
        }
        // Blobs no pushed document names yet (kept before their document).
        blobs_sent += push_blobs(store, &mut client).await?;
        // Conflicts come back merged as new local changes, pushed next round.
        let current: Vec<_> = conflicts.into_iter().filter_map(|conflict| conflict.current).collect();
        if !current.is_empty() {
            apply_batch(store, current, publish).await?;
        }
        // Pull.
        let since = blocking(store, |store| store.sync_cursor()).await?.pulled_generation;
        let mut stream =
            client.pull(sync_pb::PullRequest { since_generation: since, batch_size: 0 }).await?.into_inner();
        let mut pulled = 0u64;
        while let Some(message) = stream.message().await? {
            pulled += message.documents.len() as u64;
            apply_batch(store, message.documents, publish).await?;
            report(progress(pb::sync_progress::Phase::Receiving, pulled, 0, "")).await;
            if message.done {
                let generation = message.up_to_generation;
                blocking(store, move |store| store.set_pulled_generation(generation)).await?;
                break;
            }
        }
        received += pulled;
        if blocking(store, |store| store.outgoing(1)).await?.is_empty() {
            break;
        }
    }
    crate::incoming::acknowledge(store, &mut client, filed).await?;
    crate::incoming::fetch(store, &mut client, publish, crate::incoming::Look::All).await?;
    report(progress(
        pb::sync_progress::Phase::Done,
        sent + received,
        sent + received,
        format!("sent {sent}, received {received}, blobs sent {blobs_sent}"),
    ))
    .await;
    Ok((sent, received))
}

/// Bytes per message of a blob upload to the provider.
const BLOB_UPLOAD_CHUNK: usize = 1 << 20;
/// The largest sealed blob the provider takes.
const MAX_SYNCED_BLOB: usize = 64 * 1024 * 1024;

/// Uploads the blobs the provider lacks (a failed one stays unsynced and is
/// tried again by the next sync). Returns how many were uploaded.
async fn push_blobs(store: &Arc<Store>, client: &mut EndpointClient) -> Result<u64, Status> {
    let ids = blocking(store, |store| store.unsynced_blobs()).await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let keys: Vec<Vec<u8>> = ids.iter().filter_map(|id| data_encoding::HEXLOWER.decode(id.as_bytes()).ok()).collect();
    let missing = client.missing_blobs(sync_pb::MissingBlobsRequest { ids: keys }).await?.into_inner().missing;
    let mut uploaded = 0;
    for id in ids {
        let key = data_encoding::HEXLOWER.decode(id.as_bytes()).unwrap_or_default();
        if missing.contains(&key) {
            let lookup = id.clone();
            let exported = blocking(store, move |store| store.export_blob(&lookup)).await?;
            if exported.len() > MAX_SYNCED_BLOB {
                tracing::warn!(blob = %id, size = exported.len(), "blob too large to sync");
                continue;
            }
            // The first message names the blob; the bytes follow a chunk
            // at a time (held once, in `exported`).
            let first = sync_pb::PutBlobRequest { id: key, size: exported.len() as u64, data: Vec::new() };
            let rest = bitmask_runtime::client::chunks_of(exported, BLOB_UPLOAD_CHUNK, |data| {
                sync_pb::PutBlobRequest { data, ..Default::default() }
            });
            client.put_blob(tokio_stream::iter(std::iter::once(first).chain(rest))).await?;
            uploaded += 1;
        }
        blocking(store, move |store| store.mark_blob_synced(&id)).await?;
    }
    Ok(uploaded)
}

/// Fetches a blob this device lacks from the provider and keeps it.
pub async fn fetch_blob(store: &Arc<Store>, config: &SyncConfig, id: &str) -> Result<(), Status> {
    let key =
        data_encoding::HEXLOWER.decode(id.as_bytes()).map_err(|_| Status::not_found(format!("no document {id:?}")))?;
    let mut client = connect(config).await?;
    let mut stream = client.get_blob(sync_pb::GetBlobRequest { id: key, offset: 0 }).await?.into_inner();
    let mut exported = Vec::new();
    while let Some(chunk) = stream.message().await? {
        if exported.len() + chunk.data.len() > MAX_SYNCED_BLOB {
            return Err(Status::resource_exhausted("the provider sent a blob larger than any we store"));
        }
        exported.extend_from_slice(&chunk.data);
    }
    let id = id.to_owned();
    blocking(store, move |store| store.import_blob(&id, &exported)).await?;
    Ok(())
}

/// Applies a batch of documents from the provider in one transaction. A
/// document the store refuses (tampered with, rolled back) does not fail the
/// sync: the store skips and quarantines it, and it is logged here.
async fn apply_batch(
    store: &Arc<Store>,
    documents: Vec<sync_pb::SyncedDocument>,
    publish: &(dyn Fn(Change) + Sync),
) -> Result<(), Status> {
    let remotes: Vec<RemoteDocument> = documents
        .into_iter()
        .map(|document| RemoteDocument { id: document.id, rev: document.rev, sealed: document.sealed })
        .collect();
    let applied = blocking(store, move |store| store.apply_remote_batch(&remotes)).await?;
    for refused in &applied.quarantined {
        // The keyed id and the reason (which names no content, key or secret).
        tracing::warn!(
            document = %data_encoding::HEXLOWER.encode(&refused.storage_key),
            reason = %refused.reason,
            "quarantined a document from the provider; the rest of the sync goes on"
        );
    }
    for change in applied.changes {
        publish(change);
    }
    Ok(())
}

/// Shared by the service and its background task.
#[derive(Debug, Default)]
pub struct SyncControl {
    pub state: Mutex<SyncState>,
    /// Serializes syncs: one at a time.
    pub running: tokio::sync::Mutex<()>,
    /// Woken by local writes.
    pub local_change: Notify,
}

impl SyncControl {
    pub fn state(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

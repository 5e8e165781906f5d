//! The `bitmask.store.v1.Store` gRPC edge over [`bitmask_store::Store`].
//!
//! Requests are checked and converted here; the store's blocking work runs on
//! Tokio's blocking pool; committed changes fan out to `Watch` streams.

use std::sync::Arc;

use bitmask_proto::store::v1 as pb;
use bitmask_proto::store::v1::store_server::Store as StoreApi;
use bitmask_store::{
    Bound, Change, CollectionDef, ConflictPolicy, Credential, Document, IndexDef, IndexValue, PutOp, Query, Store,
    StoreError, StoreState, Write, WriteResult,
};
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status};

/// Live changes buffered per watcher before it must catch up from the log.
const WATCH_BUFFER: usize = 1024;
/// Changes read from the log per step when a watcher catches up.
const CATCH_UP_PAGE: usize = 256;
/// The most blob bytes in one `GetBlob` reply message: three sealed chunks,
/// under the 256 KiB from which services' allocations are fresh mappings
/// (`MALLOC_MMAP_THRESHOLD_`), so reply buffers here and in the reader are
/// reused memory, not pages faulted in and zeroed for every reply.
const BLOB_REPLY_BYTES: usize = 192 << 10;
/// The largest request (an atomic batch of documents).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

pub mod incoming;

/// How long the incoming-mail follower waits after a failure (doubling).
const INCOMING_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_secs(1);
const INCOMING_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(60);
/// How often the follower tries again while the disk is full.
const INCOMING_DISK_FULL_RETRY: std::time::Duration = std::time::Duration::from_secs(2);
pub mod sync;

#[derive(Debug, Clone)]
pub struct StoreService {
    store: Arc<Store>,
    changes: broadcast::Sender<(Change, pb::change::Origin)>,
    sync: Arc<sync::SyncControl>,
}

impl StoreService {
    /// The service, and its background sync (periodic, and soon after local
    /// writes) once sync is configured. Call inside the Tokio runtime.
    pub fn new(store: Store) -> Self {
        let (changes, _) = broadcast::channel(WATCH_BUFFER);
        let service = Self { store: Arc::new(store), changes, sync: Arc::default() };
        tokio::spawn(service.clone().sync_in_background());
        tokio::spawn(service.clone().incoming_in_background());
        service
    }

    /// Follows the provider's incoming-mail notices and fetches new items at
    /// once (a sync fetches them too; this is what makes delivery immediate).
    async fn incoming_in_background(self) {
        let mut backoff = INCOMING_BACKOFF_MIN;
        loop {
            let Some(config) = self.sync_config().await else {
                tokio::time::sleep(INCOMING_BACKOFF_MIN).await;
                continue;
            };
            match self.follow_incoming(&config).await {
                Ok(()) => backoff = INCOMING_BACKOFF_MIN,
                Err(status) if status.code() == tonic::Code::Unauthenticated && !config.login_secret.is_empty() => {
                    if let Err(status) = self.renew_session(&config).await {
                        tracing::warn!(error = %status.message(), "logging in again failed");
                    } else {
                        continue;
                    }
                }
                // The disk is full: the mail waits at the provider, and
                // `bitmaskctl status` says so until it can be fetched.
                Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                    tracing::warn!(error = %status.message(), "incoming mail waits at the provider");
                    let mut state = self.sync.state();
                    state.last_time = Some(std::time::SystemTime::now());
                    state.last_result = format!("incoming mail waits at the provider: {}", status.message());
                    // Soon fetched once space is freed.
                    backoff = backoff.min(INCOMING_DISK_FULL_RETRY);
                }
                Err(status) => tracing::debug!(error = %status.message(), "incoming mail notices interrupted"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(INCOMING_BACKOFF_MAX);
        }
    }

    async fn follow_incoming(&self, config: &sync::SyncConfig) -> Result<(), Status> {
        let mut client = sync::connect(config).await?;
        let mut notices = client.watch_incoming(bitmask_proto::sync::v1::WatchIncomingRequest {}).await?.into_inner();
        let publish = |change: Change| {
            let _ = self.changes.send((change, pb::change::Origin::Sync));
        };
        while let Some(mut notice) = notices.message().await? {
            // Notices that came meanwhile are answered by the same fetch.
            while let Some(next) = futures::FutureExt::now_or_never(notices.message()) {
                match next? {
                    Some(next) => notice = next,
                    None => return Ok(()),
                }
            }
            if notice.waiting > 0 {
                incoming::fetch(&self.store, &mut client, &publish, incoming::Look::New).await?;
            }
        }
        Ok(())
    }

    /// Logs in again (the session expired, or the provider restarted and
    /// forgot it) and keeps the new token.
    async fn renew_session(&self, config: &sync::SyncConfig) -> Result<sync::SyncConfig, Status> {
        let renewed = config.relogin().await?;
        let saved = renewed.clone();
        self.blocking(move |store| sync::save_config(store, &saved)).await?;
        tracing::info!("the provider session had expired: logged in again");
        Ok(renewed)
    }

    async fn sync_in_background(self) {
        loop {
            let interval = self.sync_config().await.map(|config| config.interval()).unwrap_or(sync::DEFAULT_INTERVAL);
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.sync.local_change.notified() => tokio::time::sleep(sync::DEBOUNCE).await,
            }
            if let Some(config) = self.sync_config().await
                && let Err(status) = self.sync_once(&config, None).await
            {
                tracing::warn!(error = %status.message(), "background sync failed");
            }
        }
    }

    /// The configuration, when the store is unlocked and sync configured.
    async fn sync_config(&self) -> Option<sync::SyncConfig> {
        self.blocking(|store| match store.state()? {
            StoreState::Unlocked => sync::load_config(store),
            _ => Ok(None),
        })
        .await
        .ok()
        .flatten()
    }

    /// One sync at a time; records its outcome for GetSyncStatus.
    async fn sync_once(
        &self,
        config: &sync::SyncConfig,
        updates: Option<&mpsc::Sender<Result<pb::SyncProgress, Status>>>,
    ) -> Result<(u64, u64), Status> {
        let _running = self.sync.running.lock().await;
        self.sync.state().running = true;
        let publish = |change: Change| {
            let _ = self.changes.send((change, pb::change::Origin::Sync));
        };
        let mut result = sync::run(&self.store, config, updates, &publish).await;
        if let Err(status) = &result
            && status.code() == tonic::Code::Unauthenticated
            && !config.login_secret.is_empty()
        {
            tracing::info!(error = %status.message(), "sync refused the session");
            result = match self.renew_session(config).await {
                Ok(renewed) => sync::run(&self.store, &renewed, updates, &publish).await,
                Err(status) => Err(status),
            };
        }
        // Documents refused and skipped are reported without failing the sync.
        let quarantined = self.blocking(|store| store.quarantined()).await.map(|records| records.len()).unwrap_or(0);
        let mut state = self.sync.state();
        state.running = false;
        state.last_time = Some(std::time::SystemTime::now());
        state.last_result = match &result {
            Ok((sent, received)) if quarantined > 0 => {
                format!("ok: sent {sent}, received {received}; {quarantined} documents quarantined (refused)")
            }
            Ok((sent, received)) => format!("ok: sent {sent}, received {received}"),
            Err(status) => status.message().to_owned(),
        };
        result
    }

    /// Runs blocking store work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || recovering(&store, work))
            .await
            .map_err(|error| Status::internal(format!("store task failed: {error}")))?
            .map_err(status_of)
    }

    /// Makes sure a blob is here: one stored only at the provider (written
    /// by another device) is fetched first.
    async fn ensure_blob(&self, id: &str) -> Result<(), Status> {
        let lookup = id.to_owned();
        if self.blocking(move |store| store.stat_blob(&lookup)).await?.is_some() {
            return Ok(());
        }
        match self.sync_config().await {
            Some(config) => sync::fetch_blob(&self.store, &config, id).await.map_err(|status| {
                if status.code() == tonic::Code::NotFound {
                    status_of(StoreError::NotFound(id.to_owned()))
                } else {
                    status
                }
            }),
            None => Err(status_of(StoreError::NotFound(id.to_owned()))),
        }
    }

    /// Announces local changes to watchers and to the background sync.
    fn publish(&self, changes: Vec<Change>) {
        for change in changes {
            // No receiver is fine: nobody watches.
            let _ = self.changes.send((change, pb::change::Origin::Local));
        }
        self.sync.local_change.notify_one();
    }
}

/// Runs store work. When it failed on disk (a full disk), sled may hold what
/// was refused in memory and cannot be trusted or closed any more: the store
/// closes its database (every call from then on answers UNAVAILABLE), this
/// answer is sent, and the process exits soon after, so bitmaskd starts it
/// again at once and unlocks it, and it opens exactly what is on disk,
/// everything acknowledged (see `Store::close_after_failure`).
pub(crate) fn recovering<T>(
    store: &Store,
    work: impl FnOnce(&Store) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let result = work(store);
    if let Err(error) = &result
        && store.close_after_failure(error)
    {
        std::thread::spawn(|| {
            std::thread::sleep(EXIT_AFTER_FAILURE);
            tracing::warn!("exiting to open the store again from the disk");
            std::process::exit(EXIT_TO_REOPEN);
        });
    }
    result
}

/// Time for the answers under way to reach their callers before the exit.
const EXIT_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_millis(300);
/// EX_TEMPFAIL: bitmaskd starts the service again.
const EXIT_TO_REOPEN: i32 = 75;

/// What every write answers while the disk is full (the store has put
/// itself back to what is on disk: nothing of the refused write remains).
pub const DISK_FULL: &str =
    "the disk is full (no space left on device): nothing was written; free some space and try again";

/// The gRPC status of each store error.
pub fn status_of(error: StoreError) -> Status {
    let message = error.to_string();
    match error {
        StoreError::Locked | StoreError::Uninitialized | StoreError::SchemaChanged(_) => {
            Status::failed_precondition(message)
        }
        StoreError::AlreadyInitialized | StoreError::AlreadyExists(_) | StoreError::UniqueViolation { .. } => {
            Status::already_exists(message)
        }
        StoreError::WrongCredential => Status::unauthenticated(message),
        StoreError::EmptyPassphrase
        | StoreError::InvalidDocument { .. }
        | StoreError::InvalidQuery(_)
        | StoreError::TooLarge { .. } => Status::invalid_argument(message),
        StoreError::NotFound(_) | StoreError::UnknownCollection(_) | StoreError::UnknownIndex(_) => {
            Status::not_found(message)
        }
        StoreError::Conflict { .. } => Status::aborted(message),
        StoreError::Corrupt(_) | StoreError::RolledBack { .. } => Status::data_loss(message),
        // A full disk: nothing can be written until space is freed.
        StoreError::DiskFull => Status::resource_exhausted(DISK_FULL),
        StoreError::Closed => Status::unavailable(message),
        error if error.is_disk_full() => Status::resource_exhausted(DISK_FULL),
        StoreError::Kdf(_) | StoreError::Storage(_) => Status::internal(message),
    }
}

fn document_to_pb(document: Document, include_content: bool) -> pb::Document {
    pb::Document {
        id: document.id,
        collection: document.collection,
        rev: document.rev,
        content: if include_content { document.content.into_bytes() } else { Vec::new() },
        deleted: document.deleted,
        updated: Some(prost_types::Timestamp::from(document.updated)),
    }
}

fn content_text(id: &str, content: Vec<u8>) -> Result<String, Status> {
    String::from_utf8(content).map_err(|_| Status::invalid_argument(format!("content of {id:?} is not UTF-8 JSON")))
}

fn optional(rev: String) -> Option<String> {
    (!rev.is_empty()).then_some(rev)
}

fn put_op(request: pb::PutRequest) -> Result<PutOp, Status> {
    Ok(PutOp {
        content: content_text(&request.id, request.content)?,
        id: request.id,
        collection: request.collection,
        expected_rev: optional(request.expected_rev),
        create_only: request.create_only,
    })
}

fn write_op(write: pb::Write) -> Result<Write, Status> {
    match write.op {
        Some(pb::write::Op::Put(put)) => Ok(Write::Put(put_op(put)?)),
        Some(pb::write::Op::Delete(delete)) => {
            Ok(Write::Delete { id: delete.id, expected_rev: optional(delete.expected_rev) })
        }
        Some(pb::write::Op::Check(check)) => Ok(Write::Check { id: check.id, rev: check.rev }),
        Some(pb::write::Op::AddToCounter(counter)) => {
            Ok(Write::AddToCounter { name: counter.name, delta: counter.delta })
        }
        None => Err(Status::invalid_argument("a write names no operation")),
    }
}

fn index_value(value: pb::IndexValue) -> Result<IndexValue, Status> {
    match value.value {
        Some(pb::index_value::Value::Text(text)) => Ok(IndexValue::Text(text)),
        Some(pb::index_value::Value::Integer(integer)) => Ok(IndexValue::Integer(integer)),
        Some(pb::index_value::Value::Boolean(boolean)) => Ok(IndexValue::Boolean(boolean)),
        None => Err(Status::invalid_argument("an index value is empty")),
    }
}

fn bound(bound: Option<pb::Bound>) -> Result<Option<Bound>, Status> {
    bound
        .map(|bound| {
            Ok(Bound {
                values: bound.values.into_iter().map(index_value).collect::<Result<_, Status>>()?,
                inclusive: bound.inclusive,
            })
        })
        .transpose()
}

fn policy(policy: i32) -> Result<ConflictPolicy, Status> {
    match pb::ConflictPolicy::try_from(policy) {
        Ok(pb::ConflictPolicy::Immutable) => Ok(ConflictPolicy::Immutable),
        Ok(pb::ConflictPolicy::LastWriterWins) => Ok(ConflictPolicy::LastWriterWins),
        Ok(pb::ConflictPolicy::MergeSets) => Ok(ConflictPolicy::MergeSets),
        _ => Err(Status::invalid_argument("a collection needs a conflict policy")),
    }
}

fn policy_to_pb(policy: ConflictPolicy) -> pb::ConflictPolicy {
    match policy {
        ConflictPolicy::Immutable => pb::ConflictPolicy::Immutable,
        ConflictPolicy::LastWriterWins => pb::ConflictPolicy::LastWriterWins,
        ConflictPolicy::MergeSets => pb::ConflictPolicy::MergeSets,
    }
}

type WatchStream = tonic::codegen::BoxStream<pb::Change>;
type BlobStream = tonic::codegen::BoxStream<pb::BlobChunk>;
type SyncStream = tonic::codegen::BoxStream<pb::SyncProgress>;

#[tonic::async_trait]
impl StoreApi for StoreService {
    async fn get_state(&self, _request: Request<pb::GetStateRequest>) -> Result<Response<pb::StoreState>, Status> {
        let (state, sequence) = self.blocking(|store| Ok((store.state()?, store.sequence()?))).await?;
        let state = match state {
            StoreState::Uninitialized => pb::store_state::State::Uninitialized,
            StoreState::Locked => pb::store_state::State::Locked,
            StoreState::Unlocked => pb::store_state::State::Unlocked,
        };
        Ok(Response::new(pb::StoreState { state: state.into(), account: String::new(), documents: 0, sequence }))
    }

    async fn initialize(
        &self,
        request: Request<pb::InitializeRequest>,
    ) -> Result<Response<pb::InitializeResponse>, Status> {
        let request = request.into_inner();
        let passphrase = zeroize::Zeroizing::new(request.passphrase);
        let pending = self.sync.state().pending_config.clone();
        if request.from_provider {
            let config = pending.ok_or_else(|| {
                Status::failed_precondition("configure sync first: the secrets come from the provider")
            })?;
            let backup = sync::fetch_secrets(&config).await?;
            self.blocking(move |store| {
                store.initialize_from_backup(&backup, &passphrase)?;
                sync::save_config(store, &config)
            })
            .await?;
            self.sync.state().pending_config = None;
            self.blocking(incoming::declare).await?;
            tracing::info!("store initialized from the provider's backup");
            return Ok(Response::new(pb::InitializeResponse { recovery_code: String::new() }));
        }
        let code = self
            .blocking(move |store| {
                let code = store.initialize(&passphrase)?;
                if let Some(config) = &pending {
                    sync::save_config(store, config)?;
                }
                Ok(code)
            })
            .await?;
        self.sync.state().pending_config = None;
        self.blocking(incoming::declare).await?;
        tracing::info!("store initialized");
        Ok(Response::new(pb::InitializeResponse { recovery_code: code.to_string() }))
    }

    async fn unlock(&self, request: Request<pb::UnlockRequest>) -> Result<Response<pb::UnlockResponse>, Status> {
        let credential = request.into_inner().credential.map(|credential| match credential {
            pb::unlock_request::Credential::Passphrase(secret) => (true, zeroize::Zeroizing::new(secret)),
            pb::unlock_request::Credential::RecoveryCode(secret) => (false, zeroize::Zeroizing::new(secret)),
        });
        let Some((is_passphrase, secret)) = credential else {
            return Err(Status::invalid_argument("give a passphrase or a recovery code"));
        };
        self.blocking(
            move |store| {
                if is_passphrase { store.unlock(&secret) } else { store.unlock_with_recovery_code(&secret) }
            },
        )
        .await
        .inspect_err(|status| tracing::warn!(code = ?status.code(), "unlock refused"))?;
        let pending = self.sync.state().pending_config.take();
        if let Some(config) = pending {
            self.blocking(move |store| sync::save_config(store, &config)).await?;
        }
        self.blocking(incoming::declare).await?;
        tracing::info!("store unlocked");
        Ok(Response::new(pb::UnlockResponse {}))
    }

    async fn lock(&self, _request: Request<pb::LockRequest>) -> Result<Response<pb::LockResponse>, Status> {
        self.store.lock();
        Ok(Response::new(pb::LockResponse {}))
    }

    async fn change_passphrase(
        &self,
        request: Request<pb::ChangePassphraseRequest>,
    ) -> Result<Response<pb::ChangePassphraseResponse>, Status> {
        let request = request.into_inner();
        let new = zeroize::Zeroizing::new(request.new_passphrase);
        let old = request
            .credential
            .ok_or_else(|| Status::invalid_argument("give the old passphrase or the recovery code"))?;
        let (is_passphrase, secret) = match old {
            pb::change_passphrase_request::Credential::OldPassphrase(secret) => (true, zeroize::Zeroizing::new(secret)),
            pb::change_passphrase_request::Credential::RecoveryCode(secret) => (false, zeroize::Zeroizing::new(secret)),
        };
        self.blocking(move |store| {
            let credential =
                if is_passphrase { Credential::Passphrase(&secret) } else { Credential::RecoveryCode(&secret) };
            store.change_passphrase(credential, &new)
        })
        .await?;
        Ok(Response::new(pb::ChangePassphraseResponse {}))
    }

    async fn declare_collection(
        &self,
        request: Request<pb::CollectionDefinition>,
    ) -> Result<Response<pb::DeclareCollectionResponse>, Status> {
        let request = request.into_inner();
        let def = CollectionDef {
            policy: policy(request.conflict_policy)?,
            name: request.name,
            local_only: request.local_only,
        };
        self.blocking(move |store| store.declare_collection(def)).await?;
        Ok(Response::new(pb::DeclareCollectionResponse {}))
    }

    async fn declare_index(
        &self,
        request: Request<pb::IndexDefinition>,
    ) -> Result<Response<pb::DeclareIndexResponse>, Status> {
        let request = request.into_inner();
        let def = IndexDef {
            name: request.name,
            collection: request.collection,
            fields: request.fields,
            unique: request.unique,
        };
        self.blocking(move |store| store.declare_index(def)).await?;
        Ok(Response::new(pb::DeclareIndexResponse {}))
    }

    async fn list_indexes(
        &self,
        _request: Request<pb::ListIndexesRequest>,
    ) -> Result<Response<pb::ListIndexesResponse>, Status> {
        let (collections, indexes) = self.blocking(|store| store.schema()).await?;
        Ok(Response::new(pb::ListIndexesResponse {
            indexes: indexes
                .into_iter()
                .map(|def| pb::IndexDefinition {
                    name: def.name,
                    collection: def.collection,
                    fields: def.fields,
                    unique: def.unique,
                })
                .collect(),
            collections: collections
                .into_iter()
                .map(|def| pb::CollectionDefinition {
                    name: def.name,
                    conflict_policy: policy_to_pb(def.policy).into(),
                    local_only: def.local_only,
                })
                .collect(),
        }))
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::Document>, Status> {
        let request = request.into_inner();
        let id = request.id.clone();
        let document = self.blocking(move |store| store.get(&request.id, request.include_deleted)).await?;
        let document = document.ok_or_else(|| status_of(StoreError::NotFound(id)))?;
        Ok(Response::new(document_to_pb(document, true)))
    }

    async fn get_many(&self, request: Request<pb::GetManyRequest>) -> Result<Response<pb::GetManyResponse>, Status> {
        let ids = request.into_inner().ids;
        let documents = self
            .blocking(move |store| {
                ids.into_iter()
                    .map(|id| {
                        Ok(match store.get(&id, false)? {
                            Some(document) => document_to_pb(document, true),
                            None => pb::Document { id, ..pb::Document::default() },
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()
            })
            .await?;
        Ok(Response::new(pb::GetManyResponse { documents }))
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let op = put_op(request.into_inner())?;
        let (rev, change) = self.blocking(move |store| store.put(op)).await?;
        let sequence = change.sequence;
        self.publish(vec![change]);
        Ok(Response::new(pb::PutResponse { rev, sequence }))
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let request = request.into_inner();
        let expected_rev = optional(request.expected_rev);
        let (rev, change) = self.blocking(move |store| store.delete(&request.id, expected_rev)).await?;
        let sequence = change.sequence;
        self.publish(vec![change]);
        Ok(Response::new(pb::DeleteResponse { rev, sequence }))
    }

    async fn batch(&self, request: Request<pb::BatchRequest>) -> Result<Response<pb::BatchResponse>, Status> {
        let writes = request.into_inner().writes.into_iter().map(write_op).collect::<Result<Vec<_>, _>>()?;
        let (results, changes, sequence) = self
            .blocking(move |store| {
                let (results, changes) = store.apply(writes)?;
                Ok((results, changes, store.sequence()?))
            })
            .await?;
        self.publish(changes);
        let results = results
            .into_iter()
            .map(|result| pb::BatchResult {
                result: Some(match result {
                    WriteResult::Rev(rev) => pb::batch_result::Result::Rev(rev),
                    WriteResult::Counter(value) => pb::batch_result::Result::CounterValue(value as u64),
                    WriteResult::Checked => pb::batch_result::Result::Checked(true),
                }),
            })
            .collect();
        Ok(Response::new(pb::BatchResponse { results, sequence }))
    }

    async fn query(&self, request: Request<pb::QueryRequest>) -> Result<Response<pb::QueryResponse>, Status> {
        let request = request.into_inner();
        let keys_only = request.keys_only;
        let query = Query {
            index: request.index,
            equal: request.equal.into_iter().map(index_value).collect::<Result<_, _>>()?,
            lower: bound(request.lower)?,
            upper: bound(request.upper)?,
            descending: request.descending,
            limit: request.limit as usize,
            page_token: optional(request.page_token),
        };
        let page = self.blocking(move |store| store.query(&query)).await?;
        Ok(Response::new(pb::QueryResponse {
            documents: page.documents.into_iter().map(|document| document_to_pb(document, !keys_only)).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn add_to_counter(
        &self,
        request: Request<pb::AddToCounterRequest>,
    ) -> Result<Response<pb::AddToCounterResponse>, Status> {
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(Status::invalid_argument("a counter needs a name"));
        }
        let value = self.blocking(move |store| store.add_to_counter(&request.name, request.delta)).await?;
        Ok(Response::new(pb::AddToCounterResponse { value }))
    }

    async fn configure_sync(
        &self,
        request: Request<pb::ConfigureSyncRequest>,
    ) -> Result<Response<pb::ConfigureSyncResponse>, Status> {
        let request = request.into_inner();
        if !request.url.starts_with("https://") {
            return Err(Status::invalid_argument("the sync endpoint must be an https:// URL"));
        }
        if !request.ca_certificate_pem.contains("BEGIN CERTIFICATE") {
            return Err(Status::invalid_argument("the provider's CA certificate (PEM) is required: it is pinned"));
        }
        if request.user.is_empty() || request.session_token.is_empty() {
            return Err(Status::invalid_argument("a user and a session token are required"));
        }
        let config = sync::SyncConfig {
            url: request.url,
            ca_certificate_pem: request.ca_certificate_pem,
            user: request.user,
            session_token: request.session_token,
            interval_seconds: request.interval_seconds,
            login_secret: request.login_secret,
        };
        let saved = config.clone();
        let unlocked = self
            .blocking(move |store| match store.state()? {
                StoreState::Unlocked => sync::save_config(store, &saved).map(|()| true),
                _ => Ok(false),
            })
            .await?;
        if !unlocked {
            // Kept in memory until the store has keys to seal it with.
            self.sync.state().pending_config = Some(config);
        }
        Ok(Response::new(pb::ConfigureSyncResponse {}))
    }

    async fn get_sync_config(
        &self,
        _request: Request<pb::GetSyncConfigRequest>,
    ) -> Result<Response<pb::ConfigureSyncRequest>, Status> {
        let config = self
            .sync_config()
            .await
            .ok_or_else(|| Status::failed_precondition("sync is not configured, or the store is locked"))?;
        Ok(Response::new(pb::ConfigureSyncRequest {
            url: config.url,
            ca_certificate_pem: config.ca_certificate_pem,
            user: config.user,
            session_token: config.session_token,
            interval_seconds: config.interval_seconds,
            // Never handed out: only the store logs in again.
            login_secret: Vec::new(),
        }))
    }

    async fn sync(&self, request: Request<pb::SyncRequest>) -> Result<Response<SyncStream>, Status> {
        let config = self
            .sync_config()
            .await
            .ok_or_else(|| Status::failed_precondition("sync is not configured, or the store is locked"))?;
        if request.into_inner().if_idle && self.sync.state().running {
            let idle = pb::SyncProgress {
                phase: pb::sync_progress::Phase::Done.into(),
                message: "a sync is under way".into(),
                ..Default::default()
            };
            return Ok(Response::new(Box::pin(tokio_stream::iter(vec![Ok(idle)]))));
        }
        let (sender, receiver) = mpsc::channel(16);
        let service = self.clone();
        tokio::spawn(async move {
            if let Err(status) = service.sync_once(&config, Some(&sender)).await {
                let _ = sender.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }

    async fn get_sync_status(
        &self,
        _request: Request<pb::GetSyncStatusRequest>,
    ) -> Result<Response<pb::SyncStatus>, Status> {
        let (configured, cursor, pending, quarantined) = self
            .blocking(|store| {
                if store.state()? != StoreState::Unlocked {
                    return Ok((false, Default::default(), 0, Vec::new()));
                }
                Ok((
                    sync::load_config(store)?.is_some(),
                    store.sync_cursor()?,
                    store.outgoing(0)?.len(),
                    store.quarantined()?,
                ))
            })
            .await?;
        let quarantined = quarantined
            .into_iter()
            .map(|refused| pb::QuarantinedDocument {
                id: refused.id.unwrap_or_else(|| data_encoding::HEXLOWER.encode(&refused.storage_key)),
                reason: refused.reason,
                at: Some(prost_types::Timestamp::from(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(refused.at_ms),
                )),
            })
            .collect();
        let state = self.sync.state().clone();
        Ok(Response::new(pb::SyncStatus {
            configured: configured || state.pending_config.is_some(),
            running: state.running,
            last_sync_time: state.last_time.map(prost_types::Timestamp::from),
            last_result: state.last_result,
            local_generation: cursor.pushed_sequence,
            remote_generation: cursor.pulled_generation,
            pending_local_changes: pending as u64,
            quarantined,
        }))
    }

    async fn put_blob(
        &self,
        request: Request<tonic::Streaming<pb::PutBlobRequest>>,
    ) -> Result<Response<pb::BlobInfo>, Status> {
        let mut stream = request.into_inner();
        let first = stream.message().await?.ok_or_else(|| Status::invalid_argument("an empty blob upload"))?;
        let expected_size = (first.size != 0).then_some(first.size);
        let (content_type, local_only) = (first.content_type, first.local_only);
        let mut upload = self.blocking(move |store| store.begin_blob(&content_type, local_only)).await?;
        let mut data = first.data;
        loop {
            let chunk = std::mem::take(&mut data);
            let (returned, result) = {
                let store = Arc::clone(&self.store);
                tokio::task::spawn_blocking(move || {
                    let result = recovering(&store, |store| store.write_blob(&mut upload, &chunk));
                    (upload, result)
                })
                .await
                .map_err(|error| Status::internal(format!("store task failed: {error}")))?
            };
            upload = returned;
            let next = match result {
                Ok(()) => stream.message().await,
                Err(error) => Err(status_of(error)),
            };
            match next {
                Ok(Some(message)) => data = message.data,
                Ok(None) => break,
                Err(status) => {
                    // The client went away or the write failed: leave nothing behind.
                    let _ = self.blocking(move |store| store.abort_blob(upload)).await;
                    return Err(status);
                }
            }
        }
        let info = self.blocking(move |store| store.finish_blob(upload, expected_size)).await?;
        Ok(Response::new(pb::BlobInfo { id: info.id, size: info.size, content_type: info.content_type, synced: false }))
    }

    async fn get_blob(&self, request: Request<pb::GetBlobRequest>) -> Result<Response<BlobStream>, Status> {
        let request = request.into_inner();
        self.ensure_blob(&request.id).await?;
        let (sender, receiver) = mpsc::channel::<Result<pb::BlobChunk, Status>>(4);
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            // Sealed chunks are 64 KiB; a reply message carries up to
            // BLOB_REPLY_BYTES of them (fewer messages, fewer wake-ups).
            let mut data = Vec::new();
            let result = store.read_blob(&request.id, request.offset, request.length, |chunk| {
                if data.is_empty() {
                    data.reserve_exact(BLOB_REPLY_BYTES.max(chunk.len()));
                }
                data.extend_from_slice(chunk);
                data.len() < BLOB_REPLY_BYTES
                    || sender.blocking_send(Ok(pb::BlobChunk { data: std::mem::take(&mut data) })).is_ok()
            });
            let last = match result {
                Ok(()) if !data.is_empty() => Ok(pb::BlobChunk { data }),
                Ok(()) => return,
                Err(error) => Err(status_of(error)),
            };
            let _ = sender.blocking_send(last);
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }

    async fn stat_blob(&self, request: Request<pb::StatBlobRequest>) -> Result<Response<pb::BlobInfo>, Status> {
        let id = request.into_inner().id;
        self.ensure_blob(&id).await?;
        let lookup = id.clone();
        let info = self.blocking(move |store| store.stat_blob(&lookup)).await?;
        let info = info.ok_or_else(|| status_of(StoreError::NotFound(id)))?;
        Ok(Response::new(pb::BlobInfo { id: info.id, size: info.size, content_type: info.content_type, synced: false }))
    }

    async fn delete_blob(
        &self,
        request: Request<pb::DeleteBlobRequest>,
    ) -> Result<Response<pb::DeleteBlobResponse>, Status> {
        let id = request.into_inner().id;
        let lookup = id.clone();
        if !self.blocking(move |store| store.delete_blob(&lookup)).await? {
            return Err(status_of(StoreError::NotFound(id)));
        }
        Ok(Response::new(pb::DeleteBlobResponse {}))
    }

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let request = request.into_inner();
        // Subscribe before reading the log, so nothing falls between the two.
        let mut live = self.changes.subscribe();
        let mut last = match request.since_sequence {
            None => {
                self.blocking(|store| {
                    store.state().and_then(|state| match state {
                        StoreState::Unlocked => store.sequence(),
                        StoreState::Locked => Err(StoreError::Locked),
                        StoreState::Uninitialized => Err(StoreError::Uninitialized),
                    })
                })
                .await?
            }
            Some(since) => since,
        };
        let collections = request.collections;
        let include_content = request.include_content;
        let wanted = move |change: &Change| collections.is_empty() || collections.contains(&change.document.collection);
        let to_pb = move |change: Change, origin: pb::change::Origin| pb::Change {
            sequence: change.sequence,
            document: Some(document_to_pb(change.document, include_content)),
            origin: origin.into(),
        };
        let (sender, receiver) = mpsc::channel::<Result<pb::Change, Status>>(64);
        let service = self.clone();
        tokio::spawn(async move {
            // Catch up from the log, then follow live changes; after falling
            // behind (lagged), catch up from the log again.
            let mut catch_up = request.since_sequence.is_some();
            loop {
                // A page at a time: a watcher far behind on a big store
                // (100,000 messages) is not sent the whole log from memory.
                while catch_up {
                    let since = last;
                    match service.blocking(move |store| store.changes_since(since, CATCH_UP_PAGE)).await {
                        Ok(changes) => {
                            catch_up = changes.len() == CATCH_UP_PAGE;
                            for change in changes {
                                last = last.max(change.sequence);
                                // A replay cannot tell where a change came from.
                                let origin = pb::change::Origin::Unspecified;
                                if wanted(&change) && sender.send(Ok(to_pb(change, origin))).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(status) => {
                            let _ = sender.send(Err(status)).await;
                            return;
                        }
                    }
                }
                tokio::select! {
                    _ = sender.closed() => return,
                    received = live.recv() => match received {
                        // A gap: a change committed before this one is published
                        // after it (writes commit one at a time, but the tasks that
                        // publish them finish in any order), or was superseded in
                        // its batch. The log has everything committed up to this
                        // change: read it there, or the earlier one would come too
                        // late and be passed over for good.
                        Ok((change, _)) if change.sequence > last + 1 => catch_up = true,
                        Ok((change, origin)) if change.sequence > last => {
                            last = change.sequence;
                            if wanted(&change) && sender.send(Ok(to_pb(change, origin))).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => catch_up = true,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }
}

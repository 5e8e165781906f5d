//! The `bitmask.sync.v1.SyncEndpoint` gRPC edge over a [`SyncStorage`].

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::{Arc, Mutex};

use bitmask_proto::sync::v1 as pb;
use bitmask_proto::sync::v1::sync_endpoint_server::SyncEndpoint;
use tokio::sync::mpsc;
use tonic::transport::{Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::incoming::IncomingNotifier;
use crate::sessions::{SessionError, Sessions};
use crate::storage::{ByteReader, PushOutcome, PushedDocument, StorageError, StoredDocument, SyncStorage};

/// Documents per pull message unless the client asks for another size.
const DEFAULT_BATCH: usize = 500;
const MAX_BATCH: usize = 5000;
/// The largest blob accepted (the client stores larger payloads in parts).
pub const MAX_BLOB_BYTES: usize = 64 * 1024 * 1024;
const BLOB_CHUNK: usize = 64 * 1024;
/// Blob uploads one account may have under way at once (a device uploads
/// one at a time; several devices, or a retry while the last is cut off)...
pub const MAX_UPLOADS_PER_USER: usize = 4;
/// ...and all accounts together. Each holds a thread of the blocking pool
/// (512) and a partial file until it ends or is cut off.
pub const MAX_UPLOADS: usize = 64;

/// TLS for the endpoint from the provider's certificate and key (PEM).
pub fn server_tls(certificate_pem: &[u8], key_pem: &[u8]) -> ServerTlsConfig {
    ServerTlsConfig::new().identity(Identity::from_pem(certificate_pem, key_pem))
}

#[derive(Clone)]
pub struct SyncService {
    storage: Arc<dyn SyncStorage>,
    sessions: Arc<Sessions>,
    notifier: Arc<IncomingNotifier>,
    uploads: Arc<Uploads>,
}

/// Blob uploads under way, per user and in all.
#[derive(Debug)]
struct Uploads {
    per_user: usize,
    total: usize,
    under_way: Mutex<(usize, HashMap<String, usize>)>,
}

/// One upload under way, counted until dropped.
#[derive(Debug)]
struct UploadSlot {
    uploads: Arc<Uploads>,
    user: String,
}

impl Uploads {
    fn new(per_user: usize, total: usize) -> Arc<Self> {
        Arc::new(Self { per_user, total, under_way: Mutex::default() })
    }

    fn admit(self: &Arc<Self>, user: &str) -> Result<UploadSlot, Status> {
        let mut under_way = self.under_way.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (total, per_user) = &mut *under_way;
        let mine = per_user.get(user).copied().unwrap_or(0);
        if mine >= self.per_user {
            return Err(Status::resource_exhausted(format!(
                "too many blob uploads at once for this account (at most {}): send the next when one is done",
                self.per_user
            )));
        }
        if *total >= self.total {
            return Err(Status::resource_exhausted(
                "the provider takes too many blob uploads at once: try again in a moment",
            ));
        }
        *total += 1;
        per_user.insert(user.to_owned(), mine + 1);
        Ok(UploadSlot { uploads: Arc::clone(self), user: user.to_owned() })
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut under_way = self.uploads.under_way.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (total, per_user) = &mut *under_way;
        *total = total.saturating_sub(1);
        if let Some(mine) = per_user.get_mut(&self.user) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                per_user.remove(&self.user);
            }
        }
    }
}

impl std::fmt::Debug for SyncService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncService").finish_non_exhaustive()
    }
}

fn status_of(error: StorageError) -> Status {
    match error {
        StorageError::SecretsVersion { .. } => Status::aborted(error.to_string()),
        StorageError::BlobSize | StorageError::IncomingId(_) => Status::invalid_argument(error.to_string()),
        StorageError::Damaged | StorageError::Sled(_) | StorageError::Io(_) => Status::internal(error.to_string()),
    }
}

fn document_to_pb(document: StoredDocument) -> pb::SyncedDocument {
    pb::SyncedDocument {
        id: document.id,
        rev: document.rev,
        parent_rev: Vec::new(),
        sealed: document.sealed,
        deleted: document.deleted,
        generation: document.generation,
    }
}

impl SyncService {
    pub fn new(storage: Arc<dyn SyncStorage>, sessions: Arc<Sessions>) -> Self {
        Self::with_notifier(storage, sessions, Arc::default())
    }

    /// An endpoint whose `WatchIncoming` streams wake on `notifier` (the one
    /// the provider's MX notifies when it deposits mail).
    pub fn with_notifier(
        storage: Arc<dyn SyncStorage>,
        sessions: Arc<Sessions>,
        notifier: Arc<IncomingNotifier>,
    ) -> Self {
        Self { storage, sessions, notifier, uploads: Uploads::new(MAX_UPLOADS_PER_USER, MAX_UPLOADS) }
    }

    /// The same endpoint with other bounds on concurrent blob uploads.
    pub fn with_upload_limits(mut self, per_user: usize, total: usize) -> Self {
        self.uploads = Uploads::new(per_user, total);
        self
    }

    /// The user whose session token the request carries.
    fn user<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        self.sessions.user(token).map_err(|error| match error {
            SessionError::Missing | SessionError::Unknown | SessionError::Expired => {
                Status::unauthenticated(error.to_string())
            }
        })
    }

    async fn store_batch(
        &self,
        user: &str,
        batch: Vec<PushedDocument>,
        reply: &mut pb::PushResponse,
    ) -> Result<(), Status> {
        if batch.is_empty() {
            return Ok(());
        }
        let writer = user.to_owned();
        for outcome in self.blocking(move |storage| storage.push_many(&writer, batch)).await? {
            match outcome {
                PushOutcome::Accepted(generation) => {
                    reply.accepted += 1;
                    reply.generation = reply.generation.max(generation);
                }
                PushOutcome::Conflict(current) => {
                    reply
                        .conflicts
                        .push(pb::Conflict { id: current.id.clone(), current: Some(document_to_pb(current)) });
                }
            }
        }
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn SyncStorage) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, Status> {
        let storage = Arc::clone(&self.storage);
        tokio::task::spawn_blocking(move || work(storage.as_ref()))
            .await
            .map_err(|error| Status::internal(format!("storage task failed: {error}")))?
            .map_err(status_of)
    }
}

/// The bytes of `reader` (an incoming message, a blob) as a stream of chunks, read on the blocking pool a
/// chunk at a time as the client takes them: a large message is never read
/// whole into memory.
fn send_chunks(mut reader: ByteReader) -> mpsc::Receiver<Result<pb::BlobChunk, Status>> {
    let (sender, receiver) = mpsc::channel(2);
    tokio::spawn(async move {
        loop {
            let read = tokio::task::spawn_blocking(move || {
                let mut chunk = Vec::with_capacity(BLOB_CHUNK);
                let read = (&mut reader).take(BLOB_CHUNK as u64).read_to_end(&mut chunk);
                (reader, read.map(|_| chunk))
            })
            .await;
            let chunk = match read {
                Ok((back, Ok(chunk))) => {
                    reader = back;
                    chunk
                }
                Ok((_, Err(error))) => {
                    let _ = sender.send(Err(status_of(error.into()))).await;
                    return;
                }
                Err(error) => {
                    let _ = sender.send(Err(Status::internal(format!("storage task failed: {error}")))).await;
                    return;
                }
            };
            if chunk.is_empty() || sender.send(Ok(pb::BlobChunk { data: chunk })).await.is_err() {
                return;
            }
        }
    });
    receiver
}

/// Incoming items listed at once unless the client asks for fewer.
const DEFAULT_INCOMING_LIMIT: usize = 1000;

type PullStream = tonic::codegen::BoxStream<pb::PullResponse>;
type NoticeStream = tonic::codegen::BoxStream<pb::IncomingNotice>;
type BlobStream = tonic::codegen::BoxStream<pb::BlobChunk>;

#[tonic::async_trait]
impl SyncEndpoint for SyncService {
    async fn pull(&self, request: Request<pb::PullRequest>) -> Result<Response<PullStream>, Status> {
        let user = self.user(&request)?;
        let request = request.into_inner();
        let batch = match request.batch_size as usize {
            0 => DEFAULT_BATCH,
            size => size.min(MAX_BATCH),
        };
        let (sender, receiver) = mpsc::channel(4);
        let service = self.clone();
        tokio::spawn(async move {
            let mut since = request.since_generation;
            loop {
                let reader = user.clone();
                let result = service.blocking(move |storage| storage.pull(&reader, since, batch)).await;
                let (documents, up_to) = match result {
                    Ok(page) => page,
                    Err(status) => {
                        let _ = sender.send(Err(status)).await;
                        return;
                    }
                };
                let done = documents.len() < batch;
                since = documents.last().map(|document| document.generation).unwrap_or(up_to);
                let message = pb::PullResponse {
                    documents: documents.into_iter().map(document_to_pb).collect(),
                    up_to_generation: if done { up_to } else { since },
                    done,
                };
                if sender.send(Ok(message)).await.is_err() || done {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }

    async fn push(
        &self,
        request: Request<tonic::Streaming<pb::PushRequest>>,
    ) -> Result<Response<pb::PushResponse>, Status> {
        let user = self.user(&request)?;
        let mut stream = request.into_inner();
        let mut reply = pb::PushResponse::default();
        let mut device = String::new();
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        while let Some(message) = stream.message().await? {
            let document = match message.item {
                Some(pb::push_request::Item::Header(header)) => {
                    device = header.device;
                    continue;
                }
                Some(pb::push_request::Item::Document(document)) => document,
                None => return Err(Status::invalid_argument("an empty push message")),
            };
            if document.id.is_empty() || document.rev.is_empty() {
                return Err(Status::invalid_argument("a pushed document needs an id and a revision"));
            }
            batch_bytes += document.sealed.len();
            batch.push(PushedDocument {
                id: document.id,
                rev: document.rev,
                parent_rev: document.parent_rev,
                sealed: document.sealed,
                deleted: document.deleted,
            });
            // Stored (and flushed) together, a batch at a time.
            if batch.len() >= MAX_BATCH || batch_bytes >= MAX_BLOB_BYTES {
                self.store_batch(&user, std::mem::take(&mut batch), &mut reply).await?;
                batch_bytes = 0;
            }
        }
        self.store_batch(&user, batch, &mut reply).await?;
        tracing::info!(%device, accepted = reply.accepted, conflicts = reply.conflicts.len(), "push");
        Ok(Response::new(reply))
    }

    async fn missing_blobs(
        &self,
        request: Request<pb::MissingBlobsRequest>,
    ) -> Result<Response<pb::MissingBlobsResponse>, Status> {
        let user = self.user(&request)?;
        let ids = request.into_inner().ids;
        let missing = self
            .blocking(move |storage| {
                let mut missing = Vec::new();
                for id in ids {
                    if !storage.has_blob(&user, &id)? {
                        missing.push(id);
                    }
                }
                Ok(missing)
            })
            .await?;
        Ok(Response::new(pb::MissingBlobsResponse { missing }))
    }

    async fn put_blob(
        &self,
        request: Request<tonic::Streaming<pb::PutBlobRequest>>,
    ) -> Result<Response<pb::PutBlobResponse>, Status> {
        let user = self.user(&request)?;
        // Held until the upload ends, however it ends.
        let _slot = self.uploads.admit(&user)?;
        let mut stream = request.into_inner();
        let first = stream.message().await?.ok_or_else(|| Status::invalid_argument("an empty blob upload"))?;
        if first.id.is_empty() {
            return Err(Status::invalid_argument("a blob upload names its id first"));
        }
        if first.size as usize > MAX_BLOB_BYTES {
            return Err(Status::invalid_argument(format!("a blob has at most {MAX_BLOB_BYTES} bytes")));
        }
        let (id, size) = (first.id, first.size);
        // The chunks go to storage as they come (written on the blocking
        // pool): a large blob is never held whole.
        let (sender, mut receiver) = mpsc::channel::<Vec<u8>>(4);
        let store = self.blocking(move |storage| {
            storage.put_blob_from(&user, &id, &mut |sink| {
                let mut written = 0;
                while let Some(chunk) = receiver.blocking_recv() {
                    written += chunk.len() as u64;
                    sink.write_all(&chunk)?;
                }
                // Cut short (the upload failed): nothing is kept.
                if written == size { Ok(()) } else { Err(std::io::Error::other("the blob upload was cut short")) }
            })
        });
        let forward = async move {
            let mut received = first.data.len() as u64;
            let mut next = first.data;
            loop {
                if received > size {
                    return Err(status_of(StorageError::BlobSize));
                }
                if !next.is_empty() && sender.send(next).await.is_err() {
                    // Storage failed: its error is the answer.
                    return Ok(());
                }
                let Some(message) = stream.message().await? else { break };
                received += message.data.len() as u64;
                next = message.data;
            }
            if received != size {
                return Err(status_of(StorageError::BlobSize));
            }
            Ok(())
        };
        let (stored, forwarded) = tokio::join!(store, forward);
        forwarded?;
        stored?;
        Ok(Response::new(pb::PutBlobResponse {}))
    }

    async fn get_blob(&self, request: Request<pb::GetBlobRequest>) -> Result<Response<BlobStream>, Status> {
        let user = self.user(&request)?;
        let request = request.into_inner();
        let (id, offset) = (request.id, request.offset);
        let reader = self.blocking(move |storage| storage.read_blob(&user, &id, offset)).await?;
        let reader = reader.ok_or_else(|| Status::not_found("no such blob"))?;
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(send_chunks(reader)))))
    }

    async fn get_secrets(
        &self,
        request: Request<pb::GetSecretsRequest>,
    ) -> Result<Response<pb::SealedSecrets>, Status> {
        let user = self.user(&request)?;
        let secrets = self.blocking(move |storage| storage.secrets(&user)).await?;
        let (blob, version) = secrets.ok_or_else(|| Status::not_found("no secrets are stored for this user"))?;
        Ok(Response::new(pb::SealedSecrets { blob, version }))
    }

    async fn put_secrets(
        &self,
        request: Request<pb::PutSecretsRequest>,
    ) -> Result<Response<pb::PutSecretsResponse>, Status> {
        let user = self.user(&request)?;
        let request = request.into_inner();
        let secrets = request.secrets.ok_or_else(|| Status::invalid_argument("no secrets given"))?;
        let expected = request.expected_version;
        let version = self.blocking(move |storage| storage.put_secrets(&user, &secrets.blob, expected)).await?;
        Ok(Response::new(pb::PutSecretsResponse { version }))
    }

    async fn list_incoming(
        &self,
        request: Request<pb::ListIncomingRequest>,
    ) -> Result<Response<pb::ListIncomingResponse>, Status> {
        let user = self.user(&request)?;
        let limit = match request.into_inner().limit as usize {
            0 => DEFAULT_INCOMING_LIMIT,
            limit => limit.min(DEFAULT_INCOMING_LIMIT),
        };
        let items = self.blocking(move |storage| storage.list_incoming(&user, limit)).await?;
        let items = items
            .into_iter()
            .map(|item| pb::IncomingItem { id: item.id, size: item.size, received_unix_ms: item.received_ms })
            .collect();
        Ok(Response::new(pb::ListIncomingResponse { items }))
    }

    async fn get_incoming(&self, request: Request<pb::GetIncomingRequest>) -> Result<Response<BlobStream>, Status> {
        let user = self.user(&request)?;
        let id = request.into_inner().id;
        let reader = self.blocking(move |storage| storage.read_incoming(&user, &id)).await?;
        let reader =
            reader.ok_or_else(|| Status::not_found("no such incoming message (deleted by another device?)"))?;
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(send_chunks(reader)))))
    }

    async fn delete_incoming(
        &self,
        request: Request<pb::DeleteIncomingRequest>,
    ) -> Result<Response<pb::DeleteIncomingResponse>, Status> {
        let user = self.user(&request)?;
        let ids = request.into_inner().ids;
        let deleted = self.blocking(move |storage| storage.delete_incoming(&user, &ids)).await?;
        Ok(Response::new(pb::DeleteIncomingResponse { deleted }))
    }

    async fn watch_incoming(
        &self,
        request: Request<pb::WatchIncomingRequest>,
    ) -> Result<Response<NoticeStream>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned();
        let user = self.user(&request)?;
        let mut changes = self.notifier.subscribe(&user);
        let (sender, receiver) = mpsc::channel(1);
        let service = self.clone();
        tokio::spawn(async move {
            loop {
                // The session is checked again for every notice: an expired
                // one ends the stream, and the client logs in again.
                if let Err(error) = service.sessions.user(&token) {
                    let _ = sender.send(Err(Status::unauthenticated(error.to_string()))).await;
                    return;
                }
                // Marked before the listing: a deposit after it wakes us again.
                changes.mark_unchanged();
                let reader = user.clone();
                let waiting = match service.blocking(move |storage| storage.list_incoming(&reader, 0)).await {
                    Ok(items) => items.len() as u32,
                    Err(status) => {
                        let _ = sender.send(Err(status)).await;
                        return;
                    }
                };
                if sender.send(Ok(pb::IncomingNotice { waiting })).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = sender.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }
}

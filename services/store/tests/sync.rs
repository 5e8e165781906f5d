//! Two devices of one account, each a real `bitmask-store` process, syncing
//! through a sync endpoint served over TLS in the test (CA pinned, session
//! token): recovery from the passphrase alone, convergence, and a sync cut off
//! half-way in either direction, then resumed.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bitmask_proto::store::v1 as pb;
use bitmask_proto::store::v1::store_client::StoreClient;
use bitmask_sync_endpoint::{
    IncomingItem, PushOutcome, PushedDocument, SledStorage, StorageError, StoredDocument, SyncStorage,
};
use bitmask_testkit::{KillOnDrop, TestProvider, World, all_bytes, contains, wait_until};
use tonic::Code;
use tonic::transport::Channel;

const ACCOUNT: &str = "alice@example.org";
const PASSPHRASE: &str = "correct horse battery";

/// The provider's storage, failing on purpose after a number of calls: a
/// connection cut in the middle of a sync.
#[derive(Debug)]
struct Flaky {
    inner: SledStorage,
    pulls_left: AtomicUsize,
    pushes_left: AtomicUsize,
    /// Pulls hand out the first document altered (a hostile provider).
    tamper: std::sync::atomic::AtomicBool,
}

impl SyncStorage for Flaky {
    fn pull(&self, user: &str, since: u64, limit: usize) -> Result<(Vec<StoredDocument>, u64), StorageError> {
        if self.pulls_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err() {
            return Err(StorageError::Damaged);
        }
        let (mut documents, generation) = self.inner.pull(user, since, limit)?;
        if self.tamper.load(Ordering::SeqCst)
            && let Some(last) = documents.first_mut().and_then(|document| document.sealed.last_mut())
        {
            *last ^= 1;
        }
        Ok((documents, generation))
    }
    fn push(&self, user: &str, document: PushedDocument) -> Result<PushOutcome, StorageError> {
        if self.pushes_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err() {
            return Err(StorageError::Damaged);
        }
        self.inner.push(user, document)
    }
    fn has_blob(&self, user: &str, id: &[u8]) -> Result<bool, StorageError> {
        self.inner.has_blob(user, id)
    }
    fn put_blob(&self, user: &str, id: &[u8], data: &[u8]) -> Result<(), StorageError> {
        self.inner.put_blob(user, id, data)
    }
    fn get_blob(&self, user: &str, id: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get_blob(user, id)
    }
    fn secrets(&self, user: &str) -> Result<Option<(Vec<u8>, u64)>, StorageError> {
        self.inner.secrets(user)
    }
    fn put_secrets(&self, user: &str, blob: &[u8], expected_version: u64) -> Result<u64, StorageError> {
        self.inner.put_secrets(user, blob, expected_version)
    }
    fn deposit_incoming(&self, user: &str, id: &str, received_ms: u64, data: &[u8]) -> Result<(), StorageError> {
        self.inner.deposit_incoming(user, id, received_ms, data)
    }
    fn list_incoming(&self, user: &str, limit: usize) -> Result<Vec<IncomingItem>, StorageError> {
        self.inner.list_incoming(user, limit)
    }
    fn get_incoming(&self, user: &str, id: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get_incoming(user, id)
    }
    fn delete_incoming(&self, user: &str, ids: &[String]) -> Result<u32, StorageError> {
        self.inner.delete_incoming(user, ids)
    }
}

struct Provider {
    test: TestProvider,
    storage: Arc<Flaky>,
    _dir: tempfile::TempDir,
}

async fn provider() -> Provider {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(Flaky {
        inner: SledStorage::open(dir.path()).unwrap(),
        pulls_left: AtomicUsize::new(usize::MAX),
        pushes_left: AtomicUsize::new(usize::MAX),
        tamper: std::sync::atomic::AtomicBool::new(false),
    });
    Provider { test: TestProvider::start(storage.clone()).await, storage, _dir: dir }
}

struct Device {
    _world: World,
    _process: KillOnDrop,
    client: StoreClient<Channel>,
}

async fn device(provider: &Provider) -> Device {
    let world = World::new();
    let mut process = world.spawn_service("bitmask-store", ACCOUNT);
    let socket = world.socket(ACCOUNT, "store");
    world.wait_for_socket(&socket, &mut process);
    let mut client = StoreClient::new(bitmask_runtime::client::connect_unix(&socket).await.unwrap());
    client.configure_sync(provider.test.configure_request()).await.unwrap();
    Device { _world: world, _process: process, client }
}

async fn declare(client: &mut StoreClient<Channel>) {
    let collection = pb::CollectionDefinition {
        name: "meta".into(),
        conflict_policy: pb::ConflictPolicy::MergeSets.into(),
        local_only: false,
    };
    client.declare_collection(collection).await.unwrap();
    let index = pb::IndexDefinition { name: "all".into(), collection: "meta".into(), fields: vec![], unique: false };
    client.declare_index(index).await.unwrap();
}

/// Runs a sync and returns its last progress message, or the error.
async fn sync(client: &mut StoreClient<Channel>) -> Result<pb::SyncProgress, tonic::Status> {
    let mut stream = client.sync(pb::SyncRequest { if_idle: false }).await?.into_inner();
    let mut last = None;
    while let Some(progress) = stream.message().await? {
        last = Some(progress);
    }
    last.ok_or_else(|| tonic::Status::internal("no progress"))
}

async fn all(client: &mut StoreClient<Channel>) -> Vec<(String, Vec<u8>)> {
    let page = client.query(pb::QueryRequest { index: "all".into(), ..Default::default() }).await.unwrap().into_inner();
    let mut documents: Vec<_> = page.documents.into_iter().map(|document| (document.id, document.content)).collect();
    documents.sort();
    documents
}

fn put(id: &str, content: serde_json::Value) -> pb::PutRequest {
    pb::PutRequest {
        id: id.into(),
        collection: "meta".into(),
        content: content.to_string().into_bytes(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_device_recovers_from_the_passphrase_and_both_converge() {
    let provider = provider().await;
    let mut one = device(&provider).await;
    one.client.initialize(pb::InitializeRequest { passphrase: PASSPHRASE.into(), from_provider: false }).await.unwrap();
    declare(&mut one.client).await;
    for n in 0..300 {
        one.client.put(put(&format!("m/{n}"), serde_json::json!({"n": n, "flags": []}))).await.unwrap();
    }
    let done = sync(&mut one.client).await.unwrap();
    assert_eq!(done.phase(), pb::sync_progress::Phase::Done);
    // (The background sync may have sent some of them already.)
    assert_eq!(provider.storage.inner.pull(TestProvider::USER, 0, 0).unwrap().0.len(), 300);

    let mut two = device(&provider).await;
    let wrong = pb::InitializeRequest { passphrase: "wrong".into(), from_provider: true };
    assert_eq!(two.client.initialize(wrong).await.unwrap_err().code(), Code::Unauthenticated);
    let state = two.client.get_state(pb::GetStateRequest {}).await.unwrap().into_inner();
    assert_eq!(state.state(), pb::store_state::State::Uninitialized, "a wrong passphrase changes nothing");
    two.client.initialize(pb::InitializeRequest { passphrase: PASSPHRASE.into(), from_provider: true }).await.unwrap();
    declare(&mut two.client).await;
    let mut watch = two
        .client
        .watch(pb::WatchRequest { collections: vec![], since_sequence: None, include_content: false })
        .await
        .unwrap()
        .into_inner();
    sync(&mut two.client).await.unwrap();
    assert_eq!(all(&mut two.client).await, all(&mut one.client).await);
    assert_eq!(all(&mut two.client).await.len(), 300);
    let change = watch.message().await.unwrap().unwrap();
    assert_eq!(change.origin(), pb::change::Origin::Sync, "watchers learn of synced documents");

    // Both edit the same flags while apart; a deletion on one side.
    one.client.put(put("m/1", serde_json::json!({"n": 1, "flags": ["\\Seen"]}))).await.unwrap();
    two.client.put(put("m/1", serde_json::json!({"n": 1, "flags": ["\\Flagged"]}))).await.unwrap();
    two.client.delete(pb::DeleteRequest { id: "m/2".into(), expected_rev: String::new() }).await.unwrap();
    sync(&mut one.client).await.unwrap();
    sync(&mut two.client).await.unwrap();
    sync(&mut one.client).await.unwrap();
    let one_docs = all(&mut one.client).await;
    assert_eq!(one_docs, all(&mut two.client).await);
    assert_eq!(one_docs.len(), 299);
    let merged: serde_json::Value =
        serde_json::from_slice(&one_docs.iter().find(|(id, _)| id == "m/1").unwrap().1).unwrap();
    let mut flags: Vec<String> = serde_json::from_value(merged["flags"].clone()).unwrap();
    flags.sort();
    assert_eq!(flags, ["\\Flagged", "\\Seen"]);

    let status = one.client.get_sync_status(pb::GetSyncStatusRequest {}).await.unwrap().into_inner();
    assert!(status.configured && status.last_result.starts_with("ok"), "{status:?}");
    assert_eq!(status.pending_local_changes, 0);

    // A blob written on device 1 is read on device 2, fetched from the provider on demand.
    let data: Vec<u8> = b"Attachment-Marker-XYZZY ".iter().copied().cycle().take(3 * 1024 * 1024 + 5).collect();
    let mut parts: Vec<pb::PutBlobRequest> =
        data.chunks(1 << 20).map(|chunk| pb::PutBlobRequest { data: chunk.to_vec(), ..Default::default() }).collect();
    parts[0].size = data.len() as u64;
    parts[0].content_type = "application/pdf".into();
    let blob = one.client.put_blob(futures::stream::iter(parts)).await.unwrap().into_inner();
    let done = sync(&mut one.client).await.unwrap();
    assert!(done.message.contains("blobs sent 1"), "{}", done.message);
    let mut stream = two
        .client
        .get_blob(pb::GetBlobRequest { id: blob.id.clone(), offset: 0, length: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut received = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        received.extend_from_slice(&chunk.data);
    }
    assert!(received == data, "device 2 reads the blob device 1 wrote");
    let absent = two.client.get_blob(pb::GetBlobRequest { id: "00".repeat(32), offset: 0, length: 0 }).await;
    assert_eq!(absent.unwrap_err().code(), Code::NotFound);
    let provider_bytes = all_bytes(provider._dir.path());
    assert!(!contains(&provider_bytes, b"Attachment-Marker-XYZZY"), "blob plaintext at the provider");

    // A local write reaches the provider by itself (background sync), soon.
    one.client.put(put("m/new", serde_json::json!({"n": -1}))).await.unwrap();
    let before = provider.storage.inner.pull(TestProvider::USER, 0, 0).unwrap().1;
    wait_until(Duration::from_secs(10), "the background sync pushed the write", || {
        provider.storage.inner.pull(TestProvider::USER, 0, 0).unwrap().1 > before
    });

    // After a passphrase change, the next sync replaces the backup: a third
    // device recovers with the new passphrase only.
    let change = pb::ChangePassphraseRequest {
        credential: Some(pb::change_passphrase_request::Credential::OldPassphrase(PASSPHRASE.into())),
        new_passphrase: "new passphrase".into(),
    };
    one.client.change_passphrase(change).await.unwrap();
    sync(&mut one.client).await.unwrap();
    let mut three = device(&provider).await;
    let old = pb::InitializeRequest { passphrase: PASSPHRASE.into(), from_provider: true };
    assert_eq!(three.client.initialize(old).await.unwrap_err().code(), Code::Unauthenticated);
    let new = pb::InitializeRequest { passphrase: "new passphrase".into(), from_provider: true };
    three.client.initialize(new).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_cut_off_half_way_resumes_without_loss_or_duplicates() {
    let provider = provider().await;
    let mut one = device(&provider).await;
    one.client.initialize(pb::InitializeRequest { passphrase: PASSPHRASE.into(), from_provider: false }).await.unwrap();
    declare(&mut one.client).await;
    // The push breaks after 700 documents (set first: the background sync,
    // a second after local writes, may start pushing while they are written).
    provider.storage.pushes_left.store(700, Ordering::SeqCst);
    for n in 0..1200 {
        one.client.put(put(&format!("m/{n}"), serde_json::json!({"n": n}))).await.unwrap();
    }
    assert!(sync(&mut one.client).await.is_err());
    provider.storage.pushes_left.store(usize::MAX, Ordering::SeqCst);
    sync(&mut one.client).await.unwrap();
    let (stored, generation) = provider.storage.inner.pull(TestProvider::USER, 0, 0).unwrap();
    assert_eq!((stored.len(), generation), (1200, 1200), "each document stored once");

    // The first device stops: its background syncs would take pulls too.
    let expected = all(&mut one.client).await;
    drop(one);

    // The pull breaks after the first batch of 500 (set first: the second
    // device's background sync may pull as soon as it is initialized).
    provider.storage.pulls_left.store(1, Ordering::SeqCst);
    let mut two = device(&provider).await;
    two.client.initialize(pb::InitializeRequest { passphrase: PASSPHRASE.into(), from_provider: true }).await.unwrap();
    declare(&mut two.client).await;
    assert!(sync(&mut two.client).await.is_err());
    assert_eq!(all(&mut two.client).await.len(), 500, "the first batch arrived before the cut");
    provider.storage.pulls_left.store(usize::MAX, Ordering::SeqCst);
    sync(&mut two.client).await.unwrap();
    assert_eq!(all(&mut two.client).await, expected);
    assert_eq!(provider.storage.inner.pull(TestProvider::USER, 0, 0).unwrap().1, 1200, "nothing was pushed back twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_ca_is_refused_and_sync_needs_a_configuration() {
    let provider = provider().await;
    let world = World::new();
    let mut process = world.spawn_service("bitmask-store", ACCOUNT);
    let socket = world.socket(ACCOUNT, "store");
    world.wait_for_socket(&socket, &mut process);
    let mut client = StoreClient::new(bitmask_runtime::client::connect_unix(&socket).await.unwrap());
    client.initialize(pb::InitializeRequest { passphrase: PASSPHRASE.into(), from_provider: false }).await.unwrap();
    assert_eq!(sync(&mut client).await.unwrap_err().code(), Code::FailedPrecondition);
    let bad = pb::ConfigureSyncRequest { url: "http://localhost:1".into(), ..Default::default() };
    assert_eq!(client.configure_sync(bad).await.unwrap_err().code(), Code::InvalidArgument);

    // A CA of someone else: the provider's certificate does not verify.
    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut other_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_ca = other_params.self_signed(&other_key).unwrap();
    let configure =
        pb::ConfigureSyncRequest { ca_certificate_pem: other_ca.pem(), ..provider.test.configure_request() };
    client.configure_sync(configure).await.unwrap();
    let refused = sync(&mut client).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    // A wrong session token: the provider says who is wrong.
    let configure = pb::ConfigureSyncRequest { session_token: "stolen".into(), ..provider.test.configure_request() };
    client.configure_sync(configure).await.unwrap();
    assert_eq!(sync(&mut client).await.unwrap_err().code(), Code::Unauthenticated);
}

/// Every `incoming/<item>` document, as (item, blob id).
async fn incoming_documents(client: &mut StoreClient<Channel>) -> Vec<(String, String)> {
    let request = pb::QueryRequest { index: "incoming-by-received".into(), ..Default::default() };
    let Ok(page) = client.query(request).await else { return Vec::new() };
    page.into_inner()
        .documents
        .into_iter()
        .map(|document| {
            let content: serde_json::Value = serde_json::from_slice(&document.content).unwrap();
            (content["item"].as_str().unwrap().to_owned(), content["blob"].as_str().unwrap().to_owned())
        })
        .collect()
}

async fn blob(client: &mut StoreClient<Channel>, id: &str) -> Result<Vec<u8>, tonic::Status> {
    let request = pb::GetBlobRequest { id: id.into(), offset: 0, length: 0 };
    let mut stream = client.get_blob(request).await?.into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.message().await? {
        data.extend_from_slice(&chunk.data);
    }
    Ok(data)
}

#[tokio::test(flavor = "multi_thread")]
async fn incoming_items_are_taken_once_each_with_their_bytes_while_fetches_race() {
    let provider = provider().await;
    // Waiting before the device exists: its notice follower and each of its
    // syncs find them all at once, and race to fetch them.
    let notifier = bitmask_sync_endpoint::IncomingNotifier::default();
    let mut deposited = std::collections::HashMap::new();
    for n in 0..60 {
        let data = format!("item {n}, encrypted to the account. ").repeat(100).into_bytes();
        let id =
            bitmask_sync_endpoint::deposit(provider.storage.as_ref(), &notifier, TestProvider::USER, &data).unwrap();
        deposited.insert(id, data);
    }
    let mut device = device(&provider).await;
    let initialize = pb::InitializeRequest { passphrase: PASSPHRASE.into(), from_provider: false };
    device.client.initialize(initialize).await.unwrap();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        sync(&mut device.client).await.unwrap();
    }
    let taken = incoming_documents(&mut device.client).await;
    assert_eq!(taken.len(), deposited.len(), "each item once");
    for (item, blob_id) in taken {
        let bytes = blob(&mut device.client, &blob_id).await.unwrap_or_else(|status| panic!("{item}: {status}"));
        assert_eq!(&bytes, &deposited[&item], "{item}");
    }
    // They stay at the provider until filed (nothing is filed here).
    assert_eq!(provider.storage.list_incoming(TestProvider::USER, 0).unwrap().len(), 60);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_document_the_store_refuses_is_skipped_reported_and_the_rest_syncs() {
    // A provider that alters one document: the second device refuses it,
    // takes every other one, and says which it refused and why.
    let provider = provider().await;
    let mut one = device(&provider).await;
    one.client.initialize(pb::InitializeRequest { passphrase: PASSPHRASE.into(), from_provider: false }).await.unwrap();
    declare(&mut one.client).await;
    for n in 0..20 {
        one.client.put(put(&format!("m/{n}"), serde_json::json!({"n": n, "flags": []}))).await.unwrap();
    }
    sync(&mut one.client).await.unwrap();

    provider.storage.tamper.store(true, Ordering::SeqCst);
    let mut two = device(&provider).await;
    two.client.initialize(pb::InitializeRequest { passphrase: PASSPHRASE.into(), from_provider: true }).await.unwrap();
    declare(&mut two.client).await;
    let done = sync(&mut two.client).await.unwrap();
    assert_eq!(done.phase(), pb::sync_progress::Phase::Done);
    let status = two.client.get_sync_status(pb::GetSyncStatusRequest {}).await.unwrap().into_inner();
    assert!(status.last_result.starts_with("ok"), "{status:?}");
    assert_eq!(status.quarantined.len(), 1, "{status:?}");
    assert!(!status.quarantined[0].reason.is_empty(), "{status:?}");
    let synced = all(&mut two.client).await;
    assert!(synced.len() >= 19, "every other document came: {}", synced.len());
    // A later sync is not stopped by it either.
    one.client.put(put("m/new", serde_json::json!({"n": 99, "flags": []}))).await.unwrap();
    sync(&mut one.client).await.unwrap();
    provider.storage.tamper.store(false, Ordering::SeqCst);
    sync(&mut two.client).await.unwrap();
    assert!(all(&mut two.client).await.iter().any(|(id, _)| id == "m/new"));
}

/// A document that names a blob never reaches the provider before the blob:
/// a push cut between the two left the document there and the blob only on
/// the device that wrote it, which could then delete it (its message
/// collected) while another device kept the document alive: the blob was
/// gone everywhere (found by the sync model test).
#[tokio::test(flavor = "multi_thread")]
async fn a_blob_reaches_the_provider_before_the_documents_that_name_it() {
    let provider = provider().await;
    let mut one = device(&provider).await;
    one.client.initialize(pb::InitializeRequest { passphrase: PASSPHRASE.into(), from_provider: false }).await.unwrap();
    declare(&mut one.client).await;
    // Every push breaks after the first document (set first: the
    // background sync may start pushing while they are written).
    provider.storage.pushes_left.store(1, Ordering::SeqCst);
    let data = vec![7u8; 200_000];
    let upload = pb::PutBlobRequest {
        data: data.clone(),
        size: data.len() as u64,
        content_type: "application/octet-stream".into(),
        ..Default::default()
    };
    let info = one.client.put_blob(futures::stream::iter([upload])).await.unwrap().into_inner();
    one.client.put(put("m/content", serde_json::json!({ "blob": info.id }))).await.unwrap();
    one.client.put(put("m/other", serde_json::json!({ "n": 1 }))).await.unwrap();
    assert!(sync(&mut one.client).await.is_err(), "the push is cut after one document");
    // The device lets the blob go (its message collected) before it syncs again.
    one.client.delete_blob(pb::DeleteBlobRequest { id: info.id.clone() }).await.unwrap();
    provider.storage.pushes_left.store(usize::MAX, Ordering::SeqCst);
    sync(&mut one.client).await.unwrap();

    let mut two = device(&provider).await;
    two.client.initialize(pb::InitializeRequest { passphrase: PASSPHRASE.into(), from_provider: true }).await.unwrap();
    declare(&mut two.client).await;
    sync(&mut two.client).await.unwrap();
    let documents = all(&mut two.client).await;
    assert!(documents.iter().any(|(id, _)| id == "m/content"), "{documents:?}");
    let read = blob(&mut two.client, &info.id).await;
    assert!(read.as_ref().is_ok_and(|read| *read == data), "the blob a document names: {:?}", read.map(|r| r.len()));
}

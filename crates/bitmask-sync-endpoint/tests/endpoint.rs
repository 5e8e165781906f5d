//! The sync endpoint over real TLS on loopback, with a pinned CA and session
//! tokens: push, pull, conflicts, retries, users kept apart, secrets, blobs.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::sync::Arc;
use std::time::Duration;

use bitmask_proto::sync::v1 as pb;
use bitmask_proto::sync::v1::sync_endpoint_client::SyncEndpointClient;
use bitmask_proto::sync::v1::sync_endpoint_server::SyncEndpointServer;
use bitmask_sync_endpoint::{Sessions, SledStorage, SyncService, server_tls};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

struct Pki {
    ca_pem: String,
    server_pem: String,
    server_key_pem: String,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "test provider CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server =
        rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().signed_by(&server_key, &issuer).unwrap();
    Pki { ca_pem: ca.pem(), server_pem: server.pem(), server_key_pem: server_key.serialize_pem() }
}

struct Endpoint {
    port: u16,
    sessions: Arc<Sessions>,
    ca_pem: String,
    _dir: tempfile::TempDir,
}

async fn endpoint() -> Endpoint {
    endpoint_with(|service| service).await
}

/// An endpoint whose service `configure` sets up.
async fn endpoint_with(configure: impl FnOnce(SyncService) -> SyncService) -> Endpoint {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(SledStorage::open(dir.path()).unwrap());
    let sessions = Arc::new(Sessions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tonic::transport::Server::builder()
        .tls_config(server_tls(pki.server_pem.as_bytes(), pki.server_key_pem.as_bytes()))
        .unwrap()
        .add_service(SyncEndpointServer::new(configure(SyncService::new(storage, sessions.clone()))));
    tokio::spawn(server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)));
    Endpoint { port, sessions, ca_pem: pki.ca_pem, _dir: dir }
}

/// Adds the session token to every request.
type Authorize = Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Client = SyncEndpointClient<InterceptedService<Channel, Authorize>>;

async fn channel(port: u16, ca_pem: &str) -> Result<Channel, tonic::transport::Error> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    Channel::from_shared(format!("https://localhost:{port}")).unwrap().tls_config(tls).unwrap().connect().await
}

async fn client(endpoint: &Endpoint, token: String) -> Client {
    let channel = channel(endpoint.port, &endpoint.ca_pem).await.unwrap();
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    let interceptor: Authorize = Box::new(move |mut request: tonic::Request<()>| {
        request.metadata_mut().insert("authorization", bearer.clone());
        Ok(request)
    });
    SyncEndpointClient::with_interceptor(channel, interceptor)
}

fn document(id: &str, rev: &str, parent: &str) -> pb::PushRequest {
    pb::PushRequest {
        item: Some(pb::push_request::Item::Document(pb::SyncedDocument {
            id: id.as_bytes().to_vec(),
            rev: rev.as_bytes().to_vec(),
            parent_rev: parent.as_bytes().to_vec(),
            sealed: format!("sealed {id} {rev}").into_bytes(),
            deleted: false,
            generation: 0,
        })),
    }
}

async fn push(client: &mut Client, documents: Vec<pb::PushRequest>) -> pb::PushResponse {
    let header =
        pb::PushRequest { item: Some(pb::push_request::Item::Header(pb::PushHeader { device: "test".into() })) };
    let stream = futures::stream::iter(std::iter::once(header).chain(documents));
    client.push(stream).await.unwrap().into_inner()
}

async fn pull(client: &mut Client, since: u64, batch_size: u32) -> (Vec<pb::SyncedDocument>, u64, usize) {
    let mut stream = client.pull(pb::PullRequest { since_generation: since, batch_size }).await.unwrap().into_inner();
    let (mut documents, mut messages) = (Vec::new(), 0);
    while let Some(message) = stream.message().await.unwrap() {
        messages += 1;
        documents.extend(message.documents);
        if message.done {
            return (documents, message.up_to_generation, messages);
        }
    }
    panic!("the pull ended without a done message");
}

#[tokio::test]
async fn push_pull_conflicts_and_retries() {
    let endpoint = endpoint().await;
    let token = endpoint.sessions.issue("alice", Duration::from_secs(60));
    let mut alice = client(&endpoint, token.clone()).await;

    let reply =
        push(&mut alice, vec![document("a", "1-x", ""), document("b", "1-x", ""), document("c", "1-x", "")]).await;
    assert_eq!((reply.accepted, reply.generation, reply.conflicts.len()), (3, 3, 0));
    let (documents, up_to, messages) = pull(&mut alice, 0, 2).await;
    assert_eq!(documents.iter().map(|d| d.id.as_slice()).collect::<Vec<_>>(), [b"a", b"b", b"c"]);
    assert_eq!((up_to, messages), (3, 2), "streamed in batches of two");
    assert_eq!(documents[1].sealed, b"sealed b 1-x");

    // An update moves the document to a new generation.
    let reply = push(&mut alice, vec![document("a", "2-y", "1-x")]).await;
    assert_eq!(reply.generation, 4);
    let (documents, up_to, _) = pull(&mut alice, 3, 0).await;
    assert_eq!((documents.len(), up_to), (1, 4));
    // Another device still on 1-x conflicts and learns the current version.
    let mut other_device = client(&endpoint, token).await;
    let reply = push(&mut other_device, vec![document("a", "2-z", "1-x")]).await;
    assert_eq!(reply.accepted, 0);
    assert_eq!(reply.conflicts[0].current.as_ref().unwrap().rev, b"2-y");
    // A retried push (cut off before its reply) is accepted once, not duplicated.
    let reply = push(&mut alice, vec![document("a", "2-y", "1-x")]).await;
    assert_eq!((reply.accepted, reply.generation), (1, 4));
    let (documents, up_to, _) = pull(&mut alice, 0, 0).await;
    assert_eq!((documents.len(), up_to), (3, 4));
    // Nothing new since the last generation.
    assert_eq!(pull(&mut alice, 4, 0).await.0, vec![]);
}

#[tokio::test]
async fn tokens_users_and_tls_are_enforced() {
    let endpoint = endpoint().await;
    let alice_token = endpoint.sessions.issue("alice", Duration::from_secs(60));
    let mut alice = client(&endpoint, alice_token.clone()).await;
    push(&mut alice, vec![document("secret-doc", "1-x", "")]).await;

    // Bob sees only his own documents.
    let mut bob = client(&endpoint, endpoint.sessions.issue("bob", Duration::from_secs(60))).await;
    assert_eq!(pull(&mut bob, 0, 0).await.0, vec![]);
    // No token, a made-up token, an expired token, a revoked token.
    let expired = endpoint.sessions.issue("alice", Duration::ZERO);
    for (token, message) in [("", "no session token"), ("made-up", "unknown session"), (expired.as_str(), "expired")] {
        let mut client = client(&endpoint, token.to_owned()).await;
        let status = client.pull(pb::PullRequest::default()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{token}");
        assert!(status.message().contains(message), "{status:?}");
    }
    endpoint.sessions.revoke(&alice_token);
    assert_eq!(alice.pull(pb::PullRequest::default()).await.unwrap_err().code(), Code::Unauthenticated);

    // A client pinning another CA refuses the provider's certificate.
    let other_ca = pki().ca_pem;
    assert!(channel(endpoint.port, &other_ca).await.is_err());
    // Plain text is not served.
    let plain = Channel::from_shared(format!("http://localhost:{}", endpoint.port)).unwrap().connect().await;
    if let Ok(plain) = plain {
        let mut client = SyncEndpointClient::new(plain);
        assert!(client.pull(pb::PullRequest::default()).await.is_err());
    }
}

#[tokio::test]
async fn secrets_are_compare_and_set_and_blobs_are_idempotent() {
    let endpoint = endpoint().await;
    let mut alice = client(&endpoint, endpoint.sessions.issue("alice", Duration::from_secs(60))).await;
    assert_eq!(alice.get_secrets(pb::GetSecretsRequest {}).await.unwrap_err().code(), Code::NotFound);
    let put = |version, blob: &str| pb::PutSecretsRequest {
        secrets: Some(pb::SealedSecrets { blob: blob.as_bytes().to_vec(), version: 0 }),
        expected_version: version,
    };
    assert_eq!(alice.put_secrets(put(0, "first")).await.unwrap().into_inner().version, 1);
    assert_eq!(alice.put_secrets(put(0, "stale")).await.unwrap_err().code(), Code::Aborted);
    assert_eq!(alice.put_secrets(put(1, "second")).await.unwrap().into_inner().version, 2);
    let secrets = alice.get_secrets(pb::GetSecretsRequest {}).await.unwrap().into_inner();
    assert_eq!((secrets.blob.as_slice(), secrets.version), (b"second".as_slice(), 2));

    let id = b"blob-1".to_vec();
    let missing = alice.missing_blobs(pb::MissingBlobsRequest { ids: vec![id.clone()] }).await.unwrap().into_inner();
    assert_eq!(missing.missing, vec![id.clone()]);
    let data: Vec<u8> = (0..300_000u32).map(|n| n as u8).collect();
    let upload = |data: &[u8]| {
        let mut parts: Vec<pb::PutBlobRequest> = data
            .chunks(100_000)
            .map(|chunk| pb::PutBlobRequest { data: chunk.to_vec(), ..Default::default() })
            .collect();
        parts[0].id = id.clone();
        parts[0].size = data.len() as u64;
        futures::stream::iter(parts)
    };
    alice.put_blob(upload(&data)).await.unwrap();
    alice.put_blob(upload(&data)).await.unwrap();
    let missing = alice.missing_blobs(pb::MissingBlobsRequest { ids: vec![id.clone()] }).await.unwrap().into_inner();
    assert!(missing.missing.is_empty());
    let mut stream = alice.get_blob(pb::GetBlobRequest { id: id.clone(), offset: 1000 }).await.unwrap().into_inner();
    let mut received = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        received.extend(chunk.data);
    }
    assert!(received == data[1000..]);
    let wrong_size =
        futures::stream::iter(vec![pb::PutBlobRequest { id: b"x".to_vec(), size: 5, data: b"abc".to_vec() }]);
    assert_eq!(alice.put_blob(wrong_size).await.unwrap_err().code(), Code::InvalidArgument);
}

#[test]
fn the_storage_survives_a_reopen() {
    use bitmask_sync_endpoint::{PushedDocument, SyncStorage};
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = SledStorage::open(dir.path()).unwrap();
        let pushed = PushedDocument {
            id: b"a".to_vec(),
            rev: b"1".to_vec(),
            parent_rev: vec![],
            sealed: b"s".to_vec(),
            deleted: false,
        };
        storage.push("alice", pushed).unwrap();
        storage.put_secrets("alice", b"sealed secrets", 0).unwrap();
    }
    let storage = SledStorage::open(dir.path()).unwrap();
    let (documents, generation) = storage.pull("alice", 0, 0).unwrap();
    assert_eq!((documents.len(), generation), (1, 1));
    assert_eq!(storage.secrets("alice").unwrap().unwrap().1, 1);
    // Users whose names share a prefix stay apart.
    assert_eq!(storage.pull("alic", 0, 0).unwrap().0.len(), 0);
}

/// A PutBlob that sent its first part and waits for the rest: the sender
/// holds it open, the task has its answer.
type HeldUpload = (
    tokio::sync::mpsc::Sender<pb::PutBlobRequest>,
    tokio::task::JoinHandle<Result<tonic::Response<pb::PutBlobResponse>, tonic::Status>>,
);

async fn hold_upload(endpoint: &Endpoint, token: &str, id: &str) -> HeldUpload {
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let first = pb::PutBlobRequest { id: id.as_bytes().to_vec(), size: 10, data: vec![1; 5] };
    sender.send(first).await.unwrap();
    let mut client = client(endpoint, token.to_owned()).await;
    let call =
        tokio::spawn(async move { client.put_blob(tokio_stream::wrappers::ReceiverStream::new(receiver)).await });
    (sender, call)
}

/// A whole small blob; the answer.
async fn upload(client: &mut Client, id: &str) -> Result<(), tonic::Status> {
    let whole = pb::PutBlobRequest { id: id.as_bytes().to_vec(), size: 3, data: b"abc".to_vec() };
    client.put_blob(futures::stream::iter(vec![whole])).await.map(drop)
}

/// Holds an upload of each (token, id) in `holds`, then uploads `id` with
/// `client` until the endpoint refuses it; the held uploads and the
/// refusal. A probe under way while a held one arrives may take its place:
/// then that one is held again. Panics if the probe is never refused.
async fn hold_and_probe(
    endpoint: &Endpoint,
    holds: &[(&str, &str)],
    client: &mut Client,
    id: &str,
) -> (Vec<HeldUpload>, tonic::Status) {
    let mut held = Vec::new();
    for (token, held_id) in holds {
        held.push(hold_upload(endpoint, token, held_id).await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        for (slot, (token, held_id)) in held.iter_mut().zip(holds) {
            if slot.1.is_finished() {
                *slot = hold_upload(endpoint, token, held_id).await;
            }
        }
        match upload(client, id).await {
            Err(status) if status.code() != Code::Unavailable => return (held, status),
            other if tokio::time::Instant::now() > deadline => panic!("{id} was never refused: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Issue 14: each PutBlob stream holds the provider (a blocking thread, a
/// partial file): an account has at most 4 under way, the next is refused
/// with RESOURCE_EXHAUSTED and a plain sentence, others are not hindered.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_blob_uploads_are_bounded_per_account() {
    let endpoint = endpoint().await;
    let token = endpoint.sessions.issue("alice", Duration::from_secs(60));
    let mut alice = client(&endpoint, token.clone()).await;
    let mut bob = client(&endpoint, endpoint.sessions.issue("bob", Duration::from_secs(60))).await;
    let holds = [(token.as_str(), "held-0"), (&token, "held-1"), (&token, "held-2"), (&token, "held-3")];
    let (mut held, refused) = hold_and_probe(&endpoint, &holds, &mut alice, "one-more").await;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("too many blob uploads at once for this account"), "{refused:?}");
    upload(&mut bob, "bobs").await.unwrap();

    // One finished: room for the next.
    let (sender, call) = held.pop().unwrap();
    sender.send(pb::PutBlobRequest { data: vec![2; 5], ..Default::default() }).await.unwrap();
    drop(sender);
    call.await.unwrap().unwrap();
    upload(&mut alice, "one-more").await.unwrap();
    // A cut-off one frees its place too.
    let (sender, call) = held.pop().unwrap();
    drop(sender);
    assert!(call.await.unwrap().is_err());
    upload(&mut alice, "another").await.unwrap();
}

/// All accounts together are bounded too.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_blob_uploads_are_bounded_in_all() {
    let endpoint = endpoint_with(|service| service.with_upload_limits(2, 3)).await;
    let issue = |user: &str| endpoint.sessions.issue(user, Duration::from_secs(60));
    let (alice, bob) = (issue("alice"), issue("bob"));
    let mut carol = client(&endpoint, issue("carol")).await;
    let holds = [(alice.as_str(), "a1"), (&alice, "a2"), (&bob, "b1")];
    let (_held, refused) = hold_and_probe(&endpoint, &holds, &mut carol, "c1").await;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("the provider takes too many blob uploads at once"), "{refused:?}");
}

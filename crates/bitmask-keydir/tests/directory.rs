#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

//! The key directory served in process on loopback: lookups, publication by
//! the account itself with its session token, refusals, WKD.

use std::sync::Arc;
use std::time::Duration;

use bitmask_keydir::{KeyDirectoryService, KeyStorage as _, SledKeyStorage, wkd_key, wkd_location};
use bitmask_keys::openpgp::{self, Algorithm};
use bitmask_proto::provider::v1 as pb;
use bitmask_proto::provider::v1::key_directory_client::KeyDirectoryClient;
use bitmask_proto::provider::v1::key_directory_server::KeyDirectoryServer;
use bitmask_sync_endpoint::Sessions;
use tonic::Code;
use tonic::transport::Channel;

struct Directory {
    client: KeyDirectoryClient<Channel>,
    storage: Arc<SledKeyStorage>,
    sessions: Arc<Sessions>,
    _dir: tempfile::TempDir,
}

async fn directory() -> Directory {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(SledKeyStorage::open(dir.path()).unwrap());
    let sessions = Arc::new(Sessions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let service = KeyDirectoryService::new(storage.clone(), sessions.clone());
    let server = tonic::transport::Server::builder().add_service(KeyDirectoryServer::new(service));
    tokio::spawn(server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)));
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await.unwrap();
    Directory { client: KeyDirectoryClient::new(channel), storage, sessions, _dir: dir }
}

fn public(cert: &openpgp::Certificate) -> String {
    String::from_utf8(openpgp::export_public(cert, true).unwrap()).unwrap()
}

fn publish_request(armored: &str, token: Option<&str>) -> tonic::Request<pb::PublishKeyRequest> {
    let mut request = tonic::Request::new(pb::PublishKeyRequest { armored_key: armored.to_owned() });
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

impl Directory {
    fn token(&self, user: &str) -> String {
        self.sessions.issue(user, Duration::from_secs(60))
    }

    async fn publish(&mut self, armored: &str, token: Option<&str>) -> Result<String, tonic::Status> {
        self.client.publish_key(publish_request(armored, token)).await.map(|reply| reply.into_inner().fingerprint)
    }

    async fn lookup(&mut self, address: &str) -> Result<pb::LookupKeyResponse, tonic::Status> {
        self.client.lookup_key(pb::LookupKeyRequest { address: address.into() }).await.map(|reply| reply.into_inner())
    }
}

#[tokio::test]
async fn lookups_of_unknown_addresses_and_non_addresses() {
    let mut directory = directory().await;
    assert_eq!(directory.lookup("nobody@example.org").await.unwrap_err().code(), Code::NotFound);
    for odd in ["", "nobody", "@example.org", "a b@example.org"] {
        assert_eq!(directory.lookup(odd).await.unwrap_err().code(), Code::InvalidArgument, "{odd:?}");
    }
}

#[tokio::test]
async fn the_account_publishes_its_key_and_anyone_looks_it_up() {
    let mut directory = directory().await;
    let cert = openpgp::generate("alice@example.org", Algorithm::Cv25519).unwrap();
    let token = directory.token("alice@example.org");
    let fingerprint = directory.publish(&public(&cert), Some(&token)).await.unwrap();
    assert_eq!(fingerprint, openpgp::fingerprint(&cert));
    assert_eq!(fingerprint, fingerprint.to_uppercase());

    // No login needed to look up, in any case of the address.
    let found = directory.lookup("Alice@Example.ORG").await.unwrap();
    assert_eq!(found.fingerprint, fingerprint);
    let parsed = openpgp::parse_certs(found.armored_key.as_bytes()).unwrap();
    assert_eq!(parsed.len(), 1);
    assert_eq!(openpgp::fingerprint(&parsed[0]), fingerprint);
    assert!(!openpgp::has_secret(&parsed[0]));
}

#[tokio::test]
async fn publishing_needs_a_valid_session() {
    let mut directory = directory().await;
    let cert = openpgp::generate("alice@example.org", Algorithm::Cv25519).unwrap();
    assert_eq!(directory.publish(&public(&cert), None).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(directory.publish(&public(&cert), Some("made-up")).await.unwrap_err().code(), Code::Unauthenticated);
    let expired = directory.sessions.issue("alice@example.org", Duration::ZERO);
    assert_eq!(directory.publish(&public(&cert), Some(&expired)).await.unwrap_err().code(), Code::Unauthenticated);
    // A token in the wrong scheme is no token.
    let token = directory.token("alice@example.org");
    let mut request = tonic::Request::new(pb::PublishKeyRequest { armored_key: public(&cert) });
    request.metadata_mut().insert("authorization", format!("Basic {token}").parse().unwrap());
    assert_eq!(directory.client.publish_key(request).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(directory.lookup("alice@example.org").await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn an_account_publishes_only_its_own_address() {
    let mut directory = directory().await;
    let bobs = openpgp::generate("bob@example.org", Algorithm::Cv25519).unwrap();
    let alice = directory.token("alice@example.org");
    let refused = directory.publish(&public(&bobs), Some(&alice)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(directory.lookup("bob@example.org").await.unwrap_err().code(), Code::NotFound);

    // Bob's own session may.
    let bob = directory.token("bob@example.org");
    directory.publish(&public(&bobs), Some(&bob)).await.unwrap();
    assert_eq!(directory.lookup("bob@example.org").await.unwrap().fingerprint, openpgp::fingerprint(&bobs));
    // And Alice still cannot replace it.
    let alices = openpgp::generate("alice@example.org", Algorithm::Cv25519).unwrap();
    directory.publish(&public(&alices), Some(&alice)).await.unwrap();
    assert_eq!(directory.lookup("bob@example.org").await.unwrap().fingerprint, openpgp::fingerprint(&bobs));
}

#[tokio::test]
async fn a_secret_key_is_refused_and_nothing_is_stored() {
    let mut directory = directory().await;
    let cert = openpgp::generate("alice@example.org", Algorithm::Cv25519).unwrap();
    let secret = String::from_utf8(openpgp::export_secret(&cert, true).unwrap().to_vec()).unwrap();
    let token = directory.token("alice@example.org");
    let refused = directory.publish(&secret, Some(&token)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("secret"), "{}", refused.message());
    assert_eq!(directory.lookup("alice@example.org").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(directory.storage.get("alice@example.org").unwrap(), None);
}

#[tokio::test]
async fn garbage_several_keys_and_revoked_keys_are_refused() {
    let mut directory = directory().await;
    let token = directory.token("alice@example.org");
    for garbage in
        ["", "not a key", "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n-----END PGP PUBLIC KEY BLOCK-----\n"]
    {
        let refused = directory.publish(garbage, Some(&token)).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{garbage:?}: {refused:?}");
    }
    let huge = "A".repeat(bitmask_keydir::MAX_KEY_BYTES + 1);
    assert_eq!(directory.publish(&huge, Some(&token)).await.unwrap_err().code(), Code::InvalidArgument);

    let (one, two) = (
        openpgp::generate("alice@example.org", Algorithm::Cv25519).unwrap(),
        openpgp::generate("alice@example.org", Algorithm::Cv25519).unwrap(),
    );
    let both = armored_keyring(&[&one, &two]);
    assert_eq!(openpgp::parse_certs(both.as_bytes()).unwrap().len(), 2);
    assert_eq!(directory.publish(&both, Some(&token)).await.unwrap_err().code(), Code::InvalidArgument);

    let revoked = revoke(one);
    let refused = directory.publish(&public(&revoked), Some(&token)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("revoked"), "{}", refused.message());
    assert_eq!(directory.lookup("alice@example.org").await.unwrap_err().code(), Code::NotFound);
}

/// Several certificates in one armor block.
fn armored_keyring(certs: &[&openpgp::Certificate]) -> String {
    use std::io::Write as _;
    let mut writer = sequoia_openpgp::armor::Writer::new(Vec::new(), sequoia_openpgp::armor::Kind::PublicKey).unwrap();
    for cert in certs {
        writer.write_all(&openpgp::export_public(cert, false).unwrap()).unwrap();
    }
    String::from_utf8(writer.finalize().unwrap()).unwrap()
}

fn revoke(cert: openpgp::Certificate) -> openpgp::Certificate {
    use sequoia_openpgp::types::ReasonForRevocation;
    let mut signer = cert.primary_key().key().clone().parts_into_secret().unwrap().into_keypair().unwrap();
    let revocation = cert.revoke(&mut signer, ReasonForRevocation::KeyCompromised, b"lost").unwrap();
    cert.insert_packets(revocation).unwrap().0
}

#[tokio::test]
async fn the_account_replaces_its_key_from_any_of_its_sessions() {
    let mut directory = directory().await;
    let (old, new) = (
        openpgp::generate("alice@example.org", Algorithm::Cv25519).unwrap(),
        openpgp::generate("alice@example.org", Algorithm::Cv25519).unwrap(),
    );
    let (laptop, phone) = (directory.token("alice@example.org"), directory.token("alice@example.org"));
    directory.publish(&public(&old), Some(&laptop)).await.unwrap();
    directory.publish(&public(&new), Some(&phone)).await.unwrap();
    assert_eq!(directory.lookup("alice@example.org").await.unwrap().fingerprint, openpgp::fingerprint(&new));

    // WKD finds the new one too.
    let (domain, hash) = wkd_location("alice@example.org").unwrap();
    let binary = wkd_key(directory.storage.as_ref(), &domain, &hash).unwrap().unwrap();
    assert_eq!(openpgp::fingerprint(&openpgp::parse_certs(&binary).unwrap()[0]), openpgp::fingerprint(&new));
}

#[tokio::test]
async fn wkd_serves_the_binary_key_with_only_the_published_address() {
    let mut directory = directory().await;
    let cert = openpgp::generate("Alice@Example.org", Algorithm::Cv25519).unwrap();
    // A second user id, for an address elsewhere: not the directory's to publish.
    let cert = add_userid(cert, "<alice@elsewhere.net>");
    assert_eq!(openpgp::addresses(&cert).len(), 2);
    let token = directory.token("alice@example.org");
    directory.publish(&public(&cert), Some(&token)).await.unwrap();

    let (domain, hash) = wkd_location("alice@example.org").unwrap();
    assert_eq!(domain, "example.org");
    let binary = wkd_key(directory.storage.as_ref(), &domain, &hash).unwrap().unwrap();
    assert!(!binary.starts_with(b"-----"), "binary, not armored");
    let served = openpgp::parse_certs(&binary).unwrap();
    assert_eq!(served.len(), 1);
    assert_eq!(openpgp::fingerprint(&served[0]), openpgp::fingerprint(&cert));
    assert_eq!(openpgp::addresses(&served[0]), ["alice@example.org"]);
    assert!(!openpgp::has_secret(&served[0]));
    assert!(openpgp::usable(&served[0]).is_ok());

    assert_eq!(wkd_key(directory.storage.as_ref(), "example.net", &hash).unwrap(), None);
    let (_, other) = wkd_location("bob@example.org").unwrap();
    assert_eq!(wkd_key(directory.storage.as_ref(), &domain, &other).unwrap(), None);
}

fn add_userid(cert: openpgp::Certificate, userid: &str) -> openpgp::Certificate {
    use sequoia_openpgp::packet::UserID;
    use sequoia_openpgp::packet::signature::SignatureBuilder;
    use sequoia_openpgp::types::SignatureType;
    let mut signer = cert.primary_key().key().clone().parts_into_secret().unwrap().into_keypair().unwrap();
    let userid = UserID::from(userid);
    let binding = userid.bind(&mut signer, &cert, SignatureBuilder::new(SignatureType::PositiveCertification)).unwrap();
    cert.insert_packets(vec![sequoia_openpgp::Packet::from(userid), binding.into()]).unwrap().0
}

#[tokio::test]
async fn the_published_copy_is_public_only_even_from_a_direct_publish() {
    let dir = tempfile::tempdir().unwrap();
    let storage = SledKeyStorage::open(dir.path()).unwrap();
    let cert = openpgp::generate("carol@example.org", Algorithm::Cv25519).unwrap();
    let secret = openpgp::export_secret(&cert, true).unwrap();
    assert!(matches!(
        bitmask_keydir::publish(&storage, "carol@example.org", &secret),
        Err(bitmask_keydir::PublishError::SecretKey)
    ));
    let key = bitmask_keydir::publish(&storage, "carol@example.org", public(&cert).as_bytes()).unwrap();
    assert!(!key.armored.contains("PRIVATE"));
    assert_eq!(storage.get("carol@example.org").unwrap().unwrap(), key);
    assert!(!format!("{key:?}").contains("BEGIN"), "Debug shows no key");
}

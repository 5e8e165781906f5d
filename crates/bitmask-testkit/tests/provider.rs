#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

//! `TestProvider` serves the key directory beside the sync endpoint, on one
//! TLS server with one session table.

use std::sync::Arc;

use bitmask_keys::openpgp::{self, Algorithm};
use bitmask_proto::provider::v1 as pb;
use bitmask_proto::provider::v1::key_directory_client::KeyDirectoryClient;
use bitmask_testkit::TestProvider;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

fn armored(address: &str) -> (String, String) {
    let cert = openpgp::generate(address, Algorithm::Cv25519).unwrap();
    (String::from_utf8(openpgp::export_public(&cert, true).unwrap()).unwrap(), openpgp::fingerprint(&cert))
}

#[tokio::test]
async fn the_key_directory_shares_the_sync_endpoints_server_and_sessions() {
    let storage_dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(bitmask_sync_endpoint::SledStorage::open(storage_dir.path()).unwrap());
    let provider = TestProvider::start(storage).await;
    assert_eq!(provider.configure_request().user, TestProvider::USER);

    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&provider.ca_pem)).domain_name("localhost");
    let channel = Channel::from_shared(provider.url.clone()).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    let mut directory = KeyDirectoryClient::new(channel);

    // Pre-published for another user.
    let (bobs, bobs_fingerprint) = armored("bob@example.org");
    assert_eq!(provider.publish("bob@example.org", &bobs), bobs_fingerprint);
    let found = directory.lookup_key(pb::LookupKeyRequest { address: "bob@example.org".into() }).await.unwrap();
    assert_eq!(found.into_inner().fingerprint, bobs_fingerprint);

    // Published by the test user with the provider's token.
    let (alices, alices_fingerprint) = armored(TestProvider::USER);
    let mut request = tonic::Request::new(pb::PublishKeyRequest { armored_key: alices });
    request.metadata_mut().insert("authorization", format!("Bearer {}", provider.token).parse().unwrap());
    assert_eq!(directory.publish_key(request).await.unwrap().into_inner().fingerprint, alices_fingerprint);
    use bitmask_keydir::KeyStorage as _;
    assert_eq!(provider.keys.get(TestProvider::USER).unwrap().unwrap().fingerprint, alices_fingerprint);
}

//! Key discovery against real servers: Web Key Directory served by Python's
//! HTTPS server (advanced method, then direct), the provider's key
//! directory over TLS (lookup and publishing), keys learnt from mail
//! (Autocrypt, attachments, an `OpenPGP:` header URL), and refresh.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::path::Path;
use std::time::{Duration, SystemTime};

use bitmask_keys::openpgp::{self, Algorithm, Certificate};
use bitmask_proto::keys::v1 as pb;
use bitmask_proto::keys::v1::keys_client::KeysClient;
use bitmask_proto::store::v1 as store_pb;
use bitmask_proto::store::v1::store_client::StoreClient;
use bitmask_testkit::https::{StaticHttps, TestCertificates};
use bitmask_testkit::{KillOnDrop, World, free_port};
use tonic::transport::Channel;

const ACCOUNT: &str = "alice@example.org";

struct Setup {
    _world: World,
    _processes: Vec<KillOnDrop>,
    store: StoreClient<Channel>,
    keys: KeysClient<Channel>,
    _https: StaticHttps,
    root: std::path::PathBuf,
}

/// A store and a key service for Alice, with WKD hosts pointed at a local
/// HTTPS server: `example.org` by both methods, `direct.example` by the
/// direct one only (its `openpgpkey.` host refuses connections).
async fn setup() -> Setup {
    let mut world = World::new();
    let root = world.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    let names = ["openpgpkey.example.org", "example.org", "openpgpkey.direct.example", "direct.example"];
    let certificates = TestCertificates::new(&names);
    let https = StaticHttps::serve(&root, &certificates);
    let ca_file = world.path().join("ca.pem");
    std::fs::write(&ca_file, &certificates.ca_pem).unwrap();
    let closed = free_port();
    let port = https.port;
    world.env.push((
        "BITMASK_KEYS_RESOLVE".into(),
        format!(
            "openpgpkey.example.org=127.0.0.1:{port},example.org=127.0.0.1:{port},\
             openpgpkey.direct.example=127.0.0.1:{closed},direct.example=127.0.0.1:{port}"
        ),
    ));
    world.env.push(("BITMASK_KEYS_CA_FILE".into(), ca_file.to_str().unwrap().into()));

    let mut store_process = world.spawn_service("bitmask-store", ACCOUNT);
    let store_socket = world.socket(ACCOUNT, "store");
    world.wait_for_socket(&store_socket, &mut store_process);
    let mut store = StoreClient::new(bitmask_runtime::client::connect_unix(&store_socket).await.unwrap());
    store.initialize(store_pb::InitializeRequest { passphrase: "pass".into(), from_provider: false }).await.unwrap();
    let mut keys_process = world.spawn_service("bitmask-keys", ACCOUNT);
    let keys_socket = world.socket(ACCOUNT, "keys");
    world.wait_for_socket(&keys_socket, &mut keys_process);
    let keys = KeysClient::new(bitmask_runtime::client::connect_unix(&keys_socket).await.unwrap());
    Setup { _world: world, _processes: vec![store_process, keys_process], store, keys, _https: https, root }
}

/// Puts `cert`'s public key where WKD finds `address` (advanced or direct).
fn publish_wkd(root: &Path, address: &str, cert: &Certificate, advanced: bool) -> String {
    let urls = bitmask_keys::wkd::urls(address).unwrap();
    let url = if advanced { urls.advanced } else { urls.direct };
    let path = url.split_once("://").unwrap().1.split_once('/').unwrap().1.split('?').next().unwrap();
    let file = root.join(path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, openpgp::export_public(cert, false).unwrap()).unwrap();
    url
}

async fn fetch(keys: &mut KeysClient<Channel>, address: &str) -> pb::FetchKeyResponse {
    keys.fetch_key(pb::FetchKeyRequest { address: address.into() }).await.unwrap().into_inner()
}

async fn active(keys: &mut KeysClient<Channel>, address: &str) -> Option<pb::Key> {
    let selector = Some(pb::get_key_request::Selector::Address(address.into()));
    keys.get_key(pb::GetKeyRequest { selector, fetch: false }).await.ok().map(|key| key.into_inner())
}

fn key(address: &str) -> Certificate {
    openpgp::generate(address, Algorithm::Cv25519).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn web_key_directory_advanced_then_direct() {
    let mut setup = setup().await;
    let (keys, root) = (&mut setup.keys, setup.root.clone());

    // Advanced method.
    let carol = key("carol@example.org");
    let url = publish_wkd(&root, "carol@example.org", &carol, true);
    let found = fetch(keys, "carol@example.org").await;
    let got = found.key.unwrap();
    assert_eq!(got.fingerprint, openpgp::fingerprint(&carol));
    assert_eq!(got.source(), pb::KeySource::Wkd);
    assert_eq!(got.validation(), pb::ValidationLevel::WeakChain);
    assert_eq!(got.source_detail, url);
    assert!(got.active && !got.has_secret);
    assert!(found.tried.iter().any(|tried| tried.contains("no provider configured")), "{:?}", found.tried);

    // Direct method, when the advanced host does not answer.
    let dave = key("dave@direct.example");
    let url = publish_wkd(&root, "dave@direct.example", &dave, false);
    let found = fetch(keys, "dave@direct.example").await;
    assert_eq!(found.key.as_ref().unwrap().fingerprint, openpgp::fingerprint(&dave), "{:?}", found.tried);
    assert_eq!(found.key.unwrap().source_detail, url);
    assert!(found.tried.iter().any(|tried| tried.contains("openpgpkey.direct.example")), "{:?}", found.tried);

    // A 404 by the advanced method is final; nothing is made up.
    let found = fetch(keys, "erin@example.org").await;
    assert!(found.key.is_none());
    assert!(found.tried.iter().any(|tried| tried.contains("not found")), "{:?}", found.tried);

    // A key served for an address it has no user id for is refused.
    let mallory = key("mallory@example.org");
    publish_wkd(&root, "frank@example.org", &mallory, true);
    let found = fetch(keys, "frank@example.org").await;
    assert!(found.key.is_none());
    let result = found.result.unwrap();
    assert!(!result.imported && result.reason.contains("no user id for frank@example.org"), "{result:?}");

    // Garbage where a key should be: refused with a reason, nothing imported.
    let urls = bitmask_keys::wkd::urls("gary@example.org").unwrap();
    let path = urls.advanced.split_once("://").unwrap().1.split_once('/').unwrap().1.split('?').next().unwrap();
    std::fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
    std::fs::write(root.join(path), b"<html>not a key</html>").unwrap();
    let found = fetch(keys, "gary@example.org").await;
    assert!(found.key.is_none() && !found.result.unwrap().imported);

    // Encrypting to someone without a local key fetches theirs when asked to.
    let grace = key("grace@example.org");
    publish_wkd(&root, "grace@example.org", &grace, true);
    let options = pb::EncryptOptions {
        recipients: vec!["grace@example.org".into()],
        sign: false,
        armor: true,
        fetch_missing: true,
    };
    let messages = vec![
        pb::EncryptRequest { item: Some(pb::encrypt_request::Item::Options(options)) },
        pb::EncryptRequest { item: Some(pb::encrypt_request::Item::Data(b"hello grace".to_vec())) },
    ];
    let mut stream = keys.encrypt(futures::stream::iter(messages)).await.unwrap().into_inner();
    let mut ciphertext = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        ciphertext.extend(message.data);
    }
    let read = openpgp::decrypt(&ciphertext, std::slice::from_ref(&grace), &[]).unwrap();
    assert_eq!(&*read.plaintext, b"hello grace");

    // GetKey with fetch finds a key it did not have.
    let heidi = key("heidi@example.org");
    publish_wkd(&root, "heidi@example.org", &heidi, true);
    let selector = Some(pb::get_key_request::Selector::Address("heidi@example.org".into()));
    let got = keys.get_key(pb::GetKeyRequest { selector, fetch: true }).await.unwrap().into_inner();
    assert_eq!(got.fingerprint, openpgp::fingerprint(&heidi));

    // Refresh: Carol extended her key on her server; we pick it up.
    let before = active(keys, "carol@example.org").await.unwrap().expires.unwrap().seconds;
    let carol_later = openpgp::extend(&carol, openpgp::VALIDITY + Duration::from_secs(90 * 86_400)).unwrap();
    publish_wkd(&root, "carol@example.org", &carol_later, true);
    let refreshed = keys.refresh(pb::RefreshRequest {}).await.unwrap().into_inner();
    assert!(refreshed.refreshed >= 1, "{refreshed:?}");
    let after = active(keys, "carol@example.org").await.unwrap();
    assert_eq!(after.fingerprint, openpgp::fingerprint(&carol));
    assert!(after.expires.unwrap().seconds > before + 80 * 86_400);
    assert!(after.refreshed.is_some());
}

fn message_from(sender: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Someone <{sender}>\r\nTo: {ACCOUNT}\r\nSubject: hi\r\nMessage-ID: <1@x>\r\n{extra_headers}\
         MIME-Version: 1.0\r\n{body}"
    )
    .into_bytes()
}

async fn learn(keys: &mut KeysClient<Channel>, message: Vec<u8>) -> Vec<pb::ImportResult> {
    let request = pb::LearnFromMessageRequest { message, verified_sender: String::new() };
    keys.learn_from_message(request).await.unwrap().into_inner().results
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_learnt_from_mail() {
    let mut setup = setup().await;
    let (keys, root) = (&mut setup.keys, setup.root.clone());

    // Autocrypt.
    let ivan = key("ivan@example.org");
    let header =
        bitmask_keys::learn::autocrypt_header("ivan@example.org", &openpgp::export_public(&ivan, false).unwrap(), true);
    let message =
        message_from("ivan@example.org", &format!("Autocrypt: {header}\r\n"), "Content-Type: text/plain\r\n\r\nhi\r\n");
    let results = learn(keys, message).await;
    assert!(results.len() == 1 && results[0].imported, "{results:?}");
    let got = active(keys, "ivan@example.org").await.unwrap();
    assert_eq!(got.source(), pb::KeySource::Autocrypt);
    assert_eq!(got.fingerprint, openpgp::fingerprint(&ivan));

    // An Autocrypt header for someone else than the sender teaches nothing.
    let other = key("judy@example.org");
    let header = bitmask_keys::learn::autocrypt_header(
        "judy@example.org",
        &openpgp::export_public(&other, false).unwrap(),
        false,
    );
    let message = message_from(
        "mallory@example.org",
        &format!("Autocrypt: {header}\r\n"),
        "Content-Type: text/plain\r\n\r\nhi\r\n",
    );
    assert!(learn(keys, message).await.is_empty());
    assert!(active(keys, "judy@example.org").await.is_none());

    // An attached application/pgp-keys.
    let kate = key("kate@example.org");
    let armored = String::from_utf8(openpgp::export_public(&kate, true).unwrap()).unwrap();
    let body = format!(
        "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nmy key\r\n\
         --b\r\nContent-Type: application/pgp-keys; name=\"key.asc\"\r\n\
         Content-Disposition: attachment; filename=\"key.asc\"\r\n\r\n{armored}\r\n--b--\r\n"
    );
    let results = learn(keys, message_from("kate@example.org", "", &body)).await;
    assert!(results.iter().any(|result| result.imported), "{results:?}");
    assert_eq!(active(keys, "kate@example.org").await.unwrap().source(), pb::KeySource::Attachment);

    // An OpenPGP: header pointing at https on the sender's own domain.
    let leo = key("leo@example.org");
    std::fs::create_dir_all(root.join("keys")).unwrap();
    std::fs::write(root.join("keys/leo.asc"), openpgp::export_public(&leo, true).unwrap()).unwrap();
    let header =
        bitmask_keys::learn::openpgp_header(&openpgp::fingerprint(&leo), Some("https://example.org/keys/leo.asc"));
    let message =
        message_from("leo@example.org", &format!("OpenPGP: {header}\r\n"), "Content-Type: text/plain\r\n\r\nhi\r\n");
    let results = learn(keys, message).await;
    assert!(results.iter().any(|result| result.imported), "{results:?}");
    let got = active(keys, "leo@example.org").await.unwrap();
    assert_eq!(got.source(), pb::KeySource::OpenpgpHeader);
    assert_eq!(got.source_detail, "https://example.org/keys/leo.asc");

    // A message with nothing to learn, and one that is not mail at all.
    assert!(learn(keys, message_from("max@example.org", "", "\r\nhi\r\n")).await.is_empty());
    assert!(learn(keys, b"\x00\xff garbage".to_vec()).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_key_close_to_expiry_is_extended() {
    use sequoia_openpgp::cert::prelude::*;
    let mut setup = setup().await;
    let keys = &mut setup.keys;
    let (soon, _) = CertBuilder::general_purpose(Some(format!("<{ACCOUNT}>")))
        .set_validity_period(Duration::from_secs(10 * 86_400))
        .generate()
        .unwrap();
    let request = pb::ImportKeyRequest {
        data: openpgp::export_secret(&soon, false).unwrap().to_vec(),
        source: pb::KeySource::Imported.into(),
        validation: pb::ValidationLevel::Fingerprint.into(),
        address: String::new(),
    };
    assert!(keys.import_key(request).await.unwrap().into_inner().results[0].imported);
    let account = keys.ensure_account_key(pb::EnsureAccountKeyRequest::default()).await.unwrap().into_inner();
    assert_eq!(account.fingerprint, openpgp::fingerprint(&soon), "the imported key is the account key");
    let ten_days = account.expires.unwrap().seconds;

    keys.refresh(pb::RefreshRequest {}).await.unwrap();
    let extended = active(keys, ACCOUNT).await.unwrap();
    assert_eq!(extended.fingerprint, account.fingerprint);
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!(extended.expires.unwrap().seconds > now + 2 * 365 * 86_400, "extended from {ten_days}");

    // A second refresh leaves a fresh key alone.
    let again = keys.refresh(pb::RefreshRequest {}).await.unwrap().into_inner();
    assert_eq!(again.refreshed, 0, "{again:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_provider_directory_is_asked_first_and_gets_the_account_key() {
    use bitmask_keydir::KeyStorage as _;
    use bitmask_testkit::TestProvider;
    let mut setup = setup().await;
    let sync_dir = tempfile::tempdir().unwrap();
    let storage = std::sync::Arc::new(bitmask_sync_endpoint::SledStorage::open(sync_dir.path()).unwrap());
    let provider = TestProvider::start(storage).await;
    setup.store.configure_sync(provider.configure_request()).await.unwrap();
    let keys = &mut setup.keys;

    // Bob's key is in the provider's directory and, another one, in WKD: the directory wins.
    let bob = key("bob@example.org");
    provider.publish("bob@example.org", std::str::from_utf8(&openpgp::export_public(&bob, true).unwrap()).unwrap());
    publish_wkd(&setup.root, "bob@example.org", &key("bob@example.org"), true);
    let found = fetch(keys, "bob@example.org").await;
    let got = found.key.unwrap();
    assert_eq!(got.fingerprint, openpgp::fingerprint(&bob), "{:?}", found.tried);
    assert_eq!(got.source(), pb::KeySource::ProviderDirectory);
    assert_eq!(got.validation(), pb::ValidationLevel::ProviderTrust);
    assert_eq!(found.tried, ["provider directory: found"]);

    // Not in the directory: WKD next.
    let carol = key("carol@example.org");
    publish_wkd(&setup.root, "carol@example.org", &carol, true);
    let found = fetch(keys, "carol@example.org").await;
    assert_eq!(found.key.unwrap().source(), pb::KeySource::Wkd);
    assert_eq!(found.tried[0], "provider directory: not found");

    // The account key is published to the directory once the provider is known.
    let account = keys.ensure_account_key(pb::EnsureAccountKeyRequest::default()).await.unwrap().into_inner();
    bitmask_testkit::wait_until(Duration::from_secs(10), "the account key is published", || {
        provider.keys.get(ACCOUNT).unwrap().is_some_and(|published| published.fingerprint == account.fingerprint)
    });
    let published = provider.keys.get(ACCOUNT).unwrap().unwrap();
    assert!(published.armored.contains("BEGIN PGP PUBLIC KEY BLOCK"));
    assert!(!published.armored.contains("PRIVATE"));
}

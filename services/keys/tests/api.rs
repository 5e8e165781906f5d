//! The key service's gRPC API against the real `bitmask-keys` and
//! `bitmask-store` binaries: the account key, imports by the replacement
//! rules, encrypt/decrypt/sign/verify, exports, and bad input.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use bitmask_keys::openpgp::{self, Algorithm, SignatureStatus};
use bitmask_proto::keys::v1 as pb;
use bitmask_proto::keys::v1::keys_client::KeysClient;
use bitmask_proto::store::v1 as store_pb;
use bitmask_proto::store::v1::store_client::StoreClient;
use bitmask_testkit::{KillOnDrop, World, all_bytes, contains};
use tonic::Code;
use tonic::transport::Channel;

const ACCOUNT: &str = "alice@example.org";

async fn keys_process(world: &World) -> (KillOnDrop, KeysClient<Channel>) {
    let mut process = world.spawn_service("bitmask-keys", ACCOUNT);
    let socket = world.socket(ACCOUNT, "keys");
    world.wait_for_socket(&socket, &mut process);
    let client = KeysClient::new(bitmask_runtime::client::connect_unix(&socket).await.unwrap());
    (process, client)
}

async fn encrypt(client: &mut KeysClient<Channel>, recipients: &[&str], data: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    let options = pb::EncryptOptions {
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        sign: true,
        armor: true,
        fetch_missing: false,
    };
    let mut messages = vec![pb::EncryptRequest { item: Some(pb::encrypt_request::Item::Options(options)) }];
    messages.extend(
        data.chunks(100_000)
            .map(|chunk| pb::EncryptRequest { item: Some(pb::encrypt_request::Item::Data(chunk.to_vec())) }),
    );
    let mut stream = client.encrypt(futures::stream::iter(messages)).await?.into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.message().await? {
        out.extend(message.data);
    }
    Ok(out)
}

async fn decrypt(
    client: &mut KeysClient<Channel>,
    data: &[u8],
) -> Result<(Vec<u8>, pb::SignatureOutcome), tonic::Status> {
    let mut messages = vec![pb::DecryptRequest {
        item: Some(pb::decrypt_request::Item::Options(pb::DecryptOptions { verify: true })),
    }];
    messages.extend(
        data.chunks(1 << 20)
            .map(|chunk| pb::DecryptRequest { item: Some(pb::decrypt_request::Item::Data(chunk.to_vec())) }),
    );
    let mut stream = client.decrypt(futures::stream::iter(messages)).await?.into_inner();
    let (mut out, mut signature) = (Vec::new(), None);
    while let Some(message) = stream.message().await? {
        out.extend(message.data);
        signature = message.signature.or(signature);
    }
    Ok((out, signature.unwrap()))
}

fn import(data: Vec<u8>, source: pb::KeySource) -> pb::ImportKeyRequest {
    pb::ImportKeyRequest { data, source: source.into(), validation: 0, address: String::new() }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_account_key_imports_and_crypto_over_grpc() {
    let world = World::new();
    let mut store_process = world.spawn_service("bitmask-store", ACCOUNT);
    let store_socket = world.socket(ACCOUNT, "store");
    world.wait_for_socket(&store_socket, &mut store_process);
    let mut store = StoreClient::new(bitmask_runtime::client::connect_unix(&store_socket).await.unwrap());
    store.initialize(store_pb::InitializeRequest { passphrase: "pass".into(), from_provider: false }).await.unwrap();

    let (process, mut keys) = keys_process(&world).await;
    let account = keys.ensure_account_key(pb::EnsureAccountKeyRequest::default()).await.unwrap().into_inner();
    assert!(account.has_secret && account.active);
    assert_eq!(account.addresses, [ACCOUNT]);
    assert_eq!(account.validation(), pb::ValidationLevel::Fingerprint);
    assert_eq!(account.source(), pb::KeySource::Generated);
    let again = keys.ensure_account_key(pb::EnsureAccountKeyRequest::default()).await.unwrap().into_inner();
    assert_eq!(again.fingerprint, account.fingerprint, "generated once");

    // Kept in the store: a restarted key service knows it.
    drop(process);
    let (_process, mut keys) = keys_process(&world).await;
    let listed = keys.list_keys(pb::ListKeysRequest::default()).await.unwrap().into_inner().keys;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].fingerprint, account.fingerprint);

    // Bob's key from the provider's directory; a weaker one from WKD is refused.
    let bob = openpgp::generate("bob@example.org", Algorithm::Cv25519).unwrap();
    let bob_public = openpgp::export_public(&bob, true).unwrap();
    let imported = keys.import_key(import(bob_public, pb::KeySource::ProviderDirectory)).await.unwrap().into_inner();
    assert!(imported.results[0].imported, "{:?}", imported.results);
    let other_bob = openpgp::generate("bob@example.org", Algorithm::Cv25519).unwrap();
    let refused = keys
        .import_key(import(openpgp::export_public(&other_bob, true).unwrap(), pb::KeySource::Wkd))
        .await
        .unwrap()
        .into_inner();
    assert!(!refused.results[0].imported);
    assert!(refused.results[0].reason.contains("cannot replace the active key"), "{}", refused.results[0].reason);
    let active = keys
        .get_key(pb::GetKeyRequest {
            selector: Some(pb::get_key_request::Selector::Address("bob@example.org".into())),
            fetch: false,
        })
        .await
        .unwrap();
    assert_eq!(active.into_inner().fingerprint, openpgp::fingerprint(&bob));

    // Alice writes to Bob: Bob reads it and sees Alice's signature.
    let text = b"the meeting moved to Thursday";
    let ciphertext = encrypt(&mut keys, &["bob@example.org"], text).await.unwrap();
    let alice_public = keys
        .export_key(pb::ExportKeyRequest {
            selector: Some(pb::export_key_request::Selector::Address(ACCOUNT.into())),
            include_secret: false,
            armor: true,
        })
        .await
        .unwrap()
        .into_inner()
        .data;
    assert!(String::from_utf8_lossy(&alice_public).contains("PUBLIC KEY BLOCK"));
    let alice_cert = openpgp::parse_certs(&alice_public).unwrap();
    let read = openpgp::decrypt(&ciphertext, std::slice::from_ref(&bob), &alice_cert).unwrap();
    assert_eq!(&*read.plaintext, text);
    assert_eq!(read.signature, SignatureStatus::Valid { fingerprint: account.fingerprint.clone() });
    let used = keys
        .get_key(pb::GetKeyRequest {
            selector: Some(pb::get_key_request::Selector::Address("bob@example.org".into())),
            fetch: false,
        })
        .await
        .unwrap();
    assert!(used.into_inner().used, "a key encrypted to is marked used");

    // Bob writes to Alice.
    let reply = openpgp::encrypt(b"fine by me", &alice_cert, Some(&bob), false).unwrap();
    let (plaintext, signature) = decrypt(&mut keys, &reply).await.unwrap();
    assert_eq!(plaintext, b"fine by me");
    assert_eq!(signature.status(), pb::SignatureStatus::Valid);
    assert_eq!(signature.fingerprint, openpgp::fingerprint(&bob));
    assert_eq!(signature.signer_addresses, ["bob@example.org"]);

    // Detached signature, verified by the service itself.
    let sign = vec![
        pb::SignRequest {
            item: Some(pb::sign_request::Item::Options(pb::SignOptions { detached: true, armor: true, text: false })),
        },
        pb::SignRequest { item: Some(pb::sign_request::Item::Data(text.to_vec())) },
    ];
    let mut signed = keys.sign(futures::stream::iter(sign)).await.unwrap().into_inner();
    let signature = signed.message().await.unwrap().unwrap().data;
    let verify = vec![
        pb::VerifyRequest {
            item: Some(pb::verify_request::Item::Options(pb::VerifyOptions { detached_signature: signature })),
        },
        pb::VerifyRequest { item: Some(pb::verify_request::Item::Data(text.to_vec())) },
    ];
    let verified = keys.verify(futures::stream::iter(verify)).await.unwrap().into_inner();
    assert_eq!(verified.signature.unwrap().status(), pb::SignatureStatus::Valid);

    // The secret key leaves only on explicit request, and never sits in the store in clear.
    let secret = keys
        .export_key(pb::ExportKeyRequest {
            selector: Some(pb::export_key_request::Selector::Fingerprint(account.fingerprint.clone())),
            include_secret: true,
            armor: false,
        })
        .await
        .unwrap()
        .into_inner()
        .data;
    let secret_cert = openpgp::parse_certs(&secret).unwrap();
    assert!(openpgp::has_secret(&secret_cert[0]));
    let store_files = all_bytes(&world.home);
    assert!(
        !contains(&store_files, &secret[secret.len() / 2..secret.len() / 2 + 32]),
        "secret key bytes in the store files"
    );

    // Bad input: clear statuses, and the service goes on.
    let garbage = keys.import_key(import(b"not a key".to_vec(), pb::KeySource::Imported)).await.unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument);
    let to_someone_else = openpgp::encrypt(b"x", std::slice::from_ref(&other_bob), None, false).unwrap();
    assert_eq!(decrypt(&mut keys, &to_someone_else).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(decrypt(&mut keys, b"truncated junk").await.unwrap_err().code(), Code::InvalidArgument);
    let unknown = encrypt(&mut keys, &["nobody@example.org"], b"x").await.unwrap_err();
    assert_eq!(unknown.code(), Code::FailedPrecondition);
    let own = keys.delete_key(pb::DeleteKeyRequest { fingerprint: account.fingerprint.clone() }).await.unwrap_err();
    assert_eq!(own.code(), Code::FailedPrecondition);
    keys.delete_key(pb::DeleteKeyRequest { fingerprint: openpgp::fingerprint(&bob) }).await.unwrap();
    assert_eq!(keys.list_keys(pb::ListKeysRequest::default()).await.unwrap().into_inner().keys.len(), 1);
}

/// The peak resident memory of a process, in bytes.
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn a_25_mb_message_streams_through_and_no_secret_reaches_the_logs() {
    let world = World::new();
    let mut store_process = world.spawn_service("bitmask-store", ACCOUNT);
    let store_socket = world.socket(ACCOUNT, "store");
    world.wait_for_socket(&store_socket, &mut store_process);
    let mut store = StoreClient::new(bitmask_runtime::client::connect_unix(&store_socket).await.unwrap());
    store.initialize(store_pb::InitializeRequest { passphrase: "pass".into(), from_provider: false }).await.unwrap();
    let (process, mut keys) = keys_process(&world).await;
    let account = keys.ensure_account_key(pb::EnsureAccountKeyRequest::default()).await.unwrap().into_inner();
    let baseline = peak_memory(process.pid());

    // 25 MB that does not compress, to ourselves, signed; and back.
    let mut data = vec![0u8; 25 * 1024 * 1024];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for byte in data.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    let ciphertext = encrypt(&mut keys, &[ACCOUNT], &data).await.unwrap();
    assert!(ciphertext.len() > data.len());
    let (plaintext, signature) = decrypt(&mut keys, &ciphertext).await.unwrap();
    assert!(plaintext == data, "the 25 MB message came back changed");
    assert_eq!(signature.status(), pb::SignatureStatus::Valid);
    assert_eq!(signature.fingerprint, account.fingerprint);
    // Buffered whole, the service would hold the input, the output and the
    // reply chunks at once (over 90 MB for the armored 34 MB). Streamed, it
    // holds a few chunks, sequoia's partial-body buffers (4 MiB per packet
    // layer, whatever the message size) and 1 MiB held back on decryption:
    // about 30 MB measured.
    let grown = peak_memory(process.pid()).saturating_sub(baseline);
    assert!(grown < 60 << 20, "the key service grew by {} MB for a 25 MB message", grown >> 20);

    // A truncated ciphertext is an error at the end of the stream, not a success.
    let truncated = &ciphertext[..ciphertext.len() / 2];
    assert!(decrypt(&mut keys, truncated).await.is_err());

    // The secret key was exported once: none of it reaches a log.
    let secret = keys
        .export_key(pb::ExportKeyRequest {
            selector: Some(pb::export_key_request::Selector::Fingerprint(account.fingerprint.clone())),
            include_secret: true,
            armor: true,
        })
        .await
        .unwrap()
        .into_inner()
        .data;
    let secret = String::from_utf8(secret).unwrap();
    drop(process);
    let logs = [
        std::fs::read(world.path().join("bitmask-keys.log")).unwrap(),
        std::fs::read(world.path().join("bitmask-store.log")).unwrap(),
    ]
    .concat();
    assert!(contains(&logs, account.fingerprint.as_bytes()), "the log is the key service's");
    assert!(!contains(&logs, b"PRIVATE KEY"));
    for line in secret.lines().filter(|line| line.len() >= 32 && !line.starts_with("-----") && !line.contains(':')) {
        assert!(!contains(&logs, line.as_bytes()), "a line of the secret key is in a log");
    }
}

/// A key that another device of the account made or imported reaches this
/// device's key service by sync while it runs: mail encrypted to it opens
/// here without a restart (it was taken for mail "encrypted to someone
/// else" and filed as undecryptable until the key service restarted).
#[tokio::test(flavor = "multi_thread")]
async fn a_secret_key_synced_in_from_another_device_decrypts_at_once() {
    use bitmask_testkit::TestProvider;
    let dir = tempfile::tempdir().unwrap();
    let storage = std::sync::Arc::new(bitmask_sync_endpoint::SledStorage::open(dir.path()).unwrap());
    let provider = TestProvider::start(storage).await;
    let device = async |first: bool| {
        let world = World::new();
        let mut store_process = world.spawn_service("bitmask-store", ACCOUNT);
        let socket = world.socket(ACCOUNT, "store");
        world.wait_for_socket(&socket, &mut store_process);
        let mut store = StoreClient::new(bitmask_runtime::client::connect_unix(&socket).await.unwrap());
        store.configure_sync(provider.configure_request()).await.unwrap();
        let initialize = store_pb::InitializeRequest { passphrase: "pass".into(), from_provider: !first };
        store.initialize(initialize).await.unwrap();
        let (keys_process, keys) = keys_process(&world).await;
        (world, store_process, keys_process, store, keys)
    };
    let sync = async |store: &mut StoreClient<Channel>| {
        let mut progress = store.sync(store_pb::SyncRequest { if_idle: false }).await.unwrap().into_inner();
        while progress.message().await.unwrap().is_some() {}
    };
    let (_world_one, _store_one, _keys_one, mut store_one, mut keys_one) = device(true).await;
    keys_one.ensure_account_key(pb::EnsureAccountKeyRequest::default()).await.unwrap();
    sync(&mut store_one).await;
    let (_world_two, _store_two, _keys_two, mut store_two, mut keys_two) = device(false).await;
    sync(&mut store_two).await;
    // The second device's key service has read its keys.
    assert_eq!(keys_two.list_keys(pb::ListKeysRequest::default()).await.unwrap().into_inner().keys.len(), 1);

    // The first device imports another secret key of the account; it syncs over.
    let other = openpgp::generate(ACCOUNT, Algorithm::Cv25519).unwrap();
    let secret = openpgp::to_storage(&other).unwrap().to_vec();
    let imported = keys_one.import_key(import(secret, pb::KeySource::Generated)).await.unwrap().into_inner();
    assert!(imported.results[0].imported, "{:?}", imported.results);
    sync(&mut store_one).await;
    sync(&mut store_two).await;

    let ciphertext = {
        let recipient = openpgp::export_public(&other, true).unwrap();
        let world = World::new();
        let mut store_process = world.spawn_service("bitmask-store", "carol@example.org");
        let socket = world.socket("carol@example.org", "store");
        world.wait_for_socket(&socket, &mut store_process);
        let mut store = StoreClient::new(bitmask_runtime::client::connect_unix(&socket).await.unwrap());
        store
            .initialize(store_pb::InitializeRequest { passphrase: "pass".into(), from_provider: false })
            .await
            .unwrap();
        let mut process = world.spawn_service("bitmask-keys", "carol@example.org");
        let keys_socket = world.socket("carol@example.org", "keys");
        world.wait_for_socket(&keys_socket, &mut process);
        let mut carol = KeysClient::new(bitmask_runtime::client::connect_unix(&keys_socket).await.unwrap());
        carol.ensure_account_key(pb::EnsureAccountKeyRequest::default()).await.unwrap();
        let imported = carol.import_key(import(recipient, pb::KeySource::ProviderDirectory)).await.unwrap();
        assert!(imported.into_inner().results[0].imported);
        encrypt(&mut carol, &[ACCOUNT], b"to the other key").await.unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match decrypt(&mut keys_two, &ciphertext).await {
            Ok((plain, _)) => {
                assert_eq!(plain, b"to the other key");
                break;
            }
            Err(status) => assert!(std::time::Instant::now() < deadline, "still refused: {status:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

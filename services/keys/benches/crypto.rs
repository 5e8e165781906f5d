//! Encrypt+sign and decrypt+verify of 10 KB and 1 MB messages: through the
//! key service's gRPC API (the real binaries), against sequoia called
//! in-process (the ratio is our IPC and service overhead) and against GnuPG
//! doing the same work in the same run (one `gpg` process per message, as a
//! mail client calling gpg would).
//!
//! Run with `scripts/bench-keys` (release build).

#![allow(clippy::unwrap_used, clippy::print_stdout)] // a benchmark program

use std::time::{Duration, Instant};

use bitmask_keys::openpgp::{self, Algorithm, Certificate};
use bitmask_proto::keys::v1 as pb;
use bitmask_proto::keys::v1::keys_client::KeysClient;
use bitmask_proto::store::v1 as store_pb;
use bitmask_proto::store::v1::store_client::StoreClient;
use bitmask_testkit::World;
use bitmask_testkit::gpg::Gpg;
use tonic::transport::Channel;

const ACCOUNT: &str = "alice@example.org";

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

async fn grpc_encrypt(client: &mut KeysClient<Channel>, data: &[u8]) -> Vec<u8> {
    let options = pb::EncryptOptions {
        recipients: vec!["bob@example.org".into()],
        sign: true,
        armor: false,
        fetch_missing: false,
    };
    let mut messages = vec![pb::EncryptRequest { item: Some(pb::encrypt_request::Item::Options(options)) }];
    messages.extend(
        data.chunks(1 << 20)
            .map(|chunk| pb::EncryptRequest { item: Some(pb::encrypt_request::Item::Data(chunk.to_vec())) }),
    );
    let mut stream = client.encrypt(tokio_stream::iter(messages)).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        out.extend(message.data);
    }
    out
}

async fn grpc_decrypt(client: &mut KeysClient<Channel>, data: &[u8]) -> usize {
    let messages = vec![
        pb::DecryptRequest { item: Some(pb::decrypt_request::Item::Options(pb::DecryptOptions { verify: true })) },
        pb::DecryptRequest { item: Some(pb::decrypt_request::Item::Data(data.to_vec())) },
    ];
    let mut stream = client.decrypt(tokio_stream::iter(messages)).await.unwrap().into_inner();
    let (mut length, mut valid) = (0, false);
    while let Some(message) = stream.message().await.unwrap() {
        length += message.data.len();
        valid |= message.signature.is_some_and(|signature| signature.status() == pb::SignatureStatus::Valid);
    }
    assert!(valid);
    length
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let world = World::new();
    let mut store_process = world.spawn_service("bitmask-store", ACCOUNT);
    world.wait_for_socket(&world.socket(ACCOUNT, "store"), &mut store_process);
    let mut keys_process = world.spawn_service("bitmask-keys", ACCOUNT);
    world.wait_for_socket(&world.socket(ACCOUNT, "keys"), &mut keys_process);
    let bob = openpgp::generate("bob@example.org", Algorithm::Cv25519).unwrap();

    let (mut client, alice) = runtime.block_on(async {
        let store_channel = bitmask_runtime::client::connect_unix(world.socket(ACCOUNT, "store")).await.unwrap();
        let mut store = StoreClient::new(store_channel);
        store
            .initialize(store_pb::InitializeRequest { passphrase: "bench".into(), from_provider: false })
            .await
            .unwrap();
        let channel = bitmask_runtime::client::connect_unix(world.socket(ACCOUNT, "keys")).await.unwrap();
        let mut client =
            KeysClient::new(channel).max_decoding_message_size(80 << 20).max_encoding_message_size(80 << 20);
        client.ensure_account_key(pb::EnsureAccountKeyRequest::default()).await.unwrap();
        let import = pb::ImportKeyRequest {
            data: openpgp::export_public(&bob, false).unwrap(),
            source: pb::KeySource::Imported.into(),
            validation: 0,
            address: String::new(),
        };
        client.import_key(import).await.unwrap();
        let export = pb::ExportKeyRequest {
            selector: Some(pb::export_key_request::Selector::Address(ACCOUNT.into())),
            include_secret: true,
            armor: false,
        };
        let secret = client.export_key(export).await.unwrap().into_inner().data;
        (client, openpgp::parse_certs(&secret).unwrap().remove(0))
    });
    let alice_public: Vec<Certificate> = openpgp::parse_certs(&openpgp::export_public(&alice, false).unwrap()).unwrap();

    let gnupg = Gpg::new();
    gnupg.ok(&["--import"], &openpgp::export_secret(&alice, false).unwrap());
    gnupg.ok(&["--import"], &openpgp::export_public(&bob, false).unwrap());

    println!(
        "{:<34} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "operation", "ours gRPC", "in-process", "gpg", "ours/inproc", "ours/gpg"
    );
    for (label, size, rounds, gpg_rounds) in [("10 KB", 10 * 1024, 200, 40), ("1 MB", 1024 * 1024, 20, 10)] {
        let data: Vec<u8> = (0..size).map(|n| b"abcdefghijklmnopqrstuvwxyz\r\n"[n % 28]).collect();

        // Encrypt to Bob and sign as Alice.
        let started = Instant::now();
        let mut ciphertext = Vec::new();
        runtime.block_on(async {
            for _ in 0..rounds {
                ciphertext = grpc_encrypt(&mut client, &data).await;
            }
        });
        let ours = rate(rounds, started.elapsed());
        let started = Instant::now();
        for _ in 0..rounds {
            openpgp::encrypt(&data, std::slice::from_ref(&bob), Some(&alice), false).unwrap();
        }
        let inproc = rate(rounds, started.elapsed());
        let started = Instant::now();
        for _ in 0..gpg_rounds {
            gnupg.ok(&["--encrypt", "--sign", "--recipient", "bob@example.org", "--local-user", ACCOUNT], &data);
        }
        let reference = rate(gpg_rounds, started.elapsed());
        assert!(openpgp::decrypt(&ciphertext, std::slice::from_ref(&bob), &alice_public).is_ok());
        println!(
            "{:<34} {ours:>10.1}/s {inproc:>10.1}/s {reference:>10.1}/s {:>10.2} {:>10.2}",
            format!("encrypt+sign {label}"),
            ours / inproc,
            ours / reference
        );

        // Bob's signed message to Alice, decrypted and verified.
        let to_alice = openpgp::encrypt(&data, &alice_public, Some(&bob), false).unwrap();
        let started = Instant::now();
        runtime.block_on(async {
            for _ in 0..rounds {
                assert_eq!(grpc_decrypt(&mut client, &to_alice).await, size);
            }
        });
        let ours = rate(rounds, started.elapsed());
        let started = Instant::now();
        for _ in 0..rounds {
            openpgp::decrypt(&to_alice, std::slice::from_ref(&alice), std::slice::from_ref(&bob)).unwrap();
        }
        let inproc = rate(rounds, started.elapsed());
        let started = Instant::now();
        for _ in 0..gpg_rounds {
            assert_eq!(gnupg.ok(&["--decrypt"], &to_alice).stdout.len(), size);
        }
        let reference = rate(gpg_rounds, started.elapsed());
        println!(
            "{:<34} {ours:>10.1}/s {inproc:>10.1}/s {reference:>10.1}/s {:>10.2} {:>10.2}",
            format!("decrypt+verify {label}"),
            ours / inproc,
            ours / reference
        );
    }
}

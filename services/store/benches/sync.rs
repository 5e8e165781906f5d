//! Sync throughput: 10,000 documents of 20 KB from one device to the provider,
//! then from the provider to an empty second device (initialized from the
//! passphrase alone), each a real `bitmask-store` talking TLS to a sync
//! endpoint. The reference, in the same run: the same number of bytes copied
//! up and down as plain blobs over a TLS connection to the same endpoint.
//!
//! Run with `scripts/bench-sync` (release build).

#![allow(clippy::unwrap_used, clippy::print_stdout)] // a benchmark program

use std::sync::Arc;
use std::time::{Duration, Instant};

use bitmask_proto::store::v1 as pb;
use bitmask_proto::store::v1::store_client::StoreClient;
use bitmask_sync_endpoint::SledStorage;
use bitmask_testkit::{KillOnDrop, TestProvider, World};
use tonic::transport::Channel;

const DOCUMENTS: usize = 10_000;
const SIZE: usize = 20 * 1024;
const ACCOUNT: &str = "bench@example.org";

/// A store process; sync is configured later (a configured store syncs by
/// itself soon after local writes, which would race the timed sync).
async fn device(world: &World) -> (KillOnDrop, StoreClient<Channel>) {
    let mut process = world.spawn_service("bitmask-store", ACCOUNT);
    let socket = world.socket(ACCOUNT, "store");
    world.wait_for_socket(&socket, &mut process);
    let channel = bitmask_runtime::client::connect_unix(&socket).await.unwrap();
    let client = StoreClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20);
    (process, client)
}

async fn declare(client: &mut StoreClient<Channel>) {
    let collection = pb::CollectionDefinition {
        name: "content".into(),
        conflict_policy: pb::ConflictPolicy::Immutable.into(),
        local_only: false,
    };
    client.declare_collection(collection).await.unwrap();
}

async fn sync(client: &mut StoreClient<Channel>) -> String {
    let mut stream = client.sync(pb::SyncRequest { if_idle: false }).await.unwrap().into_inner();
    let mut last = String::new();
    while let Some(progress) = stream.message().await.unwrap() {
        last = progress.message;
    }
    last
}

fn body(n: usize) -> Vec<u8> {
    let text: String = std::iter::repeat_n("lorem ipsum dolor sit amet ", SIZE / 27).collect();
    serde_json::json!({ "n": n, "body": text }).to_string().into_bytes()
}

fn rates(label: &str, bytes: usize, elapsed: Duration) -> (f64, f64) {
    let documents_per_second = DOCUMENTS as f64 / elapsed.as_secs_f64();
    let megabytes_per_second = bytes as f64 / 1e6 / elapsed.as_secs_f64();
    println!(
        "{label:<58} {:>8.2} s {documents_per_second:>9.0} docs/s {megabytes_per_second:>8.1} MB/s",
        elapsed.as_secs_f64()
    );
    (documents_per_second, megabytes_per_second)
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let provider_dir = tempfile::tempdir().unwrap();
        let provider = TestProvider::start(Arc::new(SledStorage::open(provider_dir.path()).unwrap())).await;
        let (world_one, world_two) = (World::new(), World::new());

        let (_one_process, mut one) = device(&world_one).await;
        one.initialize(pb::InitializeRequest { passphrase: "bench".into(), from_provider: false }).await.unwrap();
        declare(&mut one).await;
        let mut bytes = 0;
        for chunk in (0..DOCUMENTS).collect::<Vec<_>>().chunks(100) {
            let writes = chunk
                .iter()
                .map(|&n| {
                    let content = body(n);
                    bytes += content.len();
                    pb::Write {
                        op: Some(pb::write::Op::Put(pb::PutRequest {
                            id: format!("doc/{n}"),
                            collection: "content".into(),
                            content,
                            ..Default::default()
                        })),
                    }
                })
                .collect();
            one.batch(pb::BatchRequest { writes }).await.unwrap();
        }
        println!("{DOCUMENTS} documents, {:.1} MB of content", bytes as f64 / 1e6);

        one.configure_sync(provider.configure_request()).await.unwrap();
        let started = Instant::now();
        let result = sync(&mut one).await;
        let up = started.elapsed();
        assert!(result.contains(&format!("sent {DOCUMENTS}")), "{result}");

        let (_two_process, mut two) = device(&world_two).await;
        let started = Instant::now();
        two.configure_sync(provider.configure_request()).await.unwrap();
        two.initialize(pb::InitializeRequest { passphrase: "bench".into(), from_provider: true }).await.unwrap();
        declare(&mut two).await;
        let result = sync(&mut two).await;
        let down = started.elapsed();
        assert!(result.contains(&format!("received {DOCUMENTS}")), "{result}");

        // The reference: the same bytes as plain blobs over TLS to the same endpoint.
        let (copy_up, copy_down) = bitmask_testkit::plain_tls_copy(&provider, bytes).await;

        let (_, up_rate) = rates("sync up: device 1 to provider", bytes, up);
        let (_, down_rate) = rates("sync down: empty device 2 to synced (incl. recovery)", bytes, down);
        let (_, copy_up_rate) = rates("reference: plain copy up over the same TLS endpoint", bytes, copy_up);
        let (_, copy_down_rate) = rates("reference: plain copy down over the same TLS endpoint", bytes, copy_down);
        println!("ratio sync/plain copy: up {:.2}, down {:.2}", up_rate / copy_up_rate, down_rate / copy_down_rate);
    });
}

//! Sync of mail: 10,000 messages (the MIME corpus in `shared/testdata`,
//! each made distinct by a header of its own) filed in INBOX through the mail
//! model on one device (`MailModel::append`, what IMAP APPEND calls), synced
//! to the provider, then to an empty second device (initialized from the
//! passphrase alone) until its mail model shows all 10,000 in INBOX with
//! their UIDs. Each device is a real `bitmask-store` talking TLS to a sync
//! endpoint. The reference, in the same run: the same number of bytes copied
//! up and down as plain blobs over a TLS connection to the same endpoint.
//!
//! Run with `scripts/bench-sync` (release build). `BENCH_MESSAGES` sets the
//! count.

#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::indexing_slicing)] // a benchmark program

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitmask_mail::{Flags, MailModel};
use bitmask_proto::store::v1 as pb;
use bitmask_proto::store::v1::store_client::StoreClient;
use bitmask_sync_endpoint::SledStorage;
use bitmask_testkit::{KillOnDrop, TestProvider, World};
use tonic::transport::Channel;

const ACCOUNT: &str = "bench@example.org";

async fn device(world: &World) -> (KillOnDrop, StoreClient<Channel>, Arc<MailModel>) {
    let mut process = world.spawn_service("bitmask-store", ACCOUNT);
    let socket = world.socket(ACCOUNT, "store");
    world.wait_for_socket(&socket, &mut process);
    let store = StoreClient::new(bitmask_runtime::client::connect_unix(&socket).await.unwrap());
    let mail = MailModel::new(bitmask_runtime::client::traced(bitmask_runtime::client::connect_unix_lazy(socket)));
    (process, store, mail)
}

async fn sync(store: &mut StoreClient<Channel>) -> String {
    let mut stream = store.sync(pb::SyncRequest { if_idle: false }).await.unwrap().into_inner();
    let mut last = String::new();
    while let Some(progress) = stream.message().await.unwrap() {
        last = progress.message;
    }
    last
}

fn corpus(dir: &Path, out: &mut Vec<Vec<u8>>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() && !path.ends_with("malformed") {
            corpus(&path, out);
        } else if path.extension().is_some_and(|extension| extension == "eml") {
            out.push(std::fs::read(&path).unwrap());
        }
    }
}

fn rates(label: &str, messages: usize, bytes: usize, elapsed: Duration) -> f64 {
    let megabytes_per_second = bytes as f64 / 1e6 / elapsed.as_secs_f64();
    println!(
        "{label:<62} {:>8.2} s {:>9.0} msg/s {megabytes_per_second:>8.1} MB/s",
        elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64()
    );
    megabytes_per_second
}

fn main() {
    let count: usize = std::env::var("BENCH_MESSAGES").ok().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let mut originals = Vec::new();
    corpus(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/mime"), &mut originals);
    let messages: Vec<Vec<u8>> = (0..count)
        .map(|n| {
            let mut message = format!("X-Bench-Message: {n}\r\n").into_bytes();
            message.extend_from_slice(&originals[n % originals.len()]);
            message
        })
        .collect();
    let bytes: usize = messages.iter().map(Vec::len).sum();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let provider_dir = tempfile::tempdir().unwrap();
        let provider = TestProvider::start(Arc::new(SledStorage::open(provider_dir.path()).unwrap())).await;
        let (world_one, world_two) = (World::new(), World::new());

        let (_one_process, mut one, one_mail) = device(&world_one).await;
        one.initialize(pb::InitializeRequest { passphrase: "bench".into(), from_provider: false }).await.unwrap();
        let started = Instant::now();
        for message in &messages {
            one_mail.append("INBOX", message, &Flags::default(), None).await.unwrap();
        }
        let append = started.elapsed();
        println!("{count} messages from {} corpus files, {:.1} MB", originals.len(), bytes as f64 / 1e6);
        rates("append through the mail model on device 1", count, bytes, append);

        one.configure_sync(provider.configure_request()).await.unwrap();
        let started = Instant::now();
        let result = sync(&mut one).await;
        let up = started.elapsed();
        assert!(result.starts_with("sent"), "{result}");

        let (_two_process, mut two, two_mail) = device(&world_two).await;
        let started = Instant::now();
        two.configure_sync(provider.configure_request()).await.unwrap();
        two.initialize(pb::InitializeRequest { passphrase: "bench".into(), from_provider: true }).await.unwrap();
        two_mail.mailboxes().await.unwrap();
        let follower = tokio::spawn(two_mail.clone().follow_sync());
        let result = sync(&mut two).await;
        assert!(result.starts_with("sent"), "{result}");
        while two_mail.mailbox("INBOX").await.unwrap().messages < count as u32 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let down = started.elapsed();
        follower.abort();
        // Spot checks: the last message, byte for byte.
        let (_, entries) = two_mail.snapshot("INBOX").await.unwrap();
        let last = entries.iter().find(|entry| entry.size == messages[count - 1].len() as u64).unwrap();
        assert!(two_mail.raw(&last.message).await.unwrap().starts_with(b"X-Bench-Message: "));

        let (copy_up, copy_down) = bitmask_testkit::plain_tls_copy(&provider, bytes).await;
        let up_rate = rates("sync up: device 1 to provider", count, bytes, up);
        let down_rate = rates("sync down: empty device 2 to all shown in INBOX (incl. recovery)", count, bytes, down);
        let copy_up_rate = rates("reference: plain copy up over the same TLS endpoint", count, bytes, copy_up);
        let copy_down_rate = rates("reference: plain copy down over the same TLS endpoint", count, bytes, copy_down);
        println!(
            "ratio mail sync/plain copy (throughput): up {:.2}, down {:.2}",
            up_rate / copy_up_rate,
            down_rate / copy_down_rate
        );
    });
}

//! Local store throughput: 20 KB documents written and read through the gRPC
//! API of the real `bitmask-store` (sealed, indexed, flushed before the
//! reply), against raw sled writes of the same bytes in the same run.
//! The ratio is the cost of encryption, the API and the IPC.
//!
//! Run with `scripts/bench-store` (release build).

#![allow(clippy::unwrap_used, clippy::print_stdout)] // a benchmark program

use std::time::{Duration, Instant};

use bitmask_proto::store::v1 as pb;
use bitmask_proto::store::v1::store_client::StoreClient;
use bitmask_testkit::World;

const DOCUMENTS: usize = 2000;
const SIZE: usize = 20 * 1024;
const CONNECTIONS: usize = 4;

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn content(n: usize) -> Vec<u8> {
    let body: String = std::iter::repeat_n("abcdefghij", SIZE / 10).collect();
    serde_json::json!({ "n": n, "body": body }).to_string().into_bytes()
}

fn raw_sled(flush_each: bool) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(dir.path()).mode(sled::Mode::HighThroughput).open().unwrap();
    let tree = db.open_tree("documents").unwrap();
    let started = Instant::now();
    for n in 0..DOCUMENTS {
        tree.insert(format!("doc/{n}"), content(n)).unwrap();
        if flush_each {
            db.flush().unwrap();
        }
    }
    db.flush().unwrap();
    let writes = rate(DOCUMENTS, started.elapsed());
    let started = Instant::now();
    for n in 0..DOCUMENTS {
        assert!(tree.get(format!("doc/{n}")).unwrap().is_some());
    }
    (writes, rate(DOCUMENTS, started.elapsed()))
}

fn main() {
    let world = World::new();
    let mut process = world.spawn_service("bitmask-store", "bench@example.org");
    let socket = world.socket("bench@example.org", "store");
    world.wait_for_socket(&socket, &mut process);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (ours_write, ours_write_parallel, ours_read) = runtime.block_on(async {
        let connect = || async {
            let channel = bitmask_runtime::client::connect_unix(&socket).await.unwrap();
            StoreClient::new(channel)
        };
        let mut client = connect().await;
        client.initialize(pb::InitializeRequest { passphrase: "bench".into(), from_provider: false }).await.unwrap();
        let collection = pb::CollectionDefinition {
            name: "content".into(),
            conflict_policy: pb::ConflictPolicy::Immutable.into(),
            local_only: false,
        };
        client.declare_collection(collection).await.unwrap();
        let put = |n: usize| pb::PutRequest {
            id: format!("doc/{n}"),
            collection: "content".into(),
            content: content(n),
            ..Default::default()
        };

        let started = Instant::now();
        for n in 0..DOCUMENTS {
            client.put(put(n)).await.unwrap();
        }
        let sequential = rate(DOCUMENTS, started.elapsed());

        let started = Instant::now();
        let mut tasks = Vec::new();
        for connection in 0..CONNECTIONS {
            let mut client = connect().await;
            let puts: Vec<_> =
                (0..DOCUMENTS / CONNECTIONS).map(|n| put(DOCUMENTS + connection * DOCUMENTS + n)).collect();
            tasks.push(tokio::spawn(async move {
                for request in puts {
                    client.put(request).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let parallel = rate(DOCUMENTS, started.elapsed());

        let started = Instant::now();
        for n in 0..DOCUMENTS {
            let document = client.get(pb::GetRequest { id: format!("doc/{n}"), include_deleted: false }).await.unwrap();
            assert!(document.into_inner().content.len() >= SIZE);
        }
        (sequential, parallel, rate(DOCUMENTS, started.elapsed()))
    });
    let (sled_write_flushed, sled_read) = raw_sled(true);
    let (sled_write_unflushed, _) = raw_sled(false);

    println!("{DOCUMENTS} documents of {} KB", SIZE / 1024);
    println!("writes/s  bitmask-store gRPC, 1 connection, flushed before OK: {ours_write:>9.0}");
    println!("writes/s  bitmask-store gRPC, {CONNECTIONS} connections:               {ours_write_parallel:>9.0}");
    println!(
        "writes/s  raw sled, flush after each write:                 {sled_write_flushed:>9.0}   ratio ours/sled {:.2}",
        ours_write / sled_write_flushed
    );
    println!(
        "writes/s  raw sled, no flush (not durable):                 {sled_write_unflushed:>9.0}   ratio ours/sled {:.2}",
        ours_write / sled_write_unflushed
    );
    println!("reads/s   bitmask-store gRPC:                               {ours_read:>9.0}");
    println!(
        "reads/s   raw sled:                                         {sled_read:>9.0}   ratio ours/sled {:.2}",
        ours_read / sled_read
    );
}

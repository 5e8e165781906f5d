//! The store's gRPC API against the real `bitmask-store` binary: documents,
//! batches, queries, counters, Watch, errors, and durability under kill -9.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::time::Duration;

use bitmask_proto::store::v1 as pb;
use bitmask_proto::store::v1::store_client::StoreClient;
use bitmask_testkit::{KillOnDrop, World};
use tonic::Code;
use tonic::transport::Channel;

const ACCOUNT: &str = "alice@example.org";

struct Running {
    process: KillOnDrop,
    client: StoreClient<Channel>,
}

async fn start(world: &World) -> Running {
    let mut process = world.spawn_service("bitmask-store", ACCOUNT);
    let socket = world.socket(ACCOUNT, "store");
    world.wait_for_socket(&socket, &mut process);
    let channel = bitmask_runtime::client::connect_unix(&socket).await.unwrap();
    let client = StoreClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20);
    Running { process, client }
}

async fn initialized(world: &World) -> Running {
    let mut running = start(world).await;
    let client = &mut running.client;
    let code =
        client.initialize(pb::InitializeRequest { passphrase: "pass".into(), from_provider: false }).await.unwrap();
    assert!(!code.into_inner().recovery_code.is_empty());
    for name in ["meta", "flags"] {
        let definition = pb::CollectionDefinition {
            name: name.into(),
            conflict_policy: pb::ConflictPolicy::MergeSets.into(),
            local_only: false,
        };
        client.declare_collection(definition).await.unwrap();
    }
    let index = pb::IndexDefinition {
        name: "by-mailbox-uid".into(),
        collection: "meta".into(),
        fields: vec!["/mailbox".into(), "/uid".into()],
        unique: true,
    };
    client.declare_index(index).await.unwrap();
    running
}

fn put(id: &str, collection: &str, content: serde_json::Value) -> pb::PutRequest {
    pb::PutRequest {
        id: id.into(),
        collection: collection.into(),
        content: content.to_string().into_bytes(),
        ..Default::default()
    }
}

fn text(value: &str) -> pb::IndexValue {
    pb::IndexValue { value: Some(pb::index_value::Value::Text(value.into())) }
}

fn integer(value: i64) -> pb::IndexValue {
    pb::IndexValue { value: Some(pb::index_value::Value::Integer(value)) }
}

#[tokio::test]
async fn documents_queries_counters_and_errors_over_grpc() {
    let world = World::new();
    let mut running = initialized(&world).await;
    let client = &mut running.client;

    let rev = client
        .put(put("m/1", "meta", serde_json::json!({"mailbox": "INBOX", "uid": 1})))
        .await
        .unwrap()
        .into_inner()
        .rev;
    let document = client.get(pb::GetRequest { id: "m/1".into(), include_deleted: false }).await.unwrap().into_inner();
    assert_eq!(document.rev, rev);
    assert_eq!(document.content, br#"{"mailbox":"INBOX","uid":1}"#);

    // Compare-and-set: a stale revision is ABORTED.
    let mut stale = put("m/1", "meta", serde_json::json!({"mailbox": "INBOX", "uid": 1, "x": 1}));
    stale.expected_rev = "1-000000000000".into();
    assert_eq!(client.put(stale).await.unwrap_err().code(), Code::Aborted);

    // An atomic batch with a UID counter, as the mail model files a message.
    let mut writes = Vec::new();
    for uid in 2..=5 {
        writes.push(pb::Write {
            op: Some(pb::write::Op::AddToCounter(pb::AddToCounterRequest { name: "uid/INBOX".into(), delta: 1 })),
        });
        writes.push(pb::Write {
            op: Some(pb::write::Op::Put(put(
                &format!("m/{uid}"),
                "meta",
                serde_json::json!({"mailbox": "INBOX", "uid": uid}),
            ))),
        });
    }
    let batch = client.batch(pb::BatchRequest { writes }).await.unwrap().into_inner();
    assert_eq!(batch.results.len(), 8);
    assert_eq!(batch.results[6].result, Some(pb::batch_result::Result::CounterValue(4)));

    let query = pb::QueryRequest {
        index: "by-mailbox-uid".into(),
        equal: vec![text("INBOX")],
        lower: Some(pb::Bound { values: vec![integer(2)], inclusive: true }),
        descending: true,
        limit: 3,
        ..Default::default()
    };
    let page = client.query(query.clone()).await.unwrap().into_inner();
    let ids: Vec<&str> = page.documents.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["m/5", "m/4", "m/3"]);
    let next = client.query(pb::QueryRequest { page_token: page.next_page_token, ..query }).await.unwrap().into_inner();
    assert_eq!(next.documents.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["m/2"]);

    let counter = client.add_to_counter(pb::AddToCounterRequest { name: "uid/INBOX".into(), delta: 0 }).await.unwrap();
    assert_eq!(counter.into_inner().value, 4);

    // Bad input: clear statuses, and the service goes on.
    let errors = [
        (
            client.query(pb::QueryRequest { index: "nope".into(), ..Default::default() }).await.unwrap_err(),
            Code::NotFound,
            "no index",
        ),
        (
            client.get(pb::GetRequest { id: "absent".into(), include_deleted: false }).await.unwrap_err(),
            Code::NotFound,
            "no document",
        ),
        (client.put(put("x", "nowhere", serde_json::json!({}))).await.unwrap_err(), Code::NotFound, "no collection"),
        (
            client
                .put(pb::PutRequest { content: b"{broken".to_vec(), ..put("x", "meta", serde_json::json!({})) })
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "not JSON",
        ),
        (
            client.put(put("big", "meta", serde_json::json!({"body": "x".repeat(2 << 20)}))).await.unwrap_err(),
            Code::InvalidArgument,
            "at most 1048576",
        ),
        (
            client.put(put("dup", "meta", serde_json::json!({"mailbox": "INBOX", "uid": 1}))).await.unwrap_err(),
            Code::AlreadyExists,
            "unique",
        ),
        (
            client
                .initialize(pb::InitializeRequest { passphrase: "again".into(), from_provider: false })
                .await
                .unwrap_err(),
            Code::AlreadyExists,
            "initialized already",
        ),
        (
            client
                .unlock(pb::UnlockRequest {
                    credential: Some(pb::unlock_request::Credential::Passphrase("wrong".into())),
                })
                .await
                .unwrap_err(),
            Code::Unauthenticated,
            "wrong passphrase",
        ),
    ];
    for (status, code, message) in errors {
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(message), "{status:?}");
    }
    // A wrong passphrase did not lock the store.
    client.get(pb::GetRequest { id: "m/1".into(), include_deleted: false }).await.unwrap();
    // Locked: data calls fail clearly until unlocked.
    client.lock(pb::LockRequest {}).await.unwrap();
    let locked = client.get(pb::GetRequest { id: "m/1".into(), include_deleted: false }).await.unwrap_err();
    assert_eq!(locked.code(), Code::FailedPrecondition);
    assert!(locked.message().contains("locked"), "{locked:?}");
}

#[tokio::test]
async fn watch_replays_from_a_sequence_then_follows_live_changes() {
    let world = World::new();
    let mut running = initialized(&world).await;
    let client = &mut running.client;
    let first =
        client.put(put("f/1", "flags", serde_json::json!({"seen": false}))).await.unwrap().into_inner().sequence;
    client.put(put("m/1", "meta", serde_json::json!({"mailbox": "INBOX", "uid": 1}))).await.unwrap();

    let request =
        pb::WatchRequest { collections: vec!["flags".into()], since_sequence: Some(first - 1), include_content: true };
    let mut stream = client.watch(request).await.unwrap().into_inner();
    let replayed = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(replayed.document.as_ref().unwrap().id, "f/1");

    // Changes by another connection arrive at once, filtered by collection.
    let channel = bitmask_runtime::client::connect_unix(world.socket(ACCOUNT, "store")).await.unwrap();
    let mut other = StoreClient::new(channel);
    other.put(put("m/2", "meta", serde_json::json!({"mailbox": "INBOX", "uid": 2}))).await.unwrap();
    other.put(put("f/2", "flags", serde_json::json!({"seen": true}))).await.unwrap();
    other.delete(pb::DeleteRequest { id: "f/1".into(), expected_rev: String::new() }).await.unwrap();
    let live = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    let document = live.document.unwrap();
    assert_eq!((document.id.as_str(), document.content.as_slice()), ("f/2", br#"{"seen":true}"#.as_slice()));
    let deleted = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    assert!(deleted.document.unwrap().deleted);
    assert!(deleted.sequence > live.sequence);
}

#[tokio::test]
async fn a_replay_longer_than_a_page_comes_whole_and_in_order() {
    // The store replays its log a page (256 changes) at a time.
    let world = World::new();
    let mut running = initialized(&world).await;
    let client = &mut running.client;
    let before = client.get_state(pb::GetStateRequest {}).await.unwrap().into_inner().sequence;
    for chunk in 0..7 {
        let writes = (0..100)
            .flat_map(|n| {
                let n = chunk * 100 + n;
                let flags = put(&format!("f/{n}"), "flags", serde_json::json!({ "n": n }));
                let other = put(&format!("m/{n}"), "meta", serde_json::json!({ "n": n }));
                [flags, other].map(|put| pb::Write { op: Some(pb::write::Op::Put(put)) })
            })
            .collect();
        client.batch(pb::BatchRequest { writes }).await.unwrap();
    }
    let request =
        pb::WatchRequest { collections: vec!["flags".into()], since_sequence: Some(before), include_content: true };
    let mut stream = client.watch(request).await.unwrap().into_inner();
    let mut sequence = before;
    for n in 0..700 {
        let change = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
        assert!(change.sequence > sequence, "in order");
        sequence = change.sequence;
        assert_eq!(change.document.unwrap().id, format!("f/{n}"));
    }
    client.put(put("f/live", "flags", serde_json::json!({}))).await.unwrap();
    let live = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(live.document.unwrap().id, "f/live");
}

#[tokio::test]
async fn every_acknowledged_write_survives_kill_9() {
    let world = World::new();
    let mut running = initialized(&world).await;
    // Writers on several connections; the store is killed while they write.
    let mut writers = Vec::new();
    for writer in 0..4 {
        let socket = world.socket(ACCOUNT, "store");
        writers.push(tokio::spawn(async move {
            let channel = bitmask_runtime::client::connect_unix(&socket).await.unwrap();
            let mut client = StoreClient::new(channel);
            let mut acknowledged = Vec::new();
            for n in 0.. {
                let id = format!("w{writer}/{n}");
                let body = serde_json::json!({"writer": writer, "n": n, "body": "x".repeat(2000)});
                match client.put(put(&id, "flags", body)).await {
                    Ok(reply) => acknowledged.push((id, reply.into_inner().rev)),
                    Err(_) => break,
                }
            }
            acknowledged
        }));
    }
    // Let them get going: wait until a good number of writes were acknowledged.
    let probe_socket = world.socket(ACCOUNT, "store");
    let channel = bitmask_runtime::client::connect_unix(&probe_socket).await.unwrap();
    let mut probe = StoreClient::new(channel);
    loop {
        let state = probe.get_state(pb::GetStateRequest {}).await.unwrap().into_inner();
        if state.sequence >= 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.process.0.kill().unwrap();
    running.process.0.wait().unwrap();
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    assert!(acknowledged.len() >= 250, "only {} writes were acknowledged", acknowledged.len());

    let mut running = start(&world).await;
    let client = &mut running.client;
    let credential = pb::unlock_request::Credential::Passphrase("pass".into());
    client.unlock(pb::UnlockRequest { credential: Some(credential) }).await.unwrap();
    for (id, rev) in &acknowledged {
        let document = client.get(pb::GetRequest { id: id.clone(), include_deleted: false }).await;
        let document = document.unwrap_or_else(|status| panic!("acknowledged {id} is lost: {status:?}")).into_inner();
        assert_eq!(&document.rev, rev, "{id}");
    }
}

#[tokio::test]
async fn blobs_stream_up_and_down_and_a_wrong_size_is_refused() {
    let world = World::new();
    let mut running = initialized(&world).await;
    let client = &mut running.client;
    let data: Vec<u8> = (0..5 * 1024 * 1024 + 3).map(|n| (n % 251) as u8).collect();
    let mut requests: Vec<pb::PutBlobRequest> =
        data.chunks(1 << 20).map(|chunk| pb::PutBlobRequest { data: chunk.to_vec(), ..Default::default() }).collect();
    requests[0].content_type = "application/octet-stream".into();
    requests[0].size = data.len() as u64;
    let info = client.put_blob(futures::stream::iter(requests)).await.unwrap().into_inner();
    assert_eq!(info.size, data.len() as u64);

    let mut stream =
        client.get_blob(pb::GetBlobRequest { id: info.id.clone(), offset: 0, length: 0 }).await.unwrap().into_inner();
    let mut received = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        received.extend_from_slice(&chunk.data);
    }
    assert!(received == data, "the blob reads back byte for byte");
    let mut part = client
        .get_blob(pb::GetBlobRequest { id: info.id.clone(), offset: 100_000, length: 10 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(part.message().await.unwrap().unwrap().data, data[100_000..100_010]);

    let stat = client.stat_blob(pb::StatBlobRequest { id: info.id.clone() }).await.unwrap().into_inner();
    assert_eq!(stat.content_type, "application/octet-stream");
    // A wrong announced size is refused.
    let short = vec![pb::PutBlobRequest { data: b"abc".to_vec(), size: 4, ..Default::default() }];
    assert_eq!(client.put_blob(futures::stream::iter(short)).await.unwrap_err().code(), Code::InvalidArgument);
    client.delete_blob(pb::DeleteBlobRequest { id: info.id.clone() }).await.unwrap();
    let gone = client.get_blob(pb::GetBlobRequest { id: info.id, offset: 0, length: 0 }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watcher_sees_every_change_of_writers_that_race() {
    // Writes commit one at a time, but the tasks that announce them finish in
    // any order: a change announced after a later one was passed over.
    let world = World::new();
    let running = initialized(&world).await;
    let mut client = running.client.clone();
    let request = pb::WatchRequest { collections: vec!["flags".into()], since_sequence: None, include_content: false };
    let mut stream = client.watch(request).await.unwrap().into_inner();
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let mut client = running.client.clone();
            tokio::spawn(async move {
                for n in 0..150 {
                    let id = format!("f/{writer}-{n}");
                    client.put(put(&id, "flags", serde_json::json!({ "n": n }))).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 600 {
        let next = tokio::time::timeout(Duration::from_secs(5), stream.message()).await;
        let change = next.unwrap_or_else(|_| panic!("only {} of 600 changes were announced", seen.len()));
        seen.insert(change.unwrap().unwrap().document.unwrap().id);
    }
}

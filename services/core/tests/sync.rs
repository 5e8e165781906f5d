//! `bitmaskctl sync` and the last sync in `bitmaskctl status`, with a sync
//! endpoint over TLS in the test.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::sync::Arc;

use bitmask_proto::store::v1 as pb;
use bitmask_proto::store::v1::store_client::StoreClient;
use bitmask_sync_endpoint::SledStorage;
use bitmask_testkit::{TestProvider, World, free_port, text};

#[test]
fn bitmaskctl_sync_shows_progress_and_status_the_last_sync() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let provider_dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(SledStorage::open(provider_dir.path()).unwrap());
    let provider = runtime.block_on(TestProvider::start(storage.clone()));

    let world = World::new();
    let _daemon = world.bitmaskd(&[]);
    let (imap, smtp) = (free_port().to_string(), free_port().to_string());
    world.ctl_json(&["account", "add", "alice@example.org", "--imap-port", &imap, "--smtp-port", &smtp]);
    let started = world.ctl_with_input(&["account", "start", "alice@example.org"], "correct horse battery\n");
    assert!(started.status.success(), "{}", text(&started));

    runtime.block_on(async {
        let socket = world.socket("alice@example.org", "store");
        let mut store = StoreClient::new(bitmask_runtime::client::connect_unix(&socket).await.unwrap());
        store.configure_sync(provider.configure_request()).await.unwrap();
        let collection = pb::CollectionDefinition {
            name: "mailbox".into(),
            conflict_policy: pb::ConflictPolicy::LastWriterWins.into(),
            local_only: false,
        };
        store.declare_collection(collection).await.unwrap();
        for name in ["INBOX", "Sent", "Drafts"] {
            let put = pb::PutRequest {
                id: format!("mbox/{name}"),
                collection: "mailbox".into(),
                content: serde_json::json!({"name": name}).to_string().into_bytes(),
                ..Default::default()
            };
            store.put(put).await.unwrap();
        }
    });

    let synced = world.ctl(&["sync", "alice@example.org"]);
    assert!(synced.status.success(), "{}", text(&synced));
    let output = String::from_utf8(synced.stdout).unwrap();
    assert!(output.lines().any(|line| line.starts_with("connecting")), "{output}");
    // (The store's background sync may have sent them already: "sent" counts only this sync's.)
    assert!(output.lines().last().unwrap().starts_with("done") && output.contains("sent "), "{output}");
    use bitmask_sync_endpoint::SyncStorage as _;
    // The three mailboxes, and the account key the first start made (sealed, for the account's other devices).
    assert_eq!(storage.pull(TestProvider::USER, 0, 0).unwrap().0.len(), 4, "the provider has the four documents");

    let status = world.ctl_json(&["status", "alice@example.org"]);
    assert!(status[0]["last_sync_result"].as_str().unwrap().starts_with("ok"), "{status:#}");
    let table = String::from_utf8(world.ctl(&["status"]).stdout).unwrap();
    assert!(table.contains("last sync"), "{table}");

    world.ctl_json(&["account", "stop", "alice@example.org"]);
    let stopped = world.ctl(&["sync", "alice@example.org"]);
    assert_eq!(stopped.status.code(), Some(1));
    assert!(text(&stopped).contains("start it first"), "{}", text(&stopped));
}

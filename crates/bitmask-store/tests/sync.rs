//! Two devices of one account syncing through the provider's storage:
//! the sync logic of the store against the sync endpoint's sled storage,
//! without the network (the network path has its own tests).

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::path::Path;

use bitmask_store::*;
use bitmask_sync_endpoint::{PushOutcome, PushedDocument, SledStorage, StoredDocument, SyncStorage};
use bitmask_testkit::{all_bytes, contains};
use serde_json::json;

const ACCOUNT: &str = "alice@example.org";
const CHEAP: KdfParams = KdfParams { memory_kib: 256, iterations: 1, parallelism: 1 };
const USER: &str = "alice";

fn declare(store: &Store) {
    for (name, policy, local_only) in [
        ("flags", ConflictPolicy::MergeSets, false),
        ("mailbox", ConflictPolicy::LastWriterWins, false),
        ("content", ConflictPolicy::Immutable, false),
        ("uids", ConflictPolicy::LastWriterWins, true),
    ] {
        store.declare_collection(CollectionDef { name: name.into(), policy, local_only }).unwrap();
    }
}

fn first_device(dir: &Path, provider: &SledStorage) -> Store {
    let store = Store::open_with_kdf(dir, ACCOUNT, CHEAP).unwrap();
    store.initialize("correct horse").unwrap();
    provider.put_secrets(USER, &store.export_secrets().unwrap(), 0).unwrap();
    declare(&store);
    store
}

fn second_device(dir: &Path, provider: &SledStorage) -> Store {
    let store = Store::open_with_kdf(dir, ACCOUNT, CHEAP).unwrap();
    let (backup, _) = provider.secrets(USER).unwrap().unwrap();
    assert!(matches!(store.initialize_from_backup(&backup, "wrong"), Err(StoreError::WrongCredential)));
    assert_eq!(store.state().unwrap(), StoreState::Uninitialized);
    store.initialize_from_backup(&backup, "correct horse").unwrap();
    declare(&store);
    store
}

fn pushed(document: &OutgoingDocument) -> PushedDocument {
    PushedDocument {
        id: document.id.clone(),
        rev: document.rev.clone(),
        parent_rev: document.parent_rev.clone(),
        sealed: document.sealed.clone(),
        deleted: document.deleted,
    }
}

fn remote(document: &StoredDocument) -> RemoteDocument {
    RemoteDocument { id: document.id.clone(), rev: document.rev.clone(), sealed: document.sealed.clone() }
}

/// One sync: push local changes (merging conflicts), then pull. Returns the
/// errors of refused remote documents.
fn sync(store: &Store, provider: &SledStorage) -> Vec<StoreError> {
    let mut refused = Vec::new();
    for _round in 0..3 {
        let outgoing = store.outgoing(0).unwrap();
        let up_to = outgoing.iter().map(|document| document.sequence).max().unwrap_or(0);
        let mut accepted = Vec::new();
        for document in &outgoing {
            match provider.push(USER, pushed(document)).unwrap() {
                PushOutcome::Accepted(_) => accepted.push(document.clone()),
                PushOutcome::Conflict(current) => {
                    if let Err(error) = store.apply_remote(&remote(&current)) {
                        refused.push(error);
                    }
                }
            }
        }
        store.mark_pushed(&accepted, up_to).unwrap();
        let cursor = store.sync_cursor().unwrap();
        let (documents, generation) = provider.pull(USER, cursor.pulled_generation, 0).unwrap();
        for document in &documents {
            if let Err(error) = store.apply_remote(&remote(document)) {
                refused.push(error);
            }
        }
        store.set_pulled_generation(generation).unwrap();
        if store.outgoing(0).unwrap().is_empty() {
            break;
        }
    }
    refused
}

fn put(store: &Store, id: &str, collection: &str, content: serde_json::Value) -> String {
    let op = PutOp {
        id: id.into(),
        collection: collection.into(),
        content: content.to_string(),
        expected_rev: None,
        create_only: false,
    };
    store.put(op).unwrap().0
}

fn content(store: &Store, id: &str) -> Option<serde_json::Value> {
    store.get(id, false).unwrap().map(|document| serde_json::from_str(&document.content).unwrap())
}

#[test]
fn a_second_device_gets_everything_from_the_passphrase_alone() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let provider = SledStorage::open(dirs.0.path()).unwrap();
    let one = first_device(dirs.1.path(), &provider);
    for n in 0..20 {
        put(&one, &format!("flags/{n}"), "flags", json!({"flags": ["\\Seen"], "n": n}));
    }
    put(&one, "mbox/INBOX", "mailbox", json!({"name": "INBOX", "subscribed": true}));
    put(&one, "uid/INBOX/1", "uids", json!({"uid": 1}));
    one.delete("flags/19", None).unwrap();
    assert!(sync(&one, &provider).is_empty());

    let two = second_device(dirs.2.path(), &provider);
    assert!(sync(&two, &provider).is_empty());
    for n in 0..19 {
        assert_eq!(content(&two, &format!("flags/{n}")), content(&one, &format!("flags/{n}")));
    }
    assert_eq!(content(&two, "mbox/INBOX").unwrap()["name"], "INBOX");
    assert!(content(&two, "flags/19").is_none(), "the deletion reached device 2");
    assert!(two.get("flags/19", true).unwrap().unwrap().deleted);
    assert!(content(&two, "uid/INBOX/1").is_none(), "local-only documents never leave device 1");

    // A deletion on device 2 reaches device 1.
    two.delete("flags/0", None).unwrap();
    sync(&two, &provider);
    sync(&one, &provider);
    assert!(content(&one, "flags/0").is_none());
    // Nothing more to do: a second sync sends and changes nothing.
    let sequence = one.sequence().unwrap();
    assert!(sync(&one, &provider).is_empty());
    assert_eq!(one.sequence().unwrap(), sequence);
    assert!(one.outgoing(0).unwrap().is_empty());
}

#[test]
fn concurrent_edits_converge_by_the_documented_rules() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let provider = SledStorage::open(dirs.0.path()).unwrap();
    let one = first_device(dirs.1.path(), &provider);
    put(&one, "flags/1", "flags", json!({"flags": ["\\Seen"], "tags": ["work"]}));
    put(&one, "mbox/Lists", "mailbox", json!({"subscribed": true}));
    sync(&one, &provider);
    let two = second_device(dirs.2.path(), &provider);
    sync(&two, &provider);

    // Apart: both change the same flags document and the same mailbox.
    put(&one, "flags/1", "flags", json!({"flags": ["\\Seen", "\\Flagged"], "tags": []}));
    put(&two, "flags/1", "flags", json!({"flags": ["\\Answered"], "tags": ["work", "urgent"]}));
    put(&one, "mbox/Lists", "mailbox", json!({"subscribed": false}));
    std::thread::sleep(std::time::Duration::from_millis(5)); // distinct write times for last-writer-wins
    put(&two, "mbox/Lists", "mailbox", json!({"subscribed": true, "colour": "red"}));

    sync(&one, &provider);
    sync(&two, &provider);
    sync(&one, &provider);
    sync(&two, &provider);

    let expected_flags = json!({"flags": ["\\Answered", "\\Flagged"], "tags": ["urgent"]});
    let (flags_one, flags_two) = (content(&one, "flags/1").unwrap(), content(&two, "flags/1").unwrap());
    assert_eq!(sorted(&flags_one), sorted(&expected_flags));
    assert_eq!(sorted(&flags_two), sorted(&expected_flags));
    assert_eq!(content(&one, "mbox/Lists"), Some(json!({"subscribed": true, "colour": "red"})), "the later write wins");
    assert_eq!(content(&two, "mbox/Lists"), content(&one, "mbox/Lists"));
    assert_eq!(one.get("flags/1", false).unwrap().unwrap().rev, two.get("flags/1", false).unwrap().unwrap().rev);
}

fn sorted(value: &serde_json::Value) -> serde_json::Value {
    let mut value = value.clone();
    for field in ["flags", "tags"] {
        if let Some(items) = value[field].as_array_mut() {
            items.sort_by_key(|item| item.to_string());
        }
    }
    value
}

#[test]
fn tampered_swapped_and_rolled_back_documents_are_refused() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let provider = SledStorage::open(dirs.0.path()).unwrap();
    let one = first_device(dirs.1.path(), &provider);
    put(&one, "a", "mailbox", json!({"v": 1}));
    put(&one, "b", "mailbox", json!({"v": 1}));
    sync(&one, &provider);
    let two = second_device(dirs.2.path(), &provider);
    sync(&two, &provider);
    let (stored, _) = provider.pull(USER, 0, 0).unwrap();
    let old_a = stored.iter().find(|document| document.id == one_key(&stored, 0)).unwrap().clone();
    put(&one, "a", "mailbox", json!({"v": 2}));
    sync(&one, &provider);
    sync(&two, &provider);
    assert_eq!(content(&two, "a"), Some(json!({"v": 2})));

    // A flipped byte.
    let (current, _) = provider.pull(USER, 0, 0).unwrap();
    let mut flipped = remote(&current[0]);
    let last = flipped.sealed.len() - 1;
    flipped.sealed[last] ^= 1;
    assert!(matches!(two.apply_remote(&flipped), Err(StoreError::Corrupt(_))));
    // Two documents swapped: each sealed payload under the other's id.
    let swapped =
        RemoteDocument { id: current[1].id.clone(), rev: current[0].rev.clone(), sealed: current[0].sealed.clone() };
    assert!(matches!(two.apply_remote(&swapped), Err(StoreError::Corrupt(_))));
    // An older revision replayed.
    let error = two.apply_remote(&remote(&old_a)).unwrap_err();
    assert!(matches!(error, StoreError::RolledBack { .. }), "{error}");
    // Good local data is untouched.
    assert_eq!(content(&two, "a"), Some(json!({"v": 2})));
    assert_eq!(content(&two, "b"), Some(json!({"v": 1})));
}

fn one_key(documents: &[StoredDocument], index: usize) -> Vec<u8> {
    documents[index].id.clone()
}

#[test]
fn a_sync_cut_off_half_way_resumes_without_loss_or_duplicates() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let provider = SledStorage::open(dirs.0.path()).unwrap();
    let one = first_device(dirs.1.path(), &provider);
    for n in 0..50 {
        put(&one, &format!("d/{n}"), "mailbox", json!({"n": n}));
    }
    // Half of the documents reach the provider, then the connection drops
    // before the device records anything.
    for document in one.outgoing(25).unwrap() {
        assert!(matches!(provider.push(USER, pushed(&document)).unwrap(), PushOutcome::Accepted(_)));
    }
    drop(one);
    let one = bitmask_testkit::reopen(|| Store::open_with_kdf(dirs.1.path(), ACCOUNT, CHEAP));
    one.unlock("correct horse").unwrap();
    assert!(sync(&one, &provider).is_empty());
    let (stored, generation) = provider.pull(USER, 0, 0).unwrap();
    assert_eq!(stored.len(), 50, "every document once");
    assert_eq!(generation, 50, "the retried half was not stored twice");

    let two = second_device(dirs.2.path(), &provider);
    // Pull cut off half-way: apply a part, no cursor update; then a full sync.
    let (part, _) = provider.pull(USER, 0, 10).unwrap();
    for document in &part {
        two.apply_remote(&remote(document)).unwrap();
    }
    assert!(sync(&two, &provider).is_empty());
    for n in 0..50 {
        assert_eq!(content(&two, &format!("d/{n}")), Some(json!({"n": n})));
    }
    assert_eq!(provider.pull(USER, 0, 0).unwrap().0.len(), 50);
}

#[test]
fn the_provider_holds_no_plaintext() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let markers = [
        "Subject-Marker-XYZZY",
        "carol@plaintext.example",
        "Mailbox-Marker-QWERTY",
        "Body-Marker-PLUGH",
        "correct horse",
    ];
    {
        let provider = SledStorage::open(dirs.0.path()).unwrap();
        let one = first_device(dirs.1.path(), &provider);
        for n in 0..30 {
            let body = json!({"mailbox": markers[2], "subject": markers[0], "from": markers[1], "body": format!("{} {n}", markers[3])});
            put(&one, &format!("{}/{n}", markers[2]), "mailbox", body);
        }
        assert!(sync(&one, &provider).is_empty());
        assert_eq!(provider.pull(USER, 0, 0).unwrap().0.len(), 30);
    }
    let bytes = all_bytes(dirs.0.path());
    assert!(bytes.len() > 30 * 256);
    for marker in markers {
        assert!(!contains(&bytes, marker.as_bytes()), "{marker:?} reached the provider");
    }
}

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

// --- Content-addressed (immutable) documents deleted and written again ---------------------------------------------

/// Both devices hold `id` at the same revision, with the same content, and
/// nothing is left to push.
fn assert_converged(one: &Store, two: &Store, id: &str) {
    let (a, b) = (one.get(id, true).unwrap().unwrap(), two.get(id, true).unwrap().unwrap());
    assert_eq!((a.rev.as_str(), a.deleted, a.content.as_str()), (b.rev.as_str(), b.deleted, b.content.as_str()));
    assert!(one.outgoing(0).unwrap().is_empty() && two.outgoing(0).unwrap().is_empty(), "nothing left to push");
}

/// A device pushes; the provider applies the push, but its answer is lost
/// (the process stops before `mark_pushed`), and the store is opened again.
fn push_and_lose_the_answer(store: Store, dir: &Path, provider: &SledStorage) -> Store {
    for document in store.outgoing(0).unwrap() {
        assert!(matches!(provider.push(USER, pushed(&document)).unwrap(), PushOutcome::Accepted(_)));
    }
    drop(store);
    let store = bitmask_testkit::reopen(|| Store::open_with_kdf(dir, ACCOUNT, CHEAP));
    store.unlock("correct horse").unwrap();
    store
}

#[test]
fn a_lost_push_answer_then_a_re_creation_does_not_wedge_sync() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let provider = SledStorage::open(dirs.0.path()).unwrap();
    let one = first_device(dirs.1.path(), &provider);
    put(&one, "content/e762", "content", json!({"data": "aGVsbG8="}));
    assert!(sync(&one, &provider).is_empty());
    // The deletion reaches the provider but the device never hears so, then
    // the same bytes are appended again.
    one.delete("content/e762", None).unwrap();
    let one = push_and_lose_the_answer(one, dirs.1.path(), &provider);
    put(&one, "content/e762", "content", json!({"data": "aGVsbG8="}));

    let refused = sync(&one, &provider);
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(content(&one, "content/e762"), Some(json!({"data": "aGVsbG8="})), "the re-created version is kept");
    let two = second_device(dirs.2.path(), &provider);
    assert!(sync(&two, &provider).is_empty());
    assert_converged(&one, &two, "content/e762");
    // Stable: more syncs change nothing.
    let sequence = (one.sequence().unwrap(), two.sequence().unwrap());
    assert!(sync(&one, &provider).is_empty() && sync(&two, &provider).is_empty());
    assert_eq!((one.sequence().unwrap(), two.sequence().unwrap()), sequence);
}

#[test]
fn a_lost_push_answer_then_a_deletion_does_not_wedge_sync() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let provider = SledStorage::open(dirs.0.path()).unwrap();
    let one = first_device(dirs.1.path(), &provider);
    put(&one, "content/e762", "content", json!({"data": "aGVsbG8="}));
    put(&one, "mbox/INBOX", "mailbox", json!({"name": "INBOX"}));
    let one = push_and_lose_the_answer(one, dirs.1.path(), &provider);
    // Collected as garbage before the next sync: the device pulls back its own
    // earlier, live version.
    one.delete("content/e762", None).unwrap();
    put(&one, "mbox/Lists", "mailbox", json!({"name": "Lists"}));

    let refused = sync(&one, &provider);
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(content(&one, "content/e762"), Some(json!({"data": "aGVsbG8="})), "the live version wins");
    let two = second_device(dirs.2.path(), &provider);
    assert!(sync(&two, &provider).is_empty());
    assert_converged(&one, &two, "content/e762");
    assert_eq!(content(&two, "mbox/Lists"), Some(json!({"name": "Lists"})), "the rest synced too");
}

/// Runs a scenario twice, once with device one syncing first and once with
/// device two first: `shared` (if any) is written as `content/m` and synced
/// to both devices, then `apart` writes on both without syncing. Returns
/// what both devices hold in the end, in each run.
fn both_orders(shared: Option<serde_json::Value>, apart: impl Fn(&Store, &Store)) -> Vec<Option<serde_json::Value>> {
    let mut results = Vec::new();
    for one_first in [true, false] {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let provider = SledStorage::open(dirs.0.path()).unwrap();
        let one = first_device(dirs.1.path(), &provider);
        put(&one, "mbox/INBOX", "mailbox", json!({"name": "INBOX"}));
        if let Some(shared) = &shared {
            put(&one, "content/m", "content", shared.clone());
        }
        assert!(sync(&one, &provider).is_empty());
        let two = second_device(dirs.2.path(), &provider);
        assert!(sync(&two, &provider).is_empty());
        apart(&one, &two);
        let order = if one_first { [&one, &two, &one, &two] } else { [&two, &one, &two, &one] };
        for device in order {
            let refused = sync(device, &provider);
            assert!(refused.is_empty(), "one first: {one_first}: {refused:?}");
        }
        assert_converged(&one, &two, "content/m");
        // No ping-pong: further syncs change nothing.
        let sequence = (one.sequence().unwrap(), two.sequence().unwrap());
        assert!(sync(&one, &provider).is_empty() && sync(&two, &provider).is_empty());
        assert_eq!((one.sequence().unwrap(), two.sequence().unwrap()), sequence, "one first: {one_first}");
        results.push(content(&one, "content/m"));
    }
    results
}

#[test]
fn one_device_deletes_while_another_re_creates_and_the_document_stays() {
    let results = both_orders(Some(json!({"data": "bQ=="})), |one, two| {
        one.delete("content/m", None).unwrap();
        two.delete("content/m", None).unwrap();
        put(two, "content/m", "content", json!({"data": "bQ=="}));
    });
    assert_eq!(results, vec![Some(json!({"data": "bQ=="})); 2], "the re-created version wins in either order");
}

#[test]
fn identical_content_with_different_deleted_flags_keeps_the_live_version() {
    let results = both_orders(None, |one, two| {
        // Never synced: both write the same content-addressed id, and two deletes it again.
        put(one, "content/m", "content", json!({"data": "bQ=="}));
        put(two, "content/m", "content", json!({"data": "bQ=="}));
        two.delete("content/m", None).unwrap();
    });
    assert_eq!(results, vec![Some(json!({"data": "bQ=="})); 2]);
}

#[test]
fn different_content_under_one_immutable_id_converges_on_one_winner() {
    let results = both_orders(None, |one, two| {
        put(one, "content/m", "content", json!({"data": "b25l"}));
        put(two, "content/m", "content", json!({"data": "dHdv"}));
    });
    assert!(results[0].is_some());
    assert_eq!(results[0], results[1], "the same winner whichever device syncs first");
    // And the same whichever device wrote which.
    let swapped = both_orders(None, |one, two| {
        put(one, "content/m", "content", json!({"data": "dHdv"}));
        put(two, "content/m", "content", json!({"data": "b25l"}));
    });
    assert_eq!(swapped, results);
}

#[test]
fn two_devices_that_resolve_the_same_conflict_apart_settle_without_ping_pong() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let provider = SledStorage::open(dirs[0].path()).unwrap();
    let one = first_device(dirs[1].path(), &provider);
    put(&one, "content/m", "content", json!({"data": "bQ=="}));
    assert!(sync(&one, &provider).is_empty());
    let two = second_device(dirs[2].path(), &provider);
    let three = second_device(dirs[3].path(), &provider);
    assert!(sync(&two, &provider).is_empty() && sync(&three, &provider).is_empty());

    // Three deletes it; one and two delete and re-create it, and both take
    // in three's deletion before either pushes: each resolves on its own.
    three.delete("content/m", None).unwrap();
    assert!(sync(&three, &provider).is_empty());
    let (deletion, _) = provider.pull(USER, 0, 0).unwrap();
    for device in [&one, &two] {
        device.delete("content/m", None).unwrap();
        put(device, "content/m", "content", json!({"data": "bQ=="}));
        let outcome = device.apply_remote(&remote(&deletion[0])).unwrap();
        assert!(matches!(outcome, RemoteOutcome::Merged(_)), "{outcome:?}");
    }
    // Both push their own resolution; the second meets the first.
    for device in [&one, &two, &three, &one, &two, &three] {
        let refused = sync(device, &provider);
        assert!(refused.is_empty(), "{refused:?}");
    }
    assert_converged(&one, &two, "content/m");
    assert_converged(&one, &three, "content/m");
    assert_eq!(content(&three, "content/m"), Some(json!({"data": "bQ=="})));
    let sequences = [one.sequence().unwrap(), two.sequence().unwrap(), three.sequence().unwrap()];
    for device in [&one, &two, &three] {
        assert!(sync(device, &provider).is_empty());
    }
    assert_eq!([one.sequence().unwrap(), two.sequence().unwrap(), three.sequence().unwrap()], sequences);
}

// --- One document never stops a sync --------------------------------------------------------------------------------

/// Device two, synced with device one's `a`, `b` and `c`; then `a` changed
/// on device one. Returns the provider's documents before and after the change.
fn three_documents(
    dirs: &(tempfile::TempDir, tempfile::TempDir, tempfile::TempDir),
    provider: &SledStorage,
) -> (Store, Vec<StoredDocument>, Vec<StoredDocument>) {
    let one = first_device(dirs.1.path(), provider);
    for id in ["a", "b", "c"] {
        put(&one, id, "mailbox", json!({"name": id, "v": 1}));
    }
    assert!(sync(&one, provider).is_empty());
    let (before, _) = provider.pull(USER, 0, 0).unwrap();
    put(&one, "a", "mailbox", json!({"name": "a", "v": 2}));
    assert!(sync(&one, provider).is_empty());
    let (after, _) = provider.pull(USER, 0, 0).unwrap();
    (second_device(dirs.2.path(), provider), before, after)
}

#[test]
fn a_document_that_cannot_be_applied_does_not_stop_the_batch() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let provider = SledStorage::open(dirs.0.path()).unwrap();
    let (two, _, after) = three_documents(&dirs, &provider);
    let mut batch: Vec<RemoteDocument> = after.iter().map(remote).collect();
    let last = batch[1].sealed.len() - 1;
    batch[1].sealed[last] ^= 1;
    two.apply_remote_batch(&batch).unwrap();
    let names: Vec<_> =
        ["a", "b", "c"].iter().map(|id| content(&two, id).map(|content| content["name"].clone())).collect();
    assert_eq!(names.iter().filter(|name| name.is_some()).count(), 2, "the two good documents are here: {names:?}");
}

#[test]
fn refused_documents_are_quarantined_until_a_good_version_comes() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let provider = SledStorage::open(dirs.0.path()).unwrap();
    let (two, before, after) = three_documents(&dirs, &provider);
    assert!(two.quarantined().unwrap().is_empty());
    assert!(sync(&two, &provider).is_empty());
    assert_eq!(content(&two, "a"), Some(json!({"name": "a", "v": 2})));

    // A flipped byte in one document, and an older revision of `a` replayed.
    let mut flipped = remote(&after[0]);
    let last = flipped.sealed.len() - 1;
    flipped.sealed[last] ^= 1;
    let old_a = before.iter().find(|document| !after.iter().any(|now| now.rev == document.rev)).unwrap();
    two.apply_remote_batch(&[flipped.clone(), remote(old_a)]).unwrap();
    let quarantined = two.quarantined().unwrap();
    assert_eq!(quarantined.len(), 2, "{quarantined:?}");
    let tampered = quarantined.iter().find(|entry| entry.storage_key == flipped.id).unwrap();
    assert!(tampered.reason.contains("integrity"), "{tampered:?}");
    let rolled_back = quarantined.iter().find(|entry| entry.storage_key == old_a.id).unwrap();
    assert_eq!(rolled_back.id.as_deref(), Some("a"));
    assert!(rolled_back.reason.contains("rollback"), "{rolled_back:?}");
    assert_eq!(content(&two, "a"), Some(json!({"name": "a", "v": 2})), "good local data is untouched");

    // Quarantined records survive a restart, and a good version clears them.
    drop(two);
    let two = bitmask_testkit::reopen(|| Store::open_with_kdf(dirs.2.path(), ACCOUNT, CHEAP));
    two.unlock("correct horse").unwrap();
    assert_eq!(two.quarantined().unwrap().len(), 2);
    let good: Vec<RemoteDocument> = after.iter().map(remote).collect();
    two.apply_remote_batch(&good).unwrap();
    let left = two.quarantined().unwrap();
    assert_eq!(left.len(), 0, "{left:?}");
}

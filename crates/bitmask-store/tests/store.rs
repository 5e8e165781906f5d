//! The store through its public API, on a real sled database in a temp dir.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::path::Path;

use bitmask_store::*;
use bitmask_testkit::{all_bytes, contains};

const ACCOUNT: &str = "alice@example.org";
const CHEAP: KdfParams = KdfParams { memory_kib: 256, iterations: 1, parallelism: 1 };

fn open(dir: &Path) -> Store {
    bitmask_testkit::reopen(|| Store::open_with_kdf(dir, ACCOUNT, CHEAP))
}

fn fresh(dir: &Path) -> Store {
    let store = open(dir);
    store.initialize("correct horse").unwrap();
    for (name, policy) in [("meta", ConflictPolicy::MergeSets), ("mailbox", ConflictPolicy::LastWriterWins)] {
        store.declare_collection(CollectionDef { name: name.into(), policy, local_only: false }).unwrap();
    }
    store
}

fn put(id: &str, collection: &str, content: serde_json::Value) -> PutOp {
    PutOp {
        id: id.into(),
        collection: collection.into(),
        content: content.to_string(),
        expected_rev: None,
        create_only: false,
    }
}

fn ids(page: &QueryPage) -> Vec<&str> {
    page.documents.iter().map(|document| document.id.as_str()).collect()
}

#[test]
fn locked_until_unlocked_and_a_wrong_passphrase_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.state().unwrap(), StoreState::Uninitialized);
    assert!(matches!(store.get("x", false), Err(StoreError::Uninitialized)));
    assert!(matches!(store.initialize(""), Err(StoreError::EmptyPassphrase)));
    let recovery_code = store.initialize("correct horse").unwrap();
    assert!(matches!(store.initialize("again"), Err(StoreError::AlreadyInitialized)));
    store
        .declare_collection(CollectionDef {
            name: "mailbox".into(),
            policy: ConflictPolicy::LastWriterWins,
            local_only: false,
        })
        .unwrap();
    store.put(put("mbox/INBOX", "mailbox", serde_json::json!({"name": "INBOX"}))).unwrap();
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.state().unwrap(), StoreState::Locked);
    assert!(matches!(store.get("mbox/INBOX", false), Err(StoreError::Locked)));
    assert!(matches!(store.unlock("wrong"), Err(StoreError::WrongCredential)));
    assert_eq!(store.state().unwrap(), StoreState::Locked);
    store.unlock("correct horse").unwrap();
    assert_eq!(store.get("mbox/INBOX", false).unwrap().unwrap().content, r#"{"name":"INBOX"}"#);

    store.lock();
    assert!(matches!(store.get("mbox/INBOX", false), Err(StoreError::Locked)));
    store.unlock_with_recovery_code(&recovery_code).unwrap();
    store.change_passphrase(Credential::RecoveryCode(&recovery_code), "battery staple").unwrap();
    assert!(matches!(store.change_passphrase(Credential::Passphrase("wrong"), "x"), Err(StoreError::WrongCredential)));
    drop(store);
    let store = open(dir.path());
    assert!(matches!(store.unlock("correct horse"), Err(StoreError::WrongCredential)));
    store.unlock("battery staple").unwrap();
    assert!(store.get("mbox/INBOX", false).unwrap().is_some());
}

#[test]
fn the_default_kdf_is_argon2id_at_full_cost() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), ACCOUNT).unwrap();
    store.initialize("correct horse").unwrap();
    drop(store);
    let store = bitmask_testkit::reopen(|| Store::open(dir.path(), ACCOUNT));
    assert!(matches!(store.unlock("wrong"), Err(StoreError::WrongCredential)));
    store.unlock("correct horse").unwrap();
}

#[test]
fn compare_and_set_create_only_and_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(dir.path());
    let (rev1, change) = store.put(put("m1", "meta", serde_json::json!({"flags": []}))).unwrap();
    assert!(rev1.starts_with("1-"), "{rev1}");
    assert_eq!(change.document.rev, rev1);

    let mut update = put("m1", "meta", serde_json::json!({"flags": ["\\Seen"]}));
    update.expected_rev = Some(rev1.clone());
    let (rev2, _) = store.put(update.clone()).unwrap();
    assert!(rev2.starts_with("2-"), "{rev2}");
    // The same compare-and-set again loses: the revision moved on.
    match store.put(update) {
        Err(StoreError::Conflict { id, expected, actual }) => {
            assert_eq!((id.as_str(), expected, actual), ("m1", rev1.clone(), rev2.clone()));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let mut create = put("m1", "meta", serde_json::json!({}));
    create.create_only = true;
    assert!(matches!(store.put(create.clone()), Err(StoreError::AlreadyExists(_))));
    // "" as expected revision means: only if absent.
    let mut absent = put("m2", "meta", serde_json::json!({}));
    absent.expected_rev = Some(String::new());
    store.put(absent.clone()).unwrap();
    assert!(matches!(store.put(absent), Err(StoreError::Conflict { .. })));

    assert!(matches!(store.delete("m1", Some(rev1)), Err(StoreError::Conflict { .. })));
    let (rev3, change) = store.delete("m1", Some(rev2)).unwrap();
    assert!(change.document.deleted);
    assert!(store.get("m1", false).unwrap().is_none());
    let tombstone = store.get("m1", true).unwrap().unwrap();
    assert!(tombstone.deleted && tombstone.rev == rev3);
    assert!(matches!(store.delete("m1", None), Err(StoreError::NotFound(_))));
    // A deleted id can be created again.
    store.put(create).unwrap();
}

#[test]
fn bad_documents_are_refused_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(dir.path());
    let error = store.put(put("x", "nowhere", serde_json::json!({}))).unwrap_err();
    assert!(matches!(error, StoreError::UnknownCollection(_)), "{error}");
    let mut op = put("x", "meta", serde_json::json!({}));
    op.content = "{not json".into();
    assert!(matches!(store.put(op), Err(StoreError::InvalidDocument { .. })));
    let big = serde_json::json!({ "body": "x".repeat(MAX_DOCUMENT_BYTES) });
    let error = store.put(put("x", "meta", big)).unwrap_err();
    assert!(error.to_string().contains("at most 1048576"), "{error}");
    assert!(matches!(store.put(put("", "meta", serde_json::json!({}))), Err(StoreError::InvalidDocument { .. })));
    store.put(put("m", "meta", serde_json::json!({}))).unwrap();
    assert!(matches!(store.put(put("m", "mailbox", serde_json::json!({}))), Err(StoreError::InvalidDocument { .. })));
    let changed = CollectionDef { name: "meta".into(), policy: ConflictPolicy::Immutable, local_only: false };
    assert!(matches!(store.declare_collection(changed), Err(StoreError::SchemaChanged(_))));
    assert_eq!(store.sequence().unwrap(), 1, "nothing but the one good write happened");
}

#[test]
fn a_batch_applies_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(dir.path());
    let (rev, _) = store.put(put("a", "meta", serde_json::json!({"n": 1}))).unwrap();
    let sequence = store.sequence().unwrap();
    let failing = vec![
        Write::Put(put("b", "meta", serde_json::json!({"n": 2}))),
        Write::AddToCounter { name: "uid/INBOX".into(), delta: 1 },
        Write::Delete { id: "a".into(), expected_rev: None },
        Write::Check { id: "a".into(), rev: "1-wrong".into() },
    ];
    assert!(matches!(store.apply(failing), Err(StoreError::Conflict { .. })));
    assert!(store.get("b", false).unwrap().is_none());
    assert!(store.get("a", false).unwrap().is_some());
    assert_eq!(store.counter("uid/INBOX").unwrap(), 0);
    assert_eq!(store.sequence().unwrap(), sequence);

    let (results, changes) = store
        .apply(vec![
            Write::Check { id: "a".into(), rev: rev.clone() },
            Write::Put(put("b", "meta", serde_json::json!({"n": 2}))),
            Write::AddToCounter { name: "uid/INBOX".into(), delta: 1 },
            Write::AddToCounter { name: "uid/INBOX".into(), delta: 1 },
            Write::Put(put("b", "meta", serde_json::json!({"n": 3}))),
        ])
        .unwrap();
    assert_eq!(results[0], WriteResult::Checked);
    assert_eq!(results[2], WriteResult::Counter(1));
    assert_eq!(results[3], WriteResult::Counter(2));
    assert!(matches!(&results[4], WriteResult::Rev(rev) if rev.starts_with("2-")));
    assert_eq!(changes.len(), 1, "one change per document: its final version");
    assert_eq!(store.get("b", false).unwrap().unwrap().content, r#"{"n":3}"#);
}

#[test]
fn changes_replay_the_latest_version_of_each_document_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(dir.path());
    let (_, a) = store.put(put("a", "meta", serde_json::json!({"v": 1}))).unwrap();
    store.put(put("b", "meta", serde_json::json!({"v": 1}))).unwrap();
    store.put(put("a", "meta", serde_json::json!({"v": 2}))).unwrap();
    store.delete("b", None).unwrap();
    let changes = store.changes_since(0, 0).unwrap();
    let summary: Vec<(&str, bool, &str)> =
        changes.iter().map(|c| (c.document.id.as_str(), c.document.deleted, c.document.content.as_str())).collect();
    assert_eq!(summary, [("a", false, r#"{"v":2}"#), ("b", true, "null")]);
    assert_eq!(store.changes_since(a.sequence + 2, 0).unwrap().len(), 1);
    assert_eq!(store.changes_since(store.sequence().unwrap(), 0).unwrap(), []);
    assert_eq!(store.changes_since(0, 1).unwrap().len(), 1);
}

#[test]
fn counters_are_atomic_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(dir.path());
    let values: Vec<i64> = (0..5).map(|_| store.add_to_counter("uid/INBOX", 1).unwrap()).collect();
    assert_eq!(values, [1, 2, 3, 4, 5]);
    assert_eq!(store.add_to_counter("uid/INBOX", 0).unwrap(), 5);
    assert_eq!(store.add_to_counter("uid/Sent", 10).unwrap(), 10);
    let store = std::sync::Arc::new(store);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..25).map(|_| store.add_to_counter("uid/INBOX", 1).unwrap()).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<i64> = threads.into_iter().flat_map(|thread| thread.join().unwrap()).collect();
    all.sort();
    assert_eq!(all, (6..=105).collect::<Vec<_>>(), "every value handed out once");
    drop(store);
    let store = open(dir.path());
    store.unlock("correct horse").unwrap();
    assert_eq!(store.counter("uid/INBOX").unwrap(), 105);
}

fn message(mailbox: &str, uid: i64, seen: bool) -> serde_json::Value {
    serde_json::json!({ "mailbox": mailbox, "uid": uid, "seen": seen })
}

#[test]
fn indexes_answer_equality_ranges_order_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(dir.path());
    for uid in 1..=3 {
        store.put(put(&format!("inbox/{uid}"), "meta", message("INBOX", uid, uid == 2))).unwrap();
    }
    // Declared after documents exist: they are indexed too.
    let by_uid = IndexDef {
        name: "by-mailbox-uid".into(),
        collection: "meta".into(),
        fields: vec!["/mailbox".into(), "/uid".into()],
        unique: true,
    };
    store.declare_index(by_uid.clone()).unwrap();
    store.declare_index(by_uid).unwrap();
    for uid in 4..=10 {
        store.put(put(&format!("inbox/{uid}"), "meta", message("INBOX", uid, false))).unwrap();
    }
    store.put(put("sent/1", "meta", message("Sent", 1, true))).unwrap();
    store.put(put("no-uid", "meta", serde_json::json!({"mailbox": "INBOX"}))).unwrap();

    let inbox = |query: Query| {
        store
            .query(&Query { index: "by-mailbox-uid".into(), equal: vec![IndexValue::Text("INBOX".into())], ..query })
            .unwrap()
    };
    let all = inbox(Query::default());
    assert_eq!(ids(&all), (1..=10).map(|uid| format!("inbox/{uid}")).collect::<Vec<_>>());
    let range = inbox(Query {
        lower: Some(Bound { values: vec![IndexValue::Integer(3)], inclusive: true }),
        upper: Some(Bound { values: vec![IndexValue::Integer(6)], inclusive: false }),
        ..Query::default()
    });
    assert_eq!(ids(&range), ["inbox/3", "inbox/4", "inbox/5"]);
    let descending = inbox(Query { descending: true, limit: 2, ..Query::default() });
    assert_eq!(ids(&descending), ["inbox/10", "inbox/9"]);
    let next =
        inbox(Query { descending: true, limit: 2, page_token: descending.next_page_token.clone(), ..Query::default() });
    assert_eq!(ids(&next), ["inbox/8", "inbox/7"]);
    let mut paged = Vec::new();
    let mut token = None;
    loop {
        let page = inbox(Query { limit: 3, page_token: token, ..Query::default() });
        paged.extend(page.documents.into_iter().map(|document| document.id));
        token = page.next_page_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(paged.len(), 10);
    assert_eq!(
        ids(&inbox(Query {
            lower: Some(Bound { values: vec![IndexValue::Integer(11)], inclusive: true }),
            ..Query::default()
        })),
        Vec::<&str>::new()
    );

    // An update moves the entry; a deletion removes it.
    store.put(put("inbox/2", "meta", message("Sent", 2, true))).unwrap();
    store.delete("inbox/3", None).unwrap();
    assert_eq!(inbox(Query::default()).documents.len(), 8);
    let sent = store
        .query(&Query {
            index: "by-mailbox-uid".into(),
            equal: vec![IndexValue::Text("Sent".into())],
            ..Query::default()
        })
        .unwrap();
    assert_eq!(ids(&sent), ["sent/1", "inbox/2"]);

    // Unique: another document with the same key is refused.
    let error = store.put(put("dup", "meta", message("Sent", 1, false))).unwrap_err();
    assert!(matches!(error, StoreError::UniqueViolation { .. }), "{error}");
    // ...but a document may keep its own key.
    store.put(put("sent/1", "meta", message("Sent", 1, false))).unwrap();

    // Bad queries.
    assert!(matches!(
        store.query(&Query { index: "nope".into(), ..Query::default() }),
        Err(StoreError::UnknownIndex(_))
    ));
    let text_range = Query {
        index: "by-mailbox-uid".into(),
        lower: Some(Bound { values: vec![IndexValue::Text("A".into())], inclusive: true }),
        ..Query::default()
    };
    assert!(matches!(store.query(&text_range), Err(StoreError::InvalidQuery(_))));
    let too_many = Query { index: "by-mailbox-uid".into(), equal: vec![IndexValue::Integer(1); 3], ..Query::default() };
    assert!(matches!(store.query(&too_many), Err(StoreError::InvalidQuery(_))));
    let bad_token = Query { index: "by-mailbox-uid".into(), page_token: Some("zz".into()), ..Query::default() };
    assert!(matches!(store.query(&bad_token), Err(StoreError::InvalidQuery(_))));
    let unknown_collection = IndexDef { name: "x".into(), collection: "nowhere".into(), fields: vec![], unique: false };
    assert!(matches!(store.declare_index(unknown_collection), Err(StoreError::UnknownCollection(_))));

    // A boolean index, and an index with no fields: every live document of the collection.
    store
        .declare_index(IndexDef {
            name: "by-seen".into(),
            collection: "meta".into(),
            fields: vec!["/seen".into()],
            unique: false,
        })
        .unwrap();
    let seen = store
        .query(&Query { index: "by-seen".into(), equal: vec![IndexValue::Boolean(true)], ..Query::default() })
        .unwrap();
    assert_eq!(ids(&seen), ["inbox/2"]);
    store
        .declare_index(IndexDef { name: "all-meta".into(), collection: "meta".into(), fields: vec![], unique: false })
        .unwrap();
    assert_eq!(store.query(&Query { index: "all-meta".into(), ..Query::default() }).unwrap().documents.len(), 11);
    // Indexes survive a reopen.
    drop(store);
    let store = open(dir.path());
    store.unlock("correct horse").unwrap();
    assert_eq!(store.query(&Query { index: "all-meta".into(), ..Query::default() }).unwrap().documents.len(), 11);
}

#[test]
fn the_files_on_disk_hold_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let markers = [
        "Subject-Marker-XYZZY",
        "carol@plaintext.example",
        "Mailbox-Marker-QWERTY",
        "Body-Marker-PLUGH",
        "Counter-Marker-FROTZ",
        "correct horse",
    ];
    let store = fresh(dir.path());
    store
        .declare_index(IndexDef {
            name: "by-mailbox".into(),
            collection: "meta".into(),
            fields: vec!["/mailbox".into()],
            unique: false,
        })
        .unwrap();
    for n in 0..50 {
        let content = serde_json::json!({
            "mailbox": markers[2], "subject": markers[0], "from": markers[1], "body": format!("{} {n}", markers[3]),
        });
        store.put(put(&format!("{}/{n}", markers[2]), "meta", content)).unwrap();
    }
    store.add_to_counter(markers[4], 1).unwrap();
    drop(store);
    let bytes = all_bytes(dir.path());
    assert!(bytes.len() > 50 * 256, "the data is on disk ({} bytes)", bytes.len());
    for marker in markers {
        assert!(!contains(&bytes, marker.as_bytes()), "{marker:?} is in the sled files");
    }
    // And the data is all there.
    let store = open(dir.path());
    store.unlock("correct horse").unwrap();
    let page = store
        .query(&Query {
            index: "by-mailbox".into(),
            equal: vec![IndexValue::Text(markers[2].into())],
            ..Query::default()
        })
        .unwrap();
    assert_eq!(page.documents.len(), 50);
}

#[test]
fn a_tampered_record_is_refused_not_returned() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(dir.path());
    store.put(put("a", "meta", serde_json::json!({"v": 1}))).unwrap();
    store.put(put("b", "meta", serde_json::json!({"v": 2}))).unwrap();
    drop(store);
    {
        // Swap the two sealed records, then flip a byte in one: behind the store's back.
        let db = bitmask_testkit::reopen(|| sled::open(dir.path()));
        let documents = db.open_tree("documents").unwrap();
        let entries: Vec<_> = documents.iter().map(Result::unwrap).collect();
        assert_eq!(entries.len(), 2);
        documents.insert(&entries[0].0, entries[1].1.clone()).unwrap();
        documents.insert(&entries[1].0, entries[0].1.clone()).unwrap();
        db.flush().unwrap();
    }
    let store = open(dir.path());
    store.unlock("correct horse").unwrap();
    for id in ["a", "b"] {
        let error = store.get(id, false).unwrap_err();
        assert!(matches!(error, StoreError::Corrupt("document")), "{error}");
    }
}

fn blob_bytes(len: usize) -> Vec<u8> {
    let marker = b"Attachment-Marker-XYZZY ";
    (0..len).map(|n| marker[n % marker.len()].wrapping_add((n / 7919) as u8 % 3)).collect()
}

fn read_all(store: &Store, id: &str, offset: u64, length: u64) -> Vec<u8> {
    let mut out = Vec::new();
    store
        .read_blob(id, offset, length, |chunk| {
            out.extend_from_slice(chunk);
            true
        })
        .unwrap();
    out
}

#[test]
fn blobs_stream_in_chunks_dedupe_and_detect_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(dir.path());
    let data = blob_bytes(3 * 1024 * 1024 + 17);
    let mut upload = store.begin_blob("application/pdf", false).unwrap();
    for piece in data.chunks(100_003) {
        store.write_blob(&mut upload, piece).unwrap();
    }
    let info = store.finish_blob(upload, Some(data.len() as u64)).unwrap();
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(store.stat_blob(&info.id).unwrap().unwrap().content_type, "application/pdf");
    assert!(read_all(&store, &info.id, 0, 0) == data, "the whole blob reads back");
    for (offset, length) in
        [(0u64, 10u64), (CHUNK_BYTES as u64 - 5, 10), (1_000_000, 300_000), (data.len() as u64 - 3, 100)]
    {
        let end = (offset + length).min(data.len() as u64) as usize;
        assert!(read_all(&store, &info.id, offset, length) == data[offset as usize..end], "range {offset}+{length}");
    }
    // The same bytes again: the same id, stored once.
    let chunks_before = store.stats().chunks;
    let mut again = store.begin_blob("application/pdf", false).unwrap();
    store.write_blob(&mut again, &data).unwrap();
    assert_eq!(store.finish_blob(again, None).unwrap().id, info.id);
    assert_eq!(store.stats().chunks, chunks_before);
    // A wrong announced size is refused and leaves nothing behind.
    let mut short = store.begin_blob("text/plain", false).unwrap();
    store.write_blob(&mut short, b"abc").unwrap();
    assert!(matches!(store.finish_blob(short, Some(4)), Err(StoreError::InvalidDocument { .. })));
    assert_eq!(store.stats().chunks, chunks_before);
    // An empty blob is a blob too.
    let empty = store.begin_blob("text/plain", true).unwrap();
    let empty = store.finish_blob(empty, Some(0)).unwrap();
    assert_eq!(read_all(&store, &empty.id, 0, 0), b"");
    assert!(matches!(store.read_blob("00ff", 0, 0, |_| true), Err(StoreError::NotFound(_))));
    assert!(matches!(store.read_blob("not hex", 0, 0, |_| true), Err(StoreError::NotFound(_))));
    drop(store);

    let bytes = all_bytes(dir.path());
    assert!(!contains(&bytes, b"Attachment-Marker-XYZZY"), "blob plaintext is in the sled files");
    {
        // Swap two chunks behind the store's back.
        let db = bitmask_testkit::reopen(|| sled::open(dir.path()));
        let chunks = db.open_tree("chunks").unwrap();
        let entries: Vec<_> = chunks.iter().take(2).map(Result::unwrap).collect();
        chunks.insert(&entries[0].0, entries[1].1.clone()).unwrap();
        chunks.insert(&entries[1].0, entries[0].1.clone()).unwrap();
        db.flush().unwrap();
    }
    let store = open(dir.path());
    store.unlock("correct horse").unwrap();
    assert!(matches!(store.read_blob(&info.id, 0, 0, |_| true), Err(StoreError::Corrupt(_))));
    assert!(store.delete_blob(&info.id).unwrap());
    assert!(store.stat_blob(&info.id).unwrap().is_none());
    assert!(!store.delete_blob(&info.id).unwrap());
}

#[test]
fn an_array_field_indexes_each_element() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(dir.path());
    let by_part =
        IndexDef { name: "by-part".into(), collection: "meta".into(), fields: vec!["/parts".into()], unique: false };
    store.declare_index(by_part).unwrap();
    store.put(put("m1", "meta", serde_json::json!({"parts": ["a", "b", "b"]}))).unwrap();
    store.put(put("m2", "meta", serde_json::json!({"parts": ["b", "c"]}))).unwrap();
    store.put(put("m3", "meta", serde_json::json!({"parts": []}))).unwrap();
    // Entries with the same value come in the order of their keyed ids,
    // which differs from store to store: compared sorted.
    let referring = |part: &str| {
        let query = Query { index: "by-part".into(), equal: vec![IndexValue::Text(part.into())], ..Query::default() };
        let mut found = ids(&store.query(&query).unwrap()).into_iter().map(str::to_owned).collect::<Vec<_>>();
        found.sort();
        found
    };
    assert_eq!(referring("a"), ["m1"]);
    assert_eq!(referring("b"), ["m1", "m2"], "one entry per document, even for a repeated element");
    assert_eq!(referring("c"), ["m2"]);
    // An update drops the entries of elements it no longer has.
    store.put(put("m1", "meta", serde_json::json!({"parts": ["c"]}))).unwrap();
    assert!(referring("a").is_empty());
    assert_eq!(referring("c"), ["m1", "m2"]);
    store.delete("m2", None).unwrap();
    assert_eq!(referring("c"), ["m1"]);
}

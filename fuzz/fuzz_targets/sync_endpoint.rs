//! The provider's sync endpoint storage (`SledStorage`), which keeps what
//! clients push and the MX deposits: the input is a series of operations
//! (push batches with any ids, revisions and parents, pulls from any
//! generation, blobs with any ids and offsets, sealed secrets with any
//! expected version, incoming items with any ids, listed, fetched and
//! deleted) by a few users with odd names, checked against a model.
//!
//! Checked: no panic; every answer is the model's (conflicts, retried
//! pushes, generations, what a pull returns, blob and item bytes, the
//! secrets' compare-and-set, which incoming ids are refused); users never
//! see each other's data.
//!
//! One database (on tmpfs when there is one) serves many inputs, each with
//! users of its own; it is replaced every few hundred inputs.

#![no_main]

use std::collections::BTreeMap;
use std::sync::Mutex;

use bitmask_sync_endpoint::{PushOutcome, PushedDocument, SledStorage, StorageError, StoredDocument, SyncStorage};
use libfuzzer_sys::fuzz_target;

struct Database {
    _dir: tempfile::TempDir,
    storage: SledStorage,
    inputs: u64,
}

static DATABASE: Mutex<Option<Database>> = Mutex::new(None);
static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn database() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let builder = tempfile::Builder::new().prefix("bitmask-fuzz-sync").tempdir_in(shm);
    builder.or_else(|_| tempfile::tempdir()).expect("a temporary directory")
}

/// Reads the input from the front.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }

    fn bytes(&mut self, most: usize) -> Vec<u8> {
        let length = usize::from(self.byte().unwrap_or(0)) % (most + 1);
        let length = length.min(self.0.len());
        let (taken, rest) = self.0.split_at(length);
        self.0 = rest;
        taken.to_vec()
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |value, _| (value << 8) | u64::from(self.byte().unwrap_or(0)))
    }
}

#[derive(Default)]
struct User {
    documents: BTreeMap<Vec<u8>, StoredDocument>,
    generation: u64,
    blobs: BTreeMap<Vec<u8>, Vec<u8>>,
    secrets: Option<(Vec<u8>, u64)>,
    incoming: BTreeMap<String, (u64, Vec<u8>)>,
}

impl User {
    fn push(&mut self, document: &PushedDocument) -> PushOutcome {
        match self.documents.get(&document.id) {
            Some(current) if current.rev == document.rev => return PushOutcome::Accepted(current.generation),
            Some(current) if current.rev != document.parent_rev => return PushOutcome::Conflict(current.clone()),
            _ => {}
        }
        self.generation += 1;
        let stored = StoredDocument {
            id: document.id.clone(),
            rev: document.rev.clone(),
            sealed: document.sealed.clone(),
            deleted: document.deleted,
            generation: self.generation,
        };
        self.documents.insert(document.id.clone(), stored);
        PushOutcome::Accepted(self.generation)
    }
}

const NAMES: [&str; 6] = ["bob@example.org", "", "bob@example.org\0", "../..", "Bob@Example.Org", "b"];

fn valid_incoming_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|byte| byte.is_ascii_alphanumeric())
}

fn run(storage: &SledStorage, prefix: &str, mut input: Input<'_>) {
    let mut users: Vec<User> = (0..NAMES.len()).map(|_| User::default()).collect();
    let name = |index: usize| format!("{prefix}{}", NAMES[index]);
    let mut steps = 0;
    while let Some(op) = input.byte() {
        steps += 1;
        if steps > 64 {
            break;
        }
        let index = usize::from(input.byte().unwrap_or(0)) % NAMES.len();
        let (user, model) = (name(index), &mut users[index]);
        match op % 9 {
            0 => {
                let count = 1 + usize::from(input.byte().unwrap_or(0) % 3);
                let mut batch = Vec::new();
                for _ in 0..count {
                    let id = input.bytes(70);
                    let known = model.documents.get(&id).map(|current| current.rev.clone());
                    let rev = input.bytes(8);
                    let parent_rev = match (input.byte().unwrap_or(0) % 3, known) {
                        (0, Some(current)) => current,
                        (1, _) => Vec::new(),
                        _ => input.bytes(8),
                    };
                    let sealed = input.bytes(64);
                    let deleted = input.byte().unwrap_or(0) & 1 == 1;
                    batch.push(PushedDocument { id, rev, parent_rev, sealed, deleted });
                }
                let expected: Vec<PushOutcome> = batch.iter().map(|document| model.push(document)).collect();
                let outcomes = storage.push_many(&user, batch).expect("a push is stored");
                assert_eq!(outcomes, expected, "push outcomes");
            }
            1 => {
                let since = match input.byte().unwrap_or(0) % 4 {
                    0 => 0,
                    1 => model.generation.saturating_sub(1),
                    2 => u64::MAX,
                    _ => input.u64() % (model.generation + 2),
                };
                let limit = usize::from(input.byte().unwrap_or(0) % 4);
                let (documents, current) = storage.pull(&user, since, limit).expect("a pull is answered");
                let mut expected: Vec<&StoredDocument> =
                    model.documents.values().filter(|document| document.generation > since).collect();
                expected.sort_by_key(|document| document.generation);
                if limit != 0 {
                    expected.truncate(limit);
                }
                assert_eq!(current, model.generation, "the pull's generation");
                let expected: Vec<StoredDocument> = expected.into_iter().cloned().collect();
                assert_eq!(documents, expected, "what a pull from {since} (limit {limit}) gives");
            }
            2 => {
                let id = input.bytes(80);
                let data = input.bytes(255);
                storage.put_blob(&user, &id, &data).expect("a blob is stored");
                model.blobs.insert(id, data);
            }
            3 => {
                let id = match (input.byte().unwrap_or(0) % 2, model.blobs.keys().next()) {
                    (0, Some(known)) => known.clone(),
                    _ => input.bytes(80),
                };
                let offset = u64::from(input.byte().unwrap_or(0));
                let expected = model.blobs.get(&id);
                assert_eq!(storage.has_blob(&user, &id).expect("has_blob"), expected.is_some(), "has_blob");
                assert_eq!(storage.get_blob(&user, &id).expect("get_blob").as_ref(), expected, "get_blob");
                let mut read = Vec::new();
                let reader = storage.read_blob(&user, &id, offset).expect("read_blob");
                assert_eq!(reader.is_some(), expected.is_some(), "read_blob");
                if let Some(mut reader) = reader {
                    std::io::Read::read_to_end(&mut reader, &mut read).expect("a blob reads");
                    let whole = expected.cloned().unwrap_or_default();
                    let from = usize::try_from(offset).unwrap_or(usize::MAX).min(whole.len());
                    assert_eq!(read, whole[from..], "a blob read from {offset}");
                }
            }
            4 => {
                let blob = input.bytes(40);
                let current = model.secrets.as_ref().map_or(0, |(_, version)| *version);
                let expected_version = if input.byte().unwrap_or(0) & 1 == 0 { current } else { input.u64() % 4 };
                let result = storage.put_secrets(&user, &blob, expected_version);
                if expected_version == current {
                    assert_eq!(result.expect("secrets are stored"), current + 1);
                    model.secrets = Some((blob, current + 1));
                } else {
                    assert!(matches!(result, Err(StorageError::SecretsVersion { .. })), "{result:?}");
                }
                assert_eq!(storage.secrets(&user).expect("secrets"), model.secrets, "the secrets");
            }
            5 => {
                let id = String::from_utf8_lossy(&input.bytes(70)).into_owned();
                let received = u64::from(input.byte().unwrap_or(0));
                let data = input.bytes(255);
                let result = storage.deposit_incoming(&user, &id, received, &data);
                if valid_incoming_id(&id) {
                    result.expect("an incoming item is kept");
                    model.incoming.insert(id, (received, data));
                } else {
                    assert!(matches!(result, Err(StorageError::IncomingId(_))), "{id:?}: {result:?}");
                }
            }
            6 => {
                let limit = usize::from(input.byte().unwrap_or(0) % 4);
                let items = storage.list_incoming(&user, limit).expect("a listing");
                let mut expected: Vec<(u64, &String, u64)> =
                    model.incoming.iter().map(|(id, (received, data))| (*received, id, data.len() as u64)).collect();
                expected.sort();
                if limit != 0 {
                    expected.truncate(limit);
                }
                let listed: Vec<(u64, &String, u64)> =
                    items.iter().map(|item| (item.received_ms, &item.id, item.size)).collect();
                assert_eq!(listed, expected, "the incoming listing");
            }
            7 => {
                let id = match (input.byte().unwrap_or(0) % 2, model.incoming.keys().next()) {
                    (0, Some(known)) => known.clone(),
                    _ => String::from_utf8_lossy(&input.bytes(70)).into_owned(),
                };
                let got = storage.get_incoming(&user, &id).expect("get_incoming");
                assert_eq!(got.as_ref(), model.incoming.get(&id).map(|(_, data)| data), "incoming item {id:?}");
            }
            _ => {
                let mut ids = Vec::new();
                for _ in 0..=input.byte().unwrap_or(0) % 3 {
                    ids.push(match (input.byte().unwrap_or(0) % 2, model.incoming.keys().next()) {
                        (0, Some(known)) => known.clone(),
                        _ => String::from_utf8_lossy(&input.bytes(70)).into_owned(),
                    });
                }
                let deleted = storage.delete_incoming(&user, &ids).expect("delete_incoming");
                let expected = ids.iter().filter(|id| model.incoming.remove(*id).is_some()).count();
                assert_eq!(deleted as usize, expected, "items deleted of {ids:?}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() > 8 * 1024 {
        return;
    }
    let mut guard = DATABASE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if guard.as_ref().is_none_or(|database| database.inputs >= 500) {
        // Dropped (closed and deleted) before the next one opens.
        *guard = None;
        let dir = database();
        let storage = SledStorage::open(dir.path()).expect("the database opens");
        *guard = Some(Database { _dir: dir, storage, inputs: 0 });
    }
    let database = guard.as_mut().expect("just opened");
    database.inputs += 1;
    let run_number = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Users of this input only: a length-prefixed run number before the name.
    run(&database.storage, &format!("{run_number}:"), Input(data));
});

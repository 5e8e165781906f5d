//! Sync explored by a seeded generator: one to three devices of one account,
//! each a real `bitmask-store` process under the mail model, do random mail
//! operations (append, the same bytes again, copy, move, flags, expunge,
//! mailbox create, rename, delete and re-create, incoming mail filed on
//! several devices) with syncs at random points, and faults at random points:
//! a sync cut before or after the provider applied a push, a pull cut, the
//! provider away or restarted, a store killed (kill -9) in the middle of a
//! sync or of a write. After a final quiet sync on every device:
//! - every device shows the same mailboxes with the same copies and flags;
//! - no sync fails and nothing is quarantined;
//! - every copy acknowledged to the client is there, with its message's
//!   bytes, unless a later operation removed it; what an acknowledged
//!   operation removed is gone; nothing is there twice;
//! - what a device shows is what a fresh load of its store shows;
//! - the provider holds none of the plaintext.
//!
//! `SYNC_MODEL_SEED=N` replays one run; `SYNC_MODEL_RUNS` and
//! `SYNC_MODEL_STEPS` set the budget (the defaults keep CI to about a minute).

#![allow(clippy::unwrap_used, clippy::indexing_slicing)] // a panic in a test is a failed test

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitmask_mail::{FlagOperation, Flags, MailModel, SpecialUse};
use bitmask_proto::store::v1 as pb;
use bitmask_proto::store::v1::store_client::StoreClient;
use bitmask_sync_endpoint::{
    IncomingItem, PushOutcome, PushedDocument, SledStorage, StorageError, StoredDocument, SyncStorage,
};
use bitmask_testkit::{KillOnDrop, TestProvider, World, all_bytes, contains};
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use sha2::{Digest as _, Sha256};
use tonic::transport::Channel;

const ACCOUNT: &str = "alice@example.org";
const PASSPHRASE: &str = "correct horse battery staple";
const NAMES: [&str; 5] = ["Archive", "Work", "Work/Old", "Lists", "Trash"];

// --- the provider, with faults ------------------------------------------------

/// What the provider does to the next calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Fault {
    None,
    /// Every call fails (the provider is away).
    Away,
    /// A pull fails (the connection cut while pulling).
    CutPull,
    /// A push fails before it is applied.
    CutPush,
    /// A push is applied, then the answer is lost.
    AnswerLost,
}

#[derive(Debug)]
struct FaultyProvider {
    dir: PathBuf,
    storage: Mutex<Option<Arc<SledStorage>>>,
    fault: AtomicU8,
}

impl FaultyProvider {
    fn fault(&self) -> Fault {
        match self.fault.load(Ordering::SeqCst) {
            1 => Fault::Away,
            2 => Fault::CutPull,
            3 => Fault::CutPush,
            4 => Fault::AnswerLost,
            _ => Fault::None,
        }
    }
    fn set(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
    }
    fn inner(&self) -> Result<Arc<SledStorage>, StorageError> {
        if self.fault() == Fault::Away {
            return Err(StorageError::Damaged);
        }
        self.storage.lock().unwrap().clone().ok_or(StorageError::Damaged)
    }
    /// The provider process restarts: its database is closed (once no call
    /// holds it) and opened again.
    fn restart(&self) {
        let mut storage = self.storage.lock().unwrap();
        let old = storage.take().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(old);
        *storage = Some(Arc::new(bitmask_testkit::reopen(|| SledStorage::open(&self.dir))));
    }
}

impl SyncStorage for FaultyProvider {
    fn pull(&self, user: &str, since: u64, limit: usize) -> Result<(Vec<StoredDocument>, u64), StorageError> {
        if self.fault() == Fault::CutPull {
            return Err(StorageError::Damaged);
        }
        self.inner()?.pull(user, since, limit)
    }
    fn push(&self, user: &str, document: PushedDocument) -> Result<PushOutcome, StorageError> {
        Ok(self.push_many(user, vec![document])?.pop().unwrap())
    }
    fn push_many(&self, user: &str, documents: Vec<PushedDocument>) -> Result<Vec<PushOutcome>, StorageError> {
        match self.fault() {
            Fault::CutPush => Err(StorageError::Damaged),
            Fault::AnswerLost => {
                self.inner()?.push_many(user, documents)?;
                Err(StorageError::Damaged)
            }
            _ => self.inner()?.push_many(user, documents),
        }
    }
    fn has_blob(&self, user: &str, id: &[u8]) -> Result<bool, StorageError> {
        self.inner()?.has_blob(user, id)
    }
    fn put_blob(&self, user: &str, id: &[u8], data: &[u8]) -> Result<(), StorageError> {
        self.inner()?.put_blob(user, id, data)
    }
    fn get_blob(&self, user: &str, id: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner()?.get_blob(user, id)
    }
    fn secrets(&self, user: &str) -> Result<Option<(Vec<u8>, u64)>, StorageError> {
        self.inner()?.secrets(user)
    }
    fn put_secrets(&self, user: &str, blob: &[u8], expected_version: u64) -> Result<u64, StorageError> {
        self.inner()?.put_secrets(user, blob, expected_version)
    }
    fn deposit_incoming(&self, user: &str, id: &str, received_ms: u64, data: &[u8]) -> Result<(), StorageError> {
        self.inner()?.deposit_incoming(user, id, received_ms, data)
    }
    fn list_incoming(&self, user: &str, limit: usize) -> Result<Vec<IncomingItem>, StorageError> {
        self.inner()?.list_incoming(user, limit)
    }
    fn get_incoming(&self, user: &str, id: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner()?.get_incoming(user, id)
    }
    fn delete_incoming(&self, user: &str, ids: &[String]) -> Result<u32, StorageError> {
        self.inner()?.delete_incoming(user, ids)
    }
}

// --- devices ------------------------------------------------------------------

struct Device {
    world: World,
    process: Option<KillOnDrop>,
    store: StoreClient<Channel>,
    mail: Arc<MailModel>,
    follower: tokio::task::JoinHandle<()>,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

fn socket(world: &World) -> PathBuf {
    world.socket(ACCOUNT, "store")
}

async fn start_store(world: &World) -> (KillOnDrop, StoreClient<Channel>) {
    let mut process = world.spawn_service("bitmask-store", ACCOUNT);
    world.wait_for_socket(&socket(world), &mut process);
    let store = StoreClient::new(bitmask_runtime::client::connect_unix(socket(world)).await.unwrap());
    (process, store)
}

async fn device(provider: &TestProvider, first: bool) -> Device {
    let world = World::new();
    let (process, mut store) = start_store(&world).await;
    store.configure_sync(provider.configure_request()).await.unwrap();
    let initialize = pb::InitializeRequest { passphrase: PASSPHRASE.into(), from_provider: !first };
    store.initialize(initialize).await.unwrap();
    let mail =
        MailModel::new(bitmask_runtime::client::traced(bitmask_runtime::client::connect_unix_lazy(socket(&world))));
    mail.mailboxes().await.unwrap();
    let follower = tokio::spawn(follow(mail.clone()));
    Device { world, process: Some(process), store, mail, follower }
}

async fn follow(mail: Arc<MailModel>) {
    loop {
        let _ = mail.clone().follow_sync().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Device {
    /// kill -9 of the store, then a new one unlocked, as bitmaskd does.
    async fn restart_store(&mut self) {
        drop(self.process.take());
        let (process, mut store) = start_store(&self.world).await;
        let unlock =
            pb::UnlockRequest { credential: Some(pb::unlock_request::Credential::Passphrase(PASSPHRASE.into())) };
        store.unlock(unlock).await.unwrap();
        self.process = Some(process);
        self.store = store;
    }

    async fn sync(&mut self) -> Result<(), tonic::Status> {
        let mut stream = self.store.sync(pb::SyncRequest { if_idle: false }).await?.into_inner();
        while stream.message().await?.is_some() {}
        Ok(())
    }

    /// Mailbox names and, in each, copy id → (message id, flags).
    async fn view(mail: &MailModel) -> Result<View, bitmask_mail::MailError> {
        let mut view = Vec::new();
        for mailbox in mail.mailboxes().await? {
            let (_, entries) = mail.snapshot(&mailbox.name).await?;
            let copies = entries
                .iter()
                .map(|entry| (entry.copy.to_string(), (entry.message.to_string(), entry.flags.to_list())));
            view.push((mailbox.name.clone(), copies.collect()));
        }
        Ok(view)
    }
}

type View = Vec<(String, BTreeMap<String, (String, Vec<String>)>)>;

/// What differs between two views, a line each (`<` the first, `>` the second).
fn differences(first: &View, second: &View) -> String {
    let mut lines = Vec::new();
    let names = |view: &View| view.iter().map(|(name, _)| name.clone()).collect::<Vec<_>>();
    if names(first) != names(second) {
        lines.push(format!("mailboxes < {:?}\n          > {:?}", names(first), names(second)));
    }
    let copies = |view: &View| -> BTreeMap<String, (String, String, Vec<String>)> {
        view.iter()
            .flat_map(|(name, copies)| {
                copies.iter().map(move |(copy, (message, flags))| {
                    (copy.clone(), (name.clone(), message.chars().skip(8).take(8).collect(), flags.clone()))
                })
            })
            .collect()
    };
    let (one, two) = (copies(first), copies(second));
    for copy in one.keys().chain(two.keys()).collect::<BTreeSet<_>>() {
        if one.get(copy) != two.get(copy) {
            lines.push(format!("{copy}: < {:?}  > {:?}", one.get(copy), two.get(copy)));
        }
    }
    lines.join("\n")
}

// --- what the test expects ----------------------------------------------------

#[derive(Default)]
struct Expect {
    /// Copies acknowledged to the client: copy id → SHA-256 of the bytes.
    acknowledged: HashMap<String, [u8; 32]>,
    /// The mailbox id each acknowledged copy was filed in.
    mailbox_of: HashMap<String, String>,
    /// Removed by an acknowledged operation: must be gone.
    removed: HashSet<String>,
    /// An operation that may or may not have happened touched these.
    doubtful: HashSet<String>,
    /// Mailbox ids deleted (copies filed there on another device meanwhile
    /// may go with them).
    deleted_mailboxes: HashSet<String>,
    /// Appends that failed part way: SHA-256 of their bytes (one copy each
    /// may be there).
    doubtful_appends: Vec<[u8; 32]>,
    /// Incoming items filed: their copy ids.
    incoming: BTreeSet<String>,
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn body(number: usize) -> Vec<u8> {
    let mut text = format!(
        "Message-ID: <m{number}@example.org>\r\nSubject: message {number}\r\nFrom: a@example.org\r\n\r\n\
         PLAINMARK{number} the body of message {number}\r\n"
    );
    if number == 0 {
        // Big enough that its body is kept as a blob.
        text.push_str(&"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\r\n".repeat(3000));
    }
    text.into_bytes()
}

fn incoming_body(item: usize, explained_by: Option<usize>) -> Vec<u8> {
    match explained_by {
        None => format!("Subject: incoming {item}\r\n\r\nPLAINMARK-in{item} decrypted\r\n").into_bytes(),
        Some(device) => format!(
            "Subject: Undecryptable incoming message\r\n\r\nitem {item} could not be decrypted on device {device}\r\n"
        )
        .into_bytes(),
    }
}

async fn copy_field(store: &mut StoreClient<Channel>, copy: &str, field: &str) -> Option<String> {
    let document = store.get(pb::GetRequest { id: copy.into(), include_deleted: false }).await.ok()?.into_inner();
    let value: serde_json::Value = serde_json::from_slice(&document.content).ok()?;
    value.get(field)?.as_str().map(str::to_owned)
}

async fn mailbox_id(store: &mut StoreClient<Channel>, name: &str) -> Option<String> {
    let request = pb::QueryRequest { index: "mailboxes-all".into(), ..Default::default() };
    let page = store.query(request).await.ok()?.into_inner();
    page.documents.into_iter().find_map(|document| {
        let value: serde_json::Value = serde_json::from_slice(&document.content).ok()?;
        (value.get("name")?.as_str()? == name).then_some(document.id)
    })
}

// --- one run ------------------------------------------------------------------

struct Run {
    rng: StdRng,
    seed: u64,
    devices: Vec<Device>,
    provider: Arc<FaultyProvider>,
    /// Serves `provider` for as long as the run lasts.
    _serving: TestProvider,
    expect: Expect,
    log: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Run {
    fn note(&mut self, line: String) {
        self.log.push(line);
    }

    fn fail(&self, what: &str) -> ! {
        let tail: Vec<&String> = self.log.iter().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
        let logs: Vec<String> = self.devices.iter().map(|device| device.world.path().display().to_string()).collect();
        panic!(
            "sync model, seed {} (replay: SYNC_MODEL_SEED={}): {what}\nlast steps (of {}):\n  {}\nstore logs under {logs:?}",
            self.seed,
            self.seed,
            self.log.len(),
            tail.iter().map(|line| line.as_str()).collect::<Vec<_>>().join("\n  ")
        );
    }

    async fn names(&self, device: usize) -> Vec<String> {
        match self.devices[device].mail.mailboxes().await {
            Ok(list) => list.into_iter().map(|mailbox| mailbox.name).collect(),
            Err(_) => vec!["INBOX".into()],
        }
    }

    async fn step(&mut self, step: usize) {
        let device = self.rng.gen_range(0..self.devices.len());
        let names = self.names(device).await;
        let mailbox = names.choose(&mut self.rng).cloned().unwrap_or_else(|| "INBOX".into());
        let roll = self.rng.gen_range(0..100);
        match roll {
            0..=21 => self.append(step, device, &mailbox).await,
            22..=29 => self.copy(step, device, &mailbox, &names).await,
            30..=41 => self.flags(step, device, &mailbox).await,
            42..=49 => self.expunge(step, device, &mailbox).await,
            50..=55 => self.mailboxes(step, device, &names).await,
            56..=61 => self.incoming(step, device).await,
            62..=81 => {
                let result = self.devices[device].sync().await;
                self.note(format!("{step}: device {device} sync: {:?}", result.err().map(|e| e.message().to_owned())));
            }
            82..=89 => self.faulty_sync(step, device).await,
            90..=95 => self.kill_store(step, device).await,
            _ => {
                self.provider.restart();
                self.note(format!("{step}: provider restarted"));
            }
        }
    }

    async fn append(&mut self, step: usize, device: usize, mailbox: &str) {
        let number = self.rng.gen_range(0..8);
        let raw = body(number);
        let flags = Flags { seen: self.rng.gen_bool(0.5), flagged: self.rng.gen_bool(0.2), ..Flags::default() };
        let date = (1_700_000_000 + self.rng.gen_range(0..1_000_000), 0);
        let mail = self.devices[device].mail.clone();
        let result = mail.append(mailbox, &raw, &flags, Some(date)).await;
        self.note(format!("{step}: device {device} append m{number} to {mailbox}: {:?}", result.as_ref().err()));
        if let Ok((_, uid)) = result {
            match mail.entry(mailbox, uid).await {
                Ok(Some(entry)) => self.acknowledge(device, entry.copy.to_string(), sha(&raw)).await,
                // The mailbox was renamed or deleted by a sync in between:
                // the copy cannot be named, only counted.
                _ => self.expect.doubtful_appends.push(sha(&raw)),
            }
        }
    }

    async fn acknowledge(&mut self, device: usize, copy: String, digest: [u8; 32]) {
        let mailbox = copy_field(&mut self.devices[device].store, &copy, "mailbox").await.unwrap_or_default();
        self.expect.mailbox_of.insert(copy.clone(), mailbox);
        self.expect.acknowledged.insert(copy, digest);
    }

    async fn pick(&mut self, device: usize, mailbox: &str) -> Vec<bitmask_mail::Entry> {
        let Ok((_, entries)) = self.devices[device].mail.snapshot(mailbox).await else { return Vec::new() };
        let count = self.rng.gen_range(0..=entries.len().min(3));
        entries.choose_multiple(&mut self.rng, count).cloned().collect()
    }

    async fn copy(&mut self, step: usize, device: usize, mailbox: &str, names: &[String]) {
        let picked = self.pick(device, mailbox).await;
        let destination = names.choose(&mut self.rng).cloned().unwrap_or_else(|| "INBOX".into());
        let remove = self.rng.gen_bool(0.5);
        let uids: Vec<u32> = picked.iter().map(|entry| entry.uid).collect();
        let mail = self.devices[device].mail.clone();
        let result = mail.copy(mailbox, &uids, &destination, remove).await;
        let what = if remove { "move" } else { "copy" };
        self.note(format!(
            "{step}: device {device} {what} {uids:?} {mailbox} → {destination}: {:?}",
            result.as_ref().err()
        ));
        let sources: Vec<String> = picked.iter().map(|entry| entry.copy.to_string()).collect();
        match result {
            Ok((_, pairs)) => {
                for (source, new) in pairs {
                    let Some(from) = picked.iter().find(|entry| entry.uid == source) else { continue };
                    let digest = self.expect.acknowledged.get(from.copy.as_ref()).copied();
                    let entry = mail.entry(&destination, new).await.ok().flatten();
                    match (entry, digest) {
                        (Some(entry), Some(digest)) => self.acknowledge(device, entry.copy.to_string(), digest).await,
                        (Some(entry), None) => {
                            self.expect.doubtful.insert(entry.copy.to_string());
                        }
                        (None, _) => self.expect.doubtful_appends.extend(digest),
                    }
                }
                if remove && mailbox != destination {
                    self.expect.removed.extend(sources);
                }
            }
            Err(_) if remove => self.expect.doubtful.extend(sources),
            Err(_) => {}
        }
    }

    async fn flags(&mut self, step: usize, device: usize, mailbox: &str) {
        let picked = self.pick(device, mailbox).await;
        let uids: Vec<u32> = picked.iter().map(|entry| entry.uid).collect();
        let mut flags = Flags::default();
        match self.rng.gen_range(0..4) {
            0 => flags.seen = true,
            1 => flags.flagged = true,
            2 => flags.deleted = true,
            _ => {
                flags.keywords.insert(format!("$Label{}", self.rng.gen_range(1..4)));
            }
        }
        let operation = if self.rng.gen_bool(0.6) { FlagOperation::Add } else { FlagOperation::Remove };
        let result = self.devices[device].mail.set_flags(mailbox, &uids, operation, &flags).await;
        self.note(format!(
            "{step}: device {device} flags {operation:?} {:?} on {uids:?} in {mailbox}: {:?}",
            flags.to_list(),
            result.err()
        ));
    }

    async fn expunge(&mut self, step: usize, device: usize, mailbox: &str) {
        let picked = self.pick(device, mailbox).await;
        let uids: Vec<u32> = picked.iter().map(|entry| entry.uid).collect();
        let deleted = Flags { deleted: true, ..Flags::default() };
        let mail = self.devices[device].mail.clone();
        let result = match mail.set_flags(mailbox, &uids, FlagOperation::Add, &deleted).await {
            Ok(_) => mail.expunge(mailbox, Some(&uids)).await,
            Err(error) => Err(error),
        };
        self.note(format!("{step}: device {device} expunge {uids:?} in {mailbox}: {result:?}"));
        match result {
            Ok(gone) => {
                for entry in picked.iter().filter(|entry| gone.contains(&entry.uid)) {
                    self.expect.removed.insert(entry.copy.to_string());
                }
            }
            Err(_) => self.expect.doubtful.extend(picked.iter().map(|entry| entry.copy.to_string())),
        }
    }

    async fn mailboxes(&mut self, step: usize, device: usize, names: &[String]) {
        let name = NAMES.choose(&mut self.rng).copied().unwrap();
        let mail = self.devices[device].mail.clone();
        if !names.iter().any(|known| known == name) {
            let result = mail.create_mailbox(name, SpecialUse::None).await;
            self.note(format!("{step}: device {device} create {name}: {:?}", result.err()));
            return;
        }
        if self.rng.gen_bool(0.5) {
            let to = NAMES.choose(&mut self.rng).copied().unwrap();
            let result = mail.rename_mailbox(name, to).await;
            self.note(format!("{step}: device {device} rename {name} → {to}: {:?}", result.err()));
            return;
        }
        let id = mailbox_id(&mut self.devices[device].store, name).await;
        let entries = mail.snapshot(name).await.map(|(_, entries)| entries).unwrap_or_default();
        let result = mail.delete_mailbox(name).await;
        self.note(format!("{step}: device {device} delete {name} ({id:?}): {:?}", result.as_ref().err()));
        self.expect.deleted_mailboxes.extend(id);
        let copies = entries.iter().map(|entry| entry.copy.to_string());
        match result {
            Ok(()) => self.expect.removed.extend(copies),
            Err(_) => self.expect.doubtful.extend(copies),
        }
    }

    /// The provider's incoming item `item`, filed by this device, decrypted
    /// or (as a device that could not decrypt it would) as an explanation.
    async fn incoming(&mut self, step: usize, device: usize) {
        let item = self.rng.gen_range(0..4);
        let explained = self.rng.gen_bool(0.3).then_some(device);
        let raw = incoming_body(item, explained);
        let copy = bitmask_mail::incoming_copy_id(&format!("item{item}"), explained.is_some());
        let mail = self.devices[device].mail.clone();
        let result = mail
            .file_incoming("INBOX", &raw, (1_700_000_000, 0), &format!("item{item}"), explained.is_some(), Vec::new())
            .await;
        self.note(format!(
            "{step}: device {device} file incoming {item} (explained: {}): {result:?}",
            explained.is_some()
        ));
        self.expect.incoming.insert(copy);
    }

    async fn faulty_sync(&mut self, step: usize, device: usize) {
        let fault = *[Fault::Away, Fault::CutPull, Fault::CutPush, Fault::AnswerLost].choose(&mut self.rng).unwrap();
        self.provider.set(fault);
        let result = self.devices[device].sync().await;
        self.provider.set(Fault::None);
        self.note(format!(
            "{step}: device {device} sync with {fault:?}: {:?}",
            result.err().map(|e| e.message().to_owned())
        ));
    }

    /// kill -9 of a device's store in the middle of a sync or a write.
    async fn kill_store(&mut self, step: usize, device: usize) {
        let delay = Duration::from_millis(self.rng.gen_range(0..40));
        let during_sync = self.rng.gen_bool(0.5);
        let number = self.rng.gen_range(0..8);
        let raw = body(number);
        let mail = self.devices[device].mail.clone();
        let mut store = self.devices[device].store.clone();
        let work = tokio::spawn(async move {
            if during_sync {
                let mut stream =
                    store.sync(pb::SyncRequest { if_idle: false }).await.map_err(|e| e.to_string())?.into_inner();
                while stream.message().await.map_err(|e| e.to_string())?.is_some() {}
                Ok(None)
            } else {
                let (_, uid) = mail.append("INBOX", &raw, &Flags::default(), None).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(Some(uid))
            }
        });
        tokio::time::sleep(delay).await;
        self.devices[device].restart_store().await;
        let result = work.await.unwrap();
        let what = if during_sync { "a sync".to_owned() } else { format!("an append of m{number}") };
        self.note(format!("{step}: device {device} store killed after {delay:?} during {what}: {result:?}"));
        match result {
            Ok(Some(uid)) => {
                let entry = self.devices[device].mail.entry("INBOX", uid).await.ok().flatten();
                match entry {
                    Some(entry) => self.acknowledge(device, entry.copy.to_string(), sha(&body(number))).await,
                    None => self.fail(&format!("an acknowledged append (UID {uid}) is not in INBOX after a restart")),
                }
            }
            Err(_) if !during_sync => self.expect.doubtful_appends.push(sha(&body(number))),
            _ => {}
        }
    }

    /// Syncs every device until a round changes nothing, then checks.
    async fn settle_and_check(&mut self) {
        self.provider.set(Fault::None);
        let mut views: Vec<Vec<View>> = Vec::new();
        for round in 0..8 {
            for device in 0..self.devices.len() {
                if let Err(status) = self.devices[device].sync().await {
                    self.fail(&format!("quiet sync {round} of device {device} failed: {}", status.message()));
                }
            }
            // The models follow what the syncs brought in.
            let mut settled = None;
            for _ in 0..100 {
                let mut now = Vec::new();
                for device in &self.devices {
                    // A mailbox may go between listing and reading it: read again.
                    if let Ok(view) = Device::view(&device.mail).await {
                        now.push(view);
                    }
                }
                if settled.as_ref() == Some(&now) {
                    break;
                }
                settled = Some(now);
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            let settled = settled.unwrap();
            let same = settled.windows(2).all(|pair| pair[0] == pair[1]);
            if same && views.last() == Some(&settled) {
                break;
            }
            views.push(settled);
        }
        let last: Vec<View> = views.last().cloned().unwrap_or_default();
        for (number, view) in last.iter().enumerate().skip(1) {
            if *view != last[0] {
                let differences = differences(&last[0], view);
                let stores = self.in_stores(&differences).await;
                self.fail(&format!(
                    "devices 0 and {number} differ after quiet syncs:\n{differences}\nstores:\n{stores}"
                ));
            }
        }
        for (device, shown) in last.iter().enumerate() {
            let status = self.devices[device].store.get_sync_status(pb::GetSyncStatusRequest {}).await.unwrap();
            let status = status.into_inner();
            if !status.last_result.starts_with("ok") || !status.quarantined.is_empty() {
                self.fail(&format!(
                    "device {device}'s sync: {} (quarantined {:?})",
                    status.last_result, status.quarantined
                ));
            }
            // What the device shows is what its store holds.
            let fresh = MailModel::new(bitmask_runtime::client::traced(bitmask_runtime::client::connect_unix_lazy(
                socket(&self.devices[device].world),
            )));
            let fresh_view = Device::view(&fresh).await.unwrap();
            if fresh_view != *shown {
                let differences = differences(shown, &fresh_view);
                self.fail(&format!("device {device} shows other than a fresh load of its store:\n{differences}"));
            }
        }
        self.check_contents(&last[0]).await;
        let everything = all_bytes(&self.provider.dir);
        for marker in ["PLAINMARK", "Undecryptable", "message 1"] {
            if contains(&everything, marker.as_bytes()) {
                self.fail(&format!("the provider holds plaintext: {marker}"));
            }
        }
    }

    /// What each device's store holds of the copies named in `text`.
    async fn in_stores(&mut self, text: &str) -> String {
        let mut lines = Vec::new();
        for line in text.lines() {
            let Some(copy) = line.split(':').next().filter(|copy| copy.starts_with("copy/")) else { continue };
            let mut states = Vec::new();
            for device in &mut self.devices {
                let request = pb::GetRequest { id: copy.to_owned(), include_deleted: true };
                states.push(match device.store.get(request).await {
                    Ok(document) if document.get_ref().deleted => "deleted".to_owned(),
                    Ok(document) => String::from_utf8_lossy(&document.get_ref().content).into_owned(),
                    Err(status) => format!("{:?}", status.code()),
                });
            }
            lines.push(format!("{copy}: {states:?}"));
        }
        lines.join("\n")
    }

    async fn check_contents(&mut self, view: &View) {
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for (name, copies) in view {
            for copy in copies.keys() {
                if let Some(other) = seen.insert(copy, name) {
                    self.fail(&format!("copy {copy} is in both {other} and {name}"));
                }
            }
        }
        let mut doubtful_appends = self.expect.doubtful_appends.clone();
        let mail = self.devices[0].mail.clone();
        for (name, copies) in view {
            for (copy, (message, _)) in copies {
                let raw = match mail.raw(message).await {
                    Ok(raw) => raw,
                    Err(error) => self.fail(&format!("{copy} in {name}: its message cannot be read: {error}")),
                };
                match self.expect.acknowledged.get(copy) {
                    Some(digest) if *digest != sha(&raw) => self.fail(&format!("{copy} in {name} has other bytes")),
                    Some(_) => {}
                    None if self.expect.incoming.contains(copy) || self.expect.doubtful.contains(copy) => {}
                    None => match doubtful_appends.iter().position(|digest| *digest == sha(&raw)) {
                        Some(index) => {
                            doubtful_appends.swap_remove(index);
                        }
                        None => self.fail(&format!("{copy} in {name} was never acknowledged (a duplicate?)")),
                    },
                }
                if self.expect.removed.contains(copy) {
                    self.fail(&format!("{copy} in {name} was removed by an acknowledged operation"));
                }
            }
        }
        let present: HashSet<&String> = view.iter().flat_map(|(_, copies)| copies.keys()).collect();
        for copy in &present {
            if let Some(item) = copy.strip_suffix("-explained")
                && present.contains(&item.to_owned())
            {
                self.fail(&format!("{copy} is shown beside the decrypted {item}"));
            }
        }
        for copy in self.expect.acknowledged.keys() {
            let mailbox = self.expect.mailbox_of.get(copy).cloned().unwrap_or_default();
            let may_be_gone = self.expect.removed.contains(copy)
                || self.expect.doubtful.contains(copy)
                || self.expect.deleted_mailboxes.contains(&mailbox);
            if !may_be_gone && !present.contains(copy) {
                self.fail(&format!("acknowledged {copy} (mailbox {mailbox}) is lost"));
            }
        }
    }
}

async fn run(seed: u64, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let count = rng.gen_range(1..=3);
    eprintln!("sync model: seed {seed}, {count} device(s), {steps} steps (replay: SYNC_MODEL_SEED={seed})");
    let dir = tempfile::tempdir().unwrap();
    let provider = Arc::new(FaultyProvider {
        dir: dir.path().to_owned(),
        storage: Mutex::new(Some(Arc::new(SledStorage::open(dir.path()).unwrap()))),
        fault: AtomicU8::new(Fault::None as u8),
    });
    let test_provider = TestProvider::start(provider.clone()).await;
    let mut devices = Vec::new();
    for number in 0..count {
        let mut device = device(&test_provider, number == 0).await;
        // The first device's sync puts the sealed secrets the others restore from.
        device.sync().await.unwrap();
        devices.push(device);
    }
    let mut run = Run {
        rng,
        seed,
        devices,
        provider,
        _serving: test_provider,
        expect: Expect::default(),
        log: Vec::new(),
        _dir: dir,
    };
    for step in 0..steps {
        run.step(step).await;
    }
    run.settle_and_check().await;
    eprintln!("sync model: seed {seed} converged");
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|value| value.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn devices_converge_whatever_the_order_of_operations_syncs_and_faults() {
    let steps = env_number("SYNC_MODEL_STEPS").unwrap_or(80) as usize;
    if let Some(seed) = env_number("SYNC_MODEL_SEED") {
        run(seed, steps).await;
        return;
    }
    let first = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    for offset in 0..env_number("SYNC_MODEL_RUNS").unwrap_or(4) {
        run(first.wrapping_mul(31).wrapping_add(offset), steps).await;
    }
}

/// The case, in every order of syncs: two devices append the same
/// bytes with different flags and internal dates; one deletes its copy (so
/// the message is collected there) while the other appends the bytes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_bytes_appended_deleted_and_appended_again_converge_in_any_order_of_syncs() {
    let raw = body(3);
    let firsts: [&[usize]; 5] = [&[], &[0], &[1], &[0, 1], &[1, 0]];
    let seconds: [&[usize]; 2] = [&[0, 1], &[1, 0]];
    for first in firsts {
        for second in seconds {
            let dir = tempfile::tempdir().unwrap();
            let provider = Arc::new(FaultyProvider {
                dir: dir.path().to_owned(),
                storage: Mutex::new(Some(Arc::new(SledStorage::open(dir.path()).unwrap()))),
                fault: AtomicU8::new(Fault::None as u8),
            });
            let serving = TestProvider::start(provider.clone()).await;
            let mut devices = vec![device(&serving, true).await];
            devices[0].sync().await.unwrap();
            devices.push(device(&serving, false).await);
            let seen = Flags { seen: true, ..Flags::default() };
            let flagged = Flags { flagged: true, ..Flags::default() };
            let (_, a_uid) = devices[0].mail.append("INBOX", &raw, &seen, Some((1_700_000_000, 0))).await.unwrap();
            let (_, b_uid) = devices[1].mail.append("INBOX", &raw, &flagged, Some((1_700_000_100, 60))).await.unwrap();
            let a_copy = devices[0].mail.entry("INBOX", a_uid).await.unwrap().unwrap().copy;
            let b_copy = devices[1].mail.entry("INBOX", b_uid).await.unwrap().unwrap().copy;
            for &device in first {
                devices[device].sync().await.unwrap();
            }
            // A deletes its copy; B appends the same bytes again.
            let deleted = Flags { deleted: true, ..Flags::default() };
            devices[0].mail.set_flags("INBOX", &[a_uid], FlagOperation::Add, &deleted).await.unwrap();
            devices[0].mail.expunge("INBOX", Some(&[a_uid])).await.unwrap();
            let (_, again) = devices[1].mail.append("INBOX", &raw, &Flags::default(), None).await.unwrap();
            let again = devices[1].mail.entry("INBOX", again).await.unwrap().unwrap().copy;
            for &device in second {
                devices[device].sync().await.unwrap();
            }
            let case = format!("syncs {first:?} before, {second:?} after");
            let mut views = Vec::new();
            for _ in 0..50 {
                for device in &mut devices {
                    device.sync().await.unwrap();
                }
                views.clear();
                for device in &devices {
                    views.push(Device::view(&device.mail).await.unwrap());
                }
                if views[0] == views[1] && views[0][0].1.len() == 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(views[0], views[1], "{case}: the devices differ:\n{}", differences(&views[0], &views[1]));
            let inbox = &views[0][0].1;
            let shown: BTreeSet<&str> = inbox.keys().map(String::as_str).collect();
            assert_eq!(
                shown,
                BTreeSet::from([&*b_copy, &*again]),
                "{case}: INBOX holds B's two copies, not A's {a_copy}"
            );
            assert_eq!(inbox[&*b_copy].1, ["\\Flagged"], "{case}");
            for (number, device) in devices.iter_mut().enumerate() {
                let message = &inbox[&*again].0;
                let read = device.mail.raw(message).await;
                let held = device.store.get(pb::GetRequest { id: message.clone(), include_deleted: true }).await;
                let held = held.map(|document| (document.get_ref().deleted, document.get_ref().rev.clone()));
                assert_eq!(
                    read.ok(),
                    Some(raw.clone()),
                    "{case}: the message on device {number} (its store: {held:?})"
                );
            }
        }
    }
}

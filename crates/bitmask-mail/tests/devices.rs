//! Two devices of one account syncing through a provider: a message filed
//! or deleted on one appears or disappears on the other, with local UIDs,
//! and flags set on either side reach the other.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::sync::Arc;
use std::time::Duration;

use bitmask_mail::{FlagOperation, Flags, MailModel};
use bitmask_proto::store::v1 as pb;
use bitmask_proto::store::v1::store_client::StoreClient;
use bitmask_sync_endpoint::SledStorage;
use bitmask_testkit::{KillOnDrop, TestProvider, World};
use tonic::transport::Channel;

const ACCOUNT: &str = "alice@example.org";
const PASSPHRASE: &str = "correct horse battery staple";

struct Device {
    _world: World,
    _process: KillOnDrop,
    store: StoreClient<Channel>,
    mail: Arc<MailModel>,
}

async fn device(provider: &TestProvider, first: bool) -> Device {
    let world = World::new();
    let mut process = world.spawn_service("bitmask-store", ACCOUNT);
    let socket = world.socket(ACCOUNT, "store");
    world.wait_for_socket(&socket, &mut process);
    let mut store = StoreClient::new(bitmask_runtime::client::connect_unix(&socket).await.unwrap());
    store.configure_sync(provider.configure_request()).await.unwrap();
    let initialize = pb::InitializeRequest { passphrase: PASSPHRASE.into(), from_provider: !first };
    store.initialize(initialize).await.unwrap();
    let mail = MailModel::new(bitmask_runtime::client::traced(bitmask_runtime::client::connect_unix_lazy(socket)));
    mail.mailboxes().await.unwrap();
    tokio::spawn(follow(mail.clone()));
    Device { _world: world, _process: process, store, mail }
}

async fn follow(mail: Arc<MailModel>) {
    loop {
        let _ = mail.clone().follow_sync().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sync(store: &mut StoreClient<Channel>) {
    let mut progress = store.sync(pb::SyncRequest { if_idle: false }).await.unwrap().into_inner();
    while progress.message().await.unwrap().is_some() {}
}

/// Waits (polling the model, no fixed sleep) until `check` holds.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mail_filed_or_deleted_on_one_device_appears_or_disappears_on_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let provider = TestProvider::start(Arc::new(SledStorage::open(dir.path()).unwrap())).await;
    let mut one = device(&provider, true).await;
    let attachment = "QUJD".repeat(1000);
    for n in 1..=3 {
        let raw = format!("Subject: message {n}\r\n\r\n{attachment}\r\n");
        one.mail.append("INBOX", raw.as_bytes(), &Flags::default(), None).await.unwrap();
    }
    let seen = Flags { seen: true, ..Flags::default() };
    one.mail.set_flags("INBOX", &[1], FlagOperation::Add, &seen).await.unwrap();
    sync(&mut one.store).await;

    let mut two = device(&provider, false).await;
    sync(&mut two.store).await;
    until("the three messages are on the second device", async || {
        two.mail.snapshot("INBOX").await.unwrap().1.len() == 3
    })
    .await;
    let (_, entries) = two.mail.snapshot("INBOX").await.unwrap();
    assert_eq!(entries.iter().map(|entry| entry.uid).collect::<Vec<_>>(), [1, 2, 3], "local UIDs given in order");
    assert!(entries.iter().any(|entry| entry.flags.seen), "flags came along");
    let raw = two.mail.raw(&entries[0].message).await.unwrap();
    assert!(String::from_utf8_lossy(&raw).starts_with("Subject: message"), "the message itself, reassembled");

    // Deleted on the first device: gone from the second.
    let deleted = Flags { deleted: true, ..Flags::default() };
    one.mail.set_flags("INBOX", &[2], FlagOperation::Add, &deleted).await.unwrap();
    one.mail.expunge("INBOX", None).await.unwrap();
    sync(&mut one.store).await;
    sync(&mut two.store).await;
    until("the expunged message is gone on the second device", async || {
        two.mail.snapshot("INBOX").await.unwrap().1.len() == 2
    })
    .await;

    // A flag set on the second device reaches the first.
    let flagged = Flags { flagged: true, ..Flags::default() };
    let uid = two.mail.snapshot("INBOX").await.unwrap().1.last().unwrap().uid;
    two.mail.set_flags("INBOX", &[uid], FlagOperation::Add, &flagged).await.unwrap();
    sync(&mut two.store).await;
    sync(&mut one.store).await;
    until("the flag reached the first device", async || {
        one.mail.snapshot("INBOX").await.unwrap().1.iter().any(|entry| entry.flags.flagged)
    })
    .await;
    // Filed on the second device: a new UID on the first.
    two.mail.append("INBOX", b"Subject: from two\r\n\r\nhi\r\n", &Flags::default(), None).await.unwrap();
    sync(&mut two.store).await;
    sync(&mut one.store).await;
    until("the second device's message is on the first", async || {
        one.mail.snapshot("INBOX").await.unwrap().1.last().is_some_and(|entry| entry.uid == 4)
    })
    .await;
}

/// The same bytes (or another message with the same attachment) appended on
/// one device while the other expunges its last copy of them: the second
/// device's message must stay readable on both, whichever syncs first. The
/// first device's expunge collects the content-addressed message and its
/// parts, which the second device already had; had it not written them again,
/// it would take their deletion and keep a copy without its message.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_appended_on_one_device_while_the_other_collects_its_documents_stays_readable() {
    let attachment = "QUJD".repeat(500);
    let message = |text: &str| {
        format!(
            "Subject: twice\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\n{text}\r\n--b\r\nContent-Type: application/octet-stream\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{attachment}\r\n--b--\r\n"
        )
    };
    let first = message("the first text");
    for (again, first_to_sync) in [(first.clone(), 0), (first.clone(), 1), (message("another text"), 0)] {
        let dir = tempfile::tempdir().unwrap();
        let provider = TestProvider::start(Arc::new(SledStorage::open(dir.path()).unwrap())).await;
        let mut one = device(&provider, true).await;
        one.mail.append("INBOX", first.as_bytes(), &Flags::default(), None).await.unwrap();
        sync(&mut one.store).await;
        let mut two = device(&provider, false).await;
        sync(&mut two.store).await;
        until("the message is on the second device", async || two.mail.snapshot("INBOX").await.unwrap().1.len() == 1)
            .await;

        // The first device expunges its only copy (and collects its
        // documents); the second files `again` in Drafts, before either syncs.
        let deleted = Flags { deleted: true, ..Flags::default() };
        one.mail.set_flags("INBOX", &[1], FlagOperation::Add, &deleted).await.unwrap();
        one.mail.expunge("INBOX", None).await.unwrap();
        let seen = Flags { seen: true, ..Flags::default() };
        two.mail.append("Drafts", again.as_bytes(), &seen, Some((1_700_000_000, 60))).await.unwrap();

        let mut devices = [&mut one, &mut two];
        devices.rotate_left(first_to_sync);
        for _ in 0..2 {
            for device in devices.iter_mut() {
                sync(&mut device.store).await;
            }
        }
        for (name, device) in [("first", &one), ("second", &two)] {
            until(&format!("the first device's copy is gone on the {name} device"), async || {
                device.mail.snapshot("INBOX").await.unwrap().1.is_empty()
            })
            .await;
            until(&format!("the second device's copy is on the {name} device"), async || {
                device.mail.snapshot("Drafts").await.unwrap().1.len() == 1
            })
            .await;
            let (_, entries) = device.mail.snapshot("Drafts").await.unwrap();
            let read = device.mail.raw(&entries[0].message).await;
            assert!(
                read.as_deref().is_ok_and(|read| read == again.as_bytes()),
                "the message is readable on the {name} device (device {first_to_sync} synced first): {:?}",
                read.err()
            );
        }
    }
}

/// One incoming item filed apart by two devices (decrypted on one, as an
/// explanation on the other, before either synced): both devices end with
/// the decrypted message only, each without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn an_incoming_item_filed_apart_by_two_devices_ends_as_one_message_on_both() {
    let dir = tempfile::tempdir().unwrap();
    let provider = TestProvider::start(Arc::new(SledStorage::open(dir.path()).unwrap())).await;
    let mut one = device(&provider, true).await;
    sync(&mut one.store).await;
    let mut two = device(&provider, false).await;
    sync(&mut two.store).await;

    let decrypted = b"Subject: hello\r\nX-Leap-Encryption: decrypted\r\n\r\nthe text\r\n";
    let explanation = b"Subject: Undecryptable incoming message\r\nX-Leap-Encryption: failed\r\n\r\nsorry\r\n";
    let item = "0123456789abcdef";
    let filed = one.mail.file_incoming("INBOX", decrypted, (1_700_000_000, 0), item, false, Vec::new()).await.unwrap();
    assert!(filed.is_some());
    let filed = two.mail.file_incoming("INBOX", explanation, (1_700_000_001, 0), item, true, Vec::new()).await.unwrap();
    assert!(filed.is_some());
    for _ in 0..2 {
        sync(&mut one.store).await;
        sync(&mut two.store).await;
    }
    let read = async |device: &Device| {
        let (_, entries) = device.mail.snapshot("INBOX").await.unwrap();
        let mut raws = Vec::new();
        for entry in entries {
            raws.push(device.mail.raw(&entry.message).await.unwrap());
        }
        raws
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (on_one, on_two) = (read(&one).await, read(&two).await);
        if on_one.len() == 1 && on_one == on_two {
            assert_eq!(on_one[0], decrypted, "the decrypted copy wins");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the devices show {:?} and {:?}",
            on_one.iter().map(|raw| String::from_utf8_lossy(raw).into_owned()).collect::<Vec<_>>(),
            on_two.iter().map(|raw| String::from_utf8_lossy(raw).into_owned()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

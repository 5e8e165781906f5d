//! The mail model against a real `bitmask-store` process: default
//! mailboxes, UIDs stable across restarts and ascending under concurrent
//! appends, flags, copy and move, expunge collecting what no copy needs.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::sync::Arc;

use bitmask_mail::{FlagOperation, Flags, MailError, MailEvent, MailModel, SpecialUse};
use bitmask_proto::store::v1 as store_pb;
use bitmask_proto::store::v1::store_client::StoreClient;
use bitmask_testkit::{KillOnDrop, World};

const ACCOUNT: &str = "alice@example.org";

async fn store(world: &World) -> (KillOnDrop, StoreClient<tonic::transport::Channel>) {
    let mut process = world.spawn_service("bitmask-store", ACCOUNT);
    let socket = world.socket(ACCOUNT, "store");
    world.wait_for_socket(&socket, &mut process);
    let client = StoreClient::new(bitmask_runtime::client::connect_unix(&socket).await.unwrap());
    (process, client)
}

fn model(world: &World) -> Arc<MailModel> {
    let socket = world.socket(ACCOUNT, "store");
    MailModel::new(bitmask_runtime::client::traced(bitmask_runtime::client::connect_unix_lazy(socket)))
}

fn message(subject: &str, attachment: &str) -> Vec<u8> {
    format!(
        "From: bob@example.org\r\nTo: {ACCOUNT}\r\nSubject: {subject}\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\n{subject}\r\n--b\r\nContent-Type: application/octet-stream\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{attachment}\r\n--b--\r\n"
    )
    .into_bytes()
}

async fn exists(store: &mut StoreClient<tonic::transport::Channel>, id: &str) -> bool {
    store.get(store_pb::GetRequest { id: id.into(), include_deleted: false }).await.is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn uids_flags_copies_and_expunge() {
    let world = World::new();
    let (process, mut client) = store(&world).await;
    client.initialize(store_pb::InitializeRequest { passphrase: "pass".into(), from_provider: false }).await.unwrap();
    let mail = model(&world);

    let names: Vec<String> = mail.mailboxes().await.unwrap().into_iter().map(|mailbox| mailbox.name).collect();
    assert_eq!(names, ["INBOX", "Drafts", "Junk", "Sent", "Trash"]);
    let sent = mail.mailbox("Sent").await.unwrap();
    assert_eq!(sent.special_use, SpecialUse::Sent);
    assert_eq!(mail.mailbox("inbox").await.unwrap().name, "INBOX", "INBOX is case-insensitive");

    // Concurrent appends: distinct UIDs, ascending in the order they were filed.
    let attachment = "QUJD".repeat(1000);
    let mut events = mail.subscribe();
    let tasks: Vec<_> = (0..20)
        .map(|n| {
            let mail = mail.clone();
            let raw = message(&format!("message {n}"), &attachment);
            tokio::spawn(async move { mail.append("INBOX", &raw, &Flags::default(), None).await.unwrap() })
        })
        .collect();
    let mut uids = Vec::new();
    for task in tasks {
        uids.push(task.await.unwrap().1);
    }
    uids.sort_unstable();
    assert_eq!(uids, (1..=20).collect::<Vec<u32>>());
    let mut announced = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let MailEvent::Added { uid, .. } = event {
            announced.push(uid);
        }
    }
    assert_eq!(announced, (1..=20).collect::<Vec<u32>>(), "announced in UID order");
    let (inbox, entries) = mail.snapshot("INBOX").await.unwrap();
    assert_eq!((inbox.messages, inbox.uid_next, inbox.recent), (20, 21, 20));
    let raw = message("message 3", &attachment);
    let third = entries.iter().find(|entry| entry.size == raw.len() as u64 && entry.uid > 0).unwrap();
    assert_eq!(mail.raw(&third.message).await.unwrap().len(), raw.len());
    // The same attachment is stored once.
    let split = bitmask_mail::split::split(&raw);
    assert_eq!(split.contents.len(), 1);
    assert!(exists(&mut client, &split.contents[0].0).await);
    let part = store_pb::IndexValue { value: Some(store_pb::index_value::Value::Text(split.contents[0].0.clone())) };
    let contents = client
        .query(store_pb::QueryRequest { index: "messages-by-part".into(), equal: vec![part], ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .documents;
    assert_eq!(contents.len(), 20, "every message refers to the shared content");

    // \Recent: the first session claims them, the next sees none.
    assert_eq!(mail.claim_recent("INBOX").await.unwrap(), 1);
    assert_eq!(mail.claim_recent("INBOX").await.unwrap(), 21);
    assert_eq!(mail.mailbox("INBOX").await.unwrap().recent, 0);

    // Flags.
    let seen = Flags { seen: true, keywords: ["$Forwarded".to_owned()].into(), ..Flags::default() };
    let changed = mail.set_flags("INBOX", &[1, 2], FlagOperation::Add, &seen).await.unwrap();
    assert_eq!(changed.len(), 2);
    assert!(changed[0].flags.seen && changed[0].modseq > entries[0].modseq);
    assert!(mail.set_flags("INBOX", &[1], FlagOperation::Add, &seen).await.unwrap().is_empty(), "no change");
    assert_eq!(mail.mailbox("INBOX").await.unwrap().unseen, 18);

    // Copy and move.
    mail.create_mailbox("Archive/2026", SpecialUse::None).await.unwrap();
    assert!(mail.mailbox("Archive").await.is_ok(), "the parent is created too");
    assert!(matches!(mail.create_mailbox("Archive/2026", SpecialUse::None).await, Err(MailError::MailboxExists(_))));
    let (validity, pairs) = mail.copy("INBOX", &[1, 2, 3], "Archive/2026", false).await.unwrap();
    assert_eq!(pairs, [(1, 1), (2, 2), (3, 3)]);
    assert_eq!(validity, mail.mailbox("Archive/2026").await.unwrap().uid_validity);
    let (_, copied) = mail.snapshot("Archive/2026").await.unwrap();
    assert!(copied[0].flags.seen, "flags are copied");
    let (_, moved) = mail.copy("INBOX", &[4, 5], "Trash", true).await.unwrap();
    assert_eq!(moved, [(4, 1), (5, 2)]);
    assert_eq!(mail.mailbox("INBOX").await.unwrap().messages, 18);

    // Expunge: only \Deleted, and documents are collected when no copy needs them.
    let deleted = Flags { deleted: true, ..Flags::default() };
    mail.set_flags("Trash", &[1, 2], FlagOperation::Add, &deleted).await.unwrap();
    let trashed: Vec<String> =
        mail.snapshot("Trash").await.unwrap().1.iter().map(|entry| entry.message.to_string()).collect();
    assert_eq!(mail.expunge("Trash", None).await.unwrap(), [1, 2]);
    for message in &trashed {
        assert!(!exists(&mut client, message).await, "an unreferenced message is collected");
    }
    mail.set_flags("INBOX", &[1], FlagOperation::Add, &deleted).await.unwrap();
    let first = mail.entry("INBOX", 1).await.unwrap().unwrap().message;
    assert_eq!(mail.expunge("INBOX", Some(&[1, 6])).await.unwrap(), [1]);
    assert!(exists(&mut client, &first).await, "still referenced by the copy in Archive/2026");

    // Restart everything: UIDs, UIDVALIDITY and flags are as they were.
    let before: Vec<(u32, bool)> =
        mail.snapshot("INBOX").await.unwrap().1.iter().map(|entry| (entry.uid, entry.flags.seen)).collect();
    let validity_before = mail.mailbox("INBOX").await.unwrap().uid_validity;
    drop(mail);
    drop(process);
    let (_process, mut client) = store(&world).await;
    client
        .unlock(store_pb::UnlockRequest {
            credential: Some(store_pb::unlock_request::Credential::Passphrase("pass".into())),
        })
        .await
        .unwrap();
    let mail = model(&world);
    let after: Vec<(u32, bool)> =
        mail.snapshot("INBOX").await.unwrap().1.iter().map(|entry| (entry.uid, entry.flags.seen)).collect();
    assert_eq!(after, before);
    let inbox = mail.mailbox("INBOX").await.unwrap();
    assert_eq!((inbox.uid_validity, inbox.uid_next), (validity_before, 21));
    let (_, uid) = mail.append("INBOX", b"Subject: after\r\n\r\nx\r\n", &Flags::default(), None).await.unwrap();
    assert_eq!(uid, 21, "UIDs go on where they were");

    // Mailboxes: rename moves the children, delete collects.
    mail.rename_mailbox("Archive", "Old").await.unwrap();
    assert!(mail.mailbox("Old/2026").await.is_ok());
    assert!(mail.mailbox("Archive/2026").await.is_err());
    mail.delete_mailbox("Old/2026").await.unwrap();
    assert!(!exists(&mut client, &first).await, "its last copy went with the mailbox");
    assert!(matches!(mail.delete_mailbox("INBOX").await, Err(MailError::Refused(_))));
}

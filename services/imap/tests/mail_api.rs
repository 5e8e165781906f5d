//! The protocol-agnostic Mail API on `imap.sock`, through the whole stack.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::time::Duration;

use bitmask_proto::mail::v1 as pb;
use bitmask_proto::mail::v1::mail_client::MailClient;
use bitmask_testkit::{World, free_port};
use tonic::Code;

const ACCOUNT: &str = "alice@example.org";

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: Bob <bob@example.org>\r\nTo: Alice <{ACCOUNT}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@x>\r\n\
         Date: Mon, 2 Feb 2026 10:00:00 +0100\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
         --b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello from {subject}\r\n\
         --b\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\nContent-Disposition: attachment; filename=\"a.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_web_client_reads_and_files_mail_through_the_mail_api() {
    let world = World::new();
    let _daemon = world.bitmaskd(&[]);
    let (imap, smtp) = (free_port().to_string(), free_port().to_string());
    world.ctl_json(&["account", "add", ACCOUNT, "--imap-port", &imap, "--smtp-port", &smtp]);
    let passphrase = world.path().join("passphrase");
    std::fs::write(&passphrase, "pass\n").unwrap();
    world.ctl_json(&["account", "start", ACCOUNT, "--passphrase-file", passphrase.to_str().unwrap()]);
    let channel = bitmask_runtime::client::connect_unix(world.socket(ACCOUNT, "imap")).await.unwrap();
    let mut mail = MailClient::new(channel);

    let boxes = mail.list_mailboxes(pb::ListMailboxesRequest::default()).await.unwrap().into_inner().mailboxes;
    let names: Vec<&str> = boxes.iter().map(|mailbox| mailbox.name.as_str()).collect();
    assert_eq!(names, ["INBOX", "Drafts", "Junk", "Sent", "Trash"]);
    assert_eq!(boxes[3].special_use(), pb::SpecialUse::Sent);

    let mut watch = mail.watch(pb::WatchRequest { mailbox: "INBOX".into() }).await.unwrap().into_inner();
    let added = mail
        .add_message(pb::AddMessageRequest {
            mailbox: "INBOX".into(),
            raw: message("first"),
            flags: None,
            internal_date: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((added.mailbox.as_str(), added.uid), ("INBOX", 1));
    let event = tokio::time::timeout(Duration::from_secs(1), watch.message()).await.unwrap().unwrap().unwrap();
    match event.event.unwrap() {
        pb::mail_event::Event::Added(summary) => assert_eq!((summary.uid, summary.subject.as_str()), (1, "first")),
        other => panic!("expected an addition, got {other:?}"),
    }
    for subject in ["second", "third"] {
        let request =
            pb::AddMessageRequest { mailbox: "INBOX".into(), raw: message(subject), flags: None, internal_date: None };
        mail.add_message(request).await.unwrap();
    }

    let page = mail
        .list_messages(pb::ListMessagesRequest { mailbox: "INBOX".into(), after_uid: 0, limit: 2, descending: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.messages.iter().map(|m| m.uid).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(page.next_after_uid, 2);
    assert_eq!(page.messages[0].from[0].address, "bob@example.org");
    assert!(page.messages[0].has_attachments);
    let rest = mail
        .list_messages(pb::ListMessagesRequest { mailbox: "INBOX".into(), after_uid: 2, limit: 2, descending: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((rest.messages.len(), rest.next_after_uid), (1, 0));

    let reference = pb::MessageRef { mailbox: "INBOX".into(), uid: 2, uid_validity: added.uid_validity };
    let got = mail
        .get_message(pb::GetMessageRequest { message: Some(reference.clone()), mark_seen: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.summary.as_ref().unwrap().subject, "second");
    assert!(got.summary.unwrap().flags.unwrap().seen, "marked seen");
    assert_eq!(got.parts.len(), 2);
    assert_eq!((got.parts[0].section.as_str(), got.parts[0].text.trim()), ("1", "Hello from second"));
    assert_eq!((got.parts[1].content_type.as_str(), got.parts[1].filename.as_str()), ("application/pdf", "a.pdf"));
    let mut raw = mail
        .get_raw_message(pb::GetRawMessageRequest {
            message: Some(reference.clone()),
            section: String::new(),
            decode: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = raw.message().await.unwrap() {
        bytes.extend(chunk.data);
    }
    assert_eq!(bytes, message("second"));
    let mut attachment = mail
        .get_raw_message(pb::GetRawMessageRequest {
            message: Some(reference.clone()),
            section: "2".into(),
            decode: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(attachment.message().await.unwrap().unwrap().data, b"%PDF-1.4\n");
    let stale = pb::MessageRef { uid_validity: 1, ..reference.clone() };
    let refused = mail.get_message(pb::GetMessageRequest { message: Some(stale), mark_seen: false }).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "a stale UIDVALIDITY is refused");

    let found = mail
        .search(pb::SearchRequest { mailbox: "INBOX".into(), criteria: "UNSEEN SUBJECT third".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.uids, [3]);
    let bad = mail.search(pb::SearchRequest { mailbox: "INBOX".into(), criteria: "FROBNICATE".into() }).await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);

    let flagged = pb::Flags { flagged: true, keywords: vec!["work".into()], ..Default::default() };
    let set = mail
        .set_flags(pb::SetFlagsRequest {
            mailbox: "INBOX".into(),
            uids: vec![1, 3],
            operation: pb::FlagOperation::Add.into(),
            flags: Some(flagged),
            unchanged_since: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.updated.len(), 2);

    mail.create_mailbox(pb::CreateMailboxRequest { name: "Projects".into(), special_use: 0 }).await.unwrap();
    let moved = mail
        .move_messages(pb::MoveMessagesRequest {
            mailbox: "INBOX".into(),
            uids: vec![3],
            destination: "Projects".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((moved.source_uids, moved.destination_uids), (vec![3], vec![1]));
    let deleted = mail
        .delete_messages(pb::DeleteMessagesRequest { mailbox: "INBOX".into(), uids: vec![1] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.expunged, [1]);
    let status = mail.get_mail_status(pb::GetMailStatusRequest {}).await.unwrap().into_inner();
    let inbox = status.mailboxes.iter().find(|mailbox| mailbox.name == "INBOX").unwrap();
    assert_eq!((inbox.messages, inbox.unseen), (1, 0));
    let missing = mail.delete_mailbox(pb::DeleteMailboxRequest { name: "Nowhere".into() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

//! The MIME gate (`bitmask_mime`) and what reads mail through it: the mail
//! model's split into documents, the SMTP gateway's PGP/MIME composer and
//! the key service's reading of what a message offers as keys. The input is
//! one message; everything runs on a thread with a 2 MiB stack, a Tokio
//! worker's, where a nesting bomb that got past the gate would overflow.
//!
//! Checked: no panic and no stack overflow; a message the gate passes is
//! given to mail-parser and a message it refuses is not; splitting and assembling gives the same bytes back; the
//! composer's entities have no bare CR unless the message had one; an `OpenPGP:` URL the key service
//! would fetch is https on the sender's own domain.

#![no_main]

use bitmask_mail::split;
use bitmask_smtp::pgpmime::{self, KeyAttachment};
use libfuzzer_sys::fuzz_target;

const STACK: usize = 2 * 1024 * 1024;

fn gate(raw: &[u8]) {
    let passed = bitmask_mime::check(raw).is_ok();
    // (mail-parser makes nothing of some bytes, an empty message say.)
    assert!(bitmask_mime::parse(raw).is_none() || passed, "parsed what the gate refuses");
    assert!(bitmask_mime::parse_headers(raw).is_none() || passed, "headers parsed of what the gate refuses");
    assert!(bitmask_mime::header_section_len(raw) <= raw.len());
}

fn split_round_trip(raw: &[u8]) {
    let split = split::split(raw);
    assert_eq!(split.size, raw.len() as u64);
    assert_eq!(split.message_id, split::message_id(raw));
    let back = split::assemble(&split.skeleton, split.size, |id| {
        split.contents.iter().find(|(known, _)| known == id).map(|(_, bytes)| bytes.as_slice())
    })
    .expect("every content a skeleton names is among the split's contents");
    assert!(back == raw, "split and assembled, the message is not the same bytes");
    for (id, bytes) in &split.contents {
        assert_eq!(*id, split::content_id(bytes));
    }
}

fn has_bare_cr(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(at, byte)| *byte == b'\r' && bytes.get(at + 1) != Some(&b'\n'))
}

fn compose(raw: &[u8]) {
    let Ok(prepared) = pgpmime::prepare(raw) else { return };
    let key = KeyAttachment {
        filename: "OpenPGP_0x1234ABCD.asc".into(),
        armored_public_key:
            b"-----BEGIN PGP PUBLIC KEY BLOCK-----\r\n\r\nAAAA\r\n-----END PGP PUBLIC KEY BLOCK-----\r\n".to_vec(),
    };
    let inner = prepared.inner_for_encryption(Some(&key));
    let signing = prepared.entity_for_signing(None);
    // A message without bare CRs (all the SMTP session hands on) gives
    // entities without them: another MTA could take one for a line end.
    if !has_bare_cr(raw) {
        for entity in [&inner, &signing] {
            assert!(!has_bare_cr(entity), "an entity to encrypt or sign has a bare CR");
        }
    }
    let extra = [("OpenPGP".to_owned(), "id=1234ABCD; preference=signencrypt".to_owned())];
    let armor = b"-----BEGIN PGP MESSAGE-----\r\n\r\nhQEMA\r\n-----END PGP MESSAGE-----\r\n";
    if let Ok(encrypted) = prepared.encrypted(armor, &extra) {
        assert!(bitmask_mime::check(&encrypted).is_ok() || bitmask_mime::check(raw).is_err());
    }
    let signature = b"-----BEGIN PGP SIGNATURE-----\r\n\r\niQEz\r\n-----END PGP SIGNATURE-----\r\n";
    let _ = prepared.signed(&signing, signature, "pgp-sha256", &extra);
    let _ = (prepared.recipients(), prepared.sender(), prepared.is_encrypted());
}

fn learn(raw: &[u8]) {
    let offered = bitmask_keys::learn::offered(raw);
    let Some(header) = offered.openpgp_header else { return };
    let Some(fetched) = header.url else { return };
    let sender = offered.sender.expect("a URL is only taken from a message with a sender");
    let (_, domain) = sender.rsplit_once('@').expect("a sender is an address");
    let parsed = url::Url::parse(&fetched).unwrap_or_else(|error| panic!("{fetched:?} is not a URL: {error}"));
    assert_eq!(parsed.scheme(), "https", "{fetched:?}");
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    let domain = domain.to_ascii_lowercase();
    assert!(
        host == domain || host.ends_with(&format!(".{domain}")),
        "the key service would fetch {fetched:?} (host {host:?}) for a sender at {domain:?}"
    );
}

fuzz_target!(|raw: &[u8]| {
    if raw.len() > 256 * 1024 {
        return;
    }
    let raw = raw.to_vec();
    let worker = std::thread::Builder::new().stack_size(STACK).spawn(move || {
        gate(&raw);
        split_round_trip(&raw);
        compose(&raw);
        learn(&raw);
    });
    if let Err(panic) = worker.expect("a thread starts").join() {
        std::panic::resume_unwind(panic);
    }
});

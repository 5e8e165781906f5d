//! The incoming PGP/MIME steps of the mail model (`bitmask_mail::incoming`)
//! with a fake key service: the input is the message as the sender sent it;
//! its last bytes choose what the "decryption" gives back (the ciphertext
//! itself as plaintext, the same with bare LFs, a multipart/signed entity,
//! a failure) and what the signature check says.
//!
//! Checked: no panic; the steps end in a message to file after at most a
//! decryption and a verification; the filed message starts with our two
//! `X-Leap-*` fields and, as a mail client reads its header, has each of
//! them once (a sender cannot smuggle in a second `X-Leap-Signature`);
//! a valid signature is reported only for the From address the signer
//! has; the explanation messages built around the bytes pass the MIME gate.

#![no_main]

use bitmask_fuzz::Choices;
use bitmask_mail::incoming::{self, Checked, ENCRYPTION_HEADER, SIGNATURE_HEADER, Signature, Step};
use libfuzzer_sys::fuzz_target;

const SIGNED_ENTITY: &[u8] = b"Content-Type: multipart/signed; micalg=pgp-sha256;\r\n protocol=\"application/pgp-signature\"; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\nX-Leap-Signature: valid\r\n\r\nsigned text\r\n--b\r\nContent-Type: application/pgp-signature\r\n\r\n-----BEGIN PGP SIGNATURE-----\r\n\r\niQEz\r\n-----END PGP SIGNATURE-----\r\n--b--\r\n";

fn checked(choice: u8, message: &[u8]) -> Checked {
    match choice % 5 {
        0 => Checked::None,
        1 => Checked::Invalid,
        2 => Checked::UnknownSigner,
        // Signed by a key of the message's own From address.
        3 => Checked::Valid {
            fingerprint: "0123456789ABCDEF0123456789ABCDEF01234567".into(),
            signer_addresses: incoming::from_address(message).into_iter().collect(),
        },
        _ => Checked::Valid {
            fingerprint: "FEDCBA9876543210FEDCBA9876543210FEDCBA98".into(),
            signer_addresses: vec!["mallory@example.net".into()],
        },
    }
}

fn count_field(raw: &[u8], name: &str) -> usize {
    let Some(message) = bitmask_mime::parse_headers(raw) else { return 1 };
    message.headers().iter().filter(|header| header.name.as_str().eq_ignore_ascii_case(name)).count()
}

fuzz_target!(|data: &[u8]| {
    if data.len() > 128 * 1024 {
        return;
    }
    let mut choices = Choices::new(data);
    let (decryption, signature) = (choices.byte(), choices.byte());
    let mut step = incoming::process(data.to_vec());
    let mut steps = 0;
    let filed = loop {
        steps += 1;
        assert!(steps <= 3, "more than a decryption and a verification");
        step = match step {
            Step::File(filed) => break filed,
            Step::Decrypt(then) => {
                let ciphertext = then.ciphertext().to_vec();
                match decryption % 4 {
                    0 => then.decrypted(ciphertext, checked(signature, data)),
                    1 => {
                        let bare: Vec<u8> = ciphertext.iter().copied().filter(|byte| *byte != b'\r').collect();
                        then.decrypted(bare, checked(signature, data))
                    }
                    2 => then.decrypted(SIGNED_ENTITY.to_vec(), Checked::None),
                    _ => then.failed(),
                }
            }
            Step::Verify { data: signed, detached: _, then } => {
                let _ = signed.len();
                then.verified(checked(signature >> 3, data))
            }
        };
    };
    let raw = &filed.raw;
    let first = format!("{ENCRYPTION_HEADER}: {}\r\n", filed.encryption.header_value());
    let second = format!("{SIGNATURE_HEADER}: {}\r\n", filed.signature.header_value());
    assert!(raw.starts_with(format!("{first}{second}").as_bytes()), "the filed message does not start with our marks");
    assert_eq!(
        count_field(raw, ENCRYPTION_HEADER),
        1,
        "{ENCRYPTION_HEADER} appears more than once as a client reads it"
    );
    assert_eq!(count_field(raw, SIGNATURE_HEADER), 1, "{SIGNATURE_HEADER} appears more than once as a client reads it");
    if let Signature::Valid { .. } = filed.signature {
        let sender = filed.verified_sender.as_deref().expect("a valid signature names its sender");
        assert_eq!(incoming::from_address(raw).as_deref(), Some(sender), "valid for another address than From");
    }

    let explanation = incoming::undecryptable("bob@example.org", "item1", 1_700_000_000_000, "not for us", data);
    assert!(bitmask_mime::check(&explanation.raw).is_ok(), "an explanation does not pass the MIME gate");
    let unfiled = incoming::unfiled("bob@example.org", "item1", 1_700_000_000_000, 4, "damaged", data);
    assert!(bitmask_mime::check(&unfiled.raw).is_ok(), "an explanation does not pass the MIME gate");
});

//! PGP/MIME composition against GnuPG, which this project did not write:
//! Alice's gpg signs and encrypts what `pgpmime` gives it, the composed
//! message is taken apart the way a receiving client does (RFC 3156: the
//! signed part's exact bytes between its delimiter lines), and Bob's gpg
//! verifies and decrypts it, judged by its status lines. Plus recipients,
//! already-encrypted mail and malformed input.
#![allow(clippy::disallowed_methods)] // tests read what the code under test wrote with mail-parser itself
#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::path::Path;

use bitmask_smtp::pgpmime::{self, ComposeError, KeyAttachment, Prepared};
use bitmask_testkit::gpg::Gpg;
use mail_parser::{MessageParser, MimeHeaders as _, PartType};

// ---------------------------------------------------------------------------
// GnuPG harness: one home directory per account, per test.

/// What these tests ask of GnuPG beyond the shared harness.
trait GpgExt: Sized {
    /// A fresh keyring with a key for `address`: Ed25519 signing, Cv25519
    /// encryption subkey.
    fn account(address: &str) -> Self;
    fn export(&self, address: &str, armor: bool) -> Vec<u8>;
    fn import(&self, key: &[u8]);
    fn detach_sign(&self, signer: &str, data: &[u8]) -> Vec<u8>;
    fn encrypt_sign(&self, signer: &str, recipient: &str, data: &[u8]) -> Vec<u8>;
    fn verify(&self, signature: &[u8], data: &[u8]) -> String;
    fn decrypt(&self, ciphertext: &[u8]) -> (Vec<u8>, String);
}

impl GpgExt for Gpg {
    fn account(address: &str) -> Self {
        let gpg = Gpg::new();
        gpg.ok(&["--quick-gen-key", address, "ed25519", "sign,cert", "never"], b"");
        let fingerprint = gpg.fingerprint(address);
        gpg.ok(&["--quick-add-key", &fingerprint, "cv25519", "encr", "never"], b"");
        gpg
    }

    fn export(&self, address: &str, armor: bool) -> Vec<u8> {
        let args: &[&str] = if armor { &["--export", "--armor", address] } else { &["--export", address] };
        self.ok(args, b"").stdout
    }

    fn import(&self, key: &[u8]) {
        self.ok(&["--import"], key);
    }

    /// `gpg --detach-sign --armor --digest-algo SHA256` over `data`.
    fn detach_sign(&self, signer: &str, data: &[u8]) -> Vec<u8> {
        let input = self.file("to-sign", data);
        let args = ["--local-user", signer, "--detach-sign", "--armor", "--digest-algo", "SHA256", "--output", "-"];
        let mut args = args.to_vec();
        args.push(path(&input));
        self.ok(&args, b"").stdout
    }

    /// `gpg --encrypt --sign --armor` of `data` to `recipient`.
    fn encrypt_sign(&self, signer: &str, recipient: &str, data: &[u8]) -> Vec<u8> {
        let input = self.file("to-encrypt", data);
        let args =
            ["--local-user", signer, "--recipient", recipient, "--encrypt", "--sign", "--armor", "--output", "-"];
        let mut args = args.to_vec();
        args.push(path(&input));
        self.ok(&args, b"").stdout
    }

    /// `gpg --verify` of a detached signature: the status lines.
    fn verify(&self, signature: &[u8], data: &[u8]) -> String {
        let signature = self.file("signature.asc", signature);
        let data = self.file("signed-data", data);
        let output = self.run(&["--status-fd", "1", "--verify", path(&signature), path(&data)], b"");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `gpg --decrypt`: the plaintext and the status lines.
    fn decrypt(&self, ciphertext: &[u8]) -> (Vec<u8>, String) {
        let input = self.file("encrypted.asc", ciphertext);
        let output_path = self.home.join("decrypted");
        let output = self.run(&["--status-fd", "1", "--output", path(&output_path), "--decrypt", path(&input)], b"");
        let status = String::from_utf8_lossy(&output.stdout).into_owned();
        (std::fs::read(&output_path).unwrap_or_default(), status)
    }
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Alice (the sender) and Bob (the recipient), each with the other's
/// public key.
fn alice_and_bob() -> (Gpg, Gpg) {
    let alice = Gpg::account("alice@example.org");
    let bob = Gpg::account("bob@example.org");
    alice.import(&bob.export("bob@example.org", true));
    bob.import(&alice.export("alice@example.org", true));
    (alice, bob)
}

fn assert_good_signature(status: &str, signer_fingerprint: &str) {
    assert!(status.contains("[GNUPG:] GOODSIG "), "no GOODSIG: {status}");
    let validsig = status
        .lines()
        .find(|line| line.starts_with("[GNUPG:] VALIDSIG "))
        .unwrap_or_else(|| panic!("no VALIDSIG: {status}"));
    assert!(validsig.ends_with(signer_fingerprint), "{validsig} does not name {signer_fingerprint}");
    assert!(!status.contains("BADSIG"), "{status}");
}

// ---------------------------------------------------------------------------
// Taking the composed message apart the way a receiving client does.

/// The `boundary` parameter of the first Content-Type in `header`.
fn boundary_of(header: &[u8]) -> String {
    let text = String::from_utf8_lossy(header);
    let start = text.find("boundary=\"").unwrap() + "boundary=\"".len();
    let end = start + text[start..].find('"').unwrap();
    text[start..end].to_owned()
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack[from..].windows(needle.len()).position(|window| window == needle).map(|position| position + from)
}

/// The top-level header of a message (up to and including the blank line).
fn top_header(message: &[u8]) -> &[u8] {
    &message[..find(message, b"\r\n\r\n", 0).unwrap() + 4]
}

/// The parts of the top-level multipart as RFC 2046 delimits them: each
/// from after its delimiter line's CRLF to the CRLF before the next
/// delimiter line.
fn top_parts(message: &[u8]) -> Vec<&[u8]> {
    let header = top_header(message);
    let boundary = boundary_of(header);
    let delimiter = format!("\r\n--{boundary}");
    let mut parts = Vec::new();
    let mut position = find(message, delimiter.as_bytes(), header.len() - 2).unwrap();
    loop {
        let line_end = find(message, b"\r\n", position + 2).unwrap();
        if message[position + delimiter.len()..line_end].starts_with(b"--") {
            break;
        }
        let start = line_end + 2;
        let next = find(message, delimiter.as_bytes(), start).unwrap();
        parts.push(&message[start..next]);
        position = next;
    }
    parts
}

/// The body of a part (after its blank line).
fn part_body(part: &[u8]) -> &[u8] {
    &part[find(part, b"\r\n\r\n", 0).unwrap() + 4..]
}

fn header_value(header: &[u8], name: &str) -> Option<String> {
    let parsed = MessageParser::new().parse_headers(header)?;
    parsed.parts.first()?.headers.iter().find(|h| h.name.as_str().eq_ignore_ascii_case(name)).map(|h| {
        let raw = &header[h.offset_start as usize..h.offset_end as usize];
        String::from_utf8_lossy(raw).split_whitespace().collect::<Vec<_>>().join(" ")
    })
}

/// CRLF everywhere, no bare CR, lines of at most 998 bytes.
fn assert_wire_format(bytes: &[u8]) {
    for (index, &byte) in bytes.iter().enumerate() {
        if byte == b'\n' {
            assert!(index > 0 && bytes[index - 1] == b'\r', "bare LF at {index}");
        }
        if byte == b'\r' {
            assert_eq!(bytes.get(index + 1), Some(&b'\n'), "bare CR at {index}");
        }
    }
    for line in bytes.split(|&byte| byte == b'\n') {
        assert!(line.len() <= 999, "line of {} bytes", line.len());
    }
}

/// Also 7-bit, and no trailing whitespace (RFC 3156 section 3).
fn assert_seven_bit_canonical(bytes: &[u8]) {
    assert_wire_format(bytes);
    assert!(bytes.is_ascii(), "8-bit bytes in {}", String::from_utf8_lossy(bytes));
    for line in bytes.split(|&byte| byte == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(
            !line.ends_with(b" ") && !line.ends_with(b"\t"),
            "trailing whitespace: {:?}",
            String::from_utf8_lossy(line)
        );
        assert!(!line.starts_with(b"From "), "line starts with From: {:?}", String::from_utf8_lossy(line));
    }
}

fn extra_headers(alice: &Gpg) -> Vec<(String, String)> {
    let fingerprint = alice.fingerprint("alice@example.org");
    let keydata = data_encoding::BASE64.encode(&alice.export("alice@example.org", false));
    vec![
        ("OpenPGP".to_owned(), format!("id={fingerprint}; preference=signencrypt")),
        ("Autocrypt".to_owned(), format!("addr=alice@example.org; prefer-encrypt=mutual; keydata={keydata}")),
    ]
}

fn key_attachment(alice: &Gpg) -> KeyAttachment {
    KeyAttachment {
        filename: "OpenPGP_0xA11CE.asc".to_owned(),
        armored_public_key: alice.export("alice@example.org", true),
    }
}

/// Signs `raw` as the gateway does for sign-only mail, checks gpg's
/// verdict on what a client extracts, and returns (entity, message).
fn sign_and_verify(raw: &[u8], attach: bool) -> (Vec<u8>, Vec<u8>) {
    let (alice, bob) = alice_and_bob();
    let prepared = pgpmime::prepare(raw).unwrap();
    assert!(!prepared.is_encrypted());
    let key = key_attachment(&alice);
    let entity = prepared.entity_for_signing(attach.then_some(&key));
    assert_seven_bit_canonical(&entity);
    let signature = alice.detach_sign("alice@example.org", &entity);
    let message = prepared.signed(&entity, &signature, "pgp-sha256", &extra_headers(&alice)).unwrap();
    assert_wire_format(&message);
    assert!(message.is_ascii());

    let header = top_header(&message);
    let content_type = header_value(header, "Content-Type").unwrap();
    assert!(content_type.starts_with("multipart/signed; micalg=pgp-sha256;"), "{content_type}");
    assert!(content_type.contains("protocol=\"application/pgp-signature\""), "{content_type}");
    let parts = top_parts(&message);
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0], entity.as_slice(), "the signed part is the entity, byte for byte");
    assert!(parts[1].starts_with(b"Content-Type: application/pgp-signature"));
    // mail-parser (another MIME reader) delimits the same bytes.
    let parsed = MessageParser::default().parse(&message).unwrap();
    let first = &parsed.parts[1];
    assert_eq!(&message[first.offset_header as usize..first.offset_end as usize], entity.as_slice());
    let status = bob.verify(part_body(parts[1]), parts[0]);
    assert_good_signature(&status, &alice.fingerprint("alice@example.org"));
    assert!(!String::from_utf8_lossy(&message).to_ascii_lowercase().contains("\nbcc:"));
    (entity, message)
}

/// The decoded bodies of the leaf parts under the signed part, in order.
fn leaf_contents(message: &[u8]) -> Vec<Vec<u8>> {
    let parsed = MessageParser::default().parse(message).unwrap();
    parsed
        .parts
        .iter()
        .filter(|part| !matches!(part.body, PartType::Multipart(_)))
        .filter(|part| part.content_type().is_none_or(|ct| ct.subtype() != Some("pgp-signature")))
        .map(|part| part.contents().to_vec())
        .collect()
}

// ---------------------------------------------------------------------------
// Sign-only

#[test]
fn signs_an_eight_bit_utf8_body() {
    let text = "Grüße aus Köln, ¡hola! Ça va très bien.\r\nSecond line: 日本語 ∞\r\n";
    let raw = format!(
        "From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nBcc: secret@example.org\r\nSubject: Grüße\r\n\
         Date: Mon, 2 Jun 2025 10:00:00 +0200\r\nMessage-ID: <1@example.org>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}"
    );
    let (entity, message) = sign_and_verify(raw.as_bytes(), false);
    let entity_text = String::from_utf8(entity.clone()).unwrap();
    assert!(entity_text.contains("Content-Transfer-Encoding: quoted-printable\r\n"), "{entity_text}");
    assert!(entity_text.contains("protected-headers=\"v1\""), "{entity_text}");
    assert!(!entity_text.contains("8bit"), "{entity_text}");
    // The body decodes to the original text.
    assert_eq!(leaf_contents(&message), vec![text.as_bytes().to_vec()]);
    // The protected Subject (RFC 2047 now) reads as the original.
    let inner = MessageParser::default().parse(&entity).unwrap();
    assert_eq!(inner.subject(), Some("Grüße"));
    // Sign-only: the outer Subject is the real one, no Bcc.
    let outer = MessageParser::default().parse(&message).unwrap();
    assert_eq!(outer.subject(), Some("Grüße"));
    assert!(outer.header("Bcc").is_none());
    assert!(!String::from_utf8_lossy(&message).contains("secret@example.org"));
}

#[test]
fn signs_a_multipart_mixed_with_attachments() {
    let binary: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let binary_b64 = data_encoding::BASE64_MIME.encode(&binary);
    let latin1_file = b"caf\xe9 cr\xe8me\r\n";
    let mut raw = b"From: alice@example.org\r\nTo: Bob <bob@example.org>\r\nSubject: attachments\r\n\
        MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n\
        This is a multi-part message in MIME format.\r\n--outer\r\n\
        Content-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n--inner\r\n\
        Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nSee attached, na\xc3\xafve caf\xc3\xa9.\r\n\
        --inner\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
        <p>See attached, na\xc3\xafve caf\xc3\xa9.</p>\r\n--inner--\r\n\r\n--outer\r\n\
        Content-Type: application/octet-stream; name=\"data.bin\"\r\n\
        Content-Disposition: attachment; filename=\"data.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        .to_vec();
    raw.extend_from_slice(binary_b64.as_bytes());
    raw.extend_from_slice(
        b"\r\n--outer\r\nContent-Type: text/plain; charset=iso-8859-1; name=\"notes.txt\"\r\n\
          Content-Disposition: attachment; filename=\"notes.txt\"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
    );
    raw.extend_from_slice(latin1_file);
    raw.extend_from_slice(b"\r\n--outer--\r\n");

    let (entity, message) = sign_and_verify(&raw, false);
    let entity_text = String::from_utf8(entity).unwrap();
    // The 7-bit base64 attachment is kept byte for byte.
    assert!(entity_text.contains(&binary_b64));
    assert!(entity_text.contains("Content-Type: multipart/mixed; boundary=\"outer\";\r\n protected-headers=\"v1\""));
    let contents = leaf_contents(&message);
    assert_eq!(contents.len(), 4, "text, html, binary, notes");
    // (The CRLF before a delimiter line belongs to the delimiter.)
    assert_eq!(contents[0], "See attached, naïve café.".as_bytes());
    assert_eq!(contents[1], "<p>See attached, naïve café.</p>".as_bytes());
    assert_eq!(contents[2], binary);
    // Text parts decode to their charset: ISO-8859-1 read back as text.
    assert_eq!(contents[3], "café crème\r\n".as_bytes());
}

#[test]
fn signs_from_lines_and_trailing_spaces() {
    let text = "From the start of a line \r\nmiddle line\t\r\nFrom here too\r\n-- \r\nsignature\r\n";
    let raw = format!("From: alice@example.org\r\nTo: bob@example.org\r\nSubject: mbox hazards  \r\n\r\n{text}");
    let (entity, message) = sign_and_verify(raw.as_bytes(), false);
    let entity_text = String::from_utf8(entity).unwrap();
    assert!(entity_text.contains("=46rom the start of a line=20\r\n"), "{entity_text}");
    assert!(entity_text.contains("=46rom here too\r\n"), "{entity_text}");
    assert!(entity_text.contains("\r\nSubject: mbox hazards\r\n"), "{entity_text}");
    assert_eq!(leaf_contents(&message), vec![text.as_bytes().to_vec()]);
}

#[test]
fn signs_with_protected_headers_key_and_extra_headers() {
    let raw = b"From: Alice <alice@example.org>\r\nTo: bob@example.org, Carol <carol@example.org>\r\n\
        Cc: dave@example.org\r\nBcc: eve@example.org\r\nSubject: Signed plans\r\n\
        Date: Mon, 2 Jun 2025 10:00:00 +0200\r\nMessage-ID: <2@example.org>\r\nIn-Reply-To: <1@example.org>\r\n\
        References: <1@example.org>\r\nUser-Agent: Test\r\n\r\nHello Bob.\r\n";
    let (entity, message) = sign_and_verify(raw, true);
    let entity_text = String::from_utf8(entity.clone()).unwrap();
    assert!(entity_text.starts_with("Content-Type: multipart/mixed;"), "{entity_text}");
    let inner = MessageParser::default().parse(&entity).unwrap();
    assert_eq!(inner.root_part().content_type().unwrap().attribute("protected-headers"), Some("v1"));
    assert_eq!(inner.subject(), Some("Signed plans"));
    assert_eq!(inner.message_id(), Some("2@example.org"));
    assert!(inner.header("Bcc").is_none());
    assert!(inner.header("User-Agent").is_none(), "only the protected set");
    let key_part = inner.parts.iter().find(|part| part.content_type().and_then(|ct| ct.subtype()) == Some("pgp-keys"));
    let key_part = key_part.expect("application/pgp-keys part");
    assert_eq!(key_part.attachment_name(), Some("OpenPGP_0xA11CE.asc"));
    assert!(key_part.contents().starts_with(b"-----BEGIN PGP PUBLIC KEY BLOCK-----"));

    let header = top_header(&message);
    let header_text = String::from_utf8_lossy(header);
    assert!(header_text.contains("\r\nOpenPGP: id="), "{header_text}");
    assert!(header_text.contains("\r\nAutocrypt: addr=alice@example.org;"), "{header_text}");
    assert!(header_text.contains("\r\nUser-Agent: Test\r\n"), "sign-only keeps the other headers");
    assert!(header_text.contains("\r\nSubject: Signed plans\r\n"));
    assert!(!header_text.contains("eve@example.org"));
    // The Autocrypt keydata is folded but intact.
    let outer = MessageParser::default().parse(&message).unwrap();
    let autocrypt = outer.header_raw("Autocrypt").unwrap();
    let keydata: String = autocrypt.split("keydata=").nth(1).unwrap().chars().filter(|c| !c.is_whitespace()).collect();
    assert!(data_encoding::BASE64.decode(keydata.as_bytes()).is_ok());
}

#[test]
fn signs_lf_only_input_as_crlf() {
    let raw = b"From: alice@example.org\nTo: bob@example.org\nSubject: unix\n\nline one\nline two\n";
    let (entity, _) = sign_and_verify(raw, false);
    assert!(entity.ends_with(b"line one\r\nline two\r\n"));
    assert!(String::from_utf8_lossy(&entity).contains("\r\nSubject: unix\r\n"));
}

#[test]
fn signs_nested_message_and_keeps_safe_parts_byte_for_byte() {
    // A forwarded message (8-bit inside) next to an already signed part
    // that must not change, or its own signature would break.
    let signed_part = "Content-Type: multipart/signed; micalg=pgp-sha256; protocol=\"application/pgp-signature\";\r\n \
        boundary=\"sig\"\r\n\r\n--sig\r\nContent-Type: text/plain\r\n\r\nsigned text\r\n--sig\r\n\
        Content-Type: application/pgp-signature\r\n\r\n-----BEGIN PGP SIGNATURE-----\r\n\r\nAAAA\r\n\
        -----END PGP SIGNATURE-----\r\n--sig--";
    let raw = format!(
        "From: alice@example.org\r\nTo: bob@example.org\r\nSubject: fwd\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\n{signed_part}\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\n\
         From: Zoë <zoe@example.org>\r\nSubject: Ünïcode\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nnaïve\r\n--b1--\r\n"
    );
    let (entity, message) = sign_and_verify(raw.as_bytes(), false);
    let entity_text = String::from_utf8(entity).unwrap();
    assert!(entity_text.contains(signed_part), "{entity_text}");
    let parsed = MessageParser::default().parse(&message).unwrap();
    let forwarded = parsed.parts.iter().find_map(|part| part.message()).unwrap();
    assert_eq!(forwarded.subject(), Some("Ünïcode"));
    assert_eq!(forwarded.from().unwrap().first().unwrap().name(), Some("Zoë"));
    assert_eq!(forwarded.body_text(0).as_deref(), Some("naïve"));
}

#[test]
fn signed_rejects_what_cannot_travel_unchanged() {
    let prepared = pgpmime::prepare(b"From: a@example.org\r\n\r\nhi\r\n").unwrap();
    let signature = b"-----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----\n";
    let entity = prepared.entity_for_signing(None);
    assert!(prepared.signed(&entity, signature, "pgp-sha256", &[]).is_ok());
    assert!(matches!(
        prepared.signed(b"Content-Type: text/plain\n\nbare LF", signature, "pgp-sha256", &[]),
        Err(ComposeError::SignedEntityNotCanonical(_))
    ));
    assert!(matches!(
        prepared.signed("caf\u{e9}".as_bytes(), signature, "pgp-sha256", &[]),
        Err(ComposeError::SignedEntityNotCanonical(_))
    ));
    assert_eq!(prepared.signed(&entity, b"not armor", "pgp-sha256", &[]), Err(ComposeError::NotArmored("signature")));
    assert!(matches!(prepared.signed(&entity, signature, "sha256", &[]), Err(ComposeError::InvalidMicalg(_))));
    assert!(matches!(
        prepared.signed(&entity, signature, "pgp-sha256\r\nX: y", &[]),
        Err(ComposeError::InvalidMicalg(_))
    ));
    let injection = [("X-Test".to_owned(), "a\r\nBcc: eve@example.org".to_owned())];
    assert!(matches!(
        prepared.signed(&entity, signature, "pgp-sha256", &injection),
        Err(ComposeError::InvalidExtraHeader(_))
    ));
    for bad_name in ["Bad Name", "", "X:Y", "Content-Type", "MIME-Version", "bcc"] {
        let extra = [(bad_name.to_owned(), "x".to_owned())];
        assert_eq!(
            prepared.signed(&entity, signature, "pgp-sha256", &extra),
            Err(ComposeError::InvalidExtraHeader(bad_name.to_owned()))
        );
    }
    // Upper-case micalg is made lower case (RFC 3156 section 5).
    let message = prepared.signed(&entity, signature, "PGP-SHA512", &[]).unwrap();
    assert!(String::from_utf8_lossy(&message).contains("micalg=pgp-sha512;"));
}

// ---------------------------------------------------------------------------
// Encrypt

#[test]
fn encrypts_with_protected_headers_and_key() {
    let (alice, bob) = alice_and_bob();
    let raw = "From: Alice <alice@example.org>\r\nTo: Bob <bob@example.org>\r\nBcc: eve@example.org\r\n\
        Subject: Secret plans\r\nDate: Mon, 2 Jun 2025 10:00:00 +0200\r\nMessage-ID: <3@example.org>\r\n\
        In-Reply-To: <1@example.org>\r\nReferences: <1@example.org>\r\nUser-Agent: Leaky/1.0\r\n\
        MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
        Meet me at the café at 5.\r\n";
    let prepared = pgpmime::prepare(raw.as_bytes()).unwrap();
    assert!(!prepared.is_encrypted());
    let inner = prepared.inner_for_encryption(Some(&key_attachment(&alice)));
    assert_wire_format(&inner);
    let ciphertext = alice.encrypt_sign("alice@example.org", "bob@example.org", &inner);
    let message = prepared.encrypted(&ciphertext, &extra_headers(&alice)).unwrap();
    assert_wire_format(&message);
    assert!(message.is_ascii());

    // The outer message: routing headers, neutral Subject, no Bcc.
    let header = top_header(&message);
    let header_text = String::from_utf8_lossy(header);
    assert!(header_text.contains("\r\nSubject: ...\r\n"), "{header_text}");
    for kept in ["From: Alice <alice@example.org>", "To: Bob <bob@example.org>", "Message-ID: <3@example.org>"] {
        assert!(header_text.contains(kept), "{kept} in {header_text}");
    }
    assert!(header_text.contains("\r\nIn-Reply-To: <1@example.org>\r\nReferences: <1@example.org>\r\n"));
    assert!(header_text.contains("\r\nMIME-Version: 1.0\r\n"));
    assert!(header_text.contains("\r\nOpenPGP: id="), "{header_text}");
    assert!(header_text.contains("\r\nAutocrypt: addr=alice@example.org;"), "{header_text}");
    assert!(!header_text.contains("Leaky"), "only routing headers outside");
    assert!(!header_text.contains("Secret plans"));
    assert!(!String::from_utf8_lossy(&message).contains("eve@example.org"));
    assert!(!String::from_utf8_lossy(&inner).contains("eve@example.org"));
    let content_type = header_value(header, "Content-Type").unwrap();
    assert!(content_type.starts_with("multipart/encrypted;"), "{content_type}");
    assert!(content_type.contains("protocol=\"application/pgp-encrypted\""), "{content_type}");

    // RFC 3156 section 4: the version part, then the ciphertext.
    let parts = top_parts(&message);
    assert_eq!(parts.len(), 2);
    assert!(parts[0].starts_with(b"Content-Type: application/pgp-encrypted\r\n"));
    assert_eq!(part_body(parts[0]), b"Version: 1\r\n");
    assert!(parts[1].starts_with(b"Content-Type: application/octet-stream"));

    // Bob decrypts what a client finds there.
    let (plaintext, status) = bob.decrypt(part_body(parts[1]));
    assert!(status.contains("[GNUPG:] DECRYPTION_OKAY"), "{status}");
    assert_good_signature(&status, &alice.fingerprint("alice@example.org"));
    assert_eq!(plaintext, inner);

    // The plaintext: protected headers on a multipart/mixed with the body
    // (8-bit kept) and Alice's key.
    let decrypted = MessageParser::default().parse(&plaintext).unwrap();
    assert_eq!(decrypted.root_part().content_type().unwrap().attribute("protected-headers"), Some("v1"));
    assert_eq!(decrypted.subject(), Some("Secret plans"));
    assert_eq!(decrypted.header_raw("User-Agent").map(str::trim), Some("Leaky/1.0"), "kept inside");
    assert!(decrypted.header("Bcc").is_none());
    assert_eq!(decrypted.from().unwrap().first().unwrap().address(), Some("alice@example.org"));
    assert_eq!(decrypted.body_text(0).as_deref(), Some("Meet me at the café at 5.\r\n"));
    let key_part =
        decrypted.parts.iter().find(|part| part.content_type().and_then(|ct| ct.subtype()) == Some("pgp-keys"));
    assert!(key_part.unwrap().contents().starts_with(b"-----BEGIN PGP PUBLIC KEY BLOCK-----"));
}

#[test]
fn encrypts_a_multipart_without_key_and_lf_input() {
    let (alice, bob) = alice_and_bob();
    let raw =
        b"From: alice@example.org\nTo: bob@example.org\nContent-Type: multipart/alternative; boundary=\"alt\"\n\n\
        --alt\nContent-Type: text/plain\n\nplain\n--alt\nContent-Type: text/html\n\n<b>html</b>\n--alt--\n";
    let prepared = pgpmime::prepare(raw).unwrap();
    let inner = prepared.inner_for_encryption(None);
    assert_wire_format(&inner);
    let inner_text = String::from_utf8(inner.clone()).unwrap();
    assert!(
        inner_text
            .starts_with("Content-Type: multipart/alternative; boundary=\"alt\";\r\n protected-headers=\"v1\"\r\n")
    );
    let ciphertext = alice.encrypt_sign("alice@example.org", "bob@example.org", &inner);
    let message = prepared.encrypted(&ciphertext, &[]).unwrap();
    // No Subject submitted: the outer one is still neutral.
    assert!(String::from_utf8_lossy(top_header(&message)).contains("\r\nSubject: ...\r\n"));
    let (plaintext, status) = bob.decrypt(part_body(top_parts(&message)[1]));
    assert!(status.contains("[GNUPG:] DECRYPTION_OKAY"), "{status}");
    assert_eq!(plaintext, inner);
    let decrypted = MessageParser::default().parse(&plaintext).unwrap();
    assert_eq!(decrypted.body_html(0).as_deref(), Some("<b>html</b>"));
    assert_eq!(decrypted.body_text(0).as_deref(), Some("plain"));
}

#[test]
fn encrypted_rejects_what_is_not_ciphertext() {
    let prepared = pgpmime::prepare(b"From: a@example.org\r\n\r\nhi\r\n").unwrap();
    assert_eq!(prepared.encrypted(b"hello", &[]), Err(ComposeError::NotArmored("ciphertext")));
    let signature = b"-----BEGIN PGP SIGNATURE-----\r\n\r\nAAAA\r\n-----END PGP SIGNATURE-----\r\n";
    assert_eq!(prepared.encrypted(signature, &[]), Err(ComposeError::NotArmored("ciphertext")));
    let eight_bit = "-----BEGIN PGP MESSAGE-----\r\n\r\n\u{e9}\r\n-----END PGP MESSAGE-----\r\n";
    assert_eq!(prepared.encrypted(eight_bit.as_bytes(), &[]), Err(ComposeError::NotArmored("ciphertext")));
}

// ---------------------------------------------------------------------------
// Recognising, recipients, malformed input

#[test]
fn recognises_already_encrypted_mail() {
    let pgp_mime = b"From: a@example.org\r\nTo: b@example.org\r\n\
        Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"x\"\r\n\r\n\
        --x\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--x\r\n\
        Content-Type: application/octet-stream\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\nhQ\r\n-----END PGP MESSAGE-----\r\n--x--\r\n";
    assert!(pgpmime::prepare(pgp_mime).unwrap().is_encrypted());
    let inline =
        b"From: a@example.org\r\n\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\nhQEMA\r\n-----END PGP MESSAGE-----\r\n\r\n";
    assert!(pgpmime::prepare(inline).unwrap().is_encrypted());
    let smime =
        b"From: a@example.org\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n\
        Content-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHA6CAMIACAQAx\r\n";
    assert!(pgpmime::prepare(smime).unwrap().is_encrypted());
    // Quoting an armored block in plain text is not being encrypted.
    let quoting = b"From: a@example.org\r\n\r\nYou sent me:\r\n-----BEGIN PGP MESSAGE-----\r\n\r\nhQ\r\n-----END PGP MESSAGE-----\r\n";
    assert!(!pgpmime::prepare(quoting).unwrap().is_encrypted());
    let signed =
        b"From: a@example.org\r\nContent-Type: multipart/signed; boundary=\"s\"\r\n\r\n--s\r\n\r\nx\r\n--s--\r\n";
    assert!(!pgpmime::prepare(signed).unwrap().is_encrypted());
}

#[test]
fn reads_recipients_with_groups_and_encoded_names() {
    let raw = b"From: =?utf-8?q?Al=C3=AFce?= <Alice@Example.org>\r\n\
        To: =?utf-8?b?w4lsb2TDrWU=?= <ELODIE@example.org>, \"Bob, Jr.\" <bob@example.org>\r\n\
        Cc: Team: carol@example.org, Dave <dave@example.org>;, bob@EXAMPLE.org\r\n\
        Bcc: undisclosed-recipients:;, Eve <eve@example.org>\r\n\
        Subject: hi\r\n\r\nbody\r\n";
    let prepared = pgpmime::prepare(raw).unwrap();
    assert_eq!(
        prepared.recipients(),
        vec!["elodie@example.org", "bob@example.org", "carol@example.org", "dave@example.org", "eve@example.org"]
    );
    assert_eq!(prepared.sender().as_deref(), Some("alice@example.org"));

    // Folded, and with an empty group only.
    let raw = b"To:\r\n  one@example.org,\r\n\ttwo@example.org\r\nCc: undisclosed-recipients:;\r\n\r\n";
    assert_eq!(pgpmime::prepare(raw).unwrap().recipients(), vec!["one@example.org", "two@example.org"]);
}

#[test]
fn bcc_never_leaves_in_any_form() {
    let raw = b"From: a@example.org\r\nTo: b@example.org\r\nBCC: hidden@example.org\r\nbcc:\r\n other@example.org\r\n\
        Resent-Bcc: resent@example.org\r\nSubject: s\r\n\r\nbody\r\n";
    let prepared = pgpmime::prepare(raw).unwrap();
    assert!(prepared.recipients().contains(&"hidden@example.org".to_owned()));
    assert!(prepared.recipients().contains(&"other@example.org".to_owned()));
    let armor = b"-----BEGIN PGP MESSAGE-----\r\n\r\nhQ\r\n-----END PGP MESSAGE-----\r\n";
    let signature = b"-----BEGIN PGP SIGNATURE-----\r\n\r\niQ\r\n-----END PGP SIGNATURE-----\r\n";
    let entity = prepared.entity_for_signing(None);
    for output in [
        prepared.inner_for_encryption(None),
        entity.clone(),
        prepared.encrypted(armor, &[]).unwrap(),
        prepared.signed(&entity, signature, "pgp-sha256", &[]).unwrap(),
    ] {
        let text = String::from_utf8_lossy(&output).to_ascii_lowercase();
        assert!(!text.contains("bcc"), "{text}");
        assert!(!text.contains("hidden@") && !text.contains("other@") && !text.contains("resent@"), "{text}");
    }
}

#[test]
fn a_broken_header_line_does_not_turn_bcc_into_body() {
    let raw = b"From: a@example.org\r\nTo: b@example.org\r\nthis line is broken\r\n continued\r\n\
        Bcc: secret@example.org\r\nSubject: s\r\n\r\nbody\r\n";
    let prepared = pgpmime::prepare(raw).unwrap();
    assert_eq!(prepared.recipients(), vec!["b@example.org", "secret@example.org"]);
    let armor = b"-----BEGIN PGP MESSAGE-----\r\n\r\nhQ\r\n-----END PGP MESSAGE-----\r\n";
    for output in [
        prepared.inner_for_encryption(None),
        prepared.entity_for_signing(None),
        prepared.encrypted(armor, &[]).unwrap(),
    ] {
        let text = String::from_utf8_lossy(&output);
        assert!(!text.contains("secret@") && !text.contains("broken") && !text.contains("continued"), "{text}");
        assert!(text.ends_with("body\r\n") || text.contains("-----END PGP MESSAGE-----"), "{text}");
    }
    // An mbox From_ line first is no header field either.
    let raw = b"From alice@example.org Mon Jun  2 10:00:00 2025\r\nBcc: secret@example.org\r\nTo: b@example.org\r\n\r\nbody\r\n";
    let prepared = pgpmime::prepare(raw).unwrap();
    assert_eq!(prepared.recipients(), vec!["secret@example.org", "b@example.org"]);
    let entity = prepared.entity_for_signing(None);
    assert!(!String::from_utf8_lossy(&entity).contains("secret@"));
    assert!(entity.ends_with(b"To: b@example.org\r\n\r\nbody\r\n"), "{}", String::from_utf8_lossy(&entity));
}

#[test]
fn composing_is_deterministic_and_boundaries_avoid_content() {
    // Content that contains strings shaped like our boundaries.
    let raw = "From: a@example.org\r\n\r\n--------------0000000000000000\r\n------------\r\ncafé\r\n".as_bytes();
    let prepared = pgpmime::prepare(raw).unwrap();
    let entity = prepared.entity_for_signing(None);
    assert_eq!(entity, prepared.entity_for_signing(None));
    let signature = b"-----BEGIN PGP SIGNATURE-----\r\n\r\niQ\r\n-----END PGP SIGNATURE-----\r\n";
    let message = prepared.signed(&entity, signature, "pgp-sha256", &[]).unwrap();
    assert_eq!(message, prepared.signed(&entity, signature, "pgp-sha256", &[]).unwrap());
    let boundary = boundary_of(top_header(&message));
    assert!(find(&entity, boundary.as_bytes(), 0).is_none());
    assert_eq!(top_parts(&message)[0], entity.as_slice());
    // QP never starts a line with "-": no delimiter can hide in it.
    assert!(String::from_utf8_lossy(&entity).contains("=2D-------"));
}

#[test]
fn long_and_eight_bit_headers_are_made_safe() {
    let long_subject = vec!["word"; 400].join(" ");
    let raw = format!(
        "From: \"Zoë Ünïcode\" <zoe@example.org>\r\nTo: b@example.org\r\nSubject: {long_subject}\r\n\
         X-Note: héllo\r\nContent-Type: application/octet-stream; name=\"résumé.pdf\"\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n%PDF-\u{e9}\r\n"
    );
    let prepared = pgpmime::prepare(raw.as_bytes()).unwrap();
    let entity = prepared.entity_for_signing(None);
    assert_seven_bit_canonical(&entity);
    let parsed = MessageParser::default().parse(&entity).unwrap();
    assert_eq!(parsed.subject(), Some(long_subject.as_str()));
    assert_eq!(parsed.from().unwrap().first().unwrap().name(), Some("Zoë Ünïcode"));
    assert_eq!(parsed.root_part().content_type().unwrap().attribute("name"), Some("résumé.pdf"));
    assert_eq!(parsed.root_part().contents(), "%PDF-\u{e9}\r\n".as_bytes());
    let signature = b"-----BEGIN PGP SIGNATURE-----\r\n\r\niQ\r\n-----END PGP SIGNATURE-----\r\n";
    let message = prepared.signed(&entity, signature, "pgp-sha256", &[]).unwrap();
    assert!(message.is_ascii());
    assert_wire_format(&message);
    let outer = MessageParser::default().parse(&message).unwrap();
    // An unknown header with 8-bit text becomes an RFC 2047 encoded word.
    assert_eq!(outer.header_raw("X-Note").map(str::trim), Some("=?utf-8?B?aMOpbGxv?="));
}

#[test]
fn malformed_input_never_panics() {
    assert_eq!(pgpmime::prepare(b"").unwrap_err(), ComposeError::MessageEmpty);
    assert_eq!(pgpmime::prepare(b" \r\n\t\n").unwrap_err(), ComposeError::MessageEmpty);
    let mut inputs: Vec<Vec<u8>> = vec![
        b"no header at all, just text\nand more\n".to_vec(),
        b"\r\n\r\nbody after an empty header".to_vec(),
        b"Subject: only a header".to_vec(),
        b"Subject: x\r\n continued\r\n\tagain\r\nnot a header line\r\nX: y\r\n\r\nbody".to_vec(),
        b" leading continuation\r\nSubject: x\r\n\r\n".to_vec(),
        b":\r\n: no name\r\n\r\n".to_vec(),
        b"Content-Type: multipart/mixed\r\n\r\nno boundary parameter\r\n".to_vec(),
        b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\nboundary never occurs\xff\r\n".to_vec(),
        b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nunterminated \xc3\r\n".to_vec(),
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n--b\r\n--b--".to_vec(),
        b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n".to_vec(),
        b"Content-Type: ;;;\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64\xff\r\n".to_vec(),
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ broken =\r\n=\xff"
            .to_vec(),
        b"Content-Type: message/rfc822\r\n\r\n".to_vec(),
        b"Content-Type: message/rfc822\r\n\r\nnot a message \xfe".to_vec(),
        b"From: <>\r\nTo: ,,,;;;<@>\r\nCc: \"unterminated\r\nBcc: =?utf-8?b?!!?= <x>\r\n\r\n".to_vec(),
        b"\x00\x01\x02\xff\xfe\r\r\r\n\n\n".to_vec(),
        b"Subject: bare\rcr\r\nFrom: a\x00b@example.org\r\n\r\nbody\r".to_vec(),
        vec![b'x'; 5000],
        [b"Subject: ".as_slice(), &vec![b'y'; 3000], b"\r\n\r\nbody"].concat(),
    ];
    // Deep nesting, past any limit.
    let mut deep = Vec::new();
    for level in 0..200 {
        deep.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=\"b{level}\"\r\n\r\n--b{level}\r\n").as_bytes(),
        );
    }
    deep.extend_from_slice(b"\r\ncaf\xc3\xa9\r\n");
    inputs.push(deep);
    let mut nested_messages = Vec::new();
    for _ in 0..500 {
        nested_messages.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
    }
    nested_messages.extend_from_slice(b"Subject: \xc3\xa9\r\n\r\n\xc3\xa9");
    inputs.push(nested_messages);
    let mut many_parts = b"Content-Type: multipart/mixed; boundary=\"p\"\r\n\r\n".to_vec();
    for _ in 0..10_000 {
        many_parts.extend_from_slice(b"--p\r\n\r\n\xe9\r\n");
    }
    inputs.push(many_parts);

    let armor = b"-----BEGIN PGP MESSAGE-----\n\nhQ\n-----END PGP MESSAGE-----\n";
    let signature = b"-----BEGIN PGP SIGNATURE-----\n\niQ\n-----END PGP SIGNATURE-----\n";
    let key =
        KeyAttachment { filename: "k\"ey/\u{1}.asc".to_owned(), armored_public_key: b"\x99\x01binary key".to_vec() };
    for input in &inputs {
        let prepared: Prepared = pgpmime::prepare(input).unwrap();
        let _ = prepared.is_encrypted();
        let _ = prepared.recipients();
        let _ = format!("{prepared:?}");
        let inner = prepared.inner_for_encryption(Some(&key));
        assert_wire_format_lenient(&inner);
        for attach in [None, Some(&key)] {
            let entity = prepared.entity_for_signing(attach);
            assert_seven_bit_canonical(&entity);
            let message = prepared.signed(&entity, signature, "pgp-sha256", &[]).unwrap();
            assert_wire_format(&message);
            assert_eq!(top_parts(&message)[0], entity.as_slice());
        }
        let message = prepared.encrypted(armor, &[]).unwrap();
        assert_wire_format(&message);
        assert!(message.is_ascii());
    }
}

/// The inner entity to encrypt keeps the body's bytes; only line endings
/// are checked (bare CRs in a body are data).
fn assert_wire_format_lenient(bytes: &[u8]) {
    for (index, &byte) in bytes.iter().enumerate() {
        if byte == b'\n' {
            assert!(index > 0 && bytes[index - 1] == b'\r', "bare LF at {index}");
        }
    }
}

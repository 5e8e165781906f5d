//! Interoperability with GnuPG, which this project did not write: what we
//! encrypt and sign, gpg decrypts and verifies (its status lines, not only its
//! exit code); what gpg encrypts and signs to our key, we read. Cv25519 and
//! RSA-4096. And the bad inputs a key service meets.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::path::Path;
use std::process::Output;

use bitmask_keys::openpgp::{self, Algorithm, PgpError, SignatureStatus};
use bitmask_testkit::gpg::Gpg;

/// Generates a key for `address` in gpg and returns its public certificate.
fn generate(gpg: &Gpg, address: &str, algorithm: &str) -> Vec<openpgp::Certificate> {
    gpg.ok(&["--quick-gen-key", address, algorithm, "default", "never"], b"");
    if algorithm.starts_with("rsa") {
        // An RSA primary key certifies and signs; encryption needs a subkey.
        gpg.ok(&["--quick-add-key", &gpg.fingerprint(address), algorithm, "encr", "never"], b"");
    }
    let public = gpg.ok(&["--export", "--armor", address], b"").stdout;
    openpgp::parse_certs(&public).unwrap()
}

fn status_lines(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// VALIDSIG names the signing (sub)key first and the primary key last.
fn assert_validsig(status: &str, primary_fingerprint: &str) {
    let line = status
        .lines()
        .find(|line| line.starts_with("[GNUPG:] VALIDSIG "))
        .unwrap_or_else(|| panic!("no VALIDSIG: {status}"));
    assert!(line.ends_with(primary_fingerprint), "{line} does not name {primary_fingerprint}");
}

fn round_trip(algorithm: Algorithm, gpg_algorithm: &str) {
    let gpg = Gpg::new();
    let alice = openpgp::generate("alice@example.org", algorithm).unwrap();
    let alice_fingerprint = openpgp::fingerprint(&alice);
    gpg.ok(&["--import"], &openpgp::export_public(&alice, true).unwrap());
    let bob = generate(&gpg, "bob@example.org", gpg_algorithm);
    let bob_fingerprint = openpgp::fingerprint(&bob[0]);
    let text = b"Subject: hello\r\n\r\nMeet me at the usual place at 5.\r\n";

    // Ours to gpg: encrypted to Bob, signed by Alice.
    let ciphertext = openpgp::encrypt(text, &bob, Some(&alice), true).unwrap();
    assert!(ciphertext.starts_with(b"-----BEGIN PGP MESSAGE-----"));
    let message = gpg.file("message.asc", &ciphertext);
    let decrypted_file = gpg.home.join("decrypted.txt");
    let output = gpg.ok(&["--status-fd", "1", "--output", path(&decrypted_file), "--decrypt", path(&message)], b"");
    let status = status_lines(&output);
    assert!(status.contains("[GNUPG:] DECRYPTION_OKAY"), "{status}");
    assert!(status.contains("[GNUPG:] GOODSIG"), "{status}");
    assert_validsig(&status, &alice_fingerprint);
    assert_eq!(std::fs::read(&decrypted_file).unwrap(), text);

    // Gpg to ours: encrypted to Alice, signed by Bob.
    let input = gpg.file("plain.txt", text);
    let output = gpg.ok(
        &[
            "--armor",
            "--output",
            "-",
            "--recipient",
            "alice@example.org",
            "--local-user",
            "bob@example.org",
            "--sign",
            "--encrypt",
            path(&input),
        ],
        b"",
    );
    let decrypted = openpgp::decrypt(&output.stdout, std::slice::from_ref(&alice), &bob).unwrap();
    assert_eq!(&*decrypted.plaintext, text);
    assert_eq!(decrypted.signature, SignatureStatus::Valid { fingerprint: bob_fingerprint.clone() });
    assert_eq!(decrypted.decrypted_with, alice_fingerprint);
    // Without Bob's key, the signer is unknown, not invalid.
    let decrypted = openpgp::decrypt(&output.stdout, std::slice::from_ref(&alice), &[]).unwrap();
    assert!(matches!(decrypted.signature, SignatureStatus::UnknownSigner { .. }), "{:?}", decrypted.signature);

    // Our key in gpg (a user taking their key along): gpg reads what an
    // OpenPGP sender like us writes to it.
    gpg.ok(&["--import"], &openpgp::export_secret(&alice, false).unwrap());
    let to_alice = openpgp::encrypt(text, std::slice::from_ref(&alice), None, false).unwrap();
    let to_alice_file = gpg.file("to-alice.pgp", &to_alice);
    let output = gpg.ok(&["--status-fd", "1", "--output", "/dev/null", "--decrypt", path(&to_alice_file)], b"");
    assert!(status_lines(&output).contains("[GNUPG:] DECRYPTION_OKAY"), "{}", status_lines(&output));

    // Detached signatures both ways.
    let signature = openpgp::sign_detached(text, &alice, true).unwrap();
    let signature_file = gpg.file("sig.asc", &signature);
    let output = gpg.ok(&["--status-fd", "1", "--verify", path(&signature_file), path(&input)], b"");
    assert!(status_lines(&output).contains("[GNUPG:] GOODSIG"), "{}", status_lines(&output));
    assert_validsig(&status_lines(&output), &alice_fingerprint);
    let output =
        gpg.ok(&["--armor", "--output", "-", "--local-user", "bob@example.org", "--detach-sign", path(&input)], b"");
    assert_eq!(
        openpgp::verify_detached(text, &output.stdout, &bob).unwrap(),
        SignatureStatus::Valid { fingerprint: bob_fingerprint }
    );
    let mut altered = text.to_vec();
    altered[0] = b's';
    assert!(matches!(
        openpgp::verify_detached(&altered, &output.stdout, &bob).unwrap(),
        SignatureStatus::Invalid { .. }
    ));
}

#[test]
fn cv25519_interoperates_with_gpg() {
    round_trip(Algorithm::Cv25519, "future-default");
}

#[test]
fn rsa4096_interoperates_with_gpg() {
    round_trip(Algorithm::Rsa4096, "rsa4096");
}

#[test]
fn bad_input_gets_clear_errors() {
    let alice = openpgp::generate("alice@example.org", Algorithm::Cv25519).unwrap();
    let carol = openpgp::generate("carol@example.org", Algorithm::Cv25519).unwrap();
    assert_eq!(openpgp::addresses(&alice), ["alice@example.org"]);
    assert!(openpgp::has_secret(&alice));

    assert!(matches!(openpgp::parse_certs(b"this is no key at all"), Err(PgpError::NotAKey(_))));
    assert!(matches!(openpgp::parse_certs(b""), Err(PgpError::NotAKey(_))));

    // Encrypted to someone else.
    let to_carol = openpgp::encrypt(b"secret", std::slice::from_ref(&carol), None, false).unwrap();
    let error = openpgp::decrypt(&to_carol, std::slice::from_ref(&alice), &[]).unwrap_err();
    assert!(matches!(error, PgpError::NotForUs), "{error}");
    // Truncated.
    let to_alice = openpgp::encrypt(&[b'x'; 10_000], std::slice::from_ref(&alice), None, false).unwrap();
    let error = openpgp::decrypt(&to_alice[..to_alice.len() / 2], std::slice::from_ref(&alice), &[]).unwrap_err();
    assert!(matches!(error, PgpError::Malformed(_)), "{error}");
    // Not OpenPGP at all.
    assert!(openpgp::decrypt(b"hello", std::slice::from_ref(&alice), &[]).is_err());

    // A public key cannot sign; a revoked key cannot be used.
    let public = openpgp::parse_certs(&openpgp::export_public(&alice, false).unwrap()).unwrap();
    assert!(!openpgp::has_secret(&public[0]));
    assert!(matches!(openpgp::sign_detached(b"x", &public[0], false), Err(PgpError::Unusable(..))));
    let revoked = revoke(&carol);
    assert!(openpgp::revoked(&revoked) && !openpgp::revoked(&carol));
    assert!(openpgp::usable(&revoked).is_err());
    assert!(matches!(openpgp::encrypt(b"x", &[revoked], None, false), Err(PgpError::Unusable(..))));
}

fn revoke(cert: &openpgp::Certificate) -> openpgp::Certificate {
    use sequoia_openpgp::types::ReasonForRevocation;
    let mut signer = cert.primary_key().key().clone().parts_into_secret().unwrap().into_keypair().unwrap();
    let revocation = cert.revoke(&mut signer, ReasonForRevocation::KeyCompromised, b"lost").unwrap();
    cert.clone().insert_packets(revocation).unwrap().0
}

#[test]
fn an_expired_key_is_refused_for_encryption() {
    use sequoia_openpgp::cert::prelude::*;
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(10 * 86_400);
    let (expired, _) = CertBuilder::general_purpose(Some("<old@example.org>"))
        .set_creation_time(long_ago)
        .set_validity_period(std::time::Duration::from_secs(86_400))
        .generate()
        .unwrap();
    assert!(openpgp::expires(&expired).is_some_and(|at| at < std::time::SystemTime::now()));
    assert!(openpgp::usable(&expired).is_err());
    assert!(matches!(openpgp::encrypt(b"x", &[expired], None, false), Err(PgpError::Unusable(..))));
}

#[test]
fn an_expired_account_key_is_extended_and_gpg_encrypts_to_it_again() {
    use sequoia_openpgp::cert::prelude::*;
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(10 * 86_400);
    let (expired, _) = CertBuilder::general_purpose(Some("<old@example.org>"))
        .set_creation_time(long_ago)
        .set_validity_period(std::time::Duration::from_secs(86_400))
        .generate()
        .unwrap();
    assert!(openpgp::usable(&expired).is_err());
    let extended = openpgp::extend(&expired, openpgp::VALIDITY).unwrap();
    assert_eq!(openpgp::fingerprint(&extended), openpgp::fingerprint(&expired));
    openpgp::usable(&extended).unwrap();
    let expires = openpgp::expires(&extended).unwrap();
    assert!(expires > std::time::SystemTime::now() + openpgp::VALIDITY - std::time::Duration::from_secs(3600));
    // A public key without secrets cannot be extended.
    let public = openpgp::parse_certs(&openpgp::export_public(&expired, false).unwrap()).unwrap().remove(0);
    assert!(matches!(openpgp::extend(&public, openpgp::VALIDITY), Err(PgpError::Unusable(..))));

    // GnuPG takes the extended key and encrypts to it; we decrypt.
    let gpg = Gpg::new();
    gpg.ok(&["--import"], &openpgp::export_public(&extended, true).unwrap());
    let input = gpg.file("plain.txt", b"still here\n");
    let output =
        gpg.ok(&["--armor", "--output", "-", "--recipient", "old@example.org", "--encrypt", path(&input)], b"");
    let decrypted = openpgp::decrypt(&output.stdout, std::slice::from_ref(&extended), &[]).unwrap();
    assert_eq!(&*decrypted.plaintext, b"still here\n");
}

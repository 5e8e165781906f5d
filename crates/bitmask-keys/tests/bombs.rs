//! A compression bomb: 1.5 GB of zeros compressed into about 1.5 MB of
//! OpenPGP, encrypted to the account. Decryption must stop at
//! `MAX_PLAINTEXT` with a permanent error, having handed out no more than
//! that (and held no more: the sink here keeps nothing).

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::io::Write as _;

use bitmask_keys::openpgp::{self, Algorithm, MAX_PLAINTEXT, PgpError};
use sequoia::policy::StandardPolicy;
use sequoia::serialize::stream::{Compressor, Encryptor, LiteralWriter, Message};
use sequoia::types::CompressionAlgorithm;
use sequoia_openpgp as sequoia;

const BOMB: u64 = 1_500_000_000;

/// `size` zeros, compressed, encrypted to `cert`: written a chunk at a time.
fn compression_bomb(cert: &openpgp::Certificate, size: u64) -> Vec<u8> {
    let policy = StandardPolicy::new();
    let keys = cert.keys().with_policy(&policy, None).supported().alive().revoked(false).for_transport_encryption();
    let mut ciphertext = Vec::new();
    let message = Message::new(&mut ciphertext);
    let message = Encryptor::for_recipients(message, keys).build().unwrap();
    let message = Compressor::new(message).algo(CompressionAlgorithm::Zlib).build().unwrap();
    let mut literal = LiteralWriter::new(message).build().unwrap();
    let zeros = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        literal.write_all(&zeros[..n]).unwrap();
        left -= n as u64;
    }
    literal.finalize().unwrap();
    ciphertext
}

/// Counts what it is given and keeps none of it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0 += data.len();
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_compression_bomb_is_refused_as_too_large_after_at_most_the_limit() {
    let bob = openpgp::generate("bob@example.org", Algorithm::Cv25519).unwrap();
    let bomb = compression_bomb(&bob, BOMB);
    assert!(bomb.len() < 4_000_000, "the bomb is small on the wire: {} bytes", bomb.len());
    let mut sink = Counter(0);
    let outcome = openpgp::decrypt_stream(&bomb[..], &mut sink, std::slice::from_ref(&bob), &[]);
    assert!(matches!(outcome, Err(PgpError::TooLarge)), "{outcome:?}");
    assert!(sink.0 <= MAX_PLAINTEXT, "{} bytes handed out", sink.0);
    assert!(outcome.unwrap_err().to_string().contains("larger than"));
    // The in-memory form refuses it too, holding at most the limit.
    assert!(matches!(openpgp::decrypt(&bomb, std::slice::from_ref(&bob), &[]), Err(PgpError::TooLarge)));
}

#[test]
fn a_message_at_the_limit_decrypts() {
    let bob = openpgp::generate("bob@example.org", Algorithm::Cv25519).unwrap();
    let at_limit = compression_bomb(&bob, MAX_PLAINTEXT as u64);
    let mut sink = Counter(0);
    openpgp::decrypt_stream(&at_limit[..], &mut sink, std::slice::from_ref(&bob), &[]).unwrap();
    assert_eq!(sink.0, MAX_PLAINTEXT);
}

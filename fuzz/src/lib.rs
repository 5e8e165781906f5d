//! What the fuzz targets share: a way to run the sans-I/O sessions' futures
//! (every `Mailstore` call of the in-memory store is ready at once), the
//! IMAP conversation tests' in-memory store and driver (included as they
//! are, so the fuzzed connection is the one the tests describe), and a
//! reader of structured choices from the fuzzer's bytes.
//!
//! This crate is outside the main workspace and its lint set: harness code
//! may index and unwrap (a panic is what the fuzzer looks for anyway).

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// The IMAP conversation tests' support: `MemStore` and `Driver`.
#[path = "../../crates/bitmask-imap/tests/support/mod.rs"]
#[allow(clippy::all)]
pub mod imap_support;

/// Runs a future that never waits (the sessions over the in-memory store).
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    for _ in 0..1_000 {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
    panic!("a session future waited on the in-memory store, which never makes it wait");
}

/// Choices taken from the end of the input (so the start stays the
/// protocol bytes the seeds begin with).
#[derive(Debug)]
pub struct Choices<'a> {
    bytes: &'a [u8],
}

impl<'a> Choices<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub fn byte(&mut self) -> u8 {
        match self.bytes.split_last() {
            Some((last, rest)) => {
                self.bytes = rest;
                *last
            }
            None => 0,
        }
    }

    pub fn below(&mut self, bound: usize) -> usize {
        if bound == 0 { 0 } else { usize::from(self.byte()) % bound }
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|window| window == needle)
}

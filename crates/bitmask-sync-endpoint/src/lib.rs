//! The provider's sync endpoint (LEAP's Soledad server, rebuilt): per-user
//! databases holding only what clients sealed, served as
//! `bitmask.sync.v1.SyncEndpoint` over TLS, each call authorized by a
//! session token.
//!
//! - [`storage`]: the [`SyncStorage`] trait and its sled implementation;
//! - [`sessions`]: session tokens (issued at login by the provider);
//! - [`incoming`]: mail the MX deposits, encrypted to the user, and the
//!   notices that wake the user's devices;
//! - [`service`]: the gRPC edge.
//!
//! **Architecture invariant:** the provider never holds a key: ids are keyed
//! hashes, contents ciphertext, and the secrets sealed under the passphrase.

pub mod incoming;
pub mod service;
pub mod sessions;
pub mod storage;

pub use incoming::{IncomingNotifier, deposit, deposit_from};
pub use service::{MAX_BLOB_BYTES, MAX_UPLOADS, MAX_UPLOADS_PER_USER, SyncService, server_tls};
pub use sessions::Sessions;
pub use storage::{
    ByteReader, ByteSink, IncomingItem, PushOutcome, PushedDocument, SledStorage, StorageError, StoredDocument,
    SyncStorage,
};

//! The provider's sync endpoint (LEAP's Soledad server, rebuilt): per-user
//! databases holding only what clients sealed, served as
//! `bitmask.sync.v1.SyncEndpoint` over TLS, each call authorized by a
//! session token.
//!
//! - [`storage`]: the [`SyncStorage`] trait and its sled implementation;
//! - [`sessions`]: session tokens (issued at login by the provider);
//! - [`service`]: the gRPC edge.
//!
//! **Architecture invariant:** the provider never holds a key: ids are keyed
//! hashes, contents ciphertext, and the secrets sealed under the passphrase.

pub mod service;
pub mod sessions;
pub mod storage;

pub use service::{SyncService, server_tls};
pub use sessions::Sessions;
pub use storage::{PushOutcome, PushedDocument, SledStorage, StorageError, StoredDocument, SyncStorage};

//! The provider's key directory (LEAP's nicknym server, rebuilt): each
//! account's public OpenPGP key by address, served as
//! `bitmask.provider.v1.KeyDirectory`, and by Web Key Directory hash for the
//! provider's WKD HTTP layer.
//!
//! - [`storage`]: the [`KeyStorage`] trait and its sled implementation;
//! - [`directory`]: the rules of publication ([`publish`]) and what WKD
//!   serves ([`wkd_key`]);
//! - [`service`]: the gRPC edge, authorizing publication by the session
//!   tokens of the sync endpoint's [`bitmask_sync_endpoint::Sessions`].
//!
//! **Architecture invariant:** an account publishes only its own address's
//! key, and the directory never stores secret key material: a certificate
//! carrying any is refused. Keys are never logged, only addresses and
//! fingerprints.

pub mod directory;
pub mod service;
pub mod storage;

pub use directory::{MAX_KEY_BYTES, PublishError, publish, wkd_key};
pub use service::KeyDirectoryService;
pub use storage::{
    KeyStorage, NotAnAddress, PublishedKey, SledKeyStorage, StorageError, normalize_address, wkd_location,
};

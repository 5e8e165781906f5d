//! OpenPGP for bitmask (LEAP's keymanager, rebuilt on sequoia-openpgp).
//!
//! - [`validation`]: validation levels, key sources and the rules by which
//!   a new key may replace the active key of an address;
//! - [`openpgp`]: generate, parse, export, encrypt+sign, decrypt+verify,
//!   detached signatures, over sequoia-openpgp with its OpenSSL backend;
//! - [`wkd`]: the Web Key Directory URLs of an address;
//! - [`learn`]: what a received message offers as its sender's keys
//!   (Autocrypt, attached keys, the `OpenPGP:` header), and the headers we
//!   add to outgoing mail.
//!
//! **Architecture invariant:** only the key service holds private key
//! material in memory; secrets leave it only by an explicit export.

pub mod learn;
pub mod openpgp;
pub mod validation;
pub mod wkd;

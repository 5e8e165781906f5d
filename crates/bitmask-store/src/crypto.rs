//! Keys and sealing.
//!
//! One random 256-bit master secret per account. Everything else is derived
//! from it with HKDF-SHA256 under distinct labels:
//! - storage keys of documents and counters: HMAC-SHA256 of the client's id,
//!   so the disk (and later the provider) never sees an id;
//! - index keys: text values by keyed hash, numbers order-preserving;
//! - a per-record AEAD key (XChaCha20-Poly1305, random 192-bit nonce) derived
//!   from the record's storage key, with associated data binding the account,
//!   the storage key and the revision.
//!
//! Plaintexts are padded to size buckets before sealing so a ciphertext's
//! length tells little about its content's.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Version byte in front of every sealed record.
const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;

/// The account's master secret. Never logged, zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self(key)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// The keys derived from the master secret, held while the store is unlocked.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Keys {
    ids: [u8; 32],
    records: [u8; 32],
    index: [u8; 32],
    blobs: [u8; 32],
    #[zeroize(skip)]
    account: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("account", &self.account).finish_non_exhaustive()
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    #[allow(clippy::expect_used)] // HMAC takes keys of any length
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn derive(master: &[u8; 32], label: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    #[allow(clippy::expect_used)] // 32 bytes is far below HKDF-SHA256's limit
    Hkdf::<Sha256>::new(None, master).expand(label.as_bytes(), &mut out).expect("32 bytes fit HKDF");
    out
}

/// Sealing or opening failed: wrong key, tampered or truncated data.
#[derive(Debug, thiserror::Error)]
#[error("cannot open sealed data: wrong key, or the data was changed")]
pub struct OpenError;

impl Keys {
    pub fn derive(master: &MasterKey, account: &str) -> Self {
        let master = master.as_bytes();
        Self {
            ids: derive(master, "bitmask store v1 ids"),
            records: derive(master, "bitmask store v1 records"),
            index: derive(master, "bitmask store v1 index"),
            blobs: derive(master, "bitmask store v1 blobs"),
            account: account.to_owned(),
        }
    }

    /// The storage key of a document id (keyed, so it reveals nothing).
    pub fn document_key(&self, id: &str) -> [u8; 32] {
        hmac(&self.ids, &[b"document", id.as_bytes()])
    }

    pub fn counter_key(&self, name: &str) -> [u8; 32] {
        hmac(&self.ids, &[b"counter", name.as_bytes()])
    }

    pub fn schema_key(&self, kind: &str, name: &str) -> [u8; 32] {
        hmac(&self.ids, &[b"schema", kind.as_bytes(), name.as_bytes()])
    }

    /// What the provider sees of a document's revision: a keyed tag, equal
    /// for equal revisions and otherwise meaningless.
    pub fn rev_tag(&self, storage_key: &[u8], rev: &str) -> Vec<u8> {
        hmac(&self.ids, &[b"rev", storage_key, rev.as_bytes()])[..16].to_vec()
    }

    /// A short keyed tag of an index name, the prefix of its entries.
    pub fn index_tag(&self, index: &str) -> [u8; 8] {
        let full = hmac(&self.index, &[b"index", index.as_bytes()]);
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&full[..8]);
        tag
    }

    /// A keyed hash of an indexed text value (equality only).
    pub fn index_text(&self, index: &str, value: &str) -> [u8; 16] {
        let full = hmac(&self.index, &[b"text", index.as_bytes(), value.as_bytes()]);
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// The content address of a blob: a keyed hash of its SHA-256.
    pub fn blob_id(&self, content_sha256: &[u8; 32]) -> [u8; 32] {
        hmac(&self.blobs, &[b"blob", content_sha256])
    }

    /// Seals `plaintext` for the record stored under `storage_key`; `context`
    /// (e.g. the revision) is bound too.
    pub fn seal(&self, storage_key: &[u8], context: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let cipher = self.cipher(storage_key);
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let padded = Zeroizing::new(pad(plaintext));
        let aad = self.associated_data(storage_key, context);
        #[allow(clippy::expect_used)] // encryption fails only beyond 256 GiB
        let ciphertext = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: &padded, aad: &aad })
            .expect("XChaCha20-Poly1305 encrypts any size we store");
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        sealed.push(SEAL_VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// Opens what [`Keys::seal`] sealed with the same key and context.
    pub fn open(&self, storage_key: &[u8], context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != SEAL_VERSION {
            return Err(OpenError);
        }
        let (nonce, ciphertext) = sealed[1..].split_at(NONCE_LEN);
        let aad = self.associated_data(storage_key, context);
        let padded = Zeroizing::new(
            self.cipher(storage_key)
                .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: &aad })
                .map_err(|_| OpenError)?,
        );
        unpad(&padded).map(|plain| Zeroizing::new(plain.to_vec()))
    }

    fn cipher(&self, storage_key: &[u8]) -> XChaCha20Poly1305 {
        let key = Zeroizing::new(hmac(&self.records, &[b"record key", storage_key]));
        XChaCha20Poly1305::new((&*key).into())
    }

    fn associated_data(&self, storage_key: &[u8], context: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(self.account.len() + storage_key.len() + context.len() + 24);
        for part in [self.account.as_bytes(), storage_key, context] {
            aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
            aad.extend_from_slice(part);
        }
        aad
    }
}

/// Seals `plaintext` under a key derived from `secret` (a passphrase-derived
/// key or a recovery code), for the secrets record.
pub fn seal_with(secret: &[u8; 32], label: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(secret.into());
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    #[allow(clippy::expect_used)] // a 32-byte secret always encrypts
    let ciphertext =
        cipher.encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: label }).expect("small plaintext");
    [&nonce[..], &ciphertext].concat()
}

pub fn open_with(secret: &[u8; 32], label: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    if sealed.len() < NONCE_LEN {
        return Err(OpenError);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    XChaCha20Poly1305::new(secret.into())
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: label })
        .map(Zeroizing::new)
        .map_err(|_| OpenError)
}

/// The padded size for `len` bytes of plaintext (plus the 4-byte length):
/// at least 256 bytes, then the next multiple of a sixteenth of the next
/// power of two: at most 12.5 % more, and only about four bits of the size
/// show.
pub fn padded_len(len: usize) -> usize {
    let framed = len + 4;
    if framed <= 256 {
        return 256;
    }
    let step = framed.next_power_of_two() / 16;
    framed.div_ceil(step) * step
}

fn pad(plaintext: &[u8]) -> Vec<u8> {
    let mut padded = Vec::with_capacity(padded_len(plaintext.len()));
    padded.extend_from_slice(&(plaintext.len() as u32).to_be_bytes());
    padded.extend_from_slice(plaintext);
    padded.resize(padded_len(plaintext.len()), 0);
    padded
}

fn unpad(padded: &[u8]) -> Result<&[u8], OpenError> {
    let (len, rest) = padded.split_first_chunk::<4>().ok_or(OpenError)?;
    rest.get(..u32::from_be_bytes(*len) as usize).ok_or(OpenError)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::derive(&MasterKey::generate(), "alice@example.org")
    }

    #[test]
    fn seal_round_trip_and_binding() {
        let master = MasterKey::generate();
        let keys = Keys::derive(&master, "alice@example.org");
        let sealed = keys.seal(b"key-1", b"rev-1", b"hello");
        assert_eq!(&**keys.open(b"key-1", b"rev-1", &sealed).unwrap(), b"hello");
        // Bound to the storage key, the context, the account and the master.
        assert!(keys.open(b"key-2", b"rev-1", &sealed).is_err());
        assert!(keys.open(b"key-1", b"rev-2", &sealed).is_err());
        assert!(Keys::derive(&master, "bob@example.org").open(b"key-1", b"rev-1", &sealed).is_err());
        assert!(Keys::derive(&MasterKey::generate(), "alice@example.org").open(b"key-1", b"rev-1", &sealed).is_err());
        // Any flipped byte is detected.
        for position in [0, 1, 30, sealed.len() - 1] {
            let mut tampered = sealed.clone();
            tampered[position] ^= 0x01;
            assert!(keys.open(b"key-1", b"rev-1", &tampered).is_err(), "byte {position}");
        }
        assert!(keys.open(b"key-1", b"rev-1", &sealed[..10]).is_err());
    }

    #[test]
    fn padding_hides_exact_sizes() {
        let keys = keys();
        let short = keys.seal(b"k", b"", b"a");
        let longer = keys.seal(b"k", b"", &[b'a'; 200]);
        assert_eq!(short.len(), longer.len());
        assert_eq!(padded_len(0), 256);
        assert_eq!(padded_len(300), 320);
        assert_eq!(padded_len(20_000), 20 * 1024);
        assert_eq!(padded_len(20_481), 22 * 1024);
        assert_eq!(padded_len(70_000), 72 * 1024);
        for len in [0, 1, 252, 253, 5000, 65532, 65533, 200_000, 1 << 20] {
            assert!(padded_len(len) >= len + 4);
            assert!(padded_len(len) <= (len + 4) * 9 / 8 + 256, "{len}");
            let sealed = keys.seal(b"k", b"", &vec![7u8; len]);
            assert_eq!(keys.open(b"k", b"", &sealed).unwrap().len(), len);
        }
    }

    #[test]
    fn keyed_ids_are_stable_and_distinct() {
        let master = MasterKey::generate();
        let (a, b) = (Keys::derive(&master, "a@b"), Keys::derive(&master, "a@b"));
        assert_eq!(a.document_key("mbox/INBOX"), b.document_key("mbox/INBOX"));
        assert_ne!(a.document_key("mbox/INBOX"), a.document_key("mbox/Sent"));
        assert_ne!(a.document_key("x"), a.counter_key("x"));
        let other = Keys::derive(&MasterKey::generate(), "a@b");
        assert_ne!(a.document_key("mbox/INBOX"), other.document_key("mbox/INBOX"));
    }

    #[test]
    fn debug_output_has_no_secrets() {
        let master = MasterKey::from_bytes([0xAB; 32]);
        let keys = Keys::derive(&master, "alice@example.org");
        for text in [format!("{master:?}"), format!("{keys:?}")] {
            assert!(!text.to_lowercase().contains("ab, ab") && !text.contains("171"), "{text}");
        }
    }
}

//! The storage secrets at rest: the master secret sealed once under a key
//! derived from the passphrase (Argon2id) and once under the recovery code.

use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{MasterKey, open_with, seal_with};

const PASSPHRASE_LABEL: &[u8] = b"bitmask store v1 master under passphrase";
const RECOVERY_LABEL: &[u8] = b"bitmask store v1 master under recovery code";

/// Argon2id cost. The defaults follow RFC 9106's second recommendation
/// (64 MiB, 3 passes, 4 lanes), costing a fraction of a second per unlock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        Self { memory_kib: 64 * 1024, iterations: 3, parallelism: 4 }
    }
}

/// What is kept on disk (and, sealed the same way, at the provider).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretsRecord {
    pub version: u32,
    pub kdf: KdfParams,
    pub salt: Vec<u8>,
    pub sealed_by_passphrase: Vec<u8>,
    pub recovery_salt: Vec<u8>,
    pub sealed_by_recovery: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("wrong passphrase or recovery code")]
    WrongCredential,
    #[error("the passphrase must not be empty")]
    EmptyPassphrase,
    #[error("invalid key derivation parameters: {0}")]
    Kdf(String),
}

/// The most Argon2 cost a device takes from a secrets record: the record
/// comes from the provider on a new device, and its parameters are not
/// authenticated (changing them only makes the key wrong), so a hostile
/// provider could otherwise make the device allocate gigabytes or run for
/// hours. Sixteen times the defaults.
pub const MAX_KDF: KdfParams = KdfParams { memory_kib: 1024 * 1024, iterations: 48, parallelism: 16 };

fn passphrase_key(passphrase: &str, salt: &[u8], kdf: KdfParams) -> Result<Zeroizing<[u8; 32]>, SecretsError> {
    if kdf.memory_kib > MAX_KDF.memory_kib
        || kdf.iterations > MAX_KDF.iterations
        || kdf.parallelism > MAX_KDF.parallelism
    {
        return Err(SecretsError::Kdf(format!(
            "{} KiB, {} passes, {} lanes: more than this device takes ({} KiB, {} passes, {} lanes)",
            kdf.memory_kib,
            kdf.iterations,
            kdf.parallelism,
            MAX_KDF.memory_kib,
            MAX_KDF.iterations,
            MAX_KDF.parallelism
        )));
    }
    let params = Params::new(kdf.memory_kib, kdf.iterations, kdf.parallelism, Some(32))
        .map_err(|error| SecretsError::Kdf(error.to_string()))?;
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), salt, &mut *key)
        .map_err(|error| SecretsError::Kdf(error.to_string()))?;
    Ok(key)
}

/// The recovery code is 160 random bits: a fast KDF is enough.
fn recovery_key(code: &str, salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, SecretsError> {
    let normalized: String =
        code.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_uppercase()).collect();
    let bytes = data_encoding::BASE32_NOPAD.decode(normalized.as_bytes()).map_err(|_| SecretsError::WrongCredential)?;
    let mut key = Zeroizing::new([0u8; 32]);
    #[allow(clippy::expect_used)] // 32 bytes is far below HKDF-SHA256's limit
    hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), &bytes).expand(RECOVERY_LABEL, &mut *key).expect("32 bytes fit HKDF");
    Ok(key)
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// A new recovery code: 160 bits as eight groups of four base32 characters.
fn new_recovery_code() -> Zeroizing<String> {
    let encoded = data_encoding::BASE32_NOPAD.encode(&random::<20>());
    let groups: Vec<&str> = encoded.as_bytes().chunks(4).filter_map(|chunk| std::str::from_utf8(chunk).ok()).collect();
    Zeroizing::new(groups.join("-"))
}

impl SecretsRecord {
    /// Seals `master` under the passphrase and a new recovery code, which is
    /// returned to be shown once.
    pub fn create(
        master: &MasterKey,
        passphrase: &str,
        kdf: KdfParams,
    ) -> Result<(Self, Zeroizing<String>), SecretsError> {
        if passphrase.is_empty() {
            return Err(SecretsError::EmptyPassphrase);
        }
        let salt = random::<16>().to_vec();
        let recovery_salt = random::<16>().to_vec();
        let code = new_recovery_code();
        let record = Self {
            version: 1,
            kdf,
            sealed_by_passphrase: seal_with(
                &*passphrase_key(passphrase, &salt, kdf)?,
                PASSPHRASE_LABEL,
                master.as_bytes(),
            ),
            sealed_by_recovery: seal_with(&*recovery_key(&code, &recovery_salt)?, RECOVERY_LABEL, master.as_bytes()),
            salt,
            recovery_salt,
        };
        Ok((record, code))
    }

    pub fn open_with_passphrase(&self, passphrase: &str) -> Result<MasterKey, SecretsError> {
        let key = passphrase_key(passphrase, &self.salt, self.kdf)?;
        Self::master(open_with(&key, PASSPHRASE_LABEL, &self.sealed_by_passphrase).ok())
    }

    pub fn open_with_recovery_code(&self, code: &str) -> Result<MasterKey, SecretsError> {
        let key = recovery_key(code, &self.recovery_salt)?;
        Self::master(open_with(&key, RECOVERY_LABEL, &self.sealed_by_recovery).ok())
    }

    fn master(bytes: Option<Zeroizing<Vec<u8>>>) -> Result<MasterKey, SecretsError> {
        let bytes = bytes.ok_or(SecretsError::WrongCredential)?;
        let array: [u8; 32] = bytes.as_slice().try_into().map_err(|_| SecretsError::WrongCredential)?;
        Ok(MasterKey::from_bytes(array))
    }

    /// The same secrets under a new passphrase (the recovery code stays).
    pub fn with_passphrase(&self, master: &MasterKey, passphrase: &str) -> Result<Self, SecretsError> {
        if passphrase.is_empty() {
            return Err(SecretsError::EmptyPassphrase);
        }
        let salt = random::<16>().to_vec();
        Ok(Self {
            sealed_by_passphrase: seal_with(
                &*passphrase_key(passphrase, &salt, self.kdf)?,
                PASSPHRASE_LABEL,
                master.as_bytes(),
            ),
            salt,
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: KdfParams = KdfParams { memory_kib: 256, iterations: 1, parallelism: 1 };

    #[test]
    fn passphrase_recovery_code_and_change() {
        let master = MasterKey::generate();
        let (record, code) = SecretsRecord::create(&master, "correct horse", CHEAP).unwrap();
        assert_eq!(code.len(), 39, "{}", &*code);
        assert_eq!(record.open_with_passphrase("correct horse").unwrap().as_bytes(), master.as_bytes());
        assert!(matches!(record.open_with_passphrase("wrong"), Err(SecretsError::WrongCredential)));
        assert_eq!(record.open_with_recovery_code(&code).unwrap().as_bytes(), master.as_bytes());
        // Case and separators do not matter when typing the code back.
        let typed = code.replace('-', " ").to_lowercase();
        assert_eq!(record.open_with_recovery_code(&typed).unwrap().as_bytes(), master.as_bytes());
        assert!(record.open_with_recovery_code("AAAA-BBBB").is_err());
        assert!(record.open_with_recovery_code("not base32 !!").is_err());

        let changed = record.with_passphrase(&master, "battery staple").unwrap();
        assert!(changed.open_with_passphrase("correct horse").is_err());
        assert_eq!(changed.open_with_passphrase("battery staple").unwrap().as_bytes(), master.as_bytes());
        assert_eq!(changed.open_with_recovery_code(&code).unwrap().as_bytes(), master.as_bytes());
        assert!(matches!(SecretsRecord::create(&master, "", CHEAP), Err(SecretsError::EmptyPassphrase)));
    }

    #[test]
    fn a_record_asking_for_a_huge_kdf_is_refused_at_once() {
        // As a hostile provider would hand it to a new device: 4 GiB and a
        // thousand passes would hang the device (and the parameters are not
        // authenticated: only the key would come out wrong).
        let master = MasterKey::generate();
        let (record, _) = SecretsRecord::create(&master, "correct horse", CHEAP).unwrap();
        for kdf in [
            KdfParams { memory_kib: 4 * 1024 * 1024, ..CHEAP },
            KdfParams { iterations: 1000, ..CHEAP },
            KdfParams { parallelism: 255, ..CHEAP },
        ] {
            let hostile = SecretsRecord { kdf, ..record.clone() };
            assert!(matches!(hostile.open_with_passphrase("correct horse"), Err(SecretsError::Kdf(_))), "{kdf:?}");
        }
        assert!(KdfParams::default().memory_kib <= MAX_KDF.memory_kib);
    }
}

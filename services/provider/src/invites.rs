//! Invite codes for sign-up (`signup = "invite"`): `bitmask-provider invite`
//! makes one, SignUp uses it up.
//!
//! A code is 20 random bytes in base32 (32 characters, shown in groups of
//! four). The provider keeps only its SHA-256, as the name of a file in
//! `DIR/invites/` that holds when it expires: files rather than the sled
//! database, so `invite` works while `serve` holds the database open. A
//! sign-up claims a code by renaming its file (only one rename can win),
//! removes it once the account is made, and puts it back if the sign-up
//! failed (an address already taken uses up no code). Codes are compared
//! without case, spaces or dashes.

use std::path::{Path, PathBuf};

use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::config::{ConfigError, write_new};

/// How long a code may wait to be used.
pub const DEFAULT_VALID_DAYS: u64 = 30;
const CODE_BYTES: usize = 20;

/// The file name of a code: SHA-256 of its normalized form, hex; `None` for
/// text that cannot be a code.
fn file_name(code: &str) -> Option<String> {
    let normalized: String =
        code.chars().filter(|c| !c.is_whitespace() && *c != '-').map(|c| c.to_ascii_lowercase()).collect();
    if normalized.len() != 32 || !normalized.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    Some(data_encoding::HEXLOWER.encode(&Sha256::digest(normalized.as_bytes())))
}

/// Makes a code valid until `expires_unix` in `dir` (created if missing,
/// 0700); the code to hand out.
pub fn create(dir: &Path, expires_unix: u64) -> Result<String, ConfigError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| ConfigError::Io { path: dir.to_owned(), source })?;
    let mut bytes = [0u8; CODE_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let code = data_encoding::BASE32_NOPAD.encode(&bytes).to_ascii_lowercase();
    let name = file_name(&code).ok_or_else(|| ConfigError::Invalid {
        path: dir.to_owned(),
        message: "a generated invite code is malformed".into(),
    })?;
    write_new(&dir.join(name), format!("{expires_unix}\n").as_bytes(), true)?;
    let groups: Vec<&str> = code.as_bytes().chunks(4).filter_map(|group| std::str::from_utf8(group).ok()).collect();
    Ok(groups.join("-"))
}

/// A claimed code: removed when [`Claim::use_up`] is called, put back when
/// dropped without it.
#[derive(Debug)]
pub struct Claim {
    original: PathBuf,
    claimed: PathBuf,
    used: bool,
}

/// Claims `code` in `dir` at `now_unix`; `None` if it is not a code there
/// (unknown, used, being used, expired).
pub fn claim(dir: &Path, code: &str, now_unix: u64) -> Option<Claim> {
    let name = file_name(code)?;
    let original = dir.join(&name);
    let mut suffix = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut suffix);
    let claimed = dir.join(format!("{name}.claimed-{}", data_encoding::HEXLOWER.encode(&suffix)));
    std::fs::rename(&original, &claimed).ok()?;
    let mut claim = Claim { original, claimed, used: false };
    let expires = std::fs::read_to_string(&claim.claimed).ok().and_then(|text| text.trim().parse::<u64>().ok());
    if expires.is_none_or(|expires| expires <= now_unix) {
        // Expired (or damaged): gone for good.
        claim.use_up();
        return None;
    }
    Some(claim)
}

impl Claim {
    pub fn use_up(&mut self) {
        self.used = true;
        if let Err(error) = std::fs::remove_file(&self.claimed) {
            tracing::warn!(%error, "removing a used invite code");
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.used
            && let Err(error) = std::fs::rename(&self.claimed, &self.original)
        {
            tracing::warn!(%error, "putting an unused invite code back");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_code_is_used_once_put_back_when_unused_and_expires() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("invites");
        let code = create(&dir, 1000).unwrap();
        assert_eq!(code.len(), 32 + 7, "{code}");
        assert!(claim(&dir, "nope", 10).is_none());
        // Put back when dropped unused; taken once when used.
        drop(claim(&dir, &code, 10).unwrap());
        let mut first = claim(&dir, &code.to_uppercase().replace('-', " "), 10).unwrap();
        assert!(claim(&dir, &code, 10).is_none(), "a claimed code cannot be claimed twice");
        first.use_up();
        drop(first);
        assert!(claim(&dir, &code, 10).is_none());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let old = create(&dir, 1000).unwrap();
        assert!(claim(&dir, &old, 1000).is_none(), "expired");
        assert!(claim(&dir, &old, 10).is_none(), "and gone");
    }
}

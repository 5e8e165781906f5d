//! Session tokens: random, looked up by their SHA-256 (so the lookup's timing
//! tells nothing about the token), expiring.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

#[derive(Debug, Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], (String, Instant)>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("no session token given")]
    Missing,
    #[error("unknown session token: log in again")]
    Unknown,
    #[error("the session expired: log in again")]
    Expired,
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Sessions {
    /// A new token for `user`, valid for `lifetime`.
    pub fn issue(&self, user: &str, lifetime: Duration) -> String {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token = data_encoding::BASE64URL_NOPAD.encode(&bytes);
        let mut sessions = self.by_hash.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        sessions.retain(|_, (_, expires)| *expires > Instant::now());
        // A lifetime beyond the clock's range lasts as long as it can.
        let now = Instant::now();
        let expires = now.checked_add(lifetime).unwrap_or(now + Duration::from_secs(365 * 24 * 3600));
        sessions.insert(hash(&token), (user.to_owned(), expires));
        token
    }

    /// The user a token belongs to.
    pub fn user(&self, token: &str) -> Result<String, SessionError> {
        if token.is_empty() {
            return Err(SessionError::Missing);
        }
        let sessions = self.by_hash.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match sessions.get(&hash(token)) {
            Some((_, expires)) if *expires <= Instant::now() => Err(SessionError::Expired),
            Some((user, _)) => Ok(user.clone()),
            None => Err(SessionError::Unknown),
        }
    }

    pub fn revoke(&self, token: &str) {
        self.by_hash.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&hash(token));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lifetime_beyond_the_clock_does_not_panic() {
        let sessions = Sessions::default();
        let token = sessions.issue("alice@example.org", Duration::MAX);
        assert_eq!(sessions.user(&token).ok().as_deref(), Some("alice@example.org"));
    }
}

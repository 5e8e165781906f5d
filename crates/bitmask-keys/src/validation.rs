//! Where a key came from, how much it is trusted, and when a new key may
//! replace the active key of an address: the rules of LEAP's keymanager.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// From weakest to strongest, as in LEAP's keymanager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidationLevel {
    WeakChain,
    ProviderTrust,
    ProviderEndorsement,
    ThirdPartyEndorsement,
    ThirdPartyConsensus,
    HistoricallyAuditing,
    KnownKey,
    Fingerprint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// The account's own key, made here.
    Generated,
    Imported,
    ProviderDirectory,
    Wkd,
    Autocrypt,
    Attachment,
    OpenPgpHeader,
}

impl KeySource {
    /// The level a key from this source starts at.
    /// Whether the key came from somewhere it can be fetched again (refresh).
    pub fn is_fetched(self) -> bool {
        matches!(self, Self::ProviderDirectory | Self::Wkd | Self::OpenPgpHeader)
    }

    pub fn default_level(self) -> ValidationLevel {
        match self {
            Self::Generated => ValidationLevel::Fingerprint,
            Self::Imported => ValidationLevel::KnownKey,
            Self::ProviderDirectory => ValidationLevel::ProviderTrust,
            Self::Wkd | Self::Autocrypt | Self::Attachment | Self::OpenPgpHeader => ValidationLevel::WeakChain,
        }
    }
}

/// What the replacement rules look at, of the active key and of a candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFacts {
    pub fingerprint: String,
    pub validation: ValidationLevel,
    /// None: never expires.
    pub expires: Option<SystemTime>,
    /// Whether mail was ever encrypted to it.
    pub used: bool,
}

/// Why a candidate may replace the active key (for logs and replies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replacement {
    NoActiveKey,
    SameKey,
    FingerprintLevel,
    OldExpired,
    StrongerThanNeverExpiring,
    StrongerThanUnused,
    SignedByOld,
}

/// Why a candidate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a key at level {new:?} cannot replace the active key {old} at level {old_level:?}: it is not signed by it, \
     the active key has not expired, and no stronger-level rule applies"
)]
pub struct Refusal {
    pub old: String,
    pub old_level: ValidationLevel,
    pub new: ValidationLevel,
}

/// Whether `new` may replace `old` (the active key of the address), by the
/// rules of LEAP's keymanager: there is no active key or it is the same key;
/// or the new key comes at Fingerprint level; or the old key has expired and
/// the new level is not lower; or the old key never expires and the new
/// level is higher; or the old key was never used and the new level is
/// higher; or the new key is signed by the old one.
pub fn may_replace(
    old: Option<&KeyFacts>,
    new: &KeyFacts,
    new_signed_by_old: bool,
    now: SystemTime,
) -> Result<Replacement, Refusal> {
    let Some(old) = old else { return Ok(Replacement::NoActiveKey) };
    if old.fingerprint == new.fingerprint {
        return Ok(Replacement::SameKey);
    }
    if new.validation == ValidationLevel::Fingerprint {
        return Ok(Replacement::FingerprintLevel);
    }
    if old.expires.is_some_and(|expires| expires <= now) && new.validation >= old.validation {
        return Ok(Replacement::OldExpired);
    }
    if old.expires.is_none() && new.validation > old.validation {
        return Ok(Replacement::StrongerThanNeverExpiring);
    }
    if !old.used && new.validation > old.validation {
        return Ok(Replacement::StrongerThanUnused);
    }
    if new_signed_by_old {
        return Ok(Replacement::SignedByOld);
    }
    Err(Refusal { old: old.fingerprint.clone(), old_level: old.validation, new: new.validation })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use ValidationLevel::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn key(fingerprint: &str, validation: ValidationLevel, expires_in: Option<i64>, used: bool) -> KeyFacts {
        let expires = expires_in.map(|seconds| {
            if seconds >= 0 {
                now() + Duration::from_secs(seconds as u64)
            } else {
                now() - Duration::from_secs(seconds.unsigned_abs())
            }
        });
        KeyFacts { fingerprint: fingerprint.into(), validation, expires, used }
    }

    const DAY: i64 = 86_400;

    /// (name, active key, candidate, candidate signed by the active key, expected)
    type Case = (&'static str, Option<KeyFacts>, KeyFacts, bool, Result<Replacement, ()>);

    #[test]
    fn levels_are_ordered_as_in_the_keymanager() {
        let levels = [
            WeakChain,
            ProviderTrust,
            ProviderEndorsement,
            ThirdPartyEndorsement,
            ThirdPartyConsensus,
            HistoricallyAuditing,
            KnownKey,
            Fingerprint,
        ];
        assert!(levels.windows(2).all(|pair| pair[0] < pair[1]));
    }

    /// Each rule once accepting and once (just outside it) refusing.
    #[test]
    fn each_replacement_rule_accepts_and_refuses() {
        let used_old = key("OLD", ProviderTrust, Some(30 * DAY), true);
        let cases: [Case; 14] = [
            ("no active key", None, key("NEW", WeakChain, None, false), false, Ok(Replacement::NoActiveKey)),
            (
                "same fingerprint",
                Some(used_old.clone()),
                key("OLD", WeakChain, None, false),
                false,
                Ok(Replacement::SameKey),
            ),
            (
                "fingerprint level",
                Some(used_old.clone()),
                key("NEW", Fingerprint, None, false),
                false,
                Ok(Replacement::FingerprintLevel),
            ),
            ("below fingerprint level", Some(used_old.clone()), key("NEW", KnownKey, None, false), false, Err(())),
            (
                "old expired, same level",
                Some(key("OLD", ProviderTrust, Some(-DAY), true)),
                key("NEW", ProviderTrust, None, false),
                false,
                Ok(Replacement::OldExpired),
            ),
            (
                "old expired, lower level",
                Some(key("OLD", ProviderTrust, Some(-DAY), true)),
                key("NEW", WeakChain, None, false),
                false,
                Err(()),
            ),
            (
                "old never expires, higher",
                Some(key("OLD", ProviderTrust, None, true)),
                key("NEW", ProviderEndorsement, None, false),
                false,
                Ok(Replacement::StrongerThanNeverExpiring),
            ),
            (
                "old never expires, same",
                Some(key("OLD", ProviderTrust, None, true)),
                key("NEW", ProviderTrust, None, false),
                false,
                Err(()),
            ),
            (
                "old unused, higher",
                Some(key("OLD", WeakChain, Some(30 * DAY), false)),
                key("NEW", ProviderTrust, None, false),
                false,
                Ok(Replacement::StrongerThanUnused),
            ),
            (
                "old unused, same",
                Some(key("OLD", WeakChain, Some(30 * DAY), false)),
                key("NEW", WeakChain, None, false),
                false,
                Err(()),
            ),
            (
                "old used, higher, expiring later",
                Some(used_old.clone()),
                key("NEW", ProviderEndorsement, None, false),
                false,
                Err(()),
            ),
            (
                "signed by the old key",
                Some(used_old.clone()),
                key("NEW", WeakChain, None, false),
                true,
                Ok(Replacement::SignedByOld),
            ),
            ("not signed by the old key", Some(used_old.clone()), key("NEW", WeakChain, None, false), false, Err(())),
            (
                "weaker source, not expired",
                Some(key("OLD", KnownKey, Some(DAY), true)),
                key("NEW", ProviderTrust, None, false),
                false,
                Err(()),
            ),
        ];
        for (name, old, new, signed, expected) in cases {
            let result = may_replace(old.as_ref(), &new, signed, now());
            assert_eq!(result.map_err(|_| ()), expected, "{name}");
        }
    }

    #[test]
    fn a_refusal_says_why() {
        let old = key("AAAA", KnownKey, None, true);
        let refusal = may_replace(Some(&old), &key("BBBB", WeakChain, None, false), false, now()).unwrap_err();
        let message = refusal.to_string();
        assert!(message.contains("AAAA") && message.contains("WeakChain") && message.contains("KnownKey"), "{message}");
    }
}

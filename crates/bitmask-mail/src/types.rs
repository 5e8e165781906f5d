//! The mail model's own types (protocol-neutral; IMAP and the Mail API
//! convert at their edges).

use std::collections::BTreeSet;
use std::sync::Arc;

/// INBOX is case-insensitive; every other name is as given.
/// The largest message the product takes on every path (IMAP APPEND, the
/// Mail API, SMTP submission's SIZE, the provider's MX and relay): room for
/// a 25 MB attachment in base64 (about 34.2 MiB) and its message.
pub const MAX_MESSAGE_BYTES: usize = 40 << 20;

/// The most levels (`/`-separated) a mailbox name has.
pub const MAX_MAILBOX_LEVELS: usize = 32;
/// The most bytes a mailbox name has.
pub const MAX_MAILBOX_NAME_BYTES: usize = 512;

/// Whether a new mailbox name is within the limits (a client may not make
/// the gateway keep and list thousands of nested levels).
pub fn name_within_limits(name: &str) -> bool {
    name.len() <= MAX_MAILBOX_NAME_BYTES && name.split('/').count() <= MAX_MAILBOX_LEVELS
}

pub fn normalize_name(name: &str) -> String {
    let trimmed = name.trim_end_matches('/');
    if trimmed.eq_ignore_ascii_case("INBOX") {
        "INBOX".into()
    } else if let Some(rest) = trimmed.get(6..).filter(|rest| !rest.is_empty())
        && trimmed.get(..6).is_some_and(|prefix| prefix.eq_ignore_ascii_case("INBOX/"))
    {
        format!("INBOX/{rest}")
    } else {
        trimmed.to_owned()
    }
}

/// A message's flags: the system flags and keywords.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    pub seen: bool,
    pub answered: bool,
    pub flagged: bool,
    pub deleted: bool,
    pub draft: bool,
    /// Keywords as given (compared case-insensitively).
    pub keywords: BTreeSet<String>,
}

impl Flags {
    /// As kept in the copy document: `\Seen`, …, then the keywords.
    pub fn to_list(&self) -> Vec<String> {
        let mut list = Vec::new();
        for (on, name) in [
            (self.seen, "\\Seen"),
            (self.answered, "\\Answered"),
            (self.flagged, "\\Flagged"),
            (self.deleted, "\\Deleted"),
            (self.draft, "\\Draft"),
        ] {
            if on {
                list.push(name.to_owned());
            }
        }
        list.extend(self.keywords.iter().cloned());
        list
    }

    pub fn from_list<S: AsRef<str>>(list: &[S]) -> Self {
        let mut flags = Self::default();
        for item in list {
            flags.set(item.as_ref(), true);
        }
        flags
    }

    /// Sets or clears one flag by its IMAP name (`\Seen` or a keyword).
    /// `\Recent` is not a stored flag and is ignored.
    pub fn set(&mut self, name: &str, on: bool) {
        match name.to_ascii_lowercase().as_str() {
            "\\seen" => self.seen = on,
            "\\answered" => self.answered = on,
            "\\flagged" => self.flagged = on,
            "\\deleted" => self.deleted = on,
            "\\draft" => self.draft = on,
            "\\recent" => {}
            _ if name.starts_with('\\') => {}
            _ => {
                let known = self.keywords.iter().find(|keyword| keyword.eq_ignore_ascii_case(name)).cloned();
                match (known, on) {
                    (Some(known), false) => {
                        self.keywords.remove(&known);
                    }
                    (None, true) => {
                        self.keywords.insert(name.to_owned());
                    }
                    _ => {}
                }
            }
        }
    }

    pub fn apply(&mut self, operation: FlagOperation, given: &Flags) {
        match operation {
            FlagOperation::Replace => *self = given.clone(),
            FlagOperation::Add | FlagOperation::Remove => {
                let on = operation == FlagOperation::Add;
                for name in given.to_list() {
                    self.set(&name, on);
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOperation {
    Replace,
    Add,
    Remove,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpecialUse {
    #[default]
    None,
    Sent,
    Drafts,
    Trash,
    Junk,
    Archive,
}

impl SpecialUse {
    /// The RFC 6154 attribute.
    pub fn attribute(self) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::Sent => Some("\\Sent"),
            Self::Drafts => Some("\\Drafts"),
            Self::Trash => Some("\\Trash"),
            Self::Junk => Some("\\Junk"),
            Self::Archive => Some("\\Archive"),
        }
    }
}

/// A mailbox as the protocols see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxInfo {
    pub name: String,
    pub uid_validity: u32,
    pub uid_next: u32,
    pub subscribed: bool,
    pub special_use: SpecialUse,
    pub messages: u32,
    pub unseen: u32,
    /// Messages no session has seen yet (RFC 3501 `\Recent`).
    pub recent: u32,
    pub highest_modseq: u64,
}

/// One message of a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub uid: u32,
    /// The copy document (this message in this mailbox). Shared, not
    /// copied, by the snapshots sessions take (a mailbox may hold 100,000).
    pub copy: Arc<str>,
    /// The message document (shared by every copy).
    pub message: Arc<str>,
    pub flags: Flags,
    /// Seconds since the epoch, and the zone it was given in (minutes east).
    pub internal_date: i64,
    pub zone_minutes: i32,
    pub size: u64,
    pub modseq: u64,
}

/// What happened in a mailbox, for selected and idling sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailEvent {
    Added {
        mailbox: String,
        uid: u32,
    },
    Expunged {
        mailbox: String,
        uid: u32,
    },
    FlagsChanged {
        mailbox: String,
        uid: u32,
    },
    /// The mailbox list changed (created, renamed, deleted, subscribed).
    Mailboxes,
}

impl MailEvent {
    pub fn mailbox(&self) -> Option<&str> {
        match self {
            Self::Added { mailbox, .. } | Self::Expunged { mailbox, .. } | Self::FlagsChanged { mailbox, .. } => {
                Some(mailbox)
            }
            Self::Mailboxes => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("no mailbox {0:?}")]
    NoMailbox(String),
    #[error("mailbox {0:?} exists already")]
    MailboxExists(String),
    #[error("{0}")]
    Refused(String),
    #[error("the store: {0}")]
    Store(String),
    /// The store is away for now (restarting, locked): try again later.
    #[error("the store is not available now: {0}")]
    Unavailable(String),
    /// The disk is full: nothing more can be written until space is freed.
    #[error("{0}")]
    NoSpace(String),
    #[error("stored mail is damaged: {0}")]
    Damaged(String),
}

/// What the protocols (IMAP, the Mail API) need of the mail model; the store
/// service implements it (`model`), tests may implement it in memory.
pub trait Mailstore: Send + Sync {
    fn mailboxes(&self) -> impl Future<Output = Result<Vec<MailboxInfo>, MailError>> + Send;
    fn mailbox(&self, name: &str) -> impl Future<Output = Result<MailboxInfo, MailError>> + Send;
    fn create_mailbox(
        &self,
        name: &str,
        special_use: SpecialUse,
    ) -> impl Future<Output = Result<MailboxInfo, MailError>> + Send;
    fn delete_mailbox(&self, name: &str) -> impl Future<Output = Result<(), MailError>> + Send;
    fn rename_mailbox(&self, name: &str, new_name: &str) -> impl Future<Output = Result<(), MailError>> + Send;
    fn set_subscribed(&self, name: &str, subscribed: bool) -> impl Future<Output = Result<(), MailError>> + Send;
    /// A number that changes whenever anything a snapshot shows may have
    /// changed (it moves after the change is visible): a session that saw
    /// the same number before its last snapshot needs no new one.
    fn version(&self) -> u64;
    /// The mailbox and its messages in UID order, as of now.
    fn snapshot(&self, name: &str) -> impl Future<Output = Result<(MailboxInfo, Vec<Entry>), MailError>> + Send;
    /// Claims the mailbox's `\Recent` messages for one session: the first
    /// UID that is recent for it.
    fn claim_recent(&self, name: &str) -> impl Future<Output = Result<u32, MailError>> + Send;
    /// Files a message, durably: (UIDVALIDITY, UID).
    fn append(
        &self,
        name: &str,
        raw: &[u8],
        flags: &Flags,
        internal_date: Option<(i64, i32)>,
    ) -> impl Future<Output = Result<(u32, u32), MailError>> + Send;
    /// A message's bytes, exactly as appended.
    fn raw(&self, message: &str) -> impl Future<Output = Result<Vec<u8>, MailError>> + Send;
    /// Several messages' bytes at once (None for one that is gone).
    fn raws(&self, messages: &[Arc<str>]) -> impl Future<Output = Result<Vec<Option<Arc<Vec<u8>>>>, MailError>> + Send;
    /// Changes flags; gives the entries that changed.
    fn set_flags(
        &self,
        name: &str,
        uids: &[u32],
        operation: FlagOperation,
        flags: &Flags,
    ) -> impl Future<Output = Result<Vec<Entry>, MailError>> + Send;
    /// Copies (or with `remove`, moves): the destination's UIDVALIDITY and
    /// (source, new) UID pairs.
    fn copy(
        &self,
        name: &str,
        uids: &[u32],
        destination: &str,
        remove: bool,
    ) -> impl Future<Output = Result<(u32, Vec<(u32, u32)>), MailError>> + Send;
    /// Removes the `\Deleted` messages (of `uids` when given): the UIDs removed.
    fn expunge(&self, name: &str, uids: Option<&[u32]>) -> impl Future<Output = Result<Vec<u32>, MailError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_whatever_their_characters() {
        assert_eq!(normalize_name("inbox/"), "INBOX");
        assert_eq!(normalize_name("Inbox/Sub/"), "INBOX/Sub");
        assert_eq!(normalize_name("Archive/2024"), "Archive/2024");
        // Found by scripts/fuzz (imap_session): a name whose sixth byte is
        // inside a character panicked (`SELECT "ǫⱪƄ"` from any client).
        assert_eq!(normalize_name("ǫⱪƄ"), "ǫⱪƄ");
        assert_eq!(normalize_name("abcdeƄ/x"), "abcdeƄ/x");
        assert_eq!(normalize_name("inboxƄ"), "inboxƄ");
    }
}

//! Test support for conversations with the session state machine, without
//! network or store process:
//!
//! - [`MemStore`], an in-memory [`Mailstore`] that keeps the mail model's
//!   semantics (UIDVALIDITY and UIDNEXT per mailbox, `\Recent` claimed by
//!   one session at a time, copies sharing one raw message, collection of
//!   messages no copy refers to, change events);
//! - [`Conversation`], a driver that feeds client bytes to imap-next's
//!   `Server` (with the gateway's options) and runs its events through a
//!   [`Session`] the way `services/imap/src/gateway.rs` does (commands,
//!   AUTHENTICATE PLAIN, IDLE, updates on store events while idling,
//!   protocol errors), collecting everything the server writes.
//!
//! A conversation is written as a transcript, one line per wire line:
//!
//! ```text
//! S: * OK [CAPABILITY IMAP4rev1 ...] bitmask IMAP ready
//! C: a1 LOGIN alice@example.org token
//! S: a1 OK …
//! ! deliver
//! -- closed --
//! ```
//!
//! - `C: ` lines are what the client sends, each followed by CRLF (`C:` alone
//!   is an empty line, as after a literal); `C| ` sends its bytes without
//!   CRLF. In both, and in `S:` lines, `\xHH` stands for the byte HH.
//! - `S: ` lines are what the server must send, exactly; a line ending in `…`
//!   only has to start with what comes before it, followed by free-form text
//!   (not a `[` response code). `S+ ` continues the previous `S:` line after
//!   one space (to keep long lines readable).
//! - `! name` runs the action registered under `name` against the store (a
//!   change made elsewhere, e.g. by another device) and then does what the
//!   gateway does with the store's events.
//! - `-- closed --` is where the driver saw the connection close (LOGOUT, too
//!   many failed logins or protocol errors); input after it is ignored.
//!
//! [`Conversation::run`] plays the client's bytes whole and cut into chunks of
//! 1, 2, 3, 5 and 7 bytes (so commands, literal announcements, literals and
//! CRLFs get split everywhere), asserts the transcripts are identical, and
//! compares them with the expected lines.

#![allow(dead_code)] // not every test file uses every helper

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use bitmask_imap::imap_types::auth::{AuthMechanism, AuthenticateData};
use bitmask_imap::imap_types::core::{Tag, Text};
use bitmask_imap::imap_types::response::{
    Bye, CommandContinuationRequest, Response, Status, StatusBody, StatusKind, Tagged,
};
use bitmask_imap::session::{After, Credentials, Reply, Session};
use bitmask_imap::streamed::StreamedBody;
use bitmask_mail::types::normalize_name;
use bitmask_mail::{Entry, FlagOperation, Flags, MailError, MailEvent, MailboxInfo, Mailstore, SpecialUse};
use imap_next::server::{Error as ServerError, Event, Options, ResponseHandle, Server};
use imap_next::{Interrupt, Io, State as _};

/// The account the sessions log in to.
pub const ADDRESS: &str = "alice@example.org";
/// Its mail token (the password LOGIN and AUTHENTICATE PLAIN expect).
pub const TOKEN: &str = "s3cret-mail-token";
/// The first UIDVALIDITY the store hands out (RFC 3501 6.3.1's example).
pub const FIRST_UID_VALIDITY: u32 = 3_857_529_045;
/// The internal date of a message appended without one (the store's "now").
pub const NOW: i64 = 1_700_000_000;

// --- the in-memory store ----------------------------------------------------

#[derive(Debug)]
struct MemMailbox {
    name: String,
    uid_validity: u32,
    uid_next: u32,
    /// UIDs at or above this are `\Recent` for the next session that claims them.
    recent_floor: u32,
    subscribed: bool,
    special_use: SpecialUse,
    highest_modseq: u64,
    entries: BTreeMap<u32, Entry>,
}

impl MemMailbox {
    fn info(&self) -> MailboxInfo {
        MailboxInfo {
            name: self.name.clone(),
            uid_validity: self.uid_validity,
            uid_next: self.uid_next,
            subscribed: self.subscribed,
            special_use: self.special_use,
            messages: self.entries.len() as u32,
            unseen: self.entries.values().filter(|entry| !entry.flags.seen).count() as u32,
            recent: self.entries.range(self.recent_floor..).count() as u32,
            highest_modseq: self.highest_modseq,
        }
    }
}

#[derive(Debug)]
struct Inner {
    /// By normalized name.
    mailboxes: BTreeMap<String, MemMailbox>,
    /// Message id → raw bytes (shared by every copy of the message).
    raws: HashMap<String, Arc<Vec<u8>>>,
    next_uid_validity: u32,
    next_id: u64,
    events: Vec<MailEvent>,
    /// Events taken so far (with those not taken yet: the store's version).
    taken: u64,
}

impl Inner {
    fn get(&self, name: &str) -> Result<&MemMailbox, MailError> {
        self.mailboxes.get(&normalize_name(name)).ok_or_else(|| MailError::NoMailbox(name.to_owned()))
    }

    fn get_mut(&mut self, name: &str) -> Result<&mut MemMailbox, MailError> {
        self.mailboxes.get_mut(&normalize_name(name)).ok_or_else(|| MailError::NoMailbox(name.to_owned()))
    }

    fn add_mailbox(&mut self, name: &str, special_use: SpecialUse, subscribed: bool) -> MailboxInfo {
        let mailbox = MemMailbox {
            name: name.to_owned(),
            uid_validity: self.next_uid_validity,
            uid_next: 1,
            recent_floor: 1,
            subscribed,
            special_use,
            highest_modseq: 0,
            entries: BTreeMap::new(),
        };
        self.next_uid_validity += 1;
        let info = mailbox.info();
        self.mailboxes.insert(name.to_owned(), mailbox);
        info
    }

    fn new_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}/{}", self.next_id)
    }

    /// Drops the raw messages no copy refers to any more.
    fn collect(&mut self) {
        let live: std::collections::HashSet<String> = self
            .mailboxes
            .values()
            .flat_map(|mailbox| mailbox.entries.values().map(|entry| entry.message.to_string()))
            .collect();
        self.raws.retain(|id, _| live.contains(id));
    }
}

/// An in-memory mail store with the mail model's semantics.
#[derive(Debug)]
pub struct MemStore {
    inner: Mutex<Inner>,
}

impl MemStore {
    /// A store with an empty, subscribed INBOX.
    pub fn new() -> Arc<Self> {
        let mut inner = Inner {
            mailboxes: BTreeMap::new(),
            raws: HashMap::new(),
            next_uid_validity: FIRST_UID_VALIDITY,
            next_id: 0,
            events: Vec::new(),
            taken: 0,
        };
        inner.add_mailbox("INBOX", SpecialUse::None, true);
        Arc::new(Self { inner: Mutex::new(inner) })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The events since the last call (what the model broadcasts).
    pub fn take_events(&self) -> Vec<MailEvent> {
        let mut inner = self.lock();
        let events = std::mem::take(&mut inner.events);
        inner.taken += events.len() as u64;
        events
    }

    // --- for setting up tests (panic on misuse) ------------------------------

    /// Creates a mailbox (and its missing parents).
    pub fn create(&self, name: &str) {
        self.create_mailbox_now(name, SpecialUse::None).unwrap();
    }

    /// Creates a mailbox with a special use, subscribed.
    pub fn create_special(&self, name: &str, special_use: SpecialUse) {
        self.create_mailbox_now(name, special_use).unwrap();
        self.set_subscribed_now(name, true).unwrap();
    }

    pub fn subscribe(&self, name: &str) {
        self.set_subscribed_now(name, true).unwrap();
    }

    /// Makes the next message get `uid_next` (as if messages up to it had
    /// come and gone).
    pub fn skip_to_uid(&self, name: &str, uid_next: u32) {
        let mut inner = self.lock();
        let mailbox = inner.get_mut(name).unwrap();
        assert!(uid_next >= mailbox.uid_next, "UIDs only grow");
        mailbox.uid_next = uid_next;
    }

    /// Files a message with flags (`"\\Seen \\Flagged"`, keywords too) and an
    /// internal date (`"17-Jul-1996 02:44:25 -0700"`): its UID.
    pub fn deliver(&self, name: &str, raw: &str, flags: &str, date: &str) -> u32 {
        let flags = Flags::from_list(&flags.split_whitespace().collect::<Vec<_>>());
        let date = chrono::DateTime::parse_from_str(date, "%d-%b-%Y %H:%M:%S %z").unwrap();
        let internal = (date.timestamp(), date.offset().local_minus_utc() / 60);
        self.append_now(name, raw.as_bytes(), &flags, Some(internal)).unwrap().1
    }

    /// A session (elsewhere) claimed the `\Recent` messages.
    pub fn claim(&self, name: &str) {
        self.claim_recent_now(name).unwrap();
    }

    /// Changes flags as another client would.
    pub fn flag(&self, name: &str, uid: u32, operation: FlagOperation, flags: &str) {
        let flags = Flags::from_list(&flags.split_whitespace().collect::<Vec<_>>());
        self.set_flags_now(name, &[uid], operation, &flags).unwrap();
    }

    /// Expunges one message as another client would (flag it `\Deleted`, expunge it).
    pub fn remove(&self, name: &str, uid: u32) {
        let deleted = Flags { deleted: true, ..Flags::default() };
        self.set_flags_now(name, &[uid], FlagOperation::Add, &deleted).unwrap();
        assert_eq!(self.expunge_now(name, Some(&[uid])).unwrap(), vec![uid]);
    }

    /// The UIDs of a mailbox's messages.
    pub fn uids(&self, name: &str) -> Vec<u32> {
        self.lock().get(name).unwrap().entries.keys().copied().collect()
    }

    /// A message's flags, as `\Seen \Deleted keyword`.
    pub fn flags_of(&self, name: &str, uid: u32) -> String {
        self.lock().get(name).unwrap().entries[&uid].flags.to_list().join(" ")
    }

    pub fn info(&self, name: &str) -> MailboxInfo {
        self.lock().get(name).unwrap().info()
    }

    pub fn names(&self) -> Vec<String> {
        self.lock().mailboxes.keys().cloned().collect()
    }

    /// How many raw messages are kept (collection drops unreferenced ones).
    pub fn raw_count(&self) -> usize {
        self.lock().raws.len()
    }

    // --- the model's operations, synchronously --------------------------------

    fn mailboxes_now(&self) -> Vec<MailboxInfo> {
        let inner = self.lock();
        let mut list: Vec<MailboxInfo> = inner.mailboxes.values().map(MemMailbox::info).collect();
        list.sort_by(|a, b| (a.name != "INBOX", &a.name).cmp(&(b.name != "INBOX", &b.name)));
        list
    }

    fn create_mailbox_now(&self, name: &str, special_use: SpecialUse) -> Result<MailboxInfo, MailError> {
        let name = normalize_name(name);
        if name.is_empty() || name.split('/').any(str::is_empty) {
            return Err(MailError::Refused(format!("{name:?} is not a valid mailbox name")));
        }
        let mut inner = self.lock();
        // Creating a/b/c creates a and a/b when missing (RFC 3501 6.3.3).
        let levels: Vec<&str> = name.split('/').collect();
        let mut created = None;
        for depth in 1..=levels.len() {
            let level = levels[..depth].join("/");
            if inner.mailboxes.contains_key(&level) {
                if depth == levels.len() {
                    return Err(MailError::MailboxExists(name));
                }
                continue;
            }
            let use_here = if depth == levels.len() { special_use } else { SpecialUse::None };
            created = Some(inner.add_mailbox(&level, use_here, false));
        }
        inner.events.push(MailEvent::Mailboxes);
        created.ok_or(MailError::MailboxExists(name))
    }

    fn delete_mailbox_now(&self, name: &str) -> Result<(), MailError> {
        let name = normalize_name(name);
        if name == "INBOX" {
            return Err(MailError::Refused("INBOX cannot be deleted".into()));
        }
        let mut inner = self.lock();
        // Inferior names stay (RFC 3501 6.3.4).
        inner.mailboxes.remove(&name).ok_or_else(|| MailError::NoMailbox(name.clone()))?;
        inner.collect();
        inner.events.push(MailEvent::Mailboxes);
        Ok(())
    }

    fn rename_mailbox_now(&self, name: &str, new_name: &str) -> Result<(), MailError> {
        let (name, new_name) = (normalize_name(name), normalize_name(new_name));
        if name == "INBOX" {
            return Err(MailError::Refused("renaming INBOX is not supported".into()));
        }
        if new_name.is_empty() || new_name.split('/').any(str::is_empty) {
            return Err(MailError::Refused(format!("{new_name:?} is not a valid mailbox name")));
        }
        let mut inner = self.lock();
        inner.get(&name)?;
        if inner.mailboxes.contains_key(&new_name) {
            return Err(MailError::MailboxExists(new_name));
        }
        // The mailbox and its inferiors move; UIDVALIDITY stays.
        let prefix = format!("{name}/");
        let moving: Vec<String> =
            inner.mailboxes.keys().filter(|known| **known == name || known.starts_with(&prefix)).cloned().collect();
        for old in moving {
            let mut mailbox = inner.mailboxes.remove(&old).unwrap();
            mailbox.name = if old == name { new_name.clone() } else { format!("{new_name}/{}", &old[prefix.len()..]) };
            inner.mailboxes.insert(mailbox.name.clone(), mailbox);
        }
        inner.events.push(MailEvent::Mailboxes);
        Ok(())
    }

    fn set_subscribed_now(&self, name: &str, subscribed: bool) -> Result<(), MailError> {
        let mut inner = self.lock();
        inner.get_mut(name)?.subscribed = subscribed;
        inner.events.push(MailEvent::Mailboxes);
        Ok(())
    }

    fn snapshot_now(&self, name: &str) -> Result<(MailboxInfo, Vec<Entry>), MailError> {
        let inner = self.lock();
        let mailbox = inner.get(name)?;
        Ok((mailbox.info(), mailbox.entries.values().cloned().collect()))
    }

    fn claim_recent_now(&self, name: &str) -> Result<u32, MailError> {
        let mut inner = self.lock();
        let mailbox = inner.get_mut(name)?;
        let floor = mailbox.recent_floor;
        mailbox.recent_floor = mailbox.recent_floor.max(mailbox.uid_next);
        Ok(floor)
    }

    fn append_now(
        &self,
        name: &str,
        raw: &[u8],
        flags: &Flags,
        internal_date: Option<(i64, i32)>,
    ) -> Result<(u32, u32), MailError> {
        let mut inner = self.lock();
        inner.get(name)?;
        // One message document per content, shared by its copies.
        let known = inner.raws.iter().find(|(_, bytes)| bytes.as_slice() == raw).map(|(id, _)| id.clone());
        let message = match known {
            Some(id) => id,
            None => {
                let id = inner.new_id("message");
                inner.raws.insert(id.clone(), Arc::new(raw.to_vec()));
                id
            }
        };
        let copy = inner.new_id("copy");
        let (internal_date, zone_minutes) = internal_date.unwrap_or((NOW, 0));
        let mailbox = inner.get_mut(name)?;
        let uid = mailbox.uid_next;
        mailbox.uid_next += 1;
        mailbox.highest_modseq += 1;
        let entry = Entry {
            uid,
            copy: Arc::from(copy),
            message: Arc::from(message),
            flags: flags.clone(),
            internal_date,
            zone_minutes,
            size: raw.len() as u64,
            modseq: mailbox.highest_modseq,
        };
        mailbox.entries.insert(uid, entry);
        let (validity, name) = (mailbox.uid_validity, mailbox.name.clone());
        inner.events.push(MailEvent::Added { mailbox: name, uid });
        Ok((validity, uid))
    }

    fn raws_now(&self, messages: &[Arc<str>]) -> Vec<Option<Arc<Vec<u8>>>> {
        let inner = self.lock();
        messages.iter().map(|id| inner.raws.get(id.as_ref()).cloned()).collect()
    }

    fn set_flags_now(
        &self,
        name: &str,
        uids: &[u32],
        operation: FlagOperation,
        flags: &Flags,
    ) -> Result<Vec<Entry>, MailError> {
        let mut inner = self.lock();
        let mailbox = inner.get_mut(name)?;
        let modseq = mailbox.highest_modseq + 1;
        let mut changed = Vec::new();
        for uid in uids {
            let Some(entry) = mailbox.entries.get_mut(uid) else { continue };
            let mut new_flags = entry.flags.clone();
            new_flags.apply(operation, flags);
            if new_flags == entry.flags {
                continue;
            }
            entry.flags = new_flags;
            entry.modseq = modseq;
            changed.push(entry.clone());
        }
        if changed.is_empty() {
            return Ok(changed);
        }
        mailbox.highest_modseq = modseq;
        let name = mailbox.name.clone();
        for entry in &changed {
            inner.events.push(MailEvent::FlagsChanged { mailbox: name.clone(), uid: entry.uid });
        }
        Ok(changed)
    }

    fn copy_now(
        &self,
        name: &str,
        uids: &[u32],
        destination: &str,
        remove: bool,
    ) -> Result<(u32, Vec<(u32, u32)>), MailError> {
        let mut inner = self.lock();
        let source = inner.get(name)?;
        let source_name = source.name.clone();
        let sources: Vec<Entry> = uids.iter().filter_map(|uid| source.entries.get(uid).cloned()).collect();
        let ids: Vec<String> = (0..sources.len()).map(|_| inner.new_id("copy")).collect();
        let target = inner.get_mut(destination)?;
        let (validity, target_name) = (target.uid_validity, target.name.clone());
        if sources.is_empty() {
            return Ok((validity, Vec::new()));
        }
        target.highest_modseq += 1;
        let mut pairs = Vec::new();
        for (source, copy) in sources.iter().zip(ids) {
            let uid = target.uid_next;
            target.uid_next += 1;
            let entry = Entry { uid, copy: Arc::from(copy), modseq: target.highest_modseq, ..source.clone() };
            target.entries.insert(uid, entry);
            pairs.push((source.uid, uid));
        }
        for (_, uid) in &pairs {
            inner.events.push(MailEvent::Added { mailbox: target_name.clone(), uid: *uid });
        }
        if remove && source_name != target_name {
            let mailbox = inner.get_mut(&source_name)?;
            mailbox.highest_modseq += 1;
            for entry in &sources {
                mailbox.entries.remove(&entry.uid);
            }
            for entry in &sources {
                inner.events.push(MailEvent::Expunged { mailbox: source_name.clone(), uid: entry.uid });
            }
        }
        Ok((validity, pairs))
    }

    fn expunge_now(&self, name: &str, uids: Option<&[u32]>) -> Result<Vec<u32>, MailError> {
        let mut inner = self.lock();
        let mailbox = inner.get_mut(name)?;
        let doomed: Vec<u32> = mailbox
            .entries
            .values()
            .filter(|entry| entry.flags.deleted && uids.is_none_or(|uids| uids.contains(&entry.uid)))
            .map(|entry| entry.uid)
            .collect();
        if doomed.is_empty() {
            return Ok(doomed);
        }
        mailbox.highest_modseq += 1;
        for uid in &doomed {
            mailbox.entries.remove(uid);
        }
        let name = mailbox.name.clone();
        for uid in &doomed {
            inner.events.push(MailEvent::Expunged { mailbox: name.clone(), uid: *uid });
        }
        inner.collect();
        Ok(doomed)
    }
}

impl Mailstore for MemStore {
    async fn mailboxes(&self) -> Result<Vec<MailboxInfo>, MailError> {
        Ok(self.mailboxes_now())
    }

    async fn mailbox(&self, name: &str) -> Result<MailboxInfo, MailError> {
        Ok(self.lock().get(name)?.info())
    }

    async fn create_mailbox(&self, name: &str, special_use: SpecialUse) -> Result<MailboxInfo, MailError> {
        self.create_mailbox_now(name, special_use)
    }

    async fn delete_mailbox(&self, name: &str) -> Result<(), MailError> {
        self.delete_mailbox_now(name)
    }

    async fn rename_mailbox(&self, name: &str, new_name: &str) -> Result<(), MailError> {
        self.rename_mailbox_now(name, new_name)
    }

    async fn set_subscribed(&self, name: &str, subscribed: bool) -> Result<(), MailError> {
        self.set_subscribed_now(name, subscribed)
    }

    async fn snapshot(&self, name: &str) -> Result<(MailboxInfo, Vec<Entry>), MailError> {
        self.snapshot_now(name)
    }

    async fn claim_recent(&self, name: &str) -> Result<u32, MailError> {
        self.claim_recent_now(name)
    }

    async fn append(
        &self,
        name: &str,
        raw: &[u8],
        flags: &Flags,
        internal_date: Option<(i64, i32)>,
    ) -> Result<(u32, u32), MailError> {
        self.append_now(name, raw, flags, internal_date)
    }

    async fn raw(&self, message: &str) -> Result<Vec<u8>, MailError> {
        self.raws_now(&[Arc::from(message)])
            .pop()
            .flatten()
            .map(|raw| raw.to_vec())
            .ok_or_else(|| MailError::Damaged(format!("{message} is gone")))
    }

    fn version(&self) -> u64 {
        let inner = self.lock();
        inner.taken + inner.events.len() as u64
    }

    async fn raws(&self, messages: &[Arc<str>]) -> Result<Vec<Option<Arc<Vec<u8>>>>, MailError> {
        Ok(self.raws_now(messages))
    }

    async fn set_flags(
        &self,
        name: &str,
        uids: &[u32],
        operation: FlagOperation,
        flags: &Flags,
    ) -> Result<Vec<Entry>, MailError> {
        self.set_flags_now(name, uids, operation, flags)
    }

    async fn copy(
        &self,
        name: &str,
        uids: &[u32],
        destination: &str,
        remove: bool,
    ) -> Result<(u32, Vec<(u32, u32)>), MailError> {
        self.copy_now(name, uids, destination, remove)
    }

    async fn expunge(&self, name: &str, uids: Option<&[u32]>) -> Result<Vec<u32>, MailError> {
        self.expunge_now(name, uids)
    }
}

// --- the driver (what services/imap/src/gateway.rs does) -------------------

/// The gateway's defaults (`gateway::Limits::default()`).
pub const MAX_LITERAL: u32 = 64 << 20;
const MAX_BAD_IN_A_ROW: u32 = 20;
const MAX_FAILED_LOGINS: u32 = 5;
/// What the driver writes into the transcript where the connection closes.
pub const CLOSED: &str = "-- closed --";

fn options(max_literal: u32) -> Options {
    let mut options = Options::default();
    options.crlf_relaxed = true;
    options.max_literal_size = max_literal;
    options.max_command_size = max_literal.saturating_add(64 * 1024);
    options
}

fn tagged(tag: &Tag<'static>, kind: StatusKind, message: &'static str) -> Status<'static> {
    Status::Tagged(Tagged { tag: tag.clone(), body: StatusBody { kind, code: None, text: Text::unvalidated(message) } })
}

fn untagged_bad(message: &'static str) -> Status<'static> {
    Status::Untagged(StatusBody { kind: StatusKind::Bad, code: None, text: Text::unvalidated(message) })
}

fn continuation(text: &'static str) -> CommandContinuationRequest<'static> {
    CommandContinuationRequest::basic(None, Text::unvalidated(text)).unwrap()
}

/// The tag of a line the codec could not parse, when it has a valid one.
fn tag_of(line: &[u8]) -> Option<Tag<'static>> {
    let end = line.iter().position(|byte| *byte == b' ')?;
    let tag = std::str::from_utf8(&line[..end]).ok()?;
    Tag::try_from(tag.to_owned()).ok()
}

/// One connection: imap-next's server and the session, as the gateway runs them.
pub struct Driver {
    store: Arc<MemStore>,
    server: Server,
    session: Session<MemStore>,
    output: Vec<u8>,
    idling: Option<Tag<'static>>,
    authenticating: Option<Tag<'static>>,
    failed_logins: u32,
    bad_in_a_row: u32,
    pending: After,
    /// A long answer goes on once this response is sent (after sending a
    /// streamed body, if there is one).
    more_after: Option<(ResponseHandle, Option<StreamedBody>)>,
    closed: bool,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("session", &self.session).field("closed", &self.closed).finish_non_exhaustive()
    }
}

impl Driver {
    /// A connection whose greeting is written already.
    pub async fn connect(store: Arc<MemStore>, max_literal: u32) -> Self {
        Self::connect_with(store, max_literal, Some(TOKEN.into())).await
    }

    /// A connection to an account whose mail token is `token` (`None`: locked).
    pub async fn connect_with(store: Arc<MemStore>, max_literal: u32, token: Option<String>) -> Self {
        store.take_events();
        let credentials = Credentials { address: ADDRESS.into(), token };
        let session = Session::new(store.clone(), credentials, false);
        let server = Server::new(options(max_literal), session.greeting());
        let mut driver = Self {
            store,
            server,
            session,
            output: Vec::new(),
            idling: None,
            authenticating: None,
            failed_logins: 0,
            bad_in_a_row: 0,
            pending: After::Continue,
            more_after: None,
            closed: false,
        };
        driver.pump().await;
        driver
    }

    /// What the server wrote so far (with [`CLOSED`] where it closed).
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }

    /// What the server wrote so far, as bytes.
    pub fn output_bytes(&self) -> &[u8] {
        &self.output
    }

    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Bytes from the client, as one read.
    pub async fn feed(&mut self, bytes: &[u8]) {
        if self.closed {
            return;
        }
        self.server.enqueue_input(bytes);
        self.pump().await;
    }

    /// The store changed: what the gateway does with the model's events
    /// (updates for the selected mailbox, while idling).
    pub async fn store_changed(&mut self) {
        let events = self.store.take_events();
        if self.closed || self.idling.is_none() {
            // The gateway reads events only while idling; IDLE starts with updates anyway.
            return;
        }
        let relevant = events.iter().any(|event| match event {
            MailEvent::Mailboxes => false,
            event => event.mailbox() == self.session.selected(),
        });
        if relevant {
            let updates = self.session.updates(true).await;
            self.enqueue(updates);
            self.pump().await;
        }
    }

    fn enqueue(&mut self, responses: Vec<Response<'static>>) -> Option<ResponseHandle> {
        let mut last = None;
        for response in responses {
            last = Some(match response {
                Response::Data(data) => self.server.enqueue_data(data),
                Response::Status(status) => self.server.enqueue_status(status),
                Response::CommandContinuationRequest(request) => self.server.enqueue_continuation_request(request),
            });
        }
        last
    }

    /// Streams message bodies of `bytes` or more, as the gateway does.
    pub fn stream_bodies_from(&mut self, bytes: u64) {
        self.session.stream_bodies_from(bytes);
    }

    /// Queues a command's responses; with more to come, the handle after
    /// whose sending they are asked for (as the gateway does).
    async fn answer(&mut self, mut reply: Reply) -> Option<(ResponseHandle, Option<StreamedBody>)> {
        loop {
            let last = self.enqueue(reply.responses);
            if !reply.more {
                return None;
            }
            match (last, reply.stream) {
                (Some(handle), stream) => return Some((handle, stream)),
                (None, Some(stream)) => self.send_streamed(&stream).await,
                (None, None) => {}
            }
            reply = self.session.more().await;
        }
    }

    /// A streamed FETCH response, as the gateway sends it (from the whole
    /// message here, cut into uneven chunks).
    async fn send_streamed(&mut self, streamed: &StreamedBody) {
        let Ok(raw) = self.store.raw(&streamed.message).await else {
            self.session.stream_gone();
            return;
        };
        let end = streamed.range.end.min(raw.len() as u64);
        let start = streamed.range.start.min(end);
        self.output.extend_from_slice(&streamed.head(end - start));
        for chunk in raw[start as usize..end as usize].chunks(1000) {
            let mut chunk = chunk.to_vec();
            bitmask_imap::streamed::clean(&mut chunk);
            self.output.extend_from_slice(&chunk);
        }
        self.output.extend_from_slice(bitmask_imap::streamed::TAIL);
    }

    /// The tagged status of a login (the gateway sleeps after a failure; not here).
    fn login_status(&mut self, reply: Reply) -> Status<'static> {
        if reply.after == After::AuthFailed {
            self.failed_logins += 1;
            if self.failed_logins >= MAX_FAILED_LOGINS {
                self.pending = After::Logout;
            }
        }
        reply
            .responses
            .into_iter()
            .find_map(|response| match response {
                Response::Status(status) => Some(status),
                _ => None,
            })
            .unwrap_or_else(|| untagged_bad("authentication failed"))
    }

    /// Runs the server until it needs more input (the gateway's loop).
    async fn pump(&mut self) {
        loop {
            match self.server.next() {
                // Nothing the client sent behind LOGOUT (or a cut-off) is run
                // or answered: the connection closes once the output is out.
                Ok(
                    Event::CommandReceived { .. }
                    | Event::CommandAuthenticateReceived { .. }
                    | Event::AuthenticateDataReceived { .. }
                    | Event::IdleCommandReceived { .. }
                    | Event::IdleDoneReceived,
                ) if self.pending != After::Continue => {}
                Ok(Event::CommandReceived { command }) => {
                    self.bad_in_a_row = 0;
                    let reply = self.session.handle(command).await;
                    if reply.after == After::AuthFailed {
                        self.failed_logins += 1;
                        if self.failed_logins >= MAX_FAILED_LOGINS {
                            self.pending = After::Logout;
                        }
                    } else {
                        self.pending = reply.after;
                    }
                    self.more_after = self.answer(reply).await;
                }
                Ok(Event::CommandAuthenticateReceived { command_authenticate }) => {
                    let tag = command_authenticate.tag;
                    let finish = if !self.session.may_authenticate() {
                        Some(tagged(&tag, StatusKind::Bad, "already logged in"))
                    } else if command_authenticate.mechanism != AuthMechanism::Plain {
                        Some(tagged(&tag, StatusKind::No, "only AUTHENTICATE PLAIN is supported"))
                    } else {
                        match command_authenticate.initial_response {
                            Some(response) => {
                                let reply = self.session.authenticate_plain(&tag, response.declassify());
                                Some(self.login_status(reply))
                            }
                            None => {
                                let _ = self.server.authenticate_continue(CommandContinuationRequest::Base64(
                                    std::borrow::Cow::Borrowed(b""),
                                ));
                                self.authenticating = Some(tag);
                                None
                            }
                        }
                    };
                    if let Some(status) = finish {
                        let _ = self.server.authenticate_finish(status);
                    }
                }
                Ok(Event::AuthenticateDataReceived { authenticate_data }) => {
                    let tag = self.authenticating.take().unwrap_or_else(|| Tag::unvalidated("*"));
                    let status = match authenticate_data {
                        AuthenticateData::Continue(data) => {
                            let reply = self.session.authenticate_plain(&tag, data.declassify());
                            self.login_status(reply)
                        }
                        AuthenticateData::Cancel => tagged(&tag, StatusKind::Bad, "authentication cancelled"),
                    };
                    let _ = self.server.authenticate_finish(status);
                }
                Ok(Event::IdleCommandReceived { tag }) => {
                    if self.session.may_idle() {
                        let _ = self.server.idle_accept(continuation("idling"));
                        let updates = self.session.updates(true).await;
                        self.enqueue(updates);
                        self.idling = Some(tag);
                    } else {
                        let _ = self.server.idle_reject(tagged(&tag, StatusKind::Bad, "log in first"));
                    }
                }
                Ok(Event::IdleDoneReceived) => {
                    if let Some(tag) = self.idling.take() {
                        self.server.enqueue_status(tagged(&tag, StatusKind::Ok, "IDLE terminated"));
                    }
                }
                Ok(Event::ResponseSent { handle, .. })
                    if self.more_after.as_ref().is_some_and(|(waiting, _)| *waiting == handle) =>
                {
                    if let Some(stream) = self.more_after.take().and_then(|(_, stream)| stream) {
                        self.send_streamed(&stream).await;
                    }
                    let reply = self.session.more().await;
                    self.more_after = self.answer(reply).await;
                }
                Ok(Event::GreetingSent { .. } | Event::ResponseSent { .. }) => {}
                Err(Interrupt::Io(Io::Output(bytes))) => self.output.extend_from_slice(&bytes),
                Err(Interrupt::Io(Io::NeedMoreInput)) => {
                    match std::mem::replace(&mut self.pending, After::Continue) {
                        After::Logout | After::StartTls => {
                            self.closed = true;
                            self.output.extend_from_slice(format!("{CLOSED}\r\n").as_bytes());
                        }
                        After::Continue | After::AuthFailed => {}
                    }
                    return;
                }
                // Nor is a line that does not parse answered then.
                Err(Interrupt::Error(_)) if self.pending != After::Continue => {}
                Err(Interrupt::Error(error)) => {
                    self.bad_in_a_row += 1;
                    match error {
                        ServerError::LiteralTooLong { .. } => {}
                        ServerError::CommandTooLong { .. } => {
                            self.server.enqueue_status(untagged_bad("command too long"));
                            self.pending = After::Logout;
                        }
                        ServerError::ExpectedCrlfGotLf { discarded_bytes }
                        | ServerError::MalformedMessage { discarded_bytes } => {
                            let status = match tag_of(discarded_bytes.declassify()) {
                                Some(tag) => tagged(&tag, StatusKind::Bad, "malformed command"),
                                None => untagged_bad("malformed command"),
                            };
                            self.server.enqueue_status(status);
                        }
                    }
                    if self.bad_in_a_row >= MAX_BAD_IN_A_ROW {
                        self.server.enqueue_status(Status::Bye(Bye {
                            code: None,
                            text: Text::unvalidated("too many protocol errors"),
                        }));
                        self.pending = After::Logout;
                    }
                }
            }
        }
    }
}

// --- transcripts --------------------------------------------------------------

enum Step {
    Send(Vec<u8>),
    Act(String),
}

type Action = Box<dyn Fn(&MemStore)>;

/// A conversation: the client's part, the server's expected part, the store
/// it starts from and the changes made to the store along the way.
pub struct Conversation {
    steps: Vec<Step>,
    expected: Vec<String>,
    setup: Box<dyn Fn() -> Arc<MemStore>>,
    actions: Vec<(String, Action)>,
    max_literal: u32,
    locked: bool,
}

impl std::fmt::Debug for Conversation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversation").field("expected", &self.expected).finish_non_exhaustive()
    }
}

/// `\xHH` escapes to bytes; everything else as written.
fn unescape(line: &str) -> Vec<u8> {
    let bytes = line.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\'
            && bytes.get(index + 1) == Some(&b'x')
            && let Some(hex) = line.get(index + 2..index + 4)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            index += 4;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    out
}

/// Chunk sizes the client's bytes are cut into (usize::MAX: all at once).
pub const CHUNKS: [usize; 6] = [usize::MAX, 1, 2, 3, 5, 7];

impl Conversation {
    /// Parses a transcript (see the module documentation); the store starts
    /// as [`MemStore::new`] unless [`Self::store`] says otherwise.
    pub fn new(transcript: &str) -> Self {
        let mut steps = Vec::new();
        let mut sending: Vec<u8> = Vec::new();
        let mut expected: Vec<String> = Vec::new();
        for line in transcript.lines() {
            let line = line.trim_start();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("C|") {
                sending.extend(unescape(rest.strip_prefix(' ').unwrap_or(rest)));
            } else if let Some(rest) = line.strip_prefix("C:") {
                sending.extend(unescape(rest.strip_prefix(' ').unwrap_or(rest)));
                sending.extend_from_slice(b"\r\n");
            } else if let Some(rest) = line.strip_prefix("S+ ") {
                let last = expected.last_mut().expect("S+ continues an S: line");
                last.push(' ');
                last.push_str(rest.trim_end());
            } else if let Some(rest) = line.strip_prefix("S:") {
                let rest = unescape(rest.strip_prefix(' ').unwrap_or(rest));
                expected.push(String::from_utf8(rest).expect("S: lines are UTF-8"));
            } else if let Some(rest) = line.strip_prefix('!') {
                if !sending.is_empty() {
                    steps.push(Step::Send(std::mem::take(&mut sending)));
                }
                steps.push(Step::Act(rest.trim().to_owned()));
            } else if line.trim_end() == CLOSED {
                expected.push(CLOSED.to_owned());
            } else {
                panic!("a transcript line starts with C:, C|, S:, S+, ! or is {CLOSED}: {line:?}");
            }
        }
        if !sending.is_empty() {
            steps.push(Step::Send(sending));
        }
        Self {
            steps,
            expected,
            setup: Box::new(MemStore::new),
            actions: Vec::new(),
            max_literal: MAX_LITERAL,
            locked: false,
        }
    }

    /// The store each run starts from (built afresh for every run).
    pub fn store(mut self, setup: impl Fn() -> Arc<MemStore> + 'static) -> Self {
        self.setup = Box::new(setup);
        self
    }

    /// What `! name` does to the store.
    pub fn on(mut self, name: &str, action: impl Fn(&MemStore) + 'static) -> Self {
        self.actions.push((name.to_owned(), Box::new(action)));
        self
    }

    /// The account's store is locked: there is no mail token.
    pub fn locked(mut self) -> Self {
        self.locked = true;
        self
    }

    /// A smaller literal limit than the gateway's 64 MiB.
    pub fn max_literal(mut self, max_literal: u32) -> Self {
        self.max_literal = max_literal;
        self
    }

    /// The transcript with the client's bytes cut into `chunk`-byte reads,
    /// and the store as it is at the end.
    pub fn play(&self, chunk: usize) -> (String, Arc<MemStore>) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let store = (self.setup)();
            let token = (!self.locked).then(|| TOKEN.to_owned());
            let mut driver = Driver::connect_with(store.clone(), self.max_literal, token).await;
            for step in &self.steps {
                match step {
                    Step::Send(bytes) => {
                        for piece in bytes.chunks(chunk.max(1)) {
                            driver.feed(piece).await;
                        }
                    }
                    Step::Act(name) => {
                        let (_, action) = self
                            .actions
                            .iter()
                            .find(|(known, _)| known == name)
                            .unwrap_or_else(|| panic!("no action {name:?} registered"));
                        action(&store);
                        driver.store_changed().await;
                    }
                }
            }
            (driver.output(), store)
        })
    }

    /// Plays the conversation whole and in chunks of every size of
    /// [`CHUNKS`], asserts the transcripts are identical and match the
    /// expected lines; the store as the whole run left it.
    pub fn run(&self) -> Arc<MemStore> {
        let (whole, store) = self.play(usize::MAX);
        for chunk in &CHUNKS[1..] {
            let (split, _) = self.play(*chunk);
            if split != whole {
                panic!(
                    "the transcript depends on how the input is split ({chunk}-byte reads)\n\
                     --- whole ---\n{}\n--- in {chunk}-byte reads ---\n{}",
                    show(&whole),
                    show(&split)
                );
            }
        }
        self.check(&whole);
        store
    }

    /// Plays the conversation once (input whole) and compares.
    pub fn run_whole(&self) -> Arc<MemStore> {
        let (whole, store) = self.play(usize::MAX);
        self.check(&whole);
        store
    }

    fn check(&self, transcript: &str) {
        let Some(body) = transcript.strip_suffix("\r\n") else {
            panic!("the server's output does not end with CRLF:\n{}", show(transcript));
        };
        let actual: Vec<&str> = body.split("\r\n").collect();
        let lines = actual.len().max(self.expected.len());
        let mut report = String::new();
        let mut failed = false;
        for index in 0..lines {
            let got = actual.get(index).copied();
            let want = self.expected.get(index).map(String::as_str);
            let matches = match (got, want) {
                // "…" stands for free-form text: anything but a response code.
                (Some(got), Some(want)) => match want.strip_suffix('…') {
                    Some(prefix) => got.strip_prefix(prefix).is_some_and(|text| !text.starts_with('[')),
                    None => got == want,
                },
                _ => false,
            };
            failed |= !matches;
            let mark = if matches { "  " } else { "✗ " };
            report.push_str(&format!("{mark}got  {}\n", got.unwrap_or("<nothing>")));
            if !matches {
                report.push_str(&format!("  want {}\n", want.unwrap_or("<nothing>")));
            }
        }
        assert!(!failed, "the server's transcript differs:\n{report}");
    }
}

/// A transcript with CRLFs shown as line ends.
fn show(transcript: &str) -> String {
    transcript.replace("\r\n", "⏎\n")
}

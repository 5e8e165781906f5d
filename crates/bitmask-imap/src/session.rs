//! One IMAP session's state machine (RFC 3501 section 3): not
//! authenticated, authenticated, selected, logout. It takes commands as
//! imap-types values and answers with responses; it does no I/O and knows the
//! mail only through the [`Mailstore`] trait.
//!
//! Untagged updates of the selected mailbox (EXISTS, EXPUNGE, FETCH FLAGS)
//! come from comparing the session's view with the mailbox as it is now,
//! after every command and when the service says the mailbox changed; as
//! RFC 3501 7.4.1 requires, EXPUNGE is held back during FETCH, STORE and
//! SEARCH so sequence numbers stay what the client thinks they are.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::sync::Arc;

use bitmask_mail::{Entry, FlagOperation, Flags, MailError, MailboxInfo, Mailstore, SpecialUse};
use imap_next::imap_types;
use imap_types::command::{Command, CommandBody};
use imap_types::core::{AString, Atom, IString, Literal, LiteralMode, NString, NString8, QuotedChar, Tag, Text, Vec1};
use imap_types::datetime::DateTime;
use imap_types::extensions::binary::Literal8;
use imap_types::fetch::{Macro, MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName};
use imap_types::flag::{Flag, FlagFetch, FlagNameAttribute, FlagPerm, StoreResponse, StoreType};
use imap_types::mailbox::{ListMailbox, Mailbox};
use imap_types::response::{
    Bye, Capability, Code, Data, Greeting, GreetingKind, Response, Status, StatusBody, StatusKind, Tagged,
};
use imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use imap_types::status::{StatusDataItem, StatusDataItemName};

use crate::message::MessageView;
use crate::streamed::{StreamedBody, StreamedItem};
use crate::{search, utf7};

/// Messages read from the store per round trip by FETCH and SEARCH, and
/// answered per batch by a FETCH of message contents.
const RAW_BATCH: usize = 200;
/// Messages answered per batch by a FETCH of flags, dates and sizes.
const FETCH_BATCH: usize = 1000;

/// The account's credentials: the address and its mail token, `None` while
/// the store is locked (then no login succeeds, whatever the password).
pub struct Credentials {
    pub address: String,
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("address", &self.address).finish_non_exhaustive()
    }
}

/// The outcome of a login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Login {
    Accepted,
    Refused,
    /// The store is locked: no token to compare with.
    Locked,
}

/// What the connection does after the responses are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Continue,
    /// Start TLS now (the OK is among the responses).
    StartTls,
    /// Close the connection.
    Logout,
    /// A failed login: the service slows the next attempt down.
    AuthFailed,
}

#[derive(Debug)]
pub struct Reply {
    pub responses: Vec<Response<'static>>,
    pub after: After,
    /// The command is not finished: once these responses are sent, the
    /// rest comes from [`Session::more`] (a FETCH of 100,000 messages is
    /// answered a batch at a time, not built in memory at once).
    pub more: bool,
    /// After `responses`, and before [`Session::more`], the connection sends
    /// this response from the store (only with `more`).
    pub stream: Option<StreamedBody>,
}

impl Reply {
    fn done(responses: Vec<Response<'static>>, after: After) -> Self {
        Self { responses, after, more: false, stream: None }
    }
}

/// What is left of a FETCH being answered a batch at a time.
#[derive(Debug)]
struct Fetching {
    tag: Tag<'static>,
    /// Positions in the view, in the order asked.
    indices: Vec<usize>,
    /// The next of `indices` to answer.
    next: usize,
    names: Vec<MessageDataItemName<'static>>,
    needs_raw: bool,
    expunge_issued: bool,
    /// Whether EXPUNGE responses may follow it (UID FETCH).
    uid: bool,
}

#[derive(Debug)]
struct Selected {
    name: String,
    read_only: bool,
    /// The messages as the client knows them: sequence number = index + 1.
    view: Vec<Entry>,
    /// UIDs at or above this are `\Recent` for this session.
    recent_from: u32,
    /// UIDs this session announced as `\Recent` since (arrived while selected).
    recent_extra: BTreeSet<u32>,
    /// The store's `version` before the snapshot `view` is up to date with:
    /// while it has not moved, there is nothing to tell.
    version: u64,
}

impl Selected {
    fn recent(&self, uid: u32) -> bool {
        uid >= self.recent_from || self.recent_extra.contains(&uid)
    }
}

#[derive(Debug)]
enum State {
    NotAuthenticated,
    Authenticated,
    Selected(Selected),
    Logout,
}

/// One IMAP session over a mail store.
#[derive(Debug)]
pub struct Session<M> {
    store: Arc<M>,
    credentials: Credentials,
    state: State,
    /// Whether STARTTLS is offered (not yet in TLS, and a certificate exists).
    starttls: bool,
    tls: bool,
    /// A FETCH not answered in full yet.
    fetching: Option<Fetching>,
    /// Message bodies of this size or more are streamed (see `streamed`).
    stream_from: u64,
    /// The response the last batch ends with, streamed by the connection.
    streaming: Option<StreamedBody>,
}

// --- building responses -----------------------------------------------------

fn text(message: impl Into<String>) -> Text<'static> {
    let cleaned: String =
        message.into().chars().map(|c| if c.is_control() || c == '[' || c == ']' { ' ' } else { c }).collect();
    let cleaned = cleaned.trim();
    Text::try_from(if cleaned.is_empty() { "done".to_owned() } else { cleaned.to_owned() })
        .unwrap_or_else(|_| Text::unvalidated("done"))
}

fn status(tag: &Tag<'static>, kind: StatusKind, code: Option<Code<'static>>, message: &str) -> Response<'static> {
    Response::Status(Status::Tagged(Tagged { tag: tag.clone(), body: StatusBody { kind, code, text: text(message) } }))
}

fn ok(tag: &Tag<'static>, message: &str) -> Response<'static> {
    status(tag, StatusKind::Ok, None, message)
}

fn ok_code(tag: &Tag<'static>, code: Code<'static>, message: &str) -> Response<'static> {
    status(tag, StatusKind::Ok, Some(code), message)
}

fn unknown_cte(tag: &Tag<'static>) -> Response<'static> {
    status(tag, StatusKind::No, Some(Code::UnknownCte), "unknown transfer encoding")
}

fn no(tag: &Tag<'static>, message: &str) -> Response<'static> {
    status(tag, StatusKind::No, None, message)
}

fn bad(tag: &Tag<'static>, message: &str) -> Response<'static> {
    status(tag, StatusKind::Bad, None, message)
}

fn untagged(kind: StatusKind, code: Option<Code<'static>>, message: &str) -> Response<'static> {
    Response::Status(Status::Untagged(StatusBody { kind, code, text: text(message) }))
}

fn bye(message: &str) -> Response<'static> {
    Response::Status(Status::Bye(Bye { code: None, text: text(message) }))
}

fn nz(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).unwrap_or(NonZeroU32::MIN)
}

/// A response code of RFC 5530 (or another extension) by its name.
fn code(name: &'static str) -> Code<'static> {
    Code::Other(imap_types::response::CodeOther::unvalidated(Cow::Borrowed(name.as_bytes())))
}

fn name_too_long(tag: &Tag<'static>) -> Response<'static> {
    let text = format!(
        "a mailbox name has at most {} levels and {} bytes",
        bitmask_mail::types::MAX_MAILBOX_LEVELS,
        bitmask_mail::types::MAX_MAILBOX_NAME_BYTES
    );
    status(tag, StatusKind::No, Some(code("LIMIT")), &text)
}

fn already_exists() -> Code<'static> {
    code("ALREADYEXISTS")
}

fn mail_error(tag: &Tag<'static>, error: &MailError) -> Response<'static> {
    match error {
        MailError::Store(_) | MailError::Damaged(_) => {
            status(tag, StatusKind::No, Some(code("SERVERBUG")), &error.to_string())
        }
        MailError::Unavailable(_) => status(tag, StatusKind::No, Some(code("UNAVAILABLE")), &error.to_string()),
        // RFC 5530: the disk is full (not this user's quota).
        MailError::NoSpace(_) => status(tag, StatusKind::No, Some(code("LIMIT")), &error.to_string()),
        _ => no(tag, &error.to_string()),
    }
}

/// A mailbox name from the wire, decoded from modified UTF-7.
fn name_of(mailbox: &Mailbox<'_>) -> Result<String, utf7::InvalidUtf7> {
    match mailbox {
        Mailbox::Inbox => Ok("INBOX".into()),
        Mailbox::Other(other) => {
            let name = utf7::decode(other.as_ref())?;
            Ok(bitmask_mail::types::normalize_name(&name))
        }
    }
}

fn wire_mailbox(name: &str) -> Mailbox<'static> {
    if name == "INBOX" {
        return Mailbox::Inbox;
    }
    let encoded = utf7::encode(name);
    Mailbox::try_from(encoded.clone()).unwrap_or_else(|_| {
        Mailbox::from(AString::String(IString::Literal(Literal::unvalidated(encoded.into_bytes()))))
    })
}

fn flags_from_imap(list: &[Flag<'_>]) -> Flags {
    let mut flags = Flags::default();
    for flag in list {
        match flag {
            Flag::Seen => flags.seen = true,
            Flag::Answered => flags.answered = true,
            Flag::Flagged => flags.flagged = true,
            Flag::Deleted => flags.deleted = true,
            Flag::Draft => flags.draft = true,
            Flag::Keyword(atom) => {
                flags.keywords.insert(atom.as_ref().to_owned());
            }
            Flag::Extension(_) => {}
        }
    }
    flags
}

fn imap_flags(flags: &Flags) -> Vec<Flag<'static>> {
    let mut list = Vec::new();
    for (on, flag) in [
        (flags.seen, Flag::Seen),
        (flags.answered, Flag::Answered),
        (flags.flagged, Flag::Flagged),
        (flags.deleted, Flag::Deleted),
        (flags.draft, Flag::Draft),
    ] {
        if on {
            list.push(flag);
        }
    }
    for keyword in &flags.keywords {
        if let Ok(atom) = Atom::try_from(keyword.clone()) {
            list.push(Flag::Keyword(atom));
        }
    }
    list
}

fn fetch_flags(flags: &Flags, recent: bool) -> Vec<FlagFetch<'static>> {
    let mut list: Vec<FlagFetch<'static>> = imap_flags(flags).into_iter().map(FlagFetch::Flag).collect();
    if recent {
        list.push(FlagFetch::Recent);
    }
    list
}

fn search_flags(flags: &Flags, recent: bool) -> search::Flags {
    search::Flags {
        seen: flags.seen,
        answered: flags.answered,
        flagged: flags.flagged,
        deleted: flags.deleted,
        draft: flags.draft,
        recent,
        keywords: flags.keywords.iter().cloned().collect(),
    }
}

fn internal_date(entry: &Entry) -> chrono::DateTime<chrono::FixedOffset> {
    let zone = chrono::FixedOffset::east_opt(entry.zone_minutes * 60).unwrap_or_else(|| chrono::Utc.fix());
    chrono::DateTime::from_timestamp(entry.internal_date, 0).unwrap_or_default().with_timezone(&zone)
}

use chrono::Offset as _;

/// BINARY[section] (RFC 3516): the whole message, or a part with its
/// transfer encoding undone; None for an encoding we cannot undo.
fn binary_section(view: &MessageView<'_>, raw: &[u8], section: &[NonZeroU32]) -> Option<Vec<u8>> {
    let Ok(path) = Vec1::try_from(section.to_vec()) else { return Some(raw.to_vec()) };
    let part = imap_types::fetch::Part(path);
    let body = view.section(Some(&imap_types::fetch::Section::Part(part.clone()))).unwrap_or_default();
    let mime = view.section(Some(&imap_types::fetch::Section::Mime(part))).unwrap_or_default();
    let mime = String::from_utf8_lossy(&mime).to_ascii_lowercase();
    let encoding = mime
        .split("\n")
        .find_map(|line| line.strip_prefix("content-transfer-encoding:"))
        .map(|value| value.trim().to_owned())
        .unwrap_or_default();
    match encoding.as_str() {
        "" | "7bit" | "8bit" | "binary" => Some(body.into_owned()),
        "base64" => mail_parser::decoders::base64::base64_decode(&body),
        "quoted-printable" => mail_parser::decoders::quoted_printable::quoted_printable_decode(&body),
        _ => None,
    }
}

/// Whether `value` is in `set`, `*` standing for `star`.
fn in_set(set: &SequenceSet, value: u32, star: u32) -> bool {
    let resolve = |bound: &SeqOrUid| match bound {
        SeqOrUid::Value(value) => value.get(),
        SeqOrUid::Asterisk => star,
    };
    set.0.as_ref().iter().any(|sequence| match sequence {
        Sequence::Single(single) => resolve(single) == value,
        Sequence::Range(from, to) => {
            let (a, b) = (resolve(from), resolve(to));
            (a.min(b)..=a.max(b)).contains(&value)
        }
    })
}

/// The largest number a sequence set names explicitly (not `*`).
fn largest(set: &SequenceSet) -> u32 {
    set.0
        .as_ref()
        .iter()
        .flat_map(|sequence| match sequence {
            Sequence::Single(single) => vec![*single],
            Sequence::Range(from, to) => vec![*from, *to],
        })
        .filter_map(|bound| match bound {
            SeqOrUid::Value(value) => Some(value.get()),
            SeqOrUid::Asterisk => None,
        })
        .max()
        .unwrap_or(0)
}

fn uid_set(uids: &[u32]) -> Option<imap_types::extensions::uidplus::UidSet> {
    use imap_types::extensions::uidplus::{UidElement, UidSet};
    let mut elements: Vec<UidElement> = Vec::new();
    let mut iter = uids.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        elements.push(if start == end { UidElement::Single(nz(start)) } else { UidElement::Range(nz(start), nz(end)) });
    }
    Vec1::try_from(elements).ok().map(UidSet)
}

/// LIST's pattern matching: `*` matches anything, `%` anything but `/`.
/// The pattern is walked as an automaton over the name, every pattern
/// position that can be reached at once: time is pattern length times name
/// length whatever the wildcards (trying each way in turn is exponential
/// in the number of `*`).
fn pattern_matches(pattern: &[char], name: &[char]) -> bool {
    // Wildcards match the empty string: a reached wildcard reaches what follows.
    let close = |reached: &mut Vec<bool>| {
        for index in 0..pattern.len() {
            if reached[index] && matches!(pattern[index], '*' | '%') {
                reached[index + 1] = true;
            }
        }
    };
    let mut reached = vec![false; pattern.len() + 1];
    reached[0] = true;
    close(&mut reached);
    for &c in name {
        let mut next = vec![false; pattern.len() + 1];
        for (index, wanted) in pattern.iter().enumerate() {
            if !reached[index] {
                continue;
            }
            match *wanted {
                '*' => next[index] = true,
                '%' if c != '/' => next[index] = true,
                '%' => {}
                literal if literal == c => next[index + 1] = true,
                _ => {}
            }
        }
        close(&mut next);
        if !next.contains(&true) {
            return false;
        }
        reached = next;
    }
    reached[pattern.len()]
}

pub fn capabilities(starttls: bool, authenticated: bool) -> Vec1<Capability<'static>> {
    let mut list = vec![Capability::Imap4Rev1];
    if !authenticated {
        if starttls {
            list.push(Capability::StartTls);
        }
        list.push(Capability::Auth(imap_types::auth::AuthMechanism::Plain));
        list.push(Capability::SaslIr);
    }
    list.extend([
        Capability::Idle,
        Capability::UidPlus,
        Capability::Move,
        Capability::Namespace,
        Capability::LiteralPlus,
        Capability::Enable,
        Capability::Id,
        Capability::Unselect,
        Capability::Binary,
    ]);
    for other in ["SPECIAL-USE", "CHILDREN"] {
        if let Ok(atom) = Atom::try_from(other) {
            list.push(Capability::from(atom).to_static());
        }
    }
    Vec1::try_from(list).unwrap_or_else(|_| Vec1::from(Capability::Imap4Rev1))
}

use imap_types::ToStatic as _;

impl<M: Mailstore> Session<M> {
    pub fn new(store: Arc<M>, credentials: Credentials, starttls: bool) -> Self {
        Self {
            store,
            credentials,
            state: State::NotAuthenticated,
            starttls,
            tls: false,
            fetching: None,
            stream_from: u64::MAX,
            streaming: None,
        }
    }

    /// Streams whole bodies (`BODY[]`, `RFC822`, and partial `BODY[]<…>`)
    /// of messages of `bytes` or more instead of reading them here: the
    /// connection sends each [`Reply::stream`] from the store.
    pub fn stream_bodies_from(&mut self, bytes: u64) {
        self.stream_from = bytes;
    }

    /// The message of the last [`Reply::stream`] was gone before any of it
    /// was sent: the FETCH ends `NO [EXPUNGEISSUED]`, as when it is read here.
    pub fn stream_gone(&mut self) {
        if let Some(fetching) = &mut self.fetching {
            fetching.expunge_issued = true;
        }
    }

    pub fn greeting(&self) -> Greeting<'static> {
        Greeting {
            kind: GreetingKind::Ok,
            code: Some(Code::Capability(capabilities(self.starttls, false))),
            text: text("bitmask IMAP ready"),
        }
    }

    /// TLS is up now (after STARTTLS).
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.starttls = false;
    }

    /// The selected mailbox's name, if any (for routing change events).
    pub fn selected(&self) -> Option<&str> {
        match &self.state {
            State::Selected(selected) => Some(&selected.name),
            _ => None,
        }
    }

    pub fn authenticated(&self) -> bool {
        matches!(self.state, State::Authenticated | State::Selected(_))
    }

    /// The mail token as the store has it now (`None`: the store is locked).
    pub fn set_token(&mut self, token: Option<String>) {
        self.credentials.token = token;
    }

    /// Checks a login, in constant time over the token.
    fn check(&self, user: &[u8], password: &[u8]) -> Login {
        let Some(token) = &self.credentials.token else { return Login::Locked };
        let user_ok = std::str::from_utf8(user).is_ok_and(|user| user.eq_ignore_ascii_case(&self.credentials.address));
        let expected = token.as_bytes();
        let mut difference = expected.len() ^ password.len();
        for (index, byte) in expected.iter().enumerate() {
            difference |= usize::from(byte ^ password.get(index).copied().unwrap_or(0));
        }
        // An empty token never matches (a store that has none yet).
        if user_ok && difference == 0 && !expected.is_empty() { Login::Accepted } else { Login::Refused }
    }

    fn login_done(&mut self, tag: &Tag<'static>, login: Login) -> Reply {
        match login {
            Login::Accepted => {
                self.state = State::Authenticated;
                let code = Code::Capability(capabilities(false, true));
                Reply::done(vec![ok_code(tag, code, "logged in")], After::Continue)
            }
            Login::Refused => {
                let code = code("AUTHENTICATIONFAILED");
                let text = "wrong address or mail token";
                Reply::done(vec![status(tag, StatusKind::No, Some(code), text)], After::AuthFailed)
            }
            // Not a failed guess: nobody can log in until the account is unlocked (RFC 5530).
            Login::Locked => {
                let text = "the account is locked: unlock it with bitmaskctl account start";
                Reply::done(vec![status(tag, StatusKind::No, Some(code("UNAVAILABLE")), text)], After::Continue)
            }
        }
    }

    /// AUTHENTICATE PLAIN with its initial response or the client's answer
    /// to the empty challenge (base64 already decoded by the codec).
    pub fn authenticate_plain(&mut self, tag: &Tag<'static>, response: &[u8]) -> Reply {
        let mut fields = response.split(|byte| *byte == 0);
        let (_authzid, user, password) = (fields.next(), fields.next(), fields.next());
        let login = match (user, password, fields.next()) {
            (Some(user), Some(password), None) => self.check(user, password),
            _ => Login::Refused,
        };
        self.login_done(tag, login)
    }

    /// Whether AUTHENTICATE may start now.
    pub fn may_authenticate(&self) -> bool {
        matches!(self.state, State::NotAuthenticated)
    }

    /// Whether IDLE may start now.
    pub fn may_idle(&self) -> bool {
        self.authenticated()
    }

    /// Untagged updates of the selected mailbox (for NOOP, IDLE and after
    /// commands); `expunges`: whether EXPUNGE may be sent now.
    pub async fn updates(&mut self, expunges: bool) -> Vec<Response<'static>> {
        let State::Selected(selected) = &mut self.state else { return Vec::new() };
        let version = self.store.version();
        if version == selected.version {
            return Vec::new();
        }
        let Ok((_, now)) = self.store.snapshot(&selected.name).await else {
            // The mailbox is gone (deleted elsewhere): RFC 3501 lets the server close it.
            return Vec::new();
        };
        let mut responses = Vec::new();
        let current: std::collections::HashMap<u32, &Entry> = now.iter().map(|entry| (entry.uid, entry)).collect();
        // Up to date after this, unless expunges must wait for a later call.
        if expunges || selected.view.iter().all(|known| current.contains_key(&known.uid)) {
            selected.version = version;
        }
        if expunges {
            // Each EXPUNGE names the sequence number as of the ones before it.
            let mut kept = 0u32;
            selected.view.retain(|known| {
                let keep = current.contains_key(&known.uid);
                if keep {
                    kept += 1;
                } else {
                    responses.push(Response::Data(Data::Expunge(nz(kept + 1))));
                }
                keep
            });
        }
        for (index, known) in selected.view.iter_mut().enumerate() {
            if let Some(entry) = current.get(&known.uid)
                && entry.flags != known.flags
            {
                *known = (*entry).clone();
                let items = vec![
                    MessageDataItem::Flags(fetch_flags(
                        &known.flags,
                        selected.recent_from <= known.uid || selected.recent_extra.contains(&known.uid),
                    )),
                    MessageDataItem::Uid(nz(known.uid)),
                ];
                if let Ok(items) = Vec1::try_from(items) {
                    responses.push(Response::Data(Data::Fetch { seq: nz(index as u32 + 1), items }));
                }
            }
        }
        let highest = selected.view.last().map_or(0, |entry| entry.uid);
        let arrived: Vec<Entry> = now.into_iter().filter(|entry| entry.uid > highest).collect();
        if !arrived.is_empty() {
            let mut recent_new = 0;
            if !selected.read_only
                && let Ok(floor) = self.store.claim_recent(&selected.name).await
            {
                for entry in &arrived {
                    if entry.uid >= floor {
                        selected.recent_extra.insert(entry.uid);
                        recent_new += 1;
                    }
                }
            }
            selected.view.extend(arrived);
            responses.push(Response::Data(Data::Exists(selected.view.len() as u32)));
            let recent = selected.view.iter().filter(|entry| selected.recent(entry.uid)).count() as u32;
            if recent_new > 0 || recent > 0 {
                responses.push(Response::Data(Data::Recent(recent)));
            }
        }
        responses
    }

    /// Handles one command (not AUTHENTICATE or IDLE, which imap-next
    /// delivers as their own events).
    pub async fn handle(&mut self, command: Command<'_>) -> Reply {
        let tag = command.tag.to_static();
        let mut after = After::Continue;
        let (mut responses, expunges_allowed) = match (&self.state, command.body) {
            (State::Logout, _) => (vec![bad(&tag, "logging out")], false),
            (_, CommandBody::Capability) => {
                let caps = capabilities(self.starttls, self.authenticated());
                (vec![Response::Data(Data::Capability(caps)), ok(&tag, "CAPABILITY completed")], true)
            }
            (_, CommandBody::Noop) => (vec![ok(&tag, "NOOP completed")], true),
            (_, CommandBody::Logout) => {
                self.state = State::Logout;
                return Reply::done(vec![bye("logging out"), ok(&tag, "LOGOUT completed")], After::Logout);
            }
            (_, CommandBody::Id { .. }) => {
                let parameters = vec![(
                    IString::try_from("name")
                        .unwrap_or_else(|_| IString::Literal(Literal::unvalidated(b"name".as_slice()))),
                    NString(IString::try_from("bitmask").ok()),
                )];
                (vec![Response::Data(Data::Id { parameters: Some(parameters) }), ok(&tag, "ID completed")], true)
            }
            (State::NotAuthenticated, CommandBody::StartTLS) => {
                if self.starttls {
                    after = After::StartTls;
                    (vec![ok(&tag, "begin TLS negotiation now")], false)
                } else {
                    (vec![bad(&tag, "TLS is not available here, or already active")], false)
                }
            }
            (State::NotAuthenticated, CommandBody::Login { username, password }) => {
                let login = self.check(username.as_ref(), password.declassify().as_ref());
                return self.login_done(&tag, login);
            }
            (State::NotAuthenticated, _) => (vec![bad(&tag, "log in first")], false),
            (_, CommandBody::Login { .. } | CommandBody::StartTLS) => (vec![bad(&tag, "already logged in")], false),
            (_, CommandBody::Namespace) => {
                let personal = vec![imap_types::extensions::namespace::Namespace::new(
                    IString::try_from("").unwrap_or_else(|_| IString::Literal(Literal::unvalidated(b"".as_slice()))),
                    QuotedChar::try_from('/').ok(),
                )];
                (
                    vec![
                        Response::Data(Data::Namespace { personal, other: Vec::new(), shared: Vec::new() }),
                        ok(&tag, "NAMESPACE completed"),
                    ],
                    true,
                )
            }
            (_, CommandBody::Enable { .. }) => {
                (vec![Response::Data(Data::Enabled { capabilities: Vec::new() }), ok(&tag, "ENABLE completed")], true)
            }
            (_, CommandBody::Select { mailbox, .. }) => (self.select(&tag, &mailbox, false).await, false),
            (_, CommandBody::Examine { mailbox, .. }) => (self.select(&tag, &mailbox, true).await, false),
            (_, CommandBody::Create { mailbox }) => (vec![self.create(&tag, &mailbox).await], true),
            (_, CommandBody::Delete { mailbox }) => (vec![self.delete(&tag, &mailbox).await], true),
            (_, CommandBody::Rename { from, to }) => (vec![self.rename(&tag, &from, &to).await], true),
            (_, CommandBody::Subscribe { mailbox }) => (vec![self.subscribe(&tag, &mailbox, true).await], true),
            (_, CommandBody::Unsubscribe { mailbox }) => (vec![self.subscribe(&tag, &mailbox, false).await], true),
            (_, CommandBody::List { reference, mailbox_wildcard }) => {
                (self.list(&tag, &reference, &mailbox_wildcard, false).await, true)
            }
            (_, CommandBody::Lsub { reference, mailbox_wildcard }) => {
                (self.list(&tag, &reference, &mailbox_wildcard, true).await, true)
            }
            (_, CommandBody::Status { mailbox, item_names }) => (self.status(&tag, &mailbox, &item_names).await, true),
            (_, CommandBody::Append { mailbox, flags, date, message }) => {
                let raw: Vec<u8> = match message {
                    imap_types::extensions::binary::LiteralOrLiteral8::Literal(literal) => {
                        literal.into_inner().into_owned()
                    }
                    imap_types::extensions::binary::LiteralOrLiteral8::Literal8(literal) => literal.data.into_owned(),
                };
                (vec![self.append(&tag, &mailbox, &flags, date.as_ref(), &raw).await], true)
            }
            (State::Authenticated, _) => (vec![bad(&tag, "select a mailbox first")], false),
            (State::Selected(_), CommandBody::Check) => (vec![ok(&tag, "CHECK completed")], true),
            (State::Selected(_), CommandBody::Close) => {
                self.close(true).await;
                (vec![ok(&tag, "CLOSE completed")], false)
            }
            (State::Selected(_), CommandBody::Unselect) => {
                self.state = State::Authenticated;
                (vec![ok(&tag, "UNSELECT completed")], false)
            }
            (State::Selected(_), CommandBody::Expunge) => (self.expunge(&tag, None).await, true),
            (State::Selected(_), CommandBody::ExpungeUid { sequence_set }) => {
                (self.expunge(&tag, Some(&sequence_set)).await, true)
            }
            (State::Selected(_), CommandBody::Search { charset, criteria, uid }) => {
                (self.search(&tag, charset.as_ref(), criteria.as_ref(), uid).await, uid)
            }
            (State::Selected(_), CommandBody::Fetch { sequence_set, macro_or_item_names, uid, .. }) => {
                (self.fetch(&tag, &sequence_set, macro_or_item_names, uid).await, uid)
            }
            (State::Selected(_), CommandBody::Store { sequence_set, kind, response, flags, uid, .. }) => {
                (self.store(&tag, &sequence_set, kind, response, &flags, uid).await, uid)
            }
            (State::Selected(_), CommandBody::Copy { sequence_set, mailbox, uid }) => {
                (self.copy(&tag, &sequence_set, &mailbox, uid, false).await, uid)
            }
            (State::Selected(_), CommandBody::Move { sequence_set, mailbox, uid }) => {
                (self.copy(&tag, &sequence_set, &mailbox, uid, true).await, uid)
            }
            (State::Selected(_), _) => (vec![bad(&tag, "command not supported")], false),
        };
        if self.fetching.is_some() {
            return Reply { responses, after, more: true, stream: self.streaming.take() };
        }
        self.finish(&mut responses, after, expunges_allowed).await;
        Reply::done(responses, after)
    }

    /// The next batch of a command's responses, when the last [`Reply`]
    /// said there is more.
    pub async fn more(&mut self) -> Reply {
        let Some(expunges_allowed) = self.fetching.as_ref().map(|fetching| fetching.uid) else {
            return Reply::done(Vec::new(), After::Continue);
        };
        let mut responses = self.fetch_batch().await;
        if self.fetching.is_some() {
            return Reply { responses, after: After::Continue, more: true, stream: self.streaming.take() };
        }
        self.finish(&mut responses, After::Continue, expunges_allowed).await;
        Reply::done(responses, After::Continue)
    }

    /// Untagged updates of the selected mailbox go before the tagged
    /// completion (the last of `responses`).
    async fn finish(&mut self, responses: &mut Vec<Response<'static>>, after: After, expunges_allowed: bool) {
        if after == After::Continue && matches!(self.state, State::Selected(_)) {
            let updates = self.updates(expunges_allowed).await;
            if !updates.is_empty() {
                let last = responses.pop();
                responses.extend(updates);
                responses.extend(last);
            }
        }
    }

    async fn select(&mut self, tag: &Tag<'static>, mailbox: &Mailbox<'_>, read_only: bool) -> Vec<Response<'static>> {
        // A failed SELECT leaves no mailbox selected (RFC 3501).
        self.state = State::Authenticated;
        let name = match name_of(mailbox) {
            Ok(name) => name,
            Err(error) => return vec![bad(tag, &error.to_string())],
        };
        let claimed = if read_only {
            None
        } else {
            match self.store.claim_recent(&name).await {
                Ok(floor) => Some(floor),
                // A full disk cannot keep the claim: the mailbox opens
                // without it, `\Recent` counted as EXAMINE counts it.
                Err(MailError::NoSpace(_)) => None,
                Err(error) => return vec![mail_error(tag, &error)],
            }
        };
        let version = self.store.version();
        let (info, view) = match self.store.snapshot(&name).await {
            Ok(snapshot) => snapshot,
            Err(error) => return vec![mail_error(tag, &error)],
        };
        // EXAMINE claims nothing: the last `recent` messages are the recent ones.
        let recent_from = claimed.unwrap_or_else(|| {
            let first = view.len().saturating_sub(info.recent as usize);
            view.get(first).map_or(info.uid_next, |entry| entry.uid)
        });
        let recent = view.iter().filter(|entry| entry.uid >= recent_from).count() as u32;
        let mut responses = vec![
            Response::Data(Data::Flags(vec![Flag::Answered, Flag::Flagged, Flag::Deleted, Flag::Seen, Flag::Draft])),
            untagged(
                StatusKind::Ok,
                Some(Code::PermanentFlags(vec![
                    FlagPerm::Flag(Flag::Answered),
                    FlagPerm::Flag(Flag::Flagged),
                    FlagPerm::Flag(Flag::Deleted),
                    FlagPerm::Flag(Flag::Seen),
                    FlagPerm::Flag(Flag::Draft),
                    FlagPerm::Asterisk,
                ])),
                "flags permitted",
            ),
            Response::Data(Data::Exists(view.len() as u32)),
            Response::Data(Data::Recent(recent)),
        ];
        if let Some(position) = view.iter().position(|entry| !entry.flags.seen) {
            responses.push(untagged(StatusKind::Ok, Some(Code::Unseen(nz(position as u32 + 1))), "first unseen"));
        }
        responses.push(untagged(StatusKind::Ok, Some(Code::UidValidity(nz(info.uid_validity))), "UIDs valid"));
        responses.push(untagged(StatusKind::Ok, Some(Code::UidNext(nz(info.uid_next))), "predicted next UID"));
        let code = if read_only { Code::ReadOnly } else { Code::ReadWrite };
        responses.push(ok_code(tag, code, if read_only { "EXAMINE completed" } else { "SELECT completed" }));
        self.state = State::Selected(Selected {
            name: info.name,
            read_only,
            view,
            recent_from,
            recent_extra: BTreeSet::new(),
            version,
        });
        responses
    }

    async fn close(&mut self, expunge: bool) {
        if let State::Selected(selected) = &self.state
            && expunge
            && !selected.read_only
        {
            let _ = self.store.expunge(&selected.name, None).await;
        }
        self.state = State::Authenticated;
    }

    async fn create(&mut self, tag: &Tag<'static>, mailbox: &Mailbox<'_>) -> Response<'static> {
        let name = match name_of(mailbox) {
            Ok(name) => name,
            Err(error) => return bad(tag, &error.to_string()),
        };
        if name == "INBOX" {
            return no(tag, "INBOX exists already");
        }
        if !bitmask_mail::types::name_within_limits(&name) {
            return name_too_long(tag);
        }
        match self.store.create_mailbox(&name, SpecialUse::None).await {
            Ok(_) => ok(tag, "CREATE completed"),
            Err(MailError::MailboxExists(_)) => {
                status(tag, StatusKind::No, Some(code("ALREADYEXISTS")), "mailbox exists already")
            }
            Err(error) => mail_error(tag, &error),
        }
    }

    async fn delete(&mut self, tag: &Tag<'static>, mailbox: &Mailbox<'_>) -> Response<'static> {
        let name = match name_of(mailbox) {
            Ok(name) => name,
            Err(error) => return bad(tag, &error.to_string()),
        };
        match self.store.delete_mailbox(&name).await {
            Ok(()) => {
                if self.selected() == Some(name.as_str()) {
                    self.state = State::Authenticated;
                }
                ok(tag, "DELETE completed")
            }
            Err(error) => mail_error(tag, &error),
        }
    }

    async fn rename(&mut self, tag: &Tag<'static>, from: &Mailbox<'_>, to: &Mailbox<'_>) -> Response<'static> {
        let (from, to) = match (name_of(from), name_of(to)) {
            (Ok(from), Ok(to)) => (from, to),
            (Err(error), _) | (_, Err(error)) => return bad(tag, &error.to_string()),
        };
        if !bitmask_mail::types::name_within_limits(&to) {
            return name_too_long(tag);
        }
        match self.store.rename_mailbox(&from, &to).await {
            Ok(()) => {
                // The selected mailbox (or one under it) goes by its new name.
                if let State::Selected(selected) = &mut self.state {
                    if selected.name == from {
                        selected.name = to.clone();
                    } else if let Some(rest) = selected.name.strip_prefix(&format!("{from}/")) {
                        selected.name = format!("{to}/{rest}");
                    }
                }
                ok(tag, "RENAME completed")
            }
            Err(MailError::MailboxExists(_)) => {
                status(tag, StatusKind::No, Some(already_exists()), "mailbox exists already")
            }
            Err(error) => mail_error(tag, &error),
        }
    }

    async fn subscribe(&mut self, tag: &Tag<'static>, mailbox: &Mailbox<'_>, on: bool) -> Response<'static> {
        let name = match name_of(mailbox) {
            Ok(name) => name,
            Err(error) => return bad(tag, &error.to_string()),
        };
        match self.store.set_subscribed(&name, on).await {
            Ok(()) => ok(tag, if on { "SUBSCRIBE completed" } else { "UNSUBSCRIBE completed" }),
            Err(error) => mail_error(tag, &error),
        }
    }

    async fn list(
        &mut self,
        tag: &Tag<'static>,
        reference: &Mailbox<'_>,
        pattern: &ListMailbox<'_>,
        subscribed_only: bool,
    ) -> Vec<Response<'static>> {
        let pattern_bytes: &[u8] = match pattern {
            ListMailbox::Token(token) => token.as_ref(),
            ListMailbox::String(string) => string.as_ref(),
        };
        let reference = match reference {
            Mailbox::Inbox => "INBOX".to_owned(),
            Mailbox::Other(other) => match utf7::decode(other.as_ref()) {
                Ok(name) => name,
                Err(error) => return vec![bad(tag, &error.to_string())],
            },
        };
        let Ok(pattern) = utf7::decode(pattern_bytes) else {
            return vec![bad(tag, "the pattern is not valid modified UTF-7")];
        };
        let delimiter = QuotedChar::try_from('/').ok();
        if pattern.is_empty() {
            // The hierarchy delimiter and root name (RFC 3501 6.3.8).
            let item = Data::List { items: vec![FlagNameAttribute::Noselect], delimiter, mailbox: wire_mailbox("") };
            return vec![Response::Data(item), ok(tag, "LIST completed")];
        }
        let full: Vec<char> = format!("{reference}{pattern}").chars().collect();
        let mailboxes = match self.store.mailboxes().await {
            Ok(mailboxes) => mailboxes,
            Err(error) => return vec![mail_error(tag, &error)],
        };
        let names: Vec<&str> = mailboxes.iter().map(|mailbox| mailbox.name.as_str()).collect();
        let mut responses = Vec::new();
        for mailbox in &mailboxes {
            if subscribed_only && !mailbox.subscribed {
                continue;
            }
            let chars: Vec<char> = mailbox.name.chars().collect();
            let inbox_match = mailbox.name == "INBOX" && {
                let upper: Vec<char> = full.iter().map(|c| c.to_ascii_uppercase()).collect();
                pattern_matches(&upper, &chars)
            };
            if !inbox_match && !pattern_matches(&full, &chars) {
                continue;
            }
            let prefix = format!("{}/", mailbox.name);
            let children = names.iter().any(|name| name.starts_with(&prefix));
            let mut items = Vec::new();
            if !subscribed_only {
                let attribute = if children { "\\HasChildren" } else { "\\HasNoChildren" };
                items.extend(Atom::try_from(&attribute[1..]).ok().map(FlagNameAttribute::from));
                if let Some(special) = mailbox.special_use.attribute()
                    && let Ok(atom) = Atom::try_from(&special[1..])
                {
                    items.push(FlagNameAttribute::from(atom));
                }
            }
            let data = if subscribed_only {
                Data::Lsub { items, delimiter, mailbox: wire_mailbox(&mailbox.name) }
            } else {
                Data::List { items, delimiter, mailbox: wire_mailbox(&mailbox.name) }
            };
            responses.push(Response::Data(data));
        }
        if subscribed_only && full.contains(&'%') {
            // RFC 3501 6.3.9: a subscribed mailbox's parent that `%` matches
            // is listed too, \Noselect, when it is not listed itself.
            let listed: BTreeSet<&str> =
                mailboxes.iter().filter(|mailbox| mailbox.subscribed).map(|mailbox| mailbox.name.as_str()).collect();
            let mut parents = BTreeSet::new();
            for name in &listed {
                let levels: Vec<&str> = name.split('/').collect();
                for depth in 1..levels.len() {
                    let parent = levels[..depth].join("/");
                    let chars: Vec<char> = parent.chars().collect();
                    if !listed.contains(parent.as_str()) && pattern_matches(&full, &chars) {
                        parents.insert(parent);
                    }
                }
            }
            for parent in parents {
                let items = vec![FlagNameAttribute::Noselect];
                responses.push(Response::Data(Data::Lsub { items, delimiter, mailbox: wire_mailbox(&parent) }));
            }
        }
        responses.push(ok(tag, if subscribed_only { "LSUB completed" } else { "LIST completed" }));
        responses
    }

    async fn status(
        &mut self,
        tag: &Tag<'static>,
        mailbox: &Mailbox<'_>,
        names: &[StatusDataItemName],
    ) -> Vec<Response<'static>> {
        let name = match name_of(mailbox) {
            Ok(name) => name,
            Err(error) => return vec![bad(tag, &error.to_string())],
        };
        let info: MailboxInfo = match self.store.mailbox(&name).await {
            Ok(info) => info,
            Err(error) => return vec![mail_error(tag, &error)],
        };
        let mut items = Vec::new();
        for item in names {
            items.push(match item {
                StatusDataItemName::Messages => StatusDataItem::Messages(info.messages),
                StatusDataItemName::Recent => StatusDataItem::Recent(info.recent),
                StatusDataItemName::UidNext => StatusDataItem::UidNext(nz(info.uid_next)),
                StatusDataItemName::UidValidity => StatusDataItem::UidValidity(nz(info.uid_validity)),
                StatusDataItemName::Unseen => StatusDataItem::Unseen(info.unseen),
                _ => continue,
            });
        }
        vec![
            Response::Data(Data::Status { mailbox: wire_mailbox(&info.name), items: Cow::Owned(items) }),
            ok(tag, "STATUS completed"),
        ]
    }

    async fn append(
        &mut self,
        tag: &Tag<'static>,
        mailbox: &Mailbox<'_>,
        flags: &[Flag<'_>],
        date: Option<&DateTime>,
        raw: &[u8],
    ) -> Response<'static> {
        let name = match name_of(mailbox) {
            Ok(name) => name,
            Err(error) => return bad(tag, &error.to_string()),
        };
        if raw.len() > bitmask_mail::MAX_MESSAGE_BYTES {
            let text = "the message is larger than the 40 MiB limit";
            return status(tag, StatusKind::No, Some(code("TOOBIG")), text);
        }
        let date = date.map(|date| {
            let date = date.as_ref();
            (date.timestamp(), date.offset().local_minus_utc() / 60)
        });
        match self.store.append(&name, raw, &flags_from_imap(flags), date).await {
            Ok((validity, uid)) => {
                ok_code(tag, Code::AppendUid { uid_validity: nz(validity), uid: nz(uid) }, "APPEND completed")
            }
            Err(MailError::NoMailbox(_)) => status(tag, StatusKind::No, Some(Code::TryCreate), "no such mailbox"),
            Err(error) => mail_error(tag, &error),
        }
    }

    /// The view's indices a set names (sequence numbers or UIDs), or a BAD.
    fn resolve(&self, tag: &Tag<'static>, set: &SequenceSet, uid: bool) -> Result<Vec<usize>, Response<'static>> {
        let State::Selected(selected) = &self.state else { return Err(bad(tag, "no mailbox selected")) };
        let count = selected.view.len() as u32;
        if uid {
            let star = selected.view.last().map_or(0, |entry| entry.uid);
            Ok(selected
                .view
                .iter()
                .enumerate()
                .filter(|(_, entry)| in_set(set, entry.uid, star))
                .map(|(index, _)| index)
                .collect())
        } else {
            if largest(set) > count || (count == 0 && !set.0.as_ref().is_empty()) {
                return Err(bad(tag, "invalid message sequence number"));
            }
            Ok((1..=count).filter(|seq| in_set(set, *seq, count)).map(|seq| seq as usize - 1).collect())
        }
    }

    async fn expunge(&mut self, tag: &Tag<'static>, uids: Option<&SequenceSet>) -> Vec<Response<'static>> {
        let State::Selected(selected) = &self.state else { return vec![bad(tag, "no mailbox selected")] };
        if selected.read_only {
            return vec![no(tag, "the mailbox is read-only (EXAMINE)")];
        }
        let name = selected.name.clone();
        let only: Option<Vec<u32>> = match uids {
            Some(set) => match self.resolve(tag, set, true) {
                Ok(indices) => Some(indices.into_iter().map(|index| selected.view[index].uid).collect()),
                Err(response) => return vec![response],
            },
            None => None,
        };
        match self.store.expunge(&name, only.as_deref()).await {
            Ok(_) => {
                let mut responses = self.updates(true).await;
                responses.push(ok(tag, "EXPUNGE completed"));
                responses
            }
            Err(error) => vec![mail_error(tag, &error)],
        }
    }

    async fn search(
        &mut self,
        tag: &Tag<'static>,
        charset: Option<&imap_types::core::Charset<'_>>,
        criteria: &[imap_types::search::SearchKey<'_>],
        uid: bool,
    ) -> Vec<Response<'static>> {
        if search::check_charset(charset).is_err() {
            let allowed = search::SUPPORTED_CHARSETS
                .iter()
                .filter_map(|name| imap_types::core::Charset::try_from(*name).ok())
                .collect();
            return vec![status(tag, StatusKind::No, Some(Code::badcharset(allowed)), "unsupported charset")];
        }
        let State::Selected(selected) = &self.state else { return vec![bad(tag, "no mailbox selected")] };
        let limits = search::Limits {
            max_seq: selected.view.len() as u32,
            max_uid: selected.view.last().map_or(0, |entry| entry.uid),
        };
        let needs_raw = criteria.iter().any(search::needs_raw);
        let mut found = Vec::new();
        let mut raws: Vec<Option<Arc<Vec<u8>>>> = Vec::new();
        for (index, entry) in selected.view.iter().enumerate() {
            if needs_raw && index % RAW_BATCH == 0 {
                let end = (index + RAW_BATCH).min(selected.view.len());
                let ids: Vec<Arc<str>> = selected.view[index..end].iter().map(|entry| entry.message.clone()).collect();
                raws = self.store.raws(&ids).await.unwrap_or_else(|_| vec![None; ids.len()]);
                raws.reverse();
            }
            let raw = if needs_raw { raws.pop().flatten() } else { None };
            let loader = move || raw.as_ref().map(|raw| Cow::Owned(raw.to_vec()));
            let flags = search_flags(&entry.flags, selected.recent(entry.uid));
            let candidate = search::Candidate {
                seq: index as u32 + 1,
                uid: entry.uid,
                flags: &flags,
                internal_date: internal_date(entry),
                size: entry.size,
                raw: &loader,
            };
            if search::matches_all(criteria, &candidate, &limits) {
                found.push(nz(if uid { entry.uid } else { index as u32 + 1 }));
            }
        }
        vec![Response::Data(Data::Search(found)), ok(tag, "SEARCH completed")]
    }

    async fn fetch(
        &mut self,
        tag: &Tag<'static>,
        set: &SequenceSet,
        items: MacroOrMessageDataItemNames<'_>,
        uid: bool,
    ) -> Vec<Response<'static>> {
        let indices = match self.resolve(tag, set, uid) {
            Ok(indices) => indices,
            Err(response) => return vec![response],
        };
        let mut names: Vec<MessageDataItemName<'static>> = match items {
            MacroOrMessageDataItemNames::Macro(Macro::Fast) => {
                vec![MessageDataItemName::Flags, MessageDataItemName::InternalDate, MessageDataItemName::Rfc822Size]
            }
            MacroOrMessageDataItemNames::Macro(Macro::All) => vec![
                MessageDataItemName::Flags,
                MessageDataItemName::InternalDate,
                MessageDataItemName::Rfc822Size,
                MessageDataItemName::Envelope,
            ],
            MacroOrMessageDataItemNames::Macro(_) => vec![
                MessageDataItemName::Flags,
                MessageDataItemName::InternalDate,
                MessageDataItemName::Rfc822Size,
                MessageDataItemName::Envelope,
                MessageDataItemName::Body,
            ],
            MacroOrMessageDataItemNames::MessageDataItemNames(names) => {
                names.into_iter().map(|name| name.to_static()).collect()
            }
        };
        if uid && !names.contains(&MessageDataItemName::Uid) {
            names.insert(0, MessageDataItemName::Uid);
        }
        let needs_raw = names.iter().any(|name| {
            matches!(
                name,
                MessageDataItemName::Envelope
                    | MessageDataItemName::Body
                    | MessageDataItemName::BodyStructure
                    | MessageDataItemName::BodyExt { .. }
                    | MessageDataItemName::Rfc822
                    | MessageDataItemName::Rfc822Header
                    | MessageDataItemName::Rfc822Text
                    | MessageDataItemName::Binary { .. }
                    | MessageDataItemName::BinarySize { .. }
            )
        });
        let sets_seen = names.iter().any(|name| {
            matches!(
                name,
                MessageDataItemName::BodyExt { peek: false, .. }
                    | MessageDataItemName::Binary { peek: false, .. }
                    | MessageDataItemName::Rfc822
                    | MessageDataItemName::Rfc822Text
            )
        });
        let State::Selected(selected) = &self.state else { return vec![bad(tag, "no mailbox selected")] };
        let (name, read_only) = (selected.name.clone(), selected.read_only);
        // Reading a body marks the message \Seen (not with BODY.PEEK, not in EXAMINE).
        if sets_seen && !read_only {
            let unseen: Vec<u32> = indices
                .iter()
                .map(|index| &selected.view[*index])
                .filter(|entry| !entry.flags.seen)
                .map(|entry| entry.uid)
                .collect();
            if !unseen.is_empty() {
                let seen = Flags { seen: true, ..Flags::default() };
                if let Ok(changed) = self.store.set_flags(&name, &unseen, FlagOperation::Add, &seen).await
                    && let State::Selected(selected) = &mut self.state
                {
                    for entry in changed {
                        if let Some(known) = selected.view.iter_mut().find(|known| known.uid == entry.uid) {
                            *known = entry;
                        }
                    }
                    if !names.contains(&MessageDataItemName::Flags) {
                        names.push(MessageDataItemName::Flags);
                    }
                }
            }
        }
        self.fetching =
            Some(Fetching { tag: tag.clone(), indices, next: 0, names, needs_raw, expunge_issued: false, uid });
        self.fetch_batch().await
    }

    /// Answers the next batch of the FETCH under way; with its last batch,
    /// the tagged completion (and the FETCH is over).
    async fn fetch_batch(&mut self) -> Vec<Response<'static>> {
        let Some(mut fetching) = self.fetching.take() else { return Vec::new() };
        let State::Selected(selected) = &self.state else { return vec![bad(&fetching.tag, "no mailbox selected")] };
        let Fetching { tag, indices, names, needs_raw, .. } = &fetching;
        let (tag, needs_raw) = (tag.clone(), *needs_raw);
        let start = fetching.next;
        let mut expunge_issued = fetching.expunge_issued;
        let mut end = (start + if needs_raw { RAW_BATCH } else { FETCH_BATCH }).min(indices.len());
        let mut responses = Vec::with_capacity(end - start + 1);
        let needs_view = names.iter().any(|name| {
            !matches!(
                name,
                MessageDataItemName::Uid
                    | MessageDataItemName::Flags
                    | MessageDataItemName::InternalDate
                    | MessageDataItemName::Rfc822Size
                    | MessageDataItemName::Rfc822
                    | MessageDataItemName::BodyExt { section: None, .. }
            )
        });
        // A big body asked for whole (or a range of it) is streamed by the
        // connection: the batch ends with it, and it is not read here.
        let whole_bodies = names
            .iter()
            .filter(|name| {
                matches!(name, MessageDataItemName::BodyExt { section: None, .. } | MessageDataItemName::Rfc822)
            })
            .count();
        let mut stream_at = None;
        if !needs_view && whole_bodies == 1 {
            let big = indices[start..end].iter().position(|index| selected.view[*index].size >= self.stream_from);
            if let Some(offset) = big {
                stream_at = Some(start + offset);
                end = start + offset + 1;
            }
        }
        let mut raws: Vec<Option<Arc<Vec<u8>>>> = Vec::new();
        if needs_raw {
            let ids: Vec<Arc<str>> = indices[start..stream_at.unwrap_or(end)]
                .iter()
                .map(|index| selected.view[*index].message.clone())
                .collect();
            raws = self.store.raws(&ids).await.unwrap_or_else(|_| vec![None; ids.len()]);
            raws.reverse();
        }
        let mut streaming = None;
        for (position, index) in indices[start..end].iter().copied().enumerate() {
            let entry = &selected.view[index];
            let streamed = stream_at == Some(start + position);
            let raw = if needs_raw && !streamed {
                match raws.pop().flatten() {
                    Some(raw) => Some(raw),
                    // Expunged elsewhere and collected: nothing to show for
                    // it; the command ends NO [EXPUNGEISSUED] (RFC 5530).
                    None => {
                        expunge_issued = true;
                        continue;
                    }
                }
            } else {
                None
            };
            // The MIME structure only when an item needs it (not for BODY[]).
            let view = raw.as_deref().filter(|_| needs_view).map(|raw| MessageView::parse(raw.as_slice()));
            let mut items = Vec::with_capacity(names.len());
            for name in names {
                let item = match name {
                    MessageDataItemName::Uid => MessageDataItem::Uid(nz(entry.uid)),
                    MessageDataItemName::Flags => {
                        MessageDataItem::Flags(fetch_flags(&entry.flags, selected.recent(entry.uid)))
                    }
                    MessageDataItemName::InternalDate => MessageDataItem::InternalDate(
                        DateTime::try_from(internal_date(entry))
                            .unwrap_or_else(|_| DateTime::unvalidated(internal_date(entry))),
                    ),
                    MessageDataItemName::Rfc822Size => MessageDataItem::Rfc822Size(entry.size as u32),
                    MessageDataItemName::Envelope => match &view {
                        Some(view) => MessageDataItem::Envelope(view.envelope()),
                        None => continue,
                    },
                    MessageDataItemName::Body => match &view {
                        Some(view) => MessageDataItem::Body(view.body_structure(false)),
                        None => continue,
                    },
                    MessageDataItemName::BodyStructure => match &view {
                        Some(view) => MessageDataItem::BodyStructure(view.body_structure(true)),
                        None => continue,
                    },
                    MessageDataItemName::BodyExt { section, partial, .. } => {
                        let bytes = match (section, &view, &raw) {
                            (None, _, Some(raw)) => Cow::Borrowed(raw.as_slice()),
                            (Some(section), Some(view), _) => view.section(Some(section)).unwrap_or_default(),
                            _ => continue,
                        };
                        let data = match partial {
                            Some((origin, length)) => {
                                crate::message::section_data(crate::message::partial(&bytes, *origin, length.get()))
                            }
                            None => crate::message::section_data(&bytes),
                        };
                        MessageDataItem::BodyExt {
                            section: section.clone(),
                            origin: partial.map(|(origin, _)| origin),
                            data,
                        }
                    }
                    MessageDataItemName::Rfc822 => match &raw {
                        Some(raw) => MessageDataItem::Rfc822(crate::message::section_data(raw.as_slice())),
                        None => continue,
                    },
                    MessageDataItemName::Rfc822Header => match &view {
                        Some(view) => MessageDataItem::Rfc822Header(crate::message::section_data(view.header_bytes())),
                        None => continue,
                    },
                    MessageDataItemName::Rfc822Text => match &view {
                        Some(view) => MessageDataItem::Rfc822Text(crate::message::section_data(view.text_bytes())),
                        None => continue,
                    },
                    MessageDataItemName::Binary { section, partial, .. } => {
                        let (Some(view), Some(raw)) = (&view, &raw) else { continue };
                        let Some(bytes) = binary_section(view, raw, section) else {
                            responses.push(unknown_cte(&tag));
                            return responses;
                        };
                        let bytes = match partial {
                            Some((origin, length)) => crate::message::partial(&bytes, *origin, length.get()).to_vec(),
                            None => bytes,
                        };
                        MessageDataItem::Binary {
                            section: section.clone(),
                            value: NString8::Literal8(Literal8 { data: Cow::Owned(bytes), mode: LiteralMode::Sync }),
                        }
                    }
                    MessageDataItemName::BinarySize { section } => {
                        let (Some(view), Some(raw)) = (&view, &raw) else { continue };
                        let Some(bytes) = binary_section(view, raw, section) else {
                            responses.push(unknown_cte(&tag));
                            return responses;
                        };
                        MessageDataItem::BinarySize { section: section.clone(), size: bytes.len() as u32 }
                    }
                };
                items.push(item);
            }
            if streamed {
                // The body goes last, from the store.
                let (item, range) = match names.iter().find_map(|name| match name {
                    MessageDataItemName::BodyExt { section: None, partial, .. } => Some(*partial),
                    _ => None,
                }) {
                    Some(Some((origin, length))) => (
                        StreamedItem::Body { origin: Some(origin) },
                        u64::from(origin)..u64::from(origin) + u64::from(length.get()),
                    ),
                    Some(None) => (StreamedItem::Body { origin: None }, 0..u64::MAX),
                    None => (StreamedItem::Rfc822, 0..u64::MAX),
                };
                let message = entry.message.clone();
                streaming = Some(StreamedBody { seq: nz(index as u32 + 1), items, item, message, range });
                continue;
            }
            if let Ok(items) = Vec1::try_from(items) {
                responses.push(Response::Data(Data::Fetch { seq: nz(index as u32 + 1), items }));
            }
        }
        if end < fetching.indices.len() || streaming.is_some() {
            self.streaming = streaming;
            fetching.next = end;
            fetching.expunge_issued = expunge_issued;
            self.fetching = Some(fetching);
        } else if expunge_issued {
            responses.push(status(&tag, StatusKind::No, Some(code("EXPUNGEISSUED")), "some messages were expunged"));
        } else {
            responses.push(ok(&tag, "FETCH completed"));
        }
        responses
    }

    async fn store(
        &mut self,
        tag: &Tag<'static>,
        set: &SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: &[Flag<'_>],
        uid: bool,
    ) -> Vec<Response<'static>> {
        let indices = match self.resolve(tag, set, uid) {
            Ok(indices) => indices,
            Err(response) => return vec![response],
        };
        let State::Selected(selected) = &self.state else { return vec![bad(tag, "no mailbox selected")] };
        if selected.read_only {
            return vec![no(tag, "the mailbox is read-only (EXAMINE)")];
        }
        let name = selected.name.clone();
        let uids: Vec<u32> = indices.iter().map(|index| selected.view[*index].uid).collect();
        let operation = match kind {
            StoreType::Replace => FlagOperation::Replace,
            StoreType::Add => FlagOperation::Add,
            StoreType::Remove => FlagOperation::Remove,
        };
        let changed = match self.store.set_flags(&name, &uids, operation, &flags_from_imap(flags)).await {
            Ok(changed) => changed,
            Err(error) => return vec![mail_error(tag, &error)],
        };
        let State::Selected(selected) = &mut self.state else { return vec![bad(tag, "no mailbox selected")] };
        for entry in changed {
            if let Some(known) = selected.view.iter_mut().find(|known| known.uid == entry.uid) {
                *known = entry;
            }
        }
        let mut responses = Vec::new();
        if response == StoreResponse::Answer {
            for index in indices {
                let entry = &selected.view[index];
                let mut items = vec![MessageDataItem::Flags(fetch_flags(&entry.flags, selected.recent(entry.uid)))];
                if uid {
                    items.push(MessageDataItem::Uid(nz(entry.uid)));
                }
                if let Ok(items) = Vec1::try_from(items) {
                    responses.push(Response::Data(Data::Fetch { seq: nz(index as u32 + 1), items }));
                }
            }
        }
        responses.push(ok(tag, "STORE completed"));
        responses
    }

    async fn copy(
        &mut self,
        tag: &Tag<'static>,
        set: &SequenceSet,
        mailbox: &Mailbox<'_>,
        uid: bool,
        remove: bool,
    ) -> Vec<Response<'static>> {
        let destination = match name_of(mailbox) {
            Ok(name) => name,
            Err(error) => return vec![bad(tag, &error.to_string())],
        };
        let indices = match self.resolve(tag, set, uid) {
            Ok(indices) => indices,
            Err(response) => return vec![response],
        };
        let State::Selected(selected) = &self.state else { return vec![bad(tag, "no mailbox selected")] };
        if remove && selected.read_only {
            return vec![no(tag, "the mailbox is read-only (EXAMINE)")];
        }
        let name = selected.name.clone();
        let uids: Vec<u32> = indices.iter().map(|index| selected.view[*index].uid).collect();
        let (validity, pairs) = match self.store.copy(&name, &uids, &destination, remove).await {
            Ok(result) => result,
            Err(MailError::NoMailbox(_)) => {
                return vec![status(tag, StatusKind::No, Some(Code::TryCreate), "no such mailbox")];
            }
            Err(error) => return vec![mail_error(tag, &error)],
        };
        let sources: Vec<u32> = pairs.iter().map(|(source, _)| *source).collect();
        let targets: Vec<u32> = pairs.iter().map(|(_, target)| *target).collect();
        let code = match (uid_set(&sources), uid_set(&targets)) {
            (Some(source), Some(destination)) => {
                Some(Code::CopyUid { uid_validity: nz(validity), source, destination })
            }
            _ => None,
        };
        if remove {
            let mut responses = Vec::new();
            if let Some(code) = code {
                responses.push(untagged(StatusKind::Ok, Some(code), "moved"));
            }
            responses.extend(self.updates(true).await);
            responses.push(ok(tag, "MOVE completed"));
            responses
        } else {
            vec![status(tag, StatusKind::Ok, code, "COPY completed")]
        }
    }
}

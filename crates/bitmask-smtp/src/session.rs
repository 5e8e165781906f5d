//! The server side of one SMTP submission connection (RFC 5321, RFC 6409),
//! without I/O.
//!
//! A [`Session`] takes the bytes the client sent ([`Session::feed`]) and
//! answers with [`Action`]s: replies to write to the client
//! ([`Action::Send`]), events the service must decide on
//! ([`Action::Authenticate`], [`Action::MailFrom`], [`Action::Rcpt`],
//! [`Action::Message`]) and what to do with the connection
//! ([`Action::StartTls`], [`Action::Close`]). The service answers a decision
//! with the matching `*_result` method, which returns the next actions.
//!
//! Command syntax is smtp-proto's ([`Request::parse`]); framing is ours:
//!
//! - **Lines** end with `<CR><LF>`. A command line with a bare `<LF>`, a bare
//!   `<CR>` or a NUL is answered `500 5.5.2` and not executed; a line longer
//!   than [`Config::max_line`] (terminator included) is read to its end,
//!   discarded and answered `500 5.5.2`.
//! - **DATA** ends only at `<CR><LF>.<CR><LF>` (the `<CR><LF>` that ends the
//!   `DATA` command counts as the first one). Dot-stuffing is undone. A bare
//!   `<CR>`, a bare `<LF>` or a NUL anywhere in the data never ends the
//!   message: the session reads on to the real end and then **rejects** the
//!   whole message with `550 5.5.2` (bare `<CR>`/`<LF>`, as Postfix does with
//!   `smtpd_forbid_bare_newline = yes`) or `550 5.6.0` (NUL), so nothing
//!   another server might take for a line ending (SMTP smuggling, SEC Consult
//!   2023) or drop (NUL) ever leaves in a message.
//! - **BDAT** chunks are taken byte for byte (no dot handling), and always
//!   consumed, even when the command is refused, so chunk data is never read
//!   as commands. The assembled message is checked for the same defects as
//!   DATA when the `LAST` chunk arrives.
//! - **Pipelining** (RFC 2920): replies come in command order. When a command
//!   needs a decision, the rest of the input is queued until the service
//!   answers; queued input is capped (the maximum message size plus 64 KiB),
//!   beyond which the session answers the pending decision, then
//!   `421 4.7.0` and closes.
//! - **Memory**: the message buffer is reserved at the size the client
//!   declared with `MAIL FROM ... SIZE=` (never more than the maximum), so a
//!   message that comes as declared is never copied to grow; without a
//!   declaration it grows by doubling. Either way it is shrunk to the
//!   message before [`Action::Message`] hands it on.
//! - **STARTTLS** (RFC 3207): after `220 2.0.0` and [`Action::StartTls`], all
//!   input is discarded until [`Session::tls_started`], which forgets EHLO,
//!   authentication and the transaction, so commands a client (or a man in
//!   the middle) pipelined after STARTTLS are never executed
//!   (CVE-2011-0411).
//!
//! Replies carry enhanced status codes (RFC 2034, RFC 3463) on 2xx, 4xx and
//! 5xx replies once the client has sent EHLO, and never before.
//!
//! One [`Action::Send`] is one reply, whatever way the input was split, so the
//! actions do not depend on how the bytes arrived; a service may concatenate
//! consecutive sends into one write.
//!
//! ```
//! use bitmask_smtp::session::{Action, Config, Session};
//!
//! let mut config = Config::new("localhost");
//! config.auth_required = false;
//! let mut session = Session::new(config);
//! let mut sent = session.greeting();
//! let mut actions = session.feed(b"EHLO client\r\nMAIL FROM:<alice@example.org>\r\nQUIT\r\n");
//! while !actions.is_empty() {
//!     let mut next = Vec::new();
//!     for action in actions {
//!         match action {
//!             Action::Send(reply) => sent.extend(reply),
//!             // A decision: always the last action of a batch.
//!             Action::MailFrom { .. } => next = session.mail_from_result(Ok(())),
//!             Action::Close => {}
//!             other => unreachable!("{other:?}"),
//!         }
//!     }
//!     actions = next;
//! }
//! assert!(sent.ends_with(b"250 2.1.0 Sender OK\r\n221 2.0.0 Bye\r\n"));
//! ```
//!
//! Secrets: the password of [`Action::Authenticate`] is a [`Password`]
//! (redacted `Debug`, zeroized on drop); the session zeroizes the lines that
//! carried credentials and the input it has consumed.

use std::fmt;
use std::mem;

use data_encoding::{BASE64, BASE64_NOPAD};
use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, EXT_8BIT_MIME, EXT_AUTH, EXT_CHUNKING, EXT_ENHANCED_STATUS_CODES, EXT_PIPELINING, EXT_SIZE,
    EXT_SMTP_UTF8, EXT_START_TLS, EhloResponse, Error as ParseError, MAIL_BODY_7BIT, MAIL_BODY_8BITMIME, MAIL_SMTPUTF8,
    MailFrom, RcptTo, Request, Response,
};
use zeroize::{Zeroize, Zeroizing};

/// How much input may wait behind a pending decision, beyond the maximum
/// message size (BDAT chunks may be pipelined behind RCPT).
const QUEUE_SLACK: usize = 64 * 1024;

/// What one session allows and announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The name in the greeting and the EHLO reply.
    pub hostname: String,
    /// The largest message accepted, in octets (after dot-unstuffing);
    /// announced as `SIZE`.
    pub max_message_size: usize,
    /// The most recipients in one transaction; more get `452 4.5.3`.
    pub max_recipients: usize,
    /// Whether MAIL needs a successful AUTH first (`530 5.7.0`).
    pub auth_required: bool,
    /// Whether AUTH is announced and accepted at all (an MX or a relay that
    /// knows its clients by certificate has no logins: `503 5.5.1`).
    pub auth_offered: bool,
    /// Whether STARTTLS is offered (until TLS is active).
    pub starttls_available: bool,
    /// The longest command or SASL response line, `<CR><LF>` included.
    pub max_line: usize,
}

impl Config {
    /// A configuration with the usual limits: 25 MiB messages, 100
    /// recipients, 4096-octet lines, AUTH required, no STARTTLS.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            auth_required: true,
            auth_offered: true,
            starttls_available: false,
            max_line: 4096,
        }
    }
}

/// A reply the service chooses (a refusal of a sender, recipient or
/// message): code, enhanced status code and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The reply code; refusals must be 4xx or 5xx (anything else is sent as
    /// `451 4.3.0`).
    pub code: u16,
    /// The enhanced status code (RFC 3463), e.g. `[5, 7, 1]`.
    pub enhanced: [u8; 3],
    /// One line of text; control characters and non-ASCII are replaced.
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, enhanced: [u8; 3], text: impl Into<String>) -> Self {
        Self { code, enhanced, text: text.into() }
    }
}

/// The SASL mechanisms offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMechanism {
    /// RFC 4616.
    Plain,
    /// The `LOGIN` mechanism (draft-murchison-sasl-login).
    Login,
}

/// A password: `Debug` redacts it, drop zeroizes it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Zeroizing<String>);

impl Password {
    pub fn new(password: String) -> Self {
        Self(Zeroizing::new(password))
    }

    /// The password itself, for checking it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Password(<redacted>)")
    }
}

/// The `BODY=` parameter of MAIL (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No `BODY=` parameter.
    Unspecified,
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// What the service must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes (one complete reply) to the client.
    Send(Vec<u8>),
    /// Check these credentials; answer with [`Session::auth_result`].
    Authenticate { mechanism: AuthMechanism, user: String, password: Password },
    /// Decide on this sender (empty for the null reverse-path `<>`); answer
    /// with [`Session::mail_from_result`].
    MailFrom {
        address: String,
        /// The `SIZE=` the client declared (already checked against the
        /// maximum).
        size: Option<u64>,
        body: Body,
        smtputf8: bool,
    },
    /// Decide on this recipient; answer with [`Session::rcpt_result`].
    Rcpt { address: String },
    /// Queue this message durably; answer with [`Session::message_result`].
    /// `data` has `<CR><LF>` line endings only, no bare `<CR>`, `<LF>` or NUL.
    Message { from: String, recipients: Vec<String>, data: Vec<u8>, body: Body, smtputf8: bool },
    /// The `220` reply has been given: start the TLS handshake on the
    /// connection, then call [`Session::tls_started`]. Input received until
    /// then is discarded.
    StartTls,
    /// Close the connection (after sending what came before).
    Close,
}

/// One SMTP submission connection, server side.
pub struct Session {
    config: Config,
    /// HELO or EHLO has been received.
    greeted: bool,
    /// EHLO has been received: extensions and enhanced status codes.
    extended: bool,
    tls_active: bool,
    authenticated: bool,
    transaction: Option<Transaction>,
    mode: Mode,
    awaiting: Option<Awaiting>,
    /// Received input; bytes before `consumed` have been handled.
    input: Vec<u8>,
    consumed: usize,
    /// The line being received (command or SASL response).
    line: Vec<u8>,
    /// The line being received is too long and is being skipped.
    line_too_long: bool,
    /// Too much input was queued behind a decision: close after it.
    close_after_decision: bool,
}

impl fmt::Debug for Session {
    // Buffers may hold credentials: only the state is shown.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Session")
            .field("hostname", &self.config.hostname)
            .field("greeted", &self.greeted)
            .field("extended", &self.extended)
            .field("tls_active", &self.tls_active)
            .field("authenticated", &self.authenticated)
            .field("in_transaction", &self.transaction.is_some())
            .field("mode", &self.mode.name())
            .field("awaiting", &self.awaiting.as_ref().map(Awaiting::name))
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Transaction {
    from: String,
    body: Body,
    smtputf8: bool,
    recipients: Vec<String>,
    /// The size the client declared (MAIL FROM's SIZE), at most the
    /// maximum: the message buffer is reserved at that size at once.
    declared_size: usize,
    /// BDAT has been used: the chunks so far.
    chunks: Option<Vec<u8>>,
}

#[derive(Debug)]
struct PendingMail {
    from: String,
    body: Body,
    smtputf8: bool,
    declared_size: usize,
}

#[derive(Debug)]
enum Awaiting {
    Authentication,
    MailFrom(PendingMail),
    Rcpt(String),
    Message,
}

impl Awaiting {
    fn name(&self) -> &'static str {
        match self {
            Awaiting::Authentication => "authentication",
            Awaiting::MailFrom(_) => "mail_from",
            Awaiting::Rcpt(_) => "rcpt",
            Awaiting::Message => "message",
        }
    }
}

enum Mode {
    Command,
    AuthResponse(AuthStep),
    Data(DataReceiver),
    Bdat(BdatChunk),
    /// STARTTLS accepted: discard input until `tls_started`.
    TlsHandshake,
    Closed,
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Mode::Command => "command",
            Mode::AuthResponse(_) => "auth_response",
            Mode::Data(_) => "data",
            Mode::Bdat(_) => "bdat",
            Mode::TlsHandshake => "tls_handshake",
            Mode::Closed => "closed",
        }
    }
}

enum AuthStep {
    PlainResponse,
    LoginUser,
    LoginPassword { user: String },
}

struct BdatChunk {
    remaining: usize,
    size: usize,
    last: bool,
    outcome: ChunkOutcome,
}

enum ChunkOutcome {
    Accept,
    TooBig,
    Refuse(Reply),
}

/// Where the DATA receiver is relative to the line structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinePosition {
    /// Just after `<CR><LF>` (or the DATA command).
    Start,
    /// A `.` at the start of a line.
    Dot,
    /// `.<CR>` at the start of a line.
    DotCr,
    /// Inside a line.
    Text,
    /// After a `<CR>` inside a line.
    Cr,
}

/// Something that must not be in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Defect {
    BareCr,
    BareLf,
    Nul,
}

impl Defect {
    fn reply(self) -> Reply {
        match self {
            Defect::BareCr => {
                Reply::new(550, [5, 5, 2], "Message rejected: bare <CR> received, lines must end with <CR><LF>")
            }
            Defect::BareLf => {
                Reply::new(550, [5, 5, 2], "Message rejected: bare <LF> received, lines must end with <CR><LF>")
            }
            Defect::Nul => Reply::new(550, [5, 6, 0], "Message rejected: NUL received"),
        }
    }
}

/// DATA framing: ends only at `<CR><LF>.<CR><LF>`, undoes dot-stuffing,
/// records the first defect and whether the limit was passed, and keeps the
/// content only while neither happened.
struct DataReceiver {
    position: LinePosition,
    content: Vec<u8>,
    size: usize,
    limit: usize,
    too_big: bool,
    defect: Option<Defect>,
}

impl DataReceiver {
    /// A receiver of at most `limit` bytes, its buffer reserved for
    /// `expected` (the declared size: a message that comes as declared is
    /// never copied to grow).
    fn new(limit: usize, expected: usize) -> Self {
        let content = Vec::with_capacity(expected.min(limit));
        Self { position: LinePosition::Start, content, size: 0, limit, too_big: false, defect: None }
    }

    /// Takes bytes from `input`; returns how many were taken and whether the
    /// end of data was reached (the bytes after it are left alone).
    fn ingest(&mut self, input: &[u8]) -> (usize, bool) {
        let mut index = 0;
        while let Some(&byte) = input.get(index) {
            match self.position {
                LinePosition::Text => {
                    let rest = input.get(index..).unwrap_or_default();
                    let run = rest.iter().position(|&byte| matches!(byte, b'\r' | b'\n' | 0)).unwrap_or(rest.len());
                    if run > 0 {
                        self.push(rest.get(..run).unwrap_or_default());
                        index += run;
                        continue;
                    }
                    match byte {
                        b'\r' => self.position = LinePosition::Cr,
                        b'\n' => self.flag(Defect::BareLf),
                        _ => self.flag(Defect::Nul),
                    }
                    index += 1;
                }
                LinePosition::Start => match byte {
                    b'.' => {
                        self.position = LinePosition::Dot;
                        index += 1;
                    }
                    b'\r' => {
                        self.position = LinePosition::Cr;
                        index += 1;
                    }
                    // Text handles this byte (a bare LF and NUL included).
                    _ => self.position = LinePosition::Text,
                },
                LinePosition::Dot => match byte {
                    b'\r' => {
                        self.position = LinePosition::DotCr;
                        index += 1;
                    }
                    // Dot-stuffing: the leading dot is dropped, the byte after
                    // it is handled as text.
                    _ => self.position = LinePosition::Text,
                },
                LinePosition::DotCr => {
                    if byte == b'\n' {
                        return (index + 1, true);
                    }
                    // `.<CR>` without `<LF>`: not the end. This byte is text
                    // (a `<CR>` may still begin a real `<CR><LF>`).
                    self.flag(Defect::BareCr);
                    self.position = LinePosition::Text;
                }
                LinePosition::Cr => match byte {
                    b'\n' => {
                        self.push(b"\r\n");
                        self.position = LinePosition::Start;
                        index += 1;
                    }
                    b'\r' => {
                        self.flag(Defect::BareCr);
                        index += 1;
                    }
                    _ => {
                        self.flag(Defect::BareCr);
                        self.position = LinePosition::Text;
                    }
                },
            }
        }
        (index, false)
    }

    fn push(&mut self, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len());
        if !self.too_big && self.size > self.limit {
            self.too_big = true;
            self.content = Vec::new();
        }
        if !self.too_big && self.defect.is_none() {
            self.content.extend_from_slice(bytes);
        }
    }

    fn flag(&mut self, defect: Defect) {
        if self.defect.is_none() {
            self.defect = Some(defect);
            self.content = Vec::new();
        }
    }
}

/// The first defect in a BDAT message (which has no framing of its own).
fn find_defect(message: &[u8]) -> Option<Defect> {
    let mut previous = None;
    let mut bytes = message.iter().peekable();
    while let Some(&byte) = bytes.next() {
        match byte {
            0 => return Some(Defect::Nul),
            b'\n' if previous != Some(b'\r') => return Some(Defect::BareLf),
            b'\r' if bytes.peek() != Some(&&b'\n') => return Some(Defect::BareCr),
            _ => {}
        }
        previous = Some(byte);
    }
    None
}

enum LineOutcome {
    Line(Vec<u8>),
    TooLong,
    Incomplete,
}

impl Session {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            greeted: false,
            extended: false,
            tls_active: false,
            authenticated: false,
            transaction: None,
            mode: Mode::Command,
            awaiting: None,
            input: Vec::new(),
            consumed: 0,
            line: Vec::new(),
            line_too_long: false,
            close_after_decision: false,
        }
    }

    /// The greeting to send when the connection opens.
    pub fn greeting(&self) -> Vec<u8> {
        format!("220 {} ESMTP bitmask\r\n", sanitize(&self.config.hostname)).into_bytes()
    }

    /// Whether the session has closed (after QUIT or a 421): input is
    /// ignored from now on.
    pub fn is_closed(&self) -> bool {
        matches!(self.mode, Mode::Closed)
    }

    /// Feeds bytes from the client; returns what to do next. An action that
    /// needs a decision is always the last one returned; input after it is
    /// kept until the decision comes.
    pub fn feed(&mut self, input: &[u8]) -> Vec<Action> {
        let mut actions = Vec::new();
        if matches!(self.mode, Mode::TlsHandshake | Mode::Closed) || self.close_after_decision {
            return actions;
        }
        self.input.extend_from_slice(input);
        if self.awaiting.is_none() {
            self.run(&mut actions);
        } else {
            self.check_queue();
        }
        actions
    }

    /// The service's answer to [`Action::Authenticate`].
    pub fn auth_result(&mut self, ok: bool) -> Vec<Action> {
        let mut actions = Vec::new();
        if !matches!(self.awaiting, Some(Awaiting::Authentication)) {
            return actions;
        }
        self.awaiting = None;
        if ok {
            self.authenticated = true;
            self.reply(&mut actions, 235, [2, 7, 0], "Authentication successful");
        } else {
            self.reply(&mut actions, 535, [5, 7, 8], "Authentication credentials invalid");
        }
        self.resume(&mut actions);
        actions
    }

    /// The service could not check the credentials (its token store did not
    /// answer): `454 4.7.0`, so the client tries again rather than giving up.
    pub fn auth_unavailable(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        if !matches!(self.awaiting, Some(Awaiting::Authentication)) {
            return actions;
        }
        self.awaiting = None;
        self.reply(&mut actions, 454, [4, 7, 0], "Temporary authentication failure, try again");
        self.resume(&mut actions);
        actions
    }

    /// The service's answer to [`Action::MailFrom`]: `Ok` starts the
    /// transaction (`250 2.1.0`), `Err` is sent as the reply.
    pub fn mail_from_result(&mut self, result: Result<(), Reply>) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(Awaiting::MailFrom(pending)) =
            self.awaiting.take_if(|awaiting| matches!(awaiting, Awaiting::MailFrom(_)))
        else {
            return actions;
        };
        match result {
            Ok(()) => {
                self.transaction = Some(Transaction {
                    from: pending.from,
                    body: pending.body,
                    smtputf8: pending.smtputf8,
                    recipients: Vec::new(),
                    declared_size: pending.declared_size,
                    chunks: None,
                });
                self.reply(&mut actions, 250, [2, 1, 0], "Sender OK");
            }
            Err(refusal) => self.refuse(&mut actions, refusal),
        }
        self.resume(&mut actions);
        actions
    }

    /// The service's answer to [`Action::Rcpt`]: `Ok` adds the recipient
    /// (`250 2.1.5`), `Err` is sent as the reply (e.g. `550 5.7.1` for a
    /// recipient without a key under an encrypted-only policy).
    pub fn rcpt_result(&mut self, result: Result<(), Reply>) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(Awaiting::Rcpt(address)) = self.awaiting.take_if(|awaiting| matches!(awaiting, Awaiting::Rcpt(_)))
        else {
            return actions;
        };
        match result {
            Ok(()) => {
                if let Some(transaction) = &mut self.transaction {
                    transaction.recipients.push(address);
                }
                self.reply(&mut actions, 250, [2, 1, 5], "Recipient OK");
            }
            Err(refusal) => self.refuse(&mut actions, refusal),
        }
        self.resume(&mut actions);
        actions
    }

    /// The service's answer to [`Action::Message`]: `Ok(queue_id)` once the
    /// message is durably queued (`250 2.0.0`), `Err` is sent as the reply.
    pub fn message_result(&mut self, result: Result<String, Reply>) -> Vec<Action> {
        let mut actions = Vec::new();
        if !matches!(self.awaiting, Some(Awaiting::Message)) {
            return actions;
        }
        self.awaiting = None;
        match result {
            Ok(queue_id) => self.reply(&mut actions, 250, [2, 0, 0], &format!("Ok: queued as {queue_id}")),
            Err(refusal) => self.refuse(&mut actions, refusal),
        }
        self.resume(&mut actions);
        actions
    }

    /// The TLS handshake that followed [`Action::StartTls`] succeeded: the
    /// session starts over (RFC 3207 section 4.2): no EHLO, no
    /// authentication, no transaction, no input. Ignored in any other state.
    pub fn tls_started(&mut self) {
        if !matches!(self.mode, Mode::TlsHandshake) {
            return;
        }
        self.tls_active = true;
        self.greeted = false;
        self.extended = false;
        self.authenticated = false;
        self.transaction = None;
        self.awaiting = None;
        self.mode = Mode::Command;
        self.discard_input();
        self.line.zeroize();
        self.line_too_long = false;
    }

    // ---- the input loop ----

    fn run(&mut self, actions: &mut Vec<Action>) {
        while self.awaiting.is_none() && self.consumed < self.input.len() {
            match &mut self.mode {
                Mode::Command | Mode::AuthResponse(_) => match self.take_line() {
                    LineOutcome::Line(line) => self.handle_line(line, actions),
                    LineOutcome::TooLong => {
                        if matches!(self.mode, Mode::AuthResponse(_)) {
                            self.mode = Mode::Command;
                        }
                        self.reply(actions, 500, [5, 5, 2], "Line too long");
                    }
                    LineOutcome::Incomplete => {}
                },
                Mode::Data(receiver) => {
                    let rest = self.input.get(self.consumed..).unwrap_or_default();
                    let (used, finished) = receiver.ingest(rest);
                    self.consumed += used;
                    if finished && let Mode::Data(receiver) = mem::replace(&mut self.mode, Mode::Command) {
                        self.finish_data(receiver, actions);
                    }
                }
                Mode::Bdat(chunk) => {
                    let rest = self.input.get(self.consumed..).unwrap_or_default();
                    let taken = rest.get(..chunk.remaining).unwrap_or(rest);
                    if matches!(chunk.outcome, ChunkOutcome::Accept)
                        && let Some(data) =
                            self.transaction.as_mut().and_then(|transaction| transaction.chunks.as_mut())
                    {
                        data.extend_from_slice(taken);
                    }
                    chunk.remaining -= taken.len();
                    self.consumed += taken.len();
                    if chunk.remaining == 0
                        && let Mode::Bdat(chunk) = mem::replace(&mut self.mode, Mode::Command)
                    {
                        self.finish_bdat(chunk, actions);
                    }
                }
                Mode::TlsHandshake | Mode::Closed => self.discard_input(),
            }
        }
        self.compact_input();
        self.check_queue();
    }

    /// After a decision: close if too much was queued, else go on.
    fn resume(&mut self, actions: &mut Vec<Action>) {
        if self.close_after_decision {
            self.close_after_decision = false;
            self.reply(actions, 421, [4, 7, 0], "Too much pipelined input, closing connection");
            self.close(actions);
        } else {
            self.run(actions);
        }
    }

    /// Caps the input waiting behind a decision.
    fn check_queue(&mut self) {
        let limit = self.config.max_message_size.saturating_add(QUEUE_SLACK);
        if self.awaiting.is_some() && self.input.len() - self.consumed > limit {
            self.close_after_decision = true;
            self.discard_input();
        }
    }

    fn discard_input(&mut self) {
        self.input.zeroize();
        self.consumed = 0;
    }

    /// Drops handled input (zeroized first: it may have held credentials).
    fn compact_input(&mut self) {
        if self.consumed == 0 {
            return;
        }
        if let Some(handled) = self.input.get_mut(..self.consumed) {
            handled.zeroize();
        }
        self.input.drain(..self.consumed);
        self.consumed = 0;
    }

    fn take_line(&mut self) -> LineOutcome {
        let rest = self.input.get(self.consumed..).unwrap_or_default();
        let max_line = self.config.max_line;
        match rest.iter().position(|&byte| byte == b'\n') {
            Some(newline) => {
                let end = newline + 1;
                let chunk = rest.get(..end).unwrap_or(rest);
                self.consumed += end;
                if mem::take(&mut self.line_too_long) || self.line.len() + chunk.len() > max_line {
                    self.line.zeroize();
                    return LineOutcome::TooLong;
                }
                self.line.extend_from_slice(chunk);
                LineOutcome::Line(mem::take(&mut self.line))
            }
            None => {
                self.consumed += rest.len();
                if !self.line_too_long {
                    if self.line.len() + rest.len() > max_line {
                        self.line_too_long = true;
                        self.line.zeroize();
                    } else {
                        self.line.extend_from_slice(rest);
                    }
                }
                LineOutcome::Incomplete
            }
        }
    }

    fn handle_line(&mut self, mut line: Vec<u8>, actions: &mut Vec<Action>) {
        let text = line.strip_suffix(b"\r\n");
        let well_formed = text.is_some_and(|text| !text.iter().any(|&b| b == b'\r' || b == 0));
        if !well_formed {
            if matches!(self.mode, Mode::AuthResponse(_)) {
                self.mode = Mode::Command;
            }
            let message = if text.is_none() {
                "Syntax error: bare <LF> received, lines must end with <CR><LF>"
            } else {
                "Syntax error: bare <CR> or NUL received"
            };
            self.reply(actions, 500, [5, 5, 2], message);
        } else if let Mode::AuthResponse(step) = mem::replace(&mut self.mode, Mode::Command) {
            let response = text.unwrap_or_default();
            self.auth_response(step, response, actions);
        } else {
            let parsed = Request::parse(&mut line.iter()).map(Request::into_owned);
            match parsed {
                Ok(Request::Bdat { chunk_size, .. }) if written_chunk_size(&line) != Some(chunk_size as u64) => {
                    self.bdat_syntax_error(actions);
                }
                Ok(Request::Mail { from })
                    if from.size != 0 && written_size_parameter(&line) != Some(from.size as u64) =>
                {
                    self.reply(actions, 501, [5, 5, 4], "Invalid SIZE parameter");
                }
                Ok(request) => self.command(request, actions),
                Err(_) if is_bdat(&line) => self.bdat_syntax_error(actions),
                Err(error) => self.parse_error(error, actions),
            }
        }
        line.zeroize();
    }

    /// A BDAT command whose chunk size is unknown: the chunk would be read as
    /// commands, so the connection is given up instead.
    fn bdat_syntax_error(&mut self, actions: &mut Vec<Action>) {
        self.reply(actions, 421, [4, 5, 4], "Syntax: BDAT chunk-size [LAST], closing connection");
        self.close(actions);
    }

    fn parse_error(&mut self, error: ParseError, actions: &mut Vec<Action>) {
        match error {
            ParseError::UnknownCommand => {
                self.reply(actions, 500, [5, 5, 1], "Command unrecognized");
            }
            ParseError::InvalidSenderAddress => {
                self.reply(actions, 501, [5, 1, 7], "Bad sender address syntax");
            }
            ParseError::InvalidRecipientAddress => {
                self.reply(actions, 501, [5, 1, 3], "Bad recipient address syntax");
            }
            ParseError::SyntaxError { syntax } => {
                self.reply(actions, 501, [5, 5, 4], &format!("Syntax: {syntax}"));
            }
            ParseError::InvalidParameter { param } => {
                self.reply(actions, 501, [5, 5, 4], &format!("Invalid {param} parameter"));
            }
            ParseError::UnsupportedParameter { param } => {
                self.reply(actions, 555, [5, 5, 4], &format!("Unsupported parameter {param}"));
            }
            ParseError::NeedsMoreData { .. } | ParseError::ResponseTooLong | ParseError::InvalidResponse { .. } => {
                self.reply(actions, 500, [5, 5, 2], "Syntax error");
            }
        }
    }

    // ---- commands ----

    fn command(&mut self, request: Request<String>, actions: &mut Vec<Action>) {
        match request {
            Request::Ehlo { .. } => self.ehlo(actions),
            Request::Helo { .. } => {
                self.greeted = true;
                self.extended = false;
                self.transaction = None;
                let text = sanitize(&self.config.hostname);
                self.reply(actions, 250, [2, 0, 0], &text);
            }
            Request::StartTls => self.starttls(actions),
            Request::Auth { mut initial_response, .. } if !self.config.auth_offered => {
                initial_response.zeroize();
                self.reply(actions, 503, [5, 5, 1], "AUTH is not offered here");
            }
            Request::Auth { mechanism, mut initial_response } => {
                self.auth(mechanism, &initial_response, actions);
                initial_response.zeroize();
            }
            Request::Mail { from } => self.mail(from, actions),
            Request::Rcpt { to } => self.rcpt(to, actions),
            Request::Data => self.data(actions),
            Request::Bdat { chunk_size, is_last } => self.bdat(chunk_size, is_last, actions),
            Request::Rset => {
                self.transaction = None;
                self.reply(actions, 250, [2, 0, 0], "Ok");
            }
            Request::Noop { .. } => self.reply(actions, 250, [2, 0, 0], "Ok"),
            Request::Vrfy { .. } => {
                self.reply(actions, 252, [2, 0, 0], "Cannot VRFY user, but will accept message and attempt delivery")
            }
            Request::Help { .. } => self.reply(
                actions,
                214,
                [2, 0, 0],
                "Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT",
            ),
            Request::Quit => {
                self.reply(actions, 221, [2, 0, 0], "Bye");
                self.close(actions);
            }
            Request::Lhlo { .. }
            | Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => {
                self.reply(actions, 502, [5, 5, 1], "Command not supported here");
            }
        }
    }

    fn ehlo(&mut self, actions: &mut Vec<Action>) {
        self.greeted = true;
        self.extended = true;
        self.transaction = None;
        let hostname = sanitize(&self.config.hostname);
        let mut response = EhloResponse::new(hostname.as_str());
        response.capabilities =
            EXT_SIZE | EXT_8BIT_MIME | EXT_PIPELINING | EXT_ENHANCED_STATUS_CODES | EXT_SMTP_UTF8 | EXT_CHUNKING;
        if self.config.auth_offered {
            response.capabilities |= EXT_AUTH;
            response.auth_mechanisms = AUTH_PLAIN | AUTH_LOGIN;
        }
        if self.config.starttls_available && !self.tls_active {
            response.capabilities |= EXT_START_TLS;
        }
        response.size = self.config.max_message_size;
        let mut capabilities = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = response.write(&mut capabilities);
        // smtp-proto's first line is "250-<host> you had me at EHLO".
        let first_line_end = capabilities
            .windows(2)
            .position(|pair| pair == b"\r\n")
            .map_or(capabilities.len(), |position| position + 2);
        let mut reply = format!("250-{hostname}\r\n").into_bytes();
        reply.extend_from_slice(capabilities.get(first_line_end..).unwrap_or_default());
        actions.push(Action::Send(reply));
    }

    fn starttls(&mut self, actions: &mut Vec<Action>) {
        if !self.config.starttls_available {
            self.reply(actions, 502, [5, 5, 1], "STARTTLS not available");
        } else if self.tls_active {
            self.reply(actions, 503, [5, 5, 1], "TLS already active");
        } else if !self.extended {
            self.reply(actions, 503, [5, 5, 1], "Send EHLO first");
        } else {
            self.reply(actions, 220, [2, 0, 0], "Ready to start TLS");
            actions.push(Action::StartTls);
            self.mode = Mode::TlsHandshake;
            // What the client sent after STARTTLS in plain text is not
            // executed, now or after the handshake.
            self.discard_input();
        }
    }

    fn auth(&mut self, mechanism: u64, initial_response: &str, actions: &mut Vec<Action>) {
        if !self.extended {
            self.reply(actions, 503, [5, 5, 1], "Send EHLO first");
        } else if self.authenticated {
            self.reply(actions, 503, [5, 5, 1], "Already authenticated");
        } else if self.transaction.is_some() {
            self.reply(actions, 503, [5, 5, 1], "AUTH not permitted during a mail transaction");
        } else if mechanism == AUTH_PLAIN {
            if initial_response.is_empty() {
                self.challenge(actions, "", AuthStep::PlainResponse);
            } else {
                self.auth_response(AuthStep::PlainResponse, initial_response.as_bytes(), actions);
            }
        } else if mechanism == AUTH_LOGIN {
            if initial_response.is_empty() {
                self.challenge(actions, "VXNlcm5hbWU6", AuthStep::LoginUser);
            } else {
                self.auth_response(AuthStep::LoginUser, initial_response.as_bytes(), actions);
            }
        } else {
            self.reply(actions, 504, [5, 5, 4], "Unrecognized authentication type");
        }
    }

    fn challenge(&mut self, actions: &mut Vec<Action>, challenge: &str, step: AuthStep) {
        actions.push(Action::Send(format!("334 {challenge}\r\n").into_bytes()));
        self.mode = Mode::AuthResponse(step);
    }

    /// A SASL response (base64; `=` is empty, `*` cancels).
    fn auth_response(&mut self, step: AuthStep, response: &[u8], actions: &mut Vec<Action>) {
        let response = response.trim_ascii();
        if response == b"*" {
            self.reply(actions, 501, [5, 7, 0], "Authentication cancelled");
            return;
        }
        let decoded = if response == b"=" {
            Some(Zeroizing::new(Vec::new()))
        } else {
            BASE64.decode(response).or_else(|_| BASE64_NOPAD.decode(response)).ok().map(Zeroizing::new)
        };
        let Some(decoded) = decoded else {
            self.reply(actions, 501, [5, 5, 2], "Invalid base64 data");
            return;
        };
        match step {
            AuthStep::PlainResponse => match parse_plain(&decoded) {
                Some(PlainCredentials::Valid { user, password }) => {
                    self.authenticate(AuthMechanism::Plain, user, password, actions);
                }
                Some(PlainCredentials::OtherIdentity) => {
                    self.reply(actions, 535, [5, 7, 8], "Authentication credentials invalid")
                }
                None => self.reply(actions, 501, [5, 5, 2], "Invalid PLAIN response"),
            },
            AuthStep::LoginUser => match std::str::from_utf8(&decoded) {
                Ok(user) => {
                    let user = user.to_owned();
                    self.challenge(actions, "UGFzc3dvcmQ6", AuthStep::LoginPassword { user });
                }
                Err(_) => self.reply(actions, 501, [5, 5, 2], "Invalid user name"),
            },
            AuthStep::LoginPassword { user } => match std::str::from_utf8(&decoded) {
                Ok(password) => {
                    let password = Password::new(password.to_owned());
                    self.authenticate(AuthMechanism::Login, user, password, actions);
                }
                Err(_) => self.reply(actions, 501, [5, 5, 2], "Invalid password"),
            },
        }
    }

    fn authenticate(&mut self, mechanism: AuthMechanism, user: String, password: Password, actions: &mut Vec<Action>) {
        actions.push(Action::Authenticate { mechanism, user, password });
        self.awaiting = Some(Awaiting::Authentication);
    }

    fn mail(&mut self, from: MailFrom<String>, actions: &mut Vec<Action>) {
        if !self.greeted {
            return self.reply(actions, 503, [5, 5, 1], "Send HELO/EHLO first");
        }
        if self.config.auth_required && !self.authenticated {
            return self.reply(actions, 530, [5, 7, 0], "Authentication required");
        }
        if self.transaction.is_some() {
            return self.reply(actions, 503, [5, 5, 1], "Sender already specified");
        }
        let supported_flags = MAIL_BODY_7BIT | MAIL_BODY_8BITMIME | MAIL_SMTPUTF8;
        let unsupported = from.flags & !supported_flags != 0
            || from.trans_id.is_some()
            || from.by != 0
            || from.env_id.is_some()
            || from.solicit.is_some()
            || from.mtrk.is_some()
            || from.hold_for != 0
            || from.hold_until != 0
            || from.mt_priority != 0;
        // After HELO no extension, hence no parameter, is available.
        let any_parameter = from.flags != 0 || from.size != 0 || from.auth.is_some();
        if unsupported || (!self.extended && any_parameter) {
            return self.reply(actions, 555, [5, 5, 4], "Unsupported MAIL parameter");
        }
        if from.size > self.config.max_message_size {
            return self.reply(actions, 552, [5, 3, 4], "Message size exceeds fixed maximum message size");
        }
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        if let Err(problem) = check_address(&from.address, smtputf8) {
            return match problem {
                AddressProblem::Malformed => self.reply(actions, 501, [5, 1, 7], "Bad sender address syntax"),
                AddressProblem::NeedsSmtpUtf8 => {
                    self.reply(actions, 553, [5, 6, 7], "Non-ASCII address requires SMTPUTF8")
                }
            };
        }
        let body = if from.flags & MAIL_BODY_8BITMIME != 0 {
            Body::EightBitMime
        } else if from.flags & MAIL_BODY_7BIT != 0 {
            Body::SevenBit
        } else {
            Body::Unspecified
        };
        actions.push(Action::MailFrom {
            address: from.address.clone(),
            size: (from.size > 0).then_some(from.size as u64),
            body,
            smtputf8,
        });
        // At most the maximum (checked above): a client cannot reserve more.
        let declared_size = from.size.min(self.config.max_message_size);
        self.awaiting = Some(Awaiting::MailFrom(PendingMail { from: from.address, body, smtputf8, declared_size }));
    }

    fn rcpt(&mut self, to: RcptTo<String>, actions: &mut Vec<Action>) {
        let Some(transaction) = &self.transaction else {
            return self.reply(actions, 503, [5, 5, 1], "Need MAIL command");
        };
        if transaction.chunks.is_some() {
            return self.reply(actions, 503, [5, 5, 1], "RCPT not permitted after BDAT");
        }
        let smtputf8 = transaction.smtputf8;
        let full = transaction.recipients.len() >= self.config.max_recipients;
        if to.flags != 0 || to.orcpt.is_some() || to.rrvs != 0 {
            return self.reply(actions, 555, [5, 5, 4], "Unsupported RCPT parameter");
        }
        if to.address.is_empty() {
            return self.reply(actions, 501, [5, 1, 3], "Bad recipient address syntax");
        }
        if let Err(problem) = check_address(&to.address, smtputf8) {
            return match problem {
                AddressProblem::Malformed => self.reply(actions, 501, [5, 1, 3], "Bad recipient address syntax"),
                AddressProblem::NeedsSmtpUtf8 => {
                    self.reply(actions, 553, [5, 6, 7], "Non-ASCII address requires SMTPUTF8")
                }
            };
        }
        if full {
            return self.reply(actions, 452, [4, 5, 3], "Too many recipients");
        }
        actions.push(Action::Rcpt { address: to.address.clone() });
        self.awaiting = Some(Awaiting::Rcpt(to.address));
    }

    fn data(&mut self, actions: &mut Vec<Action>) {
        match &self.transaction {
            None => self.reply(actions, 503, [5, 5, 1], "Need MAIL command"),
            Some(transaction) if transaction.chunks.is_some() => {
                self.reply(actions, 503, [5, 5, 1], "DATA not permitted after BDAT");
            }
            Some(transaction) if transaction.recipients.is_empty() => {
                self.reply(actions, 554, [5, 5, 1], "No valid recipients");
            }
            Some(transaction) => {
                let declared_size = transaction.declared_size;
                actions.push(Action::Send(b"354 End data with <CR><LF>.<CR><LF>\r\n".to_vec()));
                self.mode = Mode::Data(DataReceiver::new(self.config.max_message_size, declared_size));
            }
        }
    }

    fn finish_data(&mut self, receiver: DataReceiver, actions: &mut Vec<Action>) {
        let transaction = self.transaction.take();
        if receiver.too_big {
            self.reply(actions, 552, [5, 3, 4], "Message size exceeds fixed maximum message size");
        } else if let Some(defect) = receiver.defect {
            self.refuse(actions, defect.reply());
        } else if let Some(transaction) = transaction {
            self.deliver(transaction, receiver.content, actions);
        } else {
            self.reply(actions, 451, [4, 3, 0], "No transaction");
        }
    }

    fn bdat(&mut self, size: usize, last: bool, actions: &mut Vec<Action>) {
        let outcome = match &mut self.transaction {
            None => ChunkOutcome::Refuse(Reply::new(503, [5, 5, 1], "Need MAIL command")),
            Some(transaction) if transaction.recipients.is_empty() => {
                ChunkOutcome::Refuse(Reply::new(554, [5, 5, 1], "No valid recipients"))
            }
            Some(transaction) => {
                let declared_size = transaction.declared_size;
                let received = transaction.chunks.get_or_insert_with(|| Vec::with_capacity(declared_size)).len();
                if received.saturating_add(size) > self.config.max_message_size {
                    ChunkOutcome::TooBig
                } else {
                    ChunkOutcome::Accept
                }
            }
        };
        let chunk = BdatChunk { remaining: size, size, last, outcome };
        if size == 0 {
            self.finish_bdat(chunk, actions);
        } else {
            self.mode = Mode::Bdat(chunk);
        }
    }

    /// The reply to a BDAT command, once its chunk has been read.
    fn finish_bdat(&mut self, chunk: BdatChunk, actions: &mut Vec<Action>) {
        match chunk.outcome {
            ChunkOutcome::Refuse(reply) => self.refuse(actions, reply),
            ChunkOutcome::TooBig => {
                self.transaction = None;
                self.reply(actions, 552, [5, 3, 4], "Message size exceeds fixed maximum message size");
            }
            ChunkOutcome::Accept if chunk.last => {
                let Some(mut transaction) = self.transaction.take() else {
                    return self.reply(actions, 451, [4, 3, 0], "No transaction");
                };
                let data = transaction.chunks.take().unwrap_or_default();
                match find_defect(&data) {
                    Some(defect) => self.refuse(actions, defect.reply()),
                    None => self.deliver(transaction, data, actions),
                }
            }
            ChunkOutcome::Accept => {
                let text = format!("{} octets received", chunk.size);
                self.reply(actions, 250, [2, 0, 0], &text);
            }
        }
    }

    fn deliver(&mut self, transaction: Transaction, mut data: Vec<u8>, actions: &mut Vec<Action>) {
        // The buffer grew by doubling: what it has beyond the message is
        // given back before the message is handed on (and held for as long
        // as its delivery takes).
        data.shrink_to_fit();
        actions.push(Action::Message {
            from: transaction.from,
            recipients: transaction.recipients,
            data,
            body: transaction.body,
            smtputf8: transaction.smtputf8,
        });
        self.awaiting = Some(Awaiting::Message);
    }

    fn close(&mut self, actions: &mut Vec<Action>) {
        actions.push(Action::Close);
        self.mode = Mode::Closed;
        self.transaction = None;
        self.discard_input();
    }

    // ---- replies ----

    /// A reply, with the enhanced status code once EHLO was given.
    fn reply(&self, actions: &mut Vec<Action>, code: u16, enhanced: [u8; 3], text: &str) {
        let message = sanitize(text);
        let mut bytes = Vec::with_capacity(message.len() + 16);
        if self.extended && matches!(code / 100, 2 | 4 | 5) {
            let response = Response { code, esc: enhanced, message };
            // Writing to a Vec cannot fail.
            let _ = response.write(&mut bytes);
        } else {
            bytes.extend_from_slice(format!("{code} {message}\r\n").as_bytes());
        }
        actions.push(Action::Send(bytes));
    }

    /// A refusal chosen elsewhere; only 4xx and 5xx codes are refusals.
    fn refuse(&self, actions: &mut Vec<Action>, refusal: Reply) {
        if (400..600).contains(&refusal.code) {
            self.reply(actions, refusal.code, refusal.enhanced, &refusal.text);
        } else {
            self.reply(actions, 451, [4, 3, 0], "Local error in processing");
        }
    }
}

/// The chunk size of a BDAT line as written, if it fits in a u64.
///
/// smtp-proto 0.2.5 reads a number of more than 20 digits as its last digits
/// (`size_saturating` starts over once saturated), so the chunk sizes and
/// `SIZE=` values it returns are checked against what the client wrote.
fn written_chunk_size(line: &[u8]) -> Option<u64> {
    let mut words = line.trim_ascii().split(|&byte| byte == b' ').filter(|word| !word.is_empty());
    words.next().filter(|verb| verb.eq_ignore_ascii_case(b"BDAT"))?;
    parse_number(words.next()?)
}

/// The (last) `SIZE=` value of a MAIL line as written, if it fits in a u64.
fn written_size_parameter(line: &[u8]) -> Option<u64> {
    let word = line
        .trim_ascii()
        .split(|&byte| byte == b' ')
        .rev()
        .find(|word| word.get(..5).is_some_and(|key| key.eq_ignore_ascii_case(b"SIZE=")))?;
    parse_number(word.get(5..)?)
}

fn parse_number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Whether a command line is a BDAT command (whose chunk size must then be
/// known).
fn is_bdat(line: &[u8]) -> bool {
    let line = line.trim_ascii_start();
    line.get(..4).is_some_and(|verb| verb.eq_ignore_ascii_case(b"BDAT"))
        && line.get(4).is_none_or(u8::is_ascii_whitespace)
}

enum PlainCredentials {
    Valid {
        user: String,
        password: Password,
    },
    /// An authorization identity other than the authentication identity.
    OtherIdentity,
}

/// `[authzid] NUL authcid NUL passwd` (RFC 4616).
fn parse_plain(message: &[u8]) -> Option<PlainCredentials> {
    let mut parts = message.split(|&byte| byte == 0);
    let authorization = std::str::from_utf8(parts.next()?).ok()?;
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let password = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() || user.is_empty() {
        return None;
    }
    if !authorization.is_empty() && authorization != user {
        return Some(PlainCredentials::OtherIdentity);
    }
    Some(PlainCredentials::Valid { user: user.to_owned(), password: Password::new(password.to_owned()) })
}

enum AddressProblem {
    Malformed,
    NeedsSmtpUtf8,
}

/// smtp-proto checks the shape; this refuses control characters, invalid
/// UTF-8 (which smtp-proto replaces with U+FFFD) and non-ASCII without
/// SMTPUTF8 (RFC 6531 section 3.4).
fn check_address(address: &str, smtputf8: bool) -> Result<(), AddressProblem> {
    if address.chars().any(|character| character.is_control() || character == char::REPLACEMENT_CHARACTER) {
        Err(AddressProblem::Malformed)
    } else if !smtputf8 && !address.is_ascii() {
        Err(AddressProblem::NeedsSmtpUtf8)
    } else {
        Ok(())
    }
}

/// Reply text is one line of printable ASCII.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|character| if character.is_ascii_graphic() || character == ' ' { character } else { '?' })
        .collect()
}

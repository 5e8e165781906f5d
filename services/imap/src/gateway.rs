//! The IMAP listener: one task per connection driving imap-next's
//! sans-I/O server and a `bitmask_imap::Session` over the mail model.
//!
//! Protection: a cap on connections, an idle timeout, literal and command
//! size limits (imap-next refuses larger ones before allocating), failed
//! logins slowed down and cut off, a client sending garbage answered BAD and
//! cut off only when it keeps at it.

use std::sync::Arc;
use std::time::Duration;

use bitmask_imap::imap_types::auth::{AuthMechanism, AuthenticateData};
use bitmask_imap::imap_types::core::Text;
use bitmask_imap::imap_types::response::{CommandContinuationRequest, Response, Status};
use bitmask_imap::session::{After, Credentials, Session};
use bitmask_imap::streamed::StreamedBody;
use bitmask_mail::{MailEvent, MailModel};
use bitmask_runtime::conn::Conn;
use imap_next::server::{Error as ServerError, Event, Options, ResponseHandle, Server};
use imap_next::{Interrupt, Io, State as _};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, broadcast};

/// The gateway's limits.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    /// RFC 3501 5.4: at least 30 minutes.
    pub idle_timeout: Duration,
    pub max_literal: u32,
    /// Protocol errors in a row before the connection is cut.
    pub max_bad_in_a_row: u32,
    /// Failed logins before the connection is cut.
    pub max_failed_logins: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100,
            idle_timeout: Duration::from_secs(31 * 60),
            max_literal: 64 << 20,
            max_bad_in_a_row: 20,
            max_failed_logins: 5,
        }
    }
}

/// What every connection needs.
pub struct Gateway {
    pub model: Arc<MailModel>,
    pub address: String,
    /// The mail token, read from the store (None while it is locked).
    pub token: Arc<dyn Fn() -> futures::future::BoxFuture<'static, Option<String>> + Send + Sync>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub limits: Limits,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("address", &self.address).field("limits", &self.limits).finish_non_exhaustive()
    }
}

/// Accepts connections until the listener fails.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>) {
    let slots = Arc::new(Semaphore::new(gateway.limits.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting an IMAP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Err(error) = connection(Conn::Plain(stream), gateway).await {
                        tracing::debug!(%peer, %error, "IMAP connection ended");
                    }
                });
            }
            Err(_) => {
                tokio::spawn(async move {
                    let mut stream = stream;
                    let _ = stream.write_all(b"* BYE too many connections, try again later\r\n").await;
                });
            }
        }
    }
}

/// Bytes of responses gathered before they are written.
const OUTPUT_BUFFER: usize = 64 * 1024;

fn options(limits: &Limits) -> Options {
    let mut options = Options::default();
    options.crlf_relaxed = true;
    options.max_literal_size = limits.max_literal;
    options.max_command_size = limits.max_literal.saturating_add(64 * 1024);
    options
}

/// Bodies of messages this big or bigger are sent from the store as they are
/// read (`bitmask_imap::streamed`), not held whole by the session.
const STREAM_FROM: u64 = 1 << 20;

/// A long answer goes on once `handle` is sent: first `stream`, if any,
/// then the next batch from the session.
struct Waiting {
    handle: ResponseHandle,
    stream: Option<StreamedBody>,
}

/// Where a connection's bytes go: the socket, and what is gathered for it.
struct Out {
    conn: Conn,
    buffer: Vec<u8>,
}

impl Out {
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.buffer.is_empty() {
            self.conn.write(&self.buffer).await?;
            self.buffer.clear();
        }
        Ok(())
    }
}

/// Queues a command's responses. When there are more to come, what to wait
/// for: the response after whose sending the rest is made as the client
/// reads it, and before the next command.
async fn answer(
    server: &mut Server,
    session: &mut Session<MailModel>,
    model: &MailModel,
    out: &mut Out,
    mut reply: bitmask_imap::session::Reply,
) -> std::io::Result<Option<Waiting>> {
    loop {
        let last = enqueue(server, reply.responses);
        if !reply.more {
            return Ok(None);
        }
        match (last, reply.stream) {
            (Some(handle), stream) => return Ok(Some(Waiting { handle, stream })),
            // Nothing queued ahead of it: everything before is in `out`.
            (None, Some(stream)) => send_streamed(model, session, out, &stream).await?,
            (None, None) => {}
        }
        reply = session.more().await;
    }
}

/// Sends a streamed FETCH response: its head, the message's bytes as the
/// store gives them, its tail. A message gone before any of it is sent ends
/// the FETCH `NO [EXPUNGEISSUED]`; a store failure half way cuts the
/// connection (a literal cannot be taken back).
async fn send_streamed(
    model: &MailModel,
    session: &mut Session<MailModel>,
    out: &mut Out,
    streamed: &StreamedBody,
) -> std::io::Result<()> {
    let body = match model.raw_body(&streamed.message).await {
        Ok(Some(body)) => body,
        Ok(None) => {
            session.stream_gone();
            return Ok(());
        }
        Err(error) => {
            tracing::warn!(%error, "reading a message to send it");
            session.stream_gone();
            return Ok(());
        }
    };
    let end = streamed.range.end.min(body.size());
    let start = streamed.range.start.min(end);
    out.buffer.extend_from_slice(&streamed.head(end - start));
    out.flush().await?;
    let mut reader = body.reader(model, start..end);
    let mut sent = 0u64;
    loop {
        let chunk = match reader.next().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(error) => return Err(std::io::Error::other(format!("reading a message half sent: {error}"))),
        };
        let mut chunk = chunk;
        bitmask_imap::streamed::clean(&mut chunk);
        sent += chunk.len() as u64;
        out.conn.write(&chunk).await?;
    }
    if sent != end - start {
        return Err(std::io::Error::other(format!("a message gave {sent} bytes, not {}", end - start)));
    }
    out.buffer.extend_from_slice(bitmask_imap::streamed::TAIL);
    Ok(())
}

/// Queues responses to be sent; the handle of the last one.
fn enqueue(server: &mut Server, responses: Vec<Response<'static>>) -> Option<ResponseHandle> {
    let mut last = None;
    for response in responses {
        last = Some(match response {
            Response::Data(data) => server.enqueue_data(data),
            Response::Status(status) => server.enqueue_status(status),
            Response::CommandContinuationRequest(request) => server.enqueue_continuation_request(request),
        });
    }
    last
}

fn untagged_bad(message: &'static str) -> Status<'static> {
    Status::Untagged(bitmask_imap::imap_types::response::StatusBody {
        kind: bitmask_imap::imap_types::response::StatusKind::Bad,
        code: None,
        text: Text::unvalidated(message),
    })
}

fn continuation(text: &'static str) -> CommandContinuationRequest<'static> {
    CommandContinuationRequest::basic(None, Text::unvalidated(text))
        .unwrap_or(CommandContinuationRequest::Base64(std::borrow::Cow::Borrowed(b"")))
}

/// A fresh imap-next server whose greeting is not sent (after STARTTLS the
/// session goes on; bytes the client sent before the handshake are dropped
/// with the old server, so nothing can be injected into the TLS session).
fn server_after_tls(limits: &Limits, session: &Session<MailModel>) -> Server {
    let mut server = Server::new(options(limits), session.greeting());
    for _ in 0..4 {
        match server.next() {
            Err(Interrupt::Io(Io::NeedMoreInput)) => break,
            _ => continue,
        }
    }
    server
}

async fn connection(conn: Conn, gateway: Arc<Gateway>) -> std::io::Result<()> {
    // The token is read again at each login: the store may be locked now and
    // unlocked later (or the token rotated) while the connection stays open.
    let credentials = Credentials { address: gateway.address.clone(), token: None };
    let mut session = Session::new(gateway.model.clone(), credentials, gateway.tls.is_some());
    session.stream_bodies_from(STREAM_FROM);
    let model = &*gateway.model;
    let limits = &gateway.limits;
    let mut server = Server::new(options(limits), session.greeting());
    let mut events = gateway.model.subscribe();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut out = Out { conn, buffer: Vec::with_capacity(OUTPUT_BUFFER) };
    let mut idling: Option<bitmask_imap::imap_types::core::Tag<'static>> = None;
    let mut authenticating: Option<bitmask_imap::imap_types::core::Tag<'static>> = None;
    let (mut failed_logins, mut bad_in_a_row) = (0u32, 0u32);
    let mut pending = After::Continue;
    let mut waiting: Option<Waiting> = None;
    loop {
        match server.next() {
            // After LOGOUT, a cut-off or STARTTLS, whatever the client sent
            // behind it is not run (for STARTTLS: nothing may be injected).
            // (Nor AUTHENTICATE or IDLE: the connection closes, or the server
            // is replaced for TLS, once the output is out.)
            Ok(
                Event::CommandReceived { .. }
                | Event::CommandAuthenticateReceived { .. }
                | Event::AuthenticateDataReceived { .. }
                | Event::IdleCommandReceived { .. }
                | Event::IdleDoneReceived,
            ) if pending != After::Continue => {}
            Ok(Event::CommandReceived { command }) => {
                // What earlier commands answered goes out before this one runs.
                out.flush().await?;
                bad_in_a_row = 0;
                if matches!(command.body, bitmask_imap::imap_types::command::CommandBody::Login { .. }) {
                    session.set_token((gateway.token)().await);
                }
                let reply = session.handle(command).await;
                if reply.after == After::AuthFailed {
                    failed_logins += 1;
                    tokio::time::sleep(Duration::from_secs(u64::from(failed_logins.min(5)))).await;
                    if failed_logins >= limits.max_failed_logins {
                        pending = After::Logout;
                    }
                } else {
                    pending = reply.after;
                }
                waiting = answer(&mut server, &mut session, model, &mut out, reply).await?;
            }
            Ok(Event::CommandAuthenticateReceived { command_authenticate }) => {
                let tag = command_authenticate.tag;
                session.set_token((gateway.token)().await);
                let finish = if !session.may_authenticate() {
                    Some(bad_status(&tag, "already logged in"))
                } else if command_authenticate.mechanism != AuthMechanism::Plain {
                    Some(no_status(&tag, "only AUTHENTICATE PLAIN is supported"))
                } else {
                    match command_authenticate.initial_response {
                        Some(response) => {
                            let reply = session.authenticate_plain(&tag, response.declassify());
                            Some(login_status(&mut session, reply, &mut failed_logins, &mut pending, limits).await)
                        }
                        None => {
                            let _ = server.authenticate_continue(CommandContinuationRequest::Base64(
                                std::borrow::Cow::Borrowed(b""),
                            ));
                            authenticating = Some(tag);
                            None
                        }
                    }
                };
                if let Some(status) = finish {
                    let _ = server.authenticate_finish(status);
                }
            }
            Ok(Event::AuthenticateDataReceived { authenticate_data }) => {
                let tag =
                    authenticating.take().unwrap_or_else(|| bitmask_imap::imap_types::core::Tag::unvalidated("*"));
                let status = match authenticate_data {
                    AuthenticateData::Continue(data) => {
                        let reply = session.authenticate_plain(&tag, data.declassify());
                        login_status(&mut session, reply, &mut failed_logins, &mut pending, limits).await
                    }
                    AuthenticateData::Cancel => bad_status(&tag, "authentication cancelled"),
                };
                let _ = server.authenticate_finish(status);
            }
            Ok(Event::IdleCommandReceived { tag }) => {
                if session.may_idle() {
                    let _ = server.idle_accept(continuation("idling"));
                    enqueue(&mut server, session.updates(true).await);
                    idling = Some(tag);
                } else {
                    let _ = server.idle_reject(bad_status(&tag, "log in first"));
                }
            }
            Ok(Event::IdleDoneReceived) => {
                if let Some(tag) = idling.take() {
                    server.enqueue_status(ok_status(&tag, "IDLE terminated"));
                }
            }
            Ok(Event::ResponseSent { handle, .. })
                if waiting.as_ref().is_some_and(|waiting| waiting.handle == handle) =>
            {
                if let Some(stream) = waiting.take().and_then(|waiting| waiting.stream) {
                    send_streamed(model, &mut session, &mut out, &stream).await?;
                }
                let reply = session.more().await;
                waiting = answer(&mut server, &mut session, model, &mut out, reply).await?;
            }
            Ok(Event::GreetingSent { .. } | Event::ResponseSent { .. }) => {}
            // imap-next hands out one response at a time: they are written
            // together (a FETCH of 100,000 messages is not 100,000 writes).
            Err(Interrupt::Io(Io::Output(bytes))) => {
                out.buffer.extend_from_slice(&bytes);
                if out.buffer.len() >= OUTPUT_BUFFER {
                    out.flush().await?;
                }
            }
            Err(Interrupt::Io(Io::NeedMoreInput)) => {
                out.flush().await?;
                // Everything queued is written: act on what the last command asked.
                match std::mem::replace(&mut pending, After::Continue) {
                    After::Logout => return Ok(()),
                    After::StartTls => {
                        if let (Conn::Plain(stream), Some(acceptor)) = (out.conn, gateway.tls.clone()) {
                            out.conn = Conn::Tls(Box::new(acceptor.accept(stream).await?));
                            session.tls_started();
                            server = server_after_tls(limits, &session);
                            continue;
                        }
                        return Ok(());
                    }
                    After::Continue | After::AuthFailed => {}
                }
                tokio::select! {
                    read = tokio::time::timeout(limits.idle_timeout, out.conn.read(&mut buffer)) => match read {
                        Ok(Ok(0)) => return Ok(()),
                        Ok(Ok(n)) => server.enqueue_input(&buffer[..n]),
                        Ok(Err(error)) => return Err(error),
                        Err(_) => {
                            out.conn.write(b"* BYE idle for too long\r\n").await?;
                            return Ok(());
                        }
                    },
                    event = events.recv(), if idling.is_some() => {
                        let relevant = match &event {
                            Ok(MailEvent::Mailboxes) => false,
                            Ok(event) => event.mailbox() == session.selected(),
                            Err(broadcast::error::RecvError::Lagged(_)) => true,
                            Err(broadcast::error::RecvError::Closed) => false,
                        };
                        if relevant {
                            // Let a burst of changes settle into one update.
                            while events.try_recv().is_ok() {}
                            enqueue(&mut server, session.updates(true).await);
                        }
                    }
                }
            }
            // Nor is a line that does not parse answered then (a BAD after
            // the LOGOUT's OK, or written in clear before the TLS handshake).
            Err(Interrupt::Error(_)) if pending != After::Continue => {}
            Err(Interrupt::Error(error)) => {
                bad_in_a_row += 1;
                match error {
                    ServerError::LiteralTooLong { .. } => {
                        // imap-next answered the tagged BAD already.
                    }
                    ServerError::CommandTooLong { .. } => {
                        server.enqueue_status(untagged_bad("command too long"));
                        pending = After::Logout;
                    }
                    ServerError::ExpectedCrlfGotLf { discarded_bytes }
                    | ServerError::MalformedMessage { discarded_bytes } => {
                        let status = match tag_of(discarded_bytes.declassify()) {
                            Some(tag) => bad_status(&tag, "malformed command"),
                            None => untagged_bad("malformed command"),
                        };
                        server.enqueue_status(status);
                    }
                }
                if bad_in_a_row >= limits.max_bad_in_a_row {
                    server.enqueue_status(Status::Bye(bitmask_imap::imap_types::response::Bye {
                        code: None,
                        text: Text::unvalidated("too many protocol errors"),
                    }));
                    pending = After::Logout;
                }
            }
        }
    }
}

/// The tag of a line the codec could not parse, when it has a valid one.
fn tag_of(line: &[u8]) -> Option<bitmask_imap::imap_types::core::Tag<'static>> {
    let end = line.iter().position(|byte| *byte == b' ')?;
    let tag = std::str::from_utf8(&line[..end]).ok()?;
    bitmask_imap::imap_types::core::Tag::try_from(tag.to_owned()).ok()
}

fn tagged(
    tag: &bitmask_imap::imap_types::core::Tag<'static>,
    kind: bitmask_imap::imap_types::response::StatusKind,
    message: &'static str,
) -> Status<'static> {
    Status::Tagged(bitmask_imap::imap_types::response::Tagged {
        tag: tag.clone(),
        body: bitmask_imap::imap_types::response::StatusBody { kind, code: None, text: Text::unvalidated(message) },
    })
}

fn ok_status(tag: &bitmask_imap::imap_types::core::Tag<'static>, message: &'static str) -> Status<'static> {
    tagged(tag, bitmask_imap::imap_types::response::StatusKind::Ok, message)
}

fn no_status(tag: &bitmask_imap::imap_types::core::Tag<'static>, message: &'static str) -> Status<'static> {
    tagged(tag, bitmask_imap::imap_types::response::StatusKind::No, message)
}

fn bad_status(tag: &bitmask_imap::imap_types::core::Tag<'static>, message: &'static str) -> Status<'static> {
    tagged(tag, bitmask_imap::imap_types::response::StatusKind::Bad, message)
}

/// The tagged status of a login, after the delay a failure earns.
async fn login_status(
    _session: &mut Session<MailModel>,
    reply: bitmask_imap::session::Reply,
    failed_logins: &mut u32,
    pending: &mut After,
    limits: &Limits,
) -> Status<'static> {
    if reply.after == After::AuthFailed {
        *failed_logins += 1;
        tokio::time::sleep(Duration::from_secs(u64::from((*failed_logins).min(5)))).await;
        if *failed_logins >= limits.max_failed_logins {
            *pending = After::Logout;
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

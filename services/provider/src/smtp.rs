//! The provider's two SMTP listeners, each connection driving a
//! `bitmask_smtp::session::Session` (without AUTH: `auth_required` off).
//!
//! **MX** (plain SMTP, STARTTLS offered): mail for the provider's domain
//! from anyone. RCPT of another domain: `550 5.7.1` (no open relay); of no
//! account: `550 5.1.1`; of an account without a public key: `450 4.7.1`.
//! At the end of DATA every recipient's copy is encrypted and deposited
//! ([`crate::deliver`]) before `250`.
//!
//! **Relay** (implicit TLS): the client must present a certificate the
//! provider's CA issued (checked in the handshake, which fails without
//! one); the account is the one the certificate was issued to, found by
//! its SHA-256 (an unknown or expired one: `530 5.7.0` and the connection
//! closes). MAIL FROM must be that account's address (`550 5.7.1`).
//! Recipients of the provider's domain take the MX's path; others go to
//! the smarthost ([`crate::smarthost`]) before `250`; without one they get
//! `550 5.7.1`. Local copies are deposited first, then the smarthost is
//! asked; its temporary refusal is `451`, its permanent one `554`.
//!
//! Both: messages up to [`MAX_MESSAGE_SIZE`] (`552` beyond); each listener
//! its own pool of connections ([`ConnectionLimits`], `[limits]` in
//! `provider.toml`): at most so many in all and from one client network
//! (an IPv4 address, an IPv6 /64), so one client cannot take the slots of
//! others. Beyond them the MX answers `421 4.7.0 too many connections from
//! your address` (or `421 4.7.0 too many connections, try again later`
//! when the pool is full) and closes; the relay, whose clients speak TLS
//! first, closes. Idle connections are closed after [`IDLE_TIMEOUT`],
//! malformed input answered by the session (`500`, `501`, `550 5.5.2` for
//! bare line feeds) without ending the listener.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitmask_runtime::conn::Conn;
use bitmask_runtime::smtp_server::{Decisions, serve_connection};
use bitmask_smtp::session::{Action, Config, Reply, Session};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::deliver::{Delivered, Delivery, Message, Trace, trace_headers};
use crate::limits::{ConnectionLimits, ConnectionRefused};
use crate::smarthost::Smarthost;

/// The largest message taken: a message at the submission limit (40 MiB),
/// encrypted and armored by the sender's gateway (about 4/3 of it, with
/// line breaks), and its headers. Below the 64 MiB that decryption gives
/// out, so what the MX encrypts always decrypts.
pub const MAX_MESSAGE_SIZE: usize = 60 << 20;
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// What both listeners share.
pub struct SmtpContext {
    pub delivery: Arc<Delivery>,
    pub smarthost: Option<Smarthost>,
    /// The MX's STARTTLS.
    pub starttls: TlsAcceptor,
    /// The relay's TLS (client certificate required).
    pub relay_tls: TlsAcceptor,
}

impl std::fmt::Debug for SmtpContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpContext")
            .field("delivery", &self.delivery)
            .field("smarthost", &self.smarthost)
            .finish_non_exhaustive()
    }
}

/// Who is on the other side of a connection.
#[derive(Debug, Clone)]
enum Client {
    /// Anyone, on the MX.
    Anyone,
    /// An account, by its client certificate, on the relay.
    Account(String),
}

/// Which listener: the MX says why it refuses a connection, the relay
/// (TLS first) cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    Mx,
    Relay,
}

/// Accepts connections until the task is dropped, each within `limits`
/// served on its own task by `serve`.
async fn accept_loop<F, Fut>(listener: TcpListener, name: Listener, limits: Arc<ConnectionLimits>, serve: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(listener = ?name, %error, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match limits.admit(peer.ip()) {
            Ok(slot) => {
                let connection = serve(stream, peer);
                tokio::spawn(async move {
                    let _slot = slot;
                    connection.await;
                });
            }
            Err(refused) => {
                tracing::info!(listener = ?name, %peer, ?refused, "connection refused");
                if name == Listener::Relay {
                    continue;
                }
                let reply: &[u8] = match refused {
                    ConnectionRefused::FromNetwork => b"421 4.7.0 too many connections from your address\r\n",
                    ConnectionRefused::Full => b"421 4.7.0 too many connections, try again later\r\n",
                };
                // A fresh socket takes a line at once; the write is bounded anyway.
                tokio::spawn(async move {
                    let written = tokio::time::timeout(Duration::from_secs(5), stream.write_all(reply)).await;
                    if matches!(written, Ok(Ok(()))) {
                        let _ = stream.shutdown().await;
                    }
                });
            }
        }
    }
}

/// The MX on `listener`.
pub async fn serve_mx(listener: TcpListener, context: Arc<SmtpContext>, limits: Arc<ConnectionLimits>) {
    accept_loop(listener, Listener::Mx, limits, move |stream, peer| {
        let context = context.clone();
        async move {
            if let Err(error) = connection(Conn::Plain(stream), peer.ip(), Client::Anyone, &context).await {
                tracing::debug!(%peer, %error, "MX connection ended");
            }
        }
    })
    .await;
}

/// The relay on `listener`.
pub async fn serve_relay(listener: TcpListener, context: Arc<SmtpContext>, limits: Arc<ConnectionLimits>) {
    accept_loop(listener, Listener::Relay, limits, move |stream, peer| {
        let context = context.clone();
        async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, context.relay_tls.accept(stream)).await;
            let mut stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::info!(%peer, %error, "relay TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "relay TLS handshake timed out");
                    return;
                }
            };
            let account = match account_of(&context, &stream).await {
                Ok(account) => account,
                Err(reason) => {
                    tracing::info!(%peer, %reason, "relay client refused");
                    let reply = format!("530 5.7.0 {reason}\r\n");
                    let _ = stream.write_all(reply.as_bytes()).await;
                    let _ = stream.shutdown().await;
                    return;
                }
            };
            tracing::debug!(%peer, %account, "relay client");
            let conn = Conn::Tls(Box::new(stream));
            if let Err(error) = connection(conn, peer.ip(), Client::Account(account), &context).await {
                tracing::debug!(%peer, %error, "relay connection ended");
            }
        }
    })
    .await;
}

/// The account whose issued certificate the client presented.
async fn account_of(
    context: &SmtpContext,
    stream: &tokio_rustls::server::TlsStream<TcpStream>,
) -> Result<String, String> {
    let certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| "a client certificate is required".to_owned())?;
    let fingerprint = crate::ca::sha256(certificate.as_ref());
    let store = context.delivery.store().clone();
    let issued = tokio::task::spawn_blocking(move || store.certificate(&fingerprint))
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())?
        .ok_or_else(|| "this client certificate was not issued here (or is forgotten): ask for a new one".to_owned())?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0);
    if issued.not_after_unix <= now {
        return Err("this client certificate has expired: ask for a new one".into());
    }
    Ok(issued.address)
}

/// Runs blocking work on the blocking pool; a failed task is a temporary
/// local error.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, Reply> + Send + 'static) -> Result<T, Reply> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|error| {
        tracing::error!(%error, "delivery task failed");
        Err(Reply::new(451, [4, 3, 0], "local error in processing, try again later"))
    })
}

/// The decision on RCPT `address` for `client`.
async fn check_recipient(context: &SmtpContext, client: &Client, address: &str) -> Result<(), Reply> {
    if context.delivery.is_local(address) {
        let delivery = context.delivery.clone();
        let address = address.to_owned();
        return blocking(move || delivery.check_local(&address)).await.map(drop);
    }
    match (client, &context.smarthost) {
        (Client::Account(_), Some(_)) => Ok(()),
        (Client::Account(_), None) => {
            Err(Reply::new(550, [5, 7, 1], "relaying denied: this provider sends no mail to other domains"))
        }
        (Client::Anyone, _) => Err(Reply::new(550, [5, 7, 1], "relaying denied")),
    }
}

/// The end of DATA: local copies deposited, then remote ones handed to the
/// smarthost; the queue id for `250`, or the refusal.
async fn take_message(
    context: &SmtpContext,
    trace: Trace,
    recipients: Vec<String>,
    message: Message,
) -> Result<String, Reply> {
    let (local, remote): (Vec<String>, Vec<String>) =
        recipients.into_iter().partition(|recipient| context.delivery.is_local(recipient));
    let local: Vec<String> = local.iter().map(|address| address.to_lowercase()).collect();
    let mut ids = Vec::new();
    if !local.is_empty() {
        let (delivery, trace, message) = (context.delivery.clone(), trace.clone(), message.clone());
        let delivered = blocking(move || delivery.deliver(&trace, &local, &message)).await?;
        ids.extend(delivered.into_iter().map(|delivered| match delivered {
            Delivered::Deposited(id) => id,
            Delivered::Duplicate => "duplicate".to_owned(),
        }));
    }
    if !remote.is_empty() {
        let Some(smarthost) = &context.smarthost else {
            return Err(Reply::new(550, [5, 7, 1], "relaying denied"));
        };
        let received = trace_headers(&trace, context.delivery.domain(), None);
        let answer = smarthost.send(&trace.from, &remote, received.as_bytes(), &message).await?;
        tracing::info!(recipients = remote.len(), %answer, "relayed to the smarthost");
        ids.push("relayed".to_owned());
    }
    Ok(ids.join(","))
}

async fn connection(conn: Conn, peer: IpAddr, client: Client, context: &SmtpContext) -> std::io::Result<()> {
    let mut config = Config::new(context.delivery.domain());
    config.auth_required = false;
    config.auth_offered = false;
    config.starttls_available = matches!(client, Client::Anyone);
    config.max_message_size = MAX_MESSAGE_SIZE;
    let starttls = matches!(client, Client::Anyone).then_some(&context.starttls);
    let mut decisions = Exchange { context, peer, client };
    serve_connection(conn, Session::new(config), starttls, IDLE_TIMEOUT, &mut decisions).await
}

/// The MX's or the relay's decisions for one connection.
struct Exchange<'a> {
    context: &'a SmtpContext,
    peer: IpAddr,
    client: Client,
}

impl Decisions for Exchange<'_> {
    async fn decide(&mut self, session: &mut Session, action: Action, secure: bool) -> Vec<Action> {
        let (context, peer) = (self.context, self.peer);
        match action {
            // AUTH is not how anyone logs in here (the relay knows its
            // clients by their certificates); the session does not offer it.
            Action::Authenticate { .. } => session.auth_result(false),
            Action::MailFrom { address, .. } => {
                let result = match &self.client {
                    Client::Account(account) if !address.eq_ignore_ascii_case(account) => Err(Reply::new(
                        550,
                        [5, 7, 1],
                        format!("this certificate sends as <{account}> only, not <{address}>"),
                    )),
                    _ => Ok(()),
                };
                session.mail_from_result(result)
            }
            Action::Rcpt { address } => {
                let result = check_recipient(context, &self.client, &address).await;
                session.rcpt_result(result)
            }
            Action::Message { from, recipients, data, .. } => {
                let protocol = if secure { "ESMTPS" } else { "ESMTP" };
                let trace = Trace { from, peer, protocol };
                let result = take_message(context, trace, recipients, Arc::new(data.into())).await;
                if let Err(reply) = &result {
                    tracing::info!(%peer, code = reply.code, text = %reply.text, "message refused");
                }
                session.message_result(result)
            }
            // The connection's own actions never come here.
            Action::Send(_) | Action::StartTls | Action::Close => Vec::new(),
        }
    }
}

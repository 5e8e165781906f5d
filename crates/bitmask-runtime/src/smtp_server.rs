//! The I/O half of an SMTP server connection, shared by the submission
//! gateway and the provider's MX and relay: it feeds what the client sends
//! to a `bitmask_smtp::session::Session`, writes the session's replies,
//! performs STARTTLS, closes idle connections, and hands every decision the
//! session asks for (a login, a sender, a recipient, a message) to the
//! service's [`Decisions`].

use std::time::Duration;

use bitmask_smtp::session::{Action, Session};

use crate::conn::Conn;

/// How long a TLS handshake after STARTTLS may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a service decides for its sessions.
pub trait Decisions {
    /// Answers one of [`Action::Authenticate`], [`Action::MailFrom`],
    /// [`Action::Rcpt`] or [`Action::Message`] through the session's
    /// `*_result` methods, returning the actions those give (and any of its
    /// own, e.g. a farewell and [`Action::Close`]). `secure` tells whether
    /// the connection is TLS by now.
    fn decide(
        &mut self,
        session: &mut Session,
        action: Action,
        secure: bool,
    ) -> impl Future<Output = Vec<Action>> + Send;
}

/// Serves one connection until the client quits, the session closes it, or
/// it is idle for `idle_timeout` (`421 4.4.2`). `starttls`: the acceptor
/// for STARTTLS, if the session offers it.
pub async fn serve_connection(
    mut conn: Conn,
    mut session: Session,
    starttls: Option<&tokio_rustls::TlsAcceptor>,
    idle_timeout: Duration,
    decisions: &mut impl Decisions,
) -> std::io::Result<()> {
    conn.write(&session.greeting()).await?;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut pending: Vec<Action> = Vec::new();
    loop {
        if pending.is_empty() {
            let n = match tokio::time::timeout(idle_timeout, conn.read(&mut buffer)).await {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(n)) => n,
                Ok(Err(error)) => return Err(error),
                Err(_) => {
                    conn.write(b"421 4.4.2 idle for too long, closing\r\n").await?;
                    return Ok(());
                }
            };
            pending = session.feed(buffer.get(..n).unwrap_or_default());
            continue;
        }
        let more = match pending.remove(0) {
            Action::Send(bytes) => {
                conn.write(&bytes).await?;
                Vec::new()
            }
            Action::Close => return Ok(()),
            Action::StartTls => {
                let (Some(acceptor), Conn::Plain(stream)) = (starttls, conn) else { return Ok(()) };
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                conn = Conn::Tls(Box::new(handshake.map_err(|_| std::io::ErrorKind::TimedOut)??));
                session.tls_started();
                // Whatever the client pipelined behind STARTTLS is dropped.
                pending.clear();
                Vec::new()
            }
            decision => decisions.decide(&mut session, decision, matches!(conn, Conn::Tls(_))).await,
        };
        // The answers to this action come before what was already waiting.
        for (index, action) in more.into_iter().enumerate() {
            pending.insert(index, action);
        }
    }
}

//! The SMTP submission listener: one task per connection driving
//! `bitmask_smtp::session::Session`, deciding what the session asks (the
//! login, the sender, each recipient) and queueing each message durably
//! before the session may answer `250`.

use std::sync::Arc;
use std::time::Duration;

use bitmask_runtime::conn::Conn;
use bitmask_runtime::smtp_server::{Decisions, serve_connection};
use bitmask_smtp::session::{Action, Config, Reply, Session};
use bitmask_supervisor::config::EncryptionPolicy;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::worker::Worker;

/// What every connection needs.
pub struct Listener {
    pub worker: Arc<Worker>,
    /// The mail token, read from the store (None while it is locked).
    pub token: Arc<dyn Fn() -> futures::future::BoxFuture<'static, Option<String>> + Send + Sync>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub max_message_size: usize,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").field("max_connections", &self.max_connections).finish_non_exhaustive()
    }
}

pub async fn serve(listener: TcpListener, context: Arc<Listener>) {
    let slots = Arc::new(Semaphore::new(context.max_connections));
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting an SMTP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let context = context.clone();
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Err(error) = connection(Conn::Plain(stream), context).await {
                        tracing::debug!(%peer, %error, "SMTP connection ended");
                    }
                });
            }
            Err(_) => {
                tokio::spawn(async move {
                    let _ = stream.write_all(b"421 4.7.0 too many connections, try again later\r\n").await;
                });
            }
        }
    }
}

/// Constant-time comparison of the presented token with the account's.
fn same(expected: &str, given: &str) -> bool {
    let (expected, given) = (expected.as_bytes(), given.as_bytes());
    let mut difference = expected.len() ^ given.len();
    for (index, byte) in expected.iter().enumerate() {
        difference |= usize::from(byte ^ given.get(index).copied().unwrap_or(0));
    }
    difference == 0 && !expected.is_empty()
}

async fn connection(conn: Conn, context: Arc<Listener>) -> std::io::Result<()> {
    let mut config = Config::new("localhost");
    config.max_message_size = context.max_message_size;
    config.starttls_available = context.tls.is_some();
    let mut decisions = Submission { context: &context, failed_logins: 0 };
    let (starttls, idle) = (context.tls.as_ref(), context.idle_timeout);
    serve_connection(conn, Session::new(config), starttls, idle, &mut decisions).await
}

/// The submission gateway's decisions for one connection.
struct Submission<'a> {
    context: &'a Listener,
    failed_logins: u32,
}

impl Decisions for Submission<'_> {
    async fn decide(&mut self, session: &mut Session, action: Action, _secure: bool) -> Vec<Action> {
        let worker = &self.context.worker;
        match action {
            Action::Authenticate { user, password, .. } => match (self.context.token)().await {
                None => session.auth_unavailable(),
                Some(token) => {
                    let ok = user.eq_ignore_ascii_case(&worker.address) && same(&token, password.expose());
                    if !ok {
                        self.failed_logins += 1;
                        tokio::time::sleep(Duration::from_secs(u64::from(self.failed_logins.min(5)))).await;
                    }
                    let mut actions = session.auth_result(ok);
                    if self.failed_logins >= 5 {
                        actions.push(Action::Send(b"421 4.7.0 too many failed logins, closing\r\n".to_vec()));
                        actions.push(Action::Close);
                    }
                    actions
                }
            },
            Action::MailFrom { address, .. } => {
                let result = if address.eq_ignore_ascii_case(&worker.address) {
                    Ok(())
                } else {
                    Err(Reply::new(553, [5, 7, 1], format!("this gateway sends as {} only", worker.address)))
                };
                session.mail_from_result(result)
            }
            Action::Rcpt { address } => {
                let result = if worker.policy == EncryptionPolicy::EncryptedOnly {
                    match worker.key_of(&address.to_lowercase()).await {
                        Ok(Some(_)) => Ok(()),
                        Ok(None) => Err(Reply::new(
                            550,
                            [5, 7, 1],
                            format!(
                                "no OpenPGP key is known for {address}, and this account sends encrypted mail only"
                            ),
                        )),
                        Err(status) => {
                            Err(Reply::new(451, [4, 7, 0], format!("the key service: {}", status.message())))
                        }
                    }
                } else {
                    Ok(())
                };
                session.rcpt_result(result)
            }
            Action::Message { from, recipients, data, .. } => {
                let recipients: Vec<String> = recipients.iter().map(|address| address.to_lowercase()).collect();
                let subject = crate::api::subject_of(&data);
                let result = match worker.queue.enqueue(&from, &recipients, data, subject).await {
                    Ok(entry) => {
                        worker.wake.notify_one();
                        Ok(entry.id)
                    }
                    // RFC 3463 X.3.1: mail system full; the client keeps the
                    // message and tries again later.
                    Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                        Err(Reply::new(452, [4, 3, 1], format!("cannot queue the message: {}", status.message())))
                    }
                    Err(status) => {
                        Err(Reply::new(451, [4, 3, 0], format!("cannot queue the message: {}", status.message())))
                    }
                };
                session.message_result(result)
            }
            // The connection's own actions never come here.
            Action::Send(_) | Action::StartTls | Action::Close => Vec::new(),
        }
    }
}

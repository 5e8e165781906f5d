//! `bitmask-smtp`: one per account, started by bitmaskd.
//!
//! SMTP submission on the account's port (127.0.0.1 unless configured
//! otherwise; STARTTLS with the account's local certificate; AUTH with the
//! mail token), the outgoing queue kept in the store, and the worker that
//! encrypts (or signs) and relays; `bitmask.smtp.v1.Smtp` on
//! `<runtime-dir>/<account>/smtp.sock`.

use std::sync::Arc;
use std::time::Duration;

use bitmask_proto::smtp::v1::smtp_server::SmtpServer;
use bitmask_runtime::ServiceKind;
use bitmask_runtime::server::GrpcServer;
use bitmask_smtp_service::api::SmtpApi;
use bitmask_smtp_service::listener::{self, Listener};
use bitmask_smtp_service::queue::Queue;
use bitmask_smtp_service::worker::Worker;
use tonic::server::NamedService as _;

/// The largest message accepted for submission (SIZE).
const MAX_MESSAGE_SIZE: usize = bitmask_mail::MAX_MESSAGE_BYTES;

fn main() -> std::process::ExitCode {
    bitmask_runtime::service::main(ServiceKind::Smtp, |args| async move {
        let mut server = GrpcServer::new(&[SmtpServer::<SmtpApi>::NAME])?;
        let paths = args.common.paths()?;
        let account_paths = args.account_paths()?;
        let account = bitmask_supervisor::config::Config::load_account(&paths.config_file(), &args.account)?;
        let channel = |kind: ServiceKind| {
            // Lazy: the other services may start or restart after us.
            bitmask_runtime::client::traced(bitmask_runtime::client::connect_unix_lazy(account_paths.socket(kind)))
        };
        let store = channel(ServiceKind::Store);
        let worker = Arc::new(Worker {
            address: account.address.to_lowercase(),
            queue: Queue::new(store.clone()),
            keys: channel(ServiceKind::Keys),
            mail: channel(ServiceKind::Imap),
            relay: account.relay.clone(),
            policy: account.encryption_policy,
            wake: tokio::sync::Notify::new(),
        });
        tokio::spawn(worker.clone().run());
        let tls = bitmask_runtime::tls::server_config(&account_paths.data_dir.join("tls"))?;
        let tcp = tokio::net::TcpListener::bind((account.bind_address, account.smtp_port)).await?;
        tracing::info!(address = %tcp.local_addr()?, "SMTP submission listening");
        let token_store = store.clone();
        let context = Arc::new(Listener {
            worker: worker.clone(),
            token: Arc::new(move || {
                let store = token_store.clone();
                Box::pin(async move {
                    let mut client = bitmask_proto::store::v1::store_client::StoreClient::new(store);
                    bitmask_mail::token::mail_token(&mut client)
                        .await
                        .inspect_err(|status| tracing::warn!(error = %status.message(), "cannot read the mail token"))
                        .ok()
                })
            }),
            tls: Some(tokio_rustls::TlsAcceptor::from(tls)),
            max_connections: 50,
            idle_timeout: Duration::from_secs(300),
            max_message_size: MAX_MESSAGE_SIZE,
        });
        tokio::spawn(listener::serve(tcp, context));
        server.routes().add_service(SmtpServer::new(SmtpApi::new(worker)).max_decoding_message_size(80 << 20));
        Ok(server)
    })
}

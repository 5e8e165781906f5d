//! `bitmask-imap`: one per account, started by bitmaskd.
//!
//! Serves IMAP on the account's port (127.0.0.1 unless configured otherwise,
//! STARTTLS with the account's local certificate) and the protocol-agnostic
//! `bitmask.mail.v1.Mail` API on `<runtime-dir>/<account>/imap.sock`, both
//! over one mail model (the only writer of mail documents in the store),
//! which also files the incoming mail the store's sync brings in.

use std::sync::Arc;

use bitmask_imap_service::gateway::{self, Gateway, Limits};
use bitmask_imap_service::incoming::Processor;
use bitmask_imap_service::mail_api::MailApi;
use bitmask_mail::MailModel;
use bitmask_proto::mail::v1::mail_server::MailServer;
use bitmask_runtime::ServiceKind;
use bitmask_runtime::server::GrpcServer;
use tonic::server::NamedService as _;

fn main() -> std::process::ExitCode {
    bitmask_runtime::service::main(ServiceKind::Imap, |args| async move {
        let mut server = GrpcServer::new(&[MailServer::<MailApi>::NAME])?;
        let paths = args.common.paths()?;
        let account_paths = args.account_paths()?;
        let account = bitmask_supervisor::config::Config::load_account(&paths.config_file(), &args.account)?;
        let store_socket = account_paths.socket(ServiceKind::Store);
        // Lazy: the store may start or restart after us.
        let store = bitmask_runtime::client::traced(bitmask_runtime::client::connect_unix_lazy(store_socket));
        let model = MailModel::new(store.clone());
        tokio::spawn(bitmask_imap_service::follow_sync(model.clone()));
        let keys = bitmask_runtime::client::traced(bitmask_runtime::client::connect_unix_lazy(
            account_paths.socket(ServiceKind::Keys),
        ));
        let processor = Processor::new(&account.address, store.clone(), keys, model.clone());
        tokio::spawn(Arc::new(processor).run());
        let tls = bitmask_runtime::tls::server_config(&account_paths.data_dir.join("tls"))?;
        let listener = tokio::net::TcpListener::bind((account.bind_address, account.imap_port)).await?;
        let token_store = store.clone();
        let gateway = Arc::new(Gateway {
            model: model.clone(),
            address: account.address.to_lowercase(),
            token: Arc::new(move || {
                let store = token_store.clone();
                Box::pin(async move {
                    let mut client = bitmask_proto::store::v1::store_client::StoreClient::new(store);
                    bitmask_mail::token::mail_token(&mut client).await.ok()
                })
            }),
            tls: Some(tokio_rustls::TlsAcceptor::from(tls)),
            limits: Limits::default(),
        });
        tracing::info!(address = %listener.local_addr()?, "IMAP listening");
        tokio::spawn(gateway::serve(listener, gateway));
        server
            .routes()
            .add_service(MailServer::new(MailApi::new(model, store.clone())).max_decoding_message_size(80 << 20));
        Ok(server)
    })
}

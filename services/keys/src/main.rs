//! `bitmask-keys`: one per account, started by bitmaskd.
//!
//! Serves `bitmask.keys.v1.Keys` on `<runtime-dir>/<account>/keys.sock`,
//! keeping the keys in the account's store (`store.sock`), finding others'
//! keys (the provider's directory, WKD, keys learnt from mail), publishing
//! the account key and refreshing keys in the background.
//! `BITMASK_KEYS_REFRESH_SECONDS` sets the refresh interval (default a day);
//! `discovery` documents the fetcher's own variables.

use bitmask_keys_service::KeysService;
use bitmask_proto::keys::v1::keys_server::KeysServer;
use bitmask_runtime::ServiceKind;
use bitmask_runtime::server::GrpcServer;
use std::time::Duration;

use tonic::server::NamedService as _;

fn main() -> std::process::ExitCode {
    bitmask_runtime::service::main(ServiceKind::Keys, |args| async move {
        let store_socket = args.account_paths()?.socket(ServiceKind::Store);
        // Lazy: the store may start or restart after us.
        let store = bitmask_runtime::client::traced(bitmask_runtime::client::connect_unix_lazy(store_socket));
        let http = bitmask_keys_service::discovery::Http::from_env()?;
        let refresh_every = match std::env::var("BITMASK_KEYS_REFRESH_SECONDS") {
            Ok(seconds) => {
                Duration::from_secs(seconds.parse().map_err(|_| "BITMASK_KEYS_REFRESH_SECONDS: not a number")?)
            }
            Err(_) => bitmask_keys_service::DEFAULT_REFRESH,
        };
        let service = KeysService::new(args.account.to_lowercase(), store, http, refresh_every);
        tokio::spawn(service.clone().background());
        tokio::spawn(service.clone().follow_synced_keys());
        let mut server = GrpcServer::new(&[KeysServer::<KeysService>::NAME])?;
        let limit = bitmask_keys_service::MAX_MESSAGE_BYTES + 1024 * 1024;
        server
            .routes()
            .add_service(KeysServer::new(service).max_decoding_message_size(limit).max_encoding_message_size(limit));
        Ok(server)
    })
}

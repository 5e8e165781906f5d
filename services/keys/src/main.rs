//! `bitmask-keys`: one per account, started by bitmaskd.
//!
//! Serves `bitmask.keys.v1.Keys` on `<runtime-dir>/<account>/keys.sock`,
//! keeping the keys in the account's store (`store.sock`). Discovery (the
//! provider's directory, WKD, keys learnt from mail) and refresh are still to
//! come: those RPCs answer UNIMPLEMENTED.

use bitmask_keys_service::KeysService;
use bitmask_proto::keys::v1::keys_server::KeysServer;
use bitmask_runtime::ServiceKind;
use bitmask_runtime::server::GrpcServer;
use tonic::server::NamedService as _;

fn main() -> std::process::ExitCode {
    bitmask_runtime::service::main(ServiceKind::Keys, |args| async move {
        let store_socket = args.account_paths()?.socket(ServiceKind::Store);
        // Lazy: the store may start or restart after us.
        let store = bitmask_runtime::client::traced(bitmask_runtime::client::connect_unix_lazy(store_socket));
        let mut server = GrpcServer::new(&[KeysServer::<KeysService>::NAME])?;
        let limit = bitmask_keys_service::MAX_MESSAGE_BYTES + 1024 * 1024;
        server.routes().add_service(
            KeysServer::new(KeysService::new(args.account.to_lowercase(), store))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        );
        Ok(server)
    })
}

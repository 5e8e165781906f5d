//! `bitmask-store`: one per account, started by bitmaskd.
//!
//! Serves `bitmask.store.v1.Store` on `<runtime-dir>/<account>/store.sock`
//! over the sled database in `<home>/accounts/<account>/store/db`. It starts
//! locked (or uninitialized); bitmaskd unlocks it with the passphrase.

use bitmask_proto::store::v1::store_server::StoreServer;
use bitmask_runtime::ServiceKind;
use bitmask_runtime::server::GrpcServer;
use bitmask_store_service::{MAX_MESSAGE_BYTES, StoreService};
use tonic::server::NamedService as _;

fn main() -> std::process::ExitCode {
    bitmask_runtime::service::main(ServiceKind::Store, |args| async move {
        let dir = args.account_paths()?.service_data_dir(ServiceKind::Store).join("db");
        let store = tokio::task::spawn_blocking(move || bitmask_store::Store::open(&dir, &args.account)).await??;
        let mut server = GrpcServer::new(&[StoreServer::<StoreService>::NAME])?;
        server.routes().add_service(
            StoreServer::new(StoreService::new(store))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        );
        Ok(server)
    })
}

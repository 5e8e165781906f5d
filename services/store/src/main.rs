//! `bitmask-store`: one per account, started by bitmaskd.
//!
//! Serves `bitmask.store.v1.Store` on `<runtime-dir>/<account>/store.sock`.
//! The encrypted store itself is the subject of the store issue; until it
//! lands every RPC answers UNIMPLEMENTED (the generated defaults).

use bitmask_proto::store::v1::store_server::{Store, StoreServer};
use bitmask_runtime::ServiceKind;
use bitmask_runtime::server::GrpcServer;
use tonic::server::NamedService as _;

#[derive(Debug)]
struct StoreService;

impl Store for StoreService {}

fn main() -> std::process::ExitCode {
    bitmask_runtime::service::main(ServiceKind::Store, |_args| async {
        let mut server = GrpcServer::new(&[StoreServer::<StoreService>::NAME])?;
        server.routes().add_service(StoreServer::new(StoreService));
        Ok(server)
    })
}

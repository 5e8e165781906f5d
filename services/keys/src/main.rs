//! `bitmask-keys`: one per account, started by bitmaskd.
//!
//! Serves `bitmask.keys.v1.Keys` on `<runtime-dir>/<account>/keys.sock`.
//! OpenPGP is the subject of the key service issue; until it lands every RPC
//! answers UNIMPLEMENTED (the generated defaults).

use bitmask_proto::keys::v1::keys_server::{Keys, KeysServer};
use bitmask_runtime::ServiceKind;
use bitmask_runtime::server::GrpcServer;
use tonic::server::NamedService as _;

#[derive(Debug)]
struct KeysService;

impl Keys for KeysService {}

fn main() -> std::process::ExitCode {
    bitmask_runtime::service::main(ServiceKind::Keys, |_args| async {
        let mut server = GrpcServer::new(&[KeysServer::<KeysService>::NAME])?;
        server.routes().add_service(KeysServer::new(KeysService));
        Ok(server)
    })
}

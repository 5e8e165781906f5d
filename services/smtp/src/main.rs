//! `bitmask-smtp`: one per account, started by bitmaskd.
//!
//! Serves `bitmask.smtp.v1.Smtp` (the outgoing queue) on
//! `<runtime-dir>/<account>/smtp.sock`; the SMTP listener and the outgoing
//! pipeline are the subject of the SMTP issue. Until it lands every RPC
//! answers UNIMPLEMENTED (the generated defaults) and no TCP port is opened.

use bitmask_proto::smtp::v1::smtp_server::{Smtp, SmtpServer};
use bitmask_runtime::ServiceKind;
use bitmask_runtime::server::GrpcServer;
use tonic::server::NamedService as _;

#[derive(Debug)]
struct SmtpService;

impl Smtp for SmtpService {}

fn main() -> std::process::ExitCode {
    bitmask_runtime::service::main(ServiceKind::Smtp, |_args| async {
        let mut server = GrpcServer::new(&[SmtpServer::<SmtpService>::NAME])?;
        server.routes().add_service(SmtpServer::new(SmtpService));
        Ok(server)
    })
}

//! `bitmask-imap`: one per account, started by bitmaskd.
//!
//! Serves the protocol-agnostic `bitmask.mail.v1.Mail` API on
//! `<runtime-dir>/<account>/imap.sock`; the IMAP listener and the mail model
//! are the subject of the IMAP issue. Until it lands every RPC answers
//! UNIMPLEMENTED (the generated defaults) and no TCP port is opened.

use bitmask_proto::mail::v1::mail_server::{Mail, MailServer};
use bitmask_runtime::ServiceKind;
use bitmask_runtime::server::GrpcServer;
use tonic::server::NamedService as _;

#[derive(Debug)]
struct MailService;

impl Mail for MailService {}

fn main() -> std::process::ExitCode {
    bitmask_runtime::service::main(ServiceKind::Imap, |_args| async {
        let mut server = GrpcServer::new(&[MailServer::<MailService>::NAME])?;
        server.routes().add_service(MailServer::new(MailService));
        Ok(server)
    })
}

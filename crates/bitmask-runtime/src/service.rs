//! The `main` every service binary shares, so each stays a few lines long.

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _};

use crate::args::ServiceArgs;
use crate::paths::ServiceKind;
use crate::server::{GrpcServer, ServerError, bind_unix};

/// Exit code for bad arguments or configuration (`EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, clap::Parser)]
#[command(version, about = "A bitmask service; bitmaskd starts one per account")]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
}

/// Parses the service arguments, installs logging and telemetry, lets
/// `build` set up the service, binds `<runtime-dir>/<account>/<kind>.sock`
/// and serves until SIGTERM or SIGINT.
pub fn main<F, Fut>(kind: ServiceKind, build: F) -> ExitCode
where
    F: FnOnce(ServiceArgs) -> Fut,
    Fut: Future<Output = Result<GrpcServer, BoxError>>,
{
    let matches = Cli::command().name(kind.binary()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{}: cannot start the async runtime: {error}", kind.binary());
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let telemetry = crate::telemetry::init(kind.binary(), "info");
        let code = match serve(kind, cli.service, build).await {
            Ok(()) => ExitCode::SUCCESS,
            Err((code, error)) => {
                tracing::error!(%error, "{} failed", kind.binary());
                ExitCode::from(code)
            }
        };
        telemetry.shutdown().await;
        code
    })
}

async fn serve<F, Fut>(kind: ServiceKind, args: ServiceArgs, build: F) -> Result<(), (u8, BoxError)>
where
    F: FnOnce(ServiceArgs) -> Fut,
    Fut: Future<Output = Result<GrpcServer, BoxError>>,
{
    let socket_path = args.account_paths().map_err(|error| (EXIT_USAGE, error.into()))?.socket(kind);
    let shutdown = crate::shutdown::shutdown_signal().map_err(|error| (1, error.into()))?;
    // The socket first: a service that cannot have it fails before doing anything else.
    let socket = bind_unix(&socket_path).map_err(|error| {
        let code = if matches!(error, ServerError::SocketPathTooLong { .. }) { EXIT_USAGE } else { 1 };
        (code, BoxError::from(error))
    })?;
    let server = build(args).await.map_err(|error| (1, error))?;
    server.serve(socket, shutdown).await.map_err(|error| (1, error.into()))
}

//! `bitmaskd`: the core supervisor. See the crate docs of `bitmask_core` and
//! `bitmask_supervisor`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bitmask_runtime::CommonArgs;
use bitmask_runtime::service::EXIT_USAGE;
use bitmask_supervisor::{Config, Supervisor, SupervisorOptions};
use clap::Parser;

/// The bitmask core supervisor: runs each started account's store, keys,
/// IMAP and SMTP services and serves the Core API that bitmaskctl uses.
#[derive(Debug, Parser)]
#[command(name = "bitmaskd", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Where the service binaries are [default: beside bitmaskd]
    #[arg(long, env = "BITMASK_SERVICE_DIR", value_name = "DIR")]
    service_dir: Option<PathBuf>,
    /// Seconds between SIGTERM and SIGKILL when stopping a service
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    stop_timeout: u64,
    /// Seconds `account start` waits for every service to be SERVING
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    start_timeout: u64,
}

const EXIT_UNAVAILABLE: u8 = 69;

// Children must be spawned from a thread that lives as long as bitmaskd (see
// PR_SET_PDEATHSIG in bitmask-supervisor): a current-thread runtime spawns
// them from the main thread.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = bitmask_runtime::telemetry::init("bitmaskd", "info");
    let code = run(cli).await;
    telemetry.shutdown().await;
    code
}

async fn run(cli: Cli) -> ExitCode {
    let fail = |code: u8, error: &dyn std::fmt::Display| {
        tracing::error!(%error, "bitmaskd cannot start");
        eprintln!("bitmaskd: {error}");
        ExitCode::from(code)
    };
    let paths = match cli.common.paths() {
        Ok(paths) => paths,
        Err(error) => return fail(EXIT_USAGE, &error),
    };
    // Checked before any socket is bound.
    let config = match Config::load(&paths.config_file()) {
        Ok(config) => config,
        Err(error) => return fail(EXIT_USAGE, &error),
    };
    let service_dir = match cli
        .service_dir
        .or_else(|| std::env::current_exe().ok().and_then(|exe| exe.parent().map(PathBuf::from)))
    {
        Some(dir) => dir,
        None => return fail(EXIT_USAGE, &"cannot tell where the service binaries are: pass --service-dir"),
    };
    let mut options = SupervisorOptions::new(service_dir);
    options.stop_timeout = Duration::from_secs(cli.stop_timeout);
    options.start_timeout = Duration::from_secs(cli.start_timeout);

    let shutdown = match bitmask_runtime::shutdown::shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(error) => return fail(1, &error),
    };
    let socket = match bitmask_runtime::server::bind_unix(&paths.core_socket()) {
        Ok(socket) => socket,
        Err(error @ bitmask_runtime::server::ServerError::SocketInUse { .. }) => {
            return fail(EXIT_UNAVAILABLE, &format!("{error} (is bitmaskd running already?)"));
        }
        Err(error) => return fail(1, &error),
    };
    tracing::info!(home = %paths.home.display(), runtime_dir = %paths.runtime_dir.display(), accounts = config.accounts.len(), "bitmaskd starting");
    let supervisor = Supervisor::new(paths, config, options);
    match bitmask_core::run(supervisor, socket, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(1, &error),
    }
}

//! `bitmask-provider`: the provider in one binary.
//!
//! - `bitmask-provider init --domain D --dir DIR [...]` makes a provider
//!   directory (CA, TLS certificate, secret, `provider.toml`) and prints a
//!   summary;
//! - `bitmask-provider invite --dir DIR [--valid-days N]` prints a new
//!   single-use sign-up code (for `signup = "invite"`);
//! - `bitmask-provider serve --dir DIR` serves it until SIGTERM or SIGINT,
//!   logging to stderr, and prints `ready` on stdout once every port is
//!   bound.
//!
//! Exit codes: 64 for bad arguments or a bad provider directory, 69 when a
//! port cannot be had, 1 for anything else.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bitmask_provider_service::config::{Layout, Settings, SignupPolicy};
use bitmask_provider_service::init::{InitError, InitOptions, init};
use bitmask_provider_service::{Provider, serve};
use clap::{Parser, Subcommand};

const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "bitmask-provider",
    version,
    about = "A bitmask provider: accounts, sync, key directory, MX and relay"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Makes a new provider directory.
    Init {
        /// The mail domain: accounts are LOCAL@DOMAIN.
        #[arg(long)]
        domain: String,
        /// The provider directory to create.
        #[arg(long)]
        dir: PathBuf,
        /// gRPC, /ca.crt and WKD over HTTPS; 0: a free port, chosen now.
        #[arg(long, default_value_t = 0)]
        https_port: u16,
        /// Incoming mail (SMTP, STARTTLS offered); 0: a free port, chosen now.
        #[arg(long, default_value_t = 0)]
        mx_port: u16,
        /// Submission by users with client certificates (implicit TLS); 0: a free port, chosen now.
        #[arg(long, default_value_t = 0)]
        relay_port: u16,
        /// HOST:PORT of the SMTP server taking users' mail for other domains
        /// (without one, such mail is refused).
        #[arg(long)]
        smarthost: Option<String>,
        /// The address every port listens on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: IpAddr,
        /// The name clients reach the provider by (default: localhost when
        /// binding a loopback address, else the domain).
        #[arg(long)]
        hostname: Option<String>,
        /// How long a login session lasts.
        #[arg(long, default_value_t = 86400)]
        session_lifetime: u64,
        /// Who may sign up: anyone, holders of a code from `bitmask-provider invite`, or no one.
        #[arg(long, value_enum, default_value_t = SignupPolicy::Invite)]
        signup: SignupPolicy,
    },
    /// Prints a new single-use sign-up code (the provider may be serving).
    Invite {
        #[arg(long)]
        dir: PathBuf,
        /// Days the code stays valid.
        #[arg(long, default_value_t = bitmask_provider_service::invites::DEFAULT_VALID_DAYS)]
        valid_days: u64,
    },
    /// Serves a provider directory until SIGTERM or SIGINT.
    Serve {
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Init {
            domain,
            dir,
            https_port,
            mx_port,
            relay_port,
            smarthost,
            bind,
            hostname,
            session_lifetime,
            signup,
        } => {
            let options = InitOptions {
                dir,
                domain,
                hostname,
                bind,
                https_port,
                mx_port,
                relay_port,
                smarthost,
                session_lifetime_seconds: session_lifetime,
                signup,
            };
            run_init(options)
        }
        Command::Invite { dir, valid_days } => run_invite(dir, valid_days),
        Command::Serve { dir } => run_serve(dir),
    }
}

fn run_init(options: InitOptions) -> ExitCode {
    let dir = options.dir.clone();
    match init(options) {
        Ok(made) => {
            let settings = &made.settings;
            let summary = format!(
                "provider {domain} initialized in {dir}\n\
                 https  {bind}:{https}  (gRPC, /ca.crt, WKD)\n\
                 mx     {bind}:{mx}\n\
                 relay  {bind}:{relay}\n\
                 smarthost {smarthost}\n\
                 signup {signup}\n\
                 CA SHA-256 {fingerprint}\n",
                domain = settings.domain,
                dir = dir.display(),
                bind = settings.bind,
                https = settings.https_port,
                mx = settings.mx_port,
                relay = settings.relay_port,
                smarthost = settings.smarthost.as_deref().unwrap_or("none"),
                signup = settings.signup,
                fingerprint = made.ca_fingerprint,
            );
            let _ = std::io::stdout().lock().write_all(summary.as_bytes());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("bitmask-provider init: {error}");
            let usage = matches!(
                error,
                InitError::Invalid(_)
                    | InitError::Config(
                        bitmask_provider_service::config::ConfigError::Exists(_)
                            | bitmask_provider_service::config::ConfigError::Invalid { .. }
                    )
            );
            ExitCode::from(if usage { EXIT_USAGE } else { 1 })
        }
    }
}

fn run_invite(dir: PathBuf, valid_days: u64) -> ExitCode {
    let layout = Layout::new(dir);
    let settings = match Settings::load(&layout) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("bitmask-provider invite: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if settings.signup != SignupPolicy::Invite {
        eprintln!(
            "bitmask-provider invite: note: this provider's signup policy is {}, not invite: the code is kept for when it is",
            settings.signup
        );
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs());
    let expires = now.saturating_add(valid_days.saturating_mul(24 * 3600));
    match bitmask_provider_service::invites::create(&layout.invites(), expires) {
        Ok(code) => {
            let _ = writeln!(std::io::stdout().lock(), "{code}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("bitmask-provider invite: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run_serve(dir: PathBuf) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bitmask-provider: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let telemetry = bitmask_runtime::telemetry::init("bitmask-provider", "info");
        let code = match serve_dir(dir).await {
            Ok(()) => ExitCode::SUCCESS,
            Err((code, message)) => {
                tracing::error!(error = %message, "bitmask-provider failed");
                ExitCode::from(code)
            }
        };
        telemetry.shutdown().await;
        code
    })
}

async fn serve_dir(dir: PathBuf) -> Result<(), (u8, String)> {
    // Installed first: from here on SIGTERM means a clean stop.
    let shutdown = bitmask_runtime::shutdown::shutdown_signal().map_err(|error| (1, error.to_string()))?;
    let provider = Provider::load(Layout::new(dir)).map_err(|error| (error.exit_code(), error.to_string()))?;
    let ready = || {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(b"ready\n").and_then(|()| stdout.flush());
    };
    serve(provider, shutdown, ready).await.map_err(|error| (error.exit_code(), error.to_string()))
}

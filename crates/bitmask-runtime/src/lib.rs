//! What every bitmask service binary shares.
//!
//! - [`paths`]: where data and sockets live (`--home`, `--runtime-dir`) and the
//!   per-account layout under them;
//! - [`server`]: gRPC on a Unix socket (directory 0700, socket 0600, stale
//!   socket replaced, peers of another uid refused) with the standard health
//!   service and server reflection v1 and v1alpha;
//! - [`client`]: the matching Unix-socket connector, health checks, and the
//!   interceptor that carries the trace context in gRPC metadata;
//! - [`provider`]: an account's side of the provider's `Accounts` API (SRP
//!   sign-up and login, the CA fingerprint);
//! - [`conn`] and [`smtp_server`]: a gateway's client connection (plain or
//!   TLS) and the I/O half of an SMTP server session, shared by the
//!   submission gateway and the provider's MX and relay;
//! - [`shutdown`]: SIGTERM / SIGINT as a future;
//! - [`telemetry`]: `tracing` to stderr, and OpenTelemetry traces and metrics
//!   over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set;
//! - [`tls`]: the account's local certificate for the gateways' STARTTLS.

pub mod args;
pub mod client;
pub mod conn;
pub mod paths;
pub mod provider;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod smtp_server;
pub mod telemetry;
pub mod tls;

pub use args::{CommonArgs, ServiceArgs};
pub use paths::{AccountPaths, Paths, ServiceKind};

//! bitmaskd's logic: the account list ([`config`]) and the supervision of each
//! started account's four services ([`supervisor`]).
//!
//! This crate knows nothing of gRPC contracts: the Core API in
//! `services/core` converts its requests into calls on [`Supervisor`].

pub mod config;
mod process;
pub mod status;
pub mod supervisor;

pub use config::{AccountConfig, Config, ConfigError, EncryptionPolicy, RelayConfig, RelayTls};
pub use status::{AccountState, AccountStatus, ServiceState, ServiceStatus};
pub use supervisor::{NewAccount, RestartHook, Supervisor, SupervisorError, SupervisorOptions};

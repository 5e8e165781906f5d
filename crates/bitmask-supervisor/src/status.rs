//! What `status` reports: the state of each account and of each of its services.

use std::path::PathBuf;
use std::time::SystemTime;

use bitmask_runtime::ServiceKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    Stopped,
    /// Spawned; waiting for the health service to say SERVING.
    Starting,
    Serving,
    /// Exited unexpectedly; waiting out the back-off before the next start.
    Backoff,
    /// Failed several times in a row soon after starting; still retried.
    Failing,
    Stopping,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    pub kind: ServiceKind,
    pub state: ServiceState,
    pub pid: Option<u32>,
    /// Starts after the first one, since the account was started.
    pub restarts: u32,
    pub socket: PathBuf,
    /// How the previous process ended, e.g. "killed by signal 9 (SIGKILL)".
    pub last_exit: Option<String>,
    pub last_exit_time: Option<SystemTime>,
    pub next_start_time: Option<SystemTime>,
    /// The last lines of the service's log after a failure.
    pub message: Option<String>,
    /// When `state` last changed.
    pub since: SystemTime,
    /// The TCP port of the gateway (imap, smtp).
    pub port: Option<u16>,
}

impl ServiceStatus {
    pub fn new(kind: ServiceKind, socket: PathBuf, port: Option<u16>) -> Self {
        Self {
            kind,
            state: ServiceState::Stopped,
            pid: None,
            restarts: 0,
            socket,
            last_exit: None,
            last_exit_time: None,
            next_start_time: None,
            message: None,
            since: SystemTime::now(),
            port,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountState {
    Stopped,
    Starting,
    /// Every service SERVING.
    Running,
    /// Started, but a service is restarting or failing.
    Degraded,
    Stopping,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountStatus {
    pub address: String,
    pub state: AccountState,
    pub services: Vec<ServiceStatus>,
    pub imap_port: u16,
    pub smtp_port: u16,
}

impl AccountState {
    /// The account's state as its services' states make it.
    pub fn of(services: &[ServiceStatus], stopping: bool) -> Self {
        let any = |state| services.iter().any(|service| service.state == state);
        if stopping || any(ServiceState::Stopping) {
            Self::Stopping
        } else if services.is_empty() || services.iter().all(|service| service.state == ServiceState::Stopped) {
            Self::Stopped
        } else if services.iter().all(|service| service.state == ServiceState::Serving) {
            Self::Running
        } else if any(ServiceState::Backoff) || any(ServiceState::Failing) {
            Self::Degraded
        } else {
            Self::Starting
        }
    }
}

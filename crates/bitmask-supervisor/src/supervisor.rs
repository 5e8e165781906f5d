//! Starting, watching, restarting and stopping each account's services.
//!
//! Every service of a started account has a monitor task: it spawns the
//! process, waits until the process's health service says SERVING, keeps
//! checking it, and when the process exits unexpectedly (or stops answering)
//! starts it again after a back-off that doubles with each failure in a row,
//! up to a maximum. A process that ran long enough resets the back-off.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bitmask_runtime::paths::{AccountPaths, PathError};
use bitmask_runtime::{Paths, ServiceKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::config::{
    AccountConfig, Config, ConfigError, DEFAULT_IMAP_PORT, DEFAULT_SMTP_PORT, EncryptionPolicy, RelayConfig,
};
use crate::process;
use crate::status::{AccountState, AccountStatus, ServiceState, ServiceStatus};

/// Consecutive failures after which a service is reported FAILING.
const FAILING_AFTER: u32 = 3;
/// Consecutive failed health checks after which a live process is restarted.
const UNHEALTHY_AFTER: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("no account {0}")]
    UnknownAccount(String),
    #[error("account {0} exists already")]
    DuplicateAccount(String),
    #[error(transparent)]
    InvalidAddress(#[from] PathError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("port {port} on {bind_address} is already used by account {account}")]
    PortTaken { port: u16, bind_address: IpAddr, account: String },
    #[error("{service} port {port} on {bind_address} is already in use by another program")]
    PortInUse { service: &'static str, port: u16, bind_address: IpAddr },
    #[error("account {0} is running: stop it first")]
    AccountRunning(String),
    #[error("{service} of {account} did not become SERVING within {seconds}s{}", detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    StartFailed { account: String, service: ServiceKind, seconds: u64, detail: Option<String> },
    #[error("cannot prepare {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Timing of the supervision; the defaults suit production and tests alike.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    /// Where the service binaries are (by default, beside bitmaskd).
    pub service_dir: PathBuf,
    /// How long `start` waits for all services to be SERVING.
    pub start_timeout: Duration,
    /// Between SIGTERM and SIGKILL on stop.
    pub stop_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A process that served this long resets the back-off.
    pub stable_after: Duration,
    /// Between health checks of a serving process.
    pub health_interval: Duration,
}

impl SupervisorOptions {
    pub fn new(service_dir: PathBuf) -> Self {
        Self {
            service_dir,
            start_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            stable_after: Duration::from_secs(10),
            health_interval: Duration::from_secs(5),
        }
    }

    fn backoff(&self, consecutive_failures: u32) -> Duration {
        let doublings = consecutive_failures.saturating_sub(1).min(16);
        self.backoff_initial.saturating_mul(1 << doublings).min(self.backoff_max)
    }
}

/// What `account add` asks for; unset ports get free defaults.
#[derive(Debug, Clone, Default)]
pub struct NewAccount {
    pub address: String,
    pub imap_port: Option<u16>,
    pub smtp_port: Option<u16>,
    pub bind_address: Option<IpAddr>,
    pub provider_url: Option<String>,
    pub relay: Option<RelayConfig>,
    pub encryption_policy: EncryptionPolicy,
}

/// Told when a service of a running account is SERVING again after a
/// restart, e.g. to unlock a restarted store.
pub trait RestartHook: Send + Sync + std::fmt::Debug + 'static {
    fn restarted(&self, address: &str, kind: ServiceKind) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The supervisor of every account; cheap to clone.
#[derive(Debug, Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    paths: Paths,
    options: SupervisorOptions,
    /// Held for the whole of every add, remove, start and stop, so these
    /// never interleave; status reads need only the short locks below.
    lifecycle: tokio::sync::Mutex<()>,
    config: Mutex<Config>,
    running: Mutex<HashMap<String, RunningAccount>>,
    /// Bumped on every state change of any service.
    changes: watch::Sender<u64>,
    restart_hook: std::sync::OnceLock<Arc<dyn RestartHook>>,
}

#[derive(Debug)]
struct RunningAccount {
    config: AccountConfig,
    monitors: Vec<Monitor>,
    stopping: bool,
}

#[derive(Debug)]
struct Monitor {
    status: Arc<Mutex<ServiceStatus>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Supervisor {
    pub fn new(paths: Paths, config: Config, options: SupervisorOptions) -> Self {
        let (changes, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                paths,
                options,
                lifecycle: tokio::sync::Mutex::new(()),
                config: Mutex::new(config),
                running: Mutex::new(HashMap::new()),
                changes,
                restart_hook: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Sets the hook told of restarted services (once; later calls are ignored).
    pub fn set_restart_hook(&self, hook: Arc<dyn RestartHook>) {
        let _ = self.inner.restart_hook.set(hook);
    }

    pub fn paths(&self) -> &Paths {
        &self.inner.paths
    }

    /// Wakes whenever a service of any account changes state.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    pub fn accounts(&self) -> Vec<AccountConfig> {
        lock(&self.inner.config).accounts.clone()
    }

    fn account_config(&self, address: &str) -> Result<AccountConfig, SupervisorError> {
        lock(&self.inner.config)
            .account(address)
            .cloned()
            .ok_or_else(|| SupervisorError::UnknownAccount(address.into()))
    }

    /// Applies `change` to a copy of the configuration, checks and saves it,
    /// and only then makes it the current one.
    fn change_config(&self, change: impl FnOnce(&mut Config)) -> Result<(), SupervisorError> {
        let mut changed = lock(&self.inner.config).clone();
        change(&mut changed);
        changed.validate().map_err(SupervisorError::InvalidArgument)?;
        changed.save(&self.inner.paths.config_file())?;
        *lock(&self.inner.config) = changed;
        Ok(())
    }

    /// Adds an account to the configuration (written before this returns).
    pub async fn add_account(&self, request: NewAccount) -> Result<AccountConfig, SupervisorError> {
        bitmask_runtime::paths::validate_address(&request.address)?;
        self.inner.paths.account(&request.address)?;
        let _lifecycle = self.inner.lifecycle.lock().await;
        let config = lock(&self.inner.config).clone();
        if config.account(&request.address).is_some() {
            return Err(SupervisorError::DuplicateAccount(request.address));
        }
        let bind_address = request.bind_address.unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let imap_port = choose_port(&config, bind_address, request.imap_port, DEFAULT_IMAP_PORT, "imap", None)?;
        let smtp_port =
            choose_port(&config, bind_address, request.smtp_port, DEFAULT_SMTP_PORT, "smtp", Some(imap_port))?;
        if imap_port == smtp_port {
            return Err(SupervisorError::InvalidArgument("the IMAP and SMTP ports must differ".into()));
        }
        if let Some(url) = &request.provider_url
            && !url.starts_with("https://")
        {
            return Err(SupervisorError::InvalidArgument(format!("provider {url:?} must be an https:// URL")));
        }
        if let Some(relay) = &request.relay
            && relay.address.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(SupervisorError::InvalidArgument(format!("relay {:?} must be HOST:PORT", relay.address)));
        }
        let account = AccountConfig {
            address: request.address,
            imap_port,
            smtp_port,
            bind_address,
            provider_url: request.provider_url,
            relay: request.relay,
            encryption_policy: request.encryption_policy,
        };
        self.change_config(|config| config.accounts.push(account.clone()))?;
        tracing::info!(account = %account.address, imap_port, smtp_port, "account added");
        Ok(account)
    }

    /// Removes a stopped account; its data stays unless `purge_data`.
    pub async fn remove_account(&self, address: &str, purge_data: bool) -> Result<(), SupervisorError> {
        let _lifecycle = self.inner.lifecycle.lock().await;
        self.account_config(address)?;
        if lock(&self.inner.running).contains_key(address) {
            return Err(SupervisorError::AccountRunning(address.to_owned()));
        }
        self.change_config(|config| config.accounts.retain(|account| account.address != address))?;
        if purge_data {
            let data_dir = self.inner.paths.account(address)?.data_dir;
            if let Err(source) = std::fs::remove_dir_all(&data_dir)
                && source.kind() != std::io::ErrorKind::NotFound
            {
                return Err(SupervisorError::Io { path: data_dir, source });
            }
        }
        tracing::info!(account = %address, purge_data, "account removed");
        Ok(())
    }

    /// Starts the account's services in order (store, keys, then the
    /// gateways) and returns once all are SERVING. A service that does not
    /// come up in time is reported in the error and kept being retried.
    /// Starting a started account changes nothing.
    pub async fn start_account(&self, address: &str) -> Result<AccountStatus, SupervisorError> {
        let _lifecycle = self.inner.lifecycle.lock().await;
        let account = self.account_config(address)?;
        if lock(&self.inner.running).contains_key(address) {
            return self.account_status(&account);
        }
        for (service, port) in [("imap", account.imap_port), ("smtp", account.smtp_port)] {
            if TcpListener::bind((account.bind_address, port)).is_err() {
                return Err(SupervisorError::PortInUse { service, port, bind_address: account.bind_address });
            }
        }
        let account_paths = self.inner.paths.account(address)?;
        bitmask_runtime::server::prepare_private_dir(&account_paths.socket_dir).map_err(|error| {
            SupervisorError::Io { path: account_paths.socket_dir.clone(), source: std::io::Error::other(error) }
        })?;
        create_private_dir(&account_paths.data_dir)?;

        lock(&self.inner.running).insert(
            address.to_owned(),
            RunningAccount { config: account.clone(), monitors: Vec::new(), stopping: false },
        );
        tracing::info!(account = %address, "starting account");
        let deadline = Instant::now() + self.inner.options.start_timeout;
        let mut waiting = Vec::new();
        for kind in ServiceKind::ALL {
            let port = match kind {
                ServiceKind::Imap => Some(account.imap_port),
                ServiceKind::Smtp => Some(account.smtp_port),
                ServiceKind::Store | ServiceKind::Keys => None,
            };
            let status = Arc::new(Mutex::new(ServiceStatus::new(kind, account_paths.socket(kind), port)));
            let (stop, stop_requested) = watch::channel(false);
            let task = tokio::spawn(supervise(
                Arc::clone(&self.inner),
                address.to_owned(),
                account_paths.clone(),
                Arc::clone(&status),
                stop_requested,
            ));
            if let Some(running) = lock(&self.inner.running).get_mut(address) {
                running.monitors.push(Monitor { status: Arc::clone(&status), stop, task });
            }
            waiting.push((kind, status));
            // The gateways need the store and the keys; they may start together.
            if matches!(kind, ServiceKind::Store | ServiceKind::Keys) {
                self.wait_serving(address, &waiting, deadline).await?;
            }
        }
        self.wait_serving(address, &waiting, deadline).await?;
        tracing::info!(account = %address, "account running");
        self.account_status(&account)
    }

    async fn wait_serving(
        &self,
        address: &str,
        services: &[(ServiceKind, Arc<Mutex<ServiceStatus>>)],
        deadline: Instant,
    ) -> Result<(), SupervisorError> {
        let mut changes = self.subscribe();
        loop {
            let not_serving = services.iter().find(|(_, status)| lock(status).state != ServiceState::Serving);
            let Some((kind, status)) = not_serving else { return Ok(()) };
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                let status = lock(status);
                let detail = match (&status.last_exit, &status.message) {
                    (Some(exit), Some(message)) => Some(format!("{exit}; {message}")),
                    (exit, message) => exit.clone().or_else(|| message.clone()),
                };
                return Err(SupervisorError::StartFailed {
                    account: address.to_owned(),
                    service: *kind,
                    seconds: self.inner.options.start_timeout.as_secs(),
                    detail,
                });
            }
        }
    }

    /// Stops the account's services in reverse order: SIGTERM, then SIGKILL
    /// after the stop timeout. Their sockets are gone when this returns.
    pub async fn stop_account(&self, address: &str) -> Result<AccountStatus, SupervisorError> {
        let _lifecycle = self.inner.lifecycle.lock().await;
        let account = self.account_config(address)?;
        self.stop_running(address).await;
        self.account_status(&account)
    }

    async fn stop_running(&self, address: &str) {
        let monitors = {
            let mut running = lock(&self.inner.running);
            let Some(account) = running.get_mut(address) else { return };
            account.stopping = true;
            std::mem::take(&mut account.monitors)
        };
        self.inner.changes.send_modify(|version| *version += 1);
        tracing::info!(account = %address, "stopping account");
        for monitor in monitors.into_iter().rev() {
            let _ = monitor.stop.send(true);
            if let Err(error) = monitor.task.await {
                tracing::error!(account = %address, %error, "service monitor failed");
            }
        }
        lock(&self.inner.running).remove(address);
        if let Ok(paths) = self.inner.paths.account(address) {
            // Only if empty: a socket of a process we did not start stays.
            let _ = std::fs::remove_dir(&paths.socket_dir);
        }
        self.inner.changes.send_modify(|version| *version += 1);
        tracing::info!(account = %address, "account stopped");
    }

    /// Stops every running account (bitmaskd's shutdown).
    pub async fn stop_all(&self) {
        let _lifecycle = self.inner.lifecycle.lock().await;
        let addresses: Vec<String> = lock(&self.inner.running).keys().cloned().collect();
        for address in addresses {
            self.stop_running(&address).await;
        }
    }

    /// The status of one account, or of all.
    pub fn status(&self, address: Option<&str>) -> Result<Vec<AccountStatus>, SupervisorError> {
        match address {
            Some(address) => Ok(vec![self.account_status(&self.account_config(address)?)?]),
            None => self.accounts().iter().map(|account| self.account_status(account)).collect(),
        }
    }

    fn account_status(&self, account: &AccountConfig) -> Result<AccountStatus, SupervisorError> {
        let running = lock(&self.inner.running);
        let (services, stopping) = match running.get(&account.address) {
            Some(running) => {
                (running.monitors.iter().map(|monitor| lock(&monitor.status).clone()).collect(), running.stopping)
            }
            None => {
                let paths = self.inner.paths.account(&account.address)?;
                let stopped = ServiceKind::ALL.map(|kind| {
                    let port = match kind {
                        ServiceKind::Imap => Some(account.imap_port),
                        ServiceKind::Smtp => Some(account.smtp_port),
                        _ => None,
                    };
                    ServiceStatus::new(kind, paths.socket(kind), port)
                });
                (stopped.to_vec(), false)
            }
        };
        let config = running.get(&account.address).map(|running| &running.config).unwrap_or(account);
        Ok(AccountStatus {
            address: account.address.clone(),
            state: AccountState::of(&services, stopping),
            services,
            imap_port: config.imap_port,
            smtp_port: config.smtp_port,
        })
    }
}

fn create_private_dir(path: &Path) -> Result<(), SupervisorError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| SupervisorError::Io { path: path.to_owned(), source })
}

/// The requested port if it is free, otherwise the first free one from `default`.
fn choose_port(
    config: &Config,
    bind_address: IpAddr,
    requested: Option<u16>,
    default: u16,
    service: &'static str,
    also_taken: Option<u16>,
) -> Result<u16, SupervisorError> {
    if let Some(port) = requested {
        if port == 0 {
            return Err(SupervisorError::InvalidArgument(format!("the {service} port must not be 0")));
        }
        if let Some(account) = config.port_user(bind_address, port) {
            return Err(SupervisorError::PortTaken { port, bind_address, account: account.address.clone() });
        }
        if TcpListener::bind((bind_address, port)).is_err() {
            return Err(SupervisorError::PortInUse { service, port, bind_address });
        }
        return Ok(port);
    }
    (default..=u16::MAX)
        .find(|&port| {
            Some(port) != also_taken
                && config.port_user(bind_address, port).is_none()
                && TcpListener::bind((bind_address, port)).is_ok()
        })
        .ok_or_else(|| SupervisorError::InvalidArgument(format!("no free {service} port from {default} on")))
}

/// The life of one service of one account, until a stop is requested.
async fn supervise(
    inner: Arc<Inner>,
    address: String,
    paths: AccountPaths,
    status: Arc<Mutex<ServiceStatus>>,
    mut stop_requested: watch::Receiver<bool>,
) {
    let kind = lock(&status).kind;
    let options = &inner.options;
    let update = |change: &dyn Fn(&mut ServiceStatus)| {
        {
            let mut status = lock(&status);
            let before = status.state;
            change(&mut status);
            if status.state != before {
                status.since = SystemTime::now();
            }
        }
        inner.changes.send_modify(|version| *version += 1);
    };
    let program = options.service_dir.join(kind.binary());
    let socket = paths.socket(kind);
    let log = paths.log_file(kind);
    let home = inner.paths.home.as_os_str();
    let runtime_dir = inner.paths.runtime_dir.as_os_str();
    let args: [&OsStr; 6] =
        ["--home".as_ref(), home, "--runtime-dir".as_ref(), runtime_dir, "--account".as_ref(), address.as_ref()];
    let mut consecutive_failures = 0u32;
    let mut first = true;

    while !*stop_requested.borrow() {
        update(&|status| {
            status.state = ServiceState::Starting;
            status.next_start_time = None;
            if !first {
                status.restarts += 1;
            }
        });
        if !first {
            restarts_counter().add(1, &[opentelemetry::KeyValue::new("service", kind.name())]);
        }
        first = false;
        let started = Instant::now();
        let mut served_since = None;
        let failure = match process::spawn(&program, &args, &log) {
            Err(error) => format!("cannot start {}: {error}", program.display()),
            Ok(mut child) => {
                let pid = child.id();
                update(&|status| status.pid = pid);
                tracing::info!(account = %address, service = %kind, pid, "service started");
                let restarted = lock(&status).restarts > 0;
                let outcome = run_child(&mut child, &socket, options, &mut stop_requested, &mut served_since, || {
                    tracing::info!(account = %address, service = %kind, pid, "service serving");
                    let hook =
                        inner.restart_hook.get().filter(|_| restarted).map(|hook| hook.restarted(&address, kind));
                    let update = &update;
                    async move {
                        if let Some(hook) = hook {
                            hook.await;
                        }
                        update(&|status| status.state = ServiceState::Serving);
                    }
                })
                .await;
                match outcome {
                    ChildOutcome::StopRequested => {
                        update(&|status| status.state = ServiceState::Stopping);
                        let exit = match process::terminate(&mut child, options.stop_timeout).await {
                            Ok(exit) => process::describe_exit(exit),
                            Err(error) => error.to_string(),
                        };
                        tracing::info!(account = %address, service = %kind, pid, exit, "service stopped");
                        break;
                    }
                    ChildOutcome::Failed(reason) => reason,
                }
            }
        };

        // The process is gone (or never ran): back off, then start it again.
        if served_since.is_some_and(|since: Instant| since.elapsed() >= options.stable_after) {
            consecutive_failures = 0;
        }
        consecutive_failures += 1;
        let delay = options.backoff(consecutive_failures);
        let message = process::log_tail(&log, 3);
        let failing = consecutive_failures >= FAILING_AFTER;
        tracing::warn!(
            account = %address, service = %kind, reason = %failure, ran_ms = started.elapsed().as_millis() as u64,
            retry_in_ms = delay.as_millis() as u64, failing, "service exited unexpectedly"
        );
        update(&|status| {
            status.state = if failing { ServiceState::Failing } else { ServiceState::Backoff };
            status.pid = None;
            status.last_exit = Some(failure.clone());
            status.last_exit_time = Some(SystemTime::now());
            status.next_start_time = Some(SystemTime::now() + delay);
            status.message = message.clone();
        });
        let _ = std::fs::remove_file(&socket);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop_signalled(&mut stop_requested) => break,
        }
    }
    let _ = std::fs::remove_file(&socket);
    update(&|status| {
        status.state = ServiceState::Stopped;
        status.pid = None;
        status.next_start_time = None;
    });
}

enum ChildOutcome {
    StopRequested,
    /// Why the process is gone; it has been reaped.
    Failed(String),
}

/// Waits for the child to report SERVING, then watches it until it exits,
/// stops answering health checks, or a stop is requested.
async fn run_child(
    child: &mut tokio::process::Child,
    socket: &Path,
    options: &SupervisorOptions,
    stop_requested: &mut watch::Receiver<bool>,
    served_since: &mut Option<Instant>,
    on_serving: impl AsyncFnOnce(),
) -> ChildOutcome {
    let exited = |status: std::io::Result<std::process::ExitStatus>| match status {
        Ok(status) => ChildOutcome::Failed(process::describe_exit(status)),
        Err(error) => ChildOutcome::Failed(format!("lost the process: {error}")),
    };
    // Starting: poll the health service until SERVING, quickly at first (a
    // service is usually up within milliseconds), then less often.
    let start_deadline = Instant::now() + options.start_timeout;
    let mut poll_interval = Duration::from_millis(1);
    loop {
        tokio::select! {
            status = child.wait() => return exited(status),
            _ = stop_signalled(stop_requested) => return ChildOutcome::StopRequested,
            serving = is_serving(socket) => {
                if serving { break }
                if Instant::now() >= start_deadline {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return ChildOutcome::Failed(format!(
                        "did not report SERVING within {}s", options.start_timeout.as_secs()
                    ));
                }
                tokio::time::sleep(poll_interval).await;
                poll_interval = (poll_interval * 2).min(Duration::from_millis(50));
            }
        }
    }
    *served_since = Some(Instant::now());
    on_serving().await;
    // Serving: watch it.
    let mut failed_checks = 0;
    loop {
        tokio::select! {
            status = child.wait() => return exited(status),
            _ = stop_signalled(stop_requested) => return ChildOutcome::StopRequested,
            _ = tokio::time::sleep(options.health_interval) => {
                if is_serving(socket).await {
                    failed_checks = 0;
                    continue;
                }
                failed_checks += 1;
                if failed_checks >= UNHEALTHY_AFTER {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return ChildOutcome::Failed(format!("killed after {failed_checks} failed health checks"));
                }
            }
        }
    }
}

/// Completes once a stop is requested (or the requester is gone).
async fn stop_signalled(stop_requested: &mut watch::Receiver<bool>) {
    let _ = stop_requested.wait_for(|stop| *stop).await;
}

async fn is_serving(socket: &Path) -> bool {
    let check = async {
        let channel = bitmask_runtime::client::connect_unix(socket).await.ok()?;
        bitmask_runtime::client::check_health(channel, "").await.ok()
    };
    matches!(tokio::time::timeout(Duration::from_secs(2), check).await, Ok(Some(ServingStatus::Serving)))
}

fn restarts_counter() -> &'static opentelemetry::metrics::Counter<u64> {
    static COUNTER: std::sync::OnceLock<opentelemetry::metrics::Counter<u64>> = std::sync::OnceLock::new();
    COUNTER.get_or_init(|| {
        opentelemetry::global::meter("bitmask")
            .u64_counter("bitmask.supervisor.restarts")
            .with_description("service processes restarted after an unexpected exit")
            .build()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let options = SupervisorOptions::new(PathBuf::new());
        let delays: Vec<u64> = (1..=10).map(|n| options.backoff(n).as_millis() as u64).collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]);
        assert_eq!(options.backoff(u32::MAX), Duration::from_secs(30));
    }

    #[tokio::test]
    async fn add_and_remove_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::resolve(Some(dir.path().join("home")), Some(dir.path().join("run"))).unwrap();
        let supervisor = Supervisor::new(paths.clone(), Config::default(), SupervisorOptions::new(PathBuf::new()));
        let alice = supervisor
            .add_account(NewAccount { address: "alice@example.org".into(), ..NewAccount::default() })
            .await
            .unwrap();
        let bob = supervisor
            .add_account(NewAccount { address: "bob@example.org".into(), ..NewAccount::default() })
            .await
            .unwrap();
        assert_ne!(alice.imap_port, bob.imap_port);
        assert_ne!(alice.smtp_port, bob.smtp_port);
        assert!(matches!(
            supervisor.add_account(NewAccount { address: "alice@example.org".into(), ..NewAccount::default() }).await,
            Err(SupervisorError::DuplicateAccount(_))
        ));
        assert!(matches!(
            supervisor
                .add_account(NewAccount {
                    address: "carol@example.org".into(),
                    imap_port: Some(alice.imap_port),
                    ..NewAccount::default()
                })
                .await,
            Err(SupervisorError::PortTaken { .. })
        ));
        assert!(matches!(
            supervisor.add_account(NewAccount { address: "carol".into(), ..NewAccount::default() }).await,
            Err(SupervisorError::InvalidAddress(_))
        ));
        assert_eq!(Config::load(&paths.config_file()).unwrap().accounts, vec![alice.clone(), bob]);
        supervisor.remove_account("bob@example.org", false).await.unwrap();
        assert_eq!(Config::load(&paths.config_file()).unwrap().accounts, vec![alice]);
        assert!(matches!(
            supervisor.remove_account("bob@example.org", false).await,
            Err(SupervisorError::UnknownAccount(_))
        ));
        let status = supervisor.status(None).unwrap();
        assert_eq!(status.len(), 1);
        assert_eq!(status[0].state, AccountState::Stopped);
    }

    #[tokio::test]
    async fn refuses_a_port_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::resolve(Some(dir.path().join("home")), Some(dir.path().join("run"))).unwrap();
        let supervisor = Supervisor::new(paths, Config::default(), SupervisorOptions::new(PathBuf::new()));
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = busy.local_addr().unwrap().port();
        let error = supervisor
            .add_account(NewAccount { address: "a@b".into(), imap_port: Some(port), ..NewAccount::default() })
            .await
            .unwrap_err();
        assert!(matches!(error, SupervisorError::PortInUse { service: "imap", .. }), "{error}");
        assert!(error.to_string().contains(&port.to_string()));
    }
}

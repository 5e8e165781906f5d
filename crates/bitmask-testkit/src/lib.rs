//! Helpers for the workspace's process-level tests.
//!
//! Every test builds its own [`World`]: fresh home and runtime directories
//! (short, so socket paths fit), its own bitmaskd, free ports. Processes a
//! test starts are killed when their handle drops, even if the test panics.

#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

pub mod gpg;
pub mod https;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The directory holding the workspace's built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    // Integration tests run from target/debug/deps/<test>-<hash>.
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let dir = if deps.ends_with("deps") { deps.parent().unwrap() } else { deps };
    dir.to_owned()
}

/// A built binary of the workspace; panics with advice if it is missing.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(path.exists(), "{} is missing: build the workspace first (cargo build --workspace)", path.display());
    path
}

/// The workspace root (where `.venv` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// grpcurl from `GRPCURL` or the venv that scripts/setup makes.
pub fn grpcurl_path() -> PathBuf {
    let path =
        std::env::var_os("GRPCURL").map(PathBuf::from).unwrap_or_else(|| workspace_root().join(".venv/bin/grpcurl"));
    assert!(path.exists(), "{} is missing: run scripts/setup", path.display());
    path
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `condition` until it holds; panics after `timeout` naming `what`.
/// Returns how long it took.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if condition() {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Opens a sled database this process has just closed (dropped): sled's
/// background flusher lets go of the file lock a moment after the drop, so
/// an "already locked" error is waited out (up to 10 s); any other fails.
pub fn reopen<T, E: std::fmt::Display>(mut open: impl FnMut() -> Result<T, E>) -> T {
    let mut opened = None;
    wait_until(Duration::from_secs(10), "the database's file lock is released", || match open() {
        Ok(value) => {
            opened = Some(value);
            true
        }
        Err(error) if error.to_string().contains("could not acquire lock") => false,
        Err(error) => panic!("opening failed: {error}"),
    });
    opened.unwrap()
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: "123 (name) S ...".
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()) != Some('Z'),
        Err(_) => false,
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private installation: its own home and runtime directories.
#[derive(Debug)]
pub struct World {
    dir: tempfile::TempDir,
    pub home: PathBuf,
    pub runtime_dir: PathBuf,
    /// Extra environment for every process this world starts.
    pub env: Vec<(String, String)>,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    pub fn new() -> Self {
        // Under /tmp with a short name: socket paths must stay under 108 bytes.
        let dir = tempfile::Builder::new().prefix("bm").tempdir_in("/tmp").unwrap();
        let home = dir.path().join("home");
        let runtime_dir = dir.path().join("run");
        Self { dir, home, runtime_dir, env: Vec::new() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn with_dirs(&self, command: &mut Command) {
        command
            .arg("--home")
            .arg(&self.home)
            .arg("--runtime-dir")
            .arg(&self.runtime_dir)
            .env_remove("BITMASK_HOME")
            .env_remove("BITMASK_RUNTIME_DIR")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .envs(self.env.iter().map(|(key, value)| (key, value)));
    }

    /// What a service of an account has logged so far (empty if nothing).
    pub fn log(&self, address: &str, service: &str) -> String {
        let path = self.home.join("accounts").join(address).join("logs").join(format!("{service}.log"));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    pub fn core_socket(&self) -> PathBuf {
        self.runtime_dir.join("core.sock")
    }

    pub fn socket(&self, address: &str, service: &str) -> PathBuf {
        self.runtime_dir.join(address).join(format!("{service}.sock"))
    }

    /// `bitmaskd` with extra arguments, not waited for.
    pub fn spawn_bitmaskd(&self, extra: &[&str]) -> KillOnDrop {
        let mut command = Command::new(bin("bitmaskd"));
        self.with_dirs(&mut command);
        command.args(extra).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        KillOnDrop(command.spawn().unwrap())
    }

    /// `bitmaskd`, once its Core API answers.
    pub fn bitmaskd(&self, extra: &[&str]) -> KillOnDrop {
        let mut daemon = self.spawn_bitmaskd(extra);
        wait_until(Duration::from_secs(10), "bitmaskd answers", || {
            if let Ok(Some(status)) = daemon.0.try_wait() {
                panic!("bitmaskd exited at start with {status}");
            }
            self.ctl(&["status"]).status.success()
        });
        daemon
    }

    /// One service binary for `account`, outside bitmaskd; wait for its socket
    /// with [`World::wait_for_socket`].
    pub fn spawn_service(&self, binary: &str, account: &str) -> KillOnDrop {
        let mut command = Command::new(bin(binary));
        self.with_dirs(&mut command);
        // Its log goes to a file of the world, not into the test's output.
        let log = std::fs::File::create(self.path().join(format!("{binary}.log"))).unwrap();
        command.args(["--account", account]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        KillOnDrop(command.spawn().unwrap())
    }

    /// Waits until a socket accepts connections (the service is serving).
    pub fn wait_for_socket(&self, socket: &Path, process: &mut KillOnDrop) {
        wait_until(Duration::from_secs(10), "the service accepts connections", || {
            if let Ok(Some(status)) = process.0.try_wait() {
                panic!("the service exited at start with {status}");
            }
            std::os::unix::net::UnixStream::connect(socket).is_ok()
        });
    }

    /// Runs `bitmaskctl ARGS` in this world.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut command = Command::new(bin("bitmaskctl"));
        self.with_dirs(&mut command);
        command.args(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs `bitmaskctl ARGS` with `input` on its standard input.
    pub fn ctl_with_input(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write as _;
        let mut command = Command::new(bin("bitmaskctl"));
        self.with_dirs(&mut command);
        let mut child =
            command.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs `bitmaskctl --json ARGS`, which must succeed, and parses its output.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let output = self.ctl(&[&["--json"], args].concat());
        assert!(output.status.success(), "bitmaskctl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// The status of one account's service from `bitmaskctl --json status`.
    pub fn service_status(&self, address: &str, service: &str) -> serde_json::Value {
        let status = self.ctl_json(&["status", address]);
        status[0]["services"].as_array().unwrap().iter().find(|s| s["service"] == service).unwrap().clone()
    }
}

/// `grpcurl -plaintext -unix -authority localhost SOCKET ARGS...`
pub fn grpcurl(socket: &Path, args: &[&str]) -> Output {
    Command::new(grpcurl_path())
        .args(["-plaintext", "-unix", "-authority", "localhost", "-max-time", "10"])
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The text of an output's stdout and stderr, for assertions and messages.
pub fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// What every service binary must do on its own command line: print its
/// name and version, refuse an invalid account with exit code 64, and exit
/// at once with a clear message when its socket directory cannot be made.
pub fn check_service_cli(binary: &str) {
    let version = Command::new(bin(binary)).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert!(text(&version).starts_with(&format!("{binary} ")), "{}", text(&version));

    let world = World::new();
    let mut command = Command::new(bin(binary));
    world.with_dirs(&mut command);
    let output = command.args(["--account", "not-an-address"]).output().unwrap();
    assert_eq!(output.status.code(), Some(64), "{}", text(&output));
    assert!(text(&output).contains("must have the form local@domain"), "{}", text(&output));

    // The runtime dir is a file: the socket directory cannot be created.
    std::fs::write(world.path().join("file"), "").unwrap();
    let mut command = Command::new(bin(binary));
    command.arg("--home").arg(&world.home).arg("--runtime-dir").arg(world.path().join("file"));
    let output = command.args(["--account", "alice@example.org"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("cannot prepare socket directory"), "{}", text(&output));
}

/// A provider on loopback as the provider binary serves it: the sync
/// endpoint and the key directory on one TLS server, with its own CA, a
/// certificate for `localhost`, one session table, and a session token for
/// [`TestProvider::USER`].
#[derive(Debug)]
pub struct TestProvider {
    pub url: String,
    pub ca_pem: String,
    /// A session token of [`TestProvider::USER`].
    pub token: String,
    pub sessions: std::sync::Arc<bitmask_sync_endpoint::Sessions>,
    /// The key directory's storage (see [`TestProvider::publish`]).
    pub keys: std::sync::Arc<bitmask_keydir::SledKeyStorage>,
    _keys_dir: tempfile::TempDir,
}

impl TestProvider {
    /// The user (an account's full address) whose session `token` is.
    pub const USER: &str = "alice@example.org";

    /// Serves `storage` on a free port; call inside a Tokio runtime.
    pub async fn start(storage: std::sync::Arc<dyn bitmask_sync_endpoint::SyncStorage>) -> Self {
        use bitmask_proto::provider::v1::key_directory_server::KeyDirectoryServer;
        use bitmask_proto::sync::v1::sync_endpoint_server::SyncEndpointServer;
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate =
            rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().signed_by(&key, &issuer).unwrap();
        let sessions = std::sync::Arc::new(bitmask_sync_endpoint::Sessions::default());
        let token = sessions.issue(Self::USER, Duration::from_secs(3600));
        let keys_dir = tempfile::tempdir().unwrap();
        let keys = std::sync::Arc::new(bitmask_keydir::SledKeyStorage::open(keys_dir.path()).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tls = bitmask_sync_endpoint::server_tls(certificate.pem().as_bytes(), key.serialize_pem().as_bytes());
        let sync = bitmask_sync_endpoint::SyncService::new(storage, sessions.clone());
        let directory = bitmask_keydir::KeyDirectoryService::new(keys.clone(), sessions.clone());
        let server = tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(SyncEndpointServer::new(sync))
            .add_service(KeyDirectoryServer::new(directory));
        tokio::spawn(server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)));
        Self { url: format!("https://localhost:{port}"), ca_pem: ca.pem(), token, sessions, keys, _keys_dir: keys_dir }
    }

    /// The request that points a store at this provider as [`TestProvider::USER`].
    pub fn configure_request(&self) -> bitmask_proto::store::v1::ConfigureSyncRequest {
        bitmask_proto::store::v1::ConfigureSyncRequest {
            url: self.url.clone(),
            ca_certificate_pem: self.ca_pem.clone(),
            user: Self::USER.into(),
            session_token: self.token.clone(),
            interval_seconds: 3600,
            login_secret: Vec::new(),
        }
    }

    /// Publishes `armored` (a public key with a user id for `address`) in
    /// the key directory as `address`'s own key, as if its account had, by
    /// the directory's rules; returns the fingerprint.
    pub fn publish(&self, address: &str, armored: &str) -> String {
        bitmask_keydir::publish(self.keys.as_ref(), address, armored.as_bytes()).unwrap().fingerprint
    }
}

/// Every byte of every file under `dir`, for "no plaintext on disk" checks.
pub fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            bytes.extend(all_bytes(&path));
        } else {
            bytes.extend(std::fs::read(&path).unwrap());
        }
    }
    bytes
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// A real `bitmask-provider` on loopback: initialized in its own temp dir
/// (the ports chosen by `init` and read back from `provider.toml`), served
/// until dropped, or killed and served again.
#[derive(Debug)]
pub struct ProviderProcess {
    _temp: tempfile::TempDir,
    /// The provider directory.
    pub dir: PathBuf,
    log: PathBuf,
    pub settings: toml::Table,
    pub process: Option<KillOnDrop>,
}

impl ProviderProcess {
    /// `bitmask-provider init --domain DOMAIN` in a fresh directory, with
    /// `extra` arguments (and `--signup open` unless they name a policy:
    /// tests sign accounts up freely); not served.
    pub fn init(domain: &str, extra: &[&str]) -> Self {
        let temp = tempfile::Builder::new().prefix("bmp").tempdir_in("/tmp").unwrap();
        let dir = temp.path().join("provider");
        let init = Command::new(bin("bitmask-provider"))
            .args(["init", "--domain", domain, "--dir"])
            .arg(&dir)
            .args(extra)
            .args(if extra.contains(&"--signup") { &[][..] } else { &["--signup", "open"][..] })
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(init.status.success(), "bitmask-provider init: {}", text(&init));
        let settings = std::fs::read_to_string(dir.join("provider.toml")).unwrap().parse().unwrap();
        Self { log: temp.path().join("provider.log"), _temp: temp, dir, settings, process: None }
    }

    /// [`ProviderProcess::init`], then [`ProviderProcess::serve`].
    pub fn start(domain: &str, extra: &[&str]) -> Self {
        let mut provider = Self::init(domain, extra);
        provider.serve();
        provider
    }

    /// `bitmask-provider serve`, once it printed `ready` (its log goes to
    /// [`ProviderProcess::log`]).
    pub fn serve(&mut self) {
        use std::io::BufRead as _;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut child = Command::new(bin("bitmask-provider"))
            .args(["serve", "--dir"])
            .arg(&self.dir)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let process = KillOnDrop(child);
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            let _ = sender.send(lines.next().and_then(Result::ok).unwrap_or_default());
            // Later output is drained so the provider never blocks on a full pipe.
            lines.for_each(drop);
        });
        let line = receiver.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        assert_eq!(line, "ready", "the provider did not get ready; its log:\n{}", self.log());
        self.process = Some(process);
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// What `serve` has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A port from `provider.toml`: `https_port`, `mx_port` or `relay_port`.
    pub fn port(&self, name: &str) -> u16 {
        self.settings[name].as_integer().and_then(|port| u16::try_from(port).ok()).unwrap()
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port("https_port"))
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

/// The reference for sync benchmarks: `bytes` copied up to `provider` and
/// down again as plain blobs over one TLS connection to its endpoint (four
/// blobs, 1 MiB messages). Gives the time up and the time down.
pub async fn plain_tls_copy(provider: &TestProvider, bytes: usize) -> (Duration, Duration) {
    use bitmask_proto::sync::v1 as sync_pb;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&provider.ca_pem)).domain_name("localhost");
    let channel = Channel::from_shared(provider.url.clone()).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    let mut client =
        sync_pb::sync_endpoint_client::SyncEndpointClient::new(channel).max_decoding_message_size(64 << 20);
    fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    }
    let parts = 4;
    let part = bytes.div_ceil(parts);
    let data = vec![7u8; part];
    let started = Instant::now();
    for index in 0..parts {
        let mut messages: Vec<sync_pb::PutBlobRequest> = data
            .chunks(1 << 20)
            .map(|chunk| sync_pb::PutBlobRequest { data: chunk.to_vec(), ..Default::default() })
            .collect();
        messages[0].id = format!("reference-{index}").into_bytes();
        messages[0].size = part as u64;
        client.put_blob(authorized(tokio_stream::iter(messages), &provider.token)).await.unwrap();
    }
    let up = started.elapsed();
    let started = Instant::now();
    for index in 0..parts {
        let request = sync_pb::GetBlobRequest { id: format!("reference-{index}").into_bytes(), offset: 0 };
        let mut stream = client.get_blob(authorized(request, &provider.token)).await.unwrap().into_inner();
        let mut received = 0;
        while let Some(chunk) = stream.message().await.unwrap() {
            received += chunk.data.len();
        }
        assert_eq!(received, part);
    }
    (up, started.elapsed())
}

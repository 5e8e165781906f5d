//! `bitmask-provider init`: a new provider directory (see [`crate::config`]
//! for its layout) with a new CA, a TLS certificate signed by it, the
//! provider secret and `provider.toml`. Ports given as 0 are chosen now
//! (free ones on the bind address) and written down, so `serve` always
//! binds the same ones.

use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::PathBuf;

use crate::ca::Ca;
use crate::config::{ConfigError, Layout, ProviderSecret, Settings, host_port, write_new};

/// What `init` is asked for.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub dir: PathBuf,
    pub domain: String,
    /// Default: `localhost` when `bind` is a loopback address, else the domain.
    pub hostname: Option<String>,
    pub bind: IpAddr,
    pub https_port: u16,
    pub mx_port: u16,
    pub relay_port: u16,
    pub smarthost: Option<String>,
    pub session_lifetime_seconds: u64,
    pub signup: crate::config::SignupPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    #[error("cannot find a free port on {bind}: {source}")]
    Port { bind: IpAddr, source: std::io::Error },
}

/// What was made, for the summary.
#[derive(Debug, Clone)]
pub struct Initialized {
    pub settings: Settings,
    pub ca_fingerprint: String,
}

/// Free ports on `bind` for each 0 in `ports`, all different.
fn choose_ports(bind: IpAddr, ports: [u16; 3]) -> Result<[u16; 3], InitError> {
    // The probes stay bound until all are chosen, so the three differ.
    let mut probes = Vec::new();
    let mut chosen = ports;
    for port in chosen.iter_mut().filter(|port| **port == 0) {
        let probe = std::net::TcpListener::bind((bind, 0)).map_err(|source| InitError::Port { bind, source })?;
        *port = probe.local_addr().map_err(|source| InitError::Port { bind, source })?.port();
        probes.push(probe);
    }
    Ok(chosen)
}

pub fn init(options: InitOptions) -> Result<Initialized, InitError> {
    let domain = options.domain.to_ascii_lowercase();
    let hostname = options
        .hostname
        .clone()
        .unwrap_or_else(|| if options.bind.is_loopback() { "localhost".to_owned() } else { domain.clone() });
    if let Some(smarthost) = &options.smarthost
        && host_port(smarthost).is_none()
    {
        return Err(InitError::Invalid(format!("--smarthost {smarthost:?} is not HOST:PORT")));
    }
    let layout = Layout::new(&options.dir);
    // Validated before anything is made; the real ports are chosen below.
    let mut settings = Settings {
        domain,
        hostname,
        bind: options.bind,
        https_port: 1,
        mx_port: 2,
        relay_port: 3,
        smarthost: options.smarthost.clone(),
        session_lifetime_seconds: options.session_lifetime_seconds,
        signup: options.signup,
        limits: crate::config::Limits::default(),
    };
    settings.validate(&layout.config())?;
    let given = [options.https_port, options.mx_port, options.relay_port];
    let [https_port, mx_port, relay_port] = choose_ports(options.bind, given)?;
    (settings.https_port, settings.mx_port, settings.relay_port) = (https_port, mx_port, relay_port);
    settings.validate(&layout.config())?;

    for path in [layout.config(), layout.ca_key(), layout.ca_certificate()] {
        if path.exists() {
            return Err(ConfigError::Exists(layout.dir.clone()).into());
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&layout.dir)
        .map_err(|source| ConfigError::Io { path: layout.dir.clone(), source })?;
    // An existing directory is made private too.
    std::fs::set_permissions(&layout.dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|source| ConfigError::Io { path: layout.dir.clone(), source })?;

    let (ca, ca_key) = Ca::generate(&settings.domain)?;
    // The CA key first, created exclusively: a second init stops here.
    write_new(&layout.ca_key(), ca_key.as_bytes(), true)?;
    write_new(&layout.ca_certificate(), ca.certificate_pem().as_bytes(), false)?;
    let mut names = vec!["localhost".to_owned(), settings.domain.clone(), "127.0.0.1".to_owned()];
    let mut extra = vec![settings.hostname.clone()];
    if !settings.bind.is_unspecified() {
        extra.push(settings.bind.to_string());
    }
    for name in extra {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let (certificate, key) = ca.server_certificate(&names)?;
    write_new(&layout.tls_key(), key.as_bytes(), true)?;
    write_new(&layout.tls_certificate(), certificate.as_bytes(), false)?;
    write_new(&layout.secret(), ProviderSecret::generate().to_hex().as_bytes(), true)?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(layout.invites())
        .map_err(|source| ConfigError::Io { path: layout.invites(), source })?;
    // Last: its presence marks a complete provider.
    write_new(&layout.config(), settings.to_toml()?.as_bytes(), false)?;
    Ok(Initialized { settings, ca_fingerprint: ca.fingerprint() })
}

//! gRPC on a Unix socket, the way every bitmask service serves.
//!
//! [`bind_unix`] prepares the socket: its directory is created 0700 (and must
//! be ours), a stale socket left by a dead process is replaced, a live one is
//! left alone, and the new socket is 0600. [`GrpcServer`] adds the standard
//! health service and server reflection (v1 and v1alpha, advertising exactly
//! the services served) and serves until the shutdown future completes,
//! refusing connections from any other uid.

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::Stream;
use opentelemetry::propagation::Extractor;
use tokio::net::{UnixListener, UnixStream};
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::paths::{MAX_SOCKET_PATH, fits_socket_address};

const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("socket path {path} is {len} bytes long, at most {MAX_SOCKET_PATH} fit: choose a shorter --runtime-dir")]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error("cannot prepare socket directory {path}: {source}")]
    SocketDirectory { path: PathBuf, source: io::Error },
    #[error("socket directory {path} belongs to uid {owner}, not to us (uid {ours})")]
    SocketDirectoryNotOurs { path: PathBuf, owner: u32, ours: u32 },
    #[error("another process is already serving on {path}")]
    SocketInUse { path: PathBuf },
    #[error("{path} exists and is not a socket; not replacing it")]
    NotASocket { path: PathBuf },
    #[error("cannot bind {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A bound socket, removed again when the server that owns it stops.
#[derive(Debug)]
pub struct BoundSocket {
    listener: UnixListener,
    path: PathBuf,
    inode: u64,
}

impl BoundSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates the socket's directory (0700) and binds `path` (0600), replacing a
/// stale socket. Must run inside a Tokio runtime.
pub fn bind_unix(path: &Path) -> Result<BoundSocket, ServerError> {
    let len = path.as_os_str().len();
    if !fits_socket_address(path) {
        return Err(ServerError::SocketPathTooLong { path: path.to_owned(), len });
    }
    if let Some(dir) = path.parent() {
        prepare_private_dir(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServerError::SocketInUse { path: path.to_owned() });
            }
            tracing::info!(socket = %path.display(), "replacing a stale socket");
            std::fs::remove_file(path).map_err(|source| ServerError::Bind { path: path.to_owned(), source })?;
        }
        Ok(_) => return Err(ServerError::NotASocket { path: path.to_owned() }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(ServerError::Bind { path: path.to_owned(), source }),
    }
    let bind_error = |source| ServerError::Bind { path: path.to_owned(), source };
    let std_listener = std::os::unix::net::UnixListener::bind(path).map_err(bind_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
    std_listener.set_nonblocking(true).map_err(bind_error)?;
    let inode = std::fs::metadata(path).map_err(bind_error)?.ino();
    let listener = UnixListener::from_std(std_listener).map_err(bind_error)?;
    Ok(BoundSocket { listener, path: path.to_owned(), inode })
}

/// Creates `dir` (and its parents) and makes it 0700; it must be ours.
pub fn prepare_private_dir(dir: &Path) -> Result<(), ServerError> {
    let dir_error = |source| ServerError::SocketDirectory { path: dir.to_owned(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(dir_error)?;
    let meta = std::fs::metadata(dir).map_err(dir_error)?;
    let ours = nix::unistd::geteuid().as_raw();
    if meta.uid() != ours {
        return Err(ServerError::SocketDirectoryNotOurs { path: dir.to_owned(), owner: meta.uid(), ours });
    }
    if meta.permissions().mode() & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_error)?;
    }
    Ok(())
}

/// A gRPC server with health and reflection, for one or more services.
#[derive(Debug)]
pub struct GrpcServer {
    routes: RoutesBuilder,
    health: HealthReporter,
    services: Vec<&'static str>,
}

impl GrpcServer {
    /// `services` are the fully qualified names of the services the caller
    /// will add with [`GrpcServer::routes`]; reflection advertises them, and
    /// health reports each SERVING once the server runs.
    pub fn new(services: &[&'static str]) -> Result<Self, ServerError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection_v1 = reflection_builder(services).build_v1()?;
        let reflection_v1alpha = reflection_builder(services).build_v1alpha()?;

        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service).add_service(reflection_v1).add_service(reflection_v1alpha);
        Ok(Self { routes, health, services: services.to_vec() })
    }

    /// Where the caller adds its own services.
    pub fn routes(&mut self) -> &mut RoutesBuilder {
        &mut self.routes
    }

    /// To report a service NOT_SERVING (and back) while running.
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Serves until `shutdown` completes, then reports NOT_SERVING, finishes
    /// the requests under way and removes the socket.
    pub async fn serve(
        self,
        socket: BoundSocket,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        let Self { routes, health, services } = self;
        for name in services.iter().copied().chain([""]) {
            health.set_service_status(name, ServingStatus::Serving).await;
        }
        let BoundSocket { listener, path, inode } = socket;
        tracing::info!(socket = %path.display(), services = ?services, "serving");
        let graceful = {
            let health = health.clone();
            async move {
                shutdown.await;
                for name in services.iter().copied().chain([""]) {
                    health.set_service_status(name, ServingStatus::NotServing).await;
                }
            }
        };
        let result = tonic::transport::Server::builder()
            .trace_fn(request_span)
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(same_uid_connections(listener), graceful)
            .await;
        remove_socket_if_ours(&path, inode);
        result.map_err(ServerError::from)
    }
}

/// Reflection that advertises exactly `services` plus health and reflection.
fn reflection_builder(services: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(bitmask_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
    for name in services.iter().copied().chain([HEALTH_SERVICE, REFLECTION_V1, REFLECTION_V1ALPHA]) {
        builder = builder.with_service_name(name);
    }
    builder
}

fn remove_socket_if_ours(path: &Path, inode: u64) {
    if std::fs::metadata(path).is_ok_and(|meta| meta.ino() == inode) {
        let _ = std::fs::remove_file(path);
    }
}

/// Accepted connections whose peer runs under our uid; others are closed at once.
fn same_uid_connections(listener: UnixListener) -> impl Stream<Item = io::Result<UnixStream>> {
    let ours = nix::unistd::geteuid().as_raw();
    futures::stream::unfold(listener, move |listener| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => match stream.peer_cred() {
                    Ok(credentials) if credentials.uid() == ours => return Some((Ok(stream), listener)),
                    Ok(credentials) => {
                        tracing::warn!(peer_uid = credentials.uid(), "refused a connection from another user");
                    }
                    Err(error) => tracing::warn!(%error, "refused a connection whose peer is unknown"),
                },
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}

/// The span of one request, a child of the trace context the caller sent.
fn request_span(request: &http::Request<()>) -> tracing::Span {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    let span = tracing::info_span!("grpc", rpc = %request.uri().path(), otel.kind = "server");
    let _ = span.set_parent(parent);
    rpc_counter().add(1, &[opentelemetry::KeyValue::new("rpc", request.uri().path().to_owned())]);
    span
}

fn rpc_counter() -> &'static opentelemetry::metrics::Counter<u64> {
    static COUNTER: std::sync::OnceLock<opentelemetry::metrics::Counter<u64>> = std::sync::OnceLock::new();
    COUNTER.get_or_init(|| {
        opentelemetry::global::meter("bitmask")
            .u64_counter("bitmask.rpc.server.requests")
            .with_description("gRPC requests received")
            .build()
    })
}

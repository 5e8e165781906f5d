//! The client side of [`crate::server`]: a channel over a Unix socket, the
//! interceptor that carries the trace context, and health checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use opentelemetry::propagation::Injector;
use tokio::net::UnixStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

fn endpoint() -> Endpoint {
    // The URI is required but unused: the connector below ignores it. The
    // authority "localhost" is what grpcurl sends too.
    Endpoint::from_static("http://localhost").connect_timeout(Duration::from_secs(5))
}

fn connector(
    path: PathBuf,
) -> impl tower::Service<
    http::Uri,
    Response = TokioIo<UnixStream>,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<TokioIo<UnixStream>>> + Send,
> + Clone
+ Send {
    tower::service_fn(move |_: http::Uri| {
        let path = path.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
    })
}

/// Connects to the gRPC server on a Unix socket now.
pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Channel, tonic::transport::Error> {
    endpoint().connect_with_connector(connector(path.as_ref().to_owned())).await
}

/// A channel that connects on first use and reconnects after the server
/// restarts (the supervisor restarts crashed services).
pub fn connect_unix_lazy(path: impl AsRef<Path>) -> Channel {
    endpoint().connect_with_connector_lazy(connector(path.as_ref().to_owned()))
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Puts the current span's trace context into the request's metadata
/// (W3C `traceparent`), so the server's span joins the caller's trace.
pub fn inject_trace_context(mut request: Request<()>) -> Result<Request<()>, Status> {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(request.metadata_mut()));
    });
    Ok(request)
}

/// The interceptor as a plain function pointer, to name the channel type.
pub type TraceInterceptor = fn(Request<()>) -> Result<Request<()>, Status>;

/// A channel that carries the trace context: pass it to any generated client's
/// `with_interceptor`, or use it through [`traced`].
pub type TracedChannel = InterceptedService<Channel, TraceInterceptor>;

/// Wraps a channel so every request carries the trace context.
pub fn traced(channel: Channel) -> TracedChannel {
    InterceptedService::new(channel, inject_trace_context as TraceInterceptor)
}

/// Asks the standard health service about `service` ("" for the server).
pub async fn check_health(channel: Channel, service: &str) -> Result<ServingStatus, Status> {
    let mut client = HealthClient::new(traced(channel));
    let reply = client.check(HealthCheckRequest { service: service.to_owned() }).await?;
    Ok(reply.into_inner().status())
}

/// Adds `authorization: Bearer <token>` to every request (the provider's session).
pub type Authorize = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send + Sync>;
pub type ProviderChannel = InterceptedService<Channel, Authorize>;

/// Connects to the provider at `url` (https://HOST:PORT), trusting only its
/// pinned CA, and presents `session_token` on every call.
pub async fn connect_provider(url: &str, ca_pem: &str, session_token: &str) -> Result<ProviderChannel, Status> {
    use tonic::transport::{Certificate, ClientTlsConfig};
    let uri: tonic::transport::Uri =
        url.parse().map_err(|_| Status::invalid_argument(format!("{url:?} is not a URL")))?;
    if uri.scheme_str() != Some("https") {
        return Err(Status::invalid_argument("the provider must be an https:// URL"));
    }
    let host = uri.host().unwrap_or_default().to_owned();
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name(host);
    let channel = Channel::builder(uri)
        .tls_config(tls)
        .map_err(|error| Status::invalid_argument(format!("TLS configuration: {error}")))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|error| Status::unavailable(format!("cannot reach the provider at {url}: {error}")))?;
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {session_token}")
        .parse()
        .map_err(|_| Status::invalid_argument("the session token is not valid metadata"))?;
    let authorize: Authorize = Box::new(move |mut request: Request<()>| {
        request.metadata_mut().insert("authorization", bearer.clone());
        Ok(request)
    });
    Ok(InterceptedService::new(channel, authorize))
}

/// `data` as a lazy sequence of request messages of at most `chunk` bytes
/// each, for a client-streaming call: a chunk is copied when the call takes
/// it, never the whole of `data` at once (a big message is held once).
pub fn chunks_of<T>(data: Vec<u8>, chunk: usize, make: impl Fn(Vec<u8>) -> T) -> impl Iterator<Item = T> {
    let chunk = chunk.max(1);
    (0..data.len().div_ceil(chunk)).map(move |index| {
        let start = index * chunk;
        make(data.get(start..(start + chunk).min(data.len())).unwrap_or_default().to_vec())
    })
}

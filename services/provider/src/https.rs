//! The HTTPS port: gRPC (`Accounts`, `KeyDirectory`, `SyncEndpoint`, health
//! and reflection) and plain HTTP routes on one tonic server, over the
//! provider's TLS with ALPN `h2` and `http/1.1` (our own acceptor: tonic's
//! offers `h2` only, which HTTP/1.1 clients cannot negotiate).
//!
//! HTTP routes (GET and HEAD, over HTTP/1.1 or HTTP/2):
//!
//! - `/ca.crt`: the CA certificate (PEM), for clients to fetch once and pin;
//! - Web Key Directory (draft-koch-openpgp-webkey-service), the direct
//!   method `/.well-known/openpgpkey/hu/{hash}` and the advanced one
//!   `/.well-known/openpgpkey/{domain}/hu/{hash}`: the published key,
//!   binary; `404` when none is; the `policy` files of both (empty).
//!
//! Any other path is `404` for HTTP clients and `UNIMPLEMENTED` for gRPC.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bitmask_keydir::SledKeyStorage;
use http::{StatusCode, header};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// A z-base-32 SHA-1 is 32 characters.
const WKD_HASH_LENGTH: usize = 32;

/// What the HTTP routes serve.
#[derive(Debug, Clone)]
pub struct HttpState {
    pub domain: String,
    pub ca_pem: Arc<str>,
    pub keys: Arc<SledKeyStorage>,
}

/// The gRPC `routes` with the HTTP routes added.
pub fn with_http_routes(routes: Routes, state: HttpState) -> Routes {
    let http = axum::Router::new()
        .route("/ca.crt", get(ca_certificate))
        .route("/.well-known/openpgpkey/policy", get(policy))
        .route("/.well-known/openpgpkey/hu/{hash}", get(wkd_direct))
        .route("/.well-known/openpgpkey/{domain}/policy", get(wkd_advanced_policy))
        .route("/.well-known/openpgpkey/{domain}/hu/{hash}", get(wkd_advanced))
        .with_state(state);
    Routes::from(routes.into_axum_router().merge(http).fallback(not_found))
}

async fn ca_certificate(State(state): State<HttpState>) -> Response {
    ([(header::CONTENT_TYPE, "application/x-pem-file")], state.ca_pem.to_string()).into_response()
}

async fn policy() -> Response {
    ([(header::CONTENT_TYPE, "text/plain")], "").into_response()
}

async fn wkd_advanced_policy(State(state): State<HttpState>, Path(domain): Path<String>) -> Response {
    if !domain.eq_ignore_ascii_case(&state.domain) {
        return StatusCode::NOT_FOUND.into_response();
    }
    policy().await
}

async fn wkd_direct(State(state): State<HttpState>, Path(hash): Path<String>) -> Response {
    let domain = state.domain.clone();
    wkd(state, domain, hash).await
}

async fn wkd_advanced(State(state): State<HttpState>, Path((domain, hash)): Path<(String, String)>) -> Response {
    if !domain.eq_ignore_ascii_case(&state.domain) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let domain = state.domain.clone();
    wkd(state, domain, hash).await
}

async fn wkd(state: HttpState, domain: String, hash: String) -> Response {
    if hash.len() != WKD_HASH_LENGTH || !hash.bytes().all(|byte| byte.is_ascii_alphanumeric()) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let keys = state.keys.clone();
    let lookup = hash.clone();
    let key = tokio::task::spawn_blocking(move || bitmask_keydir::wkd_key(keys.as_ref(), &domain, &lookup)).await;
    match key {
        Ok(Ok(Some(key))) => {
            tracing::debug!(%hash, "WKD key served");
            ([(header::CONTENT_TYPE, "application/octet-stream")], key).into_response()
        }
        Ok(Ok(None)) => StatusCode::NOT_FOUND.into_response(),
        Ok(Err(error)) => {
            tracing::error!(%hash, %error, "WKD lookup failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Err(error) => {
            tracing::error!(%hash, %error, "WKD lookup task failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// `404` for HTTP; gRPC's `UNIMPLEMENTED` for a gRPC request (what tonic's
/// own fallback answers).
async fn not_found(request: axum::extract::Request) -> Response {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"));
    if grpc {
        let (parts, ()) = tonic::Status::unimplemented("").into_http::<()>().into_parts();
        Response::from_parts(parts, axum::body::Body::empty())
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

/// The HTTPS port's connections, TLS established.
pub type Incoming = ReceiverStream<std::io::Result<TlsStream<tokio::net::TcpStream>>>;

/// TLS connections accepted on `listener`, each handshake on its own task
/// (a slow client holds up no one); ends when the stream is dropped.
pub fn tls_incoming(listener: TcpListener, acceptor: TlsAcceptor) -> Incoming {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting an HTTPS connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, sender) = (acceptor.clone(), sender.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "HTTPS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "HTTPS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}

//! The trace context travels in gRPC metadata: the server's span of a request
//! is a child of the client's span, in the same trace. (Its own test binary:
//! it installs a global subscriber.)

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use bitmask_runtime::client::{check_health, connect_unix};
use bitmask_runtime::server::{GrpcServer, bind_unix};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

#[tokio::test]
async fn the_server_span_joins_the_callers_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/keys.sock");
    let socket = bind_unix(&path).unwrap();
    let server = GrpcServer::new(&[]).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(socket, async {
        let _ = stopped.await;
    }));

    let channel = connect_unix(&path).await.unwrap();
    check_health(channel, "").instrument(tracing::info_span!("caller")).await.unwrap();
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let caller = spans.iter().find(|span| span.name == "caller").expect("the caller's span");
    let request = spans.iter().find(|span| span.name == "grpc").expect("the server's span of the request");
    assert_eq!(request.span_context.trace_id(), caller.span_context.trace_id());
    assert_eq!(request.parent_span_id, caller.span_context.span_id());
    let rpc = request.attributes.iter().find(|kv| kv.key.as_str() == "rpc").expect("the rpc attribute");
    assert_eq!(rpc.value.as_str(), "/grpc.health.v1.Health/Check");
}

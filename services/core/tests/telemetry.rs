//! OpenTelemetry over OTLP, across real processes: with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set, bitmaskctl, bitmaskd and the services
//! export spans and metrics, and one command is one trace across processes.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::sync::{Arc, Mutex};

use bitmask_testkit::{World, free_port, text};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;

/// A minimal OTLP collector that keeps what it receives.
#[derive(Debug, Clone, Default)]
struct Collector {
    /// (service.name, span)
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    /// (service.name, metric name)
    metrics: Arc<Mutex<Vec<(String, String)>>>,
}

fn string_value(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| match &kv.value {
        Some(AnyValue { value: Some(any_value::Value::StringValue(value)) }) => Some(value.clone()),
        _ => None,
    })
}

fn service_name(resource: &Option<Resource>) -> String {
    resource.as_ref().and_then(|resource| string_value(&resource.attributes, "service.name")).unwrap_or_default()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = service_name(&resource_spans.resource);
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans.into_iter().map(|span| (service.clone(), span)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut metrics = self.metrics.lock().unwrap();
        for resource_metrics in request.into_inner().resource_metrics {
            let service = service_name(&resource_metrics.resource);
            for scope in resource_metrics.scope_metrics {
                metrics.extend(scope.metrics.into_iter().map(|metric| (service.clone(), metric.name)));
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

#[test]
fn one_command_is_one_trace_across_processes() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let collector = Collector::default();
    let port = free_port();
    let listener = runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port))).unwrap();
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .add_service(MetricsServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let mut world = World::new();
    world.env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), format!("http://127.0.0.1:{port}")));
    let mut daemon = world.bitmaskd(&[]);
    let imap = free_port().to_string();
    let smtp = free_port().to_string();
    world.ctl_json(&["account", "add", "alice@example.org", "--imap-port", &imap, "--smtp-port", &smtp]);
    let started = world.ctl(&["account", "start", "--locked", "alice@example.org"]);
    assert!(started.status.success(), "{}", text(&started));
    // A graceful stop flushes what bitmaskd and the services have not exported yet.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.pid() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(daemon.0.wait().unwrap().success());

    let spans = collector.spans.lock().unwrap().clone();
    let find = |service: &str, name: &str, attribute: (&str, &str)| {
        spans
            .iter()
            .find(|(from, span)| {
                from == service
                    && span.name == name
                    && string_value(&span.attributes, attribute.0).as_deref() == Some(attribute.1)
            })
            .map(|(_, span)| span.clone())
            .unwrap_or_else(|| {
                let seen: Vec<_> = spans.iter().map(|(from, span)| format!("{from}:{}", span.name)).collect();
                panic!("no {name} span of {service} with {attribute:?}; seen: {seen:?}")
            })
    };
    let command = find("bitmaskctl", "bitmaskctl", ("command", "account start"));
    let request = find("bitmaskd", "grpc", ("rpc", "/bitmask.core.v1.Core/StartAccount"));
    assert_eq!(request.trace_id, command.trace_id, "bitmaskd's span is in bitmaskctl's trace");
    assert_eq!(request.parent_span_id, command.span_id, "bitmaskd's span is a child of bitmaskctl's");
    // The services export too: the supervisor's health checks reach them.
    for service in ["bitmask-store", "bitmask-keys", "bitmask-imap", "bitmask-smtp"] {
        find(service, "grpc", ("rpc", "/grpc.health.v1.Health/Check"));
    }
    let metrics = collector.metrics.lock().unwrap().clone();
    assert!(
        metrics.iter().any(|(from, name)| from == "bitmaskd" && name == "bitmask.rpc.server.requests"),
        "{metrics:?}"
    );
}

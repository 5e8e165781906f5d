//! Logs and OpenTelemetry.
//!
//! Logs go to stderr through `tracing` (filter with `RUST_LOG`, default
//! `info`). When `OTEL_EXPORTER_OTLP_ENDPOINT` (or the per-signal variables)
//! is set, spans and metrics are also exported over OTLP/gRPC; otherwise no
//! exporter exists at all. The W3C trace-context propagator is always
//! installed, so a trace that arrives in gRPC metadata goes on through us.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Flushes and shuts the exporters down when dropped: keep it alive in `main`.
#[derive(Debug, Default)]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// Whether spans and metrics are exported.
    pub fn exporting(&self) -> bool {
        self.tracer_provider.is_some()
    }

    /// Exports what is pending and stops the exporters. Call it at the end of
    /// `main`, inside the runtime: the export itself needs the runtime to make
    /// progress, so the blocking shutdown runs on a blocking thread.
    pub async fn shutdown(self) {
        if self.exporting() {
            let _ = tokio::task::spawn_blocking(move || drop(self)).await;
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer_provider.take() {
            let _ = provider.shutdown();
        }
        if let Some(provider) = self.meter_provider.take() {
            let _ = provider.shutdown();
        }
    }
}

fn otlp_configured() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()))
}

/// Installs the global subscriber for a binary. Call once, inside the Tokio
/// runtime (the OTLP exporter needs it), and [`Telemetry::shutdown`] at the
/// end. `service_name` becomes the OpenTelemetry `service.name`, e.g.
/// `bitmask-store`; `default_level` applies when `RUST_LOG` is not set.
pub fn init(service_name: &'static str, default_level: &str) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // The log filter applies to the log only: spans are exported at info
    // level even from a quiet command line.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .with_filter(filter);

    let mut telemetry = Telemetry::default();
    let mut export_error = None;
    if otlp_configured() {
        let resource = Resource::builder().with_service_name(service_name).build();
        match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
            Ok(exporter) => {
                let provider =
                    SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.clone()).build();
                opentelemetry::global::set_tracer_provider(provider.clone());
                telemetry.tracer_provider = Some(provider);
            }
            Err(error) => export_error = Some(error.to_string()),
        }
        match opentelemetry_otlp::MetricExporter::builder().with_tonic().build() {
            Ok(exporter) => {
                let provider =
                    SdkMeterProvider::builder().with_periodic_exporter(exporter).with_resource(resource).build();
                opentelemetry::global::set_meter_provider(provider.clone());
                telemetry.meter_provider = Some(provider);
            }
            Err(error) => export_error = Some(error.to_string()),
        }
    }

    let otel_layer = telemetry.tracer_provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service_name))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    let registry = tracing_subscriber::registry().with(fmt).with(otel_layer);
    if registry.try_init().is_err() {
        // A subscriber exists already (tests running several servers in one process).
        return telemetry;
    }
    if let Some(error) = export_error {
        tracing::warn!(%error, "OpenTelemetry export is configured but could not start");
    } else if telemetry.exporting() {
        tracing::info!("exporting traces and metrics over OTLP");
    }
    telemetry
}

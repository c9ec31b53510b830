//! Logs and traces for every weightcast process.
//!
//! Logs go to stderr through `tracing` (filtered by `RUST_LOG`, with a
//! default per command). Traces are off unless an OTLP endpoint is given
//! (`--otlp-endpoint`): then the same `tracing` spans are exported as
//! OpenTelemetry spans over OTLP/HTTP (protobuf), batched in the
//! background. One `get` is one trace: the client, the daemon, the
//! scheduler and the seed each add their spans to it, because every hop
//! carries the W3C `traceparent` of the span that caused it (see
//! [`traceparent`] and [`set_parent`]).

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::TracerProvider;
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("--otlp-endpoint {endpoint}: {reason}")]
    Endpoint { endpoint: String, reason: String },
}

/// Where spans go, when they go anywhere.
#[derive(Debug, Clone, Default)]
pub struct TraceExport {
    /// The OTLP/HTTP endpoint, e.g. `http://collector:4318` (spans are
    /// posted to its `/v1/traces`); `None`: no traces.
    pub endpoint: Option<String>,
    /// `service.name` of this process's spans (`weightcast-daemon`, ...).
    pub service: String,
}

/// Flushes the spans not yet exported when the process ends.
#[must_use = "dropping the guard without `shutdown` may lose the last spans"]
pub struct Telemetry {
    provider: Option<TracerProvider>,
}

impl Telemetry {
    /// Exports what is still batched (blocks: call it off the async
    /// workers, e.g. in `spawn_blocking`).
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown() {
                eprintln!("warning: the last traces were not exported: {e}");
            }
        }
    }
}

/// Installs the process's subscriber: logs to stderr by `RUST_LOG` (or
/// `default_log`), and spans to `export.endpoint` when set. Must run inside
/// a tokio runtime when traces are on (the batch exporter is a task).
pub fn init(default_log: &str, export: &TraceExport) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_log));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(
            std::env::var_os("NO_COLOR").is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )
        .with_filter(filter);
    let Some(endpoint) = export.endpoint.as_deref() else {
        let _ = tracing_subscriber::registry().with(logs).try_init();
        return Ok(Telemetry { provider: None });
    };
    let provider = provider(endpoint, &export.service)?;
    let tracer = provider.tracer("weightcast");
    // Spans are traced by their own rule, not by the log filter: a `get`
    // logs only warnings but still traces its info-level spans.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(
            Targets::new()
                .with_target("weightcast", LevelFilter::INFO)
                .with_default(LevelFilter::OFF),
        );
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
    Ok(Telemetry {
        provider: Some(provider),
    })
}

fn provider(endpoint: &str, service: &str) -> Result<TracerProvider, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig;
    let bad = |reason: String| TelemetryError::Endpoint {
        endpoint: endpoint.to_string(),
        reason,
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(bad(
            "must be an http:// or https:// URL of an OTLP/HTTP receiver (e.g. http://collector:4318)"
                .into(),
        ));
    }
    let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces)
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::new([
        KeyValue::new("service.name", service.to_string()),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("process.pid", i64::from(std::process::id())),
    ]);
    Ok(TracerProvider::builder()
        .with_batch_exporter(exporter, opentelemetry_sdk::runtime::Tokio)
        .with_resource(resource)
        .build())
}

/// The W3C `traceparent` of the current span, for the next hop (a local
/// API request, a scheduler message); `None` when nothing is traced.
pub fn traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// The W3C `traceparent` of `span`; `None` when it is not traced.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the remote span `traceparent` names (a
/// malformed or empty one is ignored: the span starts its own trace).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_tracer_nothing_is_propagated() {
        let span = tracing::info_span!("untraced");
        assert_eq!(traceparent_of(&span), None);
        // A malformed parent is ignored, not a panic.
        set_parent(&span, "not-a-traceparent");
        set_parent(&span, "");
    }

    #[test]
    fn a_traceparent_round_trips_through_a_span() {
        let provider = TracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let span = tracing::info_span!("child");
            set_parent(&span, parent);
            let child = traceparent_of(&span).expect("a traced span");
            // Same trace, a new span of its own.
            assert!(
                child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{child}"
            );
            assert!(!child.contains("00f067aa0ba902b7"), "{child}");
        });
    }

    #[test]
    fn an_endpoint_must_be_a_url() {
        let Err(e) = provider("collector:4318", "t") else {
            panic!("an endpoint without a scheme was accepted");
        };
        assert!(e.to_string().contains("http://"), "{e}");
    }
}

//! The counters and histograms in the Prometheus (OpenMetrics) text format, read from the
//! atomics at each scrape.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use super::{APPROVAL_EVENTS, Metrics};
use crate::sessions::Outcome;
use crate::sessions::store::StoreStatus;

/// What the daemon knows only at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    pub live_sessions: u64,
    pub enrollments: u64,
    pub held_approvals: u64,
    pub store: StoreStatus,
    /// Kept in the kernel across restarts, see `Status::refused_no_proxy`.
    pub refused_no_proxy: u64,
}

pub type GaugeSource = Box<dyn Fn() -> Gauges + Send + Sync>;

/// The daemon's metrics as a registry whose text is the `/metrics` page.
pub fn registry(metrics: Arc<Metrics>, gauges: GaugeSource) -> Registry {
    let mut registry = Registry::with_prefix("interceptor");
    registry.register_collector(Box::new(Exposition { metrics, gauges }));
    registry
}

/// The page for `registry`.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

struct Exposition {
    metrics: Arc<Metrics>,
    gauges: GaugeSource,
}

impl std::fmt::Debug for Exposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exposition")
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

type Out = Result<(), std::fmt::Error>;

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Out {
    ConstCounter::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Out {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// One counter per label value.
fn counters<'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> Out {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        ConstCounter::new(n).encode(family.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

impl Collector for Exposition {
    fn encode(&self, mut e: DescriptorEncoder) -> Out {
        let m = &self.metrics;
        let g = (self.gauges)();
        let c = m.counts(g.held_approvals, g.store.lost);
        counter(&mut e, "sessions", "Sessions started", c.sessions_total)?;
        counters(
            &mut e,
            "sessions_ended",
            "Sessions ended, by outcome",
            "outcome",
            Outcome::ALL.iter().map(|&o| (o.name(), m.ended(o))),
        )?;
        counter(
            &mut e,
            "kernel_denials",
            "connect() calls refused in the kernel (deny lists)",
            c.drops.kernel_denials,
        )?;
        counter(
            &mut e,
            "kernel_refused_no_proxy",
            "connect() calls refused in the kernel because the daemon's listener was not up (since the eBPF maps were pinned)",
            g.refused_no_proxy,
        )?;
        counter(
            &mut e,
            "connections_refused",
            "Redirected connections reset on arrival for want of room (capacity, file descriptors)",
            c.drops.connections_refused,
        )?;
        counters(
            &mut e,
            "secret_findings",
            "Secrets found (and masked), by direction",
            "direction",
            [("up", c.findings.up), ("down", c.findings.down)],
        )?;
        counter(
            &mut e,
            "http_exchanges",
            "HTTP requests recorded",
            c.http_exchanges,
        )?;
        let a = &c.approvals;
        counters(
            &mut e,
            "approvals",
            "Approval requests and their decisions",
            "event",
            APPROVAL_EVENTS
                .into_iter()
                .zip([a.requested, a.approved, a.denied, a.expired]),
        )?;
        gauge(
            &mut e,
            "approvals_held",
            "Connections and requests waiting for approval",
            a.held,
        )?;
        gauge(&mut e, "live_sessions", "Connections open", g.live_sessions)?;
        gauge(&mut e, "enrollments", "Enrolled cgroups", g.enrollments)?;
        gauge(&mut e, "tailers", "Session streams being served", c.tailers)?;
        counter(
            &mut e,
            "store_records",
            "Session records written",
            g.store.recorded,
        )?;
        counter(&mut e, "store_lost", "Session records lost", g.store.lost)?;
        gauge(
            &mut e,
            "store_queued",
            "Session records waiting for the writer",
            g.store.queued,
        )?;
        gauge(
            &mut e,
            "store_bytes",
            "Size of the session segments",
            g.store.bytes,
        )?;
        m.connection_setup.encode(e.encode_descriptor(
            "connection_setup",
            "From accept to the upstream connection established",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?)?;
        m.http_duration.encode(e.encode_descriptor(
            "http_request_duration",
            "From an HTTP request's head to the end of its response",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::store::tests::start;
    use std::time::Duration;

    #[test]
    fn the_page_carries_counters_gauges_and_histograms() {
        let metrics = Arc::new(Metrics::default());
        metrics.observe(&start(1));
        metrics.connection_setup.observe(Duration::from_millis(3));
        let registry = registry(
            metrics,
            Box::new(|| Gauges {
                held_approvals: 2,
                refused_no_proxy: 3,
                ..Default::default()
            }),
        );
        let page = render(&registry);
        for line in [
            "interceptor_sessions_total 1",
            "interceptor_sessions_ended_total{outcome=\"denied\"} 0",
            "interceptor_secret_findings_total{direction=\"up\"} 0",
            "interceptor_approvals_held 2",
            "interceptor_kernel_refused_no_proxy_total 3",
            "interceptor_connections_refused_total 0",
            "interceptor_connection_setup_seconds_count 1",
            "interceptor_connection_setup_seconds_bucket{le=\"0.005\"} 1",
            "interceptor_connection_setup_seconds_bucket{le=\"0.0025\"} 0",
            "# EOF",
        ] {
            assert!(page.lines().any(|l| l == line), "{line:?} not in:\n{page}");
        }
    }
}

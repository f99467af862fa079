//! KEDA's `externalscaler.ExternalScaler` service, answered from the
//! decision cache (never from Redis directly).
//!
//! - `GetMetricSpec`: one metric, target 1 (`targetSize` and
//!   `targetSizeFloat`), named by the trigger's `metricName` metadata; it
//!   does not depend on the decision and never changes.
//! - `GetMetrics`: the leader's `desired_replicas` in `metricValue` and
//!   `metricValueFloat`, so an `AverageValue` HPA computes exactly that.
//! - `IsActive`: `desired_replicas > 0`.
//! - `StreamIsActive`: the activity as soon as a fresh decision is known,
//!   then `true` on every inactive→active edge; ends when the client goes or
//!   the server shuts down.
//!
//! No fresh decision (stale, missing, malformed, Redis unreachable, not read
//! yet) is `UNAVAILABLE` with a message that says which.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use futures_util::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::cache::{Snapshot, Unavailable};
use crate::metrics::{Metrics, Rpc};
use crate::proto::external_scaler_server::ExternalScaler;
use crate::proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec, MetricValue,
    ScaledObjectRef,
};

/// Trigger metadata key naming the metric.
pub const METRIC_NAME_KEY: &str = "metricName";

/// The target of the `AverageValue` metric: one replica per unit.
pub const TARGET: i64 = 1;

#[derive(Clone)]
pub struct Scaler {
    pub cache: watch::Receiver<Snapshot>,
    pub max_age: Duration,
    pub default_metric_name: String,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub clock: fn() -> u64,
}

impl Scaler {
    fn metric_name(&self, scaled_object: Option<&ScaledObjectRef>) -> String {
        scaled_object
            .and_then(|r| r.scaler_metadata.get(METRIC_NAME_KEY))
            .filter(|name| !name.is_empty())
            .unwrap_or(&self.default_metric_name)
            .clone()
    }

    /// The desired replicas to serve now, or the UNAVAILABLE status.
    fn desired(&self, rpc: Rpc, started: Instant) -> Result<u32, Status> {
        let answer = self.cache.borrow().fresh((self.clock)(), self.max_age).map(|d| d.desired_replicas);
        match answer {
            Ok(desired) => {
                self.metrics.request(rpc, "ok", started.elapsed());
                Ok(desired)
            }
            Err(why) => {
                self.metrics.request(rpc, why.kind(), started.elapsed());
                Err(unavailable(&why))
            }
        }
    }
}

fn unavailable(why: &Unavailable) -> Status {
    Status::unavailable(why.to_string())
}

#[tonic::async_trait]
impl ExternalScaler for Scaler {
    async fn is_active(&self, _request: Request<ScaledObjectRef>) -> Result<Response<IsActiveResponse>, Status> {
        let desired = self.desired(Rpc::IsActive, Instant::now())?;
        Ok(Response::new(IsActiveResponse { result: desired > 0 }))
    }

    type StreamIsActiveStream = Pin<Box<dyn Stream<Item = Result<IsActiveResponse, Status>> + Send + 'static>>;

    async fn stream_is_active(
        &self,
        _request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let started = Instant::now();
        self.metrics.streams_open.increment(1.0);
        let edges = Edges {
            cache: self.cache.clone(),
            max_age: self.max_age,
            clock: self.clock,
            shutdown: self.shutdown.clone(),
            last: None,
            open: OpenStream(self.metrics.clone()),
        };
        let stream = futures_util::stream::unfold(edges, |mut edges| async move {
            let message = edges.next().await?;
            edges.open.0.stream_messages.increment(1);
            Some((Ok(message), edges))
        });
        self.metrics.request(Rpc::StreamIsActive, "ok", started.elapsed());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        let started = Instant::now();
        let metric_name = self.metric_name(Some(request.get_ref()));
        let spec = MetricSpec { metric_name, target_size: TARGET, target_size_float: TARGET as f64 };
        self.metrics.request(Rpc::GetMetricSpec, "ok", started.elapsed());
        Ok(Response::new(GetMetricSpecResponse { metric_specs: vec![spec] }))
    }

    async fn get_metrics(&self, request: Request<GetMetricsRequest>) -> Result<Response<GetMetricsResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let metric_name = if request.metric_name.is_empty() {
            self.metric_name(request.scaled_object_ref.as_ref())
        } else {
            request.metric_name
        };
        let desired = self.desired(Rpc::GetMetrics, started)?;
        let value =
            MetricValue { metric_name, metric_value: i64::from(desired), metric_value_float: f64::from(desired) };
        Ok(Response::new(GetMetricsResponse { metric_values: vec![value] }))
    }
}

/// One `StreamIsActive` subscriber: follows the cache and yields the
/// activity on connect and on inactive→active edges only.
struct Edges {
    cache: watch::Receiver<Snapshot>,
    max_age: Duration,
    clock: fn() -> u64,
    shutdown: CancellationToken,
    /// Activity of the last fresh decision seen (`None` before the first).
    last: Option<bool>,
    open: OpenStream,
}

impl Edges {
    async fn next(&mut self) -> Option<IsActiveResponse> {
        loop {
            let active = {
                let snapshot = self.cache.borrow_and_update();
                snapshot.fresh((self.clock)(), self.max_age).ok().map(|d| d.desired_replicas > 0)
            };
            // Without a fresh decision the activity is unknown: nothing is
            // sent (GetMetrics answers UNAVAILABLE meanwhile) and the last
            // known activity is kept.
            if let Some(active) = active {
                let send = match self.last {
                    None => true,
                    Some(was_active) => !was_active && active,
                };
                self.last = Some(active);
                if send {
                    return Some(IsActiveResponse { result: active });
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                changed = self.cache.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
            }
        }
    }
}

/// Keeps `rtc_scaler_streams_open` right however a stream ends.
struct OpenStream(Arc<Metrics>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.streams_open.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Reading;
    use rtc_core::{Action, Decision, Urgency};
    use std::collections::HashMap;

    fn now() -> u64 {
        1_000_000
    }

    fn snapshot(desired: u32, decided_at_ms: u64) -> Snapshot {
        let d = Decision {
            v: 1,
            desired_replicas: desired,
            current_replicas: 1,
            action: Action::Hold,
            step: 0,
            urgency: Urgency::None,
            reason: String::new(),
            decided_at_ms,
            leader_epoch: 1,
        };
        Snapshot { reading: Reading::Decision(Arc::new(d)), read_at_ms: decided_at_ms, redis_offset_ms: 0 }
    }

    fn scaler(initial: Snapshot) -> (Scaler, watch::Sender<Snapshot>) {
        let (tx, rx) = watch::channel(initial);
        let s = Scaler {
            cache: rx,
            max_age: Duration::from_secs(6),
            default_metric_name: "socket-desired-replicas".into(),
            metrics: Arc::new(Metrics::new()),
            shutdown: CancellationToken::new(),
            clock: now,
        };
        (s, tx)
    }

    fn reference(metric: Option<&str>) -> ScaledObjectRef {
        let mut scaler_metadata = HashMap::new();
        if let Some(m) = metric {
            scaler_metadata.insert(METRIC_NAME_KEY.to_owned(), m.to_owned());
        }
        ScaledObjectRef { name: "socket".into(), namespace: "rtc".into(), scaler_metadata }
    }

    #[tokio::test]
    async fn metric_spec_is_target_one_under_the_requested_name() {
        let (s, _tx) = scaler(Snapshot::not_loaded());
        for (metric, expected) in
            [(None, "socket-desired-replicas"), (Some(""), "socket-desired-replicas"), (Some("m"), "m")]
        {
            let spec = s.get_metric_spec(Request::new(reference(metric))).await.unwrap().into_inner();
            assert_eq!(
                spec.metric_specs,
                vec![MetricSpec { metric_name: expected.into(), target_size: 1, target_size_float: 1.0 }]
            );
        }
    }

    #[tokio::test]
    async fn metrics_carry_desired_replicas_in_both_fields() {
        let (s, _tx) = scaler(snapshot(7, now() - 100));
        let request = GetMetricsRequest { scaled_object_ref: Some(reference(Some("x"))), metric_name: "y".into() };
        let values = s.get_metrics(Request::new(request)).await.unwrap().into_inner().metric_values;
        assert_eq!(values, vec![MetricValue { metric_name: "y".into(), metric_value: 7, metric_value_float: 7.0 }]);
        let request = GetMetricsRequest { scaled_object_ref: Some(reference(Some("x"))), metric_name: String::new() };
        let values = s.get_metrics(Request::new(request)).await.unwrap().into_inner().metric_values;
        assert_eq!(values[0].metric_name, "x");
        assert!(s.is_active(Request::new(reference(None))).await.unwrap().into_inner().result);
    }

    #[tokio::test]
    async fn stale_is_unavailable() {
        let (s, _tx) = scaler(snapshot(7, now() - 6_001));
        let err = s.is_active(Request::new(reference(None))).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.message().contains("stale"), "{}", err.message());
    }

    #[tokio::test]
    async fn edges_send_on_connect_and_on_inactive_to_active_only() {
        use futures_util::StreamExt;
        let (s, tx) = scaler(Snapshot::not_loaded());
        let mut stream = s.stream_is_active(Request::new(reference(None))).await.unwrap().into_inner();
        // Nothing known yet: nothing sent.
        assert!(tokio::time::timeout(Duration::from_millis(20), stream.next()).await.is_err());
        let mut at = now() - 1_000;
        let mut feed = |desired: u32| {
            at += 1;
            tx.send_replace(snapshot(desired, at));
        };
        let quiet = async |stream: &mut <Scaler as ExternalScaler>::StreamIsActiveStream| {
            tokio::time::timeout(Duration::from_millis(20), stream.next()).await.is_err()
        };
        feed(0);
        assert!(!stream.next().await.unwrap().unwrap().result, "on connect: inactive");
        for (desired, expected) in [(0, None), (3, Some(true)), (5, None), (0, None), (2, Some(true)), (4, None)] {
            feed(desired);
            match expected {
                Some(result) => assert_eq!(stream.next().await.unwrap().unwrap().result, result, "{desired}"),
                None => assert!(quiet(&mut stream).await, "nothing sent for {desired}"),
            }
        }
        s.shutdown.cancel();
        assert!(stream.next().await.is_none(), "ends on shutdown");
    }
}

//! KEDA's side of the external scaler contract: the gRPC calls KEDA makes
//! (`GetMetricSpec`, `GetMetrics`, `IsActive`, and the `StreamIsActive`
//! subscription of an `external-push` trigger), reading the answers the way
//! KEDA does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rtc_core::redis_io::Backoff;
use rtc_keda_scaler::proto::external_scaler_client::ExternalScalerClient;
use rtc_keda_scaler::proto::{GetMetricsRequest, ScaledObjectRef};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::sync::{MetricReading, ScalerAnswer};

#[derive(Debug, thiserror::Error)]
pub enum KedaError {
    #[error("bad scaler address {address}: {source}")]
    Address { address: String, source: tonic::transport::Error },
}

/// A client of one scaler, as one ScaledObject trigger.
#[derive(Clone)]
pub struct KedaClient {
    client: ExternalScalerClient<Channel>,
    reference: ScaledObjectRef,
}

impl KedaClient {
    /// Connects lazily: an unreachable scaler is a failed call, not a failed start.
    pub fn new(
        address: &str,
        name: &str,
        namespace: &str,
        metric_name: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, KedaError> {
        let endpoint = Endpoint::from_shared(address.to_owned())
            .map_err(|source| KedaError::Address { address: address.to_owned(), source })?
            .connect_timeout(timeout)
            .timeout(timeout)
            .tcp_nodelay(true);
        // KEDA sends the trigger's metadata, `scalerAddress` included.
        let mut scaler_metadata = HashMap::from([("scalerAddress".to_owned(), address.to_owned())]);
        if let Some(metric) = metric_name {
            scaler_metadata.insert(rtc_keda_scaler::grpc::METRIC_NAME_KEY.to_owned(), metric.to_owned());
        }
        Ok(Self {
            client: ExternalScalerClient::new(endpoint.connect_lazy()),
            reference: ScaledObjectRef { name: name.to_owned(), namespace: namespace.to_owned(), scaler_metadata },
        })
    }

    /// One sync's worth of calls.
    pub async fn poll(&mut self) -> ScalerAnswer {
        let metric = self.metric().await;
        let active = match self.client.is_active(self.reference.clone()).await {
            Ok(r) => Ok(r.into_inner().result),
            Err(status) => Err(describe(&status)),
        };
        ScalerAnswer { metric, active }
    }

    async fn metric(&mut self) -> Result<MetricReading, String> {
        let specs = self.client.get_metric_spec(self.reference.clone()).await.map_err(|s| describe(&s))?;
        let spec = specs.into_inner().metric_specs.into_iter().next().ok_or("GetMetricSpec returned no metric")?;
        let target = keda_value(spec.target_size_float, spec.target_size);
        let request = GetMetricsRequest {
            scaled_object_ref: Some(self.reference.clone()),
            metric_name: spec.metric_name.clone(),
        };
        let values = self.client.get_metrics(request).await.map_err(|s| describe(&s))?.into_inner().metric_values;
        let value = values
            .iter()
            .find(|v| v.metric_name == spec.metric_name)
            .or(values.first())
            .ok_or("GetMetrics returned no value")?;
        Ok(MetricReading {
            name: spec.metric_name,
            value: keda_value(value.metric_value_float, value.metric_value),
            target,
        })
    }
}

/// KEDA prefers the float field when it is positive, else the integer one
/// (both for `targetSize*` and `metricValue*`).
pub fn keda_value(float: f64, int: i64) -> f64 {
    if float > 0.0 { float } else { int as f64 }
}

fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Holds a `StreamIsActive` subscription as an `external-push` trigger does,
/// resubscribing with backoff, and wakes `activated` on every `true` the
/// scaler pushes (its first message and each inactive→active edge), so the
/// controller syncs at once instead of at the next period.
pub async fn watch_activation(client: KedaClient, activated: Arc<Notify>, stop: CancellationToken) {
    let mut backoff = Backoff::default();
    loop {
        let mut scaler = client.client.clone();
        let subscribed = tokio::select! {
            _ = stop.cancelled() => return,
            s = scaler.stream_is_active(client.reference.clone()) => s,
        };
        match subscribed {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    let message = tokio::select! {
                        _ = stop.cancelled() => return,
                        m = stream.message() => m,
                    };
                    match message {
                        Ok(Some(m)) => {
                            backoff.reset();
                            tracing::debug!(active = m.result, "StreamIsActive pushed");
                            if m.result {
                                activated.notify_one();
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(error = %describe(&status), "StreamIsActive ended");
                            break;
                        }
                    }
                }
            }
            Err(status) => tracing::debug!(error = %describe(&status), "StreamIsActive failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_win_when_positive() {
        assert_eq!(keda_value(2.5, 3), 2.5);
        assert_eq!(keda_value(0.0, 3), 3.0);
        assert_eq!(keda_value(-1.0, 0), 0.0);
    }

    #[test]
    fn a_bad_address_is_refused_at_once() {
        assert!(KedaClient::new("not a uri", "socket", "rtc", None, Duration::from_secs(1)).is_err());
    }
}

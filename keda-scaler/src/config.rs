//! Settings of the KEDA external scaler.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use rtc_core::config::RedisArgs;

/// Metric name served when the trigger's metadata names none.
pub const DEFAULT_METRIC_NAME: &str = "socket-desired-replicas";

/// rtc KEDA external scaler.
#[derive(Debug, Clone, Parser)]
#[command(name = "keda-scaler", version, about)]
pub struct Config {
    /// gRPC listen address (KEDA's `externalscaler.ExternalScaler` and the
    /// standard `grpc.health.v1.Health` service).
    #[arg(long, env = "RTC_LISTEN", default_value = "127.0.0.1:9090")]
    pub listen: String,
    /// Admin listen address: `/metrics`, `/livez`, `/readyz`, `/v1/decision`.
    #[arg(long, env = "RTC_ADMIN_LISTEN", default_value = "127.0.0.1:9091")]
    pub admin_listen: String,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// How often the load-balancer leader writes its decision; the decision
    /// goes stale after 3 of these (unless `--decision-max-age-ms` is set).
    #[arg(long, env = "RTC_DECISION_INTERVAL_MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub decision_interval_ms: u64,
    /// Age past which a decision is stale and answered with UNAVAILABLE
    /// (default: 3 decision intervals).
    #[arg(long, env = "RTC_DECISION_MAX_AGE_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub decision_max_age_ms: Option<u64>,
    /// How often the decision key is read from Redis into the cache every
    /// RPC answers from.
    #[arg(long, env = "RTC_DECISION_POLL_MS", default_value_t = 250,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub decision_poll_ms: u64,
    /// Longest wait for one Redis reply; past it Redis counts as unreachable.
    #[arg(long, env = "RTC_REDIS_TIMEOUT_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub redis_timeout_ms: u64,
    /// Metric name when the trigger's `metadata.metricName` is not set.
    #[arg(long, env = "RTC_METRIC_NAME", default_value = DEFAULT_METRIC_NAME)]
    pub metric_name: String,
    /// PEM server certificate (chain): serve gRPC over TLS (KEDA `enableTLS`
    /// / `caCert`). Needs `--tls-key`.
    #[arg(long, env = "RTC_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "RTC_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle for client certificates: with it, mutual TLS is required
    /// (KEDA `tlsClientCert` / `tlsClientKey`). Needs `--tls-cert`.
    #[arg(long, env = "RTC_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// On SIGTERM, how long open streams and requests get to finish.
    #[arg(long, env = "RTC_SHUTDOWN_GRACE_MS", default_value_t = 5_000)]
    pub shutdown_grace_ms: u64,
}

impl Config {
    /// Age past which a decision is stale.
    pub fn max_age(&self) -> Duration {
        Duration::from_millis(self.decision_max_age_ms.unwrap_or(3 * self.decision_interval_ms))
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.decision_poll_ms)
    }

    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_has_an_env_var() {
        assert_eq!(rtc_core::config::flags_without_env(&Config::command()), Vec::<String>::new());
    }

    #[test]
    fn staleness_defaults_to_three_decision_intervals() {
        let c = Config::try_parse_from(["s"]).unwrap();
        assert_eq!(c.max_age(), Duration::from_millis(6_000));
        let c = Config::try_parse_from(["s", "--decision-interval-ms", "500"]).unwrap();
        assert_eq!(c.max_age(), Duration::from_millis(1_500));
        let c = Config::try_parse_from(["s", "--decision-interval-ms", "500", "--decision-max-age-ms", "900"]).unwrap();
        assert_eq!(c.max_age(), Duration::from_millis(900));
        assert_eq!(c.metric_name, DEFAULT_METRIC_NAME);
    }

    #[test]
    fn tls_settings_come_in_pairs() {
        assert!(Config::try_parse_from(["s", "--tls-cert", "c.pem"]).is_err());
        assert!(Config::try_parse_from(["s", "--tls-key", "k.pem"]).is_err());
        assert!(Config::try_parse_from(["s", "--tls-client-ca", "ca.pem"]).is_err());
        assert!(Config::try_parse_from(["s", "--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "ca"]).is_ok());
        assert!(Config::try_parse_from(["s", "--decision-interval-ms", "0"]).is_err());
    }
}

//! Settings of the load-balancer service, parsed in one place.

use std::time::Duration;

use clap::{Args, ValueEnum};
use rtc_core::config::{LivenessArgs, RedisArgs, TopicArgs};

use crate::assign::BalanceArgs;
use crate::scale::ScaleConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Anyone may ask for any user's route (development only).
    None,
    /// A bearer JWT whose `sub` is the user.
    Jwt,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Public listen address (`GET /v1/route`).
    #[arg(long, env = "RTC_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: String,
    /// Admin listen address: `/v1/nodes`, `/v1/assignment`, `/metrics`, probes.
    #[arg(long, env = "RTC_ADMIN_LISTEN", default_value = "127.0.0.1:9000")]
    pub admin_listen: String,
    #[command(flatten)]
    pub backlog: rtc_core::listen::ListenArgs,
    /// This replica's id in the election (default: lb-<pid>).
    #[arg(long, env = "RTC_REPLICA_ID")]
    pub replica_id: Option<String>,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub topic: TopicArgs,
    /// Client authentication: `jwt`, or `none` (must be asked for).
    #[arg(long, env = "RTC_AUTH", value_enum)]
    pub auth: AuthMode,
    /// HS256 secret for `--auth jwt`.
    #[arg(long, env = "RTC_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// RS256 public key (PEM file) for `--auth jwt`.
    #[arg(long, env = "RTC_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<std::path::PathBuf>,
    /// When set, a JWT's `iss` must be this (a token of another issuer
    /// sharing the key is refused).
    #[arg(long, env = "RTC_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// When set, a JWT's `aud` must include this (a token minted for another
    /// service is refused).
    #[arg(long, env = "RTC_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Shared secret of the connect tokens (the socket nodes verify them).
    #[arg(long, env = "RTC_TOKEN_SECRET", default_value = "rtc-dev-secret", hide_default_value = true)]
    pub token_secret: String,
    /// Lifetime of a connect token: clients connect right after the route
    /// answer, and a node remembers each token it admitted until it expires
    /// (a token opens one session). Short, so a leaked one is soon useless.
    #[arg(long, env = "RTC_TOKEN_TTL_MS", default_value_t = 10_000)]
    pub token_ttl_ms: u64,
    /// Leader lease; renewed every third of it.
    #[arg(long, env = "RTC_LEASE_TTL_MS", default_value_t = 5_000)]
    pub lease_ttl_ms: u64,
    #[command(flatten)]
    pub liveness: LivenessArgs,
    /// Heartbeat history kept per node (covers the scale-in window).
    #[arg(long, env = "RTC_HISTORY_WINDOW_MS", default_value_t = 300_000)]
    pub history_window_ms: u64,
    /// Followers poll the assignment this often (pub/sub is the fast path).
    #[arg(long, env = "RTC_ASSIGNMENT_POLL_MS", default_value_t = 1_000)]
    pub assignment_poll_ms: u64,
    /// Route requests per second allowed per client: per user (the JWT's
    /// subject) with `--auth jwt`, else per client address.
    #[arg(long, env = "RTC_RATE_LIMIT", default_value_t = 50)]
    pub rate_limit: u32,
    /// Proxies (addresses or CIDRs, comma-separated) whose
    /// `X-Forwarded-For` names the client, e.g. the ingress controller's
    /// pods. Unset: the header is ignored (anyone could forge it).
    #[arg(long, env = "RTC_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_proxy)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Origins (comma-separated, e.g. `https://app.example.com`) whose
    /// browser pages may call `/v1/route`; `*` allows any. Unset: none
    /// (browsers then refuse cross-origin answers).
    #[arg(long, env = "RTC_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_origins: Vec<axum::http::HeaderValue>,
    /// Burst above the rate a client may use.
    #[arg(long, env = "RTC_RATE_BURST", default_value_t = 100)]
    pub rate_burst: u32,
    /// Decisions kept for `/v1/decisions`.
    #[arg(long, env = "RTC_DECISION_HISTORY", default_value_t = 200)]
    pub decision_history: usize,
    #[command(flatten)]
    pub balance: BalanceArgs,
    #[command(flatten)]
    pub scale: ScaleConfig,
    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// Ask the API server (with `--kube`), else Deployment.
    Auto,
    Deployment,
    Statefulset,
}

/// Kubernetes actuation of scale-ins (optional: off on one machine).
#[derive(Debug, Clone, Args)]
pub struct KubeArgs {
    /// Mark scale-in victims through the Kubernetes API (in-cluster config).
    #[arg(long = "kube", env = "RTC_KUBE", default_value_t = false)]
    pub enabled: bool,
    /// Namespace of the socket workload (default: the pod's own).
    #[arg(long, env = "RTC_KUBE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Name of the socket Deployment or StatefulSet.
    #[arg(long, env = "RTC_KUBE_WORKLOAD", default_value = "socket")]
    pub workload: String,
    /// Kind of the socket workload.
    #[arg(long, env = "RTC_KUBE_WORKLOAD_KIND", value_enum, default_value_t = KindArg::Auto)]
    pub kind: KindArg,
}

/// A CIDR, or one address (a /32 or /128).
fn parse_proxy(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is neither an IP address nor a CIDR"))
}

/// An origin as browsers send it: `scheme://host[:port]`, or `*`.
fn parse_origin(s: &str) -> Result<axum::http::HeaderValue, String> {
    let s = s.trim().trim_end_matches('/');
    let ok = s == "*"
        || (s.starts_with("http://") || s.starts_with("https://"))
            && s.split_once("://").is_some_and(|(_, host)| {
                !host.is_empty() && !host.contains(|c: char| c == '/' || c.is_whitespace() || c.is_control())
            });
    if !ok {
        return Err(format!("{s:?} is not an origin (scheme://host[:port], or *)"));
    }
    axum::http::HeaderValue::from_str(s).map_err(|e| format!("{s:?}: {e}"))
}

impl ServeArgs {
    pub fn replica_id(&self) -> String {
        self.replica_id.clone().unwrap_or_else(|| format!("lb-{}", std::process::id()))
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms.max(30))
    }

    pub fn heartbeat_interval(&self) -> Duration {
        self.liveness.heartbeat_interval()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        for ok in ["https://chat.example.com", "http://localhost:5173", "https://a.example/", "*"] {
            assert!(parse_origin(ok).is_ok(), "{ok}");
        }
        for bad in ["chat.example.com", "https://", "https://a.example/path", "ftp://a", "https://a b", ""] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_origin("https://a.example/").ok(),
            Some(axum::http::HeaderValue::from_static("https://a.example"))
        );
    }
}

//! Settings shared by several services. Each is a CLI flag with an
//! `RTC_<NAME>` environment variable; services `#[command(flatten)]` the
//! groups they need so names and defaults agree everywhere.

use std::time::Duration;

use clap::Args;

pub const DEFAULT_KEY_PREFIX: &str = "rtc:";
pub const DEFAULT_PARTITIONS: u32 = 360;
pub const DEFAULT_TOPIC: &str = "rtc.messages";

/// Where the shared state lives, and how to log in to it.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis URL: `redis://host:port/db`, or `rediss://…` for TLS.
    #[arg(long, env = "RTC_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Prefix of every Redis key, so installations can share a Redis.
    #[arg(long, env = "RTC_KEY_PREFIX", default_value = DEFAULT_KEY_PREFIX)]
    pub key_prefix: String,
    /// Redis ACL user (kept out of the URL so the URL can live in a
    /// ConfigMap and this in a Secret).
    #[arg(long, env = "RTC_REDIS_USERNAME")]
    pub redis_username: Option<String>,
    /// Redis password (ACL user's, or `requirepass`).
    #[arg(long, env = "RTC_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
}

impl RedisArgs {
    pub fn keys(&self) -> crate::Keys {
        crate::Keys::new(self.key_prefix.clone())
    }

    /// A client for the URL, logging in with the username and password
    /// when set (they take precedence over any in the URL).
    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        use redis::IntoConnectionInfo;
        let mut info = self.redis_url.as_str().into_connection_info()?;
        let mut settings = info.redis_settings().clone();
        if let Some(username) = self.redis_username.as_deref().filter(|u| !u.is_empty()) {
            settings = settings.set_username(username);
        }
        if let Some(password) = self.redis_password.as_deref().filter(|p| !p.is_empty()) {
            settings = settings.set_password(password);
        }
        info = info.set_redis_settings(settings);
        redis::Client::open(info)
    }
}

/// The message topic and how it is partitioned.
#[derive(Debug, Clone, Args)]
pub struct TopicArgs {
    /// Kafka topic carrying messages to users (key = recipient user id).
    #[arg(long, env = "RTC_TOPIC", default_value = DEFAULT_TOPIC)]
    pub topic: String,
    /// Partition count of the topic; routing depends on it being exact.
    #[arg(long, env = "RTC_PARTITIONS", default_value_t = DEFAULT_PARTITIONS,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub partitions: u32,
}

/// Heartbeats and the node lease: the socket nodes and the load balancer
/// must agree on these, so both flatten this one group.
///
/// A node's lease lasts `dead_after - margin` from the start of its last
/// successful heartbeat write; once it runs out the node fences itself
/// (stops consuming, disconnects its users). The leader takes a node's
/// partitions away only after `dead_after + margin` without a heartbeat, so
/// a node cut off from Redis has stopped before anyone else starts.
#[derive(Debug, Clone, Args)]
pub struct LivenessArgs {
    /// Socket nodes' heartbeat period.
    #[arg(long, env = "RTC_HEARTBEAT_INTERVAL_MS", default_value_t = 1000)]
    pub heartbeat_interval_ms: u64,
    /// A node is dead this long after its last heartbeat (default: 6
    /// intervals, so a Redis stall of 3.5 s fences nobody).
    #[arg(long, env = "RTC_DEAD_AFTER_MS")]
    pub dead_after_ms: Option<u64>,
    /// Safety margin either side of `dead_after` (default: a twelfth of it):
    /// covers a node's release and the clocks' rate difference.
    #[arg(long, env = "RTC_FENCE_MARGIN_MS")]
    pub fence_margin_ms: Option<u64>,
}

impl LivenessArgs {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.max(10))
    }

    pub fn dead_after(&self) -> Duration {
        self.dead_after_ms.map_or(6 * self.heartbeat_interval(), Duration::from_millis)
    }

    pub fn margin(&self) -> Duration {
        self.fence_margin_ms.map_or(self.dead_after() / 12, Duration::from_millis)
    }

    /// How long a node's lease lasts after a successful heartbeat write.
    pub fn node_lease(&self) -> Duration {
        self.dead_after().saturating_sub(self.margin())
    }

    /// How long without a heartbeat before the leader reassigns a node's
    /// partitions.
    pub fn reassign_after(&self) -> Duration {
        self.dead_after() + self.margin()
    }

    /// The lease must outlast a heartbeat interval, or a healthy node would
    /// fence itself between two heartbeats.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_lease() <= 2 * self.heartbeat_interval() {
            return Err(format!(
                "dead-after ({} ms) minus the fence margin ({} ms) must exceed two heartbeat intervals ({} ms)",
                self.dead_after().as_millis(),
                self.margin().as_millis(),
                self.heartbeat_interval().as_millis()
            ));
        }
        Ok(())
    }
}

/// Checks, for tests, that every flag of a command reads an `RTC_*`
/// environment variable: the project's configuration rule.
pub fn flags_without_env(cmd: &clap::Command) -> Vec<String> {
    let mut missing = Vec::new();
    collect_flags_without_env(cmd, &mut missing);
    missing
}

fn collect_flags_without_env(cmd: &clap::Command, missing: &mut Vec<String>) {
    for arg in cmd.get_arguments() {
        let is_builtin = matches!(arg.get_id().as_str(), "help" | "version");
        let has_env = arg.get_env().and_then(|e| e.to_str()).is_some_and(|e| e.starts_with("RTC_"));
        if !is_builtin && !arg.is_positional() && !has_env {
            missing.push(format!("{} --{}", cmd.get_name(), arg.get_id()));
        }
    }
    for sub in cmd.get_subcommands() {
        collect_flags_without_env(sub, missing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Both {
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        topic: TopicArgs,
    }

    #[derive(Parser)]
    #[command(name = "bad")]
    struct Bad {
        #[arg(long)]
        no_env: bool,
    }

    #[test]
    fn defaults_work_locally() {
        let c = Both::try_parse_from(["x"]).unwrap();
        assert_eq!(c.redis.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(c.redis.keys().heartbeats(), "rtc:heartbeats");
        assert_eq!(c.topic.topic, "rtc.messages");
        assert_eq!(c.topic.partitions, 360);
    }

    #[derive(Parser)]
    struct Live {
        #[command(flatten)]
        liveness: LivenessArgs,
    }

    #[test]
    fn liveness_defaults_and_bounds() {
        let l = Live::try_parse_from(["x"]).unwrap().liveness;
        assert_eq!(l.dead_after(), Duration::from_secs(6));
        assert_eq!(l.margin(), Duration::from_millis(500));
        assert_eq!((l.node_lease(), l.reassign_after()), (Duration::from_millis(5500), Duration::from_millis(6500)));
        assert!(l.validate().is_ok());
        let fast = Live::try_parse_from(["x", "--heartbeat-interval-ms", "100"]).unwrap().liveness;
        assert_eq!((fast.dead_after(), fast.margin()), (Duration::from_millis(600), Duration::from_millis(50)));
        let bad = Live::try_parse_from(["x", "--dead-after-ms", "2500", "--fence-margin-ms", "600"]).unwrap().liveness;
        assert!(bad.validate().is_err(), "a 1.9 s lease with 1 s heartbeats");
    }

    #[test]
    fn redis_credentials_come_from_their_own_settings() {
        let parse = |args: &[&str]| Both::try_parse_from([&["x"], args].concat()).unwrap().redis.client().unwrap();
        let plain = parse(&[]);
        assert_eq!(plain.get_connection_info().redis_settings().password(), None);
        let login = parse(&["--redis-username", "rtc", "--redis-password", "s3cret"]);
        let settings = login.get_connection_info().redis_settings();
        assert_eq!((settings.username(), settings.password()), (Some("rtc"), Some("s3cret")));
        // They take precedence over the URL's; empty ones count as unset.
        let url = parse(&["--redis-url", "redis://u:p@h:1", "--redis-password", "new", "--redis-username", ""]);
        let settings = url.get_connection_info().redis_settings();
        assert_eq!((settings.username(), settings.password()), (Some("u"), Some("new")));
        assert!(Both::try_parse_from(["x", "--redis-url", "rediss://h:6380"]).unwrap().redis.client().is_ok(), "TLS");
    }

    #[test]
    fn zero_partitions_is_refused() {
        assert!(Both::try_parse_from(["x", "--partitions", "0"]).is_err());
    }

    #[test]
    fn env_rule_is_checked() {
        assert_eq!(flags_without_env(&Both::command()), Vec::<String>::new());
        assert_eq!(flags_without_env(&Bad::command()), vec!["bad --no_env".to_owned()]);
    }
}

//! Settings shared by several services. Each is a CLI flag with an
//! `RTC_<NAME>` environment variable; services `#[command(flatten)]` the
//! groups they need so names and defaults agree everywhere.

use clap::Args;

pub const DEFAULT_KEY_PREFIX: &str = "rtc:";
pub const DEFAULT_PARTITIONS: u32 = 360;
pub const DEFAULT_TOPIC: &str = "rtc.messages";

/// Where the shared state lives.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis URL (`redis://host:port/db`).
    #[arg(long, env = "RTC_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Prefix of every Redis key, so installations can share a Redis.
    #[arg(long, env = "RTC_KEY_PREFIX", default_value = DEFAULT_KEY_PREFIX)]
    pub key_prefix: String,
}

impl RedisArgs {
    pub fn keys(&self) -> crate::Keys {
        crate::Keys::new(self.key_prefix.clone())
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

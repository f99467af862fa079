//! Socket nodes for integration tests (this crate's, the load generator's
//! and the Rust client's): free loopback ports and fast test timings, with
//! the flags each test needs on top.

use clap::Parser;
use rtc_core::flags::Flags;

/// The admin token test nodes take on `POST /drain`.
pub const TEST_ADMIN_TOKEN: &str = "test-admin-token";

use crate::config::Config;
use crate::server::{NodeHandle, start};

/// A builder of socket-node flags; later flags override earlier ones.
pub struct TestNode {
    flags: Flags,
}

impl TestNode {
    /// A node on `127.0.0.1:0` (WebSocket and admin) with the Redis and
    /// Kafka of the test, heartbeats every 100 ms, assignment polls every
    /// 200 ms, commits every 100 ms, and a 3 s peer-acknowledgement bound.
    pub fn new(node_id: &str, redis_url: &str, key_prefix: &str, kafka_brokers: &str) -> Self {
        let flags = Flags::new(&[
            ("--listen", "127.0.0.1:0"),
            ("--admin-listen", "127.0.0.1:0"),
            ("--node-id", node_id),
            ("--redis-url", redis_url),
            ("--key-prefix", key_prefix),
            ("--kafka-brokers", kafka_brokers),
            ("--heartbeat-interval-ms", "100"),
            // Fence and reassign after 1.4 s / 1.6 s: quick, yet far from
            // what a loaded test machine delays a heartbeat by.
            ("--dead-after-ms", "1500"),
            ("--admin-token", TEST_ADMIN_TOKEN),
            ("--assignment-poll-ms", "200"),
            ("--commit-interval-ms", "100"),
            ("--peer-ack-timeout-ms", "3000"),
        ]);
        Self { flags }
    }

    pub fn partitions(self, partitions: u32) -> Self {
        self.arg("--partitions", &partitions.to_string())
    }

    pub fn topic(self, topic: &str) -> Self {
        self.arg("--topic", topic)
    }

    pub fn token_secret(self, secret: &str) -> Self {
        self.arg("--token-secret", secret)
    }

    /// Adds `flag value`.
    pub fn arg(mut self, flag: &str, value: &str) -> Self {
        self.flags.push(flag, value);
        self
    }

    /// Adds raw arguments (flags with or without values).
    pub fn args(mut self, extra: &[&str]) -> Self {
        self.flags.extend(extra);
        self
    }

    /// The flags, for the `socket` binary run as a child process.
    pub fn into_args(self) -> Vec<String> {
        self.flags.into_vec()
    }

    /// The parsed settings (environment variables apply as for the binary).
    pub fn config(self) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("socket".to_owned()).chain(self.flags.into_vec()))
    }

    pub async fn start(self) -> anyhow::Result<NodeHandle> {
        start(self.config()?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_flags_override_earlier_ones() {
        let config = TestNode::new("socket-a", "redis://127.0.0.1:1", "p:", "127.0.0.1:9092")
            .partitions(12)
            .partitions(24)
            .args(&["--commit-interval-ms", "500"])
            .config()
            .unwrap();
        assert_eq!(config.topic.partitions, 24);
        assert_eq!(config.node_id, "socket-a");
        assert_eq!(config.redis.key_prefix, "p:");
        assert_eq!(config.timing.commit_interval_ms, 500);
        assert_eq!(config.listen, "127.0.0.1:0");
    }
}

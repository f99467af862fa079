//! Load balancers for integration tests, this crate's and other crates':
//! in-process, on port 0, with timings fast enough for a test (heartbeats
//! every 100 ms, a 600 ms lease), `--auth none` unless asked otherwise.
//!
//! ```ignore
//! let lb = TestLb::new(&redis_url, "t1:", "lb-a").partitions(12).arg("--rate-limit", "100000").start().await?;
//! ```

use clap::{Args, FromArgMatches};
use rtc_core::flags::Flags;

use crate::config::ServeArgs;
use crate::service::{LbHandle, start};

/// A builder of `serve` flags; later flags override earlier ones.
pub struct TestLb {
    flags: Flags,
}

impl TestLb {
    pub fn new(redis_url: &str, key_prefix: &str, replica_id: &str) -> Self {
        let flags = Flags::new(&[
            ("--listen", "127.0.0.1:0"),
            ("--admin-listen", "127.0.0.1:0"),
            ("--redis-url", redis_url),
            ("--key-prefix", key_prefix),
            ("--replica-id", replica_id),
            ("--heartbeat-interval-ms", "100"),
            // Fence and reassign after 1.4 s / 1.6 s: quick, yet far from
            // what a loaded test machine delays a heartbeat by.
            ("--dead-after-ms", "1500"),
            ("--lease-ttl-ms", "600"),
            ("--assignment-poll-ms", "100"),
        ]);
        Self { flags }
    }

    pub fn partitions(self, partitions: u32) -> Self {
        self.arg("--partitions", &partitions.to_string())
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

    /// The parsed settings.
    pub fn serve_args(mut self) -> Result<ServeArgs, clap::Error> {
        if !self.flags.contains("--auth") {
            self.flags.push("--auth", "none");
        }
        let cmd = ServeArgs::augment_args(clap::Command::new("lb").no_binary_name(true)).args_override_self(true);
        ServeArgs::from_arg_matches(&cmd.try_get_matches_from(self.flags.as_slice())?)
    }

    pub async fn start(self) -> anyhow::Result<LbHandle> {
        start(self.serve_args()?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_flags_override_and_auth_defaults_to_none() {
        let args = TestLb::new("redis://127.0.0.1:1", "p:", "lb-a").partitions(12).partitions(24).serve_args().unwrap();
        assert_eq!(args.topic.partitions, 24);
        assert_eq!(args.redis.key_prefix, "p:");
        assert!(matches!(args.auth, crate::config::AuthMode::None));
        let jwt =
            TestLb::new("redis://127.0.0.1:1", "p:", "lb-a").args(&["--auth", "jwt", "--jwt-secret", "s"]).serve_args();
        assert!(matches!(jwt.unwrap().auth, crate::config::AuthMode::Jwt));
    }
}

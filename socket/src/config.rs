//! Settings of a socket node.

use clap::Parser;
use rtc_core::config::{RedisArgs, TopicArgs};

/// rtc socket node.
#[derive(Debug, Clone, Parser)]
#[command(name = "socket", version, about)]
pub struct Config {
    /// WebSocket listen address (`GET /ws?token=…`).
    #[arg(long, env = "RTC_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Admin listen address: metrics, probes, drain.
    #[arg(long, env = "RTC_ADMIN_LISTEN", default_value = "127.0.0.1:9080")]
    pub admin_listen: String,
    /// This node's id (the pod name on Kubernetes).
    #[arg(long, env = "RTC_NODE_ID", default_value = "socket-0")]
    pub node_id: String,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub topic: TopicArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_has_an_env_var() {
        assert_eq!(
            rtc_core::config::flags_without_env(&Config::command()),
            Vec::<String>::new()
        );
    }
}

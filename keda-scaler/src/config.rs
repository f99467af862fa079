//! Settings of the KEDA external scaler.

use clap::Parser;
use rtc_core::config::RedisArgs;

/// rtc KEDA external scaler.
#[derive(Debug, Clone, Parser)]
#[command(name = "keda-scaler", version, about)]
pub struct Config {
    /// gRPC listen address (KEDA's `externalscaler.ExternalScaler`).
    #[arg(long, env = "RTC_LISTEN", default_value = "127.0.0.1:9090")]
    pub listen: String,
    /// Admin listen address: metrics.
    #[arg(long, env = "RTC_ADMIN_LISTEN", default_value = "127.0.0.1:9091")]
    pub admin_listen: String,
    #[command(flatten)]
    pub redis: RedisArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_has_an_env_var() {
        assert_eq!(rtc_core::config::flags_without_env(&Config::command()), Vec::<String>::new());
    }
}

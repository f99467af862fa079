//! Settings of a socket node, parsed in one place. Every setting is a flag
//! with an `RTC_<NAME>` environment variable and a default that works on one
//! machine.

use clap::Parser;
use rtc_core::config::{LivenessArgs, RedisArgs, TopicArgs};

/// rtc socket node: WebSocket sessions for the users of the Kafka partitions
/// this node owns.
#[derive(Debug, Clone, Parser)]
#[command(name = "socket", version, about, args_override_self = true)]
pub struct Config {
    /// WebSocket listen address (`GET /ws?token=…`).
    #[arg(long, env = "RTC_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Admin listen address: `/metrics`, `/livez`, `/readyz`, `POST /drain`.
    #[arg(long, env = "RTC_ADMIN_LISTEN", default_value = "127.0.0.1:9080")]
    pub admin_listen: String,
    #[command(flatten)]
    pub backlog: rtc_core::listen::ListenArgs,
    /// This node's id (the pod name on Kubernetes).
    #[arg(long, env = "RTC_NODE_ID", default_value = "socket-0")]
    pub node_id: String,
    /// URL clients are sent to; defaults to `ws://<bound listen address>/ws`.
    #[arg(long, env = "RTC_ADVERTISED_URL")]
    pub advertised_url: Option<String>,
    /// Sessions this node is sized for; more are refused.
    #[arg(long, env = "RTC_CAPACITY", default_value_t = 20_000)]
    pub capacity: u64,
    /// Bearer token `POST /drain` on the admin port takes. Unset: draining
    /// over HTTP is off (SIGTERM drains).
    #[arg(long, env = "RTC_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Shared secret of the connect tokens (the load balancer signs them).
    #[arg(long, env = "RTC_TOKEN_SECRET", default_value = "rtc-dev-secret", hide_default_value = true)]
    pub token_secret: String,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub topic: TopicArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub liveness: LivenessArgs,
    #[command(flatten)]
    pub timing: Timing,
    #[command(flatten)]
    pub limits: Limits,
}

#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers. Unset: an embedded Kafka (librdkafka's mock
    /// cluster) is started in this process.
    #[arg(long, env = "RTC_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Use the embedded Kafka even if brokers are configured.
    #[arg(long, env = "RTC_EMBEDDED_KAFKA")]
    pub embedded_kafka: bool,
    /// Consumer group under which offsets are committed (shared by all
    /// socket nodes: each partition has one owner at a time).
    #[arg(long, env = "RTC_KAFKA_GROUP", default_value = "rtc-socket")]
    pub kafka_group: String,
    /// How long a fetch may wait at the broker for records (librdkafka
    /// `fetch.wait.max.ms`). The broker answers as soon as a record is
    /// there; this bounds the polling of idle partitions.
    #[arg(long, env = "RTC_KAFKA_FETCH_WAIT_MS", default_value_t = 10)]
    pub kafka_fetch_wait_ms: u64,
}

impl KafkaArgs {
    pub fn embedded(&self) -> bool {
        self.embedded_kafka || self.kafka_brokers.is_none()
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct Timing {
    /// Polling period of the assignment (pub/sub is the fast path).
    #[arg(long, env = "RTC_ASSIGNMENT_POLL_MS", default_value_t = 1000)]
    pub assignment_poll_ms: u64,
    /// WebSocket ping period.
    #[arg(long, env = "RTC_PING_INTERVAL_MS", default_value_t = 15_000)]
    pub ping_interval_ms: u64,
    /// A session that sends nothing (not even a pong) this long is closed.
    #[arg(long, env = "RTC_IDLE_TIMEOUT_MS", default_value_t = 45_000)]
    pub idle_timeout_ms: u64,
    /// Draining spreads the remaining disconnects over this window.
    #[arg(long, env = "RTC_DRAIN_WINDOW_MS", default_value_t = 10_000)]
    pub drain_window_ms: u64,
    /// On SIGTERM: drain, and exit at the latest after this long.
    #[arg(long, env = "RTC_SHUTDOWN_DEADLINE_MS", default_value_t = 30_000)]
    pub shutdown_deadline_ms: u64,
    /// Disconnects per second across the node when its users must move (a
    /// hand-off, a drain): one schedule for every partition it loses, so
    /// the nodes they go to are not flooded. When k nodes give partitions
    /// to the same node in one epoch (a scale-out), each gives it users at
    /// 1/k of this.
    #[arg(long, env = "RTC_HANDOFF_RATE", default_value_t = 1_000)]
    pub handoff_rate: u64,
    /// Upper bound of the random `retry_after_ms` sent with a disconnect.
    #[arg(long, env = "RTC_RETRY_JITTER_MS", default_value_t = 200)]
    pub retry_jitter_ms: u64,
    /// How long a moved-away partition waits for its sessions to close
    /// before its offset is committed anyway.
    #[arg(long, env = "RTC_HANDOFF_TIMEOUT_MS", default_value_t = 3_000)]
    pub handoff_timeout_ms: u64,
    /// A gained partition starts consuming once its old owner acknowledged
    /// the epoch, or after this long at the latest.
    #[arg(long, env = "RTC_PEER_ACK_TIMEOUT_MS", default_value_t = 10_000)]
    pub peer_ack_timeout_ms: u64,
    /// Committed offsets are advanced this often while partitions are owned.
    #[arg(long, env = "RTC_COMMIT_INTERVAL_MS", default_value_t = 1_000)]
    pub commit_interval_ms: u64,
    /// Live messages delivered older than this are left out of the delivery
    /// latency that scaling reads (a partition catching up is not a slow
    /// node), and counted in `rtc_socket_messages_expired_total`.
    #[arg(long, env = "RTC_MAX_MESSAGE_AGE_MS", default_value_t = 120_000)]
    pub max_message_age_ms: u64,
    /// How long a user's recent messages are cached in memory for resumes
    /// (the log serves any gap the cache does not hold).
    #[arg(long, env = "RTC_RESUME_TTL_MS", default_value_t = 60_000)]
    pub resume_ttl_ms: u64,
    /// Every write to a client has this deadline; a client that does not
    /// take a frame in time is closed as `slow` (it resumes from its last id).
    #[arg(long, env = "RTC_WRITE_TIMEOUT_MS", default_value_t = 5_000)]
    pub write_timeout_ms: u64,
    /// A session opened without `last_id` holds live messages this long for
    /// a `resume` as the client's first frame (the older way to resume).
    #[arg(long, env = "RTC_RESUME_FRAME_WAIT_MS", default_value_t = 100)]
    pub resume_frame_wait_ms: u64,
    /// Resumers of one partition arriving within this window share one read
    /// of its log.
    #[arg(long, env = "RTC_RESUME_GATHER_MS", default_value_t = 20)]
    pub resume_gather_ms: u64,
    /// A log read for resumers that makes no progress this long gives up:
    /// their sessions end with `disconnect{reason:unavailable}` and the
    /// clients resume again from the same id.
    #[arg(long, env = "RTC_RESUME_STALL_TIMEOUT_MS", default_value_t = 5_000)]
    pub resume_stall_timeout_ms: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Largest client frame accepted; larger ones get `error{too_large}`.
    #[arg(long, env = "RTC_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,
    /// Messages queued per session before it counts as slow and is closed.
    #[arg(long, env = "RTC_SESSION_QUEUE", default_value_t = 256)]
    pub session_queue: usize,
    /// Recent messages cached per user for resumes.
    #[arg(long, env = "RTC_RESUME_BUFFER", default_value_t = 128)]
    pub resume_buffer: usize,
    /// Bytes of records this node holds in memory at most, cached for
    /// resumes and queued for sessions. Past it, caches are dropped and the
    /// sessions that would exceed it are closed as `slow`; they resume from
    /// the log.
    #[arg(long, env = "RTC_MEMORY_BUDGET_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub memory_budget_bytes: usize,
    /// Most records a resume may need read from the log; a larger gap is
    /// answered `resumed{recovered:false, reason:too_far_behind}`.
    #[arg(long, env = "RTC_RESUME_MAX_RECORDS", default_value_t = 100_000)]
    pub resume_max_records: u64,
    /// `send`s one session may make per second (a burst of as many is
    /// allowed); more get `error{rate_limited}` and are not produced.
    #[arg(long, env = "RTC_SEND_RATE", default_value_t = 100)]
    pub send_rate: u32,
    /// Bytes of `send` frames one session may make per second (a burst of
    /// as many, and at least one largest frame, is allowed).
    #[arg(long, env = "RTC_SEND_BYTES_RATE", default_value_t = 1024 * 1024)]
    pub send_bytes_rate: u32,
    /// `send`s awaiting the broker's ack per session; reading pauses beyond.
    #[arg(long, env = "RTC_MAX_INFLIGHT_SENDS", default_value_t = 64)]
    pub max_inflight_sends: usize,
    /// tungstenite's read buffer per session (bytes), held for the
    /// session's life. 0: none while idle; the socket is read through a
    /// stack buffer and only unread bytes are kept (see `upgrade`).
    #[arg(long, env = "RTC_WS_READ_BUFFER", default_value_t = 0)]
    pub ws_read_buffer: usize,
}

impl Config {
    /// Parses flags and environment (the one place configuration is read).
    pub fn from_environment() -> Self {
        Self::parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::time::Duration;

    #[test]
    fn every_flag_has_an_env_var() {
        assert_eq!(rtc_core::config::flags_without_env(&Config::command()), Vec::<String>::new());
    }

    #[test]
    fn defaults_work_locally_with_embedded_kafka() {
        let c = Config::try_parse_from(["socket"]).unwrap();
        assert!(c.kafka.embedded());
        assert_eq!(c.topic.partitions, 360);
        assert_eq!(c.liveness.heartbeat_interval(), Duration::from_secs(1));
        let c = Config::try_parse_from(["socket", "--kafka-brokers", "127.0.0.1:9092"]).unwrap();
        assert!(!c.kafka.embedded());
    }
}

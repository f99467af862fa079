//! `rtc-bench`: the load tools behind `scripts/bench-socket`.
//!
//! - `kafka`: an embedded Kafka (librdkafka's mock cluster) in a process of
//!   its own, so the broker's memory and CPU are not the node's;
//! - `assign`: a v1 assignment giving every partition to one ready node;
//! - `clients`: a fleet of WebSocket sessions from one local source address,
//!   optionally measuring end-to-end latency of the messages they receive;
//! - `produce`: a paced Kafka producer to random users;
//! - `heartbeats`: a fleet of fake socket nodes' heartbeats;
//! - `failover`: load-balancer failover times over repeated leader kills;
//! - `resume-storm`: users on `rtc-client` moved by a rebalance resume from
//!   lagging positions; resume times, loss and duplicates.
//!
//! Every tool is bounded in count and time, and prints its figures as one
//! JSON line on stdout (progress goes to stderr).
#![allow(clippy::disallowed_types)] // measures real processes and networks: std's wall-clock Instant on purpose

use std::time::Duration;

use clap::{Parser, Subcommand};

mod clients;
mod lb;
mod peers;
mod produce;
mod storm;

#[derive(Debug, Parser)]
#[command(name = "rtc-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Starts an embedded Kafka, prints its bootstrap address (one line) and
    /// holds it until SIGTERM or Ctrl-C.
    Kafka(KafkaArgs),
    /// Creates the topic on a real broker (the embedded one makes its own).
    CreateTopic(CreateTopicArgs),
    /// Writes an assignment where one ready node owns every partition, and
    /// publishes its epoch.
    Assign(AssignArgs),
    /// Opens WebSocket sessions from one source address and holds them.
    Clients(clients::ClientsArgs),
    /// Produces messages at a fixed rate to random users.
    Produce(produce::ProduceArgs),
    /// Writes heartbeats of a fleet of fake socket nodes.
    Heartbeats(lb::HeartbeatsArgs),
    /// Times load-balancer failovers: kill the leader, wait for the new
    /// leader's first fenced write.
    Failover(lb::FailoverArgs),
    /// Users moved by a rebalance resume from positions 1–10 s behind.
    ResumeStorm(storm::StormArgs),
}

#[derive(Debug, clap::Args)]
struct KafkaArgs {
    /// Topic to create.
    #[arg(long, env = "RTC_BENCH_TOPIC", default_value = rtc_core::config::DEFAULT_TOPIC)]
    topic: String,
    /// Its partition count.
    #[arg(long, env = "RTC_BENCH_PARTITIONS", default_value_t = rtc_core::config::DEFAULT_PARTITIONS)]
    partitions: u32,
}

#[derive(Debug, clap::Args)]
struct CreateTopicArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "RTC_BENCH_BROKERS")]
    brokers: String,
    #[arg(long, env = "RTC_BENCH_TOPIC", default_value = rtc_core::config::DEFAULT_TOPIC)]
    topic: String,
    #[arg(long, env = "RTC_BENCH_PARTITIONS", default_value_t = rtc_core::config::DEFAULT_PARTITIONS)]
    partitions: u32,
}

#[derive(Debug, clap::Args)]
struct AssignArgs {
    #[arg(long, env = "RTC_BENCH_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[arg(long, env = "RTC_BENCH_KEY_PREFIX", default_value = rtc_core::config::DEFAULT_KEY_PREFIX)]
    key_prefix: String,
    #[arg(long, env = "RTC_BENCH_PARTITIONS", default_value_t = rtc_core::config::DEFAULT_PARTITIONS)]
    partitions: u32,
    /// The node that owns every partition.
    #[arg(long, env = "RTC_BENCH_NODE_ID")]
    node_id: String,
    /// Its WebSocket URL (`ws://host:port/ws`).
    #[arg(long, env = "RTC_BENCH_URL")]
    url: String,
    /// Assignment epoch.
    #[arg(long, env = "RTC_BENCH_EPOCH", default_value_t = 1)]
    epoch: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Kafka(args) => runtime(1)?.block_on(kafka(args)),
        Command::CreateTopic(args) => runtime(1)?.block_on(create_topic(args)),
        Command::Assign(args) => runtime(1)?.block_on(assign(args)),
        Command::Clients(args) => {
            let threads = args.threads;
            runtime(threads)?.block_on(clients::run(args))
        }
        Command::Produce(args) => runtime(1)?.block_on(produce::run(args)),
        Command::Heartbeats(args) => runtime(1)?.block_on(lb::heartbeats(args)),
        Command::Failover(args) => runtime(1)?.block_on(lb::failover(args)),
        Command::ResumeStorm(args) => runtime(2)?.block_on(storm::run(args)),
    }
}

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
}

async fn kafka(args: KafkaArgs) -> anyhow::Result<()> {
    let kafka = rtc_socket::kafka::EmbeddedKafka::start(&args.topic, args.partitions)?;
    println!("{}", kafka.bootstrap_servers());
    use std::io::Write as _;
    std::io::stdout().flush()?;
    stop_requested().await;
    drop(kafka);
    Ok(())
}

async fn create_topic(args: CreateTopicArgs) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &args.brokers).create()?;
    let topic = NewTopic::new(&args.topic, args.partitions as i32, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics([&topic], &options).await? {
        result.map_err(|(name, code)| anyhow::anyhow!("creating topic {name}: {code}"))?;
    }
    println!("{}", serde_json::json!({"created": args.topic, "partitions": args.partitions}));
    Ok(())
}

async fn assign(args: AssignArgs) -> anyhow::Result<()> {
    use redis::AsyncCommands;
    use rtc_core::{Assignment, AssignmentNode, Document, NodeState};
    let assignment = Assignment {
        v: 1,
        epoch: args.epoch,
        leader_epoch: 1,
        partitions: args.partitions,
        nodes: vec![AssignmentNode { id: args.node_id.clone(), url: args.url.clone(), state: NodeState::Ready }],
        owners: vec![Some(0); args.partitions as usize],
    };
    assignment.validate()?;
    let keys = rtc_core::Keys::new(args.key_prefix);
    let client = redis::Client::open(args.redis_url.as_str())?;
    let mut conn = tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_async_connection()).await??;
    let _: () = conn.set(keys.assignment(), assignment.to_json()).await?;
    let receivers: i64 = conn.publish(keys.assignment_events(), args.epoch).await?;
    println!(
        "{}",
        serde_json::json!({
            "assigned": args.node_id, "epoch": args.epoch, "partitions": args.partitions, "subscribers": receivers,
        })
    );
    Ok(())
}

/// SIGTERM or Ctrl-C.
pub(crate) async fn stop_requested() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub(crate) fn now_ms() -> i64 {
    rtc_socket::kafka::now_ms()
}

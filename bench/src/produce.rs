//! A paced producer: `--rate` messages per second for `--secs` seconds, each
//! to a random user, keyed by the user (Java's partitioner, as the node's
//! own producer). Sends are enqueued without waiting (`send_result`); the
//! delivery reports are counted by a task of their own, and the run ends
//! once every report arrived (bounded).

use std::time::{Duration, Instant};

use rand::Rng;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc;

#[derive(Debug, Clone, clap::Args)]
pub struct ProduceArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "RTC_BENCH_BROKERS")]
    pub brokers: String,
    #[arg(long, env = "RTC_BENCH_TOPIC", default_value = rtc_core::config::DEFAULT_TOPIC)]
    pub topic: String,
    /// Expected partition count of the topic (checked before producing).
    #[arg(long, env = "RTC_BENCH_PARTITIONS", default_value_t = rtc_core::config::DEFAULT_PARTITIONS)]
    pub partitions: u32,
    /// Messages per second, aggregate.
    #[arg(long, env = "RTC_BENCH_RATE")]
    pub rate: u64,
    /// Seconds to produce for.
    #[arg(long, env = "RTC_BENCH_PRODUCE_SECS")]
    pub secs: u64,
    /// Recipients are `<prefix><first-user>` … `<prefix><first-user + users − 1>`.
    #[arg(long, env = "RTC_BENCH_USERS")]
    pub users: u64,
    #[arg(long, env = "RTC_BENCH_FIRST_USER", default_value_t = 0)]
    pub first_user: u64,
    #[arg(long, env = "RTC_BENCH_USER_PREFIX", default_value = "user-")]
    pub user_prefix: String,
    /// Size of each message body in bytes.
    #[arg(long, env = "RTC_BENCH_BODY_BYTES", default_value_t = 64)]
    pub body_bytes: usize,
    /// Pacing period: the messages due are enqueued this often.
    #[arg(long, env = "RTC_BENCH_TICK_MS", default_value_t = 10)]
    pub tick_ms: u64,
    /// librdkafka `linger.ms` (part of the end-to-end latency).
    #[arg(long, env = "RTC_BENCH_LINGER_MS", default_value_t = 1)]
    pub linger_ms: u64,
    /// Most records in one produce batch (librdkafka `batch.num.messages`);
    /// 1 writes each record as a batch of its own, as a slow producer does.
    #[arg(long, env = "RTC_BENCH_BATCH_RECORDS", default_value_t = 10_000)]
    pub batch_records: u32,
    /// Bound on waiting for the delivery reports after the last send.
    #[arg(long, env = "RTC_BENCH_ACK_TIMEOUT_SECS", default_value_t = 60)]
    pub ack_timeout_secs: u64,
}

#[derive(Debug, Default)]
struct Acks {
    acked: u64,
    failed: u64,
    last_ack_ms: i64,
}

pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.users > 0, "--users must be at least 1");
    anyhow::ensure!(args.rate > 0, "--rate must be at least 1");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", args.linger_ms.to_string())
        .set("queue.buffering.max.messages", "2000000")
        .set("batch.num.messages", args.batch_records.max(1).to_string())
        .set("message.timeout.ms", "60000")
        .create()?;
    // Connect and learn the topic before the clock starts.
    let metadata = {
        let (producer, topic) = (producer.clone(), args.topic.clone());
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(Some(&topic), Duration::from_secs(10)))
            .await??
    };
    let found = metadata.topics().iter().find(|t| t.name() == args.topic).map_or(0, |t| t.partitions().len());
    anyhow::ensure!(
        found == args.partitions as usize,
        "topic {} has {found} partitions, expected {}",
        args.topic,
        args.partitions
    );

    let (reports_tx, mut reports_rx) = mpsc::unbounded_channel::<DeliveryFuture>();
    let acker = tokio::spawn(async move {
        let mut acks = Acks::default();
        while let Some(report) = reports_rx.recv().await {
            match report.await {
                Ok(Ok(_)) => acks.acked += 1,
                _ => acks.failed += 1,
            }
            acks.last_ack_ms = crate::now_ms();
        }
        acks
    });

    let total = args.rate.saturating_mul(args.secs);
    let padding = "x".repeat(args.body_bytes);
    let mut rng = rand::rng();
    let (mut sent, mut send_errors, mut queue_full) = (0u64, 0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(args.tick_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Bounded even if the producer cannot keep up.
    let give_up_after = Duration::from_secs(args.secs * 2 + 10);
    let start_ms = crate::now_ms();
    let start = Instant::now();
    let mut last_send = start;
    'pace: while sent < total {
        tick.tick().await;
        if start.elapsed() > give_up_after {
            break;
        }
        let due = ((start.elapsed().as_secs_f64() * args.rate as f64) as u64).min(total);
        while sent < due {
            let user = format!("{}{}", args.user_prefix, args.first_user + rng.random_range(0..args.users));
            let mut body = format!("{sent}:");
            body.push_str(&padding[..args.body_bytes.saturating_sub(body.len())]);
            let record = FutureRecord::to(&args.topic).key(&user).payload(&body);
            match producer.send_result(record) {
                Ok(report) => {
                    sent += 1;
                    let _ = reports_tx.send(report);
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // Catch up on the next tick.
                    queue_full += 1;
                    continue 'pace;
                }
                Err((e, _)) => {
                    send_errors += 1;
                    if send_errors > 1000 {
                        anyhow::bail!("producing fails: {e}");
                    }
                    continue 'pace;
                }
            }
        }
        last_send = Instant::now();
    }
    let produce_secs = last_send.duration_since(start).as_secs_f64();
    let end_ms = crate::now_ms();
    drop(reports_tx);
    let acks = match tokio::time::timeout(Duration::from_secs(args.ack_timeout_secs), acker).await {
        Ok(acks) => acks?,
        Err(_) => Acks { failed: u64::MAX, ..Acks::default() },
    };
    let _ = producer.flush(Duration::from_secs(5));
    println!(
        "{}",
        serde_json::json!({
            "event": "produced",
            "target_rate": args.rate,
            "target_secs": args.secs,
            "target": total,
            "sent": sent,
            "acked": acks.acked,
            "failed": if acks.failed == u64::MAX { None } else { Some(acks.failed) },
            "ack_timeout": acks.failed == u64::MAX,
            "send_errors": send_errors,
            "queue_full": queue_full,
            "produce_secs": (produce_secs * 1000.0).round() / 1000.0,
            "rate": if produce_secs > 0.0 { (sent as f64 / produce_secs).round() } else { 0.0 },
            "start_ms": start_ms,
            "end_ms": end_ms,
            "last_ack_ms": acks.last_ack_ms,
        })
    );
    Ok(())
}

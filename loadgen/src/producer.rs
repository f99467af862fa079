//! The producer: `--rate` messages per second, each to a random online
//! user, through Kafka (key = recipient, Java's partitioner, record
//! timestamp = send time, body = run id + sequence number). Sends are
//! enqueued without waiting (`send_result`); a task of its own collects the
//! delivery reports into the ledger.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// Turns elapsed time into a number of messages due, carrying fractions,
/// and never bursting more than one second's worth after a stall.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: f64,
    last_ms: i64,
    carry: f64,
}

impl Pacer {
    pub fn new(rate: f64, now_ms: i64) -> Self {
        Self { rate: rate.max(0.0), last_ms: now_ms, carry: 0.0 }
    }

    pub fn due(&mut self, now_ms: i64) -> u64 {
        let elapsed = (now_ms - self.last_ms).max(0) as f64 / 1000.0;
        self.last_ms = self.last_ms.max(now_ms);
        self.carry = (self.carry + elapsed * self.rate).min(self.rate.max(1.0));
        let n = self.carry.floor();
        self.carry -= n;
        n as u64
    }
}

/// What the producer did, beside the ledger.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ProducerReport {
    /// Messages due while nobody was online (not produced).
    pub skipped_no_recipient: u64,
    /// Sends the client refused at once (queue full, …).
    pub enqueue_errors: u64,
    /// Delivery reports still missing when the wait for them ended.
    pub ack_wait_timed_out: bool,
}

pub fn create(brokers: &str, ack_timeout_ms: u64) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // Java's default partitioner: the partition the load balancer routes to.
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "2")
        // A produce retried after a lost connection must not write the
        // message twice: the broker dedupes by producer id and sequence.
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", ack_timeout_ms.max(1000).to_string())
        .set("queue.buffering.max.messages", "1000000")
        .create()?)
}

/// Fails clearly when the brokers cannot be reached or the topic is missing.
pub async fn check_topic(producer: &FutureProducer, topic: &str) -> anyhow::Result<usize> {
    let (client, name) = (producer.clone(), topic.to_owned());
    let metadata =
        tokio::task::spawn_blocking(move || client.client().fetch_metadata(Some(&name), Duration::from_secs(10)))
            .await?
            .map_err(|e| anyhow::anyhow!("cannot read Kafka metadata: {e}"))?;
    let partitions =
        metadata.topics().iter().find(|t| t.name() == topic && t.error().is_none()).map_or(0, |t| t.partitions().len());
    anyhow::ensure!(partitions > 0, "topic {topic} does not exist on the brokers");
    Ok(partitions)
}

/// Produces until `stop`, then waits (bounded) for the delivery reports.
pub async fn run(shared: Arc<Shared>, producer: FutureProducer, stop: CancellationToken) -> ProducerReport {
    let config = &shared.config;
    let (reports_tx, mut reports_rx) = mpsc::unbounded_channel::<(u64, DeliveryFuture)>();
    let acker = {
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Some((seq, report)) = reports_rx.recv().await {
                let ok = matches!(report.await, Ok(Ok(_)));
                shared.ledger().acked(seq, ok);
            }
        })
    };

    let mut report = ProducerReport::default();
    let pad = "x".repeat(config.body_bytes);
    let headers = OwnedHeaders::new().insert(Header { key: rtc_core::protocol::FROM_HEADER, value: Some("loadgen") });
    let mut pacer = Pacer::new(config.rate, crate::now_ms());
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = crate::now_ms();
        let due = pacer.due(now);
        for i in 0..due {
            let picked = {
                let mut ledger = shared.ledger();
                ledger.produce(now, rng.random()).map(|(seq, user)| (seq, ledger.user_name(user)))
            };
            let Some((seq, user)) = picked else {
                report.skipped_no_recipient += due - i;
                break;
            };
            let body = crate::ledger::body(&shared.run_id, seq, &user, &pad);
            let record =
                FutureRecord::to(&config.topic).key(&user).payload(&body).timestamp(now).headers(headers.clone());
            match producer.send_result(record) {
                Ok(delivery) => {
                    let _ = reports_tx.send((seq, delivery));
                }
                Err((e, _)) => {
                    report.enqueue_errors += 1;
                    shared.ledger().acked(seq, false);
                    if !matches!(e, KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) {
                        tracing::warn!(error = %e, "producing failed");
                    }
                }
            }
        }
    }
    drop(reports_tx);
    // librdkafka fails every record after `message.timeout.ms`: wait a bit longer.
    let bound = Duration::from_millis(config.ack_timeout_ms.max(1000) + 5000);
    if tokio::time::timeout(bound, acker).await.is_err() {
        report.ack_wait_timed_out = true;
    }
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_keeps_the_rate_with_fractions() {
        let mut p = Pacer::new(50.0, 0);
        // 10 ms ticks: half a message each.
        let total: u64 = (1..=100).map(|i| p.due(i * 10)).sum();
        assert_eq!(total, 50);
        let mut p = Pacer::new(2500.0, 0);
        let total: u64 = (1..=1000).map(|i| p.due(i * 10)).sum();
        assert_eq!(total, 25_000);
    }

    #[test]
    fn a_stall_does_not_burst_more_than_a_second() {
        let mut p = Pacer::new(100.0, 0);
        assert_eq!(p.due(60_000), 100);
        assert_eq!(p.due(60_010), 1);
        // Time going backwards is ignored.
        assert_eq!(p.due(50_000), 0);
        let mut zero = Pacer::new(0.0, 0);
        assert_eq!(zero.due(10_000), 0);
    }
}

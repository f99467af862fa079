//! Kafka at the edges: the embedded broker, the producer for `send`, and the
//! consumer task that fetches exactly the owned partitions and hands each
//! record to the hub.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use rtc_core::protocol::{CLIENT_MSG_ID_HEADER, FROM_HEADER, MessageId, render_message};

use crate::hub::{Delivery, Hub};
use crate::metrics::{InvalidRecord, KafkaFailure, Metrics};

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("Kafka client error: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("topic {topic} has {found} partitions but RTC_PARTITIONS is {expected}: routing would be wrong")]
    PartitionMismatch { topic: String, found: usize, expected: u32 },
    #[error("topic {0} does not exist")]
    MissingTopic(String),
    #[error("the embedded Kafka did not start: {0}")]
    Embedded(String),
}

/// librdkafka's mock cluster, kept alive on a thread of its own (its handle
/// is not `Send`) until this value is dropped.
pub struct EmbeddedKafka {
    bootstrap: String,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EmbeddedKafka {
    /// Starts a one-broker mock cluster with `topic` of `partitions`.
    pub fn start(topic: &str, partitions: u32) -> Result<Self, KafkaSetupError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let topic = topic.to_owned();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                if let Err(e) = cluster.create_topic(&topic, partitions as i32, 1) {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Blocks until the sender is dropped.
                let _ = stop_rx.recv();
                drop(cluster);
            })
            .map_err(|e| KafkaSetupError::Embedded(e.to_string()))?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| KafkaSetupError::Embedded("its thread exited".into()))?
            .map_err(KafkaSetupError::Embedded)?;
        Ok(Self { bootstrap, stop: Some(stop_tx), thread: Some(thread) })
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Keeps the consumer lag librdkafka reports in its statistics.
#[derive(Default)]
pub struct LagContext {
    lag: Mutex<HashMap<i32, i64>>,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        let mut lag = self.lag.lock().unwrap_or_else(|p| p.into_inner());
        lag.clear();
        for topic in statistics.topics.values() {
            for (p, partition) in &topic.partitions {
                if *p >= 0 && partition.consumer_lag >= 0 {
                    lag.insert(*p, partition.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for LagContext {}

pub type PartitionConsumer = StreamConsumer<LagContext>;

pub fn create_consumer(
    brokers: &str,
    group: &str,
    fetch_wait: Duration,
    stats_interval: Duration,
) -> Result<PartitionConsumer, KafkaSetupError> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Every start offset is explicit (see `start_offsets`); a position
        // lost to retention restarts at the oldest record kept.
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", fetch_wait.as_millis().to_string())
        .set("statistics.interval.ms", stats_interval.as_millis().max(100).to_string())
        .create_with_context(LagContext::default())?)
}

pub fn create_producer(brokers: &str) -> Result<FutureProducer, KafkaSetupError> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // Java's default partitioner, so every producer agrees on a user's
        // partition.
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "1")
        // A produce retried after a lost broker connection must not write a
        // user's message twice (under two ids, which no dedupe catches).
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "10000")
        .create()?)
}

/// Refuses to run against a topic with another partition count.
pub async fn check_topic(consumer: Arc<PartitionConsumer>, topic: &str, expected: u32) -> Result<(), KafkaSetupError> {
    let name = topic.to_owned();
    let metadata = tokio::task::spawn_blocking(move || consumer.fetch_metadata(Some(&name), Duration::from_secs(10)))
        .await
        .map_err(|e| KafkaSetupError::Embedded(e.to_string()))??;
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .ok_or_else(|| KafkaSetupError::MissingTopic(topic.to_owned()))?;
    if found == 0 {
        return Err(KafkaSetupError::MissingTopic(topic.to_owned()));
    }
    if found != expected as usize {
        return Err(KafkaSetupError::PartitionMismatch { topic: topic.to_owned(), found, expected });
    }
    Ok(())
}

/// Produces a client's `send` to the recipient's partition.
pub fn produce(
    producer: &FutureProducer,
    topic: &str,
    to: &str,
    body: &str,
    from: &str,
    client_msg_id: Option<&str>,
) -> Result<DeliveryFuture, rdkafka::error::KafkaError> {
    let mut headers = OwnedHeaders::new().insert(Header { key: FROM_HEADER, value: Some(from) });
    if let Some(id) = client_msg_id {
        headers = headers.insert(Header { key: CLIENT_MSG_ID_HEADER, value: Some(id) });
    }
    let record = FutureRecord::to(topic).key(to).payload(body).headers(headers);
    producer.send_result(record).map_err(|(e, _)| e)
}

/// Orders to the consumer task, applied between records so a released
/// partition is never dispatched after its release was acknowledged.
#[derive(Debug)]
pub enum Command {
    /// Start fetching at this offset (see [`start_offsets`]).
    Start(u32, i64),
    /// Stop fetching; the reply means no record of it is dispatched after.
    Release(u32, oneshot::Sender<()>),
}

/// Fetches the owned partitions and dispatches their records.
pub struct ConsumerTask {
    pub consumer: Arc<PartitionConsumer>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub topic: String,
    pub commit_interval: Duration,
}

impl ConsumerTask {
    pub async fn run(self, mut commands: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        let mut owned: HashSet<u32> = HashSet::new();
        let mut committed: HashMap<u32, i64> = HashMap::new();
        let mut commit_tick = tokio::time::interval(self.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                command = commands.recv() => match command {
                    Some(Command::Start(p, offset)) => {
                        if owned.insert(p) {
                            self.hub.start_partition(p, offset);
                            self.assign(p, Some(offset));
                        }
                    }
                    Some(Command::Release(p, reply)) => {
                        if owned.remove(&p) {
                            self.assign(p, None);
                        }
                        committed.remove(&p);
                        let _ = reply.send(());
                    }
                    None => break,
                },
                message = self.consumer.recv(), if !owned.is_empty() => match message {
                    Ok(m) => self.dispatch(&m, &owned),
                    Err(e) => {
                        self.metrics.kafka_errors.increment(KafkaFailure::Consume);
                        tracing::warn!(error = %e, "kafka consume error");
                    }
                },
                _ = commit_tick.tick() => self.commit_progress(&owned, &mut committed),
            }
        }
        // Last commit of what was delivered, so the next owner resumes there.
        self.commit_progress(&owned, &mut committed);
    }

    /// Starts fetching `partition` at `start`, or stops fetching it.
    fn assign(&self, partition: u32, start: Option<i64>) {
        let mut tpl = TopicPartitionList::new();
        let result = if let Some(offset) = start {
            tpl.add_partition_offset(&self.topic, partition as i32, Offset::Offset(offset))
                .and_then(|()| self.consumer.incremental_assign(&tpl))
        } else {
            tpl.add_partition(&self.topic, partition as i32);
            self.consumer.incremental_unassign(&tpl)
        };
        match result {
            Ok(()) => tracing::info!(partition, ?start, "partition fetch changed"),
            Err(e) => {
                self.metrics.kafka_errors.increment(KafkaFailure::Assign);
                tracing::error!(partition, ?start, error = %e, "could not change partition fetch");
            }
        }
    }

    fn dispatch(&self, m: &rdkafka::message::BorrowedMessage<'_>, owned: &HashSet<u32>) {
        let partition = m.partition() as u32;
        if !owned.contains(&partition) {
            return; // fetched before the release; the next owner has it
        }
        self.metrics.consumed.increment(1);
        self.metrics.window.consumed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some((user, delivery)) = delivery_of(m) else {
            self.metrics.invalid_records.increment(InvalidRecord::Key);
            self.hub.skipped(partition, m.offset());
            return;
        };
        self.hub.dispatch(user, Arc::new(delivery));
    }

    /// Commits each owned partition's position when it moved: where the
    /// next owner starts live consumption (the log serves every gap).
    fn commit_progress(&self, owned: &HashSet<u32>, committed: &mut HashMap<u32, i64>) {
        let mut tpl = TopicPartitionList::new();
        for p in owned {
            if let Some(point) = self.hub.position(*p)
                && committed.get(p) != Some(&point)
                && tpl.add_partition_offset(&self.topic, *p as i32, Offset::Offset(point)).is_ok()
            {
                committed.insert(*p, point);
            }
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, CommitMode::Async)
        {
            self.metrics.kafka_errors.increment(KafkaFailure::Commit);
            tracing::warn!(error = %e, "periodic commit failed");
        }
    }
}

/// The recipient and the rendered `message` frame of a record; `None` when
/// its key is not a valid user id (it goes to nobody).
pub fn delivery_of<'m>(m: &'m rdkafka::message::BorrowedMessage<'_>) -> Option<(&'m str, Delivery)> {
    let user = m.key().and_then(|k| std::str::from_utf8(k).ok())?;
    rtc_core::ids::validate_user_id(user).ok()?;
    let (partition, offset) = (m.partition() as u32, m.offset());
    let ts_ms = m.timestamp().to_millis().unwrap_or_else(now_ms);
    let body = String::from_utf8_lossy(m.payload().unwrap_or_default());
    let header = |key: &str| {
        m.headers()
            .and_then(|h| h.iter().find(|h| h.key == key))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    };
    let (from, client_msg_id) = (header(FROM_HEADER), header(CLIENT_MSG_ID_HEADER));
    let frame = render_message(MessageId::new(partition, offset), from, &body, ts_ms, client_msg_id);
    Some((user, Delivery { partition, offset, ts_ms, frame: frame.into(), buffered_at: tokio::time::Instant::now() }))
}

/// Where gained partitions start live consumption: the offset each one's
/// last owner committed, or the log end if no node ever committed one (nobody
/// was served from it yet; a client resuming from before replays the log).
pub async fn start_offsets(
    consumer: Arc<PartitionConsumer>,
    topic: &str,
    partitions: Vec<u32>,
) -> Result<Vec<(u32, i64)>, KafkaError> {
    let committed = {
        let (consumer, topic) = (consumer.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for p in &partitions {
                tpl.add_partition(&topic, *p as i32);
            }
            // One request for every partition: a scale-out gains hundreds.
            let committed = consumer.committed_offsets(tpl, Duration::from_secs(5))?;
            partitions
                .into_iter()
                .map(|p| match committed.find_partition(&topic, p as i32) {
                    // A partition's own error (not "never committed") is retried.
                    Some(e) => e.error().map(|()| (p, e.offset())),
                    None => Ok((p, Offset::Invalid)),
                })
                .collect::<Result<Vec<_>, KafkaError>>()
        })
        .await
        .map_err(|_| KafkaError::Canceled)??
    };
    // Never committed: from the log end, read for all such partitions at
    // once (a new topic has hundreds).
    let mut ends = tokio::task::JoinSet::new();
    let mut starts = Vec::with_capacity(committed.len());
    for (p, offset) in committed {
        match offset {
            Offset::Offset(o) => starts.push((p, o)),
            _ => {
                let (consumer, topic) = (consumer.clone(), topic.to_owned());
                ends.spawn_blocking(move || {
                    consumer.fetch_watermarks(&topic, p as i32, Duration::from_secs(5)).map(|(_, high)| (p, high))
                });
            }
        }
    }
    while let Some(end) = ends.join_next().await {
        starts.push(end.map_err(|_| KafkaError::Canceled)??);
    }
    Ok(starts)
}

/// Commits `offset` for `partition` and waits for the broker's answer.
pub async fn commit_sync(
    consumer: Arc<PartitionConsumer>,
    topic: &str,
    partition: u32,
    offset: i64,
) -> Result<(), rdkafka::error::KafkaError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition as i32, Offset::Offset(offset))?;
    tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
        .await
        .map_err(|_| rdkafka::error::KafkaError::Canceled)?
}

/// Consumer lag summed over `partitions`, from the latest statistics.
pub fn lag_of(consumer: &PartitionConsumer, partitions: impl IntoIterator<Item = u32>) -> u64 {
    let lag = consumer.context().lag.lock().unwrap_or_else(|p| p.into_inner());
    partitions.into_iter().filter_map(|p| lag.get(&(p as i32))).map(|l| *l as u64).sum()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

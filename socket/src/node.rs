//! A socket node: its shared state, and how it starts and stops.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::producer::FutureProducer;
use rtc_core::{NodeState, TokenSigner};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use rtc_core::protocol::CloseReason;

use crate::catchup::{CatchUp, CatchUpLimits, CatchUpTask};
use crate::config::Config;
use crate::hub::{Hub, HubLimits};
use crate::kafka::{ConsumerTask, EmbeddedKafka, PartitionConsumer};
use crate::metrics::Metrics;
use crate::ownership::{OwnershipView, Reconciler};
use crate::peers::Peers;
use crate::takeover::Takeovers;

/// State shared by the node's tasks and request handlers.
pub struct NodeShared {
    pub config: Config,
    pub node_id: String,
    pub advertised_url: String,
    pub signer: TokenSigner,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub producer: FutureProducer,
    pub consumer: Arc<PartitionConsumer>,
    /// Replays from the log for resuming sessions.
    pub catchup: CatchUp,
    pub peers: Peers,
    pub heartbeat_now: Notify,
    /// Partitions recently taken over from other nodes (reconnect time).
    pub takeovers: Takeovers,
    pub fetch_now: Arc<Notify>,
    lifecycle: AtomicU8,
    ownership: RwLock<Arc<OwnershipView>>,
    ownership_epoch: watch::Sender<u64>,
    acked: AtomicU64,
}

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

impl NodeShared {
    pub fn state(&self) -> NodeState {
        match self.lifecycle.load(Ordering::Acquire) {
            STARTING => NodeState::Starting,
            READY => NodeState::Ready,
            _ => NodeState::Draining,
        }
    }

    pub fn is_draining(&self) -> bool {
        self.lifecycle.load(Ordering::Acquire) == DRAINING
    }

    pub fn ownership(&self) -> Arc<OwnershipView> {
        self.ownership.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_ownership(&self, view: OwnershipView) {
        let epoch = view.epoch;
        *self.ownership.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(view);
        self.ownership_epoch.send_if_modified(|e| std::mem::replace(e, epoch) != epoch);
    }

    /// Waits (bounded) until an assignment of at least `epoch` is applied.
    pub async fn wait_for_epoch(&self, epoch: u64, timeout: Duration) -> bool {
        self.fetch_now.notify_one();
        let mut rx = self.ownership_epoch.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|e| *e >= epoch)).await.is_ok_and(|r| r.is_ok())
    }

    pub fn acked_epoch(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Acknowledges `epoch` in an immediate heartbeat (hand-off step 2).
    pub(crate) fn acknowledge(&self, epoch: u64) {
        if self.acked.fetch_max(epoch, Ordering::AcqRel) < epoch {
            self.metrics.acked_epoch.set(epoch as f64);
            self.heartbeat_now.notify_one();
        }
    }

    /// Starts draining (idempotent): refuse new sessions, report `draining`
    /// at once, and disconnect the remaining sessions paced over the drain
    /// window. Returns true the first time.
    pub fn begin_drain(self: &Arc<Self>) -> bool {
        if self.lifecycle.swap(DRAINING, Ordering::AcqRel) == DRAINING {
            return false;
        }
        self.metrics.draining.set(1.0);
        self.heartbeat_now.notify_one();
        tracing::info!(connections = self.hub.connections(), "draining");
        let node = self.clone();
        tokio::spawn(async move { node.drain_sessions().await });
        true
    }

    /// Drained: draining and no session left.
    pub fn drained(&self) -> bool {
        self.is_draining() && self.hub.connections() == 0
    }

    async fn drain_sessions(&self) {
        let window = Duration::from_millis(self.config.timing.drain_window_ms);
        let start = tokio::time::Instant::now();
        let step = Duration::from_millis(20);
        loop {
            let open: Vec<_> = self.hub.sessions_on(None).into_iter().filter(|s| s.requested().is_none()).collect();
            if open.is_empty() {
                return;
            }
            let left = window.saturating_sub(start.elapsed());
            // Spread what is left evenly over the rest of the window.
            let n = if left <= step {
                open.len()
            } else {
                (open.len() as f64 * step.as_secs_f64() / left.as_secs_f64()).ceil() as usize
            };
            let rate = self.config.timing.handoff_rate;
            crate::ownership::disconnect_paced(self, open.into_iter().take(n).collect(), CloseReason::Drain, rate)
                .await;
            tokio::time::sleep(step).await;
        }
    }
}

/// A running node.
pub struct NodeHandle {
    pub ws_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub shared: Arc<NodeShared>,
    /// Bootstrap servers in use (the embedded cluster's when embedded).
    pub kafka_brokers: String,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    _embedded: Option<EmbeddedKafka>,
}

impl NodeHandle {
    /// Stops the node: sessions get `disconnect{shutdown}`, the consumer
    /// commits what was delivered, background tasks end.
    pub async fn shutdown(mut self) {
        for session in self.shared.hub.sessions_on(None) {
            session.close(crate::hub::CloseCmd { reason: CloseReason::Shutdown, retry_after_ms: 0 });
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.shared.hub.connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), async { while self.tasks.join_next().await.is_some() {} })
            .await;
        self.tasks.abort_all();
    }
}

/// Starts a node: Kafka (embedded or configured), Redis links, listeners,
/// and every background task. Returns once it is ready.
pub async fn start(config: Config) -> anyhow::Result<NodeHandle> {
    rtc_core::ids::validate_node_id(&config.node_id)?;
    let metrics = Arc::new(Metrics::new());
    metrics.capacity.set(config.capacity as f64);
    let timing = &config.timing;
    let hub = Arc::new(Hub::new(
        HubLimits {
            session_queue: config.limits.session_queue,
            resume_buffer: config.limits.resume_buffer,
            resume_ttl: Duration::from_millis(timing.resume_ttl_ms),
        },
        crate::hub::Budget::new(config.limits.memory_budget_bytes),
        metrics.clone(),
    ));

    let embedded = if config.kafka.embedded() {
        let e = EmbeddedKafka::start(&config.topic.topic, config.topic.partitions)?;
        tracing::info!(bootstrap = e.bootstrap_servers(), "embedded Kafka started");
        Some(e)
    } else {
        None
    };
    let brokers = match &embedded {
        Some(e) => e.bootstrap_servers().to_owned(),
        None => config.kafka.kafka_brokers.clone().unwrap_or_default(),
    };
    let consumer =
        Arc::new(crate::kafka::create_consumer(&brokers, &config.kafka.kafka_group, timing.heartbeat_interval())?);
    crate::kafka::check_topic(consumer.clone(), &config.topic.topic, config.topic.partitions).await?;
    let producer = crate::kafka::create_producer(&brokers)?;
    let (catchup, catchup_task) = CatchUpTask::new(
        crate::catchup::create_consumer(&brokers, &config.kafka.kafka_group)?,
        config.topic.topic.clone(),
        metrics.clone(),
        CatchUpLimits {
            max_records: config.limits.resume_max_records,
            gather: Duration::from_millis(timing.resume_gather_ms),
            stall_timeout: Duration::from_millis(timing.resume_stall_timeout_ms.max(10)),
        },
    );

    let redis = redis::Client::open(config.redis.redis_url.as_str())?;
    let keys = config.redis.keys();
    let interval = timing.heartbeat_interval();

    let ws_listener = TcpListener::bind(&config.listen).await?;
    let admin_listener = TcpListener::bind(&config.admin_listen).await?;
    let ws_addr = ws_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let advertised_url = config.advertised_url.clone().unwrap_or_else(|| format!("ws://{ws_addr}/ws"));
    if config.token_secret == "rtc-dev-secret" {
        tracing::warn!("RTC_TOKEN_SECRET is the development default: set a real secret in production");
    }

    let shared = Arc::new(NodeShared {
        node_id: config.node_id.clone(),
        advertised_url,
        signer: TokenSigner::new(config.token_secret.as_bytes()),
        hub: hub.clone(),
        metrics: metrics.clone(),
        producer,
        consumer: consumer.clone(),
        catchup,
        peers: Peers::new(config.node_id.clone(), interval * 3),
        heartbeat_now: Notify::new(),
        takeovers: Takeovers::default(),
        fetch_now: Arc::new(Notify::new()),
        lifecycle: AtomicU8::new(STARTING),
        ownership: RwLock::new(Arc::new(OwnershipView::default())),
        ownership_epoch: watch::Sender::new(0),
        acked: AtomicU64::new(0),
        config: config.clone(),
    });

    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let (commands_tx, commands_rx) = mpsc::channel(1024);
    let (events_tx, events_rx) = mpsc::channel(1024);

    let consumer_task = ConsumerTask {
        consumer,
        hub: hub.clone(),
        metrics: metrics.clone(),
        topic: config.topic.topic.clone(),
        commit_interval: Duration::from_millis(timing.commit_interval_ms.max(10)),
    };
    tasks.spawn(consumer_task.run(commands_rx, shutdown.clone()));
    tasks.spawn(catchup_task.run(shutdown.clone()));
    tasks.spawn(Reconciler::new(shared.clone(), commands_tx, events_tx.clone()).run(events_rx, shutdown.clone()));
    let follower = crate::follower::Follower {
        client: redis.clone(),
        conn: rtc_core::redis_io::connection_manager(&redis, Duration::from_secs(1))?,
        assignment_key: keys.assignment(),
        events_channel: keys.assignment_events(),
        poll: Duration::from_millis(timing.assignment_poll_ms.max(10)),
        metrics: metrics.clone(),
        fetch_now: shared.fetch_now.clone(),
    };
    tasks.spawn(follower.run(events_tx, shutdown.clone()));
    {
        let (node, conn, key, token) = (
            shared.clone(),
            rtc_core::redis_io::connection_manager(&redis, Duration::from_secs(3))?,
            keys.heartbeats(),
            shutdown.clone(),
        );
        tasks.spawn(async move { node.peers.follow(conn, key, &node.metrics, token).await });
    }
    tasks.spawn(crate::heartbeat::run(
        shared.clone(),
        rtc_core::redis_io::connection_manager(&redis, interval)?,
        keys.heartbeats(),
        shutdown.clone(),
    ));
    {
        let (hub, token) = (hub.clone(), shutdown.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            while !token.is_cancelled() {
                tokio::select! { _ = token.cancelled() => {}, _ = tick.tick() => hub.sweep() }
            }
        });
    }
    {
        let (app, token) = (crate::ws::router(shared.clone()), shutdown.clone());
        tasks.spawn(async move {
            let serve = axum::serve(ws_listener, app).with_graceful_shutdown(token.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "websocket server failed");
            }
        });
    }
    {
        let (app, token) = (crate::admin::router(shared.clone()), shutdown.clone());
        tasks.spawn(async move {
            let serve = axum::serve(admin_listener, app).with_graceful_shutdown(token.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "admin server failed");
            }
        });
    }

    shared.lifecycle.store(READY, Ordering::Release);
    shared.heartbeat_now.notify_one();
    tracing::info!(node = %shared.node_id, %ws_addr, %admin_addr, url = %shared.advertised_url, "socket node ready");
    Ok(NodeHandle { ws_addr, admin_addr, shared, kafka_brokers: brokers, shutdown, tasks, _embedded: embedded })
}

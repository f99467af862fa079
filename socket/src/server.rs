//! The one module that knows every other: builds a node's parts, gives
//! each only what it uses, starts the tasks, and stops them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use rtc_core::TokenSigner;
use rtc_core::protocol::CloseReason;
use rtc_core::supervisor::{Supervisor, TaskFailure};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::admin::AdminContext;
use crate::catchup::{CatchUpLimits, CatchUpTask};
use crate::config::Config;
use crate::handoff::{HandoffContext, Reconciler};
use crate::heartbeat::HeartbeatSource;
use crate::hub::{Budget, Hub, HubLimits};
use crate::kafka::{ConsumerTask, EmbeddedKafka};
use crate::lease::NodeLease;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::ownership::Ownership;
use crate::pacing::Pacing;
use crate::peers::Peers;
use crate::session::SessionContext;
use crate::takeover::Takeovers;
use crate::ws::WsContext;

/// A running node.
pub struct NodeHandle {
    pub ws_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub node_id: String,
    pub advertised_url: String,
    pub hub: Arc<Hub>,
    pub ownership: Arc<Ownership>,
    pub lifecycle: Arc<Lifecycle>,
    /// Bootstrap servers in use (the embedded cluster's when embedded).
    pub kafka_brokers: String,
    tasks: Supervisor,
    _embedded: Option<EmbeddedKafka>,
}

impl NodeHandle {
    /// Stops the node: sessions get `disconnect{shutdown}`, the consumer
    /// commits what was delivered, background tasks end.
    pub async fn shutdown(mut self) {
        for session in self.hub.sessions_on(None) {
            session.close_to_move(CloseReason::Shutdown, 0);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.hub.connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.tasks.stop(Duration::from_secs(5)).await;
    }

    /// Waits until a critical task ends early (the process must exit).
    pub async fn failed(&self) -> TaskFailure {
        self.tasks.failed().await
    }

    /// Aborts one critical task, as if it had ended on its own (fault
    /// tests of the supervision).
    #[doc(hidden)]
    pub fn abort_task_for_test(&self, name: &'static str) -> bool {
        self.tasks.abort_for_test(name)
    }
}

/// Starts a node: Kafka (embedded or configured), Redis links, listeners,
/// and every background task. Returns once it is ready.
pub async fn start(config: Config) -> anyhow::Result<NodeHandle> {
    rtc_core::ids::validate_node_id(&config.node_id)?;
    config.liveness.validate().map_err(|e| anyhow::anyhow!("liveness settings: {e}"))?;
    let metrics = Arc::new(Metrics::new());
    metrics.capacity.set(config.capacity as f64);
    let timing = &config.timing;
    let hub = Arc::new(Hub::new(
        HubLimits {
            session_queue: config.limits.session_queue,
            resume_buffer: config.limits.resume_buffer,
            resume_ttl: Duration::from_millis(timing.resume_ttl_ms),
        },
        Budget::new(config.limits.memory_budget_bytes),
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
    let fetch_wait = Duration::from_millis(config.kafka.kafka_fetch_wait_ms);
    let consumer = Arc::new(crate::kafka::create_consumer(
        &brokers,
        &config.kafka.kafka_group,
        fetch_wait,
        config.liveness.heartbeat_interval(),
    )?);
    crate::kafka::check_topic(consumer.clone(), &config.topic.topic, config.topic.partitions).await?;
    let producer = crate::kafka::create_producer(&brokers)?;
    let (catchup, catchup_task) = CatchUpTask::new(
        crate::catchup::create_consumer(&brokers, &config.kafka.kafka_group, fetch_wait)?,
        config.topic.topic.clone(),
        metrics.clone(),
        hub.budget().clone(),
        CatchUpLimits {
            max_records: config.limits.resume_max_records,
            gather: Duration::from_millis(timing.resume_gather_ms),
            stall_timeout: Duration::from_millis(timing.resume_stall_timeout_ms.max(10)),
        },
    );

    let redis = config.redis.client()?;
    let keys = config.redis.keys();
    let interval = config.liveness.heartbeat_interval();
    let lease = Arc::new(NodeLease::new(config.liveness.node_lease()));

    let ws_listener = rtc_core::listen::bind(&config.listen, config.backlog.listen_backlog).await?;
    let admin_listener = TcpListener::bind(&config.admin_listen).await?;
    let ws_addr = ws_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let advertised_url = config.advertised_url.clone().unwrap_or_else(|| format!("ws://{ws_addr}/ws"));
    if config.token_secret == "rtc-dev-secret" {
        tracing::warn!("RTC_TOKEN_SECRET is the development default: set a real secret in production");
    }

    let heartbeat_now = Arc::new(Notify::new());
    let fetch_now = Arc::new(Notify::new());
    let pacing = Pacing::new(timing.handoff_rate, timing.retry_jitter_ms);
    let ownership = Arc::new(Ownership::new(metrics.acked_epoch.clone(), heartbeat_now.clone(), fetch_now.clone()));
    let lifecycle = Arc::new(Lifecycle::new(
        hub.clone(),
        metrics.clone(),
        heartbeat_now.clone(),
        Duration::from_millis(timing.drain_window_ms),
        pacing.clone(),
    ));
    let peers = Arc::new(Peers::new(config.node_id.clone(), config.liveness.dead_after()));
    let takeovers = Arc::new(Takeovers::default());
    let session = Arc::new(SessionContext {
        node_id: config.node_id.clone(),
        topic: config.topic.topic.clone(),
        timing: config.timing.clone(),
        limits: config.limits.clone(),
        hub: hub.clone(),
        metrics: metrics.clone(),
        producer,
        catchup,
        takeovers: takeovers.clone(),
    });
    let handoff = Arc::new(HandoffContext {
        node_id: config.node_id.clone(),
        topic: config.topic.topic.clone(),
        hub: hub.clone(),
        metrics: metrics.clone(),
        consumer: consumer.clone(),
        peers: peers.clone(),
        takeovers,
        ownership: ownership.clone(),
        lifecycle: lifecycle.clone(),
        pacing,
        handoff_timeout: Duration::from_millis(timing.handoff_timeout_ms),
        peer_ack_timeout: Duration::from_millis(timing.peer_ack_timeout_ms),
        lease: lease.clone(),
        fenced_retry_after: config.liveness.reassign_after().saturating_sub(config.liveness.node_lease()),
    });
    let heartbeat = Arc::new(HeartbeatSource {
        node_id: config.node_id.clone(),
        url: advertised_url.clone(),
        capacity: config.capacity,
        interval,
        lifecycle: lifecycle.clone(),
        ownership: ownership.clone(),
        hub: hub.clone(),
        consumer: consumer.clone(),
        metrics: metrics.clone(),
        lease: lease.clone(),
        now: heartbeat_now,
    });
    let ws_app = crate::ws::router(Arc::new(WsContext {
        session,
        signer: TokenSigner::new(config.token_secret.as_bytes()),
        ownership: ownership.clone(),
        lifecycle: lifecycle.clone(),
        capacity: config.capacity,
        partitions: config.topic.partitions,
        used_tokens: Default::default(),
    }));
    let shutdown = CancellationToken::new();
    let mut tasks = Supervisor::new(shutdown.clone());
    let admin_app = crate::admin::router(Arc::new(AdminContext {
        liveness: tasks.liveness(),
        metrics: metrics.clone(),
        lifecycle: lifecycle.clone(),
        hub: hub.clone(),
        ownership: ownership.clone(),
        // An empty token would let an empty bearer in: none.
        admin_token_digest: config.admin_token.as_deref().filter(|t| !t.is_empty()).map(AdminContext::token_digest),
    }));

    let (commands_tx, commands_rx) = mpsc::channel(1024);
    let (events_tx, events_rx) = mpsc::channel(1024);

    let consumer_task = ConsumerTask {
        consumer,
        hub: hub.clone(),
        metrics: metrics.clone(),
        topic: config.topic.topic.clone(),
        commit_interval: Duration::from_millis(timing.commit_interval_ms.max(10)),
    };
    tasks.spawn("consumer", consumer_task.run(commands_rx, shutdown.clone()));
    tasks.spawn("catch-up", catchup_task.run(shutdown.clone()));
    tasks.spawn("hand-off", Reconciler::new(handoff, commands_tx, events_tx.clone()).run(events_rx, shutdown.clone()));
    tasks.spawn("lease", crate::lease::watch(lease, events_tx.clone(), shutdown.clone()));
    let follower = crate::follower::Follower {
        client: redis.clone(),
        conn: rtc_core::redis_io::connection_manager(&redis, Duration::from_secs(1))?,
        assignment_key: keys.assignment(),
        events_channel: keys.assignment_events(),
        poll: Duration::from_millis(timing.assignment_poll_ms.max(10)),
        metrics: metrics.clone(),
        fetch_now,
    };
    tasks.spawn("assignment follower", follower.run(events_tx, shutdown.clone()));
    {
        let (peers, metrics, conn, key, token) = (
            peers,
            metrics.clone(),
            rtc_core::redis_io::connection_manager(&redis, Duration::from_secs(3))?,
            keys.heartbeats(),
            shutdown.clone(),
        );
        tasks.spawn("peer heartbeats", async move { peers.follow(conn, key, &metrics, token).await });
    }
    tasks.spawn(
        "heartbeat",
        crate::heartbeat::run(
            heartbeat,
            rtc_core::redis_io::connection_manager(&redis, interval)?,
            keys.heartbeats(),
            shutdown.clone(),
        ),
    );
    {
        let (hub, token) = (hub.clone(), shutdown.clone());
        tasks.spawn("hub sweep", async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            while !token.is_cancelled() {
                tokio::select! { _ = token.cancelled() => {}, _ = tick.tick() => hub.sweep() }
            }
        });
    }
    {
        let (app, token) = (ws_app, shutdown.clone());
        tasks.spawn("websocket server", async move {
            // Frames are small and often written back to back: Nagle would
            // hold each one until the client acknowledged the previous.
            let listener = ws_listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let serve = axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "websocket server failed");
            }
        });
    }
    {
        let (app, token) = (admin_app, shutdown.clone());
        tasks.spawn("admin server", async move {
            let serve = axum::serve(admin_listener, app).with_graceful_shutdown(token.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "admin server failed");
            }
        });
    }

    lifecycle.ready();
    tracing::info!(node = %config.node_id, %ws_addr, %admin_addr, url = %advertised_url, "socket node ready");
    Ok(NodeHandle {
        ws_addr,
        admin_addr,
        node_id: config.node_id.clone(),
        advertised_url,
        hub,
        ownership,
        lifecycle,
        kafka_brokers: brokers,
        tasks,
        _embedded: embedded,
    })
}

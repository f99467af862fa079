//! The load-balancer service: election, ingestion, the leader's assignment
//! publication, followers' loading, and the HTTP servers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::serve::ListenerExt;
use redis::aio::ConnectionManager;
use rtc_core::redis_io::HeartbeatCursor;
use rtc_core::supervisor::{Liveness, Supervisor, TaskFailure};
use rtc_core::{Assignment, Keys, TokenSigner};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::actuate::{Actuator, WorkloadKind};
use crate::assign::LoadPacer;
use crate::auth::Auth;
use crate::config::{KindArg, ServeArgs};
use crate::decide::{Actuation, History};
use crate::election::{ElectionError, Elector, ForwardWrite, LeaseStore, Role};
use crate::fleet::Fleet;
use crate::ingest::{Ingest, IngestClock, Membership, block_for};
use crate::metrics::{AssignmentRepair, Metrics};
use crate::publish::{cap_dropped, load, load_document, next_assignment, publish};
use crate::scale::Engine;

pub struct Shared {
    pub args: ServeArgs,
    pub keys: Keys,
    pub signer: TokenSigner,
    pub auth: Auth,
    pub metrics: Arc<Metrics>,
    pub fleet: Arc<Mutex<Fleet>>,
    pub role: watch::Receiver<Role>,
    pub limiter: governor::DefaultKeyedRateLimiter<crate::http::RateKey>,
    pub decisions: History,
    /// Redis's clock as ingestion reads it: the time every fleet question
    /// is asked at.
    pub clock: Arc<IngestClock>,
    /// For `/livez`: whether a critical task ended early.
    pub liveness: Liveness,
    assignment: RwLock<Option<Arc<Assignment>>>,
    /// The highest leader (fencing) epoch seen; shared with the elector.
    highest_epoch_seen: Arc<AtomicU64>,
}

impl Shared {
    /// The assignment this replica serves (the leader's, as last seen).
    pub fn assignment(&self) -> Option<Arc<Assignment>> {
        self.assignment.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Serves `a` if it is newer than the assignment served now.
    fn serve_assignment(&self, a: Arc<Assignment>) {
        self.replace_assignment(a, |new, served| new > served);
    }

    /// Serves what Redis holds, even at the served epoch: the fenced write
    /// refused ours, so the stored document is the one nodes apply (a
    /// previous leader's at the same epoch, say). Without this the leader
    /// would re-send its own document every tick.
    fn adopt_stored_assignment(&self, a: Arc<Assignment>) {
        self.replace_assignment(a, |new, served| new >= served);
    }

    fn replace_assignment(&self, a: Arc<Assignment>, replaces: impl Fn(u64, u64) -> bool) {
        self.highest_epoch_seen.fetch_max(a.leader_epoch, Ordering::Relaxed);
        let mut current = self.assignment.write().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_none_or(|c| replaces(a.epoch, c.epoch)) {
            self.metrics.assignment_epoch.set(a.epoch as f64);
            *current = Some(a);
        }
    }
}

pub struct LbHandle {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub shared: Arc<Shared>,
    tasks: Supervisor,
}

impl LbHandle {
    /// Waits until a critical task ends early (the process must exit).
    pub async fn failed(&self) -> TaskFailure {
        self.tasks.failed().await
    }

    /// Stops every task; a leader releases its lease.
    pub async fn shutdown(mut self) {
        self.tasks.stop(Duration::from_secs(3)).await;
    }

    /// Stops without releasing anything, as a crash would.
    pub fn kill(mut self) {
        self.tasks.abort_all();
    }

    /// Aborts one critical task, as if it had ended on its own (fault
    /// tests of the supervision).
    #[doc(hidden)]
    pub fn abort_task_for_test(&self, name: &'static str) -> bool {
        self.tasks.abort_for_test(name)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub async fn start(args: ServeArgs) -> anyhow::Result<LbHandle> {
    let replica = args.replica_id();
    rtc_core::ids::validate_node_id(&replica)?;
    args.scale.validate().map_err(|e| anyhow::anyhow!("scaling settings: {e}"))?;
    args.liveness.validate().map_err(|e| anyhow::anyhow!("liveness settings: {e}"))?;
    let actuation = actuation(&args).await?;
    let keys = args.redis.keys();
    let client = args.redis.client()?;
    let interval = args.heartbeat_interval();
    let (role_tx, role_rx) = watch::channel(Role::Follower);
    let quota = governor::Quota::per_second(std::num::NonZeroU32::new(args.rate_limit.max(1)).expect("at least 1"))
        .allow_burst(std::num::NonZeroU32::new(args.rate_burst.max(1)).expect("at least 1"));
    let shutdown = CancellationToken::new();
    let mut tasks = Supervisor::new(shutdown.clone());
    let shared = Arc::new(Shared {
        liveness: tasks.liveness(),
        keys: keys.clone(),
        signer: TokenSigner::new(args.token_secret.as_bytes()),
        auth: Auth::from_args(&args)?,
        metrics: Arc::new(Metrics::new()),
        // The leader takes a node's partitions only after `reassign_after`,
        // by when a node cut off from Redis has fenced itself.
        fleet: Arc::new(Mutex::new(
            Fleet::new(args.liveness.heartbeat_interval_ms, args.history_window_ms)
                .with_dead_after(args.liveness.reassign_after().as_millis() as u64),
        )),
        role: role_rx,
        limiter: governor::RateLimiter::keyed(quota),
        decisions: History::new(args.decision_history),
        clock: Arc::new(IngestClock::default()),
        assignment: RwLock::new(None),
        highest_epoch_seen: Arc::new(AtomicU64::new(0)),
        args: args.clone(),
    });

    let listener = rtc_core::listen::bind(&args.listen, args.backlog.listen_backlog).await?;
    let admin_listener = TcpListener::bind(&args.admin_listen).await?;
    let (addr, admin_addr) = (listener.local_addr()?, admin_listener.local_addr()?);

    let store = LeaseStore::new(&keys, args.lease_ttl());
    let elector = Elector {
        store: store.clone(),
        conn: rtc_core::redis_io::connection_manager(&client, args.lease_ttl() / 3)?,
        holder: replica.clone(),
        highest_epoch_seen: shared.highest_epoch_seen.clone(),
    };
    tasks.spawn("election", elector.run(role_tx, shutdown.clone()));

    let (membership_tx, membership_rx) = watch::channel(Membership::new());
    let since = now_ms().saturating_sub(args.liveness.reassign_after().as_millis() as u64);
    let ingest = Ingest {
        conn: rtc_core::redis_io::connection_manager(&client, Duration::from_secs(2) + block_for(interval))?,
        cursor: HeartbeatCursor::since(keys.heartbeats(), since, 2000, block_for(interval)),
        fleet: shared.fleet.clone(),
        partitions: args.topic.partitions,
        observer: shared.metrics.clone(),
        clock: shared.clock.clone(),
    };
    tasks.spawn("heartbeat ingestion", ingest.run(membership_tx, shutdown.clone()));

    let fetch_now = Arc::new(Notify::new());
    tasks.spawn(
        "assignment events",
        rtc_core::redis_io::notify_on_publish(
            client.clone(),
            keys.assignment_events(),
            fetch_now.clone(),
            shutdown.clone().cancelled_owned(),
        ),
    );
    tasks.spawn(
        "coordinator",
        coordinate(
            shared.clone(),
            store,
            rtc_core::redis_io::connection_manager(&client, Duration::from_secs(1))?,
            membership_rx,
            fetch_now,
            actuation,
            shutdown.clone(),
        ),
    );

    for (name, listener, app) in [
        ("public http", listener, crate::http::public(shared.clone())),
        ("admin http", admin_listener, crate::http::admin(shared.clone())),
    ] {
        let token = shutdown.clone();
        tasks.spawn(name, async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            // Answers are small and written at once: do not let Nagle hold one
            // back waiting for the client's ACK.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned()).await {
                tracing::error!(error = %e, "http server failed");
            }
        });
    }
    tracing::info!(%replica, %addr, %admin_addr, "load balancer started");
    Ok(LbHandle { addr, admin_addr, shared, tasks })
}

/// How scale-ins are actuated, and the socket workload's kind.
async fn actuation(args: &ServeArgs) -> anyhow::Result<Actuation> {
    let configured = match args.kube.kind {
        KindArg::Auto => None,
        KindArg::Deployment => Some(WorkloadKind::Deployment),
        KindArg::Statefulset => Some(WorkloadKind::StatefulSet),
    };
    if !args.kube.enabled {
        return Ok(Actuation { kind: configured.unwrap_or(WorkloadKind::Deployment), kube: None });
    }
    let actuator = Actuator::in_cluster(args.kube.namespace.as_deref(), &args.kube.workload).await?;
    let kind = match configured {
        Some(kind) => kind,
        None => actuator.detect_kind().await?,
    };
    tracing::info!(?kind, workload = %args.kube.workload, "kubernetes actuation on");
    Ok(Actuation { kind, kube: Some(Box::new(actuator)) })
}

/// Leader: recompute and publish the assignment on every membership change
/// (and each heartbeat interval, so deaths on a quiet stream are noticed),
/// and decide the scale every decision interval. Follower: load what the
/// leader published.
async fn coordinate(
    shared: Arc<Shared>,
    store: LeaseStore,
    mut conn: ConnectionManager,
    mut membership: watch::Receiver<Membership>,
    fetch_now: Arc<Notify>,
    actuation: Actuation,
    shutdown: CancellationToken,
) {
    let args = &shared.args;
    let mut role = shared.role.clone();
    // A quarter of the heartbeat interval: a dead node's partitions move
    // within a quarter interval of the reassign time, not a whole one later
    // (its users wait that long). Each tick costs one small Redis call.
    let step = (args.heartbeat_interval() / 4).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(step.min(Duration::from_millis(args.assignment_poll_ms.max(10))));
    let mut decision_tick = tokio::time::interval(Duration::from_millis(args.scale.decision_interval_ms));
    let mut led_before: Option<u64> = None;
    let mut engine: Option<Engine> = None;
    let mut pacer = LoadPacer::default();
    loop {
        let (mut decide_now, mut verify) = (false, false);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = role.changed() => {}
            _ = membership.changed() => {}
            _ = fetch_now.notified() => {}
            _ = tick.tick() => verify = true,
            _ = decision_tick.tick() => decide_now = true,
        }
        let current = role.borrow().clone();
        // Nothing is judged before the first heartbeat read.
        let Some(now) = shared.clock.now_ms() else { continue };
        count_nodes(&shared, now);
        match current {
            Role::Leader(lease) => {
                let hold = publishing_held(&shared);
                if led_before != Some(lease.epoch) {
                    // New leadership: continue from what is in Redis.
                    led_before = Some(lease.epoch);
                    shared.metrics.is_leader.set(1.0);
                    shared.metrics.leader_epoch.set(lease.epoch as f64);
                    shared.metrics.leader_changes.increment(1);
                    if let Ok(Some(a)) = load(&mut conn, &shared.keys).await {
                        shared.serve_assignment(Arc::new(a));
                    }
                    let mut fresh = Engine::new(args.scale.clone(), actuation.kind);
                    if let Ok(Some(last)) = load_document(&mut conn, &shared.keys.scale_decision()).await {
                        let draining = shared.assignment().into_iter().flat_map(|a| {
                            a.nodes
                                .iter()
                                .filter(|n| n.state == rtc_core::NodeState::Draining)
                                .map(|n| n.id.clone())
                                .collect::<Vec<_>>()
                        });
                        fresh.resume_from(&last, draining);
                    }
                    engine = Some(fresh);
                    (decide_now, verify) = (true, true);
                }
                let engine = engine.get_or_insert_with(|| Engine::new(args.scale.clone(), actuation.kind));
                if decide_now && !hold {
                    let publisher = (&store, &mut conn, &lease, &shared.keys);
                    match crate::decide::tick(
                        engine,
                        &shared.fleet,
                        now,
                        &actuation,
                        publisher,
                        &shared.decisions,
                        &shared.metrics,
                    )
                    .await
                    {
                        Ok(_) => {}
                        Err(ElectionError::Fenced) => tracing::warn!("decision write fenced: no longer the leader"),
                        Err(e) => tracing::warn!(error = %e, "decision write failed"),
                    }
                }
                let step = AssignmentStep { excluded: engine.excluded(), now, verify, hold };
                publish_assignment(&shared, &store, &mut conn, &lease, step, &mut pacer).await;
            }
            Role::Follower => {
                if led_before.take().is_some() {
                    shared.metrics.is_leader.set(0.0);
                    engine = None;
                }
                match load(&mut conn, &shared.keys).await {
                    Ok(Some(a)) => shared.serve_assignment(Arc::new(a)),
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "assignment load failed"),
                }
                if decide_now && let Ok(Some(d)) = load_document(&mut conn, &shared.keys.scale_decision()).await {
                    crate::decide::follow(&shared.decisions, d, &shared.metrics);
                }
            }
        }
    }
}

/// True while the leader must publish nothing new: until heartbeat reads
/// have kept succeeding for the dead-after time. Only then has every live
/// node had the time to show up in this replica's fleet (after its start,
/// an election, or a failed read), so a node missing from it is dead and
/// not merely unread.
fn publishing_held(shared: &Shared) -> bool {
    let dead_after = shared.args.liveness.dead_after().as_millis() as u64;
    let held = shared.clock.healthy_for_ms() < dead_after;
    shared.metrics.publishing_held.set(if held { 1.0 } else { 0.0 });
    held
}

/// What one assignment step works from.
struct AssignmentStep {
    /// Nodes the scaling engine is draining or removing: they own nothing.
    excluded: std::collections::BTreeSet<String>,
    /// Redis's clock, as ingestion last read it.
    now: u64,
    /// Each tick, and on taking the lead: write an unchanged assignment
    /// again if Redis lost it or holds a different one (the fenced write
    /// makes that a no-op otherwise).
    verify: bool,
    /// See [`publishing_held`]: only `verify` may write.
    hold: bool,
}

/// The leader's assignment step.
async fn publish_assignment(
    shared: &Shared,
    store: &LeaseStore,
    conn: &mut ConnectionManager,
    lease: &crate::election::Lease,
    step: AssignmentStep,
    pacer: &mut LoadPacer,
) {
    let args = &shared.args;
    let AssignmentStep { excluded, now, verify, hold } = step;
    let previous = shared.assignment();
    let computed = if hold {
        None
    } else {
        let (mut live, connections, applied_epoch) = {
            let fleet = shared.fleet.lock().unwrap_or_else(|p| p.into_inner());
            let mut live = fleet.live(now);
            let kept =
                cap_dropped(previous.as_deref(), &mut live, |id| fleet.record(id).map_or(0, |r| r.last_seen_ms()));
            if kept > 0 {
                tracing::warn!(kept, "more ready nodes look dead than one epoch may drop: keeping some for the next");
            }
            (live, fleet.partition_connections(args.topic.partitions, now), fleet.highest_applied_epoch())
        };
        for node in live.iter_mut().filter(|n| excluded.contains(&n.id)) {
            node.state = rtc_core::NodeState::Draining;
        }
        let balance = pacer.balance(&args.balance, previous.as_deref(), &live, &connections, now);
        next_assignment(
            previous.as_deref(),
            &live,
            args.topic.partitions,
            &connections,
            balance,
            lease.epoch,
            applied_epoch,
        )
    };
    let (document, moved) = match computed {
        Some((next, moved)) => (Arc::new(next), Some(moved)),
        None => match previous {
            Some(previous) if verify => (previous, None),
            _ => return,
        },
    };
    match publish(store, conn, lease, &shared.keys, &document).await {
        Ok(ForwardWrite::Written) => {
            if let Some(moved) = moved {
                tracing::info!(epoch = document.epoch, moved, nodes = document.nodes.len(), "assignment published");
                shared.metrics.partitions_moved.increment(u64::from(moved));
            } else {
                tracing::warn!(
                    epoch = document.epoch,
                    "the assignment in Redis was missing or different: written again"
                );
                shared.metrics.assignment_repaired(AssignmentRepair::Rewritten);
            }
            shared.serve_assignment(document);
        }
        Ok(ForwardWrite::Unchanged) => shared.serve_assignment(document),
        Ok(ForwardWrite::Stale) => {
            // A different document with this epoch or a newer one is stored
            // (a write that timed out but landed, or a previous leader's):
            // serve it, and the next step goes on from its epoch.
            tracing::warn!(
                epoch = document.epoch,
                "another assignment is stored at this epoch or later: continuing from it"
            );
            shared.metrics.assignment_repaired(AssignmentRepair::Adopted);
            match load(conn, &shared.keys).await {
                Ok(Some(stored)) => shared.adopt_stored_assignment(Arc::new(stored)),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "assignment load failed"),
            }
        }
        Err(ElectionError::Fenced) => tracing::warn!("assignment write fenced: no longer the leader"),
        Err(e) => tracing::warn!(error = %e, "assignment write failed"),
    }
}

/// `rtc_lb_nodes{state}`: live nodes by the state they report.
fn count_nodes(shared: &Shared, now: u64) {
    let counts = shared.fleet.lock().unwrap_or_else(|p| p.into_inner()).count_by_state(now);
    for state in rtc_core::NodeState::ALL {
        shared.metrics.nodes(state, counts.get(&state).copied().unwrap_or(0));
    }
}

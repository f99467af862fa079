//! The actuator's loop: sync with the scaler every period (or at once on a
//! pushed activation), keep the pods at the desired count, replace pods that
//! die, and stop every pod on the way out. Decisions are made by the pure
//! modules ([`crate::sync`], [`crate::victims`]); this one does the I/O and
//! records every step.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use rtc_core::Keys;
use rtc_core::hpa::SpecError;
use rtc_core::supervisor::{EndedEarly, Supervisor, TaskFailure};
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Action, Admin, Metrics};
use crate::config::{Config, Workload};
use crate::events::{Event, Events, EventsError, Kind};
use crate::fleet::{self, FleetView};
use crate::keda::{self, KedaClient, KedaError};
use crate::pods::{CrashBackoff, PodExit, PodInfo, PodTemplate, Pods, wall_ms};
use crate::sync::{Fallback, PodSample, SyncConfig, Syncer};
use crate::victims::{self, Candidate};

/// Longest wait for the assignment read before a scale-in.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// Heartbeats this far back are read at start (nodes already running).
const HEARTBEAT_LOOKBACK_MS: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid HPA settings: {0}")]
    Spec(#[from] SpecError),
    #[error("{0}")]
    Keda(#[from] KedaError),
    #[error("{0}")]
    Events(#[from] EventsError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("socket-node binary {0} not found (build it: cargo build --release -p rtc-socket)")]
    SocketBin(std::path::PathBuf),
}

/// One pod in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodStatus {
    #[serde(flatten)]
    pub info: PodInfo,
    pub ready: bool,
    pub stopping: bool,
}

/// What the actuator is doing (admin `/v1/status`, tests).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    pub desired: u32,
    /// Pods not asked to stop.
    pub running: u32,
    pub stopping: u32,
    pub pods: Vec<PodStatus>,
    pub syncs: u64,
    pub spawned: u64,
    /// SIGTERMs sent.
    pub terminated: u64,
    /// SIGKILLs after the grace.
    pub killed: u64,
    pub exits: u64,
    pub unexpected_exits: u64,
    pub scaler_failures: u32,
    pub fallback: bool,
    pub last_reason: String,
    /// Nodes get SIGTERM from the kernel if the actuator dies.
    pub parent_death_signal: bool,
}

/// A running actuator.
pub struct Handle {
    pub admin_addr: SocketAddr,
    pub status: watch::Receiver<Status>,
    stop: CancellationToken,
    task: JoinHandle<Status>,
    /// The admin server, the heartbeat reader, the activation subscription.
    tasks: Supervisor,
}

impl Handle {
    /// Resolves when the actuator stops without being asked to: the control
    /// loop ended on its own (e.g. a panic) or a critical task did.
    pub async fn stopping(&self) -> TaskFailure {
        tokio::select! {
            _ = self.stop.cancelled() => TaskFailure { task: "control loop", how: EndedEarly::Returned },
            failure = self.tasks.failed() => failure,
        }
    }

    /// Stops: every pod is terminated (SIGTERM, SIGKILL after the grace) and
    /// waited for. Returns the final status.
    pub async fn stop(mut self) -> Result<Status, tokio::task::JoinError> {
        self.stop.cancel();
        let status = self.task.await;
        self.tasks.stop(Duration::from_secs(2)).await;
        status
    }
}

/// Starts the actuator: admin server, heartbeat reader, activation
/// subscription and the control loop.
pub async fn start(config: Config, template: PodTemplate) -> Result<Handle, StartError> {
    let spec = config.hpa_spec()?;
    let is_path = template.program.components().count() > 1;
    if is_path && !template.program.exists() {
        return Err(StartError::SocketBin(template.program.clone()));
    }
    let sync_config = SyncConfig {
        min_replicas: config.min_replicas,
        fallback: config
            .fallback_replicas
            .map(|replicas| Fallback { replicas, failure_threshold: config.fallback_failure_threshold }),
        backup_cpu_target: config.backup_cpu_target,
        backup_memory_target: config.backup_memory_target,
        cooldown_ms: config.cooldown_period_ms,
    };
    let scaler = KedaClient::new(
        &config.scaler_address,
        &config.scaled_object,
        &config.namespace,
        config.metric_name.as_deref(),
        config.scaler_timeout(),
    )?;
    let events = Events::open(config.events_file.as_deref())?;
    let keys = config.redis.keys();
    let client = config.redis.client()?;
    let redis = rtc_core::redis_io::connection_manager(&client, REDIS_TIMEOUT)?;
    let listener = TcpListener::bind(&config.admin_listen)
        .await
        .map_err(|source| StartError::Listen { addr: config.admin_listen.clone(), source })?;
    let admin_addr =
        listener.local_addr().map_err(|source| StartError::Listen { addr: config.admin_listen.clone(), source })?;

    let stop = CancellationToken::new();
    let mut tasks = Supervisor::new(stop.clone());
    let metrics = Arc::new(Metrics::new());
    let (status_tx, status) = watch::channel(Status::default());
    let app = admin::router(Admin { liveness: tasks.liveness(), metrics: metrics.clone(), status: status.clone() });
    let token = stop.clone();
    tasks.spawn("admin server", async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned()).await {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    let view = Arc::new(Mutex::new(FleetView::default()));
    let since = wall_ms().saturating_sub(HEARTBEAT_LOOKBACK_MS);
    tasks.spawn("heartbeats", fleet::follow_heartbeats(client, keys.heartbeats(), since, view.clone(), stop.clone()));
    let activated = Arc::new(Notify::new());
    tasks.spawn("activation", keda::watch_activation(scaler.clone(), activated.clone(), stop.clone()));

    let pods = Pods::new(template);
    tracing::info!(
        %admin_addr,
        scaler = %config.scaler_address,
        workload = ?config.workload,
        sync_period_ms = config.sync_period_ms,
        parent_death_signal = pods.parent_death_signal(),
        "local actuator started"
    );
    if config.parent_death_signal && !pods.parent_death_signal() {
        tracing::warn!("setpriv not found: nodes would outlive a SIGKILLed actuator");
    }
    let controller = Controller {
        syncer: Syncer::new(sync_config, spec),
        scaler,
        pods,
        view,
        redis,
        keys,
        events,
        metrics,
        status: status_tx,
        workload: config.workload,
        prefix: config.pod_name_prefix.clone(),
        fresh_ms: 3 * config.heartbeat_interval_ms,
        sync_period: config.sync_period(),
        epoch: Instant::now(),
        desired: 0,
        next_seq: 0,
        backoff: CrashBackoff::default(),
        replacing: 0,
        counts: Status::default(),
    };
    let task = tokio::spawn(controller.run(activated, stop.clone()));
    Ok(Handle { admin_addr, status, stop, task, tasks })
}

struct Controller {
    syncer: Syncer,
    scaler: KedaClient,
    pods: Pods,
    view: Arc<Mutex<FleetView>>,
    redis: ConnectionManager,
    keys: Keys,
    events: Events,
    metrics: Arc<Metrics>,
    status: watch::Sender<Status>,
    workload: Workload,
    prefix: String,
    /// A heartbeat older than this is missing for the resource metrics.
    fresh_ms: u64,
    sync_period: Duration,
    /// Start of the monotonic clock the HPA runs on.
    epoch: Instant,
    /// The workload's `spec.replicas`.
    desired: u32,
    /// Deployment: the next pod's sequence number.
    next_seq: u64,
    backoff: CrashBackoff,
    /// Unexpected exits not yet replaced (for the spawn reason).
    replacing: u32,
    /// Counters and last reason for [`Status`].
    counts: Status,
}

enum Wake {
    Stop,
    Exit(PodExit),
    Sync { pushed: bool },
    Reconcile,
}

impl Controller {
    async fn run(mut self, activated: Arc<Notify>, stop: CancellationToken) -> Status {
        // Whatever ends this task (a panic included) stops the rest too.
        let _stop_all = stop.clone().drop_guard();
        let mut tick = tokio::time::interval(self.sync_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.publish();
            let spawn_at = self.spawn_blocked_until();
            let wake = tokio::select! {
                biased;
                _ = stop.cancelled() => Wake::Stop,
                exit = self.pods.next_exit() => Wake::Exit(exit),
                _ = tick.tick() => Wake::Sync { pushed: false },
                _ = activated.notified() => Wake::Sync { pushed: true },
                _ = tokio::time::sleep_until(spawn_at.unwrap_or_else(tokio::time::Instant::now)), if spawn_at.is_some() => {
                    Wake::Reconcile
                }
            };
            match wake {
                Wake::Stop => break,
                Wake::Exit(exit) => self.on_exit(exit),
                Wake::Sync { pushed } => {
                    if pushed {
                        // The period starts over after a pushed sync, as KEDA's loop does.
                        tick.reset();
                    }
                    if !self.sync(pushed, &stop).await {
                        break;
                    }
                }
                Wake::Reconcile => {}
            }
            self.reconcile().await;
        }
        self.shutdown().await;
        self.publish();
        self.status.borrow().clone()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// One KEDA + HPA sync. False if asked to stop meanwhile.
    async fn sync(&mut self, pushed: bool, stop: &CancellationToken) -> bool {
        let answer = tokio::select! {
            _ = stop.cancelled() => return false,
            answer = self.scaler.poll() => answer,
        };
        let now_wall = wall_ms();
        let samples: Vec<PodSample> = {
            let view = self.view.lock().unwrap_or_else(|p| p.into_inner());
            self.pods.running().map(|p| view.sample(&p.id, p.started_at_ms, now_wall, self.fresh_ms)).collect()
        };
        let before = self.desired;
        let outcome = self.syncer.step(self.now_ms(), before, &answer, &samples);
        self.desired = outcome.desired;
        self.metrics.sync();
        self.metrics.scaler_failures.set(f64::from(outcome.external.failures));
        self.metrics.fallback_active.set(if outcome.external.fallback { 1.0 } else { 0.0 });
        self.counts.syncs += 1;
        self.counts.scaler_failures = outcome.external.failures;
        self.counts.fallback = outcome.external.fallback;
        self.counts.last_reason = outcome.reason.clone();
        let running: Vec<String> = self.pods.running().map(|p| p.id.clone()).collect();
        let reason = if pushed { format!("{} [activation pushed]", outcome.reason) } else { outcome.reason.clone() };
        let detail = serde_json::to_value(&outcome).unwrap_or_default();
        self.record(Kind::Sync, running, reason.clone(), detail);
        if self.desired != before {
            let (kind, action) = if self.desired > before {
                (Kind::ScaleOut, Action::ScaleOut)
            } else {
                (Kind::ScaleIn, Action::ScaleIn)
            };
            self.metrics.action(action);
            let detail = json!({"from": before, "to": self.desired, "path": outcome.path});
            self.record(kind, vec![], reason, detail);
        }
        true
    }

    /// Moves the pods towards the desired count: starts the missing ones,
    /// asks the excess ones to stop.
    async fn reconcile(&mut self) {
        let want = self.desired;
        let running: Vec<PodInfo> = self.pods.running().cloned().collect();
        let (to_start, excess) = match self.workload {
            Workload::Deployment => {
                let have = running.len() as u32;
                (want.saturating_sub(have), have.saturating_sub(want) as usize)
            }
            // Identities: ordinals 0..want exist, the ones above go.
            Workload::Statefulset => {
                let missing = (0..u64::from(want)).filter(|o| !self.pods.all().any(|p| p.ordinal == *o)).count();
                (missing as u32, running.iter().filter(|p| p.ordinal >= u64::from(want)).count())
            }
        };
        if to_start > 0 && self.spawn_blocked_until().is_none() {
            for _ in 0..to_start {
                if !self.spawn_one(want) {
                    break;
                }
            }
        }
        if excess > 0 {
            self.scale_in(&running, excess).await;
        }
    }

    /// When a crash loop holds back new pods, until when.
    fn spawn_blocked_until(&self) -> Option<tokio::time::Instant> {
        let wanted = match self.workload {
            Workload::Deployment => self.pods.running().count() < self.desired as usize,
            Workload::Statefulset => (0..u64::from(self.desired)).any(|o| !self.pods.all().any(|p| p.ordinal == o)),
        };
        let (next, now) = (self.backoff.next_start_ms(), self.now_ms());
        (wanted && next > now).then(|| tokio::time::Instant::now() + Duration::from_millis(next - now))
    }

    fn spawn_one(&mut self, want: u32) -> bool {
        let (id, ordinal) = match self.workload {
            Workload::Deployment => {
                let seq = self.next_seq;
                self.next_seq += 1;
                (format!("{}-{seq}", self.prefix), seq)
            }
            Workload::Statefulset => {
                match (0..u64::from(want)).find(|o| !self.pods.all().any(|p| p.ordinal == *o)) {
                    Some(o) => (format!("{}-{o}", self.prefix), o),
                    // A stopping pod still holds the identity: its exit wakes us.
                    None => return false,
                }
            }
        };
        let reason = if self.replacing > 0 {
            self.replacing -= 1;
            "replaces a pod that exited unexpectedly".to_owned()
        } else {
            format!("{want} desired")
        };
        match self.pods.spawn(id.clone(), ordinal) {
            Ok(info) => {
                let detail = serde_json::to_value(info).unwrap_or_default();
                self.counts.spawned += 1;
                self.metrics.action(Action::Spawn);
                self.record(Kind::Spawn, vec![id], reason, detail);
                true
            }
            Err(e) => {
                tracing::error!(node = %id, error = %e, "starting a node failed");
                // Treated as a crash so a broken binary does not spin.
                self.backoff.record(self.now_ms(), Duration::ZERO);
                false
            }
        }
    }

    async fn scale_in(&mut self, running: &[PodInfo], excess: usize) {
        let draining = match fleet::draining_nodes(&mut self.redis, &self.keys.assignment(), REDIS_TIMEOUT).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "assignment unreadable: choosing victims without it");
                BTreeSet::new()
            }
        };
        let candidates: Vec<Candidate> = {
            let view = self.view.lock().unwrap_or_else(|p| p.into_inner());
            running
                .iter()
                .map(|p| Candidate {
                    id: p.id.clone(),
                    ordinal: p.ordinal,
                    ready: view.has_been_ready(&p.id, p.started_at_ms),
                    draining: draining.contains(&p.id),
                })
                .collect()
        };
        for victim in victims::choose(self.workload, &candidates, excess) {
            if !self.pods.terminate(&victim.id) {
                continue;
            }
            self.counts.terminated += 1;
            self.metrics.action(Action::Terminate);
            let pid = running.iter().find(|p| p.id == victim.id).map(|p| p.pid);
            let detail = json!({
                "pid": pid,
                "grace_ms": self.pods.grace().as_millis() as u64,
                "draining": draining.iter().collect::<Vec<_>>(),
            });
            self.record(Kind::Terminate, vec![victim.id], format!("scale-in victim: {}", victim.why), detail);
        }
    }

    fn on_exit(&mut self, exit: PodExit) {
        self.counts.exits += 1;
        let reason = if exit.requested {
            if exit.killed {
                self.counts.killed += 1;
                self.metrics.action(Action::Kill);
                format!("SIGKILLed after the {} ms grace ({})", self.pods.grace().as_millis(), exit.describe())
            } else {
                format!("stopped after SIGTERM ({})", exit.describe())
            }
        } else {
            self.counts.unexpected_exits += 1;
            self.metrics.action(Action::UnexpectedExit);
            self.backoff.record(self.now_ms(), Duration::from_millis(exit.uptime_ms));
            self.replacing += 1;
            format!("exited unexpectedly ({}); will be replaced", exit.describe())
        };
        let detail = serde_json::to_value(&exit).unwrap_or_default();
        self.record(Kind::Exit, vec![exit.id], reason, detail);
        let pods = &self.pods;
        self.view.lock().unwrap_or_else(|p| p.into_inner()).retain(|id| pods.all().any(|p| p.id == id));
    }

    /// Stops every pod and waits for them (bounded by the grace).
    async fn shutdown(&mut self) {
        for pod in self.pods.terminate_all() {
            self.counts.terminated += 1;
            self.metrics.action(Action::Terminate);
            let detail = json!({"pid": pod.pid, "grace_ms": self.pods.grace().as_millis() as u64});
            self.record(Kind::Terminate, vec![pod.id], "actuator stopping".into(), detail);
        }
        let deadline = tokio::time::Instant::now() + self.pods.grace() + Duration::from_secs(5);
        while !self.pods.is_empty() {
            match tokio::time::timeout_at(deadline, self.pods.next_exit()).await {
                Ok(exit) => {
                    // No replacement: the actuator is stopping.
                    let requested = PodExit { requested: true, ..exit };
                    self.on_exit(requested);
                }
                Err(_) => break,
            }
        }
        for pod in self.pods.abort_all() {
            tracing::error!(node = %pod.id, pid = pod.pid, "node did not exit in time: SIGKILLed on abort");
        }
    }

    fn record(&mut self, kind: Kind, nodes: Vec<String>, reason: String, detail: serde_json::Value) {
        let current = self.pods.running().count() as u32;
        self.metrics.replicas(self.desired, current as usize);
        self.events.record(&Event { ts_ms: wall_ms(), kind, current, desired: self.desired, nodes, reason, detail });
    }

    fn publish(&mut self) {
        let now_wall = wall_ms();
        let pods: Vec<PodStatus> = {
            let view = self.view.lock().unwrap_or_else(|p| p.into_inner());
            self.pods
                .all()
                .map(|p| PodStatus {
                    info: p.clone(),
                    ready: view.sample(&p.id, p.started_at_ms, now_wall, self.fresh_ms).ready,
                    stopping: p.terminating_since.is_some(),
                })
                .collect()
        };
        let running = pods.iter().filter(|p| !p.stopping).count() as u32;
        self.metrics.replicas(self.desired, running as usize);
        let status = Status {
            desired: self.desired,
            running,
            stopping: pods.len() as u32 - running,
            pods,
            parent_death_signal: self.pods.parent_death_signal(),
            ..self.counts.clone()
        };
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }
}

//! Socket-node processes ("pods"): started from a template on free ports,
//! supervised by one task each, stopped with SIGTERM and, after the grace
//! period, SIGKILL.
//!
//! No child may outlive the actuator:
//! - a normal stop terminates every pod and waits for each exit;
//! - each `Child` is `kill_on_drop`, so a panic or an aborted task still
//!   SIGKILLs it;
//! - with `setpriv` available, each node is started as `setpriv --pdeathsig
//!   TERM -- node …`, so the kernel signals it even if the actuator itself
//!   is SIGKILLed. (The signal follows the *thread* that spawned the child:
//!   the binary runs a current-thread runtime, so that thread is the main one.)

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How every pod is started: `program [leading…] --listen A --admin-listen B
/// --node-id ID [shared…] [extra…]`. Later flags win in the socket binary, so
/// `extra` can override anything.
#[derive(Debug, Clone)]
pub struct PodTemplate {
    pub program: PathBuf,
    /// Before the per-pod flags; tests run `/bin/sh -c SCRIPT NAME`, which
    /// then ignores the flags as positional parameters.
    pub leading_args: Vec<String>,
    /// The shared settings (Redis, topic, Kafka, …).
    pub shared_args: Vec<String>,
    /// The user's extra arguments (after `--`).
    pub extra_args: Vec<String>,
    /// Address the pods listen on.
    pub host: IpAddr,
    /// `DIR/<id>.log` per pod; `None`: the actuator's stderr.
    pub log_dir: Option<PathBuf>,
    /// SIGTERM → SIGKILL.
    pub grace: Duration,
    /// Start through `setpriv --pdeathsig TERM` when it is on the PATH.
    pub parent_death_signal: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("no free port on {host}: {source}")]
    Port { host: IpAddr, source: std::io::Error },
    #[error("cannot open the log {path}: {source}")]
    Log { path: PathBuf, source: std::io::Error },
    #[error("cannot start {program}: {source}")]
    Spawn { program: PathBuf, source: std::io::Error },
    #[error("a pod named {0} exists already")]
    Duplicate(String),
}

/// A pod as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodInfo {
    pub id: String,
    /// Deployment: start sequence number; StatefulSet: ordinal.
    pub ordinal: u64,
    pub pid: u32,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Wall-clock start, comparable with heartbeat `sent_at_ms`.
    pub started_at_ms: u64,
    #[serde(skip)]
    pub started: Instant,
    /// Set once SIGTERM was asked for.
    #[serde(skip)]
    pub terminating_since: Option<Instant>,
}

/// How a pod ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodExit {
    pub id: String,
    pub ordinal: u64,
    pub pid: u32,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The actuator asked it to stop (scale-in or shutdown).
    pub requested: bool,
    /// It outlived the grace period and was SIGKILLed.
    pub killed: bool,
    pub uptime_ms: u64,
    /// From SIGTERM to exit, when requested.
    pub stop_ms: Option<u64>,
}

impl PodExit {
    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            (None, None) => "unknown status".into(),
        }
    }
}

struct Pod {
    info: PodInfo,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// The pods of one workload.
pub struct Pods {
    template: PodTemplate,
    setpriv: Option<PathBuf>,
    pods: BTreeMap<String, Pod>,
    exits_tx: mpsc::UnboundedSender<PodExit>,
    exits_rx: mpsc::UnboundedReceiver<PodExit>,
}

impl Pods {
    pub fn new(template: PodTemplate) -> Self {
        let setpriv = if template.parent_death_signal { find_on_path("setpriv") } else { None };
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        Self { template, setpriv, pods: BTreeMap::new(), exits_tx, exits_rx }
    }

    /// Whether nodes are protected against the actuator being SIGKILLed.
    pub fn parent_death_signal(&self) -> bool {
        self.setpriv.is_some()
    }

    /// Starts a pod on two free ports.
    pub fn spawn(&mut self, id: String, ordinal: u64) -> Result<&PodInfo, PodError> {
        if self.pods.contains_key(&id) {
            return Err(PodError::Duplicate(id));
        }
        let t = &self.template;
        let listen = self.free_addr(&[])?;
        let admin_listen = self.free_addr(&[listen.port()])?;
        let mut command = match &self.setpriv {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "TERM", "--"]).arg(&t.program);
                c
            }
            None => Command::new(&t.program),
        };
        command
            .args(&t.leading_args)
            .args(["--listen", &listen.to_string(), "--admin-listen", &admin_listen.to_string(), "--node-id", &id])
            .args(&t.shared_args)
            .args(&t.extra_args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match &t.log_dir {
            Some(dir) => {
                let path = dir.join(format!("{id}.log"));
                let log = |source| PodError::Log { path: path.clone(), source };
                std::fs::create_dir_all(dir).map_err(log)?;
                let file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(log)?;
                command.stdout(file.try_clone().map_err(log)?).stderr(file);
            }
            None => {
                // Keep the actuator's stdout for its own JSON lines.
                command.stdout(std::io::stderr()).stderr(std::io::stderr());
            }
        }
        let child = command.spawn().map_err(|source| PodError::Spawn { program: t.program.clone(), source })?;
        let pid = child.id().unwrap_or(0);
        let info = PodInfo {
            id: id.clone(),
            ordinal,
            pid,
            listen,
            admin_listen,
            started_at_ms: wall_ms(),
            started: Instant::now(),
            terminating_since: None,
        };
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(supervise(child, info.clone(), stop_rx, t.grace, self.exits_tx.clone()));
        let pod = self.pods.entry(id).or_insert(Pod { info, stop: Some(stop), task });
        Ok(&pod.info)
    }

    /// A free port on the template's host, not one of our pods' (the port
    /// is released before the node binds it, so a recent one could recur).
    fn free_addr(&self, also_taken: &[u16]) -> Result<SocketAddr, PodError> {
        let host = self.template.host;
        let in_use = |port: u16| {
            also_taken.contains(&port)
                || self.pods.values().any(|p| p.info.listen.port() == port || p.info.admin_listen.port() == port)
        };
        let mut last = None;
        for _ in 0..20 {
            let addr = TcpListener::bind((host, 0))
                .and_then(|l| l.local_addr())
                .map_err(|source| PodError::Port { host, source })?;
            if !in_use(addr.port()) {
                return Ok(addr);
            }
            last = Some(addr);
        }
        Err(PodError::Port {
            host,
            source: std::io::Error::other(format!("only ports in use came back (last {last:?})")),
        })
    }

    /// Asks a pod to stop (SIGTERM, SIGKILL after the grace). False if there
    /// is no such pod or it is stopping already.
    pub fn terminate(&mut self, id: &str) -> bool {
        let Some(pod) = self.pods.get_mut(id) else { return false };
        let Some(stop) = pod.stop.take() else { return false };
        pod.info.terminating_since = Some(Instant::now());
        // The supervisor is gone only if the process is, and then its exit
        // is already on the way.
        let _ = stop.send(());
        true
    }

    /// Pods not asked to stop (`status.replicas`).
    pub fn running(&self) -> impl Iterator<Item = &PodInfo> {
        self.pods.values().map(|p| &p.info).filter(|p| p.terminating_since.is_none())
    }

    /// Every pod that has not exited yet, stopping ones included.
    pub fn all(&self) -> impl Iterator<Item = &PodInfo> {
        self.pods.values().map(|p| &p.info)
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// The next pod to exit, expected or not; it is forgotten then.
    pub async fn next_exit(&mut self) -> PodExit {
        loop {
            // Never `None`: `self` holds a sender.
            if let Some(exit) = self.exits_rx.recv().await
                && self.pods.remove(&exit.id).is_some()
            {
                return exit;
            }
        }
    }

    /// Asks every running pod to stop; returns them.
    pub fn terminate_all(&mut self) -> Vec<PodInfo> {
        let ids: Vec<String> = self.running().map(|p| p.id.clone()).collect();
        let mut stopped = Vec::new();
        for id in ids {
            if self.terminate(&id)
                && let Some(pod) = self.pods.get(&id)
            {
                stopped.push(pod.info.clone());
            }
        }
        stopped
    }

    /// Gives up on the pods still there: aborting a supervisor drops its
    /// `Child`, which SIGKILLs the process. Returns them.
    pub fn abort_all(&mut self) -> Vec<PodInfo> {
        std::mem::take(&mut self.pods)
            .into_values()
            .map(|pod| {
                pod.task.abort();
                pod.info
            })
            .collect()
    }

    /// SIGTERM → SIGKILL.
    pub fn grace(&self) -> Duration {
        self.template.grace
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        // Dropping a supervisor drops its `Child`, which SIGKILLs it.
        for pod in self.pods.values() {
            pod.task.abort();
        }
    }
}

/// Waits for the process, or for a stop request and then for the process
/// (bounded by the grace), and reports how it ended.
async fn supervise(
    mut child: Child,
    info: PodInfo,
    stop: oneshot::Receiver<()>,
    grace: Duration,
    exits: mpsc::UnboundedSender<PodExit>,
) {
    let report = |status: std::io::Result<ExitStatus>, requested: Option<Instant>, killed: bool| {
        let status = status.ok();
        PodExit {
            id: info.id.clone(),
            ordinal: info.ordinal,
            pid: info.pid,
            code: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
            requested: requested.is_some(),
            killed,
            uptime_ms: info.started.elapsed().as_millis() as u64,
            stop_ms: requested.map(|at| at.elapsed().as_millis() as u64),
        }
    };
    tokio::select! {
        status = child.wait() => {
            let _ = exits.send(report(status, None, false));
            return;
        }
        // A dropped sender (the `Pods` went away) also stops the pod.
        _ = stop => {}
    }
    let asked = Instant::now();
    // The child has not been reaped (its `wait` has not completed), so the
    // pid still names it, even if it already exited.
    if let Some(pid) = i32::try_from(info.pid).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let exit = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => report(status, Some(asked), false),
        Err(_) => {
            let status = child.kill().await.and(child.wait().await);
            report(status, Some(asked), true)
        }
    };
    let _ = exits.send(exit);
}

/// Wall-clock milliseconds (heartbeats and events use this clock).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Restart pacing when pods die young (a crash loop), like the kubelet's
/// CrashLoopBackOff: the first replacement is immediate (as a ReplicaSet's),
/// then 0.5 s doubling to 30 s; a minute without a crash starts over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashBackoff {
    consecutive: u32,
    last_crash_ms: Option<u64>,
}

/// Pods that ran shorter than this count as crashed.
pub const CRASH_UPTIME: Duration = Duration::from_secs(10);
const CRASH_MEMORY_MS: u64 = 60_000;
const MAX_BACKOFF_MS: u64 = 30_000;

impl CrashBackoff {
    /// An unexpected exit after `uptime`, at `now_ms` (monotonic).
    pub fn record(&mut self, now_ms: u64, uptime: Duration) {
        if uptime >= CRASH_UPTIME {
            return;
        }
        let recent = self.last_crash_ms.is_some_and(|at| now_ms.saturating_sub(at) < CRASH_MEMORY_MS);
        self.consecutive = if recent { self.consecutive.saturating_add(1) } else { 1 };
        self.last_crash_ms = Some(now_ms);
    }

    /// Earliest time (monotonic ms) a new pod may start.
    pub fn next_start_ms(&self) -> u64 {
        let delay = match self.consecutive {
            0 | 1 => 0,
            n => (500u64 << (n - 2).min(16)).min(MAX_BACKOFF_MS),
        };
        self.last_crash_ms.map_or(0, |at| at + delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_backoff_grows_and_forgets() {
        let young = Duration::from_millis(100);
        let mut b = CrashBackoff::default();
        assert_eq!(b.next_start_ms(), 0);
        b.record(1_000, young);
        assert_eq!(b.next_start_ms(), 1_000, "the first replacement is immediate");
        b.record(2_000, young);
        assert_eq!(b.next_start_ms(), 2_500);
        b.record(3_000, young);
        assert_eq!(b.next_start_ms(), 4_000);
        for t in 4..20 {
            b.record(t * 1_000, young);
        }
        assert_eq!(b.next_start_ms(), 19_000 + MAX_BACKOFF_MS);
        // A pod that ran a while does not count.
        let before = b.clone();
        b.record(20_000, CRASH_UPTIME);
        assert_eq!(b, before);
        // A quiet minute starts over.
        b.record(19_000 + CRASH_MEMORY_MS, young);
        assert_eq!(b.next_start_ms(), 19_000 + CRASH_MEMORY_MS);
    }

    #[test]
    fn exit_descriptions() {
        let mut e = PodExit {
            id: "socket-0".into(),
            ordinal: 0,
            pid: 1,
            code: Some(3),
            signal: None,
            requested: false,
            killed: false,
            uptime_ms: 5,
            stop_ms: None,
        };
        assert_eq!(e.describe(), "exit code 3");
        e.code = None;
        e.signal = Some(9);
        assert_eq!(e.describe(), "signal 9");
    }
}

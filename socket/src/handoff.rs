//! The hand-off: applying each assignment epoch to the partitions this node
//! serves.
//!
//! The reconciler applies each newer assignment epoch:
//! - a **lost** partition accepts no more sessions at once, and the epoch
//!   is acknowledged in an immediate heartbeat. Its users then move out on
//!   the node's disconnect schedule (`crate::pacing`) while it is still
//!   fetched, so each gets everything live until its turn; once they are
//!   gone (or a timeout) fetching stops and the position is committed;
//! - a **gained** partition reads its committed offset, then accepts its
//!   users, and starts consuming from that offset once every live peer
//!   acknowledged the epoch (so its old owner admits no more of its users),
//!   or after a timeout. Starting from the offset read before any user
//!   arrived means a user who reaches this node while the old owner still
//!   consumes gets what the old owner consumed meanwhile; resumers replay
//!   the rest from the log. For a while both nodes fetch the partition,
//!   each for its own sessions: a user is on one of them at a time.
//!
//! When the node's lease runs out (`crate::lease`: no heartbeat written for
//! `dead_after - margin`) the node is **fenced**: every partition is
//! released at once, as if the assignment had given it none, except that
//! its users are disconnected without pacing (told to retry once the leader
//! will have moved the partition) and nothing is committed: another node
//! may own the partition by then. The node serves again on the first
//! assignment it reads while its lease is valid, whatever its epoch.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use rtc_core::protocol::CloseReason;
use rtc_core::{Assignment, NodeState};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::kafka::{Command, PartitionConsumer, commit_sync};
use crate::lease::NodeLease;
use crate::lifecycle::Lifecycle;
use crate::metrics::{Direction, KafkaFailure, Metrics};
use crate::ownership::{Ownership, OwnershipView};
use crate::pacing::Pacing;
use crate::peers::Peers;
use crate::takeover::Takeovers;

/// What the hand-off uses of the node.
pub struct HandoffContext {
    pub node_id: String,
    pub topic: String,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub consumer: Arc<PartitionConsumer>,
    pub peers: Arc<Peers>,
    pub takeovers: Arc<Takeovers>,
    pub ownership: Arc<Ownership>,
    pub lifecycle: Arc<Lifecycle>,
    pub pacing: Pacing,
    /// See `Timing::handoff_timeout_ms`.
    pub handoff_timeout: Duration,
    /// See `Timing::peer_ack_timeout_ms`.
    pub peer_ack_timeout: Duration,
    pub lease: Arc<NodeLease>,
    /// How long after this node fenced itself the leader may move its
    /// partitions: the retry hint its users get.
    pub fenced_retry_after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartitionState {
    /// Reading the start offset (`start: None`), then accepting users and
    /// waiting for peers before consuming from `start`.
    Acquiring {
        epoch: u64,
        start: Option<i64>,
    },
    Serving,
    Releasing,
}

#[derive(Debug)]
pub enum Event {
    Assignment(Arc<Assignment>),
    /// Where a gained partition will start: accept its users now.
    StartKnown {
        partition: u32,
        epoch: u64,
        offset: i64,
    },
    /// The old owner let go: start consuming.
    AcquireReady {
        partition: u32,
        epoch: u64,
    },
    Released(u32),
    /// The node's lease ran out: fence.
    LeaseExpired,
}

/// Why a partition is let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    /// The assignment moved it: paced disconnects, each taking `share`
    /// turns of the node's schedule (see [`givers_per_taker`]), then a
    /// commit.
    HandOff { share: u32 },
    /// The lease ran out: disconnect now, commit nothing.
    Fence,
}

/// Partitions `node_id` should serve under `assignment`: none unless it is
/// listed there as ready.
pub fn target_partitions(assignment: &Assignment, node_id: &str) -> BTreeSet<u32> {
    let listed_ready = assignment.nodes.iter().any(|n| n.id == node_id && n.state == NodeState::Ready);
    if listed_ready { assignment.partitions_of(node_id).into_iter().collect() } else { BTreeSet::new() }
}

pub struct Reconciler {
    node: Arc<HandoffContext>,
    consumer: mpsc::Sender<Command>,
    events: mpsc::Sender<Event>,
    state: HashMap<u32, PartitionState>,
    target: BTreeSet<u32>,
    epoch: u64,
    /// The last assignment applied: who owned a gained partition before.
    previous: Option<Arc<Assignment>>,
    /// True until the first assignment read with a valid lease, and from
    /// the lease's expiry until the next one: the node owns nothing.
    fenced: bool,
    /// The newest assignment read while fenced.
    pending: Option<Arc<Assignment>>,
}

impl Reconciler {
    pub fn new(node: Arc<HandoffContext>, consumer: mpsc::Sender<Command>, events: mpsc::Sender<Event>) -> Self {
        Self {
            node,
            consumer,
            events,
            state: HashMap::new(),
            target: BTreeSet::new(),
            epoch: 0,
            previous: None,
            fenced: true,
            pending: None,
        }
    }

    pub async fn run(mut self, mut events: mpsc::Receiver<Event>, shutdown: CancellationToken) {
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = events.recv() => match e { Some(e) => e, None => return },
            };
            match event {
                Event::Assignment(a) if self.fenced => {
                    if self.pending.as_ref().is_none_or(|p| a.epoch >= p.epoch) {
                        self.pending = Some(a);
                    }
                    if !self.node.lease.is_valid(Instant::now()) {
                        continue;
                    }
                    self.unfence();
                }
                Event::Assignment(a) if a.epoch > self.epoch => self.apply(a),
                Event::Assignment(_) => continue,
                Event::LeaseExpired => {
                    if self.fenced || self.node.lease.is_valid(Instant::now()) {
                        continue;
                    }
                    self.fence();
                }
                Event::StartKnown { partition, epoch, offset } => {
                    if self.state.get(&partition) == Some(&PartitionState::Acquiring { epoch, start: None }) {
                        self.state.insert(partition, PartitionState::Acquiring { epoch, start: Some(offset) });
                        self.node.hub.accept(partition, offset);
                    }
                }
                Event::AcquireReady { partition, epoch } => {
                    if let Some(&PartitionState::Acquiring { epoch: e, start: Some(offset) }) =
                        self.state.get(&partition)
                        && e == epoch
                    {
                        self.state.insert(partition, PartitionState::Serving);
                        let _ = self.consumer.send(Command::Start(partition, offset)).await;
                        self.node.metrics.handoffs.increment(Direction::Acquire);
                    }
                }
                Event::Released(partition) => {
                    self.state.remove(&partition);
                    if self.target.contains(&partition) {
                        self.acquire(vec![partition]);
                    }
                    self.node.metrics.handoffs.increment(Direction::Release);
                }
            }
            self.publish();
        }
    }

    /// Lets every partition go now: the leader may give them to others once
    /// the margin has passed.
    fn fence(&mut self) {
        self.fenced = true;
        self.target.clear();
        self.node.metrics.fenced.set(1.0);
        self.node.metrics.fences.increment(1);
        let (handing_off, partitions): (Vec<u32>, Vec<u32>) =
            self.state.keys().partition(|p| self.state[*p] == PartitionState::Releasing);
        tracing::warn!(
            partitions = partitions.len(),
            lease_ms = self.node.lease.valid_for().as_millis() as u64,
            "no heartbeat written for the lease time: fenced, releasing every partition"
        );
        for p in partitions {
            self.release(p, Release::Fence);
        }
        // Users still waiting for their turn in a hand-off go now too.
        for p in handing_off {
            let waiting = self.node.hub.sessions_on(Some(p));
            self.node.pacing.disconnect_now(waiting, CloseReason::Rebalance, self.node.fenced_retry_after);
        }
    }

    /// The lease is valid again and an assignment was read since: serve
    /// what it says, even at an epoch applied before.
    fn unfence(&mut self) {
        let Some(assignment) = self.pending.take() else { return };
        if self.previous.is_some() {
            tracing::info!(epoch = assignment.epoch, "lease renewed: serving the assignment again");
        }
        self.fenced = false;
        self.node.metrics.fenced.set(0.0);
        self.apply(assignment);
    }

    fn apply(&mut self, assignment: Arc<Assignment>) {
        let applied_at = Instant::now();
        self.epoch = assignment.epoch;
        self.target = target_partitions(&assignment, &self.node.node_id);
        let lost: Vec<u32> = self
            .state
            .iter()
            .filter(|(p, s)| !self.target.contains(p) && **s != PartitionState::Releasing)
            .map(|(p, _)| *p)
            .collect();
        let givers = givers_per_taker(self.previous.as_deref(), &assignment);
        for p in lost {
            let share = assignment.owner(p).and_then(|to| givers.get(to.id.as_str())).copied().unwrap_or(1);
            self.release(p, Release::HandOff { share });
        }
        let gained: Vec<u32> = self.target.iter().filter(|p| !self.state.contains_key(p)).copied().collect();
        for p in &gained {
            if self.owned_elsewhere_before(*p) {
                self.node.takeovers.taken_over(*p, applied_at);
            }
        }
        if !gained.is_empty() {
            self.acquire(gained);
        }
        self.previous = Some(assignment);
        tracing::info!(epoch = self.epoch, owned = self.target.len(), "assignment applied");
        self.node.metrics.assignment_epoch.set(self.epoch as f64);
    }

    /// Starts letting `partition` go. From here on none of its sessions
    /// registers, so the release task sees every one that did.
    fn release(&mut self, partition: u32, why: Release) {
        self.node.hub.stop_accepting(partition);
        self.state.insert(partition, PartitionState::Releasing);
        tokio::spawn(release(self.node.clone(), self.consumer.clone(), self.events.clone(), partition, why));
    }

    /// The previous assignment gave `partition` to another node: gaining
    /// it now is a hand-off whose users are on their way here.
    fn owned_elsewhere_before(&self, partition: u32) -> bool {
        let before = self.previous.as_ref().and_then(|a| a.owner(partition));
        before.is_some_and(|owner| owner.id != self.node.node_id)
    }

    /// Gains `partitions`: read where live consumption will start (one
    /// request for all of them), then accept their users, then start
    /// consuming once the old owner let go.
    ///
    /// The start is the committed offset read *before* any of its users is
    /// accepted: every record the old owner dispatches after that is at or
    /// above it, so a user who arrives here first (and whose messages the
    /// old owner may still consume meanwhile) gets them from this node.
    fn acquire(&mut self, partitions: Vec<u32>) {
        let epoch = self.epoch;
        for p in &partitions {
            self.state.insert(*p, PartitionState::Acquiring { epoch, start: None });
        }
        let (node, events) = (self.node.clone(), self.events.clone());
        tokio::spawn(async move {
            let asked = Instant::now();
            let starts = loop {
                if events.is_closed() {
                    return;
                }
                match crate::kafka::start_offsets(node.consumer.clone(), &node.topic, partitions.clone()).await {
                    Ok(starts) => break starts,
                    Err(e) => {
                        node.metrics.kafka_errors.increment(KafkaFailure::Assign);
                        tracing::warn!(partitions = partitions.len(), error = %e, "could not read the start offsets; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            };
            tracing::info!(
                partitions = starts.len(),
                epoch,
                ms = asked.elapsed().as_millis() as u64,
                "start offsets read; accepting users"
            );
            for (partition, offset) in starts {
                if events.send(Event::StartKnown { partition, epoch, offset }).await.is_err() {
                    return;
                }
            }
            if !node.peers.wait_for_ack(epoch, node.peer_ack_timeout).await {
                node.metrics.handoff_timeouts.increment(Direction::Acquire);
                tracing::warn!(
                    partitions = partitions.len(),
                    epoch,
                    "peers did not acknowledge in time; consuming anyway"
                );
            }
            for partition in partitions {
                let _ = events.send(Event::AcquireReady { partition, epoch }).await;
            }
        });
    }

    /// Shares the view with the WebSocket handler and acknowledges the
    /// epoch: the partitions it took away accept no session here any more
    /// (their users may still be moving out, paced; the new owner serves
    /// whoever arrives).
    fn publish(&self) {
        let accepting = self
            .state
            .iter()
            .filter(|(_, s)| **s != PartitionState::Releasing)
            .map(|(p, _)| *p)
            .collect::<HashSet<u32>>();
        self.node.metrics.owned_partitions.set(accepting.len() as f64);
        self.node.ownership.set_view(OwnershipView { epoch: self.epoch, accepting });
        self.node.ownership.acknowledge(self.epoch);
    }
}

/// Lets `partition` go.
///
/// A hand-off moves its users first: paced on the node's schedule (each
/// flushes what it was queued, then is told to reconnect), while the
/// partition is still fetched and dispatched, so a user gets everything
/// live until its turn comes. The new owner serves those who arrived
/// meanwhile from the offset it read before admitting any of them. Once
/// they are gone (or the hand-off timeout), fetching stops and the
/// position is committed: where a later owner starts live. The order keeps
/// the move invisible; the log, not the commit, makes it lossless.
///
/// A fenced node stops fetching and disconnects at once, and commits
/// nothing: another node may own the partition by now.
async fn release(
    node: Arc<HandoffContext>,
    consumer: mpsc::Sender<Command>,
    events: mpsc::Sender<Event>,
    partition: u32,
    why: Release,
) {
    let reason = if node.lifecycle.is_draining() { CloseReason::Drain } else { CloseReason::Rebalance };
    let sessions = node.hub.sessions_on(Some(partition));
    tracing::debug!(partition, sessions = sessions.len(), ?why, "disconnecting");
    match why {
        Release::HandOff { share } => {
            node.pacing.disconnect(sessions, reason, share).await;
            let deadline = Instant::now() + node.handoff_timeout;
            while node.hub.connections_on(partition) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if node.hub.connections_on(partition) > 0 {
                node.metrics.handoff_timeouts.increment(Direction::Release);
                tracing::warn!(partition, "sessions still open at the hand-off deadline");
            }
            stop_fetching(&consumer, partition).await;
            // Fenced meanwhile: another node may own it already.
            if let Some(offset) = node.hub.position(partition).filter(|_| node.lease.is_valid(Instant::now())) {
                commit_release(&node, partition, offset).await;
            }
        }
        Release::Fence => {
            stop_fetching(&consumer, partition).await;
            node.pacing.disconnect_now(sessions, reason, node.fenced_retry_after);
        }
    }
    node.hub.forget_partition(partition);
    let _ = events.send(Event::Released(partition)).await;
}

/// How many nodes give partitions to each node from `previous` to `next`.
/// A node that gains from k others at once gets all their schedules'
/// disconnects: in a scale-out every node gives to the new one, which
/// would receive k times `RTC_HANDOFF_RATE` (the soak measured a
/// reconnect P99 of 1.2 s there, against 0.2 s for a drain's one giver).
/// So each giver paces its users to that node at 1/k of its rate.
fn givers_per_taker<'a>(previous: Option<&Assignment>, next: &'a Assignment) -> HashMap<&'a str, u32> {
    let mut givers: HashMap<&str, HashSet<&str>> = HashMap::new();
    if let Some(previous) = previous {
        for p in 0..next.partitions {
            if let (Some(from), Some(to)) = (previous.owner(p), next.owner(p))
                && from.id != to.id
            {
                givers.entry(to.id.as_str()).or_default().insert(from.id.as_str());
            }
        }
    }
    givers.into_iter().map(|(to, from)| (to, from.len() as u32)).collect()
}

/// Returns once no record of `partition` is dispatched any more.
async fn stop_fetching(consumer: &mpsc::Sender<Command>, partition: u32) {
    let (done, stopped) = oneshot::channel();
    if consumer.send(Command::Release(partition, done)).await.is_ok() {
        let _ = stopped.await;
    }
}

/// Commits the released partition's position (tried twice): a later
/// owner starts live there instead of at the last periodic commit.
async fn commit_release(node: &HandoffContext, partition: u32, offset: i64) {
    let topic = &node.topic;
    let mut result = commit_sync(node.consumer.clone(), topic, partition, offset).await;
    if result.is_err() {
        result = commit_sync(node.consumer.clone(), topic, partition, offset).await;
    }
    match result {
        Ok(()) => tracing::info!(partition, offset, "hand-off committed"),
        Err(e) => {
            node.metrics.kafka_errors.increment(KafkaFailure::HandoffCommit);
            tracing::error!(partition, offset, error = %e, "hand-off commit failed; the next owner redelivers from the last commit");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc_core::AssignmentNode;

    fn assignment(me_state: NodeState) -> Assignment {
        Assignment {
            v: 1,
            epoch: 3,
            leader_epoch: 1,
            partitions: 4,
            nodes: vec![
                AssignmentNode { id: "a".into(), url: "ws://a/ws".into(), state: me_state },
                AssignmentNode { id: "b".into(), url: "ws://b/ws".into(), state: NodeState::Ready },
            ],
            owners: if me_state == NodeState::Ready {
                vec![Some(0), Some(1), Some(0), Some(1)]
            } else {
                vec![Some(1); 4]
            },
        }
    }

    #[test]
    fn each_giver_takes_its_share_of_the_rate_to_a_node_others_give_to() {
        let node = |id: &str| AssignmentNode { id: id.into(), url: format!("ws://{id}/ws"), state: NodeState::Ready };
        let of = |nodes: &[&str], owners: &[u32]| Assignment {
            v: 1,
            epoch: 1,
            leader_epoch: 1,
            partitions: owners.len() as u32,
            nodes: nodes.iter().map(|id| node(id)).collect(),
            owners: owners.iter().map(|o| Some(*o)).collect(),
        };
        let three = of(&["a", "b", "c"], &[0, 1, 2, 0, 1, 2]);
        // A scale-out: a, b and c each give one partition to d.
        let four = of(&["a", "b", "c", "d"], &[3, 3, 3, 0, 1, 2]);
        assert_eq!(givers_per_taker(Some(&three), &four), HashMap::from([("d", 3)]));
        // A drain of a: its partitions go to b and c, one giver each.
        let two = of(&["b", "c"], &[0, 0, 1, 1, 0, 1]);
        assert_eq!(givers_per_taker(Some(&three), &two), HashMap::from([("b", 1), ("c", 1)]));
        assert_eq!(givers_per_taker(None, &three), HashMap::new(), "a first assignment moves nobody");
    }

    #[test]
    fn targets_only_when_listed_ready() {
        assert_eq!(target_partitions(&assignment(NodeState::Ready), "a"), BTreeSet::from([0, 2]));
        assert_eq!(target_partitions(&assignment(NodeState::Ready), "b"), BTreeSet::from([1, 3]));
        assert_eq!(target_partitions(&assignment(NodeState::Draining), "a"), BTreeSet::new());
        assert_eq!(target_partitions(&assignment(NodeState::Ready), "c"), BTreeSet::new());
    }
}

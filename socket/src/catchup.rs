//! Replay from the log: the messages of one user in `[from, to)` of its
//! partition, read from Kafka by a consumer of their own.
//!
//! Resumers of one partition share reads. Requests that arrive within the
//! gather window start one *pass* from the lowest offset any of them needs;
//! a request that arrives while a pass is running joins it, and one that
//! needs older records rewinds the pass (each request remembers the offsets
//! already passed to it, so it gets nothing twice and its records in
//! order). When a rebalance moves thousands of users at once, each
//! partition is read two or three times (`scripts/bench-resume`).
//!
//! Before a pass the partition's log start is read: a request below it is
//! `expired`. A request longer than the scan bound is `too_far_behind`
//! without any read; a pass that makes no progress within the timeout
//! answers `unavailable`.
//!
//! Replayed records count against the node's memory budget and go to the
//! session over a small bounded channel. A record that does not fit (the
//! budget is spent, or the session has not written the ones before it) is
//! not dropped: its request pauses there, and resumes from that record in
//! the next pass once there is room (its channel half empty; for a budget
//! pause, a quarter of the budget free). A request that takes no record for
//! the stall timeout gives up (`unavailable`). A slow reader, or many
//! resumers at once, therefore hold a bounded number of records each.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use rtc_core::protocol::ResumeFailure;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hub::{Budget, Delivery, Held};
use crate::kafka::{KafkaSetupError, delivery_of};
use crate::metrics::{Evicted, Metrics};

/// Replayed records in flight to one session at most.
pub const REPLAY_WINDOW: usize = 64;

/// A paused request tries again after this long (or later, once its
/// session has room).
const PAUSE: Duration = Duration::from_millis(50);

/// How a replay ends.
pub type Outcome = Result<(), ResumeFailure>;

/// The sending half of one replay: the user's records in offset order,
/// then the outcome. The outcome is sent before `records` is dropped, so a
/// receiver that saw the records end finds it.
#[derive(Debug)]
pub struct ReplaySender {
    pub records: mpsc::Sender<Held>,
    outcome: Option<oneshot::Sender<Outcome>>,
}

/// The receiving half: read `records` until it ends, then `outcome`.
#[derive(Debug)]
pub struct ReplayReceiver {
    pub records: mpsc::Receiver<Held>,
    pub outcome: oneshot::Receiver<Outcome>,
}

/// A replay's two halves.
pub fn replay_channel() -> (ReplaySender, ReplayReceiver) {
    let (records_tx, records) = mpsc::channel(REPLAY_WINDOW);
    let (outcome_tx, outcome) = oneshot::channel();
    (ReplaySender { records: records_tx, outcome: Some(outcome_tx) }, ReplayReceiver { records, outcome })
}

impl ReplaySender {
    /// Sends the outcome (once); the records end when this is dropped.
    pub fn finish(&mut self, outcome: Outcome) {
        if let Some(tx) = self.outcome.take() {
            let _ = tx.send(outcome);
        }
    }
}

/// One user's gap.
#[derive(Debug)]
pub struct Request {
    pub partition: u32,
    pub user: String,
    /// First offset wanted (the client's last id + 1).
    pub from: i64,
    /// First offset not wanted: the session's live start.
    pub to: i64,
    pub reply: ReplaySender,
    /// Paused without a record taken since (the give-up clock).
    paused_since: Option<Instant>,
}

/// A request being served: the offsets below `next` were passed to it.
#[derive(Debug)]
struct Active {
    request: Request,
    next: i64,
}

impl Active {
    fn new(request: Request) -> Self {
        let next = request.from;
        Self { request, next }
    }
}

impl Request {
    pub fn new(partition: u32, user: String, from: i64, to: i64, reply: ReplaySender) -> Self {
        Self { partition, user, from, to, reply, paused_since: None }
    }

    fn finish(&mut self, outcome: Outcome) {
        self.reply.finish(outcome);
    }
}

/// A request paused at a record that did not fit.
#[derive(Debug)]
struct Paused {
    /// Not before this.
    retry_at: Instant,
    /// Its record did not fit the budget (else its channel was full).
    budget: bool,
    request: Request,
}

/// What became of a record offered to a request.
enum Offer {
    Taken,
    /// No room in the budget: pause the request at this record.
    NoBudget,
    /// No room in the session's channel: pause likewise.
    Full,
    /// The session is gone.
    Gone,
}

#[derive(Debug, Clone, Copy)]
pub struct CatchUpLimits {
    /// Most records one request may need scanned (`too_far_behind` beyond).
    pub max_records: u64,
    /// How long the first request of a pass waits for others to join.
    pub gather: Duration,
    /// A pass that reads nothing for this long gives up (`unavailable`).
    pub stall_timeout: Duration,
}

/// Submits requests to the catch-up task.
#[derive(Clone)]
pub struct CatchUp {
    requests: mpsc::UnboundedSender<Request>,
    limits: CatchUpLimits,
}

impl CatchUp {
    /// Queues `request`; its answer comes on its reply channel.
    pub fn submit(&self, mut request: Request) {
        if request.from >= request.to {
            request.finish(Ok(()));
        } else if (request.to - request.from) as u64 > self.limits.max_records {
            request.finish(Err(ResumeFailure::TooFarBehind));
        } else if let Err(mpsc::error::SendError(mut request)) = self.requests.send(request) {
            request.finish(Err(ResumeFailure::Unavailable));
        }
    }
}

/// The consumer the catch-up task reads with: no group membership and no
/// commits, only explicit assignments.
pub fn create_consumer(brokers: &str, group: &str, fetch_wait: Duration) -> Result<StreamConsumer, KafkaSetupError> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{group}-catchup"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", fetch_wait.as_millis().to_string())
        .create()?)
}

struct Pass {
    /// Next offset the pass reads.
    position: i64,
    /// Where the running pass started (its scan length is the difference).
    start: i64,
    /// The partition's log start, read when the pass started.
    low: i64,
    /// Set by a (re)assignment: the first record must be at this offset
    /// (anything else was fetched before it).
    expect: Option<i64>,
    /// The partition is assigned to the consumer (librdkafka warns about
    /// unassigning one that is not).
    assigned: bool,
    /// Running requests.
    active: Vec<Active>,
    /// Requests for the next pass.
    waiting: Vec<Request>,
    /// When the pass last made progress (or when it was planned).
    since: Instant,
    state: PassState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PassState {
    /// Gathering requests until this instant.
    Gathering(Instant),
    /// Reading the log start before assigning.
    Checking,
    Reading,
}

/// The log start of a partition, read off the task's loop.
struct LogStart {
    partition: u32,
    low: Result<i64, ()>,
}

pub struct CatchUpTask {
    consumer: Arc<StreamConsumer>,
    topic: String,
    metrics: Arc<Metrics>,
    budget: Arc<Budget>,
    /// Requests paused at a record that did not fit.
    paused: Vec<Paused>,
    limits: CatchUpLimits,
    requests: mpsc::UnboundedReceiver<Request>,
    passes: HashMap<u32, Pass>,
    log_starts: (mpsc::UnboundedSender<LogStart>, mpsc::UnboundedReceiver<LogStart>),
}

impl CatchUpTask {
    pub fn new(
        consumer: StreamConsumer,
        topic: String,
        metrics: Arc<Metrics>,
        budget: Arc<Budget>,
        limits: CatchUpLimits,
    ) -> (CatchUp, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Self {
            consumer: Arc::new(consumer),
            topic,
            metrics,
            budget,
            paused: Vec::new(),
            limits,
            requests: rx,
            passes: HashMap::new(),
            log_starts: mpsc::unbounded_channel(),
        };
        (CatchUp { requests: tx, limits }, task)
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let consumer = self.consumer.clone();
        loop {
            let reading = self.passes.values().any(|p| p.state == PassState::Reading);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                request = self.requests.recv() => match request {
                    Some(r) => self.add(r),
                    None => break,
                },
                Some(start) = self.log_starts.1.recv() => self.checked(start),
                message = consumer.recv(), if reading => match message {
                    Ok(m) => self.record(&m),
                    Err(e) => tracing::warn!(error = %e, "catch-up read error"),
                },
                _ = tick.tick() => self.on_tick(),
            }
        }
        let paused = self.paused.iter_mut().map(|p| &mut p.request);
        for pass in self.passes.values_mut() {
            for r in pass.active.iter_mut().map(|a| &mut a.request).chain(pass.waiting.iter_mut()) {
                r.finish(Err(ResumeFailure::Unavailable));
            }
        }
        for r in paused {
            r.finish(Err(ResumeFailure::Unavailable));
        }
    }

    /// Queues `request` for the next pass of its partition (a running pass
    /// is not rewound for it).
    fn add_next_pass(&mut self, request: Request) {
        match self.passes.get_mut(&request.partition) {
            Some(pass) if pass.state == PassState::Reading => pass.waiting.push(request),
            _ => self.add(request),
        }
    }

    fn add(&mut self, mut request: Request) {
        let now = Instant::now();
        let gather = self.limits.gather;
        let partition = request.partition;
        let pass = self.passes.entry(partition).or_insert_with(|| Pass {
            position: request.from,
            start: request.from,
            low: 0,
            expect: None,
            assigned: false,
            active: Vec::new(),
            waiting: Vec::new(),
            since: now,
            state: PassState::Gathering(now + gather),
        });
        if pass.state != PassState::Reading {
            pass.waiting.push(request);
            return;
        }
        if request.from < pass.low {
            request.finish(Err(ResumeFailure::Expired));
            return;
        }
        // Join the running pass; one that needs older records rewinds it
        // (requests already past those offsets skip them).
        let rewind = request.from < pass.position;
        let from = request.from;
        pass.active.push(Active::new(request));
        if rewind {
            tracing::debug!(partition, from, position = pass.position, "catch-up pass rewinds");
            self.metrics.catchup_reads.increment(1);
            self.read_from(partition, from);
        }
    }

    /// (Re)starts reading `partition` at `from`.
    fn read_from(&mut self, partition: u32, from: i64) {
        let Some(pass) = self.passes.get_mut(&partition) else { return };
        pass.position = from;
        pass.start = pass.start.min(from);
        pass.expect = Some(from);
        pass.since = Instant::now();
        let mut tpl = TopicPartitionList::new();
        let assigned = tpl.add_partition_offset(&self.topic, partition as i32, Offset::Offset(from)).and_then(|()| {
            if pass.assigned {
                let mut old = TopicPartitionList::new();
                old.add_partition(&self.topic, partition as i32);
                self.consumer.incremental_unassign(&old)?;
                pass.assigned = false;
            }
            self.consumer.incremental_assign(&tpl)?;
            pass.assigned = true;
            Ok(())
        });
        if let Err(e) = assigned {
            tracing::warn!(partition, error = %e, "could not start a catch-up read");
            for mut a in pass.active.drain(..) {
                a.request.finish(Err(ResumeFailure::Unavailable));
            }
            self.next_pass(partition);
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        // Paused requests go again once there is room (their session's
        // channel half empty; for a budget pause, a quarter of the budget
        // free), in the next pass rather than rewinding the running one.
        // Those of sessions gone are dropped; those that took no record
        // for the stall timeout give up.
        let give_up = self.limits.stall_timeout;
        let budget_room = self.budget.used() <= self.budget.limit() / 4 * 3;
        let stalled = |r: &Request| r.paused_since.is_some_and(|t| now.duration_since(t) >= give_up);
        let (due, paused): (Vec<_>, Vec<_>) = std::mem::take(&mut self.paused).into_iter().partition(|p| {
            let records = &p.request.reply.records;
            let room = records.capacity() >= REPLAY_WINDOW / 2 && (!p.budget || budget_room);
            records.is_closed() || stalled(&p.request) || (p.retry_at <= now && room)
        });
        self.paused = paused;
        for mut p in due {
            if p.request.reply.records.is_closed() {
                continue;
            }
            if stalled(&p.request) {
                p.request.finish(Err(ResumeFailure::Unavailable));
            } else {
                self.add_next_pass(p.request);
            }
        }
        let mut due = Vec::new();
        let mut stalled = Vec::new();
        for (p, pass) in &self.passes {
            match pass.state {
                PassState::Gathering(at) if at <= now => due.push(*p),
                PassState::Reading if now.duration_since(pass.since) >= self.limits.stall_timeout => stalled.push(*p),
                _ => {}
            }
        }
        for p in due {
            self.check_log_start(p);
        }
        for p in stalled {
            tracing::warn!(partition = p, "catch-up read made no progress; giving up on its requests");
            if let Some(pass) = self.passes.get_mut(&p) {
                for mut a in pass.active.drain(..) {
                    a.request.finish(Err(ResumeFailure::Unavailable));
                }
            }
            self.next_pass(p);
        }
    }

    /// Reads the log start of `partition` on a blocking thread; the answer
    /// comes back as a [`LogStart`].
    fn check_log_start(&mut self, partition: u32) {
        let Some(pass) = self.passes.get_mut(&partition) else { return };
        pass.state = PassState::Checking;
        let (consumer, topic, answer) = (self.consumer.clone(), self.topic.clone(), self.log_starts.0.clone());
        tokio::task::spawn_blocking(move || {
            let low = consumer
                .fetch_watermarks(&topic, partition as i32, Duration::from_secs(5))
                .map(|(low, _)| low)
                .map_err(|e| tracing::warn!(partition, error = %e, "could not read the log start"));
            let _ = answer.send(LogStart { partition, low });
        });
    }

    /// Starts the pass once the log start is known.
    fn checked(&mut self, start: LogStart) {
        let Some(pass) = self.passes.get_mut(&start.partition) else { return };
        let waiting = std::mem::take(&mut pass.waiting);
        let (ok, failed): (Vec<_>, Vec<_>) = match start.low {
            Ok(low) => waiting.into_iter().partition(|r| r.from >= low),
            Err(()) => (Vec::new(), waiting),
        };
        let reason = if start.low.is_ok() { ResumeFailure::Expired } else { ResumeFailure::Unavailable };
        for mut r in failed {
            r.finish(Err(reason));
        }
        let Some(from) = ok.iter().map(|r| r.from).min() else {
            self.passes.remove(&start.partition);
            return;
        };
        pass.active = ok.into_iter().map(Active::new).collect();
        pass.low = start.low.unwrap_or(0);
        pass.start = from;
        pass.state = PassState::Reading;
        tracing::debug!(partition = start.partition, from, requests = pass.active.len(), "catch-up pass starts");
        self.metrics.catchup_reads.increment(1);
        self.read_from(start.partition, from);
    }

    fn record(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) {
        let key = m.key().and_then(|k| std::str::from_utf8(k).ok());
        self.on_record(m.partition() as u32, m.offset(), key, || delivery_of(m).map(|(_, d)| d));
    }

    /// One record read: `key` is its user; `delivery` renders it (once,
    /// for the requests that want it).
    fn on_record(
        &mut self,
        partition: u32,
        offset: i64,
        key: Option<&str>,
        delivery: impl FnOnce() -> Option<Delivery>,
    ) {
        let mut render = Some(delivery);
        let Some(pass) = self.passes.get_mut(&partition).filter(|p| p.state == PassState::Reading) else { return };
        match pass.expect {
            // Fetched before the last (re)assignment.
            Some(first) if offset != first => return,
            Some(_) => pass.expect = None,
            None if offset < pass.position => return,
            None => {}
        }
        pass.position = offset + 1;
        pass.since = Instant::now();
        self.metrics.catchup_scanned.increment(1);
        let (budget, metrics) = (&self.budget, &self.metrics);
        let mut delivery: Option<Arc<Delivery>> = None;
        let mut paused = Vec::new();
        let mut i = 0;
        while i < pass.active.len() {
            let a = &mut pass.active[i];
            if a.next > offset || offset >= a.request.to {
                i += 1;
                continue;
            }
            if Some(a.request.user.as_str()) == key {
                if let Some(render) = render.take() {
                    delivery = render().map(Arc::new);
                }
                let offer = match &delivery {
                    None => Offer::Taken,
                    Some(d) => offer(&a.request.reply, budget, metrics, d),
                };
                match offer {
                    Offer::Taken => a.request.paused_since = None,
                    Offer::NoBudget | Offer::Full => {
                        let mut a = pass.active.swap_remove(i);
                        let now = Instant::now();
                        a.request.from = offset;
                        a.request.paused_since.get_or_insert(now);
                        let budget = matches!(offer, Offer::NoBudget);
                        paused.push(Paused { retry_at: now + PAUSE, budget, request: a.request });
                        continue;
                    }
                    Offer::Gone => {
                        pass.active.swap_remove(i);
                        continue;
                    }
                }
            }
            a.next = offset + 1;
            i += 1;
        }
        self.paused.extend(paused);
        pass.active.retain_mut(|a| {
            let done = a.next >= a.request.to;
            if done {
                a.request.finish(Ok(()));
            }
            !done
        });
        if pass.active.is_empty() {
            self.next_pass(partition);
        }
    }

    /// The running pass of `partition` is over: stop reading it, and plan
    /// the next one if requests wait.
    fn next_pass(&mut self, partition: u32) {
        if let Some(pass) = self.passes.get_mut(&partition).filter(|p| p.assigned) {
            pass.assigned = false;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&self.topic, partition as i32);
            if let Err(e) = self.consumer.incremental_unassign(&tpl) {
                tracing::warn!(partition, error = %e, "could not stop a catch-up read");
            }
        }
        if let Some(pass) = self.passes.get(&partition).filter(|p| p.state == PassState::Reading) {
            self.metrics.catchup_scan_records.record((pass.position - pass.start).max(0) as f64);
            tracing::debug!(
                partition,
                start = pass.start,
                end = pass.position,
                next = pass.waiting.len(),
                "catch-up pass ends"
            );
        }
        match self.passes.get_mut(&partition) {
            Some(pass) if !pass.waiting.is_empty() => {
                pass.state = PassState::Gathering(Instant::now());
            }
            _ => {
                self.passes.remove(&partition);
            }
        }
    }
}

/// Offers one record to a request's session: counted against the budget,
/// into its bounded channel.
fn offer(reply: &ReplaySender, budget: &Arc<Budget>, metrics: &Metrics, delivery: &Arc<Delivery>) -> Offer {
    let Some(held) = budget.hold(delivery) else {
        metrics.budget_evictions.increment(Evicted::Replay);
        return Offer::NoBudget;
    };
    match reply.records.try_send(held) {
        Ok(()) => Offer::Taken,
        Err(mpsc::error::TrySendError::Full(_)) => Offer::Full,
        Err(mpsc::error::TrySendError::Closed(_)) => Offer::Gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> CatchUpTask {
        // No broker: assignments are local, records are fed by hand.
        let consumer = create_consumer("127.0.0.1:1", "catchup-test", Duration::from_millis(10)).unwrap();
        let limits =
            CatchUpLimits { max_records: 1000, gather: Duration::ZERO, stall_timeout: Duration::from_secs(60) };
        CatchUpTask::new(consumer, "t".into(), Arc::new(Metrics::new()), Budget::new(usize::MAX), limits).1
    }

    fn request(user: &str, from: i64, to: i64) -> (Request, ReplayReceiver) {
        let (tx, rx) = replay_channel();
        (Request::new(0, user.into(), from, to, tx), rx)
    }

    /// Even offsets are user a's records, odd ones b's.
    fn feed(task: &mut CatchUpTask, offsets: impl IntoIterator<Item = i64>) {
        for o in offsets {
            let user = if o % 2 == 0 { "a" } else { "b" };
            let delivery = || {
                let frame = o.to_string().into();
                Some(Delivery { partition: 0, offset: o, ts_ms: 0, frame, buffered_at: Instant::now() })
            };
            task.on_record(0, o, Some(user), delivery);
        }
    }

    fn received(rx: &mut ReplayReceiver) -> (Vec<i64>, Option<Outcome>) {
        let mut offsets = Vec::new();
        while let Ok(held) = rx.records.try_recv() {
            offsets.push(held.offset);
        }
        (offsets, rx.outcome.try_recv().ok())
    }

    #[tokio::test]
    async fn a_request_needing_older_records_rewinds_the_pass_and_nothing_comes_twice() {
        let mut task = task();
        let (a, mut a_rx) = request("a", 50, 60);
        task.add(a);
        task.checked(LogStart { partition: 0, low: Ok(0) });
        feed(&mut task, 50..55);
        // b needs records from 10: the running pass goes back there.
        let (b, mut b_rx) = request("b", 10, 60);
        task.add(b);
        // A record fetched before the rewind arrives late: ignored.
        feed(&mut task, [55]);
        feed(&mut task, 10..60);
        assert_eq!(received(&mut a_rx), (vec![50, 52, 54, 56, 58], Some(Ok(()))), "a: each once, in order");
        let odd: Vec<i64> = (11..60).step_by(2).collect();
        assert_eq!(received(&mut b_rx), (odd, Some(Ok(()))), "b: its whole gap, in order");
        assert!(task.passes.is_empty(), "the pass ended with its last request");
    }

    #[tokio::test]
    async fn a_request_joining_a_pass_ahead_of_its_start_does_not_rewind_it() {
        let mut task = task();
        let (a, mut a_rx) = request("a", 10, 30);
        task.add(a);
        task.checked(LogStart { partition: 0, low: Ok(0) });
        feed(&mut task, 10..15);
        let (b, mut b_rx) = request("b", 20, 30);
        task.add(b);
        assert_eq!(task.passes[&0].expect, None, "no rewind: the pass reaches 20 anyway");
        feed(&mut task, 15..30);
        assert_eq!(received(&mut a_rx), ((10..30).step_by(2).collect(), Some(Ok(()))));
        assert_eq!(received(&mut b_rx), ((21..30).step_by(2).collect(), Some(Ok(()))));
    }

    #[tokio::test]
    async fn a_request_below_the_log_start_is_expired() {
        let mut task = task();
        let (a, mut a_rx) = request("a", 5, 30);
        let (b, mut b_rx) = request("b", 12, 30);
        task.add(a);
        task.add(b);
        task.checked(LogStart { partition: 0, low: Ok(10) });
        assert_eq!(received(&mut a_rx), (vec![], Some(Err(ResumeFailure::Expired))));
        feed(&mut task, 12..30);
        assert_eq!(received(&mut b_rx), ((13..30).step_by(2).collect(), Some(Ok(()))));
    }
}

//! The message ledger: who is online, what was produced to whom, what each
//! user received, and what was lost. Pure: every call takes the time.
//!
//! - A user is **online** (a message target) from its first `welcome` until
//!   it starts to leave; reconnects in between do not take it offline, so
//!   messages produced while it moves between nodes must still arrive.
//! - Every message carries its sequence number in its body (see [`body`]);
//!   a user dedupes by message id (`partition:offset`) and the ledger counts
//!   the raw duplicates it saw.
//! - **Lost**: acknowledged by Kafka, produced to an online user, and never
//!   delivered to that user by the end of the run.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::stats::{HIST_MAX_MS, Histogram};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Joined, no `welcome` yet.
    Joining,
    /// Between the first `welcome` and the start of its leave.
    Online,
    /// Leaving: no new messages, waiting for the ones on their way.
    Leaving,
    /// Closed cleanly.
    Left,
    /// Stopped by the server or out of attempts.
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ack {
    Pending,
    Ok,
    Failed,
}

#[derive(Debug)]
struct MsgRec {
    user: u32,
    produced_ms: i64,
    ack: Ack,
    delivered: bool,
}

const NOT_ONLINE: usize = usize::MAX;

#[derive(Debug)]
struct UserRec {
    presence: Presence,
    online_since_ms: Option<i64>,
    /// Index in `Ledger::online` while a target.
    online_pos: usize,
    /// Message ids seen (`partition << 40 | offset`).
    seen: HashSet<u64>,
    /// Produced to this user, not failed, not delivered yet.
    pending: u32,
    received: u64,
    duplicates: u64,
    /// Key of the highest id received: a new id below it came out of order.
    last: Option<u64>,
}

/// What one `message` frame turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A message of this run seen for the first time.
    New,
    /// An id this user already received (at-least-once redelivery).
    DuplicateId,
    /// A new id carrying a sequence number already delivered (the
    /// producer wrote the record twice): it would pass the client's dedupe.
    DuplicateSeq,
    /// A message of this run meant for another user.
    Misrouted,
    /// Not a message of this run (another run, another producer).
    Foreign,
    /// The frame's id is not `partition:offset`.
    BadId,
}

/// The body of a produced message: this run, its sequence number and its
/// recipient (plus padding).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Body<'a> {
    pub lg: &'a str,
    pub seq: u64,
    pub to: &'a str,
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub pad: &'a str,
}

pub fn body(run_id: &str, seq: u64, to: &str, pad: &str) -> String {
    serde_json::to_string(&Body { lg: run_id, seq, to, pad }).expect("bodies serialise")
}

/// `partition:offset` as one number (offsets stay far below 2^40).
pub fn id_key(id: &str) -> Option<u64> {
    let (p, o) = id.split_once(':')?;
    let (p, o): (u64, u64) = (p.parse().ok()?, o.parse().ok()?);
    (p < (1 << 23) && o < (1 << 40)).then_some((p << 40) | o)
}

/// Running totals, cheap to read every second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub produced: u64,
    pub acked: u64,
    pub send_failed: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub pending: u64,
    pub online: u64,
}

/// One lost message, for the report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Lost {
    pub seq: u64,
    pub user: String,
    pub produced_ms: i64,
}

/// The ledger's part of the report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Records handed to the producer.
    pub messages_produced: u64,
    /// Acknowledged by Kafka.
    pub messages_sent: u64,
    /// Refused by the producer or failed in Kafka.
    pub send_failed: u64,
    /// Still unacknowledged at the end (counted neither sent nor lost).
    pub send_unacked: u64,
    /// Distinct messages delivered to their recipient.
    pub messages_delivered: u64,
    /// Acknowledged messages for online users never delivered.
    pub messages_lost: u64,
    pub users_with_loss: u64,
    /// Raw duplicates: message ids a user had already received.
    pub duplicates: u64,
    /// Same message under a new id (would get through a client's dedupe).
    pub duplicate_deliveries: u64,
    /// New ids that arrived below one already received for the same user:
    /// the socket tier promises strictly increasing ids per user.
    pub order_violations: u64,
    pub misrouted: u64,
    pub foreign_messages: u64,
    pub bad_ids: u64,
    pub users_joined: u64,
    pub users_welcomed: u64,
    pub users_left: u64,
    pub users_ended: u64,
    pub delivery_p50_ms: Option<u64>,
    pub delivery_p99_ms: Option<u64>,
    pub delivery_max_ms: Option<u64>,
    /// The first lost messages (at most the sample size asked for).
    pub lost_sample: Vec<Lost>,
}

#[derive(Debug)]
pub struct Ledger {
    run_id: String,
    user_prefix: String,
    users: Vec<UserRec>,
    online: Vec<u32>,
    messages: Vec<MsgRec>,
    totals: Totals,
    duplicate_seqs: u64,
    order_violations: u64,
    misrouted: u64,
    foreign: u64,
    bad_ids: u64,
    latency: Histogram,
    /// Latencies since the last [`Ledger::take_recent_latency`], ms →
    /// count (at most one key per millisecond up to the histogram's cap).
    recent_latency: BTreeMap<u64, u64>,
}

impl Ledger {
    pub fn new(run_id: impl Into<String>, user_prefix: impl Into<String>) -> Self {
        Self {
            run_id: run_id.into(),
            user_prefix: user_prefix.into(),
            users: Vec::new(),
            online: Vec::new(),
            messages: Vec::new(),
            totals: Totals::default(),
            duplicate_seqs: 0,
            order_violations: 0,
            misrouted: 0,
            foreign: 0,
            bad_ids: 0,
            latency: Histogram::default(),
            recent_latency: BTreeMap::new(),
        }
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn user_name(&self, user: u32) -> String {
        format!("{}{user}", self.user_prefix)
    }

    /// A new user (a fresh id: a user who left never comes back).
    pub fn join(&mut self) -> u32 {
        let id = self.users.len() as u32;
        self.users.push(UserRec {
            presence: Presence::Joining,
            online_since_ms: None,
            online_pos: NOT_ONLINE,
            seen: HashSet::new(),
            pending: 0,
            received: 0,
            duplicates: 0,
            last: None,
        });
        id
    }

    pub fn presence(&self, user: u32) -> Option<Presence> {
        self.users.get(user as usize).map(|u| u.presence)
    }

    /// A `welcome`: the first one puts the user online. Returns true then.
    pub fn welcomed(&mut self, user: u32, now_ms: i64) -> bool {
        let Some(rec) = self.users.get_mut(user as usize) else { return false };
        if rec.presence != Presence::Joining {
            return false;
        }
        rec.presence = Presence::Online;
        rec.online_since_ms = Some(now_ms);
        rec.online_pos = self.online.len();
        self.online.push(user);
        self.totals.online += 1;
        true
    }

    /// The user starts to leave: no more messages are produced to it.
    pub fn leave(&mut self, user: u32) {
        match self.presence(user) {
            Some(Presence::Online) => {
                self.take_offline(user);
                self.users[user as usize].presence = Presence::Leaving;
            }
            Some(Presence::Joining) => self.users[user as usize].presence = Presence::Left,
            _ => {}
        }
    }

    /// The user closed cleanly.
    pub fn left(&mut self, user: u32) {
        if matches!(self.presence(user), Some(Presence::Online)) {
            self.take_offline(user);
        }
        if let Some(rec) = self.users.get_mut(user as usize)
            && rec.presence != Presence::Ended
        {
            rec.presence = Presence::Left;
        }
    }

    /// The user stopped for good without leaving (the server said not to
    /// come back, or it ran out of attempts).
    pub fn ended(&mut self, user: u32) {
        if matches!(self.presence(user), Some(Presence::Online)) {
            self.take_offline(user);
        }
        if let Some(rec) = self.users.get_mut(user as usize) {
            rec.presence = Presence::Ended;
        }
    }

    fn take_offline(&mut self, user: u32) {
        let pos = std::mem::replace(&mut self.users[user as usize].online_pos, NOT_ONLINE);
        if pos == NOT_ONLINE {
            return;
        }
        self.online.swap_remove(pos);
        if let Some(&moved) = self.online.get(pos) {
            self.users[moved as usize].online_pos = pos;
        }
        self.totals.online -= 1;
    }

    pub fn online_count(&self) -> usize {
        self.online.len()
    }

    /// Records a message to the online user `pick % online` and returns its
    /// sequence number and recipient; `None` when nobody is online.
    pub fn produce(&mut self, now_ms: i64, pick: u64) -> Option<(u64, u32)> {
        if self.online.is_empty() {
            return None;
        }
        let user = self.online[(pick % self.online.len() as u64) as usize];
        let seq = self.messages.len() as u64;
        self.messages.push(MsgRec { user, produced_ms: now_ms, ack: Ack::Pending, delivered: false });
        self.users[user as usize].pending += 1;
        self.totals.produced += 1;
        self.totals.pending += 1;
        Some((seq, user))
    }

    /// Kafka's answer for `seq` (or the producer refused it: `ok = false`).
    pub fn acked(&mut self, seq: u64, ok: bool) {
        let Some(msg) = self.messages.get_mut(seq as usize) else { return };
        if msg.ack != Ack::Pending {
            return;
        }
        if ok {
            msg.ack = Ack::Ok;
            self.totals.acked += 1;
        } else {
            msg.ack = Ack::Failed;
            self.totals.send_failed += 1;
            if !msg.delivered {
                self.users[msg.user as usize].pending -= 1;
                self.totals.pending -= 1;
            }
        }
    }

    /// One `message` frame received by `user`.
    pub fn received(&mut self, user: u32, id: &str, body: &str, now_ms: i64) -> Received {
        let Some(rec) = self.users.get_mut(user as usize) else { return Received::Foreign };
        rec.received += 1;
        let Some(key) = id_key(id) else {
            self.bad_ids += 1;
            return Received::BadId;
        };
        if !rec.seen.insert(key) {
            rec.duplicates += 1;
            self.totals.duplicates += 1;
            return Received::DuplicateId;
        }
        // Ids of one partition must only grow (same partition: same high bits).
        if rec.last.is_some_and(|last| key < last && key >> 40 == last >> 40) {
            self.order_violations += 1;
        }
        rec.last = Some(rec.last.map_or(key, |l| l.max(key)));
        let parsed = serde_json::from_str::<Body<'_>>(body).ok().filter(|b| b.lg == self.run_id);
        let Some(msg) = parsed.and_then(|b| self.messages.get_mut(b.seq as usize)) else {
            self.foreign += 1;
            return Received::Foreign;
        };
        if msg.user != user {
            self.misrouted += 1;
            return Received::Misrouted;
        }
        if msg.delivered {
            self.duplicate_seqs += 1;
            return Received::DuplicateSeq;
        }
        msg.delivered = true;
        self.totals.delivered += 1;
        if msg.ack != Ack::Failed {
            self.users[user as usize].pending -= 1;
            self.totals.pending -= 1;
        }
        let latency_ms = (now_ms - msg.produced_ms).max(0) as u64;
        self.latency.record(latency_ms);
        *self.recent_latency.entry(latency_ms.min(HIST_MAX_MS as u64)).or_default() += 1;
        Received::New
    }

    /// The delivery latencies recorded since the last call (ms → count):
    /// the timeline's per-interval distribution, which a reader can merge
    /// over any window.
    pub fn take_recent_latency(&mut self) -> BTreeMap<u64, u64> {
        std::mem::take(&mut self.recent_latency)
    }

    /// Messages on their way to `user`.
    pub fn pending_of(&self, user: u32) -> u32 {
        self.users.get(user as usize).map_or(0, |u| u.pending)
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    pub fn summary(&self, sample: usize) -> Summary {
        let mut lost = 0;
        let mut lost_sample = Vec::new();
        let mut users_with_loss = HashSet::new();
        let mut unacked = 0;
        for (seq, m) in self.messages.iter().enumerate() {
            match m.ack {
                Ack::Pending => unacked += 1,
                Ack::Ok if !m.delivered => {
                    lost += 1;
                    users_with_loss.insert(m.user);
                    if lost_sample.len() < sample {
                        lost_sample.push(Lost {
                            seq: seq as u64,
                            user: self.user_name(m.user),
                            produced_ms: m.produced_ms,
                        });
                    }
                }
                _ => {}
            }
        }
        let count = |p: Presence| self.users.iter().filter(|u| u.presence == p).count() as u64;
        Summary {
            messages_produced: self.totals.produced,
            messages_sent: self.totals.acked,
            send_failed: self.totals.send_failed,
            send_unacked: unacked,
            messages_delivered: self.totals.delivered,
            messages_lost: lost,
            users_with_loss: users_with_loss.len() as u64,
            duplicates: self.totals.duplicates,
            duplicate_deliveries: self.duplicate_seqs,
            order_violations: self.order_violations,
            misrouted: self.misrouted,
            foreign_messages: self.foreign,
            bad_ids: self.bad_ids,
            users_joined: self.users.len() as u64,
            users_welcomed: self.users.iter().filter(|u| u.online_since_ms.is_some()).count() as u64,
            users_left: count(Presence::Left),
            users_ended: count(Presence::Ended),
            delivery_p50_ms: self.latency.quantile(0.5),
            delivery_p99_ms: self.latency.quantile(0.99),
            delivery_max_ms: self.latency.max(),
            lost_sample,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "r1";

    /// Produces to `user` (it must be the only one online, or picked by index).
    fn produce_to(l: &mut Ledger, user: u32, now: i64) -> u64 {
        let pos = l.users[user as usize].online_pos as u64;
        let (seq, to) = l.produce(now, pos).expect("someone online");
        assert_eq!(to, user);
        seq
    }

    fn deliver(l: &mut Ledger, user: u32, id: &str, seq: u64, now: i64) -> Received {
        let name = l.user_name(user);
        l.received(user, id, &body(RUN, seq, &name, ""), now)
    }

    #[test]
    fn bodies_round_trip_and_ids_are_keys() {
        let b = body(RUN, 7, "lg-3", "xx");
        let parsed: Body<'_> = serde_json::from_str(&b).unwrap();
        assert_eq!(parsed, Body { lg: RUN, seq: 7, to: "lg-3", pad: "xx" });
        assert!(!body(RUN, 7, "lg-3", "").contains("pad"));
        assert_eq!(id_key("17:4711"), Some((17 << 40) | 4711));
        assert_ne!(id_key("1:0"), id_key("0:1"));
        for bad in ["", "17", "x:1", "1:x", "-1:2", "1:-2"] {
            assert_eq!(id_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_online_users_are_targets() {
        let mut l = Ledger::new(RUN, "lg-");
        assert_eq!(l.produce(0, 0), None);
        let (a, b, c) = (l.join(), l.join(), l.join());
        assert_eq!(l.produce(0, 0), None, "nobody welcomed yet");
        assert!(l.welcomed(a, 10));
        assert!(!l.welcomed(a, 11), "only the first welcome counts");
        l.welcomed(b, 10);
        l.welcomed(c, 10);
        assert_eq!(l.online_count(), 3);
        l.leave(b);
        assert_eq!(l.presence(b), Some(Presence::Leaving));
        assert_eq!(l.online_count(), 2);
        // Every pick lands on a or c.
        for pick in 0..10 {
            let (_, to) = l.produce(20, pick).unwrap();
            assert!(to == a || to == c);
        }
        l.ended(a);
        l.left(c);
        assert_eq!(l.online_count(), 0);
        assert_eq!(l.totals().online, 0);
        assert_eq!(l.produce(30, 0), None);
        // A user leaving before its welcome never was online.
        let d = l.join();
        l.leave(d);
        assert_eq!(l.presence(d), Some(Presence::Left));
        assert!(!l.welcomed(d, 40));
    }

    #[test]
    fn delivered_lost_and_pending() {
        let mut l = Ledger::new(RUN, "lg-");
        let (a, b) = (l.join(), l.join());
        l.welcomed(a, 0);
        l.welcomed(b, 0);
        let s1 = produce_to(&mut l, a, 100);
        let s2 = produce_to(&mut l, a, 110);
        let s3 = produce_to(&mut l, b, 120);
        let s4 = produce_to(&mut l, b, 130);
        assert_eq!(l.pending_of(a), 2);
        for s in [s1, s2, s3, s4] {
            l.acked(s, true);
        }
        assert_eq!(deliver(&mut l, a, "3:1", s1, 150), Received::New);
        assert_eq!(l.pending_of(a), 1);
        assert_eq!(l.take_recent_latency(), BTreeMap::from([(50, 1)]));
        assert_eq!(deliver(&mut l, b, "5:1", s3, 170), Received::New);
        assert_eq!(l.take_recent_latency(), BTreeMap::from([(50, 1)]), "only what came since");
        assert!(l.take_recent_latency().is_empty());
        // b left before s4 arrived: s4 is lost; a's s2 also never came.
        l.leave(b);
        l.left(b);
        let s = l.summary(10);
        assert_eq!((s.messages_produced, s.messages_sent, s.messages_delivered), (4, 4, 2));
        assert_eq!(s.messages_lost, 2);
        assert_eq!(s.users_with_loss, 2);
        assert_eq!(
            s.lost_sample,
            vec![
                Lost { seq: s2, user: "lg-0".into(), produced_ms: 110 },
                Lost { seq: s4, user: "lg-1".into(), produced_ms: 130 },
            ]
        );
        assert_eq!(s.delivery_p50_ms, Some(50));
        assert_eq!(s.delivery_max_ms, Some(50));
        assert_eq!(l.summary(1).lost_sample.len(), 1);
        assert_eq!((s.users_joined, s.users_welcomed, s.users_left), (2, 2, 1));
    }

    #[test]
    fn delivery_may_come_before_the_ack() {
        let mut l = Ledger::new(RUN, "lg-");
        let a = l.join();
        l.welcomed(a, 0);
        let s = produce_to(&mut l, a, 0);
        assert_eq!(deliver(&mut l, a, "0:0", s, 5), Received::New);
        assert_eq!(l.pending_of(a), 0);
        l.acked(s, true);
        l.acked(s, false); // a second answer changes nothing
        let sum = l.summary(5);
        assert_eq!((sum.messages_sent, sum.messages_delivered, sum.messages_lost, sum.send_failed), (1, 1, 0, 0));
        assert_eq!(l.totals().pending, 0);
    }

    #[test]
    fn failed_and_unacked_sends_are_not_lost() {
        let mut l = Ledger::new(RUN, "lg-");
        let a = l.join();
        l.welcomed(a, 0);
        let failed = produce_to(&mut l, a, 0);
        let _unacked = produce_to(&mut l, a, 0);
        l.acked(failed, false);
        assert_eq!(l.pending_of(a), 1);
        let s = l.summary(5);
        assert_eq!((s.messages_sent, s.send_failed, s.send_unacked, s.messages_lost), (0, 1, 1, 0));
    }

    #[test]
    fn duplicates_misroutes_and_foreign_messages() {
        let mut l = Ledger::new(RUN, "lg-");
        let (a, b) = (l.join(), l.join());
        l.welcomed(a, 0);
        l.welcomed(b, 0);
        let s = produce_to(&mut l, a, 0);
        l.acked(s, true);
        assert_eq!(deliver(&mut l, a, "1:9", s, 1), Received::New);
        assert_eq!(deliver(&mut l, a, "1:9", s, 2), Received::DuplicateId);
        assert_eq!(deliver(&mut l, a, "1:10", s, 2), Received::DuplicateSeq);
        assert_eq!(deliver(&mut l, b, "1:11", s, 2), Received::Misrouted);
        assert_eq!(l.received(a, "1:12", &body("other-run", s, "lg-0", ""), 3), Received::Foreign);
        assert_eq!(l.received(a, "1:13", "hello", 3), Received::Foreign);
        assert_eq!(l.received(a, "1:14", &body(RUN, 999, "lg-0", ""), 3), Received::Foreign);
        assert_eq!(l.received(a, "nope", "hello", 3), Received::BadId);
        assert_eq!(l.received(99, "1:1", "hello", 3), Received::Foreign);
        let sum = l.summary(5);
        assert_eq!((sum.duplicates, sum.duplicate_deliveries, sum.misrouted), (1, 1, 1));
        assert_eq!((sum.foreign_messages, sum.bad_ids), (3, 1));
        assert_eq!((sum.messages_delivered, sum.messages_lost), (1, 0));
    }

    #[test]
    fn the_online_set_stays_consistent() {
        // Joins, welcomes and leaves in a scrambled order.
        let mut l = Ledger::new(RUN, "u");
        let users: Vec<u32> = (0..50).map(|_| l.join()).collect();
        for &u in &users {
            l.welcomed(u, 0);
        }
        for &u in users.iter().filter(|u| *u % 3 == 0) {
            l.leave(u);
        }
        for &u in users.iter().filter(|u| *u % 7 == 0) {
            l.ended(u);
        }
        let expected: HashSet<u32> = users.iter().copied().filter(|u| u % 3 != 0 && u % 7 != 0).collect();
        let actual: HashSet<u32> = l.online.iter().copied().collect();
        assert_eq!(actual, expected);
        assert_eq!(l.totals().online as usize, expected.len());
        for (pos, &u) in l.online.iter().enumerate() {
            assert_eq!(l.users[u as usize].online_pos, pos);
        }
    }
}

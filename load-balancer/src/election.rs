//! Leader election on Redis with fencing.
//!
//! - **Acquire**: one Lua script does `SET NX PX` on the lease key with a
//!   fresh fencing epoch from `INCR`, so the epoch and the lease can never
//!   disagree.
//! - **Renew / release**: compare-and-set scripts; only the exact lease
//!   value (holder and epoch) may extend or delete it.
//! - **Fenced writes**: every leader write goes through a script that checks
//!   the lease still holds the writer's value, so an ex-leader that was
//!   paused past its lease can never overwrite the new leader's state.
//! - **Stepping down**: a leader renews every TTL/3 and stops acting as
//!   leader once its last successful renewal is older than the TTL minus a
//!   safety margin, even when Redis cannot be reached to say so.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The lease value: who leads, under which fencing epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    pub epoch: u64,
}

impl Lease {
    fn value(&self) -> String {
        serde_json::to_string(self).expect("lease serialises")
    }
}

/// What this replica currently is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Follower,
    Leader(Lease),
}

impl Role {
    pub fn lease(&self) -> Option<&Lease> {
        match self {
            Role::Leader(lease) => Some(lease),
            Role::Follower => None,
        }
    }
}

/// Builds the same JSON as [`Lease::value`] (holder ids are node-id
/// characters, so nothing needs escaping).
/// `ARGV[3]` is the lowest epoch the new lease may take: the counter is
/// lost with Redis's data, and fencing epochs must still only go forward.
const ACQUIRE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local epoch = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if epoch < floor then
  epoch = floor
  redis.call('SET', KEYS[2], epoch)
end
local value = '{"holder":"' .. ARGV[1] .. '","epoch":' .. epoch .. '}'
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return epoch
"#;

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The lease's remaining milliseconds if it holds `ARGV[1]`, else -1.
const HOLDS: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PTTL', KEYS[1]) end
return -1
";

/// `KEYS[1]` lease, `KEYS[2]` target; `ARGV[1]` lease value, `ARGV[2]` the
/// document, `ARGV[3]` optional channel and `ARGV[4]` its message, `ARGV[5]`
/// optional: the document's epoch, for documents whose `epoch` only goes
/// forward. Then an identical stored document is left alone (2), and a
/// stored one with the same or a newer epoch is refused (3), so a retried
/// write can never put a different document under an epoch that readers
/// have already applied; a missing or unreadable one is replaced.
/// 0: fenced; 1: written.
const FENCED_SET: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[5] ~= '' then
  local stored = redis.call('GET', KEYS[2])
  if stored == ARGV[2] then return 2 end
  if stored then
    local ok, doc = pcall(cjson.decode, stored)
    if ok and type(doc) == 'table' and tonumber(doc.epoch) and tonumber(doc.epoch) >= tonumber(ARGV[5]) then
      return 3
    end
  end
end
redis.call('SET', KEYS[2], ARGV[2])
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return 1
";

/// What a [`LeaseStore::fenced_set_forward`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardWrite {
    /// Written (the key was missing, unreadable, older or different).
    Written,
    /// The identical document was already there.
    Unchanged,
    /// Refused: the stored document has the same or a newer epoch.
    Stale,
}

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the lease is no longer held by this leader (fenced)")]
    Fenced,
    #[error("invalid holder id: {0}")]
    BadHolder(rtc_core::ContractError),
}

/// The Redis side of the election: keys and scripts.
#[derive(Clone)]
pub struct LeaseStore {
    lease_key: String,
    epoch_key: String,
    ttl: Duration,
}

impl LeaseStore {
    pub fn new(keys: &rtc_core::Keys, ttl: Duration) -> Self {
        Self { lease_key: keys.leader(), epoch_key: keys.leader_epoch(), ttl }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes the lease if nobody holds it; returns it with its new epoch,
    /// which is at least `floor` (the counter restarts at 1 if Redis lost
    /// its data; the caller passes one more than the highest epoch it saw).
    pub async fn try_acquire(
        &self,
        conn: &mut impl ConnectionLike,
        holder: &str,
        floor: u64,
    ) -> Result<Option<Lease>, ElectionError> {
        rtc_core::ids::validate_node_id(holder).map_err(ElectionError::BadHolder)?;
        let epoch: Option<u64> = Script::new(ACQUIRE)
            .key(&self.lease_key)
            .key(&self.epoch_key)
            .arg(holder)
            .arg(self.ttl.as_millis() as u64)
            .arg(floor)
            .invoke_async(conn)
            .await?;
        Ok(epoch.map(|epoch| Lease { holder: holder.to_owned(), epoch }))
    }

    /// Extends the lease; false if it is no longer ours.
    pub async fn renew(&self, conn: &mut impl ConnectionLike, lease: &Lease) -> Result<bool, ElectionError> {
        let renewed: u64 = Script::new(RENEW)
            .key(&self.lease_key)
            .arg(lease.value())
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(conn)
            .await?;
        Ok(renewed == 1)
    }

    pub async fn release(&self, conn: &mut impl ConnectionLike, lease: &Lease) -> Result<bool, ElectionError> {
        let released: u64 = Script::new(RELEASE).key(&self.lease_key).arg(lease.value()).invoke_async(conn).await?;
        Ok(released == 1)
    }

    /// True when `lease` is the lease in Redis with at least `margin` left:
    /// checked right before an action that fencing by script cannot cover
    /// (a Kubernetes patch).
    pub async fn holds(
        &self,
        conn: &mut impl ConnectionLike,
        lease: &Lease,
        margin: Duration,
    ) -> Result<bool, ElectionError> {
        let left: i64 = Script::new(HOLDS).key(&self.lease_key).arg(lease.value()).invoke_async(conn).await?;
        Ok(u64::try_from(left).is_ok_and(|ms| ms >= margin.as_millis() as u64))
    }

    /// How long until the current lease runs out, if one is held.
    pub async fn expires_in(&self, conn: &mut impl ConnectionLike) -> Result<Option<Duration>, ElectionError> {
        let ms: i64 = redis::cmd("PTTL").arg(&self.lease_key).query_async(conn).await?;
        Ok(u64::try_from(ms).ok().map(Duration::from_millis))
    }

    /// The current lease, if any.
    pub async fn current(&self, conn: &mut impl ConnectionLike) -> Result<Option<Lease>, ElectionError> {
        let raw: Option<String> = redis::cmd("GET").arg(&self.lease_key).query_async(conn).await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// Writes `value` at `key` only while `lease` is the lease in Redis,
    /// optionally publishing `message` on `channel` in the same step.
    pub async fn fenced_set(
        &self,
        conn: &mut impl ConnectionLike,
        lease: &Lease,
        key: &str,
        value: &str,
        publish: Option<(&str, &str)>,
    ) -> Result<(), ElectionError> {
        self.invoke_fenced_set(conn, lease, key, value, None, publish).await.map(|_| ())
    }

    /// Like [`Self::fenced_set`] for a document whose `epoch` field only
    /// goes forward (see [`ForwardWrite`]).
    pub async fn fenced_set_forward(
        &self,
        conn: &mut impl ConnectionLike,
        lease: &Lease,
        key: &str,
        value: &str,
        epoch: u64,
        publish: Option<(&str, &str)>,
    ) -> Result<ForwardWrite, ElectionError> {
        self.invoke_fenced_set(conn, lease, key, value, Some(epoch), publish).await
    }

    async fn invoke_fenced_set(
        &self,
        conn: &mut impl ConnectionLike,
        lease: &Lease,
        key: &str,
        value: &str,
        epoch: Option<u64>,
        publish: Option<(&str, &str)>,
    ) -> Result<ForwardWrite, ElectionError> {
        let (channel, message) = publish.unwrap_or(("", ""));
        let outcome: u64 = Script::new(FENCED_SET)
            .key(&self.lease_key)
            .key(key)
            .arg(lease.value())
            .arg(value)
            .arg(channel)
            .arg(message)
            .arg(epoch.map(|e| e.to_string()).unwrap_or_default())
            .invoke_async(conn)
            .await?;
        match outcome {
            1 => Ok(ForwardWrite::Written),
            2 => Ok(ForwardWrite::Unchanged),
            3 => Ok(ForwardWrite::Stale),
            _ => Err(ElectionError::Fenced),
        }
    }
}

/// Runs the election for one replica until `shutdown`, publishing its role.
pub struct Elector<C> {
    pub store: LeaseStore,
    pub conn: C,
    pub holder: String,
    /// The highest fencing epoch this replica has seen (its own leases, and
    /// the `leader_epoch` of documents it read): a new lease takes a higher
    /// one even after Redis lost the counter.
    pub highest_epoch_seen: Arc<AtomicU64>,
}

impl<C: ConnectionLike + Send> Elector<C> {
    /// The renewal period: a third of the lease.
    pub fn period(&self) -> Duration {
        self.store.ttl / 3
    }

    /// How long after its last successful renewal a leader still acts as
    /// one: the TTL minus a margin for clock rate differences and the time a
    /// write takes to reach Redis.
    pub fn valid_for(&self) -> Duration {
        let ttl = self.store.ttl;
        ttl.saturating_sub(ttl / 5)
    }

    /// The lowest epoch a new lease may take.
    fn floor(&self) -> u64 {
        self.highest_epoch_seen.load(Ordering::Relaxed).saturating_add(1)
    }

    pub async fn run(mut self, role: watch::Sender<Role>, shutdown: CancellationToken) {
        let mut renewed_at = Instant::now();
        let mut next = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(next) => {}
            }
            // Scheduled from the start of this round, so a slow Redis call
            // does not push the next renewal (or the step-down) later.
            let round = Instant::now();
            let mut wait = self.period();
            let current = role.borrow().clone();
            let floor = self.floor();
            match current {
                Role::Follower => match self.store.try_acquire(&mut self.conn, &self.holder, floor).await {
                    Ok(Some(lease)) => {
                        self.highest_epoch_seen.fetch_max(lease.epoch, Ordering::Relaxed);
                        renewed_at = Instant::now();
                        tracing::info!(holder = %lease.holder, epoch = lease.epoch, "acquired the leader lease");
                        role.send_replace(Role::Leader(lease));
                    }
                    Ok(None) => {
                        // Someone leads: try again just after its lease would
                        // run out (a dead leader's lease simply expires), so a
                        // failover takes the TTL, not the TTL plus a period.
                        if let Ok(Some(left)) = self.store.expires_in(&mut self.conn).await {
                            wait = wait.min(left + Duration::from_millis(5));
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "lease acquisition failed"),
                },
                Role::Leader(lease) => {
                    let started = Instant::now();
                    match self.store.renew(&mut self.conn, &lease).await {
                        Ok(true) => renewed_at = started,
                        Ok(false) => {
                            tracing::warn!(epoch = lease.epoch, "lost the leader lease");
                            role.send_replace(Role::Follower);
                            next = round + wait;
                            continue;
                        }
                        Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
                    }
                    if renewed_at.elapsed() >= self.valid_for() {
                        tracing::warn!(epoch = lease.epoch, "lease not renewed in time: stepping down");
                        role.send_replace(Role::Follower);
                    } else {
                        // Check again no later than the end of validity.
                        wait = wait.min((renewed_at + self.valid_for()).saturating_duration_since(round));
                    }
                }
            }
            next = round + wait;
        }
        let last = role.borrow().clone();
        if let Role::Leader(lease) = last {
            let _ = self.store.release(&mut self.conn, &lease).await;
        }
        role.send_replace(Role::Follower);
    }
}

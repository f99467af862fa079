//! Redis I/O shared by the services.
//!
//! - [`HeartbeatCursor`] reads the `rtc:heartbeats` stream: it resumes where
//!   it was, reads in bounded blocking batches, and parses every entry (each
//!   result is a heartbeat or the typed reason it is invalid, never a panic);
//!   [`HeartbeatCursor::follow`] tails it with backoff on errors.
//! - [`notify_on_publish`] turns a pub/sub channel into wake-ups.
//! - [`connection_manager`] is a reconnecting connection that is created
//!   even while Redis is down (services start and keep serving without it).

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::streams::{StreamReadOptions, StreamReadReply};

use crate::{ContractError, Document, Heartbeat};

/// Field of a stream entry holding the heartbeat JSON.
pub const HEARTBEAT_FIELD: &str = "hb";

pub struct HeartbeatCursor {
    key: String,
    last_id: String,
    options: StreamReadOptions,
}

impl HeartbeatCursor {
    /// Starts with entries added since `since_ms` (stream ids are
    /// millisecond timestamps), reading up to `batch` entries per call and
    /// blocking up to `block` for new ones.
    pub fn since(key: impl Into<String>, since_ms: u64, batch: usize, block: Duration) -> Self {
        Self {
            key: key.into(),
            last_id: format!("{since_ms}-0"),
            options: StreamReadOptions::default().count(batch).block(block.as_millis() as usize),
        }
    }

    /// Id of the last entry read.
    pub fn position(&self) -> &str {
        &self.last_id
    }

    /// The next batch (no entries after `block` without news), with
    /// Redis's clock when the read returned.
    pub async fn next_batch(&mut self, conn: &mut impl ConnectionLike) -> redis::RedisResult<HeartbeatBatch> {
        // TIME right behind XREAD in one pipeline: the clock the entry ids
        // are stamped with, read when the (blocking) read returned.
        let (reply, (secs, micros)): (Option<StreamReadReply>, (u64, u64)) = redis::pipe()
            .cmd("XREAD")
            .arg(&self.options)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(&self.last_id)
            .cmd("TIME")
            .query_async(conn)
            .await?;
        let mut entries = Vec::new();
        for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            self.last_id = entry.id.clone();
            let heartbeat = match entry.map.get(HEARTBEAT_FIELD) {
                Some(redis::Value::BulkString(raw)) => Heartbeat::from_json(raw),
                _ => Err(ContractError::MissingField(HEARTBEAT_FIELD.into())),
            };
            entries.push(StreamHeartbeat { at_ms: entry_ms(&entry.id), heartbeat });
        }
        Ok(HeartbeatBatch {
            entries,
            redis_now_ms: secs.saturating_mul(1000).saturating_add(micros / 1000),
            position: self.last_id.clone(),
        })
    }
}

/// The milliseconds of a stream id (`<ms>-<seq>`): when Redis added it.
pub fn entry_ms(id: &str) -> u64 {
    id.split('-').next().and_then(|ms| ms.parse().ok()).unwrap_or(0)
}

/// One entry of the heartbeat stream.
#[derive(Debug)]
pub struct StreamHeartbeat {
    /// When Redis added it (its id), on Redis's clock.
    pub at_ms: u64,
    /// The heartbeat, or the reason it is invalid.
    pub heartbeat: Result<Heartbeat, ContractError>,
}

/// What [`HeartbeatCursor::next_batch`] yields. Iterating it gives each
/// entry's heartbeat (or the reason it is invalid).
#[derive(Debug)]
pub struct HeartbeatBatch {
    pub entries: Vec<StreamHeartbeat>,
    /// Redis's clock (`TIME`, ms) when the read returned: every entry added
    /// before then has been read.
    pub redis_now_ms: u64,
    /// Id of the newest entry read so far.
    pub position: String,
}

impl IntoIterator for HeartbeatBatch {
    type Item = Result<Heartbeat, ContractError>;
    type IntoIter = std::iter::Map<std::vec::IntoIter<StreamHeartbeat>, fn(StreamHeartbeat) -> Self::Item>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter().map(|e| e.heartbeat)
    }
}

impl HeartbeatCursor {
    /// Tails the stream until `stop` resolves. Each batch (empty after
    /// `block` without news, so a quiet stream still ticks) goes to
    /// `on_batch`; a failed read goes to `on_error` and is retried after a
    /// growing backoff.
    pub async fn follow(
        mut self,
        conn: &mut impl ConnectionLike,
        stop: impl std::future::Future<Output = ()>,
        mut on_batch: impl FnMut(HeartbeatBatch),
        mut on_error: impl FnMut(&redis::RedisError),
    ) {
        let mut stop = std::pin::pin!(stop);
        let mut backoff = Backoff::default();
        loop {
            let batch = tokio::select! {
                _ = &mut stop => return,
                b = self.next_batch(conn) => b,
            };
            match batch {
                Ok(batch) => {
                    backoff.reset();
                    on_batch(batch);
                }
                Err(e) => {
                    on_error(&e);
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
    }
}

/// Subscribes to `channel` and wakes `notify` on every message (and after
/// every (re)subscription, since a message may have been missed meanwhile);
/// reconnects with backoff until `stop` resolves.
pub async fn notify_on_publish(
    client: redis::Client,
    channel: String,
    notify: std::sync::Arc<tokio::sync::Notify>,
    stop: impl std::future::Future<Output = ()>,
) {
    use futures_util::StreamExt;
    let mut stop = std::pin::pin!(stop);
    let mut backoff = Backoff::default();
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match subscribed.await {
            Ok(mut pubsub) => {
                backoff.reset();
                notify.notify_one();
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        _ = &mut stop => return,
                        m = messages.next() => match m {
                            Some(_) => notify.notify_one(),
                            None => break,
                        },
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, channel, "subscription failed"),
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// A lazily connected, reconnecting connection with bounded timeouts.
pub fn connection_manager(
    client: &redis::Client,
    response_timeout: Duration,
) -> redis::RedisResult<redis::aio::ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1));
    redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), config)
}

/// Exponential backoff for reconnecting: 100 ms doubling to 1.6 s.
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let d = Duration::from_millis(100u64 << self.attempt.min(4));
        self.attempt += 1;
        d
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut b = Backoff::default();
        let seq: Vec<u64> = (0..7).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(seq, vec![100, 200, 400, 800, 1600, 1600, 1600]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn entry_ids_carry_milliseconds() {
        assert_eq!(entry_ms("1763800000123-4"), 1_763_800_000_123);
        assert_eq!(entry_ms("garbage"), 0);
    }

    #[test]
    fn cursor_starts_at_a_time() {
        let c = HeartbeatCursor::since("rtc:heartbeats", 1234, 10, Duration::from_millis(5));
        assert_eq!(c.position(), "1234-0");
    }
}

//! Reading the `rtc:heartbeats` stream: a cursor that resumes where it was,
//! reads in bounded blocking batches, and parses every entry (each result
//! is a heartbeat or the typed reason it is invalid, never a panic).

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

    /// The next batch (empty after `block` without news).
    pub async fn next_batch(
        &mut self,
        conn: &mut impl ConnectionLike,
    ) -> redis::RedisResult<Vec<Result<Heartbeat, ContractError>>> {
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg(&self.options)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(&self.last_id)
            .query_async(conn)
            .await?;
        let mut out = Vec::new();
        for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            self.last_id = entry.id.clone();
            out.push(match entry.map.get(HEARTBEAT_FIELD) {
                Some(redis::Value::BulkString(raw)) => Heartbeat::from_json(raw),
                _ => Err(ContractError::MissingField(HEARTBEAT_FIELD.into())),
            });
        }
        Ok(out)
    }
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
    fn cursor_starts_at_a_time() {
        let c = HeartbeatCursor::since("rtc:heartbeats", 1234, 10, Duration::from_millis(5));
        assert_eq!(c.position(), "1234-0");
    }
}

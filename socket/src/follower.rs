//! Follows the assignment in Redis: pub/sub on `rtc:assignment:events` is
//! the fast path, polling `rtc:assignment` the fallback (and the whole story
//! while pub/sub is down). Every read of the newest epoch so far is passed
//! on: a fenced node serves again on the first one after its lease is
//! renewed, whatever its epoch.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use rtc_core::{Assignment, Document};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::handoff::Event;
use crate::metrics::Metrics;

pub struct Follower {
    pub client: redis::Client,
    pub conn: ConnectionManager,
    pub assignment_key: String,
    pub events_channel: String,
    pub poll: Duration,
    pub metrics: Arc<Metrics>,
    /// Woken to fetch now (pub/sub message, or a token naming a newer epoch).
    pub fetch_now: Arc<Notify>,
}

impl Follower {
    pub async fn run(self, events: mpsc::Sender<Event>, shutdown: CancellationToken) {
        let listener = tokio::spawn(rtc_core::redis_io::notify_on_publish(
            self.client.clone(),
            self.events_channel.clone(),
            self.fetch_now.clone(),
            shutdown.clone().cancelled_owned(),
        ));
        let mut conn = self.conn.clone();
        let mut newest = 0u64;
        let mut tick = tokio::time::interval(self.poll);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                _ = self.fetch_now.notified() => {}
            }
            match fetch(&mut conn, &self.assignment_key).await {
                Ok(Some(a)) if a.epoch >= newest => {
                    newest = a.epoch;
                    if events.send(Event::Assignment(Arc::new(a))).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(FetchError::Redis(e)) => tracing::debug!(error = %e, "assignment fetch failed"),
                Err(FetchError::Invalid(e)) => {
                    self.metrics.invalid_assignments.increment(e.kind());
                    tracing::warn!(error = %e, "ignoring an invalid assignment");
                }
            }
        }
        listener.abort();
    }
}

enum FetchError {
    Redis(redis::RedisError),
    Invalid(rtc_core::ContractError),
}

async fn fetch(conn: &mut ConnectionManager, key: &str) -> Result<Option<Assignment>, FetchError> {
    let raw: Option<Vec<u8>> = conn.get(key).await.map_err(FetchError::Redis)?;
    raw.map(|raw| Assignment::from_json(&raw).map_err(FetchError::Invalid)).transpose()
}

//! Follows the assignment in Redis: pub/sub on `rtc:assignment:events` is
//! the fast path, polling `rtc:assignment` the fallback (and the whole story
//! while pub/sub is down). Only newer epochs are passed on.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use rtc_core::{Assignment, Document};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::ownership::Event;
use rtc_core::stream::Backoff;

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
        let listener = tokio::spawn(listen(
            self.client.clone(),
            self.events_channel.clone(),
            self.fetch_now.clone(),
            shutdown.clone(),
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
                Ok(Some(a)) if a.epoch > newest => {
                    newest = a.epoch;
                    if events.send(Event::Assignment(Arc::new(a))).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(FetchError::Redis(e)) => tracing::debug!(error = %e, "assignment fetch failed"),
                Err(FetchError::Invalid(e)) => {
                    self.metrics.count("rtc_socket_invalid_assignments_total", "reason", e.kind());
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

/// Subscribes to the events channel and wakes the fetcher on every message;
/// reconnects with backoff.
async fn listen(client: redis::Client, channel: String, fetch_now: Arc<Notify>, shutdown: CancellationToken) {
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
                // A message may have been missed while (re)connecting.
                fetch_now.notify_one();
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        m = messages.next() => match m {
                            Some(_) => fetch_now.notify_one(),
                            None => break,
                        },
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "assignment subscription failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

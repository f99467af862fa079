//! The client's settings.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rtc_core::protocol::MessageId;
use tokio::sync::Semaphore;

use crate::error::ConfigError;

/// Settings of one [`crate::RtcClient`]. [`ClientConfig::new`] fills in the
/// defaults; every field is public so a caller changes what it needs.
#[derive(Clone)]
pub struct ClientConfig {
    /// Load balancers' base URLs (`http://host:port`); the client asks
    /// `<url>/v1/route?user=…`. It starts with the first and stays with the
    /// last one that answered; an unreachable one is skipped at once.
    /// Rotate the list to spread many clients over the load balancers.
    pub route_urls: Vec<String>,
    /// The user this client receives messages for.
    pub user: String,
    /// Resume after this id on the first connect: the last message the
    /// application processed in an earlier run. `None`: start live.
    pub last_id: Option<MessageId>,
    /// Without a `last_id`: resume from this live start, a welcome's
    /// `live_from` an earlier run saw before its first message (see
    /// `rtc_core::protocol::Cursor`).
    pub live_from: Option<MessageId>,
    /// Smallest reconnect delay after a failure (default 500 ms); must not
    /// be zero.
    pub min_reconnect_delay: Duration,
    /// Largest reconnect delay (default 20 s).
    pub max_reconnect_delay: Duration,
    /// Bound of each network step (default 5 s): one route request; TCP
    /// connect, WebSocket upgrade and `welcome` together; one frame write.
    pub connect_timeout: Duration,
    /// A session from which nothing (not even a ping) arrives for this long
    /// is taken as lost and reconnected (default 45 s: three of the server's
    /// default 15 s pings).
    pub read_timeout: Duration,
    /// `Authorization` header value of the route request (e.g.
    /// `Bearer <jwt>`), when the load balancer requires one.
    pub route_auth: Option<String>,
    /// Local address to connect from (route requests and WebSockets), e.g.
    /// one of several source IPs of a load generator. Used only towards
    /// addresses of the same family.
    pub source_ip: Option<IpAddr>,
    /// Events buffered for the application (default 1024, at least 1). When
    /// it is full the client stops reading its socket until the application
    /// reads; see [`crate::Events`].
    pub event_capacity: usize,
    /// Shared by many clients of one process: at most this many connection
    /// attempts (route request, connect, welcome) run at once.
    pub connect_permits: Option<Arc<Semaphore>>,
}

impl ClientConfig {
    pub fn new(route_urls: impl IntoIterator<Item = impl Into<String>>, user: impl Into<String>) -> Self {
        Self {
            route_urls: route_urls.into_iter().map(Into::into).collect(),
            user: user.into(),
            last_id: None,
            live_from: None,
            min_reconnect_delay: Duration::from_millis(500),
            max_reconnect_delay: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(45),
            route_auth: None,
            source_ip: None,
            event_capacity: 1024,
            connect_permits: None,
        }
    }

    /// Checks what can be checked before connecting.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.route_urls.is_empty() {
            return Err(ConfigError::NoRouteUrls);
        }
        rtc_core::ids::validate_user_id(&self.user).map_err(|e| ConfigError::BadUser(e.to_string()))?;
        if self.min_reconnect_delay.is_zero() {
            return Err(ConfigError::ZeroDelay);
        }
        if self.connect_timeout.is_zero() || self.read_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        Ok(())
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("route_urls", &self.route_urls)
            .field("user", &self.user)
            .field("last_id", &self.last_id)
            .field("live_from", &self.live_from)
            .field("min_reconnect_delay", &self.min_reconnect_delay)
            .field("max_reconnect_delay", &self.max_reconnect_delay)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("route_auth", &self.route_auth.as_ref().map(|_| "<redacted>"))
            .field("source_ip", &self.source_ip)
            .field("event_capacity", &self.event_capacity)
            .field("connect_permits", &self.connect_permits.as_ref().map(|s| s.available_permits()))
            .finish()
    }
}

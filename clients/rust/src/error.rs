//! What can go wrong, by who sees it: the constructor ([`ConfigError`]),
//! a `send` ([`SendError`]), and the event stream ([`ClientError`], with
//! [`RouteError`] and [`ConnectError`]). None of the event errors stops the
//! client; it retries on its own.

use std::time::Duration;

/// A setting that cannot work; [`crate::RtcClient::connect`] refuses it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("no route URL: give at least one load balancer")]
    NoRouteUrls,
    #[error("route URL {url:?}: {reason}")]
    BadRouteUrl { url: String, reason: String },
    #[error("user: {0}")]
    BadUser(String),
    #[error("route_auth is not a valid header value")]
    BadRouteAuth,
    #[error("min_reconnect_delay must be above zero")]
    ZeroDelay,
    #[error("connect_timeout and read_timeout must be above zero")]
    ZeroTimeout,
}

/// Why a [`crate::RtcClient::send`] has no id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No session is open (connecting or waiting to reconnect); nothing was
    /// sent.
    #[error("not connected")]
    NotConnected,
    /// The session ended before the server answered: the message may or may
    /// not have reached the log. Retrying may deliver it twice; the
    /// recipient sees two ids.
    #[error("connection lost before the server acknowledged the message (it may or may not have been sent)")]
    ConnectionLost,
    /// The server refused the message or could not store it (`error` frame:
    /// `rate_limited`, `bad_frame`, `too_large`, `send_failed`, …).
    #[error("refused by the server: {code}: {message}")]
    Refused { code: String, message: String },
    /// The client is closed.
    #[error("the client is closed")]
    Closed,
}

/// A route request that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No answer (refused, reset, timed out): the client moves on to the
    /// next load balancer at once.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// An error status (`400` bad user, `401` auth, `429` rate limited,
    /// `503` no ready node); the client backs off (at least `retry_after`).
    #[error("status {status}: {message}")]
    /// `retry_after_exact`: the wait came from the answer's `retry_after_ms`
    /// (the server knows when to come back, and jittered it) and is
    /// followed as is; otherwise it is `Retry-After`, a lower bound on the
    /// backoff.
    Status { status: u16, message: String, retry_after: Option<Duration>, retry_after_exact: bool },
    /// `200` with something that is not a route for this user.
    #[error("bad answer: {0}")]
    BadAnswer(String),
}

impl RouteError {
    /// A short, low-cardinality name for counting: the HTTP status, or
    /// `unreachable` / `bad_answer`.
    pub fn kind(&self) -> String {
        match self {
            Self::Unreachable(_) => "unreachable".to_owned(),
            Self::Status { status, .. } => status.to_string(),
            Self::BadAnswer(_) => "bad_answer".to_owned(),
        }
    }
}

/// A WebSocket connect that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("unsupported or bad socket URL: {0}")]
    BadUrl(String),
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The node answered the upgrade with an error (`ConnectRefusal`:
    /// `starting`, `draining`, `bad_token`, `token_reused`, `wrong_node`, `not_owner`,
    /// `at_capacity`…): the client asks the load balancer again.
    #[error("refused ({status}): {error}: {message}")]
    Refused { status: u16, error: String, message: String },
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("no welcome: {0}")]
    NoWelcome(String),
    #[error("timed out")]
    Timeout,
}

impl ConnectError {
    /// A short, low-cardinality name for counting: `409:not_owner`,
    /// `timeout`, `unreachable`…
    pub fn kind(&self) -> String {
        match self {
            Self::Refused { status, error, .. } => format!("{status}:{error}"),
            Self::BadUrl(_) => "bad_url".to_owned(),
            Self::Unreachable(_) => "unreachable".to_owned(),
            Self::Handshake(_) => "handshake".to_owned(),
            Self::NoWelcome(_) => "no_welcome".to_owned(),
            Self::Timeout => "timeout".to_owned(),
        }
    }
}

/// A problem the client reports as [`crate::Event::Error`] and handles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A load balancer did not give a route.
    #[error("route request to {url} failed: {error}")]
    Route { url: String, error: RouteError },
    /// The socket node named by the route could not be joined. `url` is
    /// the node's URL without the token.
    #[error("connecting to {node_id} at {url} failed: {error}")]
    Connect { node_id: String, url: String, error: ConnectError },
    /// The server sent an `error` frame (a refused or failed `send`).
    #[error("server error {code}: {message}")]
    Server { code: String, message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_name_what_failed_without_details() {
        let refused = ConnectError::Refused { status: 409, error: "not_owner".into(), message: "moved".into() };
        assert_eq!(refused.kind(), "409:not_owner");
        assert_eq!(ConnectError::Timeout.kind(), "timeout");
        assert_eq!(ConnectError::Unreachable("refused at 10.0.0.1".into()).kind(), "unreachable");
        let status =
            RouteError::Status { status: 503, message: "no nodes".into(), retry_after: None, retry_after_exact: false };
        assert_eq!(status.kind(), "503");
        assert_eq!(RouteError::Unreachable("reset".into()).kind(), "unreachable");
    }
}

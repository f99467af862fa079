//! Rust client for rtc's WebSocket protocol (`docs/ARCHITECTURE.md`,
//! "Protocol"; frames from [`rtc_core::protocol`]).
//!
//! One [`RtcClient`] is one user's connection. It asks a load balancer for
//! the user's route (`GET /v1/route`), opens the WebSocket of the node that
//! owns the user's partition, and delivers the user's messages as
//! [`Event::Message`]: each id once, in increasing order, across any number
//! of reconnects (the server replays from the log what a reconnect missed;
//! the client drops what it already delivered). It reconnects on its own:
//! after `disconnect{retry_after_ms}` exactly that late, after any other
//! close or failure with capped exponential backoff and full jitter
//! ([`Backoff`]); never while a socket is still open.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use rtc_client::{ClientConfig, Event, RtcClient, State};
//!
//! let config = ClientConfig::new(["http://127.0.0.1:8000"], "alice");
//! let (client, mut events) = RtcClient::connect(config)?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::State(State::Connected) => {
//!             let id = client.send("bob", "hello").await?;
//!             println!("sent as {id}");
//!         }
//!         Event::Message { id, from, body, .. } => println!("{id} from {from:?}: {body}"),
//!         Event::Recovered { recovered: false, reason, .. } => println!("gap: reload ({reason:?})"),
//!         Event::State(State::Closed) => break,
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod backoff;
mod client;
mod config;
mod conn;
mod error;
mod route;

pub use backoff::{Backoff, SessionEnd};
pub use client::{Event, Events, RtcClient, State};
pub use config::ClientConfig;
pub use conn::{Welcome, Ws, connect_tcp, open_session, open_ws};
pub use error::{ClientError, ConfigError, ConnectError, RouteError, SendError};
pub use route::fetch_route;
pub use rtc_core::protocol::{CloseReason, MessageId, ResumeFailure};

//! `GET /ws?token=…`: admits a user before upgrading, or refuses with a JSON
//! reason (so the client asks the load balancer again).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::hub::Seat;
use crate::lifecycle::Lifecycle;
use crate::ownership::Ownership;
use crate::session::{self, Admitted, Resume, ResumeFrom, SessionContext};
use crate::upgrade::{NotUpgrade, Upgrade};
use crate::used_tokens::{TokenUse, UsedTokens};

/// What admission checks, and what the sessions it admits get.
pub struct WsContext {
    pub session: Arc<SessionContext>,
    pub signer: rtc_core::TokenSigner,
    pub ownership: Arc<Ownership>,
    pub lifecycle: Arc<Lifecycle>,
    pub capacity: u64,
    pub partitions: u32,
    /// Tokens admitted here, so none opens a second session.
    pub used_tokens: UsedTokens,
}

/// How long a token naming a newer epoch waits for this node to catch up.
const EPOCH_CATCH_UP: Duration = Duration::from_millis(500);

pub fn router(node: Arc<WsContext>) -> Router {
    Router::new().route("/ws", get(upgrade)).with_state(node)
}

#[derive(Debug, Deserialize)]
struct ConnectQuery {
    token: Option<String>,
    /// The last message id the client processed: replay what followed it.
    last_id: Option<String>,
    /// A welcome's `live_from`, for a client that got no message yet:
    /// replay from that id on.
    from_id: Option<String>,
}

pub use rtc_core::protocol::ConnectRefusal as Refused;

/// Why a connection is refused: HTTP status, stable code, detail.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: Refused,
    pub message: String,
    pub epoch: u64,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.code.as_str(), "message": self.message, "epoch": self.epoch});
        (self.status, axum::Json(body)).into_response()
    }
}

async fn upgrade(
    State(node): State<Arc<WsContext>>,
    Query(query): Query<ConnectQuery>,
    upgrade: Result<Upgrade, NotUpgrade>,
) -> Response {
    // A request that is no WebSocket upgrade (a link preview, a probe)
    // gets its answer but does not use the token up.
    let (mut admitted, seat) = match admit(&node, query.token.as_deref(), upgrade.is_ok()).await {
        Ok(a) => a,
        Err(refusal) => {
            node.session.metrics.refused.increment(refusal.code);
            return refusal.into_response();
        }
    };
    admitted.resume = match (query.last_id, query.from_id) {
        (Some(id), _) => Some(Resume { from: ResumeFrom::After, id }),
        (None, Some(id)) => Some(Resume { from: ResumeFrom::At, id }),
        (None, None) => None,
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => {
            node.session.metrics.refused.increment(Refused::NotWebsocket);
            let refusal = Refusal {
                status: rejection.status,
                code: Refused::NotWebsocket,
                message: rejection.message.into(),
                epoch: node.ownership.view().epoch,
            };
            return refusal.into_response();
        }
    };
    let limits = &node.session.limits;
    let config = WebSocketConfig::default()
        // tungstenite's own buffer, kept for the session's life: 0 by
        // default, the socket is read through `LazyRead`.
        .read_buffer_size(limits.ws_read_buffer)
        // Write each frame through at once: latency over batching.
        .write_buffer_size(0)
        .max_write_buffer_size(4 * 1024 * 1024)
        // Frames a little over the protocol limit still get a clean
        // `error{too_large}`; far larger ones end the connection.
        .max_message_size(Some(limits.max_frame_bytes.saturating_mul(2)))
        .max_frame_size(Some(limits.max_frame_bytes.saturating_mul(2)));
    upgrade.on_upgrade(config, move |ws| session::run(ws, node.session.clone(), admitted, seat))
}

/// The token is valid, names this node, and its partition is served here at
/// the current epoch; the node is ready and has room. With `use_token` the
/// token is recorded as used (it must not have been before).
pub async fn admit(node: &WsContext, token: Option<&str>, use_token: bool) -> Result<(Admitted, Seat), Refusal> {
    let view = node.ownership.view();
    let refuse = |status, code, message: String| Refusal { status, code, message, epoch: view.epoch };
    match node.lifecycle.state() {
        rtc_core::NodeState::Ready => {}
        rtc_core::NodeState::Starting => {
            return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, Refused::Starting, "node is starting".into()));
        }
        rtc_core::NodeState::Draining => {
            return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, Refused::Draining, "node is draining".into()));
        }
    }
    let token = token.ok_or_else(|| refuse(StatusCode::UNAUTHORIZED, Refused::BadToken, "no token".into()))?;
    let now_ms = crate::kafka::now_ms() as u64;
    let claims = node
        .signer
        .verify(token, now_ms)
        .map_err(|e| refuse(StatusCode::UNAUTHORIZED, Refused::BadToken, e.to_string()))?;
    if claims.node_id != node.session.node_id {
        return Err(refuse(StatusCode::CONFLICT, Refused::WrongNode, format!("token is for node {}", claims.node_id)));
    }
    let partitions = node.partitions;
    if rtc_core::ids::validate_user_id(&claims.user).is_err()
        || rtc_core::partition_for_key(claims.user.as_bytes(), partitions) != claims.partition
    {
        return Err(refuse(StatusCode::UNAUTHORIZED, Refused::BadToken, "token's user and partition disagree".into()));
    }
    let mut view = view.clone();
    if claims.epoch > view.epoch {
        // The load balancer is ahead of us: catch up before deciding.
        node.ownership.wait_for_epoch(claims.epoch, EPOCH_CATCH_UP).await;
        view = node.ownership.view();
    }
    // A partition just gained accepts its users once its start offset is
    // known (see `crate::ownership`): a moment, worth waiting for.
    if !view.accepting.contains(&claims.partition)
        || !node.session.hub.accepting(claims.partition, EPOCH_CATCH_UP).await
    {
        return Err(Refusal {
            status: StatusCode::CONFLICT,
            code: Refused::NotOwner,
            message: format!("partition {} is not served here at epoch {}", claims.partition, view.epoch),
            epoch: view.epoch,
        });
    }
    let seat = node.session.hub.reserve(node.capacity).ok_or_else(|| Refusal {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: Refused::AtCapacity,
        message: "node is full".into(),
        epoch: view.epoch,
    })?;
    // Last, so that only a token that opens a session is used up.
    if use_token {
        let fingerprint = rtc_core::token::fingerprint(token).unwrap_or_default();
        match node.used_tokens.admit(fingerprint, claims.expires_at_ms, now_ms) {
            TokenUse::First => {}
            TokenUse::Reused => {
                return Err(refuse(StatusCode::UNAUTHORIZED, Refused::TokenReused, "token was used before".into()));
            }
            TokenUse::Full => {
                let message = "too many recent connects".into();
                return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, Refused::AtCapacity, message));
            }
        }
    }
    Ok((Admitted { user: claims.user, partition: claims.partition, epoch: view.epoch, resume: None }, seat))
}

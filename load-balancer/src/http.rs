//! HTTP: `GET /v1/route` on the public port; reads and probes on the admin
//! port. Errors are JSON `{"error": …}`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use rtc_core::{ConnectClaims, NodeState, RouteAnswer};
use serde::Deserialize;
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::metrics::RouteOutcome;
use crate::service::Shared;

pub fn public(shared: Arc<Shared>) -> Router {
    let cors = cors(&shared.args.cors_origins);
    let router = Router::new().route("/v1/route", get(route)).with_state(shared);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// Browser pages of `origins` may call `/v1/route` (with an
/// `Authorization` header, and read `Retry-After`); preflights are answered
/// here, cached for 10 minutes. No origins: no CORS headers at all.
fn cors(origins: &[HeaderValue]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") { AllowOrigin::any() } else { AllowOrigin::list(origins.to_vec()) };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET])
            .allow_headers([header::AUTHORIZATION])
            .expose_headers([header::RETRY_AFTER])
            .max_age(Duration::from_secs(600)),
    )
}

pub fn admin(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/nodes", get(nodes))
        .route("/v1/assignment", get(assignment))
        .route("/v1/decisions", get(decisions))
        .route("/metrics", get(|State(s): State<Arc<Shared>>| async move { s.metrics.render() }))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(console))
        .with_state(shared)
}

/// The operator console: one page (no dependencies, built into the binary)
/// that reads `/v1/nodes`, `/v1/assignment`, `/v1/decisions` and `/metrics`
/// of this admin port once a second.
async fn console() -> Response {
    let page = include_str!("console/index.html");
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], page).into_response()
}

/// 503 once a critical task has ended early (the process exits then too).
async fn livez(State(shared): State<Arc<Shared>>) -> Response {
    let (code, body) = shared.liveness.livez();
    (StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE), body).into_response()
}

/// Whose bucket a route request draws from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// The JWT's subject (`--auth jwt`).
    User(String),
    /// The client's address (`--auth none`).
    Client(IpAddr),
}

/// The client's address: the peer, unless the peer is a trusted proxy;
/// then the nearest address in `X-Forwarded-For` (read from the right)
/// that is not a trusted proxy itself. Addresses a client wrote further
/// left are never believed.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let hops = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','));
    let hops: Vec<&str> = hops.collect();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else { break };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// When the owner has sent no heartbeat for two intervals while other
/// nodes' heartbeats keep arriving, it is likely dead: a route to it would
/// only fail. Returns how long until the leader moves its partitions, so
/// clients come back then instead of backing off past it. Once that time is
/// more than two intervals past (the leader cannot move them: no leader,
/// publishing held), routes go out as usual and clients back off.
fn owner_silent_for(shared: &Shared, owner: &str) -> Option<Duration> {
    let liveness = &shared.args.liveness;
    let interval = liveness.heartbeat_interval().as_millis() as u64;
    let now = shared.clock.now_ms()?;
    if shared.clock.healthy_for_ms() < 2 * interval {
        return None; // our own reads are what is late
    }
    let (last_seen, newest) = {
        let fleet = shared.fleet.lock().unwrap_or_else(|p| p.into_inner());
        let newest = fleet.records().map(|(_, r)| r.last_seen_ms()).max().unwrap_or(0);
        (fleet.record(owner)?.last_seen_ms(), newest)
    };
    if newest.saturating_sub(last_seen) < 2 * interval || now.saturating_sub(last_seen) < 2 * interval {
        return None; // not silent, or everyone is (a stall, not a death)
    }
    let moves_at = last_seen.saturating_add(liveness.reassign_after().as_millis() as u64);
    if now > moves_at.saturating_add(2 * interval) {
        return None;
    }
    // Past the reassign time the new assignment is a tick away.
    Some(Duration::from_millis(moves_at.saturating_sub(now).max(MIN_RETRY_MS)))
}

/// The shortest wait a `retry_after_ms` asks for.
const MIN_RETRY_MS: u64 = 100;

/// `503` with `retry_after_ms` in the body (what rtc clients follow) and a
/// `Retry-After` header in whole seconds (for everyone else).
fn retry_later(wait: Duration, message: String) -> Response {
    // Clients follow it exactly: spread them a little.
    let ms = wait.as_millis() as u64;
    let ms = ms + rand::random_range(0..=(ms / 4).min(200));
    let body = axum::Json(json!({"error": message, "retry_after_ms": ms}));
    let seconds = ms.div_ceil(1000).to_string();
    (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, seconds)], body).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

#[derive(Deserialize)]
struct RouteQuery {
    user: Option<String>,
}

async fn route(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<RouteQuery>,
) -> Response {
    let outcome = |o: RouteOutcome| shared.metrics.route(o);
    // Without authentication, the client's address is all there is; it is
    // checked first, before any work.
    let client = RateKey::Client(client_ip(peer.ip(), &headers, &shared.args.trusted_proxies));
    if !shared.auth.is_on() && shared.limiter.check_key(&client).is_err() {
        outcome(RouteOutcome::RateLimited);
        return error(StatusCode::TOO_MANY_REQUESTS, "too many requests");
    }
    let authorization = headers.get("authorization").and_then(|h| h.to_str().ok());
    let user = match shared.auth.user(authorization, query.user.as_deref()) {
        Ok(Some(user)) => user,
        Ok(None) => {
            outcome(RouteOutcome::BadUser);
            return error(StatusCode::BAD_REQUEST, "query parameter `user` is required");
        }
        Err(e) => {
            outcome(RouteOutcome::Unauthorized);
            return error(StatusCode::UNAUTHORIZED, e.to_string());
        }
    };
    // Authenticated: one bucket per user, whatever proxy they come through.
    if shared.auth.is_on() && shared.limiter.check_key(&RateKey::User(user.clone())).is_err() {
        outcome(RouteOutcome::RateLimited);
        return error(StatusCode::TOO_MANY_REQUESTS, "too many requests");
    };
    if let Err(e) = rtc_core::ids::validate_user_id(&user) {
        outcome(RouteOutcome::BadUser);
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let Some(assignment) = shared.assignment() else {
        outcome(RouteOutcome::NoNode);
        return error(StatusCode::SERVICE_UNAVAILABLE, "no assignment yet");
    };
    let partition = rtc_core::partition_for_key(user.as_bytes(), assignment.partitions);
    let Some(owner) = assignment.owner(partition) else {
        outcome(RouteOutcome::NoNode);
        return error(StatusCode::SERVICE_UNAVAILABLE, "no ready node");
    };
    if let Some(wait) = owner_silent_for(&shared, &owner.id) {
        outcome(RouteOutcome::OwnerSilent);
        return retry_later(
            wait,
            format!("node {} is silent; its partitions move in {} ms", owner.id, wait.as_millis()),
        );
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let token = shared.signer.sign(&ConnectClaims {
        user: user.clone(),
        node_id: owner.id.clone(),
        partition,
        epoch: assignment.epoch,
        expires_at_ms: now + shared.args.token_ttl_ms,
        nonce: rand::random(),
    });
    outcome(RouteOutcome::Ok);
    axum::Json(RouteAnswer {
        user,
        partition,
        node_id: owner.id.clone(),
        url: owner.url.clone(),
        epoch: assignment.epoch,
        token,
    })
    .into_response()
}

async fn nodes(State(shared): State<Arc<Shared>>) -> Response {
    let now = shared.clock.now_ms().unwrap_or(0);
    let fleet = shared.fleet.lock().unwrap_or_else(|p| p.into_inner());
    let nodes: Vec<_> = fleet
        .records()
        .map(|(id, r)| json!({"id": id, "alive": fleet.is_alive(id, now), "last_seen_ms": r.last_seen_ms(), "heartbeat": r.latest()}))
        .collect();
    axum::Json(json!({"nodes": nodes})).into_response()
}

async fn assignment(State(shared): State<Arc<Shared>>) -> Response {
    match shared.assignment() {
        Some(a) => axum::Json(a.as_ref().clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, "no assignment yet"),
    }
}

#[derive(Deserialize)]
struct DecisionsQuery {
    limit: Option<usize>,
}

/// The last decisions, newest first: the leader's with their inputs and
/// findings, a follower's as read from Redis.
async fn decisions(State(shared): State<Arc<Shared>>, Query(query): Query<DecisionsQuery>) -> Response {
    let limit = query.limit.unwrap_or(50).min(shared.args.decision_history);
    let leader = shared.role.borrow().lease().is_some();
    axum::Json(json!({"leader": leader, "decisions": shared.decisions.newest(limit)})).into_response()
}

/// Ready once it serves an assignment with at least one ready node.
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let ready = shared.assignment().is_some_and(|a| a.nodes.iter().any(|n| n.state == NodeState::Ready));
    let leader = shared.role.borrow().lease().is_some();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(json!({"serving": ready, "leader": leader}))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // A direct client: its header is its own writing.
        assert_eq!(client_ip(ip("198.51.100.7"), &headers(&["1.2.3.4"]), &trusted), ip("198.51.100.7"));
        // Through the ingress: the address the ingress saw.
        assert_eq!(client_ip(ip("10.1.2.3"), &headers(&["203.0.113.9"]), &trusted), ip("203.0.113.9"));
        // A forged hop on the left is skipped; proxies on the right too.
        let chain = headers(&["6.6.6.6, 203.0.113.9", "10.9.9.9"]);
        assert_eq!(client_ip(ip("10.1.2.3"), &chain, &trusted), ip("203.0.113.9"));
        // No header, or garbage: the proxy itself.
        assert_eq!(client_ip(ip("10.1.2.3"), &headers(&[]), &trusted), ip("10.1.2.3"));
        assert_eq!(client_ip(ip("10.1.2.3"), &headers(&["junk"]), &trusted), ip("10.1.2.3"));
        // Nothing trusted: the header is ignored.
        assert_eq!(client_ip(ip("10.1.2.3"), &headers(&["203.0.113.9"]), &[]), ip("10.1.2.3"));
    }
}

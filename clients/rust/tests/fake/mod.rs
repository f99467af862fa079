//! Fake servers for the client's tests: a load balancer answering
//! `/v1/route` (recording each request) and a socket node whose
//! connections the test drives frame by frame (recording each connect
//! query).

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use rtc_client::{Event, Events, State};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response as WsResponse};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// One route request as the fake load balancer saw it.
#[derive(Debug, Clone)]
pub struct RouteHit {
    pub user: Option<String>,
    pub authorization: Option<String>,
    pub peer: SocketAddr,
    pub at: Instant,
}

struct LbState {
    node_url: String,
    hits: Mutex<Vec<RouteHit>>,
    /// 0: answer with the route; else this status.
    status: AtomicU16,
    retry_after_secs: AtomicU16,
}

pub struct FakeLb {
    pub url: String,
    state: Arc<LbState>,
}

impl FakeLb {
    /// Routes every user to `node_url`.
    pub async fn start(node_url: &str) -> FakeLb {
        let state = Arc::new(LbState {
            node_url: node_url.to_owned(),
            hits: Mutex::new(Vec::new()),
            status: AtomicU16::new(0),
            retry_after_secs: AtomicU16::new(0),
        });
        let app = axum::Router::new().route("/v1/route", axum::routing::get(route)).with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
        });
        FakeLb { url: format!("http://{addr}"), state }
    }

    pub fn hits(&self) -> Vec<RouteHit> {
        self.state.hits.lock().unwrap().clone()
    }

    /// Answers `status` (with `Retry-After` when given) instead of a route;
    /// 0 goes back to routes.
    pub fn answer_status(&self, status: u16, retry_after_secs: u16) {
        self.state.status.store(status, Ordering::SeqCst);
        self.state.retry_after_secs.store(retry_after_secs, Ordering::SeqCst);
    }
}

async fn route(
    AxState(state): AxState<Arc<LbState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let user = query.get("user").cloned();
    let authorization = headers.get("authorization").and_then(|h| h.to_str().ok()).map(str::to_owned);
    let n = {
        let mut hits = state.hits.lock().unwrap();
        hits.push(RouteHit { user: user.clone(), authorization, peer, at: Instant::now() });
        hits.len()
    };
    let status = state.status.load(Ordering::SeqCst);
    if status != 0 {
        let mut response =
            (StatusCode::from_u16(status).unwrap(), axum::Json(serde_json::json!({"error": "fake"}))).into_response();
        let retry = state.retry_after_secs.load(Ordering::SeqCst);
        if retry > 0 {
            response.headers_mut().insert("retry-after", retry.to_string().parse().unwrap());
        }
        return response;
    }
    axum::Json(serde_json::json!({
        "user": user.unwrap_or_default(), "partition": 3, "node_id": "fake-node",
        "url": state.node_url, "epoch": n, "token": format!("tok-{n}"),
    }))
    .into_response()
}

/// A load balancer URL nobody listens on.
pub fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("http://127.0.0.1:{port}")
}

/// One accepted WebSocket, for the test to drive.
pub struct Conn {
    /// The connect URL's query, as sent.
    pub query: String,
    pub peer: SocketAddr,
    pub accepted_at: Instant,
    pub ws: WebSocketStream<TcpStream>,
}

impl Conn {
    /// The query without the token: what the vectors call the connect query.
    pub fn resume_query(&self) -> String {
        self.query.split('&').filter(|p| !p.starts_with("token=") && !p.is_empty()).collect::<Vec<_>>().join("&")
    }

    pub fn token(&self) -> Option<String> {
        self.query.split('&').find_map(|p| p.strip_prefix("token=")).map(str::to_owned)
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    pub async fn welcome(&mut self, live_from: &str) {
        let frame = format!(
            r#"{{"type":"welcome","node_id":"fake-node","user":"u1","partition":3,"epoch":1,"live_from":"{live_from}"}}"#
        );
        self.send(&frame).await;
    }

    /// The next text frame from the client, as JSON (`None`: it closed).
    pub async fn next_json(&mut self) -> Option<serde_json::Value> {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.ws.next()).await.expect("a frame within 5 s") {
                Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(t.as_str()).unwrap()),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Reads until the client closed; the close code it sent, if any.
    pub async fn client_close_code(mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.ws.next()).await.expect("the client closes") {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Closes with `code` and reads until the client is gone; resolves to
    /// when the server saw the connection end.
    pub fn close_with(mut self, code: u16) -> tokio::task::JoinHandle<Instant> {
        tokio::spawn(async move {
            let frame = CloseFrame { code: CloseCode::from(code), reason: "".into() };
            let _ = self.ws.close(Some(frame)).await;
            let _ =
                tokio::time::timeout(Duration::from_secs(5), async { while let Some(Ok(_)) = self.ws.next().await {} })
                    .await;
            Instant::now()
        })
    }

    /// Reads until the client is gone (after the server sent its close).
    pub fn drain(mut self) -> tokio::task::JoinHandle<Instant> {
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), async { while let Some(Ok(_)) = self.ws.next().await {} })
                    .await;
            Instant::now()
        })
    }
}

/// How the fake node answers upgrades.
#[derive(Debug, Clone)]
pub enum Admit {
    Accept,
    /// Refuse the next upgrades with this status and `error`.
    Refuse {
        status: u16,
        error: &'static str,
        times: usize,
    },
}

pub struct FakeNode {
    pub url: String,
    conns: mpsc::UnboundedReceiver<Conn>,
    refused: Arc<AtomicUsize>,
}

impl FakeNode {
    pub async fn start() -> FakeNode {
        FakeNode::start_with(Admit::Accept).await
    }

    pub async fn start_with(admit: Admit) -> FakeNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, conns) = mpsc::unbounded_channel();
        let refused = Arc::new(AtomicUsize::new(0));
        let counter = refused.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else { return };
                let accepted_at = Instant::now();
                let (tx, admit, counter) = (tx.clone(), admit.clone(), counter.clone());
                tokio::spawn(async move {
                    let query = Arc::new(Mutex::new(String::new()));
                    let seen = query.clone();
                    // tungstenite's callback signature: the error is its HTTP response.
                    #[allow(clippy::result_large_err)]
                    let callback = move |request: &Request,
                                         response: WsResponse|
                          -> Result<WsResponse, ErrorResponse> {
                        *seen.lock().unwrap() = request.uri().query().unwrap_or_default().to_owned();
                        if let Admit::Refuse { status, error, times } = admit
                            && counter.fetch_add(1, Ordering::SeqCst) < times
                        {
                            let body = serde_json::json!({"error": error, "message": "fake", "epoch": 1}).to_string();
                            let mut refusal = ErrorResponse::new(Some(body));
                            *refusal.status_mut() = StatusCode::from_u16(status).unwrap();
                            return Err(refusal);
                        }
                        Ok(response)
                    };
                    if let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await {
                        let query = query.lock().unwrap().clone();
                        let _ = tx.send(Conn { query, peer, accepted_at, ws });
                    }
                });
            }
        });
        FakeNode { url: format!("ws://{addr}/ws"), conns, refused }
    }

    /// The next connection, within `timeout`.
    pub async fn next_conn_within(&mut self, timeout: Duration) -> Option<Conn> {
        tokio::time::timeout(timeout, self.conns.recv()).await.ok().flatten()
    }

    pub async fn next_conn(&mut self) -> Conn {
        self.next_conn_within(Duration::from_secs(10)).await.expect("the client connects within 10 s")
    }
}

/// The next event within `timeout` (panics on silence or the end).
pub async fn next_event_within(events: &mut Events, timeout: Duration) -> Event {
    tokio::time::timeout(timeout, events.recv()).await.expect("an event in time").expect("the client is running")
}

pub async fn next_event(events: &mut Events) -> Event {
    next_event_within(events, Duration::from_secs(10)).await
}

/// Reads events until one matches; returns those before it and it.
pub async fn events_until(events: &mut Events, mut stop: impl FnMut(&Event) -> bool) -> (Vec<Event>, Event) {
    let mut before = Vec::new();
    loop {
        let event = next_event(events).await;
        if stop(&event) {
            return (before, event);
        }
        before.push(event);
    }
}

pub async fn wait_state(events: &mut Events, state: State) -> Vec<Event> {
    events_until(events, |e| *e == Event::State(state)).await.0
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

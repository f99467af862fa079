//! Opening one session: TCP from the source address, the WebSocket upgrade
//! with the token and resume point, and the `welcome` frame.

use std::net::{IpAddr, SocketAddr};

use futures_util::StreamExt;
use http::Uri;
use rtc_core::protocol::{MessageId, ServerFrame};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::error::ConnectError;

/// An open session's WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// What a session's `welcome` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub node_id: String,
    pub partition: u32,
    pub epoch: u64,
    /// `None` from a node older than `live_from`.
    pub live_from: Option<MessageId>,
}

/// Small buffers: a process may hold thousands of clients, and frames are
/// small (tungstenite grows the read buffer for a larger one).
fn ws_config() -> WebSocketConfig {
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 4096;
    config.write_buffer_size = 0;
    config
}

/// Opens `url` (a `ws://` URL with token and resume point) from `source`
/// and reads the welcome. The caller bounds the time. [`crate::RtcClient`]
/// uses it for every session; load tools that mint their own tokens open
/// bare sessions with it.
pub async fn open_session(url: &str, source: Option<IpAddr>) -> Result<(Ws, Welcome), ConnectError> {
    let mut ws = open_ws(url, source).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                return match ServerFrame::parse(text.as_str()) {
                    Ok(ServerFrame::Welcome { node_id, partition, epoch, live_from, .. }) => {
                        Ok((ws, Welcome { node_id: node_id.into_owned(), partition, epoch, live_from }))
                    }
                    Ok(other) => Err(ConnectError::NoWelcome(format!("first frame is {:?}", other.kind()))),
                    Err(e) => Err(ConnectError::NoWelcome(format!("first frame does not parse: {e}"))),
                };
            }
            Some(Ok(Message::Close(close))) => {
                let code = close.map_or(1005, |c| u16::from(c.code));
                return Err(ConnectError::NoWelcome(format!("closed with {code}")));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(ConnectError::NoWelcome(e.to_string())),
            None => return Err(ConnectError::NoWelcome("connection ended".into())),
        }
    }
}

/// TCP to `url` from `source` and the WebSocket upgrade, with small
/// buffers; no frame read. Load tools open other servers' sessions with it.
pub async fn open_ws(url: &str, source: Option<IpAddr>) -> Result<Ws, ConnectError> {
    let (host, port) = authority(url)?;
    let stream = connect_tcp(&host, port, source).await.map_err(|e| ConnectError::Unreachable(e.to_string()))?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
        .await
        .map_err(|e| handshake_error(&e))?;
    Ok(ws)
}

/// Host and port of a `ws://` URL.
fn authority(url: &str) -> Result<(String, u16), ConnectError> {
    let uri: Uri = url.parse().map_err(|e| ConnectError::BadUrl(format!("{e}")))?;
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => return Err(ConnectError::BadUrl("wss:// is not supported by this client".into())),
        _ => return Err(ConnectError::BadUrl("not a ws:// URL".into())),
    }
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| ConnectError::BadUrl("no host".into()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    Ok((host, uri.port_u16().unwrap_or(80)))
}

/// TCP to `host:port`, from `source` towards addresses of its family (load
/// tools spread many clients over several loopback source addresses).
pub async fn connect_tcp(host: &str, port: u16, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host} has no address"));
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        if let Some(ip) = source.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
            defer_port_choice(&socket);
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        match socket.connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Lets `connect` pick the source port instead of `bind`. A `bind` to port
/// 0 must find a port free for every destination, which the kernel does by
/// scanning the ports bound to the address: with thousands of sockets from
/// one address that scan costs milliseconds of CPU per connect. At
/// `connect` the port only has to be unique per destination.
fn defer_port_choice(socket: &TcpSocket) {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::IpBindAddressNoPort, &true) {
        tracing::debug!(error = %e, "IP_BIND_ADDRESS_NO_PORT not set; bind picks the port");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

/// A refused upgrade carries the node's JSON `{"error","message","epoch"}`.
fn handshake_error(e: &tungstenite::Error) -> ConnectError {
    match e {
        tungstenite::Error::Http(response) => {
            let body: serde_json::Value =
                response.body().as_deref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
            let field = |k: &str| body.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
            ConnectError::Refused {
                status: response.status().as_u16(),
                error: field("error"),
                message: field("message"),
            }
        }
        tungstenite::Error::Io(io) => ConnectError::Unreachable(io.to_string()),
        other => ConnectError::Handshake(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_urls() {
        assert_eq!(authority("ws://127.0.0.1:8080/ws?token=a.b").unwrap(), ("127.0.0.1".into(), 8080));
        assert_eq!(authority("ws://node/ws").unwrap(), ("node".into(), 80));
        assert_eq!(authority("ws://[::1]:9/ws").unwrap(), ("::1".into(), 9));
        assert!(matches!(authority("wss://node/ws"), Err(ConnectError::BadUrl(_))));
        assert!(matches!(authority("http://node/ws"), Err(ConnectError::BadUrl(_))));
    }
}

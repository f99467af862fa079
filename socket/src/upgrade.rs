//! The WebSocket handshake, done here rather than by axum's extractor so the
//! session's stream is ours to shape: an idle session holds no read buffer.
//!
//! tungstenite keeps its read buffer for the life of a connection, at the
//! size it is configured with. Configured with 0, it grows only while a
//! frame is read, but then reads 14 bytes per call. [`LazyRead`] sits under
//! it: it reads the socket through a buffer on the stack and keeps on the
//! heap only what the caller has not taken yet, so those small reads cost a
//! copy, not a system call, and an idle session holds nothing.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// A session's WebSocket.
pub type WebSocket = WebSocketStream<LazyRead<TokioIo<Upgraded>>>;

/// A request to upgrade to a WebSocket (HTTP/1.1, RFC 6455 section 4.2.1).
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request is no WebSocket upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotUpgrade {
    pub status: StatusCode,
    pub message: &'static str,
}

impl IntoResponse for NotUpgrade {
    fn into_response(self) -> Response {
        (self.status, self.message).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = NotUpgrade;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, NotUpgrade> {
        let bad = |message| NotUpgrade { status: StatusCode::BAD_REQUEST, message };
        if parts.method != Method::GET {
            return Err(NotUpgrade { status: StatusCode::METHOD_NOT_ALLOWED, message: "request method must be GET" });
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(bad("`Connection` header did not include `upgrade`"));
        }
        if !header_has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(bad("`Upgrade` header did not include `websocket`"));
        }
        if parts.headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
            return Err(bad("`Sec-WebSocket-Version` header did not say 13"));
        }
        let key = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned().ok_or(bad("`Sec-WebSocket-Key` missing"))?;
        let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or(NotUpgrade {
            status: StatusCode::UPGRADE_REQUIRED,
            message: "this connection cannot be upgraded",
        })?;
        Ok(Self { key, on_upgrade })
    }
}

/// A comma-separated header holds `token` (any case).
fn header_has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

impl Upgrade {
    /// Answers `101 Switching Protocols`; once the client has it, runs
    /// `session` on the WebSocket (in a task of its own).
    pub fn on_upgrade<F, Fut>(self, config: WebSocketConfig, session: F) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let io = LazyRead::new(TokioIo::new(upgraded));
                    session(WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await).await;
                }
                Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
            }
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}

/// The stack buffer one read of the socket goes through.
const READ_CHUNK: usize = 8 * 1024;

/// Reads `inner` so that nothing is allocated while nothing is read: a read
/// smaller than [`READ_CHUNK`] goes through a stack buffer, and only what
/// the caller did not take stays on the heap (freed once taken). Writes
/// pass through.
pub struct LazyRead<S> {
    inner: S,
    /// Read from the socket, not yet taken. Empty holds no memory.
    leftover: Bytes,
}

impl<S> LazyRead<S> {
    pub fn new(inner: S) -> Self {
        Self { inner, leftover: Bytes::new() }
    }

    /// Bytes read from the socket that the caller has not taken yet.
    pub fn leftover(&self) -> usize {
        self.leftover.len()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LazyRead<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.leftover.is_empty() {
            let n = this.leftover.len().min(out.remaining());
            out.put_slice(&this.leftover[..n]);
            this.leftover.advance(n);
            if this.leftover.is_empty() {
                // Free the allocation (an advanced `Bytes` keeps it).
                this.leftover = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        if out.remaining() >= READ_CHUNK {
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        let mut chunk = [0u8; READ_CHUNK];
        let mut read = ReadBuf::new(&mut chunk);
        match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                let filled = read.filled();
                let n = filled.len().min(out.remaining());
                out.put_slice(&filled[..n]);
                if n < filled.len() {
                    this.leftover = Bytes::copy_from_slice(&filled[n..]);
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LazyRead<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn small_reads_take_what_one_socket_read_brought_and_free_it_after() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut lazy = LazyRead::new(server);
        let sent: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        client.write_all(&sent).await.unwrap();
        let mut got = Vec::new();
        let mut small = [0u8; 14];
        let n = lazy.read(&mut small).await.unwrap();
        assert_eq!(n, 14);
        got.extend_from_slice(&small[..n]);
        assert_eq!(lazy.leftover(), 3000 - 14, "one read of the socket, the rest kept");
        while got.len() < sent.len() {
            let n = lazy.read(&mut small).await.unwrap();
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, sent);
        assert_eq!(lazy.leftover(), 0);
        assert!(lazy.leftover.is_empty() && lazy.leftover.as_ptr() == Bytes::new().as_ptr(), "nothing held");
    }

    #[tokio::test]
    async fn large_reads_go_straight_through_and_end_of_stream_reads_zero() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut lazy = LazyRead::new(server);
        let sent = vec![7u8; 20_000];
        client.write_all(&sent).await.unwrap();
        drop(client);
        let mut got = Vec::new();
        lazy.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, sent);
        assert_eq!(lazy.leftover(), 0);
    }
}

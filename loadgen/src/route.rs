//! `GET /v1/route?user=…` over a minimal HTTP/1.1 client whose socket is
//! bound to the user's source address (the load balancer rate-limits per
//! client address). Parsing is pure; [`fetch`] is the I/O.

use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest response read (a route answer is a few hundred bytes).
const MAX_RESPONSE: usize = 64 * 1024;

/// A load balancer's address, from `http://host:port` or `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbAddr {
    pub host: String,
    pub port: u16,
}

impl LbAddr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = match text.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => return Err(format!("scheme {scheme:?} is not supported (use http://)")),
            None => text,
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("no host".into());
        }
        Ok(Self { host: host.to_owned(), port })
    }

    pub fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A route answer (the contract's one definition is in rtc-core).
pub use rtc_core::RouteAnswer as Route;

/// Why a route request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// The load balancer could not be reached (refused, reset, timeout):
    /// fail over to another one.
    Unreachable(String),
    /// It answered with an error status (`retry_after_ms` from Retry-After).
    Status { status: u16, retry_after_ms: Option<u64> },
    /// It answered 200 with something that is not a route.
    BadResponse(String),
}

impl RouteError {
    /// The key counted in the report's `route_errors`.
    pub fn kind(&self) -> String {
        match self {
            RouteError::Unreachable(kind) => format!("unreachable:{kind}"),
            RouteError::Status { status, .. } => status.to_string(),
            RouteError::BadResponse(_) => "bad_response".into(),
        }
    }
}

/// A parsed HTTP response.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub retry_after_secs: Option<u64>,
    pub body: Vec<u8>,
}

/// Parses a complete HTTP/1.1 response (read until the peer closed).
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let (mut chunked, mut length, mut retry_after_secs) = (false, None, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "content-length" => length = value.parse::<usize>().ok(),
            "retry-after" => retry_after_secs = value.parse::<u64>().ok(),
            _ => {}
        }
    }
    let rest = &raw[split + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n).ok_or("body shorter than content-length")?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, retry_after_secs, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n").ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&data[..eol]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or_default().trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(data.get(..size).ok_or("truncated chunk")?);
        data = data.get(size + 2..).ok_or("truncated chunk")?;
    }
}

/// Turns a response into a route or an error.
pub fn interpret(response: &Response, user: &str) -> Result<Route, RouteError> {
    if response.status != 200 {
        return Err(RouteError::Status {
            status: response.status,
            retry_after_ms: response.retry_after_secs.map(|s| s.saturating_mul(1000)),
        });
    }
    let route: Route =
        serde_json::from_slice(&response.body).map_err(|e| RouteError::BadResponse(format!("not a route: {e}")))?;
    if route.user != user {
        return Err(RouteError::BadResponse(format!("route for {:?}, asked for {user:?}", route.user)));
    }
    if !(route.url.starts_with("ws://") || route.url.starts_with("wss://")) {
        return Err(RouteError::BadResponse(format!("url {:?} is not ws://", route.url)));
    }
    Ok(route)
}

/// Opens a TCP connection from `source` (if any) to `host:port`.
pub use rtc_client::connect_tcp;

/// Asks `lb` for `user`'s route, within `timeout`.
pub async fn fetch(lb: &LbAddr, user: &str, source: Option<IpAddr>, timeout: Duration) -> Result<Route, RouteError> {
    let exchange = async {
        let mut stream = connect_tcp(&lb.host, lb.port, source).await.map_err(|e| io_kind(&e))?;
        let request = format!(
            "GET /v1/route?user={user} HTTP/1.1\r\nhost: {}\r\naccept: application/json\r\nconnection: close\r\n\r\n",
            lb.host_header()
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| io_kind(&e))?;
        let mut raw = Vec::with_capacity(1024);
        let mut limited = (&mut stream).take(MAX_RESPONSE as u64);
        limited.read_to_end(&mut raw).await.map_err(|e| io_kind(&e))?;
        Ok::<_, RouteError>(raw)
    };
    let raw = match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r?,
        Err(_) => return Err(RouteError::Unreachable("timeout".into())),
    };
    if raw.is_empty() {
        return Err(RouteError::Unreachable("empty_response".into()));
    }
    let response = parse_response(&raw).map_err(RouteError::BadResponse)?;
    interpret(&response, user)
}

fn io_kind(e: &std::io::Error) -> RouteError {
    RouteError::Unreachable(format!("{:?}", e.kind()).to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_balancer_addresses() {
        let a = LbAddr::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!(a, LbAddr { host: "127.0.0.1".into(), port: 8000 });
        assert_eq!(a.host_header(), "127.0.0.1:8000");
        assert_eq!(LbAddr::parse("lb.rtc:8000/").unwrap(), LbAddr { host: "lb.rtc".into(), port: 8000 });
        assert_eq!(LbAddr::parse("http://lb").unwrap().port, 80);
        let v6 = LbAddr::parse("http://[::1]:8000").unwrap();
        assert_eq!(v6, LbAddr { host: "::1".into(), port: 8000 });
        assert_eq!(v6.host_header(), "[::1]:8000");
        assert!(LbAddr::parse("https://x:1").is_err());
        assert!(LbAddr::parse("x:port").is_err());
        assert!(LbAddr::parse("http://:80").is_err());
    }

    #[test]
    fn responses_are_parsed() {
        let body = r#"{"user":"u1","partition":3,"node_id":"socket-0","url":"ws://127.0.0.1:8080/ws","epoch":7,"token":"t.k"}"#;
        let raw = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let r = parse_response(raw.as_bytes()).unwrap();
        assert_eq!(r.status, 200);
        let route = interpret(&r, "u1").unwrap();
        assert_eq!(route.node_id, "socket-0");
        assert_eq!(route.connect_url(), "ws://127.0.0.1:8080/ws?token=t.k");
        assert!(matches!(interpret(&r, "u2"), Err(RouteError::BadResponse(_))));

        let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n3;x=1\r\nefg\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked.as_bytes()).unwrap().body, b"abcdefg");

        let limited = "HTTP/1.1 429 Too Many Requests\r\nretry-after: 2\r\n\r\n{\"error\":\"too many requests\"}";
        let r = parse_response(limited.as_bytes()).unwrap();
        let e = interpret(&r, "u1").unwrap_err();
        assert_eq!(e, RouteError::Status { status: 429, retry_after_ms: Some(2000) });
        assert_eq!(e.kind(), "429");
        let r = parse_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\n{}").unwrap();
        assert_eq!(interpret(&r, "u1").unwrap_err().kind(), "503");
        assert_eq!(RouteError::Unreachable("connectionrefused".into()).kind(), "unreachable:connectionrefused");

        for bad in ["", "HTTP/1.1 200 OK\r\n", "FTP 200\r\n\r\n", "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"] {
            assert!(parse_response(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let r = parse_response(b"HTTP/1.1 200 OK\r\n\r\nnot json").unwrap();
        assert!(matches!(interpret(&r, "u1"), Err(RouteError::BadResponse(_))));
        let wrong = r#"{"user":"u1","partition":3,"node_id":"n","url":"http://x/ws","epoch":1,"token":"t"}"#;
        let r = parse_response(format!("HTTP/1.1 200 OK\r\n\r\n{wrong}").as_bytes()).unwrap();
        assert!(matches!(interpret(&r, "u1"), Err(RouteError::BadResponse(_))));
    }

    #[tokio::test]
    async fn unreachable_load_balancers_are_reported_as_such() {
        // A port nobody listens on: bind then drop.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let lb = LbAddr { host: "127.0.0.1".into(), port };
        let err = fetch(&lb, "u1", None, Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(err.kind(), "unreachable:connectionrefused");
    }

    #[tokio::test]
    async fn a_route_is_fetched_from_a_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, peer) = listener.accept().await.unwrap();
            let mut buf = vec![0; 2048];
            let n = s.read(&mut buf).await.unwrap();
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            let body =
                r#"{"user":"lg-1","partition":0,"node_id":"n","url":"ws://127.0.0.1:1/ws","epoch":1,"token":"x"}"#;
            let response = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            s.write_all(response.as_bytes()).await.unwrap();
            (request, peer.ip())
        });
        let lb = LbAddr { host: "127.0.0.1".into(), port: addr.port() };
        let source: IpAddr = "127.0.0.2".parse().unwrap();
        let route = fetch(&lb, "lg-1", Some(source), Duration::from_secs(2)).await.unwrap();
        assert_eq!(route.node_id, "n");
        let (request, peer) = server.await.unwrap();
        assert!(request.starts_with("GET /v1/route?user=lg-1 HTTP/1.1\r\n"), "{request}");
        assert_eq!(peer, source);
    }
}

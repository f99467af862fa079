//! `GET /v1/route?user=…` on the load balancers, with hyper's HTTP/1
//! connection: one request per connection (a client asks rarely, and a
//! process may hold thousands of clients), from the source address.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, HOST, HeaderValue, RETRY_AFTER};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rtc_core::RouteAnswer;
use rtc_core::route::ROUTE_PATH;

use crate::error::{ConfigError, RouteError};

/// Largest answer read: a route is a few hundred bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

pub(crate) struct Router {
    /// Base URLs, without a trailing `/`.
    bases: Vec<String>,
    source_ip: Option<IpAddr>,
    auth: Option<HeaderValue>,
    timeout: Duration,
    /// The load balancer to ask first: the last one that answered.
    current: usize,
}

impl Router {
    pub(crate) fn new(
        urls: &[String],
        auth: Option<&str>,
        source_ip: Option<IpAddr>,
        timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let bases = urls.iter().map(|url| base_url(url)).collect::<Result<Vec<_>, _>>()?;
        let auth = auth.map(|a| HeaderValue::from_str(a).map_err(|_| ConfigError::BadRouteAuth)).transpose()?;
        Ok(Self { bases, source_ip, auth, timeout, current: 0 })
    }

    pub(crate) fn len(&self) -> usize {
        self.bases.len()
    }

    /// The index of the `i`-th load balancer to try in this round.
    pub(crate) fn nth(&self, i: usize) -> usize {
        (self.current + i) % self.bases.len()
    }

    pub(crate) fn base(&self, index: usize) -> &str {
        &self.bases[index]
    }

    /// Asks the next rounds to start with `index`.
    pub(crate) fn stay_with(&mut self, index: usize) {
        self.current = index;
    }

    /// Asks load balancer `index` for `user`'s route.
    pub(crate) async fn fetch(&self, index: usize, user: &str) -> Result<RouteAnswer, RouteError> {
        let uri: Uri = format!("{}{ROUTE_PATH}?user={}", self.bases[index], encode_query_value(user))
            .parse()
            .map_err(|e| RouteError::BadAnswer(format!("cannot build the request URI: {e}")))?;
        let (Some(host), Some(authority), Some(target)) = (uri.host(), uri.authority(), uri.path_and_query()) else {
            return Err(RouteError::BadAnswer(format!("cannot build the request from {uri}")));
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let mut request =
            Request::get(target.as_str()).header(HOST, authority.as_str()).header(ACCEPT, "application/json");
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let request = request.body(Empty::<Bytes>::new()).map_err(|e| RouteError::BadAnswer(e.to_string()))?;
        let exchange = async {
            let stream = crate::conn::connect_tcp(host, uri.port_u16().unwrap_or(80), self.source_ip)
                .await
                .map_err(|e| RouteError::Unreachable(e.to_string()))?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| RouteError::Unreachable(error_chain(&e)))?;
            // Ends once the answer is read and `sender` dropped (or on error).
            tokio::spawn(connection);
            let response = sender.send_request(request).await.map_err(|e| RouteError::Unreachable(error_chain(&e)))?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| RouteError::Unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, RouteError>((status, retry_after, body))
        };
        let (status, retry_after, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| RouteError::Unreachable(format!("no answer within {:?}", self.timeout)))??;
        interpret(status, retry_after, &body, user)
    }
}

/// One `GET /v1/route?user=…` on the load balancer at `url`, from
/// `source`, bounded by `timeout`: what [`crate::RtcClient`] asks before
/// each session, for load tools that open bare sessions.
pub async fn fetch_route(
    url: &str,
    user: &str,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Result<RouteAnswer, RouteError> {
    let router = Router::new(&[url.to_owned()], None, source, timeout)
        .map_err(|e| RouteError::BadAnswer(format!("load balancer URL {url:?}: {e}")))?;
    router.fetch(0, user).await
}

/// A route answer from a status and body.
pub(crate) fn interpret(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    user: &str,
) -> Result<RouteAnswer, RouteError> {
    if status != 200 {
        let json = serde_json::from_slice::<serde_json::Value>(body).ok();
        let message = json
            .as_ref()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
        // `retry_after_ms` in the body is precise; `Retry-After` whole seconds.
        let precise = json.as_ref().and_then(|v| v.get("retry_after_ms")).and_then(|v| v.as_u64());
        let retry_after_exact = precise.is_some();
        let retry_after = precise.map(Duration::from_millis).or(retry_after);
        return Err(RouteError::Status { status, message, retry_after, retry_after_exact });
    }
    let answer: RouteAnswer =
        serde_json::from_slice(body).map_err(|e| RouteError::BadAnswer(format!("not a route: {e}")))?;
    if answer.user != user {
        return Err(RouteError::BadAnswer(format!("route for {:?}, asked for {user:?}", answer.user)));
    }
    Ok(answer)
}

/// `url` without a trailing `/`, checked to be `http://host[:port][/path]`.
fn base_url(url: &str) -> Result<String, ConfigError> {
    let bad = |reason: &str| ConfigError::BadRouteUrl { url: url.to_owned(), reason: reason.to_owned() };
    let base = url.trim_end_matches('/');
    let uri: Uri = base.parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => return Err(bad(&format!("scheme {other:?} is not supported (use http://)"))),
        None => return Err(bad("no scheme (use http://host:port)")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if uri.query().is_some() {
        return Err(bad("a base URL has no query"));
    }
    Ok(base.to_owned())
}

/// Percent-encodes a query value: user ids may hold spaces, `&`, `=`, `+`
/// and any printable Unicode.
pub(crate) fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An error with its sources: hyper's top-level messages are terse.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked() {
        assert_eq!(base_url("http://127.0.0.1:8000/").unwrap(), "http://127.0.0.1:8000");
        assert_eq!(base_url("http://lb.rtc/prefix").unwrap(), "http://lb.rtc/prefix");
        assert_eq!(base_url("http://[::1]:8000").unwrap(), "http://[::1]:8000");
        for bad in ["https://lb:443", "lb:8000", "", "http://", "http://lb/?x=1", "ws://lb"] {
            assert!(base_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode_query_value("user-1_a.b~"), "user-1_a.b~");
        assert_eq!(encode_query_value("a b&c=d+é/?"), "a%20b%26c%3Dd%2B%C3%A9%2F%3F");
    }

    #[test]
    fn answers_are_interpreted() {
        let body =
            br#"{"user":"u 1","partition":3,"node_id":"socket-0","url":"ws://127.0.0.1:1/ws","epoch":7,"token":"t"}"#;
        let route = interpret(200, None, body, "u 1").unwrap();
        assert_eq!((route.node_id.as_str(), route.epoch), ("socket-0", 7));
        assert!(matches!(interpret(200, None, body, "u2"), Err(RouteError::BadAnswer(_))));
        assert!(matches!(interpret(200, None, b"nope", "u 1"), Err(RouteError::BadAnswer(_))));
        let limited = interpret(429, Some(Duration::from_secs(2)), br#"{"error":"too many requests"}"#, "u");
        assert_eq!(
            limited,
            Err(RouteError::Status {
                status: 429,
                message: "too many requests".into(),
                retry_after: Some(Duration::from_secs(2)),
                retry_after_exact: false,
            })
        );
        let plain = interpret(503, None, b"down", "u");
        let down =
            RouteError::Status { status: 503, message: "down".into(), retry_after: None, retry_after_exact: false };
        assert_eq!(plain, Err(down));
        let silent = interpret(503, Some(Duration::from_secs(6)), br#"{"error":"silent","retry_after_ms":5432}"#, "u");
        assert_eq!(
            silent,
            Err(RouteError::Status {
                status: 503,
                message: "silent".into(),
                retry_after: Some(Duration::from_millis(5432)),
                retry_after_exact: true,
            }),
            "the body's milliseconds win over the header's seconds"
        );
    }
}

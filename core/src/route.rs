//! The load balancer's route answer: `GET /v1/route?user=ID` →
//! `200 {"user","partition","node_id","url","epoch","token"}` (see
//! `docs/ARCHITECTURE.md`, "HTTP contracts"). The load balancer writes it;
//! clients read it and open [`RouteAnswer::connect_url`].

use serde::{Deserialize, Serialize};

/// The path of the route request on a load balancer's public port.
pub const ROUTE_PATH: &str = "/v1/route";

/// Where a user connects now: the owner of its partition and a short-lived
/// token bound to user, node, partition and epoch (`crate::token`).
/// Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteAnswer {
    pub user: String,
    pub partition: u32,
    pub node_id: String,
    /// The node's WebSocket URL (`ws://host:port/ws`).
    pub url: String,
    /// The assignment epoch the answer was made from.
    pub epoch: u64,
    pub token: String,
}

impl RouteAnswer {
    /// The WebSocket URL to open: [`Self::url`] with `token` added to its
    /// query. A client adds its resume point (`&last_id=…` or `&from_id=…`,
    /// `crate::protocol::resume_point`) after it.
    pub fn connect_url(&self) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}token={}", self.url, self.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_and_build_the_connect_url() {
        let text = r#"{"user":"u1","partition":3,"node_id":"socket-0","url":"ws://127.0.0.1:8080/ws","epoch":7,"token":"v1.a.b","extra":1}"#;
        let answer: RouteAnswer = serde_json::from_str(text).unwrap();
        assert_eq!(answer.partition, 3);
        assert_eq!(answer.connect_url(), "ws://127.0.0.1:8080/ws?token=v1.a.b");
        let again: RouteAnswer = serde_json::from_str(&serde_json::to_string(&answer).unwrap()).unwrap();
        assert_eq!(again, answer);
        let with_query = RouteAnswer { url: "ws://n/ws?x=1".into(), ..answer };
        assert_eq!(with_query.connect_url(), "ws://n/ws?x=1&token=v1.a.b");
    }
}

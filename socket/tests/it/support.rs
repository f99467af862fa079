//! Test app builder: real Redis (from `scripts/test`), an embedded Kafka per
//! test, socket nodes in-process on port 0, and a WebSocket client.

use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use redis::AsyncCommands;
use rtc_core::{Assignment, AssignmentNode, ConnectClaims, Document, NodeState, TokenSigner};
use rtc_socket::kafka::EmbeddedKafka;
use rtc_socket::server::NodeHandle;
use rtc_socket::testing::TestNode;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret";
pub const TOPIC: &str = "rtc.messages";

pub fn redis_url() -> String {
    std::env::var("RTC_TEST_REDIS_URL")
        .expect("RTC_TEST_REDIS_URL is not set: run the tests through scripts/test, which starts Redis")
}

/// A key prefix of its own for each test, so tests share one Redis safely.
pub fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("t{}-{}:", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// One test's world: its Redis key prefix, a Kafka, a partition count.
pub struct World {
    pub prefix: String,
    pub topic: String,
    pub partitions: u32,
    pub brokers: String,
    kafka: Option<EmbeddedKafka>,
    pub redis: redis::aio::MultiplexedConnection,
}

impl World {
    pub async fn new(partitions: u32) -> Self {
        let kafka = EmbeddedKafka::start(TOPIC, partitions).expect("embedded kafka");
        let brokers = kafka.bootstrap_servers().to_owned();
        Self::with_brokers(partitions, brokers, Some(kafka)).await
    }

    pub async fn with_brokers(partitions: u32, brokers: String, kafka: Option<EmbeddedKafka>) -> Self {
        let client = redis::Client::open(redis_url()).unwrap();
        let redis = client.get_multiplexed_async_connection().await.expect("redis up");
        Self { prefix: unique_prefix(), topic: TOPIC.to_owned(), partitions, brokers, kafka, redis }
    }

    /// A world on the real broker `scripts/test` starts (tansu), with a
    /// topic of its own.
    pub async fn tansu(partitions: u32) -> Self {
        let brokers = std::env::var("RTC_TEST_KAFKA_BROKERS")
            .expect("RTC_TEST_KAFKA_BROKERS is not set: run the tests through scripts/test, which starts tansu");
        let mut world = World::with_brokers(partitions, brokers, None).await;
        world.topic = format!("rtc.messages.{}", world.prefix.trim_end_matches(':'));
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &world.brokers).create().unwrap();
        let topic = NewTopic::new(&world.topic, partitions as i32, TopicReplication::Fixed(1));
        for r in admin.create_topics([&topic], &AdminOptions::new()).await.unwrap() {
            r.unwrap();
        }
        world
    }

    /// Stops the embedded Kafka: its broker becomes unreachable.
    pub fn stop_kafka(&mut self) {
        self.kafka = None;
    }

    /// A node of this world with `extra` flags.
    pub fn test_node(&self, node_id: &str, extra: &[&str]) -> TestNode {
        TestNode::new(node_id, &redis_url(), &self.prefix, &self.brokers)
            .token_secret(SECRET)
            .topic(&self.topic)
            .partitions(self.partitions)
            .args(extra)
    }

    pub async fn node(&self, node_id: &str, extra: &[&str]) -> NodeHandle {
        self.test_node(node_id, extra).start().await.expect("node starts")
    }

    /// A node that serves every partition (epoch 1).
    pub async fn serving_node(&mut self, node_id: &str, extra: &[&str]) -> NodeHandle {
        let node = self.node(node_id, extra).await;
        self.publish(1, &[&node], |_| 0).await;
        wait_serving(&node, 1).await;
        node
    }

    /// Nodes A and B serving epoch 1, in which `owner_of(p)` is 0 for A and
    /// 1 for B.
    pub async fn two_nodes(&mut self, owner_of: impl Fn(u32) -> usize) -> (NodeHandle, NodeHandle) {
        let a = self.node("socket-a", &[]).await;
        let b = self.node("socket-b", &[]).await;
        self.publish(1, &[&a, &b], owner_of).await;
        wait_serving(&a, 1).await;
        wait_serving(&b, 1).await;
        (a, b)
    }

    /// Publishes an assignment over running nodes as the leader would.
    pub async fn publish(&mut self, epoch: u64, nodes: &[&NodeHandle], owner_of: impl Fn(u32) -> usize) {
        let nodes = nodes.iter().map(|n| (n.node_id.clone(), n.advertised_url.clone())).collect();
        self.publish_nodes(epoch, nodes, owner_of).await;
    }

    /// Publishes an assignment over any node ids (SET, then PUBLISH).
    pub async fn publish_nodes(&mut self, epoch: u64, nodes: Vec<(String, String)>, owner_of: impl Fn(u32) -> usize) {
        let assignment = Assignment {
            v: 1,
            epoch,
            leader_epoch: 1,
            partitions: self.partitions,
            nodes: nodes.into_iter().map(|(id, url)| AssignmentNode { id, url, state: NodeState::Ready }).collect(),
            owners: (0..self.partitions).map(|p| Some(owner_of(p) as u32)).collect(),
        };
        let keys = rtc_core::Keys::new(self.prefix.clone());
        let _: () = self.redis.set(keys.assignment(), assignment.to_json()).await.unwrap();
        let _: i64 = self.redis.publish(keys.assignment_events(), epoch).await.unwrap();
    }

    pub fn token(&self, user: &str, node: &NodeHandle, epoch: u64) -> String {
        token_for(user, &node.node_id, rtc_core::partition_for_key(user.as_bytes(), self.partitions), epoch)
    }

    /// Sends one message to `user` through Kafka and waits for the ack.
    pub async fn produce(&self, producer: &FutureProducer, user: &str, body: &str) -> (i32, i64) {
        let record = FutureRecord::to(&self.topic).key(user).payload(body);
        let delivery = producer.send(record, Duration::from_secs(5)).await.expect("produced");
        (delivery.partition, delivery.offset)
    }

    pub async fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "0")
            .create()
            .unwrap()
    }
}

pub fn token_for(user: &str, node_id: &str, partition: u32, epoch: u64) -> String {
    TokenSigner::new(SECRET.as_bytes()).sign(&ConnectClaims {
        user: user.into(),
        node_id: node_id.into(),
        partition,
        epoch,
        expires_at_ms: rtc_socket::kafka::now_ms() as u64 + 60_000,
        nonce: rand::random(),
    })
}

/// Waits until `check` holds, polling; panics with `what` after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a node has applied `epoch` and serves `partition`.
pub async fn wait_serving(node: &NodeHandle, epoch: u64) {
    let ownership = node.ownership.clone();
    eventually("node applies the assignment", Duration::from_secs(10), async || ownership.view().epoch >= epoch).await;
}

/// Waits until `node` acknowledged `epoch` in its heartbeat.
pub async fn wait_acked(node: &NodeHandle, epoch: u64) {
    let ownership = node.ownership.clone();
    eventually("the old owner acknowledges", Duration::from_secs(15), async || ownership.acked_epoch() >= epoch).await;
}

/// The heartbeats `node` wrote to this world's stream, oldest first.
pub async fn heartbeats_of(world: &World, node: &str) -> Vec<rtc_core::Heartbeat> {
    type Entry = (String, Vec<(String, Vec<u8>)>);
    let key = rtc_core::Keys::new(world.prefix.clone()).heartbeats();
    let entries: Vec<Entry> = world.redis.clone().xrange_all(key).await.unwrap_or_default();
    entries
        .iter()
        .flat_map(|(_, fields)| fields.iter().filter(|(k, _)| k == "hb"))
        .map(|(_, v)| rtc_core::Heartbeat::from_json(v).unwrap())
        .filter(|hb| hb.node_id == node)
        .collect()
}

pub async fn admin_get(node: &NodeHandle, path: &str) -> (u16, String) {
    http(node.admin_addr, "GET", path).await
}

/// A minimal HTTP/1.1 request (the tests need nothing more).
pub async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_with(addr, method, path, &[]).await
}

/// [`http`] with extra request headers.
pub async fn http_with(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let request =
        format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{extra}content-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// The value of a metric line (`name{labels} value`) in `/metrics`.
pub async fn metric(node: &NodeHandle, series: &str) -> f64 {
    let (_, text) = admin_get(node, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(node: &NodeHandle, token: &str) -> Result<Client, (u16, Value)> {
        Client::connect_url(&format!("ws://{}/ws?token={token}", node.ws_addr)).await
    }

    pub async fn connect_url(url: &str) -> Result<Client, (u16, Value)> {
        match tokio_tungstenite::connect_async(url).await {
            Ok((ws, _)) => Ok(Client { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body =
                    response.body().as_deref().map(|b| serde_json::from_slice(b).unwrap()).unwrap_or(Value::Null);
                Err((status, body))
            }
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    /// Connects and reads the welcome frame.
    pub async fn join(node: &NodeHandle, token: &str) -> Client {
        let mut client = Client::connect(node, token).await.expect("admitted");
        let welcome = client.next_json().await.expect("welcome");
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        client
    }

    /// Connects with `last_id` and reads the welcome, the replayed messages
    /// and the `resumed` frame.
    pub async fn resume(node: &NodeHandle, token: &str, last_id: &str) -> (Client, Vec<Value>, Value) {
        Self::resume_at(node.ws_addr, token, last_id).await
    }

    /// [`Client::resume`] on the node listening at `addr`.
    pub async fn resume_at(addr: std::net::SocketAddr, token: &str, last_id: &str) -> (Client, Vec<Value>, Value) {
        let url = format!("ws://{addr}/ws?token={token}&last_id={last_id}");
        let mut client = Client::connect_url(&url).await.expect("admitted");
        let welcome = client.next_json().await.expect("welcome");
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        let mut replayed = Vec::new();
        loop {
            let frame = client.next_json_within(Duration::from_secs(10)).await.expect("replay, then resumed");
            match frame["type"].as_str() {
                Some("message") => replayed.push(frame),
                Some("resumed") => return (client, replayed, frame),
                _ => panic!("unexpected frame during the replay: {frame}"),
            }
        }
    }

    pub async fn send_json(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.unwrap();
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    /// Next JSON text frame within 5 s; `None` when the connection ended.
    pub async fn next_json(&mut self) -> Option<Value> {
        self.next_json_within(Duration::from_secs(5)).await
    }

    pub async fn next_json_within(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()??;
            match frame {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }
}

/// The `socket` binary as a child process, once its log says it is ready,
/// with its WebSocket URL.
pub async fn spawn_binary(world: &World, node_id: &str, extra: &[&str]) -> (tokio::process::Child, String) {
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ws_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let args = world
        .test_node(node_id, extra)
        .arg("--listen", &format!("127.0.0.1:{ws_port}"))
        .arg("--admin-listen", &format!("127.0.0.1:{admin_port}"))
        .into_args();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_socket"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Its structured log says when it is ready.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log lines");
            if v["fields"]["message"] == "socket node ready" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true));
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, format!("ws://127.0.0.1:{ws_port}/ws"))
}

/// Sends `SIG<name>` (TERM, KILL, STOP, CONT) to a child process.
pub fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("the child is running").to_string();
    assert!(std::process::Command::new("kill").args([&format!("-{name}"), &pid]).status().unwrap().success());
}

//! The client against real socket nodes (in-process, an embedded Kafka, the
//! Redis of `RTC_TEST_REDIS_URL`), routed by a small route server that signs
//! tokens for the current owner: the user's partition moves from node A to
//! node B while messages flow, and the client delivers every message once,
//! in order, reconnecting exactly once.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State as AxState};
use rdkafka::config::ClientConfig as KafkaConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use redis::AsyncCommands;
use rtc_client::{ClientConfig, CloseReason, Event, Events, MessageId, RtcClient, SessionEnd, State};
use rtc_core::{Assignment, AssignmentNode, ConnectClaims, Document, NodeState, RouteAnswer, TokenSigner};
use rtc_socket::kafka::EmbeddedKafka;
use rtc_socket::server::NodeHandle;
use rtc_socket::testing::TestNode;

const SECRET: &str = "client-test-secret";
const TOPIC: &str = "rtc.messages";
const P: u32 = 8;

fn redis_url() -> String {
    std::env::var("RTC_TEST_REDIS_URL").expect("RTC_TEST_REDIS_URL is not set: run with the test Redis up")
}

fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("client-t{}-{}:", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

async fn start_node(brokers: &str, prefix: &str, node_id: &str) -> NodeHandle {
    TestNode::new(node_id, &redis_url(), prefix, brokers)
        .token_secret(SECRET)
        .topic(TOPIC)
        .partitions(P)
        .start()
        .await
        .expect("node starts")
}

/// Who owns which partition, as the leader would publish it.
struct Table {
    epoch: u64,
    nodes: Vec<(String, SocketAddr)>,
    owner: Vec<usize>,
}

/// Publishes the table's assignment as the leader would (SET, then PUBLISH).
async fn publish(table: &Mutex<Table>, redis: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let assignment = {
        let t = table.lock().unwrap();
        Assignment {
            v: 1,
            epoch: t.epoch,
            leader_epoch: 1,
            partitions: P,
            nodes: t
                .nodes
                .iter()
                .map(|(id, addr)| AssignmentNode {
                    id: id.clone(),
                    url: format!("ws://{addr}/ws"),
                    state: NodeState::Ready,
                })
                .collect(),
            owners: t.owner.iter().map(|&o| Some(o as u32)).collect(),
        }
    };
    let keys = rtc_core::Keys::new(prefix.to_owned());
    let _: () = redis.set(keys.assignment(), assignment.to_json()).await.unwrap();
    let _: i64 = redis.publish(keys.assignment_events(), assignment.epoch).await.unwrap();
}

/// `GET /v1/route`: the current owner of the user's partition and a token
/// for it, like the load balancer's.
async fn route_server(table: Arc<Mutex<Table>>) -> String {
    async fn route(
        AxState(table): AxState<Arc<Mutex<Table>>>,
        Query(query): Query<std::collections::HashMap<String, String>>,
    ) -> axum::Json<RouteAnswer> {
        let user = query.get("user").cloned().unwrap_or_default();
        let partition = rtc_core::partition_for_key(user.as_bytes(), P);
        let table = table.lock().unwrap();
        let (node_id, addr) = table.nodes[table.owner[partition as usize]].clone();
        let token = TokenSigner::new(SECRET.as_bytes()).sign(&ConnectClaims {
            user: user.clone(),
            node_id: node_id.clone(),
            partition,
            epoch: table.epoch,
            expires_at_ms: rtc_socket::kafka::now_ms() as u64 + 60_000,
            nonce: rand::random(),
        });
        axum::Json(RouteAnswer { user, partition, node_id, url: format!("ws://{addr}/ws"), epoch: table.epoch, token })
    }
    let app = axum::Router::new().route("/v1/route", axum::routing::get(route)).with_state(table);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn produce(producer: &FutureProducer, user: &str, body: &str) -> MessageId {
    let record = FutureRecord::to(TOPIC).key(user).payload(body);
    let delivery = producer.send(record, Duration::from_secs(5)).await.expect("produced");
    MessageId::new(delivery.partition as u32, delivery.offset)
}

async fn next_event(events: &mut Events, timeout: Duration) -> Event {
    tokio::time::timeout(timeout, events.recv()).await.expect("an event in time").expect("the client runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_move_while_messages_flow_delivers_each_once_in_order() {
    let user = "alice";
    let p = rtc_core::partition_for_key(user.as_bytes(), P) as usize;
    let kafka = EmbeddedKafka::start(TOPIC, P).expect("embedded kafka");
    let brokers = kafka.bootstrap_servers().to_owned();
    let prefix = unique_prefix();
    let mut redis = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let a = start_node(&brokers, &prefix, "socket-a").await;
    let b = start_node(&brokers, &prefix, "socket-b").await;
    let table = Arc::new(Mutex::new(Table {
        epoch: 1,
        nodes: vec![("socket-a".into(), a.ws_addr), ("socket-b".into(), b.ws_addr)],
        owner: vec![0; P as usize],
    }));
    publish(&table, &mut redis, &prefix).await;
    let lb = route_server(table.clone()).await;

    let mut config = ClientConfig::new([lb], user);
    config.min_reconnect_delay = Duration::from_millis(50);
    config.max_reconnect_delay = Duration::from_secs(1);
    let (client, mut events) = RtcClient::connect(config).unwrap();
    let mut log = Vec::new();
    // Node A may still be applying epoch 1: the client retries until admitted.
    loop {
        let event = next_event(&mut events, Duration::from_secs(20)).await;
        let connected = event == Event::State(State::Connected);
        log.push(event);
        if connected {
            break;
        }
    }
    assert_eq!(a.hub.connections(), 1);

    // 60 messages, 15 ms apart; after the 20th the partition moves to B.
    let producer: FutureProducer = KafkaConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let mut produced = Vec::new();
    for i in 0..60 {
        produced.push(produce(&producer, user, &format!("m{i}")).await);
        if i == 20 {
            {
                let mut t = table.lock().unwrap();
                t.epoch = 2;
                t.owner[p] = 1;
            }
            publish(&table, &mut redis, &prefix).await;
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    assert!(produced.iter().all(|id| id.partition as usize == p));

    // Every produced id arrives.
    let mut delivered = Vec::new();
    while delivered.len() < produced.len() {
        let event = next_event(&mut events, Duration::from_secs(30)).await;
        if let Event::Message { id, body, .. } = &event {
            assert_eq!(*body, format!("m{}", delivered.len()), "{id}");
            delivered.push(*id);
        }
        log.push(event);
    }
    // A send to oneself: acknowledged with the id it then arrives as.
    let sent = client.send(user, "to myself").await.expect("acknowledged");
    loop {
        let event = next_event(&mut events, Duration::from_secs(10)).await;
        if let Event::Message { id, from, body, .. } = &event {
            assert_eq!((*id, from.as_deref(), body.as_str()), (sent, Some(user), "to myself"));
            delivered.push(*id);
            log.push(event);
            break;
        }
        log.push(event);
    }
    // Nothing else comes (no duplicate, late or early).
    let quiet = tokio::time::timeout(Duration::from_millis(500), events.recv()).await;
    assert!(quiet.is_err(), "unexpected event {quiet:?}");

    produced.push(sent);
    assert_eq!(delivered, produced, "every produced id, once, in order");
    assert!(delivered.windows(2).all(|w| w[0].offset < w[1].offset), "strictly increasing");
    let states: Vec<State> = log
        .iter()
        .filter_map(|e| match e {
            Event::State(s) => Some(*s),
            _ => None,
        })
        .collect();
    assert_eq!(states, [State::Connecting, State::Connected, State::Connecting, State::Connected], "{log:?}");
    let ends: Vec<&SessionEnd> = log
        .iter()
        .filter_map(|e| match e {
            Event::SessionEnded { end, .. } => Some(end),
            _ => None,
        })
        .collect();
    assert!(
        matches!(ends.as_slice(), [SessionEnd::Disconnect { reason: CloseReason::Rebalance, reconnect: true, .. }]),
        "{ends:?}"
    );
    let recovered: Vec<&Event> = log.iter().filter(|e| matches!(e, Event::Recovered { .. })).collect();
    assert_eq!(recovered, [&Event::Recovered { recovered: true, reason: None }], "the reconnect resumed");
    assert_eq!((a.hub.connections(), b.hub.connections()), (0, 1), "the client is on B only");

    client.close();
    client.closed().await;
    a.shutdown().await;
    b.shutdown().await;
    drop(kafka);
}

//! Heartbeats carry real figures, and a Redis outage neither stops the node
//! nor its users: heartbeats resume when Redis is back.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::AsyncCommands;
use rtc_core::NodeState;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_report_the_node_as_it_is() {
    let mut world = World::new(4).await;
    let node = world.serving_node("socket-a", &["--capacity", "500"]).await;
    let _c1 = Client::join(&node, &world.token("u1", &node, 1)).await;
    let mut c2 = Client::join(&node, &world.token("u2", &node, 1)).await;
    let producer = world.producer().await;
    world.produce(&producer, "u2", "x").await;
    c2.next_json().await.unwrap();

    eventually("a heartbeat with both sessions and the delivery", Duration::from_secs(5), async || {
        heartbeats_of(&world, "socket-a").await.iter().any(|hb| hb.connections == 2 && hb.mps_out > 0.0)
    })
    .await;
    let all = heartbeats_of(&world, "socket-a").await;
    let hb = all.last().unwrap();
    assert_eq!(hb.state, NodeState::Ready);
    assert_eq!(hb.capacity, 500);
    assert_eq!(hb.url, node.advertised_url);
    assert_eq!(hb.assignment_epoch, 1, "acknowledged epoch");
    assert!((0.0..=1.0).contains(&hb.cpu) && hb.memory > 0.0 && hb.memory <= 1.0, "{hb:?}");
    let per_partition: u64 = hb.partition_connections.as_ref().unwrap().values().sum();
    assert_eq!(per_partition, 2);
    // Sequence numbers increase by one.
    assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    // The same figures are exported.
    assert_eq!(metric(&node, "rtc_socket_capacity").await, 500.0);
    let memory = metric(&node, "rtc_socket_memory_ratio").await;
    assert!(memory > 0.0 && memory <= 1.0, "memory ratio {memory}");
    let cpu = metric(&node, "rtc_socket_cpu_ratio").await;
    assert!((0.0..=1.0).contains(&cpu), "cpu ratio {cpu}");
    node.shutdown().await;
}

/// A Redis server of this test's own, so it can be stopped and restarted.
struct OwnRedis {
    port: u16,
    child: Child,
}

impl OwnRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        Self { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_leaves_sessions_alone_and_heartbeats_resume() {
    let port = free_port();
    let mut own = OwnRedis::start(port);
    let url = own.url();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = None;
    for _ in 0..100 {
        if let Ok(c) = client.get_multiplexed_async_connection().await {
            conn = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut world = World::new(4).await;
    world.redis = conn.expect("own redis is up");
    let node = world.node("socket-a", &["--redis-url", &url]).await;
    world.publish(1, &[&node], |_| 0).await;
    wait_serving(&node, 1).await;
    let mut session = Client::join(&node, &world.token("u1", &node, 1)).await;
    let producer = world.producer().await;
    eventually("heartbeats flow", Duration::from_secs(5), async || metric(&node, "rtc_socket_redis_up").await == 1.0)
        .await;

    drop(own);
    eventually("the node notices Redis is down", Duration::from_secs(5), async || {
        metric(&node, "rtc_socket_redis_up").await == 0.0
    })
    .await;
    // Users are still served from Kafka.
    world.produce(&producer, "u1", "during the outage").await;
    let m = session.next_json().await.expect("session survives");
    assert_eq!(m["body"], "during the outage");
    assert_eq!(admin_get(&node, "/livez").await.0, 200);

    own = OwnRedis::start(port);
    let key = rtc_core::Keys::new(world.prefix.clone()).heartbeats();
    eventually("heartbeats resume", Duration::from_secs(10), async || {
        let Ok(mut c) = client.get_multiplexed_async_connection().await else { return false };
        let n: usize = c.xlen(&key).await.unwrap_or(0);
        n > 0 && metric(&node, "rtc_socket_redis_up").await == 1.0
    })
    .await;
    world.produce(&producer, "u1", "after").await;
    assert_eq!(session.next_json().await.unwrap()["body"], "after");
    assert!(metric(&node, "rtc_socket_heartbeats_total{outcome=\"error\"}").await >= 1.0);
    node.shutdown().await;
    drop(own);
}

//! The operator console on the admin port: `/ui/` serves one page, and every
//! endpoint and metric it reads is there. (How it renders: the browser test,
//! `clients/js/test/browser`.)

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use std::time::Duration;

use support::*;
use tokio_util::sync::CancellationToken;

const PAGE: &str = include_str!("../src/console/index.html");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_page_reads_endpoints_and_metrics_that_exist() {
    let prefix = prefix();
    let lb = lb(&prefix, "lb-a", &[]).await;
    let stop = CancellationToken::new();
    beat(&prefix, &["socket-0", "socket-1"], stop.clone());

    let (status, headers, _) = exchange(lb.admin_addr, "GET", "/ui", &[]).await;
    assert_eq!((status, headers.get("location").map(String::as_str)), (308, Some("/ui/")));
    let (status, headers, body) = exchange(lb.admin_addr, "GET", "/ui/", &[]).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].starts_with("text/html"), "{headers:?}");
    assert_eq!(body, PAGE);

    // The page's fetches are relative to /ui/: "../v1/nodes" is /v1/nodes.
    let paths: Vec<&str> = PAGE.split("(\"../").skip(1).filter_map(|rest| rest.split('"').next()).collect();
    assert_eq!(paths, ["v1/nodes", "v1/assignment", "v1/decisions?limit=10", "metrics"]);
    until("an assignment", Duration::from_secs(10), async || get(lb.admin_addr, "/v1/assignment", &[]).await.0 == 200)
        .await;
    for path in &paths {
        let (status, _) = get_text(lb.admin_addr, &format!("/{path}"), &[]).await;
        assert_eq!(status, 200, "/{path}");
    }

    // Every metric the page shows is one the load balancer exports.
    let pattern = PAGE.split("rtc_lb_(").nth(1).unwrap().split(')').next().unwrap();
    let (_, metrics) = get_text(lb.admin_addr, "/metrics", &[]).await;
    for name in pattern.split('|') {
        let name = format!("rtc_lb_{name}");
        assert!(metrics.lines().any(|l| l.starts_with(&name)), "{name} is not exported:\n{metrics}");
    }
    stop.cancel();
}

use std::time::Duration;

use rtc_socket::config::Config;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("RTC_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .json()
        .init();
    let config = Config::from_environment();
    let deadline = Duration::from_millis(config.timing.shutdown_deadline_ms);
    let node = rtc_socket::node::start(config).await?;

    wait_for_signal().await;
    tracing::info!("stop requested: draining");
    node.shared.begin_drain();
    let drained = tokio::time::timeout(deadline, async {
        while !node.shared.drained() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .is_ok();
    if !drained {
        tracing::warn!(connections = node.shared.hub.connections(), "drain deadline passed; stopping anyway");
    }
    node.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

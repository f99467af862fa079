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
    let node = rtc_socket::server::start(config).await?;

    let failed = tokio::select! {
        _ = wait_for_signal() => None,
        failure = node.failed() => Some(failure),
    };
    if let Some(failure) = failed {
        // Broken: no drain (its users resume elsewhere from the log); exit
        // non-zero so the orchestrator restarts it.
        exit_after(SHUTDOWN_SLACK);
        node.shutdown().await;
        return Err(failure.into());
    }
    tracing::info!("stop requested: draining");
    exit_after(deadline + SHUTDOWN_SLACK);
    node.lifecycle.begin_drain();
    let drained = tokio::time::timeout(deadline, async {
        while !node.lifecycle.drained() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .is_ok();
    if !drained {
        tracing::warn!(connections = node.hub.connections(), "drain deadline passed; stopping anyway");
    }
    node.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Time past the drain deadline for the rest of the shutdown: closing
/// sessions, committing, stopping tasks (`NodeHandle::shutdown` takes at most
/// about 7 s) and dropping the Kafka clients.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(10);

/// Ends the process after `limit` whatever is still running. The shutdown
/// deadline is a promise to whoever stops the node (the kubelet's grace
/// period, the local actuator), but dropping librdkafka's clients can block
/// while their broker is unreachable, and the runtime then waits on them.
fn exit_after(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        tracing::error!(limit_ms = limit.as_millis() as u64, "shutdown overran its deadline; exiting now");
        std::process::exit(1);
    });
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

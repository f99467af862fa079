//! `local-actuator`: see the crate docs and `--help`.

use clap::Parser;
use rtc_actuator::config::Config;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("RTC_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .json()
        .init();
    // One thread: every node is forked from it, which is what makes
    // `setpriv --pdeathsig` (tied to the forking thread) reliable.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let template = config.pod_template();
    let actuator = rtc_actuator::controller::start(config, template).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let failed = tokio::select! {
        _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted: stopping every node"); None }
        _ = term.recv() => { tracing::info!("SIGTERM: stopping every node"); None }
        failure = actuator.stopping() => { tracing::error!(%failure, "stopping every node"); Some(failure) }
    };
    let status = actuator.stop().await?;
    tracing::info!(
        spawned = status.spawned,
        terminated = status.terminated,
        killed = status.killed,
        unexpected_exits = status.unexpected_exits,
        "stopped"
    );
    match failed {
        Some(failure) => Err(failure.into()),
        None => Ok(()),
    }
}

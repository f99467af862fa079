//! `loadgen`: runs a load profile of simulated users against the load
//! balancers and socket nodes, produces messages to them through Kafka, and
//! prints one JSON report line on stdout (progress goes to stderr).

use clap::Parser;
use rtc_loadgen::config::Config;
use tokio_util::sync::CancellationToken;

fn main() {
    if let Err(e) = run() {
        // A clear one-line reason (no backtrace): most errors are settings.
        eprintln!("loadgen: {e:#}");
        std::process::exit(2);
    }
}

fn run() -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::try_from_env("RTC_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let config = Config::parse();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(config.threads.max(1)).enable_all().build()?;
    let report = runtime.block_on(async move {
        let stop = CancellationToken::new();
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                stop_requested().await;
                stop.cancel();
            });
        }
        rtc_loadgen::run(config, stop).await
    })?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn stop_requested() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

//! `scaler-load`: calls the scaler's `GetMetrics` at a fixed rate for a
//! bounded time and prints one JSON line (see `rtc_keda_scaler::load`).

use clap::Parser;
use rtc_keda_scaler::load::{LoadArgs, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = LoadArgs::parse();
    eprintln!(
        "scaler-load: GetMetrics at {}/s for {} s over {} connections to {}",
        args.rate, args.duration_s, args.connections, args.target
    );
    let report = run(&args).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

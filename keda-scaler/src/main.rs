use clap::Parser;
use rtc_keda_scaler::config::Config;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    anyhow::bail!("the keda-scaler service is not built yet (issue #5); settings parsed: {config:?}")
}

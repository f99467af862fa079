use clap::Parser;
use rtc_socket::config::Config;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    anyhow::bail!("the socket service is not built yet (issue #3); settings parsed: {config:?}")
}

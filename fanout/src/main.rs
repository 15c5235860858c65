//! The fanout binary: parse config, set up tracing and signals, bind, run.

use clap::Parser;
use gps_runtime::shutdown::Shutdown;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = fanout::Config::parse();
    gps_runtime::telemetry::init(&config.log);
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    let listener = gps_runtime::bind_tcp(config.addr, "FANOUT_ADDR").await?;
    fanout::run(config, listener, shutdown).await?;
    Ok(())
}

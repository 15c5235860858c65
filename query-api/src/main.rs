//! The query-api binary: parse config, set up tracing and signals, bind, run.

use clap::Parser;
use gps_runtime::shutdown::Shutdown;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = query_api::Config::parse();
    gps_runtime::telemetry::init(&config.log);
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    let listener = gps_runtime::bind_tcp(config.addr, "QUERY_API_ADDR").await?;
    query_api::run(config, listener, shutdown).await?;
    Ok(())
}

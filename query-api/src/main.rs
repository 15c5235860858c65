//! The query-api binary: parse config, set up tracing and signals, bind, run (or run an admin
//! command).

use clap::Parser;
use gps_runtime::shutdown::Shutdown;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = query_api::Config::parse();
    gps_runtime::telemetry::init(&config.log);
    if let Some(query_api::Command::Admin { action }) = &config.command {
        let message = query_api::run_admin(&config, action).await?;
        print!("{message}");
        return Ok(());
    }
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    let listener = gps_runtime::bind_tcp(config.addr, "QUERY_API_ADDR").await?;
    query_api::run(config, listener, shutdown).await?;
    Ok(())
}

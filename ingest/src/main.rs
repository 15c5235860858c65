//! The ingest binary: parse config, set up tracing and signals, bind, run.

use anyhow::Context;
use clap::Parser;
use gps_runtime::shutdown::Shutdown;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ingest::Config::parse();
    gps_runtime::telemetry::init(&config.log);
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    let http = gps_runtime::bind_tcp(config.http_addr, "INGEST_HTTP_ADDR").await?;
    let udp = tokio::net::UdpSocket::bind(config.udp_addr)
        .await
        .with_context(|| format!("cannot bind UDP {} (INGEST_UDP_ADDR)", config.udp_addr))?;
    let teltonika = if config.teltonika.disabled {
        None
    } else {
        let addr = config.teltonika.addr;
        Some(
            ingest::teltonika::TeltonikaListeners::bind(addr)
                .await
                .with_context(|| {
                    format!("cannot bind TCP and UDP {addr} (INGEST_TELTONIKA_ADDR)")
                })?,
        )
    };
    ingest::run_with(config, http, udp, teltonika, shutdown).await?;
    Ok(())
}

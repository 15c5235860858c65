//! The processor binary: parse config, set up tracing and signals, then run the service or a
//! replay (`processor replay --from-beginning | --from-time T`).

use clap::Parser;
use gps_runtime::shutdown::Shutdown;
use processor::Command;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = processor::Config::parse();
    gps_runtime::telemetry::init(&config.log);
    match &config.command {
        Some(Command::Replay(args)) => {
            let summary = processor::replay::replay(&config, args, true).await?;
            println!("{summary}");
        }
        None => {
            let shutdown = Shutdown::new();
            shutdown.listen_for_signals();
            let listener = gps_runtime::bind_tcp(config.addr, "PROCESSOR_ADDR").await?;
            processor::run(config, listener, shutdown).await?;
        }
    }
    Ok(())
}

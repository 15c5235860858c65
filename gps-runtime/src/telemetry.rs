//! Tracing set-up shared by the binaries: one subscriber, text or JSON lines on stderr, filtered
//! by `RUST_LOG`/`--log`. stderr, so that what a command prints as its result on stdout
//! (`loadgen --json`, `processor replay`'s summary) is never mixed with log lines.

use crate::config::{LogArgs, LogFormat};
use tracing_subscriber::{fmt, EnvFilter};

/// Install the global tracing subscriber. Call once, from `main`.
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_writer(std::io::stderr);
    let result = match args.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests calling main paths) is harmless; keep the first subscriber.
    let _ = result;
}

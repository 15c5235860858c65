//! `gps-setup`: applies the migrations and creates the Kafka topics. `dev/stack up` runs it; an
//! operator with their own PostgreSQL and Kafka runs it once before the services.

use clap::{Parser, Subcommand};
use gps_runtime::config::{DatabaseArgs, KafkaArgs};
use gps_runtime::{db, kafka};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "gps-setup",
    about = "Apply database migrations and create Kafka topics"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    kafka: KafkaArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply pending migrations to DATABASE_URL.
    Migrate,
    /// Create the topics on KAFKA_BROKERS (gps.fixes with 8 partitions, gps.fixes.rejected,
    /// gps.events with 8).
    Topics,
    /// Both.
    All,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = async {
        if matches!(cli.command, Command::Migrate | Command::All) {
            let pool = db::connect(&cli.database).await?;
            db::migrate(&pool).await?;
            let mode = db::storage_mode(&pool).await?;
            eprintln!(
                "migrations applied to {} (storage: {mode:?})",
                cli.database.redacted_url()
            );
        }
        if matches!(cli.command, Command::Topics | Command::All) {
            kafka::probe(&cli.kafka, Duration::from_secs(10)).await?;
            kafka::ensure_standard_topics(&cli.kafka).await?;
            eprintln!(
                "topics ready on {}: {} ({} partitions), {}, {} ({} partitions)",
                cli.kafka.brokers,
                cli.kafka.fixes_topic,
                kafka::FIXES_PARTITIONS,
                cli.kafka.rejected_topic,
                cli.kafka.events_topic,
                kafka::EVENTS_PARTITIONS
            );
        }
        Ok::<_, gps_runtime::RuntimeError>(())
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gps-setup: {e}");
            ExitCode::FAILURE
        }
    }
}

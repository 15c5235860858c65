//! Kafka plumbing: the client settings every service shares, topic creation, and a reachability
//! probe for `/readyz` and start-up errors.

use crate::config::KafkaArgs;
use crate::RuntimeError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// Partitions of the fixes topic (keyed by device).
pub const FIXES_PARTITIONS: i32 = 8;
/// Partitions of the quarantine topic.
pub const REJECTED_PARTITIONS: i32 = 1;

/// Base client settings: brokers and a client id.
pub fn client_config(args: &KafkaArgs, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.brokers)
        .set("client.id", client_id)
        // Keep librdkafka's own logging quiet unless asked; errors surface through our calls.
        .set("log_level", "3");
    config
}

/// Create topics that do not exist yet; existing ones are left as they are.
pub async fn ensure_topics(args: &KafkaArgs, topics: &[(&str, i32)]) -> Result<(), RuntimeError> {
    let admin: AdminClient<DefaultClientContext> = client_config(args, "gps-admin").create()?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(&new_topics, &options).await?;
    for result in results {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(RuntimeError::Kafka(rdkafka::error::KafkaError::AdminOp(
                    code,
                )))
                .inspect_err(|_| tracing::error!(%topic, ?code, "topic creation failed"));
            }
        }
    }
    Ok(())
}

/// The standard topics of the pipeline.
pub async fn ensure_standard_topics(args: &KafkaArgs) -> Result<(), RuntimeError> {
    ensure_topics(
        args,
        &[
            (&args.fixes_topic, FIXES_PARTITIONS),
            (&args.rejected_topic, REJECTED_PARTITIONS),
        ],
    )
    .await
}

/// Fetch cluster metadata within `timeout`: proves a broker answers.
pub async fn probe(args: &KafkaArgs, timeout: Duration) -> Result<(), RuntimeError> {
    let config = client_config(args, "gps-probe");
    let brokers = args.brokers.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create()?;
        consumer.fetch_metadata(None, timeout)?;
        Ok::<_, rdkafka::error::KafkaError>(())
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))?
    .map_err(|e| RuntimeError::Unreachable {
        dependency: "Kafka",
        address: brokers,
        env_var: "KAFKA_BROKERS",
        reason: e.to_string(),
    })
}

/// Number of partitions of `topic`, if it exists.
pub async fn partition_count(args: &KafkaArgs, topic: &str) -> Result<Option<usize>, RuntimeError> {
    let config = client_config(args, "gps-probe");
    let topic = topic.to_owned();
    let count = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create()?;
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5))?;
        Ok::<_, rdkafka::error::KafkaError>(
            metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().len()),
        )
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))??;
    Ok(count)
}

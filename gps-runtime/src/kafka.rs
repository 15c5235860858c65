//! Kafka plumbing: the client settings every service shares (with any librdkafka property
//! passed through the environment, [`KafkaProperties`]), topic creation, a reachability
//! probe for `/readyz` and start-up errors, and the idempotent producer every service replaces
//! instead of letting librdkafka time a record out ([`ReplaceableProducer`]).

use crate::config::{ConfigError, KafkaArgs};
use crate::RuntimeError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::types::RDKafkaErrorCode;
use std::sync::{Once, RwLock};
use std::time::Duration;

/// Partitions of the fixes topic (keyed by device).
pub const FIXES_PARTITIONS: i32 = 8;
/// Partitions of the quarantine topic.
pub const REJECTED_PARTITIONS: i32 = 1;
/// Partitions of the events topic (keyed by device, like the fixes).
pub const EVENTS_PARTITIONS: i32 = FIXES_PARTITIONS;

/// The prefix of the environment variables that pass a librdkafka property through.
pub const PROPERTY_ENV_PREFIX: &str = "KAFKA_PROPERTY_";

/// Words that mark a property's value as secret: never logged, never in an error.
const SECRET_WORDS: [&str; 4] = ["password", "secret", "key", "token"];

/// One librdkafka property from the environment.
#[derive(Clone, PartialEq, Eq)]
struct Property {
    /// The librdkafka name (`security.protocol`).
    name: String,
    /// Its value, as given.
    value: String,
    /// The environment variable it came from, for error messages.
    env_var: String,
}

/// Any librdkafka property, set through the environment for the producers, consumers and admin
/// clients of every service: `KAFKA_PROPERTY_<name>=value`. The name is taken as written when
/// it has a dot or a lowercase letter (`KAFKA_PROPERTY_security.protocol=SASL_SSL`); an
/// all-uppercase name is lowercased with `_` read as `.` and `__` as `_`
/// (`KAFKA_PROPERTY_SASL_MECHANISMS=SCRAM-SHA-512`, `KAFKA_PROPERTY_LOG__LEVEL=7`).
///
/// Applied after the base settings of [`client_config`] (so they may override
/// `bootstrap.servers` or `log_level`) and before the settings each service sets for its
/// guarantees (`acks`, `enable.idempotence`, `enable.auto.commit`, `group.id`, ...), which
/// always win. Values of properties whose name contains `password`, `secret`, `key` or
/// `token` are never logged or shown: `Debug` and [`KafkaProperties::redacted`] print `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(Vec<Property>);

impl KafkaProperties {
    /// The properties of the process environment.
    pub fn from_env() -> Self {
        Self::from_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// The properties among `vars` (name, value), sorted by name. Variables without the prefix,
    /// or with nothing after it, are ignored.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut properties: Vec<Property> = vars
            .into_iter()
            .filter_map(|(env_var, value)| {
                let name = property_name(env_var.strip_prefix(PROPERTY_ENV_PREFIX)?)?;
                Some(Property {
                    name,
                    value,
                    env_var,
                })
            })
            .collect();
        properties.sort_by(|a, b| (&a.name, &a.env_var).cmp(&(&b.name, &b.env_var)));
        Self(properties)
    }

    /// No property given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `(name, value)` pairs, values in clear (for the client configuration only).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|p| (p.name.as_str(), p.value.as_str()))
    }

    /// `(name, value)` pairs with secret values replaced by `***`: what may be logged.
    pub fn redacted(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .map(|p| {
                let value = if is_secret(&p.name) {
                    "***".to_owned()
                } else {
                    p.value.clone()
                };
                (p.name.clone(), value)
            })
            .collect()
    }

    /// Check every property against librdkafka (names and values, no connection made): an
    /// unknown name, a bad value or a property given twice is refused, naming the environment
    /// variable and the property (never a secret value).
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            field: "KAFKA_PROPERTY_*",
            reason,
        };
        for pair in self.0.windows(2) {
            if pair[0].name == pair[1].name {
                return Err(invalid(format!(
                    "property \"{}\" is set twice ({} and {})",
                    pair[0].name, pair[0].env_var, pair[1].env_var
                )));
            }
        }
        for property in &self.0 {
            let mut config = ClientConfig::new();
            config.set(&property.name, &property.value);
            if let Err(error) = config.create_native_config() {
                let why = match error {
                    // librdkafka's text quotes a refused value: keep it out for secrets.
                    KafkaError::ClientConfig(_, _, _, _) if is_secret(&property.name) => {
                        "invalid value".to_owned()
                    }
                    KafkaError::ClientConfig(_, desc, _, _) => desc,
                    other => other.to_string(),
                };
                return Err(invalid(format!(
                    "{}: librdkafka refuses property \"{}\": {why}",
                    property.env_var, property.name
                )));
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.redacted()).finish()
    }
}

/// The librdkafka name of `KAFKA_PROPERTY_<suffix>`, `None` for an empty suffix.
fn property_name(suffix: &str) -> Option<String> {
    if suffix.is_empty() {
        return None;
    }
    if suffix.contains('.') || suffix.chars().any(|c| c.is_ascii_lowercase()) {
        return Some(suffix.to_owned());
    }
    Some(
        suffix
            .to_ascii_lowercase()
            .split("__")
            .map(|part| part.replace('_', "."))
            .collect::<Vec<_>>()
            .join("_"),
    )
}

/// Whether the value of property `name` is a secret.
fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|word| name.contains(word))
}

/// Base client settings: brokers, a client id, then the properties of the environment
/// ([`KafkaProperties`], logged once per process with secrets redacted).
pub fn client_config(args: &KafkaArgs, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.brokers)
        .set("client.id", client_id)
        // Keep librdkafka's own logging quiet unless asked; errors surface through our calls.
        .set("log_level", "3");
    for (name, value) in args.properties.iter() {
        config.set(name, value);
    }
    static LOGGED: Once = Once::new();
    if !args.properties.is_empty() {
        LOGGED.call_once(|| {
            tracing::info!(properties = ?args.properties, "kafka properties from the environment");
        });
    }
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
            (&args.events_topic, EVENTS_PARTITIONS),
        ],
    )
    .await
}

/// Fetch cluster metadata within `timeout`: proves a broker answers. Properties from the
/// environment that librdkafka refuses fail first, naming the property
/// ([`KafkaProperties::check`]), rather than as an unreachable broker.
pub async fn probe(args: &KafkaArgs, timeout: Duration) -> Result<(), RuntimeError> {
    args.properties.check()?;
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

/// How much later than a service's own delivery deadline librdkafka gives up on a record
/// (`message.timeout.ms`, see [`ReplaceableProducer::message_timeout`]). librdkafka must never
/// time a record out itself: after such a timeout the idempotent producer bumps its epoch on its
/// own and resumes with it as soon as the broker is back, which wedges tansu 0.6
/// (docs/operations.md, "Known broker defects"). The service's deadline comes first, and the
/// producer holding the late record is replaced (its queue purged, so it sends nothing more)
/// before librdkafka would act.
pub const LIBRDKAFKA_TIMEOUT_GRACE: Duration = Duration::from_secs(5);

/// Why a record of a [`ReplaceableProducer`] was not acknowledged.
#[derive(Debug)]
pub enum DeliveryFailure {
    /// The broker refused or never acknowledged the record.
    Broker(KafkaError),
    /// No acknowledgement within the caller's deadline: the producer was replaced.
    TimedOut,
    /// The producer was dropped with the record in flight.
    ShutDown,
}

/// A record enqueued on one generation of a [`ReplaceableProducer`], not yet acknowledged.
pub struct PendingDelivery {
    delivery: DeliveryFuture,
    /// The generation of the producer that holds the record.
    generation: u64,
}

/// An idempotent producer that is replaced instead of repaired.
///
/// The idempotent producer keeps a producer id and per-partition sequence numbers. When records
/// time out while the broker is away, a restarted broker can refuse the producer's next sequence
/// for good (tansu answers `UNKNOWN_SERVER_ERROR`; Kafka `OUT_OF_ORDER_SEQUENCE_NUMBER` or
/// `UNKNOWN_PRODUCER_ID`), and a librdkafka timeout bumps the epoch, which wedges tansu 0.6.
/// Such errors, and a record not acknowledged within the caller's deadline
/// ([`ReplaceableProducer::acknowledged`]), replace the producer with a fresh one (a new
/// producer id; the old one's queue is purged first, so it sends nothing more). Each producer is
/// replaced once (a generation number), however many of its records fail. Create it with
/// `message.timeout.ms` from [`ReplaceableProducer::message_timeout`] of the deadline used.
pub struct ReplaceableProducer {
    /// The producer and its generation (counts replacements).
    producer: RwLock<(u64, FutureProducer)>,
    config: ClientConfig,
}

impl ReplaceableProducer {
    /// A producer of `config`, replaced by another of `config` when needed.
    pub fn new(config: ClientConfig) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: RwLock::new((0, config.create()?)),
            config,
        })
    }

    /// librdkafka's `message.timeout.ms` for a producer whose records are awaited for at most
    /// `deadline`: [`LIBRDKAFKA_TIMEOUT_GRACE`] later, so the deadline always fires first.
    pub fn message_timeout(deadline: Duration) -> String {
        (deadline + LIBRDKAFKA_TIMEOUT_GRACE)
            .as_millis()
            .to_string()
    }

    /// The current producer and its generation.
    fn current(&self) -> (u64, FutureProducer) {
        self.producer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Enqueue `record` on the current producer without waiting (a full queue fails at once,
    /// `QueueFull`).
    pub fn send<K, P>(&self, record: FutureRecord<'_, K, P>) -> Result<PendingDelivery, KafkaError>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        let (generation, producer) = self.current();
        producer
            .send_result(record)
            .map(|delivery| PendingDelivery {
                delivery,
                generation,
            })
            .map_err(|(error, _)| error)
    }

    /// Wait at most `deadline` for the broker's acknowledgement of `pending`. A record late by
    /// it, or failed with an error the producer cannot recover from, replaces the producer that
    /// held it; `deadline` must be the one `message.timeout.ms` was derived from.
    pub async fn acknowledged(
        &self,
        pending: PendingDelivery,
        deadline: Duration,
    ) -> Result<(), DeliveryFailure> {
        match tokio::time::timeout(deadline, pending.delivery).await {
            Ok(Ok(Ok(_delivery))) => Ok(()),
            Ok(Ok(Err((error, _)))) => {
                if self.needs_replacing(&error) {
                    self.replace(pending.generation, &error);
                }
                Err(DeliveryFailure::Broker(error))
            }
            Ok(Err(_canceled)) => Err(DeliveryFailure::ShutDown),
            Err(_elapsed) => {
                self.replace(
                    pending.generation,
                    &KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
                );
                Err(DeliveryFailure::TimedOut)
            }
        }
    }

    /// Records queued or in flight on the current producer.
    pub fn in_flight_count(&self) -> i32 {
        self.current().1.in_flight_count()
    }

    /// Flush the current producer, waiting at most `timeout` (blocking: call from a blocking
    /// task).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.current().1.flush(timeout)
    }

    /// Replace the producer of `generation` after an error it cannot recover from by itself;
    /// nothing when it was replaced already (its other records fail the same way, or are
    /// purged, and must not replace its successor).
    fn replace(&self, generation: u64, cause: &KafkaError) {
        // Many records of one producer fail together: only the first creates a successor.
        if self.current().0 != generation {
            return;
        }
        let fresh = match self.config.create::<FutureProducer>() {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::error!(error = %e, "kafka producer could not be recreated");
                return;
            }
        };
        let old = {
            let mut current = self
                .producer
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if current.0 != generation {
                // Lost the race to another failing record: the spare goes unused.
                drop_off_runtime(fresh);
                return;
            }
            let next = (generation + 1, fresh);
            std::mem::replace(&mut *current, next).1
        };
        let client_id = self.config.get("client.id").unwrap_or_default();
        tracing::warn!(error = %cause, client_id, generation = generation + 1, "kafka producer replaced after an unrecoverable error");
        // Purge before anything else: the old producer must not send another record (with an
        // epoch of its own making) once the broker is back. Dropping it purges again and waits
        // for its threads, which blocks: not on the runtime.
        old.purge(PurgeConfig::default().queue().inflight());
        drop_off_runtime(old);
    }

    /// Errors after which the idempotent producer's state is unusable, or would have to be
    /// repaired by an epoch bump: after a record timed out, librdkafka bumps the epoch of the
    /// same producer id itself and produces with it once the broker is back, which tansu 0.6
    /// cannot handle (its storage panics and it stops serving). A fresh producer (new id) avoids
    /// that dance on every broker. The caller's deadline normally replaces the producer first;
    /// these are the errors that still reach it.
    fn needs_replacing(&self, error: &KafkaError) -> bool {
        matches!(
            error,
            KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut
                    | RDKafkaErrorCode::Unknown
                    | RDKafkaErrorCode::OutOfOrderSequenceNumber
                    | RDKafkaErrorCode::UnknownProducerId
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::Fatal
            )
        ) || self.current().1.client().fatal_error().is_some()
    }
}

/// Drop a producer on a thread of its own: dropping purges, flushes and joins librdkafka's
/// threads, which blocks.
fn drop_off_runtime(producer: FutureProducer) {
    std::thread::spawn(move || drop(producer));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn properties(vars: &[(&str, &str)]) -> KafkaProperties {
        KafkaProperties::from_vars(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
    }

    #[test]
    fn env_names_map_to_librdkafka_names() {
        let props = properties(&[
            ("KAFKA_PROPERTY_security.protocol", "SASL_SSL"),
            ("KAFKA_PROPERTY_SASL_MECHANISMS", "SCRAM-SHA-512"),
            ("KAFKA_PROPERTY_LOG__LEVEL", "7"),
            ("KAFKA_PROPERTY_socket_keepalive_enable", "true"),
            ("KAFKA_PROPERTY_", "ignored"),
            ("KAFKA_BROKERS", "ignored:9092"),
            ("PATH", "/bin"),
        ]);
        let names: Vec<(&str, &str)> = props.iter().collect();
        assert_eq!(
            names,
            [
                ("log_level", "7"),
                ("sasl.mechanisms", "SCRAM-SHA-512"),
                ("security.protocol", "SASL_SSL"),
                // Lowercase: taken as written.
                ("socket_keepalive_enable", "true"),
            ]
        );
    }

    #[test]
    fn secret_values_are_redacted_everywhere_they_could_be_shown() {
        let props = properties(&[
            ("KAFKA_PROPERTY_SASL_PASSWORD", "hunter2"),
            ("KAFKA_PROPERTY_sasl.oauthbearer.client.secret", "s3cr3t"),
            ("KAFKA_PROPERTY_ssl.key.password", "pem-pass"),
            (
                "KAFKA_PROPERTY_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
                "https://idp/token",
            ),
            ("KAFKA_PROPERTY_SASL_USERNAME", "gps"),
        ]);
        let debug = format!("{props:?}");
        for secret in ["hunter2", "s3cr3t", "pem-pass", "https://idp/token"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(debug.contains("\"sasl.username\": \"gps\""), "{debug}");
        assert!(debug.contains("\"sasl.password\": \"***\""), "{debug}");
        let redacted = props.redacted();
        assert!(redacted.iter().all(|(_, v)| v == "***" || v == "gps"));
        // The client gets the real values.
        assert!(props
            .iter()
            .any(|(n, v)| n == "sasl.password" && v == "hunter2"));
    }

    #[test]
    fn properties_are_checked_by_librdkafka_naming_the_property() {
        let ok = properties(&[
            ("KAFKA_PROPERTY_security.protocol", "SASL_PLAINTEXT"),
            ("KAFKA_PROPERTY_SASL_MECHANISMS", "PLAIN"),
            ("KAFKA_PROPERTY_SASL_PASSWORD", "x"),
        ])
        .check();
        assert!(ok.is_ok(), "{ok:?}");
        // The documented managed-Kafka set-up: librdkafka is built with OpenSSL (rdkafka
        // feature `ssl`), without which TLS and SCRAM are refused at start.
        let ok = properties(&[
            ("KAFKA_PROPERTY_security.protocol", "SASL_SSL"),
            ("KAFKA_PROPERTY_SASL_MECHANISMS", "SCRAM-SHA-512"),
            ("KAFKA_PROPERTY_SASL_USERNAME", "ingest"),
            ("KAFKA_PROPERTY_SASL_PASSWORD", "x"),
        ])
        .check();
        assert!(ok.is_ok(), "{ok:?}");

        let err = properties(&[("KAFKA_PROPERTY_no.such.thing", "1")])
            .check()
            .unwrap_err()
            .to_string();
        assert!(err.contains("KAFKA_PROPERTY_no.such.thing"), "{err}");
        assert!(err.contains("\"no.such.thing\""), "{err}");

        let err = properties(&[("KAFKA_PROPERTY_SECURITY_PROTOCOL", "carrier-pigeon")])
            .check()
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"security.protocol\""), "{err}");

        let err = properties(&[
            ("KAFKA_PROPERTY_security.protocol", "SSL"),
            ("KAFKA_PROPERTY_SECURITY_PROTOCOL", "SASL_SSL"),
        ])
        .check()
        .unwrap_err()
        .to_string();
        assert!(err.contains("set twice"), "{err}");
    }

    #[test]
    fn a_refused_secret_value_is_not_repeated_in_the_error() {
        // A secret-named property with a value librdkafka refuses (not a number).
        let err = properties(&[(
            "KAFKA_PROPERTY_sasl.oauthbearer.token.refresh.ms",
            "abc-xyz",
        )])
        .check();
        if let Err(err) = err {
            assert!(!err.to_string().contains("abc-xyz"), "{err}");
        }
        let err = properties(&[("KAFKA_PROPERTY_ssl.key.password.nope", "abc-xyz")])
            .check()
            .unwrap_err()
            .to_string();
        assert!(!err.contains("abc-xyz"), "{err}");
        assert!(err.contains("ssl.key.password.nope"), "{err}");
    }
}

//! The processor's one error type, and which of its errors a retry can heal ([`Severity`]).
//!
//! Bad data is never an error here: it is quarantined with a reason. What remains is either
//! transient (a connection dropped, a broker or the database is restarting, a partition was
//! dropped under the writer: back off and run the same batch again, never commit past it) or
//! fatal (the schema, a permission or the configuration is wrong: retrying the batch forever
//! would stall its partitions in silence, so the service stops and says why).

use rdkafka::types::RDKafkaErrorCode;

/// Errors of the processor.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// A dependency or listener failed at start, or a task of the service stopped.
    #[error(transparent)]
    Runtime(#[from] gps_runtime::RuntimeError),
    /// A database statement failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A Kafka call failed.
    #[error("kafka error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// `replay` received nothing for this long before reaching the high watermark.
    #[error("replay stalled: no record for {secs}s before the high watermark")]
    ReplayStalled {
        /// Seconds waited.
        secs: u64,
    },
}

/// Whether retrying the same batch can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Back off and retry: the cause is expected to pass.
    Transient,
    /// Stop and say why: the same batch would fail the same way forever.
    Fatal,
}

impl ProcessorError {
    /// How the batch loop treats this error.
    pub fn severity(&self) -> Severity {
        match self {
            Self::Database(e) => database_severity(e),
            Self::Kafka(e) => match e.rdkafka_error_code() {
                Some(code) if fatal_kafka_code(code) => Severity::Fatal,
                _ => Severity::Transient,
            },
            Self::Runtime(_) | Self::ReplayStalled { .. } => Severity::Fatal,
        }
    }
}

/// SQLSTATE classes that no retry heals: 0A feature not supported, 28 invalid authorization,
/// 3D invalid catalog (no such database), 3F invalid schema, 42 syntax error or access rule
/// violation (a missing table or column, insufficient privilege).
const FATAL_SQLSTATE_CLASSES: [&str; 5] = ["0A", "28", "3D", "3F", "42"];

fn database_severity(error: &sqlx::Error) -> Severity {
    match error {
        sqlx::Error::Database(e) => match e.code() {
            Some(code) if FATAL_SQLSTATE_CLASSES.iter().any(|c| code.starts_with(c)) => {
                Severity::Fatal
            }
            // Connection loss (08), serialization (40), resources (53), shutdown (57), and
            // "no partition for row" (23514) after upkeep dropped one under the writer.
            _ => Severity::Transient,
        },
        // The code and the schema disagree, or a value cannot be encoded: no retry changes that.
        sqlx::Error::Configuration(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::Encode(_)
        | sqlx::Error::Migrate(_) => Severity::Fatal,
        // I/O, TLS, protocol, pool timeouts: the connection or the server comes back.
        _ => Severity::Transient,
    }
}

/// Kafka errors that no retry with the same client heals: credentials and ACLs, a producer
/// fenced by a fatal idempotence error, a record the broker will never take.
fn fatal_kafka_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::Fatal
            | RDKafkaErrorCode::InvalidConfig
            | RDKafkaErrorCode::MessageSizeTooLarge
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::KafkaError;

    #[test]
    fn connection_trouble_is_transient_and_wrong_setups_are_fatal() {
        let transient = [
            ProcessorError::Database(sqlx::Error::PoolTimedOut),
            ProcessorError::Database(sqlx::Error::Io(std::io::Error::other("reset"))),
            ProcessorError::Kafka(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut,
            )),
            ProcessorError::Kafka(KafkaError::MessageProduction(
                RDKafkaErrorCode::BrokerTransportFailure,
            )),
        ];
        for error in &transient {
            assert_eq!(error.severity(), Severity::Transient, "{error}");
        }
        let fatal = [
            ProcessorError::Database(sqlx::Error::ColumnNotFound("lat".into())),
            ProcessorError::Database(sqlx::Error::Configuration("bad url".into())),
            ProcessorError::Kafka(KafkaError::MessageProduction(
                RDKafkaErrorCode::TopicAuthorizationFailed,
            )),
            ProcessorError::Kafka(KafkaError::MessageProduction(RDKafkaErrorCode::Fatal)),
            ProcessorError::ReplayStalled { secs: 30 },
        ];
        for error in &fatal {
            assert_eq!(error.severity(), Severity::Fatal, "{error}");
        }
    }

    #[test]
    fn sqlstate_classes_decide_database_errors() {
        let fatal = |code: &str| FATAL_SQLSTATE_CLASSES.iter().any(|c| code.starts_with(c));
        // insufficient_privilege, undefined_table, invalid_password, invalid_catalog_name
        for code in ["42501", "42P01", "28P01", "3D000"] {
            assert!(fatal(code), "{code}");
        }
        // connection_failure, serialization_failure, check_violation (no partition),
        // admin_shutdown, unique_violation
        for code in ["08006", "40001", "23514", "57P01", "23505"] {
            assert!(!fatal(code), "{code}");
        }
    }
}

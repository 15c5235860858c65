//! The processor's one error type. Bad data is never an error here (it is quarantined with a
//! reason); what remains is transient (back off, retry the batch, do not commit) or fatal at
//! start.

/// Errors of the processor.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// A dependency or listener failed at start.
    #[error(transparent)]
    Runtime(#[from] gps_runtime::RuntimeError),
    /// A database statement failed (transient: the batch is retried).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A Kafka call failed (transient unless at start).
    #[error("kafka error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Serving the operational endpoints failed.
    #[error("http server failed: {0}")]
    Serve(#[from] std::io::Error),
    /// A task the service cannot run without stopped.
    #[error("{0} stopped unexpectedly")]
    TaskFailed(&'static str),
}

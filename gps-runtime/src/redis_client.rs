//! Redis plumbing: a multiplexed connection manager (reconnects by itself) and a probe.

use crate::config::RedisArgs;
use crate::RuntimeError;
use redis::aio::ConnectionManager;
use secrecy::ExposeSecret;

fn unreachable(args: &RedisArgs, reason: String) -> RuntimeError {
    RuntimeError::Unreachable {
        dependency: "Redis",
        address: args.redacted_url(),
        env_var: "REDIS_URL",
        reason,
    }
}

/// A Redis client for `args`.
pub fn client(args: &RedisArgs) -> Result<redis::Client, RuntimeError> {
    redis::Client::open(args.redis_url.expose_secret())
        .map_err(|e| unreachable(args, e.to_string()))
}

/// A connection manager, after proving the server answers PING.
pub async fn connect(args: &RedisArgs) -> Result<ConnectionManager, RuntimeError> {
    let client = client(args)?;
    let mut manager = ConnectionManager::new(client)
        .await
        .map_err(|e| unreachable(args, e.to_string()))?;
    ping(&mut manager).await.map_err(|e| unreachable(args, e))?;
    Ok(manager)
}

/// A readiness check: PING answers PONG.
pub async fn ping(conn: &mut ConnectionManager) -> Result<(), String> {
    redis::cmd("PING")
        .query_async::<String>(conn)
        .await
        .map(|_| ())
        .map_err(|e| format!("redis: {e}"))
}

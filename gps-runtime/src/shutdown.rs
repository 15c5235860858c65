//! Graceful shutdown of a process: one [`CancellationToken`] that every loop watches and one
//! [`TaskTracker`] to wait on, with a deadline. SIGINT or SIGTERM cancels the token; a second
//! signal exits at once. Each service runs its tasks under a [`Shutdown::child`] through the
//! [`crate::service::Service`] runner, which names them and applies the drain deadline.

use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The shutdown handle: cheap to clone, shared by every task.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// A fresh handle, not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle for one part of the process (one service): cancelled when this one is, and
    /// cancellable on its own, with its own tracker so that its drain waits for its tasks only.
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
            tracker: TaskTracker::new(),
        }
    }

    /// The token tasks select on.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Resolves once shutdown has begun.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// Whether shutdown has begun.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Begin shutdown.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// The tracker [`Shutdown::wait`] waits on (services track their tasks through
    /// [`crate::service::Service`]).
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Wait for every tracked task, at most `deadline`; `false` if the deadline passed.
    pub async fn wait(&self, deadline: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Cancel on SIGINT or SIGTERM; exit the process at once on a second signal.
    pub fn listen_for_signals(&self) {
        let token = self.token.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received, draining (send again to exit at once)");
            token.cancel();
            wait_for_signal().await;
            tracing::warn!("second shutdown signal, exiting now");
            std::process::exit(130);
        });
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tracked_tasks_finish_before_wait_returns() {
        let shutdown = Shutdown::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let token = shutdown.token();
        shutdown.tracker().spawn(async move {
            token.cancelled().await;
            let _ = done_tx.send(());
        });
        shutdown.trigger();
        assert!(shutdown.wait(Duration::from_secs(5)).await);
        assert!(done_rx.await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn wait_gives_up_at_the_deadline() {
        let shutdown = Shutdown::new();
        shutdown
            .tracker()
            .spawn(async { tokio::time::sleep(Duration::from_secs(3600)).await });
        shutdown.trigger();
        assert!(!shutdown.wait(Duration::from_secs(1)).await);
    }
}

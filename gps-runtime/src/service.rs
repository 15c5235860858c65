//! The service runner: every long-lived task of a service is started here, under a name, and
//! tracked until it ends. A *critical* task (the HTTP server, a consumer loop, a subscription)
//! is the service: when one ends, for any reason, the runner logs why and cancels the rest. A
//! *background* task (a gauge sampler) only logs its end. [`Service::run`] waits for shutdown
//! (a signal, or a critical exit), then gives every task one drain deadline, names the tasks that
//! did not finish, and returns an error naming the critical task that failed.
//!
//! The runner owns a child of the process [`Shutdown`]: a signal stops it, and a critical exit
//! stops only this service (two services sharing one `Shutdown` in a test stay apart).

use crate::shutdown::Shutdown;
use crate::RuntimeError;
use futures::FutureExt;
use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::TcpListener;
pub use tokio_util::sync::CancellationToken;

/// What a critical task returns: `()` (it ends only when cancelled) or `Result<(), E>`.
pub trait Outcome {
    /// The error's text, if it failed.
    fn into_result(self) -> Result<(), String>;
}

impl Outcome for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: Display> Outcome for Result<(), E> {
    fn into_result(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// Why the first critical task stopped the service.
#[derive(Debug, Clone)]
struct CriticalExit {
    task: &'static str,
    reason: String,
}

/// State shared by the runner and every task it started.
#[derive(Debug)]
struct Shared {
    service: &'static str,
    /// Tasks still running, by name (connections share one name, hence the count).
    running: Mutex<BTreeMap<&'static str, usize>>,
    /// The first critical task that ended while the service was meant to run.
    failure: Mutex<Option<CriticalExit>>,
}

impl Shared {
    fn started(&self, task: &'static str) {
        *lock(&self.running).entry(task).or_default() += 1;
    }

    fn finished(&self, task: &'static str) {
        let mut running = lock(&self.running);
        if let Some(count) = running.get_mut(task) {
            *count -= 1;
            if *count == 0 {
                running.remove(task);
            }
        }
    }

    fn still_running(&self) -> Vec<String> {
        lock(&self.running)
            .iter()
            .map(|(task, count)| match count {
                1 => (*task).to_owned(),
                n => format!("{task} x{n}"),
            })
            .collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded maps stay consistent even if a holder panicked: each update is one statement.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes a task from the running set when its future ends or is dropped (panic included).
struct RunningGuard {
    shared: Arc<Shared>,
    task: &'static str,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.shared.finished(self.task);
    }
}

/// A cheap handle that starts named, tracked tasks of a service from anywhere (one WebSocket
/// connection each, say). Their ends are not logged; the drain waits for them.
#[derive(Debug, Clone)]
pub struct Tasks {
    shutdown: Shutdown,
    shared: Arc<Shared>,
}

impl Tasks {
    /// Start `future` as a task named `task`, tracked by the service's drain.
    pub fn spawn<F>(&self, task: &'static str, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(self.track(task, future));
    }

    /// Track `future`, run by someone else (a WebSocket upgrade callback), as a task named
    /// `task`: the drain waits for it like for a spawned one.
    pub fn track<F>(
        &self,
        task: &'static str,
        future: F,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.shared.started(task);
        let guard = RunningGuard {
            shared: self.shared.clone(),
            task,
        };
        self.shutdown.tracker().track_future(async move {
            let _guard = guard;
            future.await;
        })
    }

    /// The token every task of the service watches; cancelled at shutdown.
    pub fn token(&self) -> CancellationToken {
        self.shutdown.token()
    }
}

/// One service: its name, its tasks, and how they stop. See the module docs.
#[derive(Debug)]
pub struct Service {
    tasks: Tasks,
}

impl Service {
    /// A service named `name` (for the logs), stopped when `shutdown` fires.
    pub fn new(name: &'static str, shutdown: Shutdown) -> Self {
        Self {
            tasks: Tasks {
                shutdown: shutdown.child(),
                shared: Arc::new(Shared {
                    service: name,
                    running: Mutex::default(),
                    failure: Mutex::default(),
                }),
            },
        }
    }

    /// The token loops select on; cancelled by a signal or by a critical task's end.
    pub fn token(&self) -> CancellationToken {
        self.tasks.token()
    }

    /// A handle to start more tracked tasks later (per-connection tasks).
    pub fn tasks(&self) -> Tasks {
        self.tasks.clone()
    }

    /// Start a task the service cannot live without: when it ends (`Ok`, `Err` or a panic)
    /// while the service is running, the reason is logged and every other task is cancelled.
    /// A loop that only ends when cancelled may return `()`.
    pub fn critical<F>(&self, task: &'static str, future: F) -> &Self
    where
        F: Future + Send + 'static,
        F::Output: Outcome,
    {
        let shared = self.tasks.shared.clone();
        let shutdown = self.tasks.shutdown.clone();
        self.tasks.spawn(task, async move {
            let outcome = AssertUnwindSafe(future).catch_unwind().await;
            let stopping = shutdown.is_cancelled();
            let reason = match outcome.map(Outcome::into_result) {
                Ok(Ok(())) if stopping => {
                    tracing::debug!(service = shared.service, task, "task stopped");
                    return;
                }
                Ok(Ok(())) => "ended unexpectedly".to_owned(),
                Ok(Err(e)) => e,
                Err(panic) => format!("panicked: {}", panic_message(&*panic)),
            };
            tracing::error!(
                service = shared.service,
                task,
                reason = %reason,
                "critical task stopped, stopping the service"
            );
            lock(&shared.failure).get_or_insert(CriticalExit { task, reason });
            shutdown.trigger();
        });
        self
    }

    /// Start a helper task whose end does not stop the service; only logged.
    pub fn background<F>(&self, task: &'static str, future: F) -> &Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let shared = self.tasks.shared.clone();
        let shutdown = self.tasks.shutdown.clone();
        self.tasks.spawn(task, async move {
            match AssertUnwindSafe(future).catch_unwind().await {
                Ok(()) if shutdown.is_cancelled() => {
                    tracing::debug!(service = shared.service, task, "task stopped");
                }
                Ok(()) => {
                    tracing::warn!(
                        service = shared.service,
                        task,
                        "background task ended, the service keeps running"
                    );
                }
                Err(panic) => tracing::error!(
                    service = shared.service,
                    task,
                    reason = %panic_message(&*panic),
                    "background task panicked, the service keeps running"
                ),
            }
        });
        self
    }

    /// Serve `router` on `listener` as a critical task; at shutdown the server stops accepting
    /// and drains open requests within the drain deadline.
    pub fn serve(&self, task: &'static str, listener: TcpListener, router: axum::Router) -> &Self {
        let shutdown = self.tasks.shutdown.clone();
        self.critical(task, crate::ops::serve(listener, router, shutdown))
    }

    /// [`Service::serve`] with a write timeout: a connection whose pending write makes no
    /// progress for `write_timeout` is reset ([`crate::write_timeout`]).
    pub fn serve_with_write_timeout(
        &self,
        task: &'static str,
        listener: TcpListener,
        router: axum::Router,
        write_timeout: Duration,
    ) -> &Self {
        let shutdown = self.tasks.shutdown.clone();
        self.critical(
            task,
            crate::ops::serve_with_write_timeout(listener, router, shutdown, Some(write_timeout)),
        )
    }

    /// Wait until shutdown (a signal or a critical task's end), cancel every task, and wait at
    /// most `drain` for all of them. Returns the first critical failure, if any.
    pub async fn run(self, drain: Duration) -> Result<(), RuntimeError> {
        let Tasks { shutdown, shared } = self.tasks;
        shutdown.cancelled().await;
        tracing::info!(
            service = shared.service,
            drain_ms = drain.as_millis() as u64,
            "service stopping, draining tasks"
        );
        if shutdown.wait(drain).await {
            tracing::info!(service = shared.service, "service stopped");
        } else {
            tracing::warn!(
                service = shared.service,
                drain_ms = drain.as_millis() as u64,
                unfinished = ?shared.still_running(),
                "tasks did not finish within the drain deadline"
            );
        }
        let failure = lock(&shared.failure).take();
        match failure {
            None => Ok(()),
            Some(CriticalExit { task, reason }) => Err(RuntimeError::TaskStopped {
                service: shared.service,
                task,
                reason,
            }),
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A task that runs until the service's token is cancelled, then records that it saw it.
    async fn until_cancelled(token: CancellationToken, saw: Arc<AtomicBool>) {
        token.cancelled().await;
        saw.store(true, Ordering::SeqCst);
    }

    #[tokio::test(start_paused = true)]
    async fn a_critical_exit_cancels_the_rest_and_names_the_task() {
        let service = Service::new("test", Shutdown::new());
        let saw = Arc::new(AtomicBool::new(false));
        service
            .background("sampler", until_cancelled(service.token(), saw.clone()))
            .critical("consumer", async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Err::<(), _>("broker gone")
            });
        let err = service.run(Duration::from_secs(5)).await.unwrap_err();
        assert!(
            saw.load(Ordering::SeqCst),
            "the other task was not cancelled"
        );
        match &err {
            RuntimeError::TaskStopped {
                service,
                task,
                reason,
            } => assert_eq!(
                (*service, *task, reason.as_str()),
                ("test", "consumer", "broker gone")
            ),
            other => panic!("unexpected error {other}"),
        }
        assert_eq!(
            err.to_string(),
            "test: critical task consumer stopped: broker gone"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tracked_futures_run_elsewhere_are_drained_too() {
        let shutdown = Shutdown::new();
        let service = Service::new("test", shutdown.clone());
        let token = service.token();
        let closed = Arc::new(AtomicBool::new(false));
        let seen = closed.clone();
        // Like a WebSocket upgrade callback: run by another task, tracked by the service.
        let connection = service.tasks().track("connection", async move {
            token.cancelled().await;
            tokio::time::sleep(Duration::from_millis(200)).await; // the Close frame
            seen.store(true, Ordering::SeqCst);
        });
        tokio::spawn(connection);
        shutdown.trigger();
        service.run(Duration::from_secs(5)).await.unwrap();
        assert!(
            closed.load(Ordering::SeqCst),
            "run returned before the connection closed"
        );
    }

    /// The error of a service whose only task is the critical `future`.
    async fn stopped_by<F>(future: F) -> String
    where
        F: Future + Send + 'static,
        F::Output: Outcome,
    {
        let service = Service::new("test", Shutdown::new());
        service.critical("loop", future);
        let err = service.run(Duration::from_secs(1)).await.unwrap_err();
        err.to_string()
    }

    #[tokio::test(start_paused = true)]
    async fn any_end_of_a_critical_task_before_shutdown_is_a_failure() {
        let ended = "test: critical task loop stopped: ended unexpectedly";
        assert_eq!(stopped_by(async { Ok::<(), String>(()) }).await, ended);
        assert_eq!(stopped_by(async {}).await, ended);
        let panicked = stopped_by(async {
            tokio::task::yield_now().await;
            panic!("index out of range");
            #[allow(unreachable_code)]
            Ok::<(), String>(())
        })
        .await;
        assert_eq!(
            panicked,
            "test: critical task loop stopped: panicked: index out of range"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_signal_stops_the_service_cleanly() {
        let shutdown = Shutdown::new();
        let service = Service::new("test", shutdown.clone());
        let token = service.token();
        service.critical("server", async move {
            token.cancelled().await;
            Ok::<(), String>(())
        });
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            trigger.trigger();
        });
        service.run(Duration::from_secs(1)).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_background_exit_does_not_stop_the_service() {
        let shutdown = Shutdown::new();
        let service = Service::new("test", shutdown.clone());
        let saw = Arc::new(AtomicBool::new(false));
        service
            .background("sampler", async {})
            .background("watcher", until_cancelled(service.token(), saw.clone()));
        let run = tokio::spawn(service.run(Duration::from_secs(1)));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!run.is_finished(), "a background exit stopped the service");
        assert!(!saw.load(Ordering::SeqCst));
        shutdown.trigger();
        run.await.unwrap().unwrap();
        assert!(saw.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_deadline_bounds_the_wait_for_stuck_tasks() {
        let shutdown = Shutdown::new();
        let service = Service::new("test", shutdown.clone());
        let tasks = service.tasks();
        // Two stuck connections and a task that finishes in time.
        for _ in 0..2 {
            tasks.spawn("connection", async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            });
        }
        let token = service.token();
        tasks.spawn("quick", async move { token.cancelled().await });
        assert_eq!(tasks.shared.still_running(), ["connection x2", "quick"]);
        shutdown.trigger();
        let started = tokio::time::Instant::now();
        service.run(Duration::from_secs(5)).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(tasks.shared.still_running(), ["connection x2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_critical_exit_stops_only_its_own_service() {
        let process = Shutdown::new();
        let failing = Service::new("a", process.clone());
        failing.critical("loop", async { Err::<(), _>("boom") });
        let other = Service::new("b", process.clone());
        failing.run(Duration::from_secs(1)).await.unwrap_err();
        assert!(!process.is_cancelled());
        assert!(!other.token().is_cancelled());
    }
}

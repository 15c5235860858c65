//! The UDP listener: binary datagrams (`gps_domain::wire::udp`, `docs/udp.md`), verified with the
//! device's HMAC key, replay-checked against a per-device counter window, produced to Kafka.
//!
//! UDP has no answer channel, so a datagram counts as accepted once Kafka acknowledged it; a
//! device that needs certainty resends (with a new counter), and the processor dedupes by device
//! and fix time (at-least-once). Bad datagrams are dropped and counted by reason, never answered.
//!
//! One task receives: after `readable()` it drains the socket with `try_recv_from` until it would
//! block (at most [`MAX_BURST`] datagrams, then it lets finished lookups and shutdown in), so a
//! flood costs one wake-up per burst, not per datagram. Acknowledgements are awaited in tracked
//! tasks so the receive loop never waits on the broker. The replay windows live in this task's
//! memory: after a restart they start empty (see `docs/udp.md`).
//!
//! The receive loop never waits on the database either (a flood of spoofed device ids must not
//! stall real devices):
//! - a device id the credential cache knows is handled at once; an entry expired less than
//!   `--auth-known-grace-ms` ago is still used while a background lookup refreshes it;
//! - an id the cache does not know is looked up off the loop: one lookup per id at a time,
//!   at most `--udp-max-lookups` at once, each bounded by [`LOOKUP_TIMEOUT`], the answer cached
//!   (unknown ids too, for the negative TTL). Up to [`HELD_PER_LOOKUP`] datagrams of that id wait
//!   for the answer and are handled when it comes; further ones are dropped (`lookup_pending`),
//!   and so are datagrams of new ids while every lookup slot is taken (`lookup_busy`);
//! - datagrams of unknown ids and with a wrong MAC cost their source IP a token
//!   (`--udp-unknown-per-sec`, `--udp-unknown-burst`); a source out of tokens has them dropped
//!   (`rate_limited`) before any lookup. Known devices never pay tokens. Source addresses of UDP
//!   can be forged, so the lookup bounds, not the per-source buckets, are what caps the load.

use crate::auth::{AuthCache, Peek, SourceLimiter};
use crate::config::AuthArgs;
use crate::metrics::Metrics;
use crate::producer::FixProducer;
use gps_domain::wire::udp::{self, ReplayWindow, UdpError};
use gps_domain::Protocol;
use gps_runtime::service::Tasks;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Semaphore};
use uuid::Uuid;

/// Datagrams of one id that wait for its lookup; more are dropped.
pub const HELD_PER_LOOKUP: usize = 4;
/// How long one device-id lookup may take before its datagrams are dropped.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Most datagrams drained per wake-up before the loop looks at finished lookups and shutdown.
pub const MAX_BURST: usize = 1024;

/// Where a lookup for an id stands.
enum Lookup {
    /// One is running (this call started it or an earlier one did).
    Running,
    /// Every lookup slot is taken.
    Busy,
}

/// What the receive loop needs.
pub struct UdpIngest {
    /// Credential lookups (device id → key).
    pub auth: Arc<AuthCache>,
    /// The producer.
    pub producer: FixProducer,
    /// Metrics.
    pub metrics: Metrics,
    windows: HashMap<Uuid, ReplayWindow>,
    /// Unauthenticated datagrams per source IP.
    limiter: SourceLimiter,
    /// Lookup slots.
    slots: Arc<Semaphore>,
    /// Ids being looked up (or refreshed), with the datagrams waiting for the answer.
    pending: HashMap<Uuid, Vec<(Vec<u8>, IpAddr)>>,
    done_tx: mpsc::UnboundedSender<Uuid>,
    done_rx: Option<mpsc::UnboundedReceiver<Uuid>>,
}

impl UdpIngest {
    /// A receive loop state with empty replay windows, limited as `args` says.
    pub fn new(
        auth: Arc<AuthCache>,
        producer: FixProducer,
        metrics: Metrics,
        args: &AuthArgs,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self {
            auth,
            producer,
            metrics,
            windows: HashMap::new(),
            limiter: SourceLimiter::new(
                args.udp_unknown_per_sec,
                args.udp_unknown_burst,
                args.capacity,
            ),
            slots: Arc::new(Semaphore::new(args.udp_max_lookups as usize)),
            pending: HashMap::new(),
            done_tx,
            done_rx: Some(done_rx),
        }
    }

    fn drop_datagram(&self, reason: &'static str) {
        self.metrics.udp_dropped.with_label_values(&[reason]).inc();
        tracing::debug!(reason, "udp datagram dropped");
    }

    /// Drop an unauthenticated datagram, charging its source a token (counted as
    /// `rate_limited` once the source has none left).
    fn refuse(&self, source: IpAddr, reason: &'static str) {
        match self.limiter.take(source) {
            Ok(()) => self.drop_datagram(reason),
            Err(_) => self.drop_datagram("rate_limited"),
        }
    }

    /// Receive until shutdown; an error only if the socket can no longer be polled.
    pub async fn run(mut self, socket: UdpSocket, tasks: Tasks) -> std::io::Result<()> {
        let token = tasks.token();
        let mut done = self.done_rx.take().expect("a UdpIngest runs its loop once");
        // Larger than any valid datagram, so an oversized one is seen as such, not truncated
        // into something that might parse.
        let mut buf = vec![0u8; udp::MAX_DATAGRAM * 2];
        loop {
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                Some(id) = done.recv() => {
                    self.looked_up(id, &tasks);
                    continue;
                }
                ready = socket.readable() => ready?,
            }
            for _ in 0..MAX_BURST {
                match socket.try_recv_from(&mut buf) {
                    Ok((n, peer)) => self.handle(&buf[..n], peer.ip(), &tasks),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // e.g. ICMP errors surfacing on Linux; the socket stays usable.
                        tracing::debug!(error = %e, "udp receive error");
                        break;
                    }
                }
            }
        }
    }

    /// Handle one datagram from `source` without waiting on anything; the wait for Kafka's
    /// acknowledgement becomes a task of `tasks`, a device lookup too.
    pub fn handle(&mut self, datagram: &[u8], source: IpAddr, tasks: &Tasks) {
        self.metrics.udp_datagrams.inc();
        self.route(datagram, source, tasks, false);
    }

    /// The lookup for `id` finished (its answer is cached): handle what waited for it.
    fn looked_up(&mut self, id: Uuid, tasks: &Tasks) {
        for (datagram, source) in self.pending.remove(&id).unwrap_or_default() {
            self.route(&datagram, source, tasks, true);
        }
    }

    /// Start a lookup of `id` off the loop unless one is running.
    fn look_up(&mut self, id: Uuid, tasks: &Tasks) -> Lookup {
        if self.pending.contains_key(&id) {
            return Lookup::Running;
        }
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return Lookup::Busy;
        };
        self.pending.insert(id, Vec::new());
        let (auth, metrics, done) = (
            self.auth.clone(),
            self.metrics.clone(),
            self.done_tx.clone(),
        );
        tasks.spawn("udp-lookup", async move {
            let outcome =
                match tokio::time::timeout(LOOKUP_TIMEOUT, auth.refresh_device_by_id(id)).await {
                    Ok(Ok(true)) => "found",
                    Ok(Ok(false)) => "unknown",
                    Ok(Err(e)) => {
                        tracing::debug!(device = %id, error = %e, "udp device lookup failed");
                        "failed"
                    }
                    Err(_) => {
                        tracing::debug!(device = %id, "udp device lookup timed out");
                        "failed"
                    }
                };
            metrics.udp_lookups.with_label_values(&[outcome]).inc();
            drop(slot);
            // The loop may be gone (shutdown): nothing waits for the answer then.
            let _ = done.send(id);
        });
        Lookup::Running
    }

    /// Judge one datagram; `after_lookup` when it waited for its id's lookup (which is not
    /// started again).
    fn route(&mut self, datagram: &[u8], source: IpAddr, tasks: &Tasks, after_lookup: bool) {
        let header = match udp::parse_header(datagram) {
            Ok(header) => header,
            Err(e) => return self.drop_datagram(e.reason()),
        };
        let device = match self.auth.peek_device_by_id(header.device) {
            Peek::Known { device, refresh } => {
                if refresh {
                    // Served from the cache meanwhile; nothing waits for the refresh.
                    let _ = self.look_up(header.device, tasks);
                }
                device
            }
            Peek::Unknown if after_lookup => return self.drop_datagram("unknown_device"),
            Peek::Unknown => return self.refuse(source, "unknown_device"),
            Peek::Missing if after_lookup => return self.drop_datagram("store_unavailable"),
            Peek::Missing => {
                if self.limiter.take(source).is_err() {
                    return self.drop_datagram("rate_limited");
                }
                if let Lookup::Busy = self.look_up(header.device, tasks) {
                    return self.drop_datagram("lookup_busy");
                }
                let held = self.pending.entry(header.device).or_default();
                if held.len() < HELD_PER_LOOKUP {
                    held.push((datagram.to_vec(), source));
                    return;
                }
                return self.drop_datagram("lookup_pending");
            }
        };
        let Some(key) = device.udp_key else {
            return self.refuse(source, "unknown_device");
        };
        let opened = match udp::open(datagram, &key) {
            Ok(opened) => opened,
            Err(e @ UdpError::BadMac) => return self.refuse(source, e.reason()),
            Err(e) => return self.drop_datagram(e.reason()),
        };
        // Only after the MAC verified may the counter move the window.
        let window = self.windows.entry(device.id).or_default();
        if let Err(e @ UdpError::Replayed) = window.accept(opened.counter) {
            return self.drop_datagram(e.reason());
        }
        self.metrics
            .fixes_received
            .with_label_values(&[Protocol::Udp.as_str()])
            .inc_by(opened.fixes.len() as u64);
        match self
            .producer
            .produce_detached(&device, Protocol::Udp, opened.fixes)
        {
            Ok(acknowledged) => tasks.spawn("udp-ack", acknowledged),
            Err(e) => self.drop_datagram(e.reason()),
        }
    }
}

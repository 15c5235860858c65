//! The UDP listener: binary datagrams (`gps_domain::wire::udp`, `docs/udp.md`), verified with the
//! device's HMAC key, replay-checked against a per-device counter window, produced to Kafka.
//!
//! UDP has no answer channel, so a datagram counts as accepted once Kafka acknowledged it; a
//! device that needs certainty resends (with a new counter), and the processor dedupes by device
//! and fix time (at-least-once). Bad datagrams are dropped and counted by reason, never answered.
//!
//! One task receives: after `readable()` it drains the socket with `try_recv_from` until it would
//! block, so a flood costs one wake-up per burst, not per datagram. Acknowledgements are awaited
//! in tracked tasks so the receive loop never waits on the broker. The replay windows live in
//! this task's memory: after a restart they start empty (see `docs/udp.md`).

use crate::auth::AuthCache;
use crate::metrics::Metrics;
use crate::producer::FixProducer;
use gps_domain::wire::udp::{self, ReplayWindow, UdpError};
use gps_domain::Protocol;
use gps_runtime::service::Tasks;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::net::UdpSocket;
use uuid::Uuid;

/// What the receive loop needs.
pub struct UdpIngest {
    /// Credential lookups (device id → key).
    pub auth: Arc<AuthCache>,
    /// The producer.
    pub producer: FixProducer,
    /// Metrics.
    pub metrics: Metrics,
    windows: HashMap<Uuid, ReplayWindow>,
}

impl UdpIngest {
    /// A receive loop state with empty replay windows.
    pub fn new(auth: Arc<AuthCache>, producer: FixProducer, metrics: Metrics) -> Self {
        Self {
            auth,
            producer,
            metrics,
            windows: HashMap::new(),
        }
    }

    fn drop_datagram(&self, reason: &'static str) {
        self.metrics.udp_dropped.with_label_values(&[reason]).inc();
        tracing::debug!(reason, "udp datagram dropped");
    }

    /// Receive until shutdown; an error only if the socket can no longer be polled.
    pub async fn run(mut self, socket: UdpSocket, tasks: Tasks) -> std::io::Result<()> {
        let token = tasks.token();
        // Larger than any valid datagram, so an oversized one is seen as such, not truncated
        // into something that might parse.
        let mut buf = vec![0u8; udp::MAX_DATAGRAM * 2];
        loop {
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                ready = socket.readable() => ready?,
            }
            loop {
                match socket.try_recv_from(&mut buf) {
                    Ok((n, _peer)) => self.handle(&buf[..n], &tasks).await,
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

    /// Handle one datagram; the wait for Kafka's acknowledgement becomes a task of `tasks`.
    pub async fn handle(&mut self, datagram: &[u8], tasks: &Tasks) {
        self.metrics.udp_datagrams.inc();
        let header = match udp::parse_header(datagram) {
            Ok(header) => header,
            Err(e) => return self.drop_datagram(e.reason()),
        };
        let device = match self.auth.device_by_id(header.device).await {
            Ok(Some(device)) => device,
            Ok(None) => return self.drop_datagram("unknown_device"),
            Err(e) => {
                tracing::warn!(error = %e, "udp credential lookup failed");
                return self.drop_datagram("store_unavailable");
            }
        };
        let Some(key) = device.udp_key else {
            return self.drop_datagram("unknown_device");
        };
        let opened = match udp::open(datagram, &key) {
            Ok(opened) => opened,
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

//! The Teltonika listeners (Codec 8 / 8 Extended, `docs/teltonika.md`): TCP sessions and UDP
//! datagrams on one port, the device named by its IMEI (its uid), each packet produced as one
//! envelope (its fixes and the device's status) and acknowledged only after Kafka acknowledged it.
//!
//! A device keeps every record in its flash until the server acknowledged it, so refusing to
//! acknowledge is how ingest says "not now": a full producer or an unreachable broker, a bad CRC
//! or an unknown IMEI are never acknowledged (TCP: the session is closed, the device reconnects
//! and resends; UDP: no answer, the device resends). Nothing acknowledged is ever dropped.
//!
//! Teltonika devices carry no secret: they are found by IMEI alone through
//! [`AuthCache::device_for_report`] with no credential, which only finds devices opted in to
//! uid-only reporting (per device or per tenant).
//!
//! TCP: the IMEI handshake (answered `0x01` or `0x00`), then frames answered with the number of
//! records taken. Each session holds at most one frame (`--teltonika-max-frame-bytes`) plus one
//! read chunk, is closed after `--teltonika-idle-timeout-secs` of silence (or when a frame takes
//! longer than that to arrive whole), and at most `--teltonika-max-connections` are open. The
//! device is re-checked (through the cache) for every frame, so a device disabled mid-session is
//! refused within one cache TTL.
//!
//! UDP: like `crate::udp`, the receive loop never waits on the database or the broker: a datagram
//! is decoded in the loop, then looked up, produced and answered in a tracked task; at most
//! `--teltonika-udp-max-inflight` such tasks run, IMEIs the cache does not know cost their
//! source a token (`--udp-unknown-per-sec`) and take one of `--udp-max-lookups` lookup slots.

use crate::auth::{AuthCache, SourceLimiter};
use crate::config::{AuthArgs, TeltonikaArgs};
use crate::metrics::Metrics;
use crate::producer::FixProducer;
use gps_domain::wire::teltonika::{self as codec, TcpChunk, TeltonikaError};
use gps_domain::Protocol;
use gps_runtime::service::{CancellationToken, Tasks};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long one IMEI lookup may take before the packet is left unanswered.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Most datagrams drained per wake-up before the loop looks at shutdown.
pub const MAX_BURST: usize = 1024;
/// Bytes read from a TCP session at a time.
const READ_CHUNK: usize = 4096;
/// Largest UDP datagram (the length field is a u16) plus its header.
const MAX_DATAGRAM: usize = 2 + u16::MAX as usize;

/// The two bound Teltonika sockets (same port in production, `INGEST_TELTONIKA_ADDR`).
#[derive(Debug)]
pub struct TeltonikaListeners {
    /// TCP sessions.
    pub tcp: TcpListener,
    /// UDP datagrams.
    pub udp: UdpSocket,
}

impl TeltonikaListeners {
    /// Bind TCP and UDP on `addr`; when its port is 0, UDP takes the port TCP got.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let mut attempts = 0;
        loop {
            let tcp = TcpListener::bind(addr).await?;
            match UdpSocket::bind(tcp.local_addr()?).await {
                Ok(udp) => return Ok(Self { tcp, udp }),
                // A port chosen by the system for TCP may be taken for UDP: choose again.
                Err(e) if addr.port() == 0 && attempts < 16 => {
                    attempts += 1;
                    tracing::debug!(error = %e, "teltonika udp port taken, binding again");
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Why a TCP session ended; the metric outcome of its last packet.
#[derive(Debug)]
enum SessionEnd {
    /// The device closed, went idle, or ingest is shutting down.
    Closed,
    /// A packet was refused with this reason (no acknowledgement).
    Refused(&'static str),
    /// The socket failed.
    Io(std::io::Error),
}

impl From<std::io::Error> for SessionEnd {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// What the device lookup answered.
enum Admission {
    /// The enabled device.
    Device(Arc<crate::auth::DeviceRecord>),
    /// Unknown, disabled, not opted in to uid-only reporting, or its source is out of tokens.
    Refused(&'static str),
    /// The credential store did not answer in time.
    Unavailable,
}

/// The Teltonika ingest: shared by the TCP sessions and the UDP loop.
#[derive(Debug)]
pub struct TeltonikaIngest {
    auth: Arc<AuthCache>,
    producer: FixProducer,
    metrics: Metrics,
    args: TeltonikaArgs,
    /// Unknown IMEIs per source IP, TCP (the HTTP budget: `--unknown-credential-per-sec`).
    unknown_tcp: SourceLimiter,
    /// Unknown IMEIs per source IP, UDP (`--udp-unknown-per-sec`).
    unknown_udp: SourceLimiter,
    /// UDP lookup slots.
    lookups: Arc<Semaphore>,
}

impl TeltonikaIngest {
    /// The listeners' shared state.
    pub fn new(
        auth: Arc<AuthCache>,
        producer: FixProducer,
        metrics: Metrics,
        args: &TeltonikaArgs,
        auth_args: &AuthArgs,
    ) -> Arc<Self> {
        Arc::new(Self {
            auth,
            producer,
            metrics,
            args: args.clone(),
            unknown_tcp: SourceLimiter::new(
                auth_args.unknown_per_sec,
                auth_args.unknown_burst,
                auth_args.capacity,
            ),
            unknown_udp: SourceLimiter::new(
                auth_args.udp_unknown_per_sec,
                auth_args.udp_unknown_burst,
                auth_args.capacity,
            ),
            lookups: Arc::new(Semaphore::new(auth_args.udp_max_lookups as usize)),
        })
    }

    fn max_frame(&self) -> usize {
        self.args.max_frame_bytes as usize
    }

    /// Count one packet of `transport` with `outcome` (`acked` or a refusal reason); a refused
    /// packet counts once in the refusals of every protocol too, except when Kafka refused it
    /// (the producer counted its fixes).
    fn packet(&self, transport: &'static str, outcome: &'static str) {
        self.metrics
            .teltonika_packets
            .with_label_values(&[transport, outcome])
            .inc();
        if outcome == "acked" {
            return;
        }
        tracing::debug!(transport, reason = outcome, "teltonika packet refused");
        if outcome != "unavailable" {
            self.metrics.refused(Protocol::Teltonika, outcome, 1);
        }
    }

    /// Find the device of `imei` for a packet from `source`: known IMEIs at once, unknown ones
    /// only while `source` has tokens left in `limiter`.
    async fn admit(&self, imei: &str, source: IpAddr, limiter: &SourceLimiter) -> Admission {
        if !self.auth.knows_report(imei, None) && limiter.take(source).is_err() {
            return Admission::Refused("rate_limited");
        }
        self.lookup(imei).await
    }

    /// Find the device of `imei` (uid-only devices), waiting at most [`LOOKUP_TIMEOUT`].
    async fn lookup(&self, imei: &str) -> Admission {
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.auth.device_for_report(imei, None)).await {
            Ok(Ok(Some(device))) => Admission::Device(device),
            Ok(Ok(None)) => Admission::Refused("unknown_device"),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "teltonika device lookup failed");
                Admission::Unavailable
            }
            Err(_) => Admission::Unavailable,
        }
    }

    /// Produce one packet's report of `device`; `Ok` once Kafka acknowledged it.
    async fn produce(
        &self,
        device: &crate::auth::DeviceRecord,
        report: codec::Report,
    ) -> Result<(), &'static str> {
        self.metrics
            .fixes_received
            .with_label_values(&[Protocol::Teltonika.as_str()])
            .inc_by(report.fixes.len() as u64);
        self.producer
            .produce_report(Protocol::Teltonika, device, report.fixes, report.status)
            .await
            .map(|_| ())
            .map_err(|e| e.reason())
    }

    // -----------------------------------------------------------------------------------------
    // TCP

    /// Accept TCP sessions until shutdown, each a tracked task.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener, tasks: Tasks) {
        let token = tasks.token();
        let slots = Arc::new(Semaphore::new(self.args.max_sessions as usize));
        loop {
            let accepted = tokio::select! {
                _ = token.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "teltonika accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                self.packet("tcp", "connection_cap");
                continue;
            };
            let (this, token) = (self.clone(), token.clone());
            tasks.spawn("teltonika-session", async move {
                this.session(stream, peer, slot, token).await;
            });
        }
    }

    async fn session(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        _slot: OwnedSemaphorePermit,
        stop: CancellationToken,
    ) {
        self.metrics.teltonika_connections.inc();
        let _ = stream.set_nodelay(true);
        match self.converse(&mut stream, peer, &stop).await {
            Ok(()) | Err(SessionEnd::Closed) => {}
            Err(SessionEnd::Refused(reason)) => self.packet("tcp", reason),
            Err(SessionEnd::Io(e)) => tracing::debug!(error = %e, "teltonika session failed"),
        }
        let _ = stream.shutdown().await;
        self.metrics.teltonika_connections.dec();
    }

    async fn converse(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
        stop: &CancellationToken,
    ) -> Result<(), SessionEnd> {
        let mut inbox = Inbox::new(
            codec::TCP_HEADER_LEN + self.max_frame() + codec::TCP_TRAILER_LEN,
            self.args.idle_timeout(),
        );
        let imei = loop {
            match codec::parse_imei(&inbox.buf) {
                Ok(Some((imei, used))) => {
                    let imei = imei.to_owned();
                    inbox.consume(used);
                    break imei;
                }
                Ok(None) => inbox.read(stream, stop).await?,
                Err(e) => return Err(SessionEnd::Refused(e.reason())),
            }
        };
        match self.admit(&imei, peer.ip(), &self.unknown_tcp).await {
            Admission::Device(_) => stream.write_all(&codec::handshake_reply(true)).await?,
            Admission::Refused(reason) => {
                stream.write_all(&codec::handshake_reply(false)).await?;
                return Err(SessionEnd::Refused(reason));
            }
            // No answer at all: the device retries the connection later.
            Admission::Unavailable => return Err(SessionEnd::Refused("store_unavailable")),
        }
        loop {
            match codec::tcp_chunk(&inbox.buf, self.max_frame()) {
                Err(e) => return Err(SessionEnd::Refused(e.reason())),
                Ok(TcpChunk::KeepAlive) => inbox.consume(1),
                Ok(TcpChunk::Frame(len)) if inbox.buf.len() >= len => {
                    self.frame(stream, &inbox.buf[..len], &imei, peer).await?;
                    inbox.consume(len);
                }
                Ok(TcpChunk::NeedMore | TcpChunk::Frame(_)) => inbox.read(stream, stop).await?,
            }
        }
    }

    /// Decode, produce and acknowledge one complete frame of the session's device.
    async fn frame(
        &self,
        stream: &mut TcpStream,
        frame: &[u8],
        imei: &str,
        peer: SocketAddr,
    ) -> Result<(), SessionEnd> {
        let packet = codec::decode_tcp_frame(frame).map_err(refused)?;
        // Authorization from the current state: a device disabled mid-session is refused.
        let device = match self.admit(imei, peer.ip(), &self.unknown_tcp).await {
            Admission::Device(device) => device,
            Admission::Refused(reason) => return Err(SessionEnd::Refused(reason)),
            Admission::Unavailable => return Err(SessionEnd::Refused("store_unavailable")),
        };
        self.produce(&device, codec::report(&packet))
            .await
            .map_err(SessionEnd::Refused)?;
        let accepted = u32::try_from(packet.records.len()).unwrap_or(u32::MAX);
        stream.write_all(&codec::tcp_ack(accepted)).await?;
        self.packet("tcp", "acked");
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // UDP

    /// Receive datagrams until shutdown; an error only if the socket can no longer be polled.
    pub async fn serve_udp(
        self: Arc<Self>,
        socket: UdpSocket,
        tasks: Tasks,
    ) -> std::io::Result<()> {
        let token = tasks.token();
        let socket = Arc::new(socket);
        let inflight = Arc::new(Semaphore::new(self.args.udp_max_inflight as usize));
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                ready = socket.readable() => ready?,
            }
            for _ in 0..MAX_BURST {
                match socket.try_recv_from(&mut buf) {
                    Ok((n, peer)) => self.datagram(&buf[..n], peer, &socket, &inflight, &tasks),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "teltonika udp receive error");
                        break;
                    }
                }
            }
        }
    }

    /// Judge one datagram without waiting on anything; lookup, produce and answer run in a
    /// tracked task.
    fn datagram(
        self: &Arc<Self>,
        bytes: &[u8],
        peer: SocketAddr,
        socket: &Arc<UdpSocket>,
        inflight: &Arc<Semaphore>,
        tasks: &Tasks,
    ) {
        let packet = match codec::decode_udp(bytes) {
            Ok(packet) => packet,
            Err(e) => return self.packet("udp", e.reason()),
        };
        let Ok(permit) = inflight.clone().try_acquire_owned() else {
            return self.packet("udp", "busy");
        };
        // An IMEI the cache does not know costs its source a token and a lookup slot, taken
        // here so that a flood of invented IMEIs never queues up lookups.
        let lookup_slot = if self.auth.knows_report(packet.imei, None) {
            None
        } else if self.unknown_udp.take(peer.ip()).is_err() {
            return self.packet("udp", "rate_limited");
        } else {
            match self.lookups.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => return self.packet("udp", "lookup_busy"),
            }
        };
        // The task owns what it needs: the packet borrows the receive buffer.
        let imei = packet.imei.to_owned();
        let accepted = u8::try_from(packet.avl.records.len()).unwrap_or(u8::MAX);
        let ack = codec::udp_ack(packet.packet_id, packet.avl_packet_id, accepted);
        let report = codec::report(&packet.avl);
        let (this, socket) = (self.clone(), socket.clone());
        tasks.spawn("teltonika-datagram", async move {
            let _permit = permit;
            let outcome = this
                .answer_datagram(&imei, report, ack, peer, &socket, lookup_slot)
                .await;
            this.packet("udp", outcome);
        });
    }

    /// Look up, produce and acknowledge one datagram; returns the metric outcome.
    async fn answer_datagram(
        &self,
        imei: &str,
        report: codec::Report,
        ack: [u8; 7],
        peer: SocketAddr,
        socket: &UdpSocket,
        lookup_slot: Option<OwnedSemaphorePermit>,
    ) -> &'static str {
        let admission = self.lookup(imei).await;
        drop(lookup_slot);
        let device = match admission {
            Admission::Device(device) => device,
            Admission::Refused(reason) => return reason,
            Admission::Unavailable => return "store_unavailable",
        };
        if let Err(reason) = self.produce(&device, report).await {
            return reason;
        }
        match socket.send_to(&ack, peer).await {
            Ok(_) => "acked",
            Err(e) => {
                tracing::debug!(error = %e, "teltonika udp ack not sent");
                "ack_failed"
            }
        }
    }
}

/// A session's receive buffer: at most one frame (`cap` bytes). A handshake or frame must
/// arrive whole within `window` of its first byte, so a peer trickling a byte at a time cannot
/// hold a session longer than an idle one.
struct Inbox {
    buf: Vec<u8>,
    cap: usize,
    window: Duration,
    /// When the bytes at the start of `buf` began to arrive.
    since: tokio::time::Instant,
}

impl Inbox {
    fn new(cap: usize, window: Duration) -> Self {
        Self {
            buf: Vec::with_capacity(READ_CHUNK.min(cap)),
            cap,
            window,
            since: tokio::time::Instant::now(),
        }
    }

    /// Drop the first `n` bytes (a handled message); what follows starts a new window.
    fn consume(&mut self, n: usize) {
        self.buf.drain(..n.min(self.buf.len()));
        self.since = tokio::time::Instant::now();
    }

    /// Read more bytes (never past `cap`); `Closed` at EOF, when the window passed and at
    /// shutdown.
    async fn read(
        &mut self,
        stream: &mut TcpStream,
        stop: &CancellationToken,
    ) -> Result<(), SessionEnd> {
        let room = self.cap.saturating_sub(self.buf.len()).min(READ_CHUNK);
        if room == 0 {
            return Err(SessionEnd::Refused("too_large"));
        }
        if self.buf.is_empty() {
            // Idle between messages: the window starts with the next byte.
            self.since = tokio::time::Instant::now();
        }
        let mut chunk = [0u8; READ_CHUNK];
        let deadline = self.since + self.window;
        let read = tokio::select! {
            _ = stop.cancelled() => return Err(SessionEnd::Closed),
            read = tokio::time::timeout_at(deadline, stream.read(&mut chunk[..room])) => read,
        };
        match read {
            Err(_idle) => Err(SessionEnd::Closed),
            Ok(Ok(0)) => Err(SessionEnd::Closed),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
        }
    }
}

fn refused(e: TeltonikaError) -> SessionEnd {
    SessionEnd::Refused(e.reason())
}

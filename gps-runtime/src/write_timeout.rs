//! A write timeout for HTTP connections, which hyper does not have: a connection whose pending
//! write makes no progress for the timeout (the client stopped reading, or vanished without a
//! FIN) is reset, so that neither the socket, its buffers nor the task writing a streamed
//! response wait on that client forever.
//!
//! The timer runs only while a write is pending: an idle keep-alive connection, or one whose
//! client reads slowly but steadily, is never cut. A cut connection is closed with a reset
//! (`SO_LINGER` 0): the unsent bytes are dropped at once instead of being kept by the kernel
//! for a peer that does not read.

use axum::serve::Listener;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A TCP stream whose writes fail with [`io::ErrorKind::TimedOut`] after `timeout` without
/// progress (no timeout when `None`).
#[derive(Debug)]
pub struct WriteTimeoutStream {
    inner: TcpStream,
    timeout: Option<Duration>,
    /// Armed when a write first returned `Pending`, disarmed by any progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WriteTimeoutStream {
    /// Wrap `inner`.
    pub fn new(inner: TcpStream, timeout: Option<Duration>) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &TcpStream {
        &self.inner
    }

    /// Account for one poll of a write-side operation.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let Some(timeout) = self.timeout else {
            return result;
        };
        if result.is_ready() {
            self.stalled = None;
            return result;
        }
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                // Reset on close: drop the unsent bytes instead of keeping them for a peer
                // that does not read. (A zero linger never blocks the close.)
                if let Err(e) = socket_zero_linger(&self.inner) {
                    tracing::debug!(error = %e, "cannot set SO_LINGER 0 on a stalled connection");
                }
                tracing::info!(
                    peer = ?self.inner.peer_addr().ok(),
                    timeout_secs = timeout.as_secs_f64(),
                    "connection reset: the client read nothing for the write timeout"
                );
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "write timed out: the client stopped reading",
                )))
            }
        }
    }
}

fn socket_zero_linger(stream: &TcpStream) -> io::Result<()> {
    stream.set_zero_linger()
}

impl AsyncRead for WriteTimeoutStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteTimeoutStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, result)
    }
}

/// A TCP listener whose connections have the write timeout.
#[derive(Debug)]
pub struct WriteTimeoutListener {
    inner: TcpListener,
    timeout: Option<Duration>,
}

impl WriteTimeoutListener {
    /// Wrap `inner`; `None` serves without a write timeout.
    pub fn new(inner: TcpListener, timeout: Option<Duration>) -> Self {
        Self { inner, timeout }
    }
}

impl Listener for WriteTimeoutListener {
    type Io = WriteTimeoutStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's accept loop: retries (with a pause) on errors such as too many open files.
        let (stream, addr) = Listener::accept(&mut self.inner).await;
        (WriteTimeoutStream::new(stream, self.timeout), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_that_makes_no_progress_fails_after_the_timeout_and_progress_resets_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A peer that connects and never reads.
        let peer = tokio::net::TcpSocket::new_v4().unwrap();
        peer.set_recv_buffer_size(4096).unwrap();
        let peer = peer.connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut server = WriteTimeoutStream::new(server, Some(Duration::from_millis(300)));
        let chunk = vec![0u8; 64 * 1024];
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Err(e) = server.write_all(&chunk).await {
                    return e;
                }
            }
        })
        .await
        .expect("the stalled write is cut within the bound");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(peer);

        // Without a timeout the same stall just waits.
        let peer = tokio::net::TcpSocket::new_v4().unwrap();
        peer.set_recv_buffer_size(4096).unwrap();
        let _peer = peer.connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut server = WriteTimeoutStream::new(server, None);
        let stalled = tokio::time::timeout(Duration::from_millis(800), async {
            loop {
                server.write_all(&chunk).await.unwrap();
            }
        })
        .await;
        assert!(stalled.is_err(), "no timeout configured: the write waits");
    }
}

//! The load generator's side of the connection: a TCP stream that counts the bytes written to
//! it, and the exact size a request takes on the wire.
//!
//! Together they tell a request that never fully left (the connection ended first: nobody can
//! have processed it) from one that was written in full and then got no answer: an in-flight
//! request the receiver dropped, which a graceful shutdown must never do.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream with a shared count of the bytes written so far.
pub(super) struct CountingStream {
    stream: TcpStream,
    written: Arc<AtomicU64>,
}

impl CountingStream {
    pub fn new(stream: TcpStream) -> (CountingStream, Arc<AtomicU64>) {
        let written = Arc::new(AtomicU64::new(0));
        (
            CountingStream {
                stream,
                written: written.clone(),
            },
            written,
        )
    }

    fn count(&self, result: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = result {
            self.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.count(&result);
        result
    }

    // hyper writes head and body with one vectored write when the stream supports it: forward
    // both, or every request would cost an extra system call.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.count(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The bytes hyper writes for `request`: the request line, each header as `name: value`, the
/// blank line and the body. Exact as long as the request carries its own `content-length` (hyper
/// then adds no header), which the load generator's requests do; a test holds it to that.
pub(super) fn request_wire_len<B>(request: &hyper::Request<B>, body_len: usize) -> u64 {
    let target = request
        .uri()
        .path_and_query()
        .map_or(1, |target| target.as_str().len());
    let request_line = request.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    (request_line + headers + 2 + body_len) as u64
}

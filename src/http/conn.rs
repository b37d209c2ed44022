//! One HTTP connection's bookkeeping: what it is doing (busy with a request, reading a head,
//! idle between requests), when that started, and what happens to its socket at the end.
//!
//! The server's supervisor reads this state to enforce the header-read and idle timeouts and to
//! pick idle connections to close when the connection limit is reached. hyper cannot do this
//! itself: its only timer is a header-read timeout that also runs while a keep-alive connection
//! waits for its next request, so it cannot tell a slow head from an idle client.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// How long and how much to keep reading after answering a request whose body was not read, so
/// the client is not reset while it is still sending (a reset discards the answer unread).
#[derive(Debug, Clone, Copy)]
pub struct Linger {
    /// Longest time to keep reading.
    pub time: Duration,
    /// Most bytes to read and discard; a client that sends more is cut off.
    pub bytes: u64,
}

/// What one connection is doing, shared by its socket, its requests and the supervisor.
#[derive(Debug)]
pub struct ConnState {
    epoch: Instant,
    /// Requests in flight: from the handler's start until its answer has been flushed to the
    /// socket, so that closing an idle connection never cuts an answer short.
    busy: AtomicU64,
    /// A handler has returned and its answer is being written; the next flush ends the request.
    answering: AtomicBool,
    /// Bytes of a request head have arrived and no handler has started yet.
    reading_head: AtomicBool,
    /// Milliseconds after `epoch` when the current wait (head or idle) began, or the last progress.
    since_ms: AtomicU64,
    /// The last request's body was not read to its end, so unread bytes may still arrive.
    unread_body: AtomicBool,
    /// Set when the connection is closed for a timeout or eviction: no lingering then.
    abandoned: AtomicBool,
    /// Set once the supervisor was asked to close this idle connection to make room.
    evicted: AtomicBool,
    /// Wakes the supervisor when the state changed or the connection should close.
    pub wake: Notify,
}

/// What the supervisor should wait for next.
#[derive(Debug, PartialEq, Eq)]
pub enum Wait {
    /// A handler runs; it bounds its own time (body timeout, tool timeouts).
    Busy,
    /// The head must be complete by then.
    Head(Instant),
    /// The client may stay idle until then.
    Idle(Instant),
}

impl ConnState {
    /// A connection accepted now: its first head must arrive within the header-read timeout.
    pub fn new() -> Arc<ConnState> {
        Arc::new(ConnState {
            epoch: Instant::now(),
            busy: AtomicU64::new(0),
            answering: AtomicBool::new(false),
            reading_head: AtomicBool::new(true),
            since_ms: AtomicU64::new(0),
            unread_body: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn since(&self) -> Instant {
        self.epoch + Duration::from_millis(self.since_ms.load(Ordering::Acquire))
    }

    /// When the current phase's deadline falls, given the two timeouts.
    pub fn wait(&self, header_timeout: Duration, idle_timeout: Duration) -> Wait {
        if self.busy.load(Ordering::Acquire) > 0 {
            Wait::Busy
        } else if self.reading_head.load(Ordering::Acquire) {
            Wait::Head(self.since() + header_timeout)
        } else {
            Wait::Idle(self.since() + idle_timeout)
        }
    }

    /// Whether no request is in flight (the connection may be closed without losing an answer).
    pub fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
    }

    /// When the connection last made progress or started waiting (for picking whom to evict).
    pub fn last_activity(&self) -> Instant {
        self.since()
    }

    /// Marks this connection to be closed to make room; false if it already was.
    pub fn evict(&self) -> bool {
        let first = !self.evicted.swap(true, Ordering::AcqRel);
        if first {
            self.wake.notify_one();
        }
        first
    }

    /// Whether [`ConnState::evict`] was called.
    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// The connection is dropped for a timeout or an eviction: close the socket at once.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }

    /// The connection ended on an error (hyper may have answered a malformed head with a 400
    /// without reading the rest): linger as after an unread body.
    pub fn ended_in_error(&self) {
        self.unread_body.store(true, Ordering::Release);
    }

    /// Bytes arrived from the client.
    fn on_read(&self) {
        if self.busy.load(Ordering::Acquire) == 0 && !self.reading_head.swap(true, Ordering::AcqRel)
        {
            // The first byte of a new head: its timeout starts now.
            self.since_ms.store(self.now_ms(), Ordering::Release);
        }
    }

    /// Bytes of an answer went out: progress, so an idle wait restarts.
    fn on_write(&self) {
        if self.busy.load(Ordering::Acquire) == 0 && !self.reading_head.load(Ordering::Acquire) {
            self.since_ms.store(self.now_ms(), Ordering::Release);
        }
    }

    /// hyper flushed what it wrote: if that completed an answer, the request is over and the
    /// connection is idle from now on.
    fn on_flush(&self) {
        if self.answering.swap(false, Ordering::AcqRel) {
            self.since_ms.store(self.now_ms(), Ordering::Release);
            self.busy.fetch_sub(1, Ordering::AcqRel);
            self.wake.notify_one();
        }
    }

    /// A handler starts; the returned guard marks its answer as being written when dropped.
    pub fn begin_request(self: &Arc<Self>, body_done: Arc<AtomicBool>) -> RequestGuard {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.reading_head.store(false, Ordering::Release);
        RequestGuard {
            conn: self.clone(),
            body_done,
        }
    }
}

/// Marks a request's answer as being written when dropped (the handler is done); the next flush
/// of the socket ends the request.
pub struct RequestGuard {
    conn: Arc<ConnState>,
    body_done: Arc<AtomicBool>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let c = &self.conn;
        c.unread_body
            .store(!self.body_done.load(Ordering::Acquire), Ordering::Release);
        c.answering.store(true, Ordering::Release);
    }
}

/// A request body that notes when it has been read to its end.
pub struct TrackedBody<B> {
    inner: B,
    done: Arc<AtomicBool>,
}

impl<B: Body> TrackedBody<B> {
    /// Wraps `inner`; `done` becomes true once its last frame was read (at once if it is empty).
    pub fn new(inner: B, done: Arc<AtomicBool>) -> Self {
        if inner.is_end_stream() {
            done.store(true, Ordering::Release);
        }
        TrackedBody { inner, done }
    }
}

impl<B> Body for TrackedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            self.done.store(true, Ordering::Release);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's socket as hyper sees it: reads and writes are noted in the connection's state,
/// and when hyper lets go of it after answering a request whose body it did not read, the
/// socket lingers (reads and discards, bounded) instead of being reset.
pub struct TrackedStream {
    inner: Option<TcpStream>,
    state: Arc<ConnState>,
    linger: Linger,
    /// Held until the socket is really closed (after lingering), so lingering sockets count
    /// against the connection limit.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl TrackedStream {
    /// Wraps an accepted socket.
    pub fn new(
        stream: TcpStream,
        state: Arc<ConnState>,
        linger: Linger,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Self {
        TrackedStream {
            inner: Some(stream),
            state,
            linger,
            permit: Some(permit),
        }
    }

    fn io(&mut self) -> io::Result<&mut TcpStream> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let io = match self.io() {
            Ok(io) => io,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let r = Pin::new(io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.on_read();
        }
        r
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let io = match self.io() {
            Ok(io) => io,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let r = Pin::new(io).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.state.on_write();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let io = match self.io() {
            Ok(io) => io,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let r = Pin::new(io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.state.on_write();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let io = match self.io() {
            Ok(io) => io,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let r = Pin::new(io).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            self.state.on_flush();
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io() {
            Ok(io) => Pin::new(io).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        let Some(stream) = self.inner.take() else {
            return;
        };
        let st = &self.state;
        if st.abandoned.load(Ordering::Acquire) || !st.unread_body.load(Ordering::Acquire) {
            return;
        }
        let permit = self.permit.take();
        let linger = self.linger;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                linger_close(stream, linger).await;
                drop(permit);
            });
        }
    }
}

/// Half-closes the socket (the answer is complete), then reads and discards what the client is
/// still sending until it closes, or `linger` runs out; then the socket is closed.
pub async fn linger_close(mut stream: TcpStream, linger: Linger) {
    let _ = stream.shutdown().await;
    let deadline = tokio::time::Instant::now() + linger.time;
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = linger.bytes;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        match tokio::time::timeout_at(deadline, stream.read(&mut buf[..want])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n)) => left = left.saturating_sub(n as u64),
        }
    }
}

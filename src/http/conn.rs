//! One HTTP connection's bookkeeping: what it is doing (busy with a request, reading a head,
//! idle between requests), when that started, and what happens to its socket at the end.
//!
//! The server's supervisor reads this state to enforce the header-read and idle timeouts and to
//! pick idle connections to close when the connection limit is reached. hyper cannot do this
//! itself: its only timer is a header-read timeout that also runs while a keep-alive connection
//! waits for its next request, so it cannot tell a slow head from an idle client.
//!
//! Nothing here wakes the supervisor when a request starts or ends: that would cost a task wake
//! and a timer reset per request. Instead its one timer is always set no later than the earliest
//! deadline the connection could have, and when it fires it looks at the state and sets itself
//! again ([`ConnState::check`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::task::AtomicWaker;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// How long and how much to keep reading after answering a request whose body was not read, so
/// the client is not reset while it is still sending (a reset discards the answer unread).
#[derive(Debug, Clone, Copy)]
pub(super) struct Linger {
    /// Longest time to keep reading.
    pub time: Duration,
    /// Most bytes to read and discard; a client that sends more is cut off.
    pub bytes: u64,
}

/// What one connection is doing, shared by its socket, its requests and the supervisor.
#[derive(Debug)]
pub(super) struct ConnState {
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
    /// Set when the server stops: finish the request in flight, if any, then close.
    stopping: AtomicBool,
    /// Whether the current request's body has been read to its end.
    body_done: AtomicBool,
    /// Wakes the supervisor for an eviction or a stop. An `AtomicWaker`, not a `Notify`: the
    /// supervisor polls it on every wake of the connection, and a `Notify` takes a lock there.
    signal: AtomicWaker,
}

/// Why the supervisor was signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Signal {
    /// Close this idle connection to make room.
    Evict,
    /// The server stops.
    Stop,
}

/// What the supervisor's timer found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Check {
    /// A deadline has passed: close the connection.
    Close,
    /// Look again then.
    At(Instant),
}

impl ConnState {
    /// A connection accepted now: its first head must arrive within the header-read timeout.
    pub(super) fn new() -> Arc<ConnState> {
        Arc::new(ConnState {
            epoch: Instant::now(),
            busy: AtomicU64::new(0),
            answering: AtomicBool::new(false),
            reading_head: AtomicBool::new(true),
            since_ms: AtomicU64::new(0),
            unread_body: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            body_done: AtomicBool::new(false),
            signal: AtomicWaker::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn since(&self) -> Instant {
        self.epoch + Duration::from_millis(self.since_ms.load(Ordering::Acquire))
    }

    /// At `now`: close, or when to look again. The next look is never later than the earliest
    /// deadline the connection could reach before it: a head that starts after `now` is due
    /// `header` after its first byte, so an idle or busy connection is looked at again within
    /// `header` (and an idle one at its idle deadline, if that is sooner).
    pub(super) fn check(&self, now: Instant, header: Duration, idle: Duration) -> Check {
        let next_head = now + header.min(idle);
        if self.busy.load(Ordering::Acquire) > 0 {
            // A handler bounds its own time (body timeout, tool timeouts).
            Check::At(next_head)
        } else if self.reading_head.load(Ordering::Acquire) {
            let due = self.since() + header;
            if due <= now {
                Check::Close
            } else {
                Check::At(due)
            }
        } else {
            let due = self.since() + idle;
            if due <= now {
                Check::Close
            } else {
                Check::At(due.min(next_head))
            }
        }
    }

    /// Whether no request is in flight (the connection may be closed without losing an answer).
    pub(super) fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
    }

    /// When the connection last made progress or started waiting (for picking whom to evict).
    pub(super) fn last_activity(&self) -> Instant {
        self.since()
    }

    /// Marks this connection to be closed to make room; false if it already was.
    pub(super) fn evict(&self) -> bool {
        let first = !self.evicted.swap(true, Ordering::AcqRel);
        if first {
            self.signal.wake();
        }
        first
    }

    /// Whether [`ConnState::evict`] was called.
    pub(super) fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Tells the supervisor that the server stops.
    pub(super) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.signal.wake();
    }

    /// The next eviction or stop signal (a stop first, and each at most once per call site:
    /// the caller stops waiting for what it has handled).
    pub(super) fn signalled(&self, handled_stop: bool) -> impl Future<Output = Signal> + '_ {
        std::future::poll_fn(move |cx| {
            self.signal.register(cx.waker());
            if !handled_stop && self.stopping.load(Ordering::Acquire) {
                Poll::Ready(Signal::Stop)
            } else if self.evicted.load(Ordering::Acquire) && self.is_idle() {
                Poll::Ready(Signal::Evict)
            } else {
                Poll::Pending
            }
        })
    }

    /// The connection is dropped for a timeout or an eviction: close the socket at once.
    pub(super) fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }

    /// The connection ended on an error (hyper may have answered a malformed head with a 400
    /// without reading the rest): linger as after an unread body.
    pub(super) fn ended_in_error(&self) {
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
        }
    }

    /// A handler starts on a request whose body is `body` (HTTP/1.1: one at a time); the
    /// returned guard marks its answer as being written when dropped, and the body is wrapped
    /// so its end is noticed.
    pub(super) fn begin_request<B: Body>(
        self: &Arc<Self>,
        body: B,
    ) -> (RequestGuard, TrackedBody<B>) {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.reading_head.store(false, Ordering::Release);
        self.body_done
            .store(body.is_end_stream(), Ordering::Release);
        let guard = RequestGuard { conn: self.clone() };
        let body = TrackedBody {
            inner: body,
            conn: self.clone(),
        };
        (guard, body)
    }
}

/// Marks a request's answer as being written when dropped (the handler is done); the next flush
/// of the socket ends the request.
pub(super) struct RequestGuard {
    conn: Arc<ConnState>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let c = &self.conn;
        c.unread_body
            .store(!c.body_done.load(Ordering::Acquire), Ordering::Release);
        c.answering.store(true, Ordering::Release);
    }
}

/// A request body that notes in its connection's state when it has been read to its end.
pub(super) struct TrackedBody<B> {
    inner: B,
    conn: Arc<ConnState>,
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
            self.conn.body_done.store(true, Ordering::Release);
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
pub(super) struct TrackedStream {
    inner: Option<TcpStream>,
    state: Arc<ConnState>,
    linger: Linger,
    /// Held until the socket is really closed (after lingering), so lingering sockets count
    /// against the connection limit.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl TrackedStream {
    /// Wraps an accepted socket.
    pub(super) fn new(
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
pub(super) async fn linger_close(mut stream: TcpStream, linger: Linger) {
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

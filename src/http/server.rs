//! The accept loop and each connection's supervisor: hyper speaks HTTP/1.1; this module bounds
//! how long a connection may take to send a head, how long it may sit idle, how many there are,
//! and how a connection ends after an early answer.
//!
//! Connection limit: a semaphore with one permit per open socket (lingering ones included). At
//! the limit, the connection that has been idle the longest (no request in flight: waiting for
//! a head or between requests) is closed to make room, as nginx does with keep-alive
//! connections; a well-behaved client sends its request at once and is served, while a flood
//! of idle or half-sent connections only displaces its own oldest members. With no idle
//! connection to close, the new one is refused with a short 503.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::HttpLimits;
use super::conn::{Check, ConnState, Linger, Signal, TrackedStream};

/// Open connections, by accept order, for picking one to close at the limit.
struct Registry {
    conns: Mutex<BTreeMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
}

impl Registry {
    fn insert(&self, st: Arc<ConnState>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.conns.lock() {
            m.insert(id, st);
        }
        id
    }

    fn remove(&self, id: u64) {
        if let Ok(mut m) = self.conns.lock() {
            m.remove(&id);
        }
    }

    /// Tells every connection that the server stops.
    fn stop_all(&self) {
        if let Ok(m) = self.conns.lock() {
            for c in m.values() {
                c.stop();
            }
        }
    }

    /// Asks the connection idle the longest to close; false if every connection is busy.
    fn evict_one(&self) -> bool {
        let Ok(m) = self.conns.lock() else {
            return false;
        };
        let victim = m
            .values()
            .filter(|c| c.is_idle() && !c.is_evicted())
            .min_by_key(|c| c.last_activity());
        victim.is_some_and(|c| c.evict())
    }
}

/// Logs a condition at most once per interval, so a flood cannot flood the log too.
struct Throttled {
    last: Mutex<Option<Instant>>,
}

impl Throttled {
    const EVERY: Duration = Duration::from_secs(10);

    fn ready(&self) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return false;
        };
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Self::EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// The answer to a connection refused at the limit (written once, then the socket closes).
fn refusal(limit: usize) -> Vec<u8> {
    let body = format!(
        "{{\"error\":\"too many connections (limit {limit}); retry shortly or raise --max-connections\"}}"
    );
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves; then stops accepting,
/// lets requests in flight finish, closes idle connections and returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let max = limits.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max));
    let registry = Arc::new(Registry {
        conns: Mutex::new(BTreeMap::new()),
        next_id: AtomicU64::new(0),
    });
    let at_limit = Throttled {
        last: Mutex::new(None),
    };
    let accept_failed = Throttled {
        last: Mutex::new(None),
    };
    // At most this many refusals are being written at once; beyond it a refused socket is just
    // closed.
    let refusing = Arc::new(Semaphore::new(64));
    tokio::pin!(shutdown);

    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors: make room, and let the backlog wait.
                    let emfile = matches!(e.raw_os_error(), Some(nix::libc::EMFILE | nix::libc::ENFILE));
                    if emfile {
                        registry.evict_one();
                    }
                    if accept_failed.ready() {
                        tracing::error!("accept failed: {e}{}", if emfile { " (closing idle connections)" } else { "" });
                    }
                    tokio::time::sleep(Duration::from_millis(if emfile { 10 } else { 1 })).await;
                    continue;
                }
            },
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let evicted = registry.evict_one();
                if at_limit.ready() {
                    tracing::warn!(
                        "connection limit {max} reached: {}",
                        if evicted {
                            "closing the connection idle the longest"
                        } else {
                            "every connection is busy; refusing new ones with 503"
                        }
                    );
                }
                let got = if evicted {
                    // The evicted connection is idle: it closes as soon as its task runs.
                    tokio::time::timeout(Duration::from_secs(1), permits.clone().acquire_owned())
                        .await
                        .ok()
                        .and_then(Result::ok)
                } else {
                    None
                };
                match got {
                    Some(p) => p,
                    None => {
                        refuse(stream, max, &refusing);
                        continue;
                    }
                }
            }
        };
        let st = ConnState::new();
        let id = registry.insert(st.clone());
        let registry = registry.clone();
        let app = app.clone();
        tokio::spawn(async move {
            serve_conn(stream, st, permit, app, limits).await;
            registry.remove(id);
        });
    }

    drop(listener);
    registry.stop_all();
    // Every connection holds a permit until its socket is closed.
    let _ = permits.acquire_many(max as u32).await;
}

fn refuse(stream: TcpStream, limit: usize, refusing: &Arc<Semaphore>) {
    let Ok(slot) = refusing.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let mut stream = stream;
        use tokio::io::AsyncWriteExt;
        let wrote = tokio::time::timeout(
            Duration::from_millis(500),
            stream.write_all(&refusal(limit)),
        )
        .await;
        if matches!(wrote, Ok(Ok(()))) {
            let linger = Linger {
                time: Duration::from_millis(200),
                bytes: 64 * 1024,
            };
            super::conn::linger_close(stream, linger).await;
        }
        drop(slot);
    });
}

/// Runs one connection: hyper serves requests while this supervisor enforces the header-read
/// and idle timeouts, eviction and graceful shutdown.
async fn serve_conn(
    stream: TcpStream,
    st: Arc<ConnState>,
    permit: tokio::sync::OwnedSemaphorePermit,
    app: Router,
    limits: HttpLimits,
) {
    let linger = Linger {
        time: limits.linger_time,
        bytes: limits.linger_bytes,
    };
    let io = TokioIo::new(TrackedStream::new(stream, st.clone(), linger, permit));
    let svc_state = st.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let (parts, body) = req.into_parts();
        let (guard, body) = svc_state.begin_request(body);
        let req = hyper::Request::from_parts(parts, axum::body::Body::new(body));
        let app = app.clone();
        async move {
            let resp = tower::ServiceExt::oneshot(app, req).await;
            drop(guard);
            resp
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    let mut stopping = false;
    let first = match st.check(Instant::now(), limits.header_timeout, limits.idle_timeout) {
        Check::At(t) => t,
        Check::Close => Instant::now(),
    };
    let timer = tokio::time::sleep_until(first.into());
    tokio::pin!(timer);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if r.is_err() {
                    st.ended_in_error();
                }
                return;
            }
            () = &mut timer => {
                match st.check(Instant::now(), limits.header_timeout, limits.idle_timeout) {
                    Check::Close => {
                        st.abandon();
                        return;
                    }
                    Check::At(t) => timer.as_mut().reset(t.into()),
                }
            }
            signal = st.signalled(stopping) => match signal {
                Signal::Evict => {
                    st.abandon();
                    return;
                }
                Signal::Stop => {
                    stopping = true;
                    // An idle connection has nothing to finish; a busy one finishes its
                    // request and hyper then closes it.
                    if st.is_idle() {
                        st.abandon();
                        return;
                    }
                    conn.as_mut().graceful_shutdown();
                }
            },
        }
    }
}

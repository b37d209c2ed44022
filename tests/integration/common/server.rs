//! A loopback HTTP server for the `tool.http_get` tests (through the daemon and through the
//! library) and for proving that something never reached the network.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A server on its own threads: each connection's request head is read and answered with
/// `respond(path)`, after a fixed delay, then the connection is closed. It counts connections
/// (so a refused fetch shows as none) and keeps the last request head. Stops when dropped.
pub struct LocalServer {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    last: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
}

/// A listener on a free port of `ip` (a loopback address).
pub fn bind(ip: &str) -> TcpListener {
    TcpListener::bind((ip, 0)).expect("bind")
}

/// A loopback port with nothing listening on it (bound, noted, closed).
pub fn closed_port() -> u16 {
    bind("127.0.0.1").local_addr().expect("addr").port()
}

impl LocalServer {
    /// On a free port of 127.0.0.1, answering at once.
    pub fn start(respond: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> LocalServer {
        Self::serve(bind("127.0.0.1"), Duration::ZERO, respond)
    }

    /// On `listener`, answering each request `delay` after its head arrived.
    pub fn serve(
        listener: TcpListener,
        delay: Duration,
        respond: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
    ) -> LocalServer {
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(Mutex::new(String::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let respond = Arc::new(respond);
        let (h, la, st) = (hits.clone(), last.clone(), stop.clone());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut s) = s else { continue };
                h.fetch_add(1, Ordering::SeqCst);
                let (respond, la) = (respond.clone(), la.clone());
                std::thread::spawn(move || {
                    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    *la.lock().unwrap_or_else(|e| e.into_inner()) = head;
                    std::thread::sleep(delay);
                    let _ = s.write_all(&respond(&path));
                });
            }
        });
        LocalServer {
            addr,
            hits,
            last,
            stop,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The last request head received.
    pub fn last_head(&self) -> String {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        // Wakes the accept loop so that it sees `stop` and ends (that connection is not counted).
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// An HTTP/1.1 response with `status` (e.g. `200 OK`), `headers` and `body`; the connection closes.
pub fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

/// A plain 200 response with `body`.
pub fn ok_response(content_type: &str, body: &[u8]) -> Vec<u8> {
    response("200 OK", &[("Content-Type", content_type)], body)
}

/// A redirect to `location`.
pub fn redirect_response(location: &str) -> Vec<u8> {
    response("302 Found", &[("Location", location)], b"")
}

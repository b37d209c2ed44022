//! The HTTP front end (axum on hyper): `GET /health`, `POST /v1/tool`, `GET /openapi.json`,
//! `GET /metrics`. It only translates; the `Gate` decides. [`server`] bounds the connections
//! themselves (timeouts, limit, lingering). `openapi.json` beside this file describes the API;
//! the tests hold the server to it.

mod conn;
pub mod server;

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Map, Value, json};

use crate::approvals::{MAX_NOTE, Resolution, ResolveError};
use crate::gate::{Gate, GateResponse, Outcome, ToolCall};
use crate::identity::{AuthError, Authenticator, Identity};
use crate::types::{Agent, Source, ToolKind};

/// The `source` of calls made over HTTP.
pub const SOURCE: Source = Source::new("http");

/// Largest request body accepted by `POST /v1/tool`.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// Every bound the HTTP server puts on a client; see `docs/http-api.md` ("Limits").
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest `POST /v1/tool` body (413 beyond).
    pub body_limit: usize,
    /// Time from the first byte of a request (or from accepting the connection) to the end of
    /// its head; the connection is closed when it runs out.
    pub header_timeout: Duration,
    /// How long a connection may wait between requests before it is closed.
    pub idle_timeout: Duration,
    /// How long a client may take to send a request body (408 beyond).
    pub body_timeout: Duration,
    /// Most open connections; at the limit the longest-idle one is closed, or the new one is
    /// refused with 503 when all are busy.
    pub max_connections: usize,
    /// After an answer sent before the body was read: longest time to keep reading.
    pub linger_time: Duration,
    /// After an answer sent before the body was read: most bytes to read and discard.
    pub linger_bytes: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            body_limit: DEFAULT_BODY_LIMIT,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_connections: default_max_connections(),
            linger_time: Duration::from_secs(2),
            linger_bytes: 8 * 1024 * 1024,
        }
    }
}

/// File descriptors kept free of connections (the WAL, the policy store, ROS sockets, DNS).
const FD_RESERVE: u64 = 64;
/// The default connection limit where the fd limit is very high.
const MAX_CONNECTIONS_CAP: u64 = 4096;

/// The default connection limit: below this process's open-file limit (`ulimit -n`) by
/// [`FD_RESERVE`], at most 4096, at least 16.
pub fn default_max_connections() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let n = soft
        .saturating_sub(FD_RESERVE)
        .clamp(16, MAX_CONNECTIONS_CAP);
    usize::try_from(n).unwrap_or(16)
}

/// Where and how the HTTP front end serves.
#[derive(Debug, Clone, Copy)]
pub struct HttpConfig {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// Bounds on clients.
    pub limits: HttpLimits,
}

impl HttpConfig {
    /// `127.0.0.1:<a free port>` with the default limits: what `run` and `demo validate` use.
    pub fn loopback() -> Self {
        HttpConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            limits: HttpLimits::default(),
        }
    }
}

/// Why the HTTP front end could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}{hint}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
        /// What to do.
        hint: &'static str,
    },
}

/// The running HTTP front end.
pub struct HttpServer {
    addr: SocketAddr,
    stop_tx: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl HttpServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl crate::runtime::FrontEnd for HttpServer {
    /// Stops accepting, lets requests in flight finish, closes idle connections.
    async fn shutdown(mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take()
            && let Err(e) = t.await
        {
            tracing::warn!("HTTP server task failed: {e}");
        }
    }
}

/// Binds `cfg.listen` and serves the API ([`ROUTES`]) into the runtime's gate.
/// Calls that arrive before [`crate::runtime::Runtime::start`] wait at the gate.
pub async fn start(
    runtime: &crate::runtime::Runtime,
    cfg: HttpConfig,
) -> Result<HttpServer, HttpError> {
    let bind_err = |source: std::io::Error| HttpError::Bind {
        addr: cfg.listen,
        hint: match source.kind() {
            std::io::ErrorKind::AddrInUse => {
                " (another process is using it; stop it or choose another address with --listen)"
            }
            std::io::ErrorKind::AddrNotAvailable => {
                " (no interface has that address; use 127.0.0.1 or an address of this machine)"
            }
            std::io::ErrorKind::PermissionDenied => {
                " (ports below 1024 need privileges; use a higher port)"
            }
            _ => "",
        },
        source,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    let app = router(runtime.gate().clone(), runtime.auth().clone(), &cfg.limits);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(listener, app, cfg.limits, async move {
        let _ = stop_rx.await;
    }));
    Ok(HttpServer {
        addr,
        stop_tx: Some(stop_tx),
        task: Some(task),
    })
}

#[derive(Clone)]
struct AppState {
    gate: Arc<Gate>,
    auth: Arc<Authenticator>,
    body_limit: usize,
    body_timeout: Duration,
}

/// Largest `POST /v1/approvals/{audit_id}` body.
const APPROVAL_BODY_LIMIT: usize = 16 * 1024;

/// Every route of the API: its path and the methods it takes (the `Allow` header of its 405).
/// The router is built from this list alone, and the tests check it against `openapi.json`, so a
/// route cannot go undocumented.
pub const ROUTES: &[(&str, &str)] = &[
    ("/health", "GET, HEAD"),
    ("/openapi.json", "GET, HEAD"),
    ("/v1/tool", "POST"),
    ("/v1/approvals", "GET"),
    ("/v1/approvals/{audit_id}", "POST"),
    ("/metrics", "GET, HEAD"),
];

/// The router for the runtime's HTTP API.
pub fn router(gate: Arc<Gate>, auth: Arc<Authenticator>, limits: &HttpLimits) -> Router {
    let state = AppState {
        gate,
        auth,
        body_limit: limits.body_limit,
        body_timeout: limits.body_timeout,
    };
    let mut app = Router::new();
    for &(path, allow) in ROUTES {
        // Add a route only here, through ROUTES: see there.
        let methods = match path {
            "/health" => get(health).head(|| async { StatusCode::OK }),
            // `get` answers HEAD too, with GET's headers and no body.
            "/openapi.json" => get(openapi),
            "/v1/tool" => post(tool),
            "/v1/approvals" => get(list_approvals),
            "/v1/approvals/{audit_id}" => post(decide_approval),
            "/metrics" => get(metrics),
            _ => unreachable!("ROUTES lists {path} but the router has no handler for it"),
        };
        app = app.route(path, only(methods, allow));
    }
    app.fallback(not_found).with_state(state)
}

fn only(r: MethodRouter<AppState>, allow: &'static str) -> MethodRouter<AppState> {
    r.fallback(move |method: Method| async move {
        let mut resp = error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("method {method} is not allowed here; use {allow}"),
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        resp
    })
}

async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// `GET /metrics` (HEAD too: axum answers it from the GET handler without the body).
/// `GET /metrics`: under `--auth required` it needs a valid token (any agent's), like a tool
/// call; under `optional` a token, if sent, must be valid; under `off` it is open.
async fn metrics(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = st.auth.authenticate(authorization(&headers)) {
        return unauthorized(&e);
    }
    let body = st.gate.metrics().render();
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    resp
}

/// The OpenAPI 3.1 document of this API, as written (`info.version` is [`OPENAPI_VERSION_SLOT`]).
pub const OPENAPI_SOURCE: &str = include_str!("openapi.json");

/// The text in [`OPENAPI_SOURCE`] that the binary's version replaces when served.
pub const OPENAPI_VERSION_SLOT: &str = "\"version\": \"set when served: the crate version\"";

/// The document `GET /openapi.json` serves: [`OPENAPI_SOURCE`] with `info.version` set to this
/// binary's version, the rest byte for byte (so it reads as written). Built once.
pub fn openapi_document() -> &'static Bytes {
    static DOC: LazyLock<Bytes> = LazyLock::new(|| {
        // A crate version is semver: nothing in it needs escaping in a JSON string.
        let version = format!("\"version\": \"{}\"", crate::VERSION);
        Bytes::from(OPENAPI_SOURCE.replacen(OPENAPI_VERSION_SLOT, &version, 1))
    });
    &DOC
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi_document().clone(),
    )
        .into_response()
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    static API: LazyLock<String> = LazyLock::new(|| {
        let routes: Vec<String> = ROUTES
            .iter()
            .map(|(path, allow)| format!("{} {path}", allow.replace(", ", "/")))
            .collect();
        match routes.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
            None => String::new(),
        }
    });
    error(
        StatusCode::NOT_FOUND,
        &format!(
            "no route for {method} {}; the API is {} (described by GET /openapi.json)",
            uri.path(),
            *API
        ),
    )
}

fn error(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(json!({ "error": msg }))).into_response()
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(ct) = ct.to_str() else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The 401 answer: why, and how to authenticate (RFC 6750).
fn unauthorized(e: &AuthError) -> Response {
    let (status, challenge) = match e {
        AuthError::Missing | AuthError::Malformed => {
            (StatusCode::UNAUTHORIZED, "Bearer realm=\"autonomy\"")
        }
        AuthError::Invalid => (
            StatusCode::UNAUTHORIZED,
            "Bearer realm=\"autonomy\", error=\"invalid_token\"",
        ),
        AuthError::NotOperator => (
            StatusCode::FORBIDDEN,
            "Bearer realm=\"autonomy\", error=\"insufficient_scope\"",
        ),
    };
    let mut resp = error(status, &e.to_string());
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    resp
}

fn authorization(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
}

async fn tool(State(st): State<AppState>, req: Request) -> Response {
    // Who is calling comes first: an unauthenticated body is never read or evaluated.
    let agent = match st.auth.authenticate(authorization(req.headers())) {
        Ok(Some(Identity { agent, .. })) => agent,
        Ok(None) => Agent::anonymous(),
        Err(e) => return unauthorized(&e),
    };
    if !is_json(req.headers()) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON: send Content-Type: application/json",
        );
    }
    let too_big = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is larger than the {} byte limit", st.body_limit),
        )
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > st.body_limit as u64
    {
        return too_big();
    }
    let read = Limited::new(req.into_body(), st.body_limit).collect();
    let bytes = match tokio::time::timeout(st.body_timeout, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => return too_big(),
        // Cut short, a broken chunk, an oversized chunk extension: the body is malformed.
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("the request body is malformed: {}", innermost(&*e)),
            );
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the body did not arrive within {} s",
                    st.body_timeout.as_secs_f64()
                ),
            );
        }
    };
    let mut call = match parse_call(&bytes) {
        Ok(c) => c,
        Err(msg) => return error(StatusCode::BAD_REQUEST, &msg),
    };
    // The decision record holds the params re-encoded, and a body under the limit can grow in
    // that (`9e9` is written `9000000000.0`): past the WAL's record limit the append would fail
    // and the caller's oversized input would answer as a WAL failure (503).
    // Re-encoding grows a body by well under 8x (a number such as `1e15` is the worst case), so
    // only bodies over an eighth of the limit are measured.
    let encoded = if bytes.len() > st.body_limit / 8 {
        encoded_len(&call.params)
    } else {
        0
    };
    if encoded > st.body_limit {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "the params are {encoded} bytes once re-encoded (numbers written out in full, e.g. 9e9 as 9000000000.0), over the {} byte limit",
                st.body_limit
            ),
        );
    }
    call.agent = agent;
    let agent = call.agent.clone();
    let resp = st.gate.call(call).await;
    render(resp, &agent)
}

/// `GET /v1/approvals`: the calls waiting for a person (operator token required).
async fn list_approvals(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = st.auth.operator(authorization(&headers)) {
        return unauthorized(&e);
    }
    axum::Json(json!({ "pending": st.gate.approvals().list() })).into_response()
}

/// `POST /v1/approvals/{audit_id}` with `{"decision": "approve"|"reject", "note": "…"}`.
async fn decide_approval(
    State(st): State<AppState>,
    axum::extract::Path(audit_id): axum::extract::Path<String>,
    req: Request,
) -> Response {
    let operator = match st.auth.operator(authorization(req.headers())) {
        Ok(id) => id,
        Err(e) => return unauthorized(&e),
    };
    if !is_json(req.headers()) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON: send Content-Type: application/json",
        );
    }
    let read = Limited::new(req.into_body(), APPROVAL_BODY_LIMIT).collect();
    let bytes = match tokio::time::timeout(st.body_timeout, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is larger than the {APPROVAL_BODY_LIMIT} byte limit"),
            );
        }
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("the request body is malformed: {}", innermost(&*e)),
            );
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive in time",
            );
        }
    };
    let (approve, note) = match parse_approval(&bytes) {
        Ok(v) => v,
        Err(msg) => return error(StatusCode::BAD_REQUEST, &msg),
    };
    let by = operator.agent.as_str().to_string();
    match st.gate.approvals().resolve(
        &audit_id,
        Resolution {
            approve,
            by: by.clone(),
            note,
        },
    ) {
        Ok(()) => axum::Json(json!({
            "audit_id": audit_id,
            "decision": if approve { "approve" } else { "reject" },
            "by": by,
        }))
        .into_response(),
        Err(e @ ResolveError::NotFound(_)) => error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e @ ResolveError::Decided(..)) => error(StatusCode::CONFLICT, &e.to_string()),
    }
}

/// Reads `{"decision": "approve"|"reject", "note"?: string}`.
fn parse_approval(bytes: &[u8]) -> Result<(bool, Option<String>), String> {
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("the body is not valid JSON: {e}"))?;
    let Value::Object(obj) = v else {
        return Err("the body must be a JSON object: {\"decision\": \"approve\"}".into());
    };
    let approve = match obj.get("decision") {
        Some(Value::String(s)) if s == "approve" => true,
        Some(Value::String(s)) if s == "reject" => false,
        _ => return Err("`decision` must be \"approve\" or \"reject\"".into()),
    };
    let note = match obj.get("note") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= MAX_NOTE => Some(s.clone()),
        Some(Value::String(_)) => return Err(format!("`note` is longer than {MAX_NOTE} bytes")),
        Some(_) => return Err("`note` must be a string".into()),
    };
    Ok((approve, note))
}

/// The length of `params` as serde_json writes them (in records), without building the text.
fn encoded_len(params: &Map<String, Value>) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    // A map of JSON values into a sink that takes everything: nothing here can fail.
    let _ = serde_json::to_writer(&mut n, params);
    n.0
}

/// The most specific message in an error's chain ("unexpected end of file", "invalid chunk
/// size line") rather than hyper's generic outer one.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Parses a `POST /v1/tool` body into a call, or says what is wrong with it.
pub fn parse_call(bytes: &[u8]) -> Result<ToolCall, String> {
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("the body is not valid JSON: {e}"))?;
    let Value::Object(mut obj) = v else {
        return Err(
            "the body must be a JSON object: {\"kind\": \"...\", \"params\": {...}}".into(),
        );
    };
    let kind = match obj.remove("kind") {
        Some(Value::String(s)) => ToolKind::parse(&s).map_err(|e| e.to_string())?,
        Some(_) => return Err("`kind` must be a string, e.g. \"tool.echo\"".into()),
        None => return Err("`kind` is missing, e.g. {\"kind\": \"tool.echo\"}".into()),
    };
    let params = match obj.remove("params") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err("`params` must be a JSON object".into()),
    };
    Ok(ToolCall {
        kind,
        params,
        source: SOURCE,
        agent: crate::types::Agent::anonymous(),
    })
}

/// The body of a `/v1/tool` answer. Fields in alphabetical order (the order the former
/// `serde_json::Map` rendering produced), absent ones left out.
#[derive(serde::Serialize)]
struct ToolAnswer<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    approval: Option<Value>,
    audit_id: &'a str,
    decision: &'a str,
    /// `true` when the call ran as the policy's patch changed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    downgraded: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a Value>,
    /// A downgrade's patch: what changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<&'a Map<String, Value>>,
    policy_ref: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    rules: &'a [std::sync::Arc<crate::policy::RuleRef>],
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow: Option<Value>,
}

fn render(r: GateResponse, agent: &Agent) -> Response {
    let (status, output, err) = match &r.outcome {
        Outcome::Executed(out) => (StatusCode::OK, Some(out), None),
        Outcome::DecisionOnly => (StatusCode::OK, None, None),
        Outcome::PolicyDenied | Outcome::RuntimeDenied => (StatusCode::FORBIDDEN, None, None),
        // Only the bridge refuses input at the gate; HTTP answers bad input before it.
        Outcome::InputRefused => (StatusCode::BAD_REQUEST, None, None),
        Outcome::BadParams(e) => (StatusCode::BAD_REQUEST, None, Some(e.as_str())),
        Outcome::UpstreamFailed(e) => (StatusCode::BAD_GATEWAY, None, Some(e.as_str())),
        Outcome::WalUnavailable(e) => (StatusCode::SERVICE_UNAVAILABLE, None, Some(e.as_str())),
        Outcome::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, None, None),
        Outcome::ApprovalDenied => (StatusCode::FORBIDDEN, None, None),
    };
    let approval = r.approval.as_ref().map(|a| {
        let decision = match (a.approve, a.by.as_str()) {
            (true, _) => "approve",
            (false, "timeout") => "timeout",
            (false, _) => "reject",
        };
        let mut m = Map::new();
        m.insert("by".into(), a.by.clone().into());
        m.insert("decision".into(), decision.into());
        if let Some(n) = &a.note {
            m.insert("note".into(), n.clone().into());
        }
        Value::Object(m)
    });
    let shadow = r.shadow.as_ref().map(|s| {
        let mut m = Map::new();
        m.insert("decision".into(), s.decision.as_str().into());
        if let Some(why) = &s.reason {
            m.insert("reason".into(), why.clone().into());
        }
        Value::Object(m)
    });
    let body = ToolAnswer {
        agent: (agent.as_str() != Agent::ANONYMOUS).then_some(agent.as_str()),
        approval,
        shadow,
        audit_id: r.audit_id.as_str(),
        decision: r.decision.as_str(),
        downgraded: r.downgrade.is_some().then_some(true),
        error: err,
        output,
        patch: r.downgrade.as_ref().map(|d| &d.patch),
        policy_ref: r.policy_ref.as_str(),
        reason: r.reason.as_deref(),
        rules: &r.rules,
    };
    let mut resp = Response::new(Body::from(serde_json::to_vec(&body).unwrap_or_default()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Outcome::RateLimited(wait) = r.outcome {
        // Whole seconds, rounded up: a client that waits this long finds a token.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_openapi_document_is_the_source_with_the_version() {
        assert_eq!(OPENAPI_SOURCE.matches(OPENAPI_VERSION_SLOT).count(), 1);
        let mut source: Value = serde_json::from_str(OPENAPI_SOURCE).expect("openapi.json parses");
        let served: Value = serde_json::from_slice(openapi_document()).unwrap();
        assert_eq!(served["info"]["version"], crate::VERSION);
        source["info"]["version"] = crate::VERSION.into();
        assert_eq!(served, source);
    }

    #[test]
    fn parse_rules() {
        assert!(parse_call(br#"{"kind":"tool.echo"}"#).is_ok());
        assert!(parse_call(br#"{"kind":"tool.echo","params":{"message":"x"}}"#).is_ok());
        assert!(parse_call(br#"{"kind":1}"#).unwrap_err().contains("string"));
        assert!(
            parse_call(br#"{"params":{}}"#)
                .unwrap_err()
                .contains("missing")
        );
        assert!(
            parse_call(br#"{"kind":"a","params":[]}"#)
                .unwrap_err()
                .contains("object")
        );
        assert!(parse_call(b"nope").unwrap_err().contains("not valid JSON"));
        let deep = "[".repeat(10_000);
        assert!(parse_call(deep.as_bytes()).is_err());
    }

    #[test]
    fn render_matches_the_map_rendering() {
        use crate::types::{AuditId, Decision, PolicyRef};
        let cases = [
            (Decision::Allow, None, Outcome::Executed(json!("hi"))),
            (Decision::Allow, None, Outcome::DecisionOnly),
            (Decision::Deny, Some("no"), Outcome::PolicyDenied),
            (
                Decision::Allow,
                None,
                Outcome::BadParams("bad \"p\"".into()),
            ),
            (
                Decision::Deny,
                Some("r"),
                Outcome::WalUnavailable("disk".into()),
            ),
        ];
        for (decision, reason, outcome) in cases {
            let r = GateResponse {
                decision,
                policy_ref: PolicyRef::new("embedded:demo"),
                audit_id: AuditId::from_string("id-1".into()),
                reason: reason.map(String::from),
                outcome: outcome.clone(),
                shadow: None,
                approval: None,
                downgrade: None,
                rules: Vec::new(),
            };
            let mut want = Map::new();
            want.insert("decision".into(), decision.as_str().into());
            match &outcome {
                Outcome::Executed(v) => {
                    want.insert("output".into(), v.clone());
                }
                Outcome::BadParams(e) | Outcome::WalUnavailable(e) => {
                    want.insert("error".into(), e.clone().into());
                }
                _ => {}
            }
            if let Some(x) = reason {
                want.insert("reason".into(), x.into());
            }
            want.insert("policy_ref".into(), "embedded:demo".into());
            want.insert("audit_id".into(), "id-1".into());
            let want = serde_json::to_vec(&Value::Object(want)).unwrap();
            let resp = render(r, &Agent::anonymous());
            let body = futures::executor::block_on(axum::body::to_bytes(resp.into_body(), 1 << 20))
                .unwrap();
            assert_eq!(body.as_ref(), want.as_slice());
        }
    }
}

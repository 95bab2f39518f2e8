//! The console's HTTP port: the web console (its files are built into the binary), the admin
//! API under `/api/v1/` (JSON; `docs/openapi.json` describes it and a test keeps the two in
//! step), `/metrics` for Prometheus, and MQTT over WebSocket on `/mqtt` for the console's
//! web client.
//!
//! Owns HTTP: routing, cookies, CSRF, security headers. What each call does is in `api.rs`;
//! who may call is in `auth.rs`.

mod api;
pub mod auth;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tern_broker::{Broker, Origin};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, warn};

use crate::access::FileAccess;
use crate::config::ListenerKind;
use crate::conn::Context;
use crate::metrics::Metrics;
use crate::topics::Topics;
use crate::transport::Transport;
use auth::{Login, Logins};

/// The admin API's routes: method and path, `{name}` standing for one path segment.
/// `docs/openapi.json` lists exactly these (tested).
pub(crate) const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/login"),
    ("POST", "/api/v1/logout"),
    ("GET", "/api/v1/session"),
    ("GET", "/api/v1/overview"),
    ("GET", "/api/v1/clients"),
    ("GET", "/api/v1/clients/{client_id}"),
    ("DELETE", "/api/v1/clients/{client_id}"),
    ("GET", "/api/v1/sessions"),
    ("GET", "/api/v1/sessions/{client_id}"),
    ("DELETE", "/api/v1/sessions/{client_id}"),
    ("GET", "/api/v1/subscriptions"),
    ("GET", "/api/v1/retained"),
    ("DELETE", "/api/v1/retained"),
    ("GET", "/api/v1/topics"),
    ("GET", "/api/v1/users"),
    ("POST", "/api/v1/users"),
    ("GET", "/api/v1/users/{name}"),
    ("PUT", "/api/v1/users/{name}"),
    ("DELETE", "/api/v1/users/{name}"),
    ("GET", "/metrics"),
];

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// Samples of the overview chart kept (one a second).
const HISTORY: usize = 300;

/// The login cookie's name.
const COOKIE: &str = "tern_session";

/// One second of the overview chart.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) at_ms: u64,
    pub(crate) messages_in: u64,
    pub(crate) messages_out: u64,
    pub(crate) clients: usize,
}

/// Everything the console's requests share.
pub(crate) struct Console {
    pub(crate) broker: Arc<Broker>,
    pub(crate) users: Option<Arc<FileAccess>>,
    pub(crate) admin_path: PathBuf,
    pub(crate) logins: Logins,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) topics: Arc<Topics>,
    pub(crate) listeners: Vec<(SocketAddr, ListenerKind)>,
    pub(crate) bridges: Vec<Arc<crate::bridge::BridgeStatus>>,
    pub(crate) store_dir: Option<PathBuf>,
    /// Served over HTTPS: the cookie is marked Secure.
    pub(crate) secure: bool,
    pub(crate) history: Mutex<VecDeque<Sample>>,
    /// For MQTT over WebSocket on `/mqtt`.
    pub(crate) mqtt: Arc<Context>,
    pub(crate) loopback: bool,
    pub(crate) allow_anonymous: Option<bool>,
}

/// A response body.
type Body = Full<Bytes>;

/// A WebSocket upgrade accepted by the router, for the accept loop to serve as MQTT.
struct Upgrade {
    request: Request<Incoming>,
    peer: SocketAddr,
}

/// Accepts HTTP connections until shutdown, then waits for the MQTT ones to close.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    console: Arc<Console>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut http = JoinSet::new();
    let mut mqtt = JoinSet::new();
    let (upgrades_tx, mut upgrades) = mpsc::unbounded_channel::<Upgrade>();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let console = console.clone();
                    let tls = tls.clone();
                    let upgrades = upgrades_tx.clone();
                    http.spawn(async move {
                        match tls {
                            Some(acceptor) => {
                                let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                                if let Ok(Ok(stream)) = handshake.await {
                                    serve_http(stream, peer, console, upgrades).await;
                                }
                            }
                            None => serve_http(stream, peer, console, upgrades).await,
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "console accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(upgrade) = upgrades.recv() => {
                mqtt.spawn(serve_mqtt(console.clone(), upgrade));
            }
            Some(_) = http.join_next(), if !http.is_empty() => {}
            Some(_) = mqtt.join_next(), if !mqtt.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    http.abort_all();
    while mqtt.join_next().await.is_some() {}
}

async fn serve_http<S>(
    stream: S,
    peer: SocketAddr,
    console: Arc<Console>,
    upgrades: mpsc::UnboundedSender<Upgrade>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let console = console.clone();
        let upgrades = upgrades.clone();
        async move { Ok::<_, Infallible>(route(&console, request, peer, &upgrades).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        debug!(%peer, error = %e, "console connection ended");
    }
}

/// Serves MQTT on a connection upgraded to WebSocket.
async fn serve_mqtt(console: Arc<Console>, upgrade: Upgrade) {
    let Upgrade { request, peer } = upgrade;
    let upgraded = match hyper::upgrade::on(request).await {
        Ok(u) => u,
        Err(e) => {
            debug!(%peer, error = %e, "WebSocket upgrade failed");
            return;
        }
    };
    let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    let origin = Origin {
        peer: peer.to_string(),
        loopback: console.loopback,
        allow_anonymous: console.allow_anonymous,
        certificate_name: None,
        refusal: None,
    };
    crate::conn::serve(
        console.mqtt.clone(),
        Transport::Upgraded(Box::new(socket)),
        origin,
        peer.ip(),
        (),
    )
    .await;
}

/// A JSON answer.
pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An error answer: `{"error": why}`.
pub(crate) fn error(status: StatusCode, why: impl Into<String>) -> Response<Body> {
    json_response(status, &json!({ "error": why.into() }))
}

fn no_content() -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Headers every answer carries: no framing by other sites, no type sniffing, scripts and
/// connections from this origin only, nothing cached.
fn harden(response: &mut Response<Body>) {
    let h = response.headers_mut();
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

async fn route(
    console: &Arc<Console>,
    request: Request<Incoming>,
    peer: SocketAddr,
    upgrades: &mpsc::UnboundedSender<Upgrade>,
) -> Response<Body> {
    let mut response = dispatch(console, request, peer, upgrades).await;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        harden(&mut response);
    }
    response
}

async fn dispatch(
    console: &Arc<Console>,
    request: Request<Incoming>,
    peer: SocketAddr,
    upgrades: &mpsc::UnboundedSender<Upgrade>,
) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    match (method.as_str(), path.as_str()) {
        ("GET", "/" | "/index.html") => {
            return asset(
                "text/html; charset=utf-8",
                include_str!("assets/index.html"),
            )
        }
        ("GET", "/console.js") => {
            return asset(
                "text/javascript; charset=utf-8",
                include_str!("assets/console.js"),
            )
        }
        ("GET", "/mqtt-client.js") => {
            return asset(
                "text/javascript; charset=utf-8",
                include_str!("assets/mqtt-client.js"),
            )
        }
        ("GET", "/console.css") => {
            return asset(
                "text/css; charset=utf-8",
                include_str!("assets/console.css"),
            )
        }
        // A page on another site may not open MQTT here with the visitor's loopback address
        // (anonymous clients are let in on loopback while no user exists).
        ("GET", "/mqtt") if !same_origin(&request) => {
            return error(
                StatusCode::FORBIDDEN,
                "cross-origin WebSocket refused (the Origin header does not match Host)",
            )
        }
        ("GET", "/mqtt") => return websocket(request, peer, upgrades),
        ("GET", "/metrics") => {
            let mut response = Response::new(Full::new(Bytes::from(crate::metrics::render(
                &console.broker,
                &console.metrics,
                console.store_dir.as_ref(),
                &console.bridges,
            ))));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            return response;
        }
        _ => {}
    }
    let Some((template, params)) = match_route(method.as_str(), &path) else {
        return if ROUTES.iter().any(|(_, t)| path_matches(t, &path).is_some()) {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        } else {
            error(StatusCode::NOT_FOUND, "no such page")
        };
    };
    if !same_origin(&request) {
        return error(
            StatusCode::FORBIDDEN,
            "cross-origin requests are refused (the Origin header does not match Host)",
        );
    }
    let query = parse_query(request.uri().query().unwrap_or(""));
    let token = session_cookie(&request);
    if template == "/api/v1/login" {
        let body = match read_json(request).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        return login(console, body, peer).await;
    }
    let Some(login) = token.as_deref().and_then(|t| console.logins.check(t)) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "log in first (POST /api/v1/login)",
        );
    };
    if method != Method::GET {
        let sent = request
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok());
        if sent != Some(login.csrf.as_str()) {
            return error(
                StatusCode::FORBIDDEN,
                "missing or wrong X-CSRF-Token header (GET /api/v1/session gives it)",
            );
        }
    }
    match template {
        "/api/v1/logout" => {
            if let Some(t) = &token {
                console.logins.close(t);
            }
            let mut response = no_content();
            response.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_static(
                    "tern_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
                ),
            );
            return response;
        }
        "/api/v1/session" => return session_info(&login),
        _ => {}
    }
    let body = if method == Method::POST || method == Method::PUT {
        match read_json(request).await {
            Ok(b) => b,
            Err(r) => return r,
        }
    } else {
        Value::Null
    };
    api::call(console, method.as_str(), template, &params, &query, body).await
}

fn session_info(login: &Login) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &json!({ "name": login.name, "csrf": login.csrf }),
    )
}

async fn login(console: &Arc<Console>, body: Value, peer: SocketAddr) -> Response<Body> {
    let (Some(name), Some(password)) = (
        body.get("name").and_then(Value::as_str),
        body.get("password").and_then(Value::as_str),
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected {\"name\": \"...\", \"password\": \"...\"}",
        );
    };
    let delay = console.logins.delay(peer.ip());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (path, name, password) = (
        console.admin_path.clone(),
        name.to_owned(),
        password.to_owned(),
    );
    let checked = name.clone();
    let ok = tokio::task::spawn_blocking(move || Logins::verify(&path, &checked, &password))
        .await
        .unwrap_or(false);
    console.logins.record(peer.ip(), ok);
    if !ok {
        console
            .metrics
            .console_login_failures
            .fetch_add(1, Ordering::Relaxed);
        warn!(%peer, name = %name, "console login refused");
        return error(StatusCode::UNAUTHORIZED, "wrong name or password");
    }
    let (token, login) = console.logins.open(&name);
    let secure = if console.secure { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}");
    let mut response = session_info(&login);
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Answers a WebSocket upgrade on `/mqtt` and hands the connection to the accept loop.
fn websocket(
    request: Request<Incoming>,
    peer: SocketAddr,
    upgrades: &mpsc::UnboundedSender<Upgrade>,
) -> Response<Body> {
    let headers = request.headers();
    let wants = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).filter(|_| wants) else {
        return error(
            StatusCode::BAD_REQUEST,
            "MQTT over WebSocket: a WebSocket upgrade is expected here",
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let offers_mqtt = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "mqtt");
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if offers_mqtt {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("mqtt"),
        );
    }
    let _ = upgrades.send(Upgrade { request, peer });
    response
}

/// Browsers send Origin on cross-site requests; one that names another host is refused, so
/// a page elsewhere cannot act with the administrator's cookie.
fn same_origin(request: &Request<Incoming>) -> bool {
    let Some(origin) = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    origin_host.eq_ignore_ascii_case(host)
}

fn session_cookie(request: &Request<Incoming>) -> Option<String> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

async fn read_json(request: Request<Incoming>) -> Result<Value, Response<Body>> {
    let body = Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is over {MAX_BODY} bytes or broken"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        )
    })
}

/// The route `path` takes with `method`, and the values of its `{...}` segments.
fn match_route(method: &str, path: &str) -> Option<(&'static str, Vec<String>)> {
    ROUTES
        .iter()
        .filter(|(m, _)| *m == method)
        .find_map(|(_, template)| path_matches(template, path).map(|p| (*template, p)))
}

fn path_matches(template: &str, path: &str) -> Option<Vec<String>> {
    let mut params = Vec::new();
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(params),
            (Some(ts), Some(ps)) if ts.starts_with('{') => {
                if ps.is_empty() {
                    return None;
                }
                params.push(percent_decode(ps)?);
            }
            (Some(ts), Some(ps)) if ts == ps => {}
            _ => return None,
        }
    }
}

/// Decodes `%XX` escapes; `None` if they do not make UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((
                percent_decode(&k.replace('+', " "))?,
                percent_decode(&v.replace('+', " "))?,
            ))
        })
        .collect()
}

/// Every second: a sample for the overview chart; every five, the topics' rates.
pub(crate) async fn sample_loop(console: Arc<Console>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                ticks += 1;
                let s = &console.broker.stats;
                let sample = Sample {
                    at_ms: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                    messages_in: s.messages_received.load(Ordering::Relaxed),
                    messages_out: s.messages_sent.load(Ordering::Relaxed),
                    clients: s.clients_connected.load(Ordering::Relaxed),
                };
                let mut history = console.history.lock().unwrap_or_else(|p| p.into_inner());
                if history.len() == HISTORY {
                    history.pop_front();
                }
                history.push_back(sample);
                drop(history);
                if ticks.is_multiple_of(5) {
                    console.topics.tick(5.0);
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_with_decoded_segments() {
        let (t, p) = match_route("GET", "/api/v1/clients/a%2Fb%20c").unwrap();
        assert_eq!(t, "/api/v1/clients/{client_id}");
        assert_eq!(p, vec!["a/b c".to_owned()]);
        assert!(match_route("GET", "/api/v1/clients/").is_none());
        assert!(match_route("PATCH", "/api/v1/clients").is_none());
        assert!(match_route("GET", "/api/v1/clients/x/y").is_none());
        assert!(percent_decode("%zz").is_none());
        assert_eq!(
            parse_query("filter=a%2F%23&limit=5&x"),
            vec![
                ("filter".to_owned(), "a/#".to_owned()),
                ("limit".to_owned(), "5".to_owned()),
                ("x".to_owned(), String::new())
            ]
        );
    }

    #[test]
    fn openapi_file_lists_exactly_the_routes() {
        let doc: Value = serde_json::from_str(include_str!("../../../../docs/openapi.json"))
            .expect("docs/openapi.json is JSON");
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                    documented.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(
            documented, served,
            "docs/openapi.json and console::ROUTES differ"
        );
    }
}

//! What each admin API call does, once the caller is known to be a logged-in administrator.
//! Answers are JSON; lists take `offset` and `limit` and say how many there are in all.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use tern_broker::{Removal, Session};
use tern_proto::{QoS, TopicFilter};

use super::{error, json_response, Body, Console};
use crate::access::{hash_password, Rule, UsersFile};
use crate::now;

/// A refused call: its status and why, for a person.
#[derive(Debug)]
pub(super) struct ApiError(StatusCode, String);

fn fail(status: StatusCode, why: impl Into<String>) -> ApiError {
    ApiError(status, why.into())
}

/// Most items one list call returns.
const MAX_LIMIT: usize = 1000;

type Query = [(String, String)];

fn param<'a>(query: &'a Query, name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// `offset` and `limit` (default 100, at most 1000).
fn paging(query: &Query) -> Result<(usize, usize), ApiError> {
    let number = |name: &str, default: usize| match param(query, name) {
        None => Ok(default),
        Some(v) => v.parse::<usize>().map_err(|_| {
            fail(
                StatusCode::BAD_REQUEST,
                format!("`{name}` must be a whole number, not {v:?}"),
            )
        }),
    };
    Ok((number("offset", 0)?, number("limit", 100)?.min(MAX_LIMIT)))
}

fn page<T>(items: Vec<T>, offset: usize, limit: usize, f: impl Fn(&T) -> Value) -> Value {
    let total = items.len();
    let items: Vec<Value> = items.iter().skip(offset).take(limit).map(f).collect();
    json!({ "total": total, "offset": offset, "limit": limit, "items": items })
}

fn ms_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A payload as text when it is UTF-8, else base64.
fn payload_json(bytes: &[u8]) -> (Value, &'static str) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Value::from(text), "utf8"),
        Err(_) => (Value::from(base64(bytes)), "base64"),
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn qos_number(q: QoS) -> u8 {
    q as u8
}

/// A session as the lists show it.
fn session_summary(session: &Session) -> Value {
    let state = session.lock();
    let connected = state.owner.is_some();
    let expires_in = match (connected, state.disconnected_at) {
        (false, Some(at)) if state.expiry_interval != u32::MAX => {
            let gone = now().saturating_duration_since(at).as_secs();
            Some(u64::from(state.expiry_interval).saturating_sub(gone))
        }
        _ => None,
    };
    json!({
        "client_id": &*session.client_id,
        "connected": connected,
        "username": state.username.as_deref(),
        "peer": state.peer.as_deref(),
        "protocol": state.version.to_string(),
        "keep_alive": state.keep_alive,
        "connected_since_ms": state.connected_since.map(ms_since_epoch),
        "persistent": session.is_persistent(),
        "expiry_interval": state.expiry_interval,
        "expires_in": expires_in,
        "subscriptions": state.subscriptions.len(),
        "queued": state.queue.len(),
        "inflight": state.inflight.len(),
        "dropped": state.dropped,
    })
}

/// A session with its subscriptions.
fn session_detail(session: &Session) -> Value {
    let mut value = session_summary(session);
    let state = session.lock();
    let mut subscriptions: Vec<Value> = state
        .subscriptions
        .iter()
        .map(|(filter, (options, id))| {
            json!({
                "filter": filter,
                "qos": qos_number(options.qos),
                "no_local": options.no_local,
                "retain_as_published": options.retain_as_published,
                "retain_handling": options.retain_handling as u8,
                "subscription_id": id,
            })
        })
        .collect();
    subscriptions.sort_by(|a, b| a["filter"].as_str().cmp(&b["filter"].as_str()));
    value["subscription_list"] = Value::from(subscriptions);
    value
}

pub(super) async fn call(
    console: &Arc<Console>,
    method: &str,
    template: &str,
    params: &[String],
    query: &Query,
    body: Value,
) -> Response<Body> {
    let first = params.first().map(String::as_str).unwrap_or("");
    let result = match (method, template) {
        ("GET", "/api/v1/overview") => Ok(overview(console)),
        ("GET", "/api/v1/clients") => clients(console, query, true),
        ("GET", "/api/v1/sessions") => clients(console, query, false),
        ("GET", "/api/v1/clients/{client_id}") => match console.broker.session(first) {
            Some(s) if s.is_connected() => Ok(session_detail(&s)),
            _ => Err(fail(
                StatusCode::NOT_FOUND,
                format!("no client {first:?} is connected"),
            )),
        },
        ("GET", "/api/v1/sessions/{client_id}") => match console.broker.session(first) {
            Some(s) => Ok(session_detail(&s)),
            None => Err(fail(StatusCode::NOT_FOUND, format!("no session {first:?}"))),
        },
        ("DELETE", "/api/v1/clients/{client_id}") => {
            match console.broker.disconnect_client(first) {
                Removal::Removed => {
                    tracing::info!(client_id = %first, "client disconnected from the console");
                    return no_content();
                }
                Removal::NotFound => Err(fail(
                    StatusCode::NOT_FOUND,
                    format!("no client {first:?} is connected"),
                )),
            }
        }
        ("DELETE", "/api/v1/sessions/{client_id}") => match console.broker.delete_session(first) {
            Removal::Removed => {
                tracing::info!(client_id = %first, "session deleted from the console");
                return no_content();
            }
            Removal::NotFound => Err(fail(StatusCode::NOT_FOUND, format!("no session {first:?}"))),
        },
        ("GET", "/api/v1/subscriptions") => subscriptions(console, query),
        ("GET", "/api/v1/retained") => retained(console, query),
        ("DELETE", "/api/v1/retained") => match param(query, "topic") {
            None => Err(fail(StatusCode::BAD_REQUEST, "`topic` is required")),
            Some(topic) => match console.broker.clear_retained(topic) {
                Removal::Removed => return no_content(),
                Removal::NotFound => Err(fail(
                    StatusCode::NOT_FOUND,
                    format!("no retained message on {topic:?}"),
                )),
            },
        },
        ("GET", "/api/v1/topics") => topics(console, query),
        ("GET", "/api/v1/users") => users_list(console),
        ("GET", "/api/v1/users/{name}") => user_get(console, first),
        ("POST", "/api/v1/users") => return user_create(console, body).await,
        ("PUT", "/api/v1/users/{name}") => return user_update(console, first, body).await,
        ("DELETE", "/api/v1/users/{name}") => user_delete(console, first),
        _ => Err(fail(StatusCode::NOT_FOUND, "no such call")),
    };
    match result {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(ApiError(status, why)) => error(status, why),
    }
}

fn no_content() -> Response<Body> {
    let mut response = Response::new(http_body_util::Full::new(bytes::Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

fn overview(console: &Console) -> Value {
    let broker = &console.broker;
    let s = &broker.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let history = console.history.lock().unwrap_or_else(|p| p.into_inner());
    let rates: Vec<Value> = history
        .iter()
        .zip(history.iter().skip(1))
        .map(|(a, b)| {
            let secs = (b.at_ms.saturating_sub(a.at_ms)).max(1) as f64 / 1000.0;
            json!({
                "at_ms": b.at_ms,
                "in": (b.messages_in.saturating_sub(a.messages_in)) as f64 / secs,
                "out": (b.messages_out.saturating_sub(a.messages_out)) as f64 / secs,
                "clients": b.clients,
            })
        })
        .collect();
    drop(history);
    let listeners: Vec<Value> = console
        .listeners
        .iter()
        .map(|(addr, kind)| json!({ "address": addr.to_string(), "kind": format!("{kind:?}").to_lowercase() }))
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": now().saturating_duration_since(broker.started).as_secs(),
        "listeners": listeners,
        "clients_connected": s.clients_connected.load(Ordering::Relaxed),
        "clients_maximum": s.clients_maximum.load(Ordering::Relaxed),
        "sessions": broker.session_count(),
        "subscriptions": broker.subscription_count(),
        "retained": broker.retained_count(),
        "messages_received": load(&s.messages_received),
        "messages_sent": load(&s.messages_sent),
        "messages_dropped": load(&s.messages_dropped),
        "bytes_received": load(&s.bytes_received),
        "bytes_sent": load(&s.bytes_sent),
        "store": console.store_dir.as_ref().map(|dir| json!({
            "bytes": crate::metrics::dir_size(dir),
            "failing": broker.store().is_some_and(|st| st.is_failing()),
        })),
        "bridges": console.bridges.iter().map(|b| json!({
            "name": b.name,
            "remote": b.remote,
            "connected": b.connected.load(Ordering::Relaxed),
            "queued": b.queued(broker),
            "forwarded_out": b.forwarded_out.load(Ordering::Relaxed),
            "forwarded_in": b.forwarded_in.load(Ordering::Relaxed),
            "errors": b.errors.load(Ordering::Relaxed),
            "last_error": b.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        })).collect::<Vec<Value>>(),
        "rates": rates,
    })
}

/// Connected clients (`connected_only`) or all sessions, filtered by `q` (part of the
/// client id), `user`, and for sessions `connected` (true/false).
fn clients(console: &Console, query: &Query, connected_only: bool) -> Result<Value, ApiError> {
    let (offset, limit) = paging(query)?;
    let q = param(query, "q");
    let user = param(query, "user");
    let connected = match param(query, "connected") {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(v) => {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                format!("`connected` must be true or false, not {v:?}"),
            ))
        }
    };
    let connected = if connected_only {
        Some(true)
    } else {
        connected
    };
    let found: Vec<Arc<Session>> = console
        .broker
        .sessions_list()
        .into_iter()
        .filter(|s| q.is_none_or(|q| s.client_id.contains(q)))
        .filter(|s| connected.is_none_or(|c| s.is_connected() == c))
        .filter(|s| user.is_none_or(|u| s.lock().username.as_deref() == Some(u)))
        .collect();
    Ok(page(found, offset, limit, |s| session_summary(s)))
}

fn subscriptions(console: &Console, query: &Query) -> Result<Value, ApiError> {
    let (offset, limit) = paging(query)?;
    let q = param(query, "q");
    let client = param(query, "client_id");
    let mut all: Vec<Value> = Vec::new();
    for session in console.broker.sessions_list() {
        if client.is_some_and(|c| c != &*session.client_id) {
            continue;
        }
        let state = session.lock();
        for (filter, (options, id)) in &state.subscriptions {
            if q.is_some_and(|q| !filter.contains(q)) {
                continue;
            }
            all.push(json!({
                "client_id": &*session.client_id,
                "filter": filter,
                "qos": qos_number(options.qos),
                "no_local": options.no_local,
                "retain_as_published": options.retain_as_published,
                "retain_handling": options.retain_handling as u8,
                "subscription_id": id,
                "connected": state.owner.is_some(),
            }));
        }
    }
    all.sort_by(|a, b| {
        (a["client_id"].as_str(), a["filter"].as_str())
            .cmp(&(b["client_id"].as_str(), b["filter"].as_str()))
    });
    Ok(page(all, offset, limit, Value::clone))
}

fn retained(console: &Console, query: &Query) -> Result<Value, ApiError> {
    let (offset, limit) = paging(query)?;
    let filter = param(query, "filter").unwrap_or("#");
    let Ok(filter) = TopicFilter::new(filter) else {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!("{filter:?} is not a valid topic filter"),
        ));
    };
    let found = console
        .broker
        .retained_list(filter, offset.saturating_add(limit), now());
    let total = console.broker.retained_count();
    let items: Vec<Value> = found
        .iter()
        .skip(offset)
        .map(|m| {
            let (payload, encoding) = payload_json(&m.payload);
            json!({
                "topic": &*m.topic,
                "payload": payload,
                "encoding": encoding,
                "size": m.payload.len(),
                "qos": qos_number(m.qos),
            })
        })
        .collect();
    Ok(json!({ "retained_total": total, "offset": offset, "limit": limit, "items": items }))
}

fn topics(console: &Console, query: &Query) -> Result<Value, ApiError> {
    let (_, limit) = paging(query)?;
    let prefix = param(query, "prefix").unwrap_or("");
    let (list, total) = console.topics.list(prefix, limit);
    let items: Vec<Value> = list
        .iter()
        .map(|(topic, seen)| {
            let (payload, encoding) = payload_json(&seen.last_payload);
            json!({
                "topic": &**topic,
                "count": seen.count,
                "rate": seen.rate,
                "last_payload": payload,
                "encoding": encoding,
                "last_size": seen.last_size,
                "last_retain": seen.last_retain,
                "last_at_ms": ms_since_epoch(seen.last_at),
            })
        })
        .collect();
    Ok(json!({
        "total": total,
        "untracked_messages": console.topics.untracked.load(Ordering::Relaxed),
        "items": items,
    }))
}

fn users_file(console: &Console) -> Result<&crate::access::FileAccess, ApiError> {
    console.users.as_deref().ok_or_else(|| {
        fail(
            StatusCode::CONFLICT,
            "this broker does not take its users from a users file",
        )
    })
}

fn user_json(name: &str, rules: &[Rule]) -> Value {
    json!({ "name": name, "rules": rules })
}

fn users_list(console: &Console) -> Result<Value, ApiError> {
    let file = users_file(console)?.users();
    let items: Vec<Value> = file
        .users
        .iter()
        .map(|u| user_json(&u.name, &u.rules))
        .collect();
    Ok(json!({ "total": items.len(), "items": items }))
}

fn user_get(console: &Console, name: &str) -> Result<Value, ApiError> {
    let file = users_file(console)?.users();
    match file.user(name) {
        Some(u) => Ok(user_json(&u.name, &u.rules)),
        None => Err(fail(StatusCode::NOT_FOUND, format!("no user {name:?}"))),
    }
}

fn bad(why: impl Into<String>) -> ApiError {
    fail(StatusCode::BAD_REQUEST, why)
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > 256 {
        return Err(bad("`name` must be 1 to 256 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(bad("`name` must not contain control characters"));
    }
    Ok(())
}

fn check_password(password: &str) -> Result<(), ApiError> {
    if password.len() < 8 {
        return Err(bad("`password` must be at least 8 characters"));
    }
    if password.len() > 1024 {
        return Err(bad("`password` must be at most 1024 characters"));
    }
    Ok(())
}

/// Rules from JSON: `[{"allow": "publish", "topic": "a/#"}, {"deny": "both", "topic": "b"}]`.
fn parse_rules(value: &Value) -> Result<Vec<Rule>, ApiError> {
    let Some(list) = value.as_array() else {
        return Err(bad("`rules` must be a list of {\"allow\"|\"deny\": \"publish\"|\"subscribe\"|\"both\", \"topic\": \"...\"}"));
    };
    let mut rules = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let rule: Rule = serde_json::from_value(item.clone()).map_err(|e| {
            bad(format!("rule {}: {e} (expected {{\"allow\" or \"deny\": \"publish\", \"subscribe\" or \"both\", \"topic\": \"...\"}})", i + 1))
        })?;
        if rule.allow.is_some() == rule.deny.is_some() {
            return Err(bad(format!(
                "rule {}: needs exactly one of `allow` or `deny`",
                i + 1
            )));
        }
        if TopicFilter::new(&rule.topic).is_err() {
            return Err(bad(format!(
                "rule {}: {:?} is not a valid topic filter",
                i + 1,
                rule.topic
            )));
        }
        rules.push(rule);
    }
    Ok(rules)
}

async fn hash(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e))
}

fn saved(result: Result<Value, String>) -> Result<Value, ApiError> {
    result.map_err(|e| {
        if e.starts_with("no user") {
            fail(StatusCode::NOT_FOUND, e)
        } else if e.starts_with("user ") && e.ends_with("exists") {
            fail(StatusCode::CONFLICT, e)
        } else {
            fail(StatusCode::INTERNAL_SERVER_ERROR, e)
        }
    })
}

async fn user_create(console: &Console, body: Value) -> Response<Body> {
    let result = async {
        let users = users_file(console)?;
        let name = body
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("`name` is required"))?
            .to_owned();
        check_name(&name)?;
        let password = body
            .get("password")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("`password` is required"))?
            .to_owned();
        check_password(&password)?;
        let rules = match body.get("rules") {
            Some(r) => parse_rules(r)?,
            None => Vec::new(),
        };
        if users.users().user(&name).is_some() {
            return Err(fail(StatusCode::CONFLICT, format!("user {name:?} exists")));
        }
        let hash = hash(password).await?;
        saved(users.edit(|file: &mut UsersFile| {
            if file.user(&name).is_some() {
                return Err(format!("user {name:?} exists"));
            }
            file.users.push(crate::access::User {
                name: name.clone(),
                password: hash,
                rules: rules.clone(),
            });
            Ok(user_json(&name, &rules))
        }))
    }
    .await;
    match result {
        Ok(value) => {
            tracing::info!(user = %value["name"], "user created from the console");
            json_response(StatusCode::CREATED, &value)
        }
        Err(ApiError(status, why)) => error(status, why),
    }
}

async fn user_update(console: &Console, name: &str, body: Value) -> Response<Body> {
    let result = async {
        let users = users_file(console)?;
        if !body.is_object() {
            return Err(bad(
                "expected {\"password\": \"...\"} and/or {\"rules\": [...]}",
            ));
        }
        let password = match body.get("password") {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) => {
                check_password(p)?;
                Some(hash(p.clone()).await?)
            }
            Some(_) => return Err(bad("`password` must be a string")),
        };
        let rules = match body.get("rules") {
            None | Some(Value::Null) => None,
            Some(r) => Some(parse_rules(r)?),
        };
        saved(users.edit(|file: &mut UsersFile| {
            let user = file
                .users
                .iter_mut()
                .find(|u| u.name == name)
                .ok_or_else(|| format!("no user {name:?}"))?;
            if let Some(hash) = password {
                user.password = hash;
            }
            if let Some(rules) = rules {
                user.rules = rules;
            }
            Ok(user_json(&user.name, &user.rules))
        }))
    }
    .await;
    match result {
        Ok(value) => {
            tracing::info!(user = %name, "user changed from the console");
            json_response(StatusCode::OK, &value)
        }
        Err(ApiError(status, why)) => error(status, why),
    }
}

fn user_delete(console: &Console, name: &str) -> Result<Value, ApiError> {
    let users = users_file(console)?;
    saved(users.edit(|file: &mut UsersFile| {
        let before = file.users.len();
        file.users.retain(|u| u.name != name);
        if file.users.len() == before {
            return Err(format!("no user {name:?}"));
        }
        Ok(Value::Null)
    }))?;
    // Its clients lose their rules at once; they are also closed, so a removed user does not
    // stay connected.
    let mut closed = 0;
    for session in console.broker.sessions_list() {
        let theirs = session.lock().username.as_deref() == Some(name);
        if theirs && console.broker.disconnect_client(&session.client_id) == Removal::Removed {
            closed += 1;
        }
    }
    tracing::info!(user = %name, clients_closed = closed, "user deleted from the console");
    Ok(json!({ "deleted": name, "clients_closed": closed }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Action;

    #[test]
    fn base64_matches_the_rfc_examples() {
        // RFC 4648 section 10.
        for (raw, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), encoded);
        }
    }

    #[test]
    fn rules_are_checked() {
        let ok = parse_rules(&json!([{ "allow": "publish", "topic": "a/%u/#" }])).unwrap();
        assert_eq!(ok[0].allow, Some(Action::Publish));
        assert!(parse_rules(&json!([{ "allow": "publish" }])).is_err());
        assert!(parse_rules(&json!([{ "allow": "both", "deny": "both", "topic": "a" }])).is_err());
        assert!(parse_rules(&json!([{ "allow": "write", "topic": "a" }])).is_err());
        assert!(parse_rules(&json!([{ "allow": "both", "topic": "a/#/b" }])).is_err());
        assert!(parse_rules(&json!("a")).is_err());
    }
}

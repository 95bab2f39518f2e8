//! CONNECT and DISCONNECT: attaching a connection to a session and letting go of it.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tern_proto::{
    ConnAck, Connect, Disconnect, Packet, Properties, ProtocolVersion, PublishBuf, QoS, ReasonCode,
};
use tracing::info;

use crate::connection::{send, Attached, Close, Connection};
use crate::handle::deliver;
use crate::persist;
use crate::session::Session;
use tern_store::Record;

pub(crate) fn handle_connect(
    conn: &mut Connection,
    c: Connect<'_>,
    now: Instant,
    out: &mut Vec<u8>,
) -> Result<(), Close> {
    let version = c.version;
    let peer = conn.origin.peer.clone();
    let refuse = |out: &mut Vec<u8>, code: ReasonCode, why: &str| {
        // Each refusal says its own reason, in the log and to MQTT 5 clients, so that a
        // connection limit never looks like a password error.
        info!(client_id = %c.client_id, %peer, reason = %code, why, "connection refused");
        let properties = Properties {
            reason_string: version.is_v5().then_some(why),
            ..Properties::default()
        };
        let connack = ConnAck {
            session_present: false,
            code,
            properties,
        };
        send(out, &Packet::ConnAck(connack), version);
        Err(Close::new(code).because(why.to_owned()))
    };
    if let Some(code) = conn.origin.refusal {
        return refuse(out, code, "too many connections from this address");
    }
    if conn.broker.stats.clients_connected.load(Ordering::Relaxed)
        >= conn.broker.limits.max_connections
    {
        return refuse(
            out,
            ReasonCode::SERVER_BUSY,
            "the broker has reached its connection limit",
        );
    }
    // Enhanced authentication (AUTH) is not offered: a method the broker does not know is
    // refused [MQTT-4.12.0-1].
    if c.properties.authentication_method.is_some() {
        return refuse(
            out,
            ReasonCode::BAD_AUTHENTICATION_METHOD,
            "enhanced authentication is not offered",
        );
    }
    let (client_id, assigned) = match assign_client_id(&c) {
        Ok(id) => id,
        Err(code) => return refuse(out, code, "this client identifier cannot be used"),
    };
    let authenticated = match conn.authentication.take() {
        Some(result) => result,
        None => conn.broker.access.authenticate(&conn.credentials(&c)),
    };
    let identity = match authenticated {
        Ok(identity) => identity,
        Err(code) if code == ReasonCode::BAD_USER_NAME_OR_PASSWORD => {
            return refuse(out, code, "bad user name or password");
        }
        Err(code) => return refuse(out, code, "not authorized to connect"),
    };
    // `$bridge/...` sessions belong to the broker's own bridges (which act as `$bridge:...`,
    // a name no client can authenticate as): nobody else may take them over.
    let bridge = identity
        .username
        .as_deref()
        .is_some_and(|u| u.starts_with("$bridge:"));
    if client_id.starts_with("$bridge/") && !bridge {
        return refuse(
            out,
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            "client identifiers starting with $bridge/ are the broker's own",
        );
    }
    // Messages from other cluster nodes carry `$cluster/<node>` as their publisher; a client
    // with such an identifier would have its messages taken for theirs (never forwarded).
    if client_id.starts_with(crate::broker::CLUSTER_PUBLISHER_PREFIX) {
        return refuse(
            out,
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            "client identifiers starting with $cluster/ are the broker's own",
        );
    }
    if let Some(w) = &c.will {
        if !conn.broker.access.may_publish(
            &client_id,
            identity.username.as_deref(),
            w.topic.as_str(),
        ) {
            return refuse(
                out,
                ReasonCode::NOT_AUTHORIZED,
                "not authorized to publish the will's topic",
            );
        }
    }
    let keep_alive = server_keep_alive(conn, c.keep_alive);
    let expiry = session_expiry(conn, &c);
    let will = match c.will.as_ref().map(PublishBuf::from_will).transpose() {
        Ok(w) => w.map(|m| {
            (
                m,
                c.will
                    .and_then(|w| w.properties.will_delay_interval)
                    .unwrap_or(0),
            )
        }),
        Err(_) => return refuse(out, ReasonCode::MALFORMED_PACKET, "the will cannot be kept"),
    };
    let (session, session_present, discarded) =
        take_over_or_create_session(conn, &client_id, c.clean_start, version, expiry, now);
    let needs = persist_session(
        conn,
        &session,
        identity.username.clone(),
        discarded,
        will.as_ref(),
    );

    let mut properties = Properties::default();
    let response_information;
    if version.is_v5() {
        let limits = &conn.broker.limits;
        properties.receive_maximum = Some(limits.receive_maximum);
        properties.maximum_packet_size = Some(limits.max_packet_size);
        properties.topic_alias_maximum = Some(limits.topic_alias_maximum);
        properties.assigned_client_identifier = assigned.then_some(&*client_id);
        properties.server_keep_alive = (keep_alive != c.keep_alive).then_some(keep_alive);
        properties.maximum_qos =
            (limits.maximum_qos != QoS::ExactlyOnce).then_some(limits.maximum_qos);
        properties.retain_available = (!limits.retain_available).then_some(false);
        properties.wildcard_subscription_available =
            (!limits.wildcard_subscriptions).then_some(false);
        properties.shared_subscription_available = (!limits.shared_subscriptions).then_some(false);
        properties.subscription_identifier_available =
            (!limits.subscription_identifiers).then_some(false);
        // [MQTT-3.1.2-28] Response Information only when asked for: the topic prefix this
        // client may use for responses.
        if c.properties.request_response_information == Some(true) {
            response_information = format!("tern/response/{client_id}");
            properties.response_information = Some(&response_information);
        }
        let asked = c.properties.session_expiry_interval.unwrap_or(0);
        properties.session_expiry_interval = (asked != expiry).then_some(expiry);
    }
    let connack = ConnAck {
        session_present,
        code: ReasonCode::SUCCESS,
        properties,
    };
    send(out, &Packet::ConnAck(connack), version);

    let stats = &conn.broker.stats;
    let connected = stats.clients_connected.fetch_add(1, Ordering::Relaxed) + 1;
    stats.connects.fetch_add(1, Ordering::Relaxed);
    conn.broker.connected(&client_id);
    stats
        .clients_maximum
        .fetch_max(connected, Ordering::Relaxed);
    info!(client_id = %client_id, peer = %conn.origin.peer, %version, clean_start = c.clean_start, keep_alive, "client connected");
    {
        let mut state = session.lock();
        state.peer = Some(Arc::from(conn.origin.peer.as_str()));
        state.keep_alive = keep_alive;
        state.connected_since = Some(SystemTime::now());
    }
    conn.attached = Some(Attached {
        session,
        version,
        client_id,
        username: identity.username,
        keep_alive,
        client_receive_maximum: c.properties.receive_maximum.unwrap_or(u16::MAX),
        client_max_packet: c.properties.maximum_packet_size.unwrap_or(u32::MAX),
        aliases: None,
        client_alias_maximum: c.properties.topic_alias_maximum.unwrap_or(0),
        will: will.map(Box::new),
        needs,
        forwarded: 0,
        steps: Vec::new(),
        steps_wait: false,
        held_by: conn.flow_control.then(Vec::new),
    });
    // A resumed session gets what was in flight again, then its queue [MQTT-4.4.0-1].
    let attached = conn
        .attached
        .as_mut()
        .ok_or(Close::new(ReasonCode::UNSPECIFIED_ERROR))?;
    deliver::resend_inflight(attached, now, out);
    deliver::flush(&conn.broker, conn.id, attached, now, out)
}

/// The client identifier to use, and whether the broker assigned it.
fn assign_client_id(c: &Connect<'_>) -> Result<(Arc<str>, bool), ReasonCode> {
    if !c.client_id.is_empty() {
        return Ok((Arc::from(c.client_id), false));
    }
    match c.version {
        // 3.1 requires an identifier of 1 to 23 characters.
        ProtocolVersion::V3_1 => Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID),
        // [MQTT-3.1.3-8] an empty identifier needs Clean Session in 3.1.1.
        ProtocolVersion::V3_1_1 if !c.clean_start => Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID),
        // [MQTT-3.1.3-6] the broker assigns a unique identifier.
        _ => {
            let random = RandomState::new().hash_one(Instant::now());
            Ok((Arc::from(format!("tern-{random:016x}")), true))
        }
    }
}

/// The keep alive the client gets: its own, cut to the broker's maximum if there is one
/// (told to MQTT 5 clients as Server Keep Alive [MQTT-3.2.2-21]).
fn server_keep_alive(conn: &Connection, asked: u16) -> u16 {
    let max = conn.broker.limits.max_keep_alive;
    if max > 0 && (asked == 0 || asked > max) {
        max
    } else {
        asked
    }
}

/// Seconds the session outlives its connection: MQTT 5 asks; 3.1.1's clean session ends with
/// the connection and a persistent one never expires (section 4.1).
fn session_expiry(conn: &Connection, c: &Connect<'_>) -> u32 {
    let asked = if c.version.is_v5() {
        c.properties.session_expiry_interval.unwrap_or(0)
    } else if c.clean_start {
        0
    } else {
        u32::MAX
    };
    asked.min(conn.broker.limits.max_session_expiry)
}

/// Records the session in the store as it now is: its fields (and the will) when it is
/// persistent, everything it holds when it has just become persistent, its end when it no
/// longer is or Clean Start `discarded` a stored one. Returns the store position to wait for.
fn persist_session(
    conn: &Connection,
    session: &Session,
    username: Option<Arc<str>>,
    discarded: bool,
    will: Option<&(PublishBuf, u32)>,
) -> u64 {
    let mut journal = conn.broker.journal();
    let mut state = session.lock();
    state.username = username;
    let (Some(j), Some(store)) = (journal.as_mut(), conn.broker.store()) else {
        return 0;
    };
    let client = &session.client_id;
    if discarded || (state.expiry_interval == 0 && session.is_persistent()) {
        j.push(&Record::SessionDrop { client });
        session.set_persistent(false);
    }
    if state.expiry_interval > 0 {
        if session.is_persistent() {
            j.push(&persist::session_record(store, client, &state, will));
        } else {
            persist::write_whole_session(j, client, &mut state, will);
            session.set_persistent(true);
        }
    }
    drop(state);
    persist::commit(journal)
}

/// Attaches the connection to the client's session: the existing one unless Clean Start asks
/// for a new one [MQTT-3.1.2-4] [MQTT-3.1.2-5]. A connection holding it is told to close
/// [MQTT-3.1.4-3]. Returns the session, Session Present, and whether a stored session was
/// discarded.
fn take_over_or_create_session(
    conn: &Connection,
    client_id: &Arc<str>,
    clean_start: bool,
    version: ProtocolVersion,
    expiry: u32,
    now: Instant,
) -> (Arc<Session>, bool, bool) {
    let mut sessions = conn.broker.sessions();
    let existing = sessions.get(client_id).cloned();
    let kick = |s: &Session| {
        let mut state = s.lock();
        if state.owner.is_some() {
            state.kick = Some(ReasonCode::SESSION_TAKEN_OVER);
        }
        state.owner = Some(conn.id);
        drop(state);
        s.wake.notify_one();
    };
    let mut discarded = false;
    let (session, present) = match existing {
        Some(old) if !clean_start && !old.lock().is_expired(now) => {
            kick(&old);
            (old, true)
        }
        Some(old) => {
            kick(&old);
            discarded = old.is_persistent();
            // Records of the old session's last moments must not touch the new one.
            old.set_persistent(false);
            sessions.remove(client_id);
            drop(sessions);
            conn.broker.drop_subscriptions(&old);
            sessions = conn.broker.sessions();
            let fresh = Arc::new(Session::new(client_id.clone(), version));
            sessions.insert(client_id.clone(), fresh.clone());
            (fresh, false)
        }
        None => {
            let fresh = Arc::new(Session::new(client_id.clone(), version));
            sessions.insert(client_id.clone(), fresh.clone());
            (fresh, false)
        }
    };
    drop(sessions);
    let mut state = session.lock();
    state.owner = Some(conn.id);
    state.kick = None;
    state.close_owner = None;
    state.version = version;
    state.expiry_interval = expiry;
    state.disconnected_at = None;
    drop(state);
    // [MQTT-3.2.2-2] (3.1.1) / [MQTT-3.2.2-2] (5.0): Session Present is 0 with Clean Start.
    (session, present && !clean_start, discarded)
}

pub(crate) fn handle_disconnect(a: &mut Attached, d: Disconnect<'_>) -> Result<(), Close> {
    if let Some(expiry) = d.properties.session_expiry_interval {
        let mut state = a.session.lock();
        // [MQTT-3.14.2-2] a session that was to end with the connection cannot be kept now.
        if state.expiry_interval == 0 && expiry != 0 {
            return Err(Close::new(ReasonCode::PROTOCOL_ERROR).because(
                "a session ending with its connection cannot be given an expiry at DISCONNECT",
            ));
        }
        state.expiry_interval = expiry;
    }
    Ok(())
}

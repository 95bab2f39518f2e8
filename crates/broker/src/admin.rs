//! What an administrator may look at and change while the broker runs: the sessions (connected
//! or not), closing a client, deleting a session, browsing and clearing retained messages.
//!
//! Every change goes through the same paths as the protocol's own (kick, expiry, retain with
//! an empty payload), so the store and the subscription tree stay in step.

use std::sync::Arc;
use std::time::Instant;

use tern_proto::{ReasonCode, TopicFilter, TopicName};
use tern_store::Record;

use crate::broker::Broker;
use crate::message::Message;
use crate::persist;
use crate::session::Session;

/// What became of a request to remove something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Done.
    Removed,
    /// There was nothing by that name.
    NotFound,
}

impl Broker {
    /// Every session, connected or not, sorted by client identifier.
    pub fn sessions_list(&self) -> Vec<Arc<Session>> {
        let mut all: Vec<Arc<Session>> = self.sessions().values().cloned().collect();
        all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        all
    }

    /// The session of `client_id`.
    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        self.sessions().get(client_id).cloned()
    }

    /// Closes the connection attached to `client_id`'s session with Administrative Action
    /// (0x98, told to MQTT 5 clients in a DISCONNECT). Its will is published, and a
    /// persistent session stays. `NotFound` when no connection holds the session.
    pub fn disconnect_client(&self, client_id: &str) -> Removal {
        self.close_client(client_id, ReasonCode::ADMINISTRATIVE_ACTION)
    }

    /// Closes the connection attached to `client_id`'s session with `reason` (told to MQTT 5
    /// clients in a DISCONNECT), as [`Broker::disconnect_client`] does; cluster mode closes
    /// with Session Taken Over (0x8E) when the client connected to another node.
    pub fn close_client(&self, client_id: &str, reason: ReasonCode) -> Removal {
        let Some(session) = self.session(client_id) else {
            return Removal::NotFound;
        };
        let mut state = session.lock();
        if state.owner.is_none() {
            return Removal::NotFound;
        }
        state.close_owner = Some(reason);
        drop(state);
        session.wake.notify_one();
        Removal::Removed
    }

    /// Deletes `client_id`'s session with its subscriptions and queued messages, from memory
    /// and the store. A connection holding it is closed first (Administrative Action), and
    /// the session ends with it.
    pub fn delete_session(&self, client_id: &str) -> Removal {
        let Some(session) = self.session(client_id) else {
            return Removal::NotFound;
        };
        {
            let mut state = session.lock();
            if state.owner.is_some() {
                // The connection's end removes a session whose expiry is 0, store included.
                state.expiry_interval = 0;
                state.close_owner = Some(ReasonCode::ADMINISTRATIVE_ACTION);
                drop(state);
                session.wake.notify_one();
                return Removal::Removed;
            }
        }
        let mut journal = self.journal();
        let removed = {
            let mut sessions = self.sessions();
            match sessions.get(client_id) {
                Some(s) if Arc::ptr_eq(s, &session) && session.lock().owner.is_none() => {
                    sessions.remove(client_id);
                    true
                }
                _ => false,
            }
        };
        if !removed {
            // Taken over between the two looks: the new connection owns it now.
            return Removal::NotFound;
        }
        self.drop_subscriptions(&session);
        if let (Some(j), true) = (journal.as_mut(), session.is_persistent()) {
            session.set_persistent(false);
            j.push(&Record::SessionDrop { client: client_id });
        }
        persist::commit(journal);
        Removal::Removed
    }

    /// Up to `limit` retained messages whose topics `filter` matches, sorted by topic,
    /// expired ones left out.
    pub fn retained_list(
        &self,
        filter: TopicFilter<'_>,
        limit: usize,
        now: Instant,
    ) -> Vec<Arc<Message>> {
        let mut found = self.retained_matching(filter, now);
        found.sort_by(|a, b| a.topic.cmp(&b.topic));
        found.truncate(limit);
        found
    }

    /// Clears the retained message of `topic`, as a retained PUBLISH with an empty payload
    /// would [MQTT-3.3.1-6], in the store too.
    pub fn clear_retained(&self, topic: &str) -> Removal {
        if TopicName::new(topic).is_err() || !self.has_retained(topic) {
            return Removal::NotFound;
        }
        let clear = Arc::new(Message {
            topic: Arc::from(topic),
            payload: crate::Payload::EMPTY,
            qos: tern_proto::QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            publisher: Arc::from("$admin"),
            stored: Default::default(),
            encoded: Default::default(),
            cluster_id: Default::default(),
            expires_at: None,
        });
        let mut journal = self.journal();
        self.retain(&clear, journal.as_mut());
        persist::commit(journal);
        Removal::Removed
    }
}

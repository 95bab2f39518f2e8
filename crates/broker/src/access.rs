//! The authentication and authorization hook: who may connect, publish, subscribe and receive.
//!
//! The broker asks; an [`AccessControl`] answers. [`AllowAll`] lets everyone do everything.
//! `authenticate` may be slow (password hashing): transports call it off the async workers
//! and hand the result to [`crate::Connection::set_authentication`]. The other questions run on
//! the message path and must be quick.

use std::sync::Arc;

use tern_proto::ReasonCode;

/// What a client presented, and where it came from.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The Client Identifier as sent (empty if the broker will assign one).
    pub client_id: String,
    /// The User Name, if any.
    pub username: Option<String>,
    /// The Password, if any.
    pub password: Option<Vec<u8>>,
    /// The peer's address, as text.
    pub peer: String,
    /// The name the client's TLS certificate gives it, when its listener takes certificate
    /// names as user names.
    pub certificate_name: Option<String>,
    /// Whether the listener is bound to a loopback address.
    pub loopback: bool,
    /// The configuration's word on anonymous clients for this listener, if it says one.
    pub allow_anonymous: Option<bool>,
}

/// Who a client is, once authenticated: the name its permissions are looked up by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The user name rules apply to; `None` for an anonymous client.
    pub username: Option<Arc<str>>,
}

/// Decides access. Implementations are shared by every connection.
pub trait AccessControl: Send + Sync {
    /// Accepts or refuses a client; a refusal's code goes into CONNACK (3.1.1 clients get
    /// the return code [`ReasonCode::to_v3_connack`] maps it to).
    fn authenticate(&self, credentials: &Credentials) -> Result<Identity, ReasonCode>;

    /// Whether the client may publish to `topic` (also asked for its will at CONNECT).
    fn may_publish(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool;

    /// Whether the client may subscribe to `filter`.
    fn may_subscribe(&self, client_id: &str, username: Option<&str>, filter: &str) -> bool;

    /// Whether a message on `topic` may be delivered to the client (its subscription was
    /// allowed, but a rule may exclude some topics under it).
    fn may_receive(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool;
}

/// Everyone may do everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl AccessControl for AllowAll {
    fn authenticate(&self, c: &Credentials) -> Result<Identity, ReasonCode> {
        let username = c.certificate_name.as_deref().or(c.username.as_deref());
        Ok(Identity {
            username: username.map(Arc::from),
        })
    }

    fn may_publish(&self, _: &str, _: Option<&str>, _: &str) -> bool {
        true
    }

    fn may_subscribe(&self, _: &str, _: Option<&str>, _: &str) -> bool {
        true
    }

    fn may_receive(&self, _: &str, _: Option<&str>, _: &str) -> bool {
        true
    }
}

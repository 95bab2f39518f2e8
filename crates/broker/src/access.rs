//! The authentication and authorization hook: who may connect, publish and subscribe.
//!
//! The broker asks; an [`AccessControl`] answers. [`AllowAll`] is the default until user
//! accounts exist. Answers must be quick and must not block: they run on the message path.

use tern_proto::ReasonCode;

/// What a client presented in CONNECT.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// The Client Identifier (after assignment).
    pub client_id: &'a str,
    /// The User Name, if any.
    pub username: Option<&'a str>,
    /// The Password, if any.
    pub password: Option<&'a [u8]>,
    /// The peer's address, as text.
    pub peer: &'a str,
}

/// Decides access. Implementations are shared by every connection.
pub trait AccessControl: Send + Sync {
    /// Accepts or refuses a CONNECT; a refusal's code goes into CONNACK (3.1.1 clients get
    /// the return code [`ReasonCode::to_v3_connack`] maps it to).
    fn authenticate(&self, credentials: &Credentials<'_>) -> Result<(), ReasonCode>;

    /// Whether `username` (as authenticated) may publish to `topic`.
    fn may_publish(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool;

    /// Whether `username` may subscribe to `filter`.
    fn may_subscribe(&self, client_id: &str, username: Option<&str>, filter: &str) -> bool;
}

/// Everyone may do everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl AccessControl for AllowAll {
    fn authenticate(&self, _: &Credentials<'_>) -> Result<(), ReasonCode> {
        Ok(())
    }

    fn may_publish(&self, _: &str, _: Option<&str>, _: &str) -> bool {
        true
    }

    fn may_subscribe(&self, _: &str, _: Option<&str>, _: &str) -> bool {
        true
    }
}

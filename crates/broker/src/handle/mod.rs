//! One file per packet handler, as named steps; `deliver` sends queued messages.

pub(crate) mod ack;
pub(crate) mod connect;
pub(crate) mod deliver;
pub(crate) mod publish;
pub(crate) mod subscribe;

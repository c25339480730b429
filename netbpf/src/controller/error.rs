//! The controller's error: what went wrong, in terms the API turns into a status code
//! (invalid request, not found, conflict with the current state) or, for failures of the
//! lower modules, an internal error carrying their message.

use crate::{
    datapath::DatapathError,
    macvlan::DirectError,
    netlink::NetlinkError,
    netns::NetnsError,
    network::InvalidName,
    overlay::store::StoreError,
    publish::{PortsError, PublishError},
    state::StateError,
    uplink::UplinkError,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request asks for something impossible or malformed.
    #[error("{0}")]
    Invalid(String),
    /// It names a network, container or process that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// It collides with the current state (a name taken, a port published, a running
    /// container in the way).
    #[error("{0}")]
    Conflict(String),
    /// What it needs is on its way (the cluster store's view has not caught up): the same
    /// request succeeds later.
    #[error("{0}")]
    NotYet(String),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    #[error(transparent)]
    Sysctl(#[from] crate::sysctl::SysctlError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict(message.into())
    }
    pub fn not_yet(message: impl Into<String>) -> Self {
        Self::NotYet(message.into())
    }
}

impl From<InvalidName> for Error {
    fn from(e: InvalidName) -> Self {
        Self::Invalid(e.to_string())
    }
}

impl From<DirectError> for Error {
    fn from(e: DirectError) -> Self {
        match e {
            DirectError::Netlink(e) => Self::Netlink(e),
            e if e.is_missing_interface() => Self::NotFound(e.to_string()),
            e => Self::Invalid(e.to_string()),
        }
    }
}

impl From<PublishError> for Error {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Invalid { .. } => Self::Invalid(e.to_string()),
            e => Self::Conflict(e.to_string()),
        }
    }
}

impl From<PortsError> for Error {
    fn from(e: PortsError) -> Self {
        match e {
            PortsError::Publish(e) => e.into(),
            PortsError::Datapath(e) => e.into(),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exists(_) => Self::Conflict(e.to_string()),
            e => Self::Store(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_errors_keep_their_message_and_get_a_kind() {
        let e: Error = DirectError::NoSuchParent("eth9".into()).into();
        assert!(matches!(&e, Error::NotFound(m) if m == "parent interface eth9 does not exist"));
        let e: Error = DirectError::ParentDown("eth1".into()).into();
        assert!(matches!(e, Error::Invalid(_)));
        let e: Error = PublishError::InUse("0.0.0.0:80/tcp".into()).into();
        assert!(matches!(&e, Error::Conflict(m) if m.contains("already in use")));
        let e: Error = StoreError::Exists("ovl".into()).into();
        assert!(matches!(e, Error::Conflict(_)));
        let e: Error = StoreError::Unreachable("x".into()).into();
        assert!(matches!(e, Error::Store(_)));
    }
}

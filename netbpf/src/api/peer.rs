//! Who may use the API: root, and members of the group `--group` names (as Docker's `docker`
//! group). The socket's mode says so to the file system (0600, or 0660 with that group),
//! and each request is checked again against the peer's credentials (SO_PEERCRED), so a
//! process that gets past the file mode another way (CAP_DAC_OVERRIDE, a leaked fd of the
//! directory) is still refused.

use axum::{
    extract::{ConnectInfo, Request, State, connect_info::Connected},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
    serve::IncomingStream,
};
use tokio::net::UnixListener;

use super::ApiError;

/// The credentials of the process at the other end of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    uid: u32,
    gid: u32,
    pid: Option<i32>,
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(cred) => Peer {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
            },
            // No credentials: nobody.
            Err(_) => Peer {
                uid: u32::MAX,
                gid: u32::MAX,
                pid: None,
            },
        }
    }
}

/// Root and, if set, this group's members.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    pub group: Option<u32>,
}

impl Access {
    fn allows(self, peer: Peer) -> bool {
        peer.uid == 0
            || self.group.is_some_and(|group| {
                peer.gid == group
                    || peer
                        .pid
                        .is_some_and(|pid| supplementary_groups(pid).contains(&group))
            })
    }
}

/// The `Groups:` of `/proc/PID/status` (SO_PEERCRED carries the primary group only).
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|groups| {
                    groups
                        .split_whitespace()
                        .filter_map(|g| g.parse().ok())
                        .collect()
                })
        })
        .unwrap_or_default()
}

/// The middleware: refuses a peer that is neither root nor in the group, with the API's
/// error body.
pub async fn check(
    State(access): State<Access>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    if access.allows(peer) {
        return next.run(request).await;
    }
    tracing::warn!(
        uid = peer.uid,
        gid = peer.gid,
        pid = peer.pid,
        "API request refused"
    );
    let message = match access.group {
        Some(_) => "permission denied: the netbpf API is for root and the daemon's --group",
        None => "permission denied: the netbpf API is for root (or start the daemon with --group)",
    };
    ApiError {
        status: StatusCode::FORBIDDEN.as_u16(),
        message: message.into(),
    }
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_the_group_only() {
        let peer = |uid, gid| Peer {
            uid,
            gid,
            pid: None,
        };
        let root_only = Access { group: None };
        assert!(root_only.allows(peer(0, 0)));
        assert!(!root_only.allows(peer(1000, 1000)));
        let group = Access { group: Some(999) };
        assert!(group.allows(peer(1000, 999)));
        assert!(!group.allows(peer(1000, 1000)));
        assert!(!group.allows(peer(u32::MAX, u32::MAX)));
    }
}

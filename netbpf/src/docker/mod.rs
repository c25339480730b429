//! The Docker front-end: Docker's (legacy, unmanaged) plugin protocol — libnetwork's remote
//! network driver, JSON over HTTP on a Unix socket — served by the daemon with
//! `--docker-plugin`, so that `docker network create -d netbpf` makes a netbpf network
//! (docs/runtimes.md). Docker finds the socket as `/run/docker/plugins/netbpf.sock`.
//!
//! This first step serves the network calls; the endpoint calls (`CreateEndpoint`, `Join`,
//! …, issue 13) answer with an error naming what is missing, so a `docker run` on such a
//! network fails clearly rather than half-working.

mod protocol;

use axum::{Json, Router, body::Bytes, extract::State, routing::post};
use serde::de::DeserializeOwned;

use crate::{
    controller::{
        Shared,
        specs::{DriverSpec, NetworkSpec},
    },
    network::DEFAULT_NETWORK,
};
use protocol::{Capabilities, CreateNetwork, DeleteNetwork, Empty, Failure, Implements};

/// Where Docker looks for a plugin named `netbpf`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/netbpf.sock";

/// netbpf's name for the network Docker calls `network_id` (Docker never says its own
/// name to a driver): `docker-` and the id's first 12 hex digits, as `docker network ls`
/// shortens it. The netbpf id is Docker's.
pub fn network_name(network_id: &str) -> String {
    format!("docker-{}", &network_id[..network_id.len().min(12)])
}

pub fn router(ctl: Shared) -> Router {
    Router::new()
        .route("/Plugin.Activate", post(activate))
        .route("/NetworkDriver.GetCapabilities", post(capabilities))
        .route("/NetworkDriver.CreateNetwork", post(create_network))
        .route("/NetworkDriver.DeleteNetwork", post(delete_network))
        .route("/NetworkDriver.AllocateNetwork", post(swarm_only))
        .route("/NetworkDriver.FreeNetwork", post(swarm_only))
        .route("/NetworkDriver.DiscoverNew", post(ignored))
        .route("/NetworkDriver.DiscoverDelete", post(ignored))
        .route("/NetworkDriver.CreateEndpoint", post(not_yet))
        .route("/NetworkDriver.Join", post(not_yet))
        .with_state(ctl)
}

/// A request body; Docker sends none for some calls, and its own content type.
fn body<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, Failure> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| Failure::new(format!("malformed request: {e}")))
}

async fn activate() -> Json<Implements> {
    Json(Implements {
        implements: vec!["NetworkDriver".into()],
    })
}

/// Local scope: outside Swarm Docker refuses a global one; an overlay network still spans
/// hosts through netbpf's own cluster store.
async fn capabilities() -> Json<Capabilities> {
    Json(Capabilities {
        scope: "local".into(),
        connectivity_scope: "local".into(),
    })
}

async fn create_network(State(ctl): State<Shared>, bytes: Bytes) -> Result<Json<Empty>, Failure> {
    let req: CreateNetwork = body(&bytes)?;
    let spec = network_spec(&req)?;
    let run = ctl.run(move |c| c.network_create(spec)).await;
    match run.map_err(|e| Failure::new(format!("{e:#}")))? {
        Ok(name) => {
            tracing::info!(
                network = name,
                docker_id = req.network_id,
                "Docker network created"
            );
            Ok(Json(Empty {}))
        }
        Err(error) => Err(Failure::new(error.to_string())),
    }
}

/// The netbpf network for a `CreateNetwork`: Docker's IPAM pool and gateway, its id, and
/// `--internal`.
fn network_spec(req: &CreateNetwork) -> Result<NetworkSpec, Failure> {
    if req.network_id.len() < 12 || !req.network_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Failure::new(format!(
            "invalid network id {:?}",
            req.network_id
        )));
    }
    let pool = req
        .ipv4_data
        .first()
        .ok_or_else(|| Failure::new("netbpf networks need an IPv4 subnet"))?;
    let subnet = pool
        .pool
        .parse::<ipnet::Ipv4Net>()
        .map_err(|e| Failure::new(format!("invalid subnet {:?}: {e}", pool.pool)))?;
    let gateway = match &pool.gateway {
        Some(gw) if !gw.is_empty() => Some(
            gw.split('/')
                .next()
                .unwrap_or(gw)
                .parse()
                .map_err(|e| Failure::new(format!("invalid gateway {gw:?}: {e}")))?,
        ),
        _ => None,
    };
    let name = network_name(&req.network_id);
    if name == DEFAULT_NETWORK {
        return Err(Failure::new("reserved network name"));
    }
    Ok(NetworkSpec {
        name,
        id: Some(req.network_id.clone()),
        driver: DriverSpec::Bridge,
        subnet: Some(subnet),
        gateway,
        ip_range: None,
        internal: req.internal(),
    })
}

async fn delete_network(State(ctl): State<Shared>, bytes: Bytes) -> Result<Json<Empty>, Failure> {
    let req: DeleteNetwork = body(&bytes)?;
    let name = network_name(&req.network_id);
    let run = ctl.run(move |c| c.network_remove(&name)).await;
    match run.map_err(|e| Failure::new(format!("{e:#}")))? {
        Ok(()) => Ok(Json(Empty {})),
        Err(error) => Err(Failure::new(error.to_string())),
    }
}

async fn swarm_only() -> Failure {
    Failure::new("netbpf does not allocate networks for Swarm: its networks are local")
}

async fn ignored() -> Json<Empty> {
    Json(Empty {})
}

async fn not_yet() -> Failure {
    Failure::new(
        "netbpf's Docker driver does not connect containers yet (issue 13): use netbpf attach or the CNI plugin",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_network_requests_become_netbpf_networks() {
        let req: CreateNetwork = serde_json::from_str(
            r#"{"NetworkID":"4f2b0c6ad3e1aa5ce6e3d1f3b5c2a1e0d9c8b7a6f5e4d3c2b1a0998877665544",
                "Options":{"com.docker.network.enable_ipv6":false,"com.docker.network.generic":{"com.docker.network.internal":"true"}},
                "IPv4Data":[{"AddressSpace":"LocalDefault","Pool":"10.77.0.0/24","Gateway":"10.77.0.1/24","AuxAddresses":null}],
                "IPv6Data":[]}"#,
        )
        .unwrap();
        let spec = network_spec(&req).unwrap();
        assert_eq!(spec.name, "docker-4f2b0c6ad3e1");
        assert_eq!(spec.subnet.unwrap().to_string(), "10.77.0.0/24");
        assert_eq!(spec.gateway.unwrap().to_string(), "10.77.0.1");
        assert!(spec.internal);
        let none: CreateNetwork =
            serde_json::from_str(r#"{"NetworkID":"abcdefabcdef12","IPv4Data":[]}"#).unwrap();
        assert!(network_spec(&none).is_err());
    }
}

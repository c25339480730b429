//! The Docker front-end: Docker's (legacy, unmanaged) plugin protocol — libnetwork's remote
//! network driver, JSON over HTTP on a Unix socket — served by the daemon with
//! `--docker-plugin`, so that `docker network create -d netbpf` makes a netbpf network
//! (docs/runtimes.md). Docker finds the socket as `/run/docker/plugins/netbpf.sock`.
//!
//! Networks and endpoints are the controller's (`controller::docker`); this module turns
//! the protocol's JSON into its calls. Docker's embedded DNS keeps serving names on these
//! networks, so netbpf starts none of its own for them.

mod ipam;
mod protocol;

use std::sync::{Arc, Mutex};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRef, State},
    routing::post,
};
use serde::de::DeserializeOwned;

use crate::{
    controller::{
        Controller, Shared,
        docker::network_name,
        docker_ipam::DockerIpam,
        error::Error,
        specs::{DriverSpec, NetworkSpec},
    },
    network::DEFAULT_NETWORK,
    publish::PortSpec,
    state::DockerKey,
};
use protocol::{
    Capabilities, CreateEndpoint, CreateEndpointAnswer, CreateNetwork, DeleteNetwork, Empty,
    EndpointRequest, Failure, Implements, InterfaceName, JoinRequest, JoinResponse, OperInfo,
    StaticRoute,
};

/// Where Docker looks for a plugin named `netbpf`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/netbpf.sock";

/// The pools and addresses Docker holds from netbpf's IPAM driver.
pub(crate) type Ipam = Arc<Mutex<DockerIpam>>;

#[derive(Clone)]
struct Plugin {
    ctl: Shared,
    ipam: Ipam,
}

impl FromRef<Plugin> for Shared {
    fn from_ref(plugin: &Plugin) -> Shared {
        plugin.ctl.clone()
    }
}

impl FromRef<Plugin> for Ipam {
    fn from_ref(plugin: &Plugin) -> Ipam {
        plugin.ipam.clone()
    }
}

pub fn router(ctl: Shared) -> Router {
    let plugin = Plugin {
        ctl,
        ipam: Ipam::default(),
    };
    Router::new()
        .route("/Plugin.Activate", post(activate))
        .route("/IpamDriver.GetCapabilities", post(ipam::capabilities))
        .route(
            "/IpamDriver.GetDefaultAddressSpaces",
            post(ipam::address_spaces),
        )
        .route("/IpamDriver.RequestPool", post(ipam::request_pool))
        .route("/IpamDriver.ReleasePool", post(ipam::release_pool))
        .route("/IpamDriver.RequestAddress", post(ipam::request_address))
        .route("/IpamDriver.ReleaseAddress", post(ipam::release_address))
        .route("/NetworkDriver.GetCapabilities", post(capabilities))
        .route("/NetworkDriver.CreateNetwork", post(create_network))
        .route("/NetworkDriver.DeleteNetwork", post(delete_network))
        .route("/NetworkDriver.AllocateNetwork", post(swarm_only))
        .route("/NetworkDriver.FreeNetwork", post(swarm_only))
        .route("/NetworkDriver.DiscoverNew", post(ignored))
        .route("/NetworkDriver.DiscoverDelete", post(ignored))
        .route("/NetworkDriver.CreateEndpoint", post(create_endpoint))
        .route("/NetworkDriver.EndpointOperInfo", post(oper_info))
        .route("/NetworkDriver.DeleteEndpoint", post(delete_endpoint))
        .route("/NetworkDriver.Join", post(join))
        .route("/NetworkDriver.Leave", post(leave))
        .route(
            "/NetworkDriver.ProgramExternalConnectivity",
            post(program_external),
        )
        .route(
            "/NetworkDriver.RevokeExternalConnectivity",
            post(revoke_external),
        )
        .with_state(plugin)
}

/// A request body; Docker sends none for some calls, and its own content type.
pub(crate) fn body<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, Failure> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| Failure::new(format!("malformed request: {e}")))
}

async fn activate() -> Json<Implements> {
    Json(Implements {
        implements: vec!["NetworkDriver".into(), "IpamDriver".into()],
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

/// Runs `op` on the controller; its error becomes the protocol's `Err` with the message
/// the CLI would print.
pub(crate) async fn on<T: Send + 'static>(
    ctl: &Shared,
    op: impl FnOnce(&mut Controller) -> Result<T, Error> + Send + 'static,
) -> Result<T, Failure> {
    match ctl.run(op).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(Failure::new(error.to_string())),
        Err(error) => Err(Failure::new(format!("{error:#}"))),
    }
}

/// How long a call waits for what is on its way (this host's block of a new overlay
/// network) before it fails: Docker does not retry.
const NOT_YET_PATIENCE: std::time::Duration = std::time::Duration::from_secs(15);

/// [`on`], run again (off the lock) while the controller answers "not yet".
pub(crate) async fn on_retrying<T: Send + 'static>(
    ctl: &Shared,
    op: impl Fn(&mut Controller) -> Result<T, Error> + Send + Sync + 'static,
) -> Result<T, Failure> {
    let op = Arc::new(op);
    let deadline = tokio::time::Instant::now() + NOT_YET_PATIENCE;
    loop {
        let attempt = op.clone();
        match ctl.run(move |c| attempt(c)).await {
            Ok(Err(Error::NotYet(_))) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => return Err(Failure::new(error.to_string())),
            Err(error) => return Err(Failure::new(format!("{error:#}"))),
        }
    }
}

async fn create_network(State(ctl): State<Shared>, bytes: Bytes) -> Result<Json<Empty>, Failure> {
    let req: CreateNetwork = body(&bytes)?;
    let (spec, named) = network_spec(&req)?;
    let (id, name) = (req.network_id.clone(), spec.name.clone());
    let plan = spec.clone();
    let to_make = on(&ctl, move |c| c.docker_network_plan(plan)).await?;
    let made = to_make.is_some();
    if let Some(spec) = to_make {
        // (An overlay is written to the cluster store off the controller lock.)
        if let Err(error) = ctl.network_create(spec.clone()).await {
            // Another host may have defined the overlay a moment ago, before this host's
            // view of the store showed it: then this host joins it.
            if !matches!(spec.driver, DriverSpec::Overlay { .. })
                || !joins_defined(&ctl, spec).await?
            {
                return Err(Failure::new(error.to_string()));
            }
        }
    }
    if named {
        let (for_id, for_name) = (id.clone(), name.clone());
        let saved = on(&ctl, move |c| c.docker_name_network(&for_id, &for_name)).await;
        if let Err(failure) = saved {
            if made {
                let _ = ctl.network_remove(name).await;
            }
            return Err(failure);
        }
    }
    tracing::info!(network = name, docker_id = id, "Docker network created");
    Ok(Json(Empty {}))
}

/// Whether this host's view comes to show overlay `spec` defined (within the plugin's
/// patience) as `spec` asks for it; a different definition is an error.
async fn joins_defined(ctl: &Shared, spec: NetworkSpec) -> Result<bool, Failure> {
    let deadline = tokio::time::Instant::now() + NOT_YET_PATIENCE;
    while tokio::time::Instant::now() < deadline {
        let plan = spec.clone();
        if on(ctl, move |c| c.docker_network_plan(plan))
            .await?
            .is_none()
        {
            return Ok(true);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Ok(false)
}

/// The netbpf network for a `CreateNetwork`: Docker's IPAM pool and gateway, its id,
/// `--internal`, the driver that `-o netbpf.driver=macvlan|ipvlan|overlay` picks with its
/// options (`-o parent=eth1`, `-o vni=…`) as `netbpf network create -d` takes them, and
/// the name `-o netbpf.name=NAME` gives it (an overlay needs one: each host's dockerd has
/// its own id for the network, the cluster store one name). Whether it was named, too.
fn network_spec(req: &CreateNetwork) -> Result<(NetworkSpec, bool), Failure> {
    docker_id("network", &req.network_id)?;
    let (driver, mut options) = req.driver_options()?;
    let named = options.remove(protocol::NAME_OPTION);
    let driver = DriverSpec::parse(driver.as_deref(), &options).map_err(Failure::new)?;
    let overlay = matches!(driver, DriverSpec::Overlay { .. });
    if overlay && named.is_none() {
        return Err(Failure::new(
            "an overlay network needs -o netbpf.name=NAME, the same on every host",
        ));
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
        // Each host's block of an overlay has a gateway of its own.
        _ if overlay => None,
        Some(gw) if !gw.is_empty() => Some(
            gw.split('/')
                .next()
                .unwrap_or(gw)
                .parse()
                .map_err(|e| Failure::new(format!("invalid gateway {gw:?}: {e}")))?,
        ),
        _ => None,
    };
    let name = named
        .clone()
        .unwrap_or_else(|| network_name(&req.network_id));
    if name == DEFAULT_NETWORK {
        return Err(Failure::new("reserved network name"));
    }
    let spec = NetworkSpec {
        name,
        // An overlay has the cluster store's id, the same on every host.
        id: (!overlay).then(|| req.network_id.clone()),
        driver,
        subnet: Some(subnet),
        gateway,
        ip_range: None,
        internal: req.internal(),
    };
    Ok((spec, named.is_some()))
}

async fn delete_network(State(ctl): State<Shared>, bytes: Bytes) -> Result<Json<Empty>, Failure> {
    let req: DeleteNetwork = body(&bytes)?;
    let id = docker_id("network", &req.network_id)?;
    on(&ctl, move |c| c.docker_remove_network(&id)).await?;
    Ok(Json(Empty {}))
}

/// Docker's ids are 64 hex digits; netbpf names links and records after their first 12.
fn docker_id(what: &str, id: &str) -> Result<String, Failure> {
    if id.len() < 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Failure::new(format!("invalid {what} id {id:?}")));
    }
    Ok(id.to_owned())
}

fn key(network_id: &str, endpoint_id: &str) -> Result<DockerKey, Failure> {
    Ok(DockerKey {
        network_id: docker_id("network", network_id)?,
        endpoint_id: docker_id("endpoint", endpoint_id)?,
    })
}

/// Docker's address for the endpoint (CIDR form) and its MAC, if it chose one; the answer
/// carries netbpf's MAC only when Docker left it empty (filling a field Docker set is an
/// error).
async fn create_endpoint(
    State(ctl): State<Shared>,
    bytes: Bytes,
) -> Result<Json<CreateEndpointAnswer>, Failure> {
    let req: CreateEndpoint = body(&bytes)?;
    let address = req.interface.address.split('/').next().unwrap_or_default();
    let ip = address.parse().map_err(|e| {
        Failure::new(format!(
            "netbpf endpoints need an IPv4 address ({address:?}: {e})"
        ))
    })?;
    let given = protocol::parse_mac(&req.interface.mac_address)?;
    let key = key(&req.network_id, &req.endpoint_id)?;
    let chosen = on_retrying(&ctl, move |c| {
        c.docker_create_endpoint(key.clone(), ip, given)
    })
    .await?;
    Ok(Json(CreateEndpointAnswer::with_mac(chosen)))
}

async fn oper_info() -> Json<OperInfo> {
    Json(OperInfo::default())
}

async fn delete_endpoint(State(ctl): State<Shared>, bytes: Bytes) -> Result<Json<Empty>, Failure> {
    let req: EndpointRequest = body(&bytes)?;
    let key = key(&req.network_id, &req.endpoint_id)?;
    on(&ctl, move |c| c.docker_delete_endpoint(&key)).await?;
    Ok(Json(Empty {}))
}

async fn join(State(ctl): State<Shared>, bytes: Bytes) -> Result<Json<JoinResponse>, Failure> {
    let req: JoinRequest = body(&bytes)?;
    let key = key(&req.network_id, &req.endpoint_id)?;
    let sandbox = std::path::PathBuf::from(&req.sandbox_key);
    let joined = on(&ctl, move |c| c.docker_join(&key, sandbox)).await?;
    Ok(Json(JoinResponse {
        interface_name: InterfaceName {
            src_name: joined.interface,
            dst_prefix: "eth".into(),
        },
        gateway: joined.gateway.map(|g| g.to_string()).unwrap_or_default(),
        static_routes: match joined.gateway {
            Some(_) => vec![],
            None => vec![StaticRoute::default_out_of_interface()],
        },
    }))
}

async fn leave(State(ctl): State<Shared>, bytes: Bytes) -> Result<Json<Empty>, Failure> {
    let req: EndpointRequest = body(&bytes)?;
    let key = key(&req.network_id, &req.endpoint_id)?;
    on(&ctl, move |c| c.docker_leave(&key)).await?;
    Ok(Json(Empty {}))
}

/// `docker run -p`: the sandbox's port map, as netbpf's `-p` forms.
async fn program_external(State(ctl): State<Shared>, bytes: Bytes) -> Result<Json<Empty>, Failure> {
    let req: JoinRequest = body(&bytes)?;
    let ports: Vec<PortSpec> = req
        .port_map()?
        .iter()
        .map(|spec| PortSpec::parse(spec).map_err(|e| Failure::new(e.to_string())))
        .collect::<Result<_, _>>()?;
    let key = key(&req.network_id, &req.endpoint_id)?;
    on(&ctl, move |c| c.docker_publish(&key, ports)).await?;
    Ok(Json(Empty {}))
}

async fn revoke_external(State(ctl): State<Shared>, bytes: Bytes) -> Result<Json<Empty>, Failure> {
    let req: EndpointRequest = body(&bytes)?;
    let key = key(&req.network_id, &req.endpoint_id)?;
    on(&ctl, move |c| c.docker_unpublish(&key)).await?;
    Ok(Json(Empty {}))
}

async fn swarm_only() -> Failure {
    Failure::new("netbpf does not allocate networks for Swarm: its networks are local")
}

async fn ignored() -> Json<Empty> {
    Json(Empty {})
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
        let (spec, named) = network_spec(&req).unwrap();
        assert!(!named);
        assert_eq!(spec.name, "docker-4f2b0c6ad3e1");
        assert_eq!(spec.subnet.unwrap().to_string(), "10.77.0.0/24");
        assert_eq!(spec.gateway.unwrap().to_string(), "10.77.0.1");
        assert!(spec.internal);
        let ask: protocol::AddressRequest =
            serde_json::from_str(r#"{"PoolID":"10.1.0.0/24","Address":"","Options":null}"#)
                .unwrap();
        assert!(!ask.is_gateway());
        let gw: protocol::AddressRequest = serde_json::from_str(
            r#"{"PoolID":"10.1.0.0/24","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#,
        )
        .unwrap();
        assert!(gw.is_gateway());
        let none: CreateNetwork =
            serde_json::from_str(r#"{"NetworkID":"abcdefabcdef12","IPv4Data":[]}"#).unwrap();
        assert!(network_spec(&none).is_err());
    }

    #[test]
    fn driver_options_pick_the_netbpf_driver() {
        let with = |generic: &str| -> CreateNetwork {
            serde_json::from_str(&format!(
                r#"{{"NetworkID":"4f2b0c6ad3e1aa5c","Options":{{"com.docker.network.generic":{generic}}},
                    "IPv4Data":[{{"Pool":"192.168.50.0/24","Gateway":"192.168.50.1/24"}}]}}"#
            ))
            .unwrap()
        };
        let (spec, _) = network_spec(&with(
            r#"{"netbpf.driver":"macvlan","parent":"eth1.60","macvlan_mode":"private"}"#,
        ))
        .unwrap();
        assert!(matches!(
            spec.driver,
            DriverSpec::Direct { ref driver, ref parent } if driver == "macvlan" && parent.name == "eth1.60" && parent.mode == "private"
        ));
        let err = |generic: &str| {
            network_spec(&with(generic))
                .unwrap_err()
                .message()
                .to_owned()
        };
        assert_eq!(
            err(r#"{"mtu":"1400"}"#),
            "bridge networks take no -o options"
        );
        assert!(
            err(r#"{"netbpf.driver":"weird"}"#).starts_with("driver \"weird\" is not supported")
        );
        assert!(err(r#"{"netbpf.driver":"overlay"}"#).contains("needs -o netbpf.name=NAME"));
        let (spec, named) = network_spec(&with(
            r#"{"netbpf.driver":"overlay","netbpf.name":"ov","vni":"77"}"#,
        ))
        .unwrap();
        assert!(named && spec.name == "ov" && spec.id.is_none() && spec.gateway.is_none());
        assert!(matches!(
            spec.driver,
            DriverSpec::Overlay { vni: Some(77), .. }
        ));
        assert_eq!(err(r#"{"parent":1}"#), "option \"parent\" must be a string");
        assert_eq!(
            key("4f2b0c6ad3e1aa5c", "abc").unwrap_err().message(),
            "invalid endpoint id \"abc\""
        );
    }

    #[test]
    fn join_answers_a_gateway_or_a_connected_default_route() {
        let answer = |gateway: &str, static_routes| {
            serde_json::to_value(JoinResponse {
                interface_name: InterfaceName {
                    src_name: "nbd12345678".into(),
                    dst_prefix: "eth".into(),
                },
                gateway: gateway.into(),
                static_routes,
            })
            .unwrap()
        };
        let via = answer("10.1.0.1", vec![]);
        assert_eq!(via["Gateway"], "10.1.0.1");
        assert!(via.get("StaticRoutes").is_none());
        let out = answer("", vec![StaticRoute::default_out_of_interface()]);
        assert_eq!(
            out["StaticRoutes"],
            serde_json::json!([{"Destination":"0.0.0.0/0","RouteType":1}])
        );
    }
}

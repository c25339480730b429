//! The remote driver protocol's JSON (moby `libnetwork/drivers/remote/api/api.go`,
//! `libnetwork/docs/remote.md`), hand-written: no maintained Rust crate implements it.

use std::collections::BTreeMap;

use axum::{Json, response::IntoResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Default, Serialize)]
pub struct Empty {}

/// Docker sends `"Options": null` as readily as `{}`.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<serde_json::Map<String, Value>, D::Error> {
    Ok(Option::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Debug, Serialize)]
pub struct Implements {
    #[serde(rename = "Implements")]
    pub implements: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Capabilities {
    #[serde(rename = "Scope")]
    pub scope: String,
    #[serde(rename = "ConnectivityScope")]
    pub connectivity_scope: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct IpamData {
    #[serde(rename = "Pool", default)]
    pub pool: String,
    /// CIDR form (`10.1.0.1/24`).
    #[serde(rename = "Gateway", default)]
    pub gateway: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct CreateNetwork {
    #[serde(rename = "NetworkID", default)]
    pub network_id: String,
    #[serde(rename = "Options", default, deserialize_with = "null_as_empty")]
    pub options: serde_json::Map<String, Value>,
    #[serde(rename = "IPv4Data", default)]
    pub ipv4_data: Vec<IpamData>,
}

impl CreateNetwork {
    /// `--internal`, as Docker passes it to a remote driver: among the generic (`-o`)
    /// options, or as a top-level label.
    pub fn internal(&self) -> bool {
        let truthy = |v: &Value| v.as_bool() == Some(true) || v.as_str() == Some("true");
        let key = "com.docker.network.internal";
        self.options.get(key).is_some_and(truthy)
            || self
                .options
                .get("com.docker.network.generic")
                .and_then(|g| g.get(key))
                .is_some_and(truthy)
    }
}

/// The generic option that picks the netbpf driver of a Docker network (`bridge` if absent).
pub const DRIVER_OPTION: &str = "netbpf.driver";

/// The generic option that names the netbpf network (else `docker-<12 hex>`).
pub const NAME_OPTION: &str = "netbpf.name";

impl CreateNetwork {
    /// The `-o KEY=VALUE` options, without `--internal` (which Docker passes among them):
    /// the netbpf driver they ask for, and that driver's options.
    pub fn driver_options(&self) -> Result<(Option<String>, BTreeMap<String, String>), Failure> {
        let mut options = BTreeMap::new();
        let generic = self.options.get("com.docker.network.generic");
        for (key, value) in generic.and_then(Value::as_object).into_iter().flatten() {
            if key == "com.docker.network.internal" {
                continue;
            }
            let value = value
                .as_str()
                .ok_or_else(|| Failure::new(format!("option {key:?} must be a string")))?;
            options.insert(key.clone(), value.to_owned());
        }
        Ok((options.remove(DRIVER_OPTION), options))
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct DeleteNetwork {
    #[serde(rename = "NetworkID", default)]
    pub network_id: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct EndpointInterface {
    /// CIDR form, from Docker's IPAM.
    #[serde(rename = "Address", default)]
    pub address: String,
    #[serde(rename = "MacAddress", default)]
    pub mac_address: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct CreateEndpoint {
    #[serde(rename = "NetworkID", default)]
    pub network_id: String,
    #[serde(rename = "EndpointID", default)]
    pub endpoint_id: String,
    #[serde(rename = "Interface", default)]
    pub interface: EndpointInterface,
}

/// `CreateEndpoint`'s answer: only what the driver fills in.
#[derive(Debug, Default, Serialize)]
pub struct CreateEndpointAnswer {
    #[serde(rename = "Interface", skip_serializing_if = "Option::is_none")]
    pub interface: Option<MacAnswer>,
}

#[derive(Debug, Default, Serialize)]
pub struct MacAnswer {
    #[serde(rename = "MacAddress")]
    pub mac_address: String,
}

impl CreateEndpointAnswer {
    /// The MAC netbpf chose, if Docker left it to the driver.
    pub fn with_mac(mac: Option<[u8; 6]>) -> Self {
        Self {
            interface: mac.map(|m| MacAnswer {
                mac_address: m.map(|b| format!("{b:02x}")).join(":"),
            }),
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`, or nothing for an empty string.
pub fn parse_mac(text: &str) -> Result<Option<[u8; 6]>, Failure> {
    if text.is_empty() {
        return Ok(None);
    }
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| Failure::new(format!("invalid MAC address {text:?}")))?;
    <[u8; 6]>::try_from(bytes)
        .map(Some)
        .map_err(|_| Failure::new(format!("invalid MAC address {text:?}")))
}

#[derive(Debug, Default, Deserialize)]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID", default)]
    pub network_id: String,
    #[serde(rename = "EndpointID", default)]
    pub endpoint_id: String,
}

/// `Join` and `ProgramExternalConnectivity`: the endpoint, the sandbox, and the sandbox's
/// options (published ports among them).
#[derive(Debug, Default, Deserialize)]
pub struct JoinRequest {
    #[serde(rename = "NetworkID", default)]
    pub network_id: String,
    #[serde(rename = "EndpointID", default)]
    pub endpoint_id: String,
    #[serde(rename = "SandboxKey", default)]
    pub sandbox_key: String,
    #[serde(rename = "Options", default, deserialize_with = "null_as_empty")]
    pub options: serde_json::Map<String, Value>,
}

/// One entry of `com.docker.network.portmap`.
#[derive(Debug, Deserialize)]
struct PortBinding {
    #[serde(rename = "Proto")]
    proto: u8,
    #[serde(rename = "Port")]
    port: u16,
    #[serde(rename = "HostIP", default)]
    host_ip: String,
    #[serde(rename = "HostPort", default)]
    host_port: u16,
    #[serde(rename = "HostPortEnd", default)]
    host_port_end: u16,
}

impl JoinRequest {
    /// The `-p` forms of `com.docker.network.portmap` (`HostPort` 0: a port netbpf picks,
    /// as Docker leaves that to the driver on remote networks).
    pub fn port_map(&self) -> Result<Vec<String>, Failure> {
        let Some(map) = self.options.get("com.docker.network.portmap") else {
            return Ok(vec![]);
        };
        let bindings: Vec<PortBinding> = serde_json::from_value(map.clone())
            .map_err(|e| Failure::new(format!("malformed port map: {e}")))?;
        bindings
            .iter()
            .map(|b| {
                let proto = match b.proto {
                    6 => "tcp",
                    17 => "udp",
                    other => {
                        return Err(Failure::new(format!(
                            "protocol {other} cannot be published (tcp and udp can)"
                        )));
                    }
                };
                let host = match (b.host_port, b.host_port_end) {
                    (0, _) => String::new(),
                    (a, e) if e > a => format!("{a}-{e}"),
                    (a, _) => a.to_string(),
                };
                Ok(format!("{}:{host}:{}/{proto}", b.host_ip, b.port))
            })
            .collect()
    }
}

#[derive(Debug, Serialize)]
pub struct InterfaceName {
    #[serde(rename = "SrcName")]
    pub src_name: String,
    #[serde(rename = "DstPrefix")]
    pub dst_prefix: String,
}

#[derive(Debug, Serialize)]
pub struct JoinResponse {
    #[serde(rename = "InterfaceName")]
    pub interface_name: InterfaceName,
    /// Empty when the endpoint has none (ipvlan L3): Docker then programs no default
    /// route through a gateway and calls no `ProgramExternalConnectivity`.
    #[serde(rename = "Gateway")]
    pub gateway: String,
    #[serde(rename = "StaticRoutes", skip_serializing_if = "Vec::is_empty")]
    pub static_routes: Vec<StaticRoute>,
}

/// A route Docker adds in the sandbox (`RouteType` 1: connected, out of the interface).
#[derive(Debug, Serialize)]
pub struct StaticRoute {
    #[serde(rename = "Destination")]
    pub destination: String,
    #[serde(rename = "RouteType")]
    pub route_type: u8,
}

impl StaticRoute {
    /// The default route straight out of the interface, as Docker's ipvlan L3 sets it.
    pub fn default_out_of_interface() -> Self {
        Self {
            destination: "0.0.0.0/0".into(),
            route_type: 1,
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct OperInfo {
    #[serde(rename = "Value")]
    pub value: serde_json::Map<String, Value>,
}

#[derive(Debug, Serialize)]
pub struct IpamCapabilities {
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    #[serde(rename = "RequiresRequestReplay")]
    pub requires_request_replay: bool,
}

#[derive(Debug, Serialize)]
pub struct AddressSpaces {
    #[serde(rename = "LocalDefaultAddressSpace")]
    pub local: String,
    #[serde(rename = "GlobalDefaultAddressSpace")]
    pub global: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct PoolRequest {
    #[serde(rename = "Pool", default)]
    pub pool: String,
    #[serde(rename = "V6", default)]
    pub v6: bool,
}

#[derive(Debug, Serialize)]
pub struct PoolAnswer {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "Data")]
    pub data: serde_json::Map<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ReleasePool {
    #[serde(rename = "PoolID", default)]
    pub pool_id: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct AddressRequest {
    #[serde(rename = "PoolID", default)]
    pub pool_id: String,
    #[serde(rename = "Address", default)]
    pub address: String,
    #[serde(rename = "Options", default, deserialize_with = "null_as_empty")]
    pub options: serde_json::Map<String, Value>,
}

impl AddressRequest {
    /// Docker asks for the network's gateway with this option.
    pub fn is_gateway(&self) -> bool {
        self.options
            .get("RequestAddressType")
            .and_then(Value::as_str)
            == Some("com.docker.network.gateway")
    }
}

#[derive(Debug, Serialize)]
pub struct AddressAnswer {
    /// CIDR form.
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Data")]
    pub data: serde_json::Map<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ReleaseAddress {
    #[serde(rename = "PoolID", default)]
    pub pool_id: String,
    #[serde(rename = "Address", default)]
    pub address: String,
}

/// A failed call, with the CLI's one-line message (Docker shows it): `{"Err": "..."}` for
/// the network driver, `{"Error": "..."}` for the IPAM driver.
#[derive(Debug)]
pub struct Failure {
    message: String,
    field: &'static str,
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            field: "Err",
        }
    }

    #[cfg(test)]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same failure as the IPAM API reports it.
    pub fn ipam(self) -> Self {
        Self {
            field: "Error",
            ..self
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> axum::response::Response {
        let mut body = serde_json::Map::new();
        body.insert(self.field.into(), Value::String(self.message));
        (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            Json(Value::Object(body)),
        )
            .into_response()
    }
}

//! The CNI front-end's routes: what `netbpf` run as a CNI plugin sends the daemon
//! (`cni::plugin`), and what it gets back to build the CNI result from.
//!
//! ```text
//! POST /cni/add    (CniAddRequest) -> CniAttachmentView
//! POST /cni/del    (CniKeyRequest)           idempotent
//! POST /cni/check  (CniKeyRequest) -> CniAttachmentView
//! POST /cni/gc     (CniGcRequest)  -> names removed
//! ```

use std::path::PathBuf;

use axum::{Json, Router, extract::State, routing::post};
use serde::{Deserialize, Serialize};

use super::{ApiError, server::with};
use crate::{
    controller::{Shared, cni::CniAddSpec},
    publish::PortSpec,
    state::{CniKey, ContainerRecord, State as Records},
};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CniKeyRequest {
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CniAddRequest {
    pub container_id: String,
    pub ifname: String,
    /// The namespace the runtime made (`CNI_NETNS`).
    pub netns: String,
    /// The netbpf network to join.
    pub network: String,
    /// `-p` forms (`[HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTO]`) of the `portMappings`.
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub ip: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CniGcRequest {
    pub network: String,
    /// `cni.dev/valid-attachments`: every attachment the runtime still has.
    pub valid: Vec<CniKeyRequest>,
}

/// One attachment as a CNI result needs it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CniAttachmentView {
    /// netbpf's container name for it (`netbpf ps`, `inspect`).
    pub name: String,
    pub interface: String,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// The namespace path, the interface's `sandbox`.
    pub sandbox: String,
    /// CIDR form, e.g. `10.88.0.2/24`.
    pub address: String,
    pub gateway: String,
    /// Nameservers for the container's resolv.conf: the embedded DNS on user-defined
    /// networks, none on the default bridge (which has no names).
    pub nameservers: Vec<String>,
}

impl From<CniKeyRequest> for CniKey {
    fn from(req: CniKeyRequest) -> Self {
        CniKey {
            container_id: req.container_id,
            ifname: req.ifname,
        }
    }
}

impl TryFrom<CniAddRequest> for CniAddSpec {
    type Error = ApiError;

    fn try_from(req: CniAddRequest) -> Result<Self, ApiError> {
        check_ifname(&req.ifname)?;
        super::requests::check_dns_names("alias", &req.aliases)?;
        let ports = req
            .ports
            .iter()
            .map(|p| PortSpec::parse(p).map_err(|e| ApiError::bad_request(e.to_string())))
            .collect::<Result<_, _>>()?;
        let ip = req
            .ip
            .as_deref()
            .map(|ip| {
                ip.parse()
                    .map_err(|e| ApiError::bad_request(format!("invalid IP address {ip:?}: {e}")))
            })
            .transpose()?;
        Ok(CniAddSpec {
            key: CniKey {
                container_id: req.container_id,
                ifname: req.ifname,
            },
            netns: PathBuf::from(req.netns),
            network: req.network,
            ports,
            aliases: req.aliases,
            ip,
        })
    }
}

/// A Linux interface name: 1 to 15 bytes, no `/`, no whitespace, not `.` or `..`.
fn check_ifname(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid interface name {name:?}: 1 to 15 characters, no '/', ':' or spaces"
        )))
    }
}

/// The attachment's one endpoint, for the CNI result.
pub fn attachment(c: &ContainerRecord, state: &Records) -> Result<CniAttachmentView, ApiError> {
    let ep = c
        .endpoints
        .first()
        .ok_or_else(|| ApiError::internal(format!("container {} has no endpoint", c.name)))?;
    let net = state
        .networks
        .get(&ep.network)
        .ok_or_else(|| ApiError::internal(format!("network {} is gone", ep.network)))?;
    let mac = ep.mac.map(|b| format!("{b:02x}")).join(":");
    let nameservers = if crate::controller::endpoints::uses_embedded_dns(&c.mode, &c.endpoints) {
        vec![std::net::Ipv4Addr::from(netbpf_common::DNS_ADDR).to_string()]
    } else {
        vec![]
    };
    Ok(CniAttachmentView {
        name: c.name.clone(),
        interface: ep.ifname.clone(),
        mac,
        sandbox: c
            .netns
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        address: format!("{}/{}", ep.ip, net.subnet.prefix_len()),
        gateway: net.gateway.to_string(),
        nameservers,
    })
}

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/cni/add", post(add))
        .route("/cni/del", post(del))
        .route("/cni/check", post(check))
        .route("/cni/gc", post(gc))
}

async fn add(
    State(ctl): State<Shared>,
    Json(req): Json<CniAddRequest>,
) -> Result<Json<CniAttachmentView>, ApiError> {
    let spec: CniAddSpec = req.try_into()?;
    with(&ctl, move |c| {
        let record = c.cni_add(spec)?;
        attachment(&record, c.state())
    })
    .await
    .map(Json)
}

async fn del(
    State(ctl): State<Shared>,
    Json(req): Json<CniKeyRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    with(&ctl, move |c| Ok(c.cni_del(&req.into())?))
        .await
        .map(|()| Json(serde_json::json!({})))
}

async fn check(
    State(ctl): State<Shared>,
    Json(req): Json<CniKeyRequest>,
) -> Result<Json<CniAttachmentView>, ApiError> {
    with(&ctl, move |c| {
        let record = c.cni_check(&req.into())?;
        attachment(&record, c.state())
    })
    .await
    .map(Json)
}

async fn gc(
    State(ctl): State<Shared>,
    Json(req): Json<CniGcRequest>,
) -> Result<Json<Vec<String>>, ApiError> {
    let valid: Vec<CniKey> = req.valid.into_iter().map(Into::into).collect();
    with(&ctl, move |c| Ok(c.cni_gc(&req.network, &valid)?))
        .await
        .map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        for good in ["eth0", "net1", "a", "abcdefghijklmno"] {
            assert!(check_ifname(good).is_ok(), "{good}");
        }
        for bad in ["", "abcdefghijklmnop", "a/b", "a b", ".", ".."] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
    }
}

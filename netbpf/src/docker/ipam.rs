//! The IPAM driver half of the Docker plugin (`--ipam-driver netbpf`): the protocol's
//! JSON in and out; the allocation is `controller::docker_ipam`'s.

use axum::{Json, body::Bytes, extract::State};

use super::{
    Ipam, body, on, on_retrying,
    protocol::{
        AddressAnswer, AddressRequest, AddressSpaces, Empty, Failure, IpamCapabilities, PoolAnswer,
        PoolRequest, ReleaseAddress, ReleasePool,
    },
};
use crate::controller::{
    Controller, Shared,
    docker_ipam::{DockerIpam, parse_pool_id},
    error::Error,
};

pub(super) async fn capabilities() -> Json<IpamCapabilities> {
    Json(IpamCapabilities {
        requires_mac_address: false,
        requires_request_replay: false,
    })
}

pub(super) async fn address_spaces() -> Json<AddressSpaces> {
    Json(AddressSpaces {
        local: "netbpf".into(),
        global: "netbpf-global".into(),
    })
}

/// Runs `op` on the controller with the IPAM reservations; errors go in the IPAM API's
/// `Error` field.
async fn on_ipam<T: Send + 'static>(
    ctl: &Shared,
    ipam: &Ipam,
    op: impl FnOnce(&mut Controller, &mut DockerIpam) -> Result<T, Error> + Send + 'static,
) -> Result<T, Failure> {
    let ipam = ipam.clone();
    on(ctl, move |c| op(c, &mut crate::lock::lock(&ipam)))
        .await
        .map_err(Failure::ipam)
}

pub(super) async fn request_pool(
    State(ctl): State<Shared>,
    State(ipam): State<Ipam>,
    bytes: Bytes,
) -> Result<Json<PoolAnswer>, Failure> {
    let req: PoolRequest = body(&bytes)?;
    if req.v6 {
        return Err(Failure::new("netbpf networks are IPv4 only for now").ipam());
    }
    let wanted = match req.pool.as_str() {
        "" => None,
        pool => Some(parse_pool_id(pool).map_err(|e| Failure::new(e.to_string()).ipam())?),
    };
    let pool = on_ipam(&ctl, &ipam, move |c, ipam| {
        c.docker_request_pool(ipam, wanted)
    })
    .await?;
    Ok(Json(PoolAnswer {
        pool_id: pool.to_string(),
        pool: pool.to_string(),
        data: serde_json::Map::new(),
    }))
}

pub(super) async fn release_pool(
    State(ctl): State<Shared>,
    State(ipam): State<Ipam>,
    bytes: Bytes,
) -> Result<Json<Empty>, Failure> {
    let req: ReleasePool = body(&bytes)?;
    let pool = parse_pool_id(&req.pool_id).map_err(|e| Failure::new(e.to_string()).ipam())?;
    on_ipam(&ctl, &ipam, move |c, ipam| {
        c.docker_release_pool(ipam, pool);
        Ok(())
    })
    .await?;
    Ok(Json(Empty {}))
}

pub(super) async fn request_address(
    State(ctl): State<Shared>,
    State(ipam): State<Ipam>,
    bytes: Bytes,
) -> Result<Json<AddressAnswer>, Failure> {
    let req: AddressRequest = body(&bytes)?;
    let pool = parse_pool_id(&req.pool_id).map_err(|e| Failure::new(e.to_string()).ipam())?;
    let wanted = match req.address.as_str() {
        "" => None,
        ip => Some(
            ip.parse()
                .map_err(|e| Failure::new(format!("invalid address {ip:?}: {e}")).ipam())?,
        ),
    };
    let gateway = req.is_gateway();
    // (Retried: an overlay's addresses come from this host's block, which may be on its way.)
    let address = on_retrying(&ctl, move |c| {
        c.docker_request_address(&mut crate::lock::lock(&ipam), pool, wanted, gateway)
    })
    .await
    .map_err(Failure::ipam)?;
    Ok(Json(AddressAnswer {
        address: address.to_string(),
        data: serde_json::Map::new(),
    }))
}

pub(super) async fn release_address(
    State(ctl): State<Shared>,
    State(ipam): State<Ipam>,
    bytes: Bytes,
) -> Result<Json<Empty>, Failure> {
    let req: ReleaseAddress = body(&bytes)?;
    let pool = parse_pool_id(&req.pool_id).map_err(|e| Failure::new(e.to_string()).ipam())?;
    let ip = req
        .address
        .parse()
        .map_err(|e| Failure::new(format!("invalid address {:?}: {e}", req.address)).ipam())?;
    on_ipam(&ctl, &ipam, move |c, ipam| {
        c.docker_release_address(ipam, pool, ip);
        Ok(())
    })
    .await?;
    Ok(Json(Empty {}))
}

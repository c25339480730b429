//! Docker's remote IPAM driver (`--ipam-driver netbpf`): pools and addresses from netbpf's
//! own allocation, so a Docker network without `--subnet` gets a free /24 of netbpf's user
//! pool (never one the host routes or another network has) and its containers the lowest
//! free addresses. Docker asks for the pool before `CreateNetwork` and for each address
//! before `CreateEndpoint`; what it asked for is held here until it releases it or the
//! network records it. Held in memory: Docker asks again for its networks' pools when it
//! starts.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;

use super::{
    Controller,
    error::{Error, Result},
};
use crate::{ipam, network};

/// Pools Docker holds, each with the addresses it holds in it.
#[derive(Debug, Default)]
pub struct DockerIpam {
    pools: BTreeMap<Ipv4Net, BTreeSet<Ipv4Addr>>,
}

/// A pool id is its CIDR: unique, and readable in `docker network inspect`.
pub fn parse_pool_id(id: &str) -> Result<Ipv4Net> {
    id.parse()
        .map_err(|e| Error::invalid(format!("unknown pool {id:?}: {e}")))
}

impl Controller {
    /// `RequestPool`: `wanted` if given (and free of host routes and other networks, unless
    /// it is an existing netbpf network's own, as when Docker asks again), else a free /24.
    pub fn docker_request_pool(
        &mut self,
        ipam: &mut DockerIpam,
        wanted: Option<Ipv4Net>,
    ) -> Result<Ipv4Net> {
        let ours = |net: Ipv4Net| {
            self.state.networks.values().any(|n| n.subnet == net)
                || self
                    .overlay
                    .view()
                    .networks
                    .values()
                    .any(|n| n.subnet == net)
        };
        let pool = match wanted {
            Some(pool) if ours(pool) || ipam.pools.contains_key(&pool) => pool,
            Some(pool) => {
                let host = network::host_subnets(&self.bridge_names())?;
                if let Some(route) = host.iter().find(|r| ipam::overlaps(**r, pool)) {
                    return Err(Error::conflict(format!(
                        "subnet {pool} overlaps {route}, which the host already routes: choose another subnet"
                    )));
                }
                pool
            }
            None => {
                let mut taken = network::host_subnets(&self.bridge_names())?;
                taken.extend(self.state.networks.values().map(|n| n.subnet));
                taken.extend(ipam.pools.keys());
                ipam::free_subnet(network::user_pool(), network::USER_PREFIX_LEN, &taken)
                    .ok_or_else(|| {
                        Error::conflict(format!(
                            "no free /{} left in netbpf's address pool {}",
                            network::USER_PREFIX_LEN,
                            network::user_pool()
                        ))
                    })?
            }
        };
        ipam.pools.entry(pool).or_default();
        Ok(pool)
    }

    /// `RequestAddress`: the gateway (the first address, or the one asked for), or the
    /// lowest address no endpoint, record or earlier request of the pool has — with the
    /// prefix the container is to have: the pool's, or on an overlay its host's block's
    /// (other blocks are reached through the block's gateway, not on the link).
    pub fn docker_request_address(
        &mut self,
        ipam: &mut DockerIpam,
        pool: Ipv4Net,
        wanted: Option<Ipv4Addr>,
        gateway: bool,
    ) -> Result<Ipv4Net> {
        let gateway_addr = pool
            .hosts()
            .next()
            .ok_or_else(|| Error::invalid(format!("pool {pool} has no host addresses")))?;
        let held = ipam
            .pools
            .get_mut(&pool)
            .ok_or_else(|| Error::not_found(format!("pool {pool} was not requested")))?;
        if gateway {
            let ip = wanted.unwrap_or(gateway_addr);
            return Ok(Ipv4Net::new(ip, pool.prefix_len()).expect("a pool's prefix"));
        }
        let (subnet, gateway) = match self.overlay_block_of(pool)? {
            Some(block) => block,
            None => {
                let gateway = self
                    .state
                    .networks
                    .values()
                    .find(|n| n.subnet == pool)
                    .map_or(gateway_addr, |n| n.gateway);
                (pool, gateway)
            }
        };
        let mut in_use: BTreeSet<Ipv4Addr> = held.clone();
        for c in self.state.containers.values() {
            in_use.extend(
                c.endpoints
                    .iter()
                    .map(|ep| ep.ip)
                    .filter(|ip| subnet.contains(ip)),
            );
            in_use.extend(
                c.networks
                    .iter()
                    .filter_map(|r| r.ip)
                    .filter(|ip| subnet.contains(ip)),
            );
        }
        let ip = ipam::Pool {
            subnet,
            gateway,
            range: None,
        }
        .allocate(&in_use, wanted)
        .map_err(|e| Error::conflict(format!("pool {pool}: {e}")))?;
        held.insert(ip);
        Ok(Ipv4Net::new(ip, subnet.prefix_len()).expect("a subnet's prefix"))
    }

    /// When `pool` is an overlay network's subnet: this host's block of it and the block's
    /// gateway, where its containers' addresses come from. An overlay this host holds no
    /// block of yet (the cluster store's view has not caught up) is an error the
    /// plugin retries for a while.
    fn overlay_block_of(&self, pool: Ipv4Net) -> Result<Option<(Ipv4Net, Ipv4Addr)>> {
        let view = self.overlay.view();
        let Some(overlay) = view.networks.values().find(|n| n.subnet == pool) else {
            return Ok(None);
        };
        match self.state.networks.get(&overlay.name) {
            Some(local) if local.overlay.is_some() => Ok(Some((local.subnet, local.gateway))),
            _ => Err(Error::not_yet(format!(
                "this host has no block of overlay network {} yet: try again in a moment",
                overlay.name
            ))),
        }
    }

    /// `ReleaseAddress`.
    pub fn docker_release_address(&mut self, ipam: &mut DockerIpam, pool: Ipv4Net, ip: Ipv4Addr) {
        if let Some(held) = ipam.pools.get_mut(&pool) {
            held.remove(&ip);
        }
    }

    /// `ReleasePool`.
    pub fn docker_release_pool(&mut self, ipam: &mut DockerIpam, pool: Ipv4Net) {
        ipam.pools.remove(&pool);
    }
}

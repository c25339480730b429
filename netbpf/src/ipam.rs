//! Address management: pure functions over subnets and the set of addresses in use.
//!
//! Nothing here touches the kernel or the state file, so every rule is unit-tested below.
//! Leases are not stored separately: the addresses in use on a network are exactly the
//! addresses of its endpoints, so a lease can never outlive the endpoint that held it.

use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnet::Ipv4Net;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("subnet {0} is too small: it needs room for a gateway and at least one container")]
    SubnetTooSmall(Ipv4Net),
    #[error("gateway {gateway} is not inside subnet {subnet}")]
    GatewayOutside { gateway: Ipv4Addr, subnet: Ipv4Net },
    #[error("gateway {0} is the network or broadcast address of its subnet")]
    GatewayReserved(Ipv4Addr),
    #[error("ip range {range} is not inside subnet {subnet}")]
    RangeOutside { range: Ipv4Net, subnet: Ipv4Net },
    #[error("address {ip} is not inside subnet {subnet}")]
    AddressOutside { ip: Ipv4Addr, subnet: Ipv4Net },
    #[error("address {0} is reserved (network, broadcast or gateway address)")]
    AddressReserved(Ipv4Addr),
    #[error("address {0} is already in use")]
    AddressInUse(Ipv4Addr),
    #[error("no free address left in {0}")]
    Exhausted(Ipv4Net),
}

/// The addressing of one network, validated once at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Where automatic allocation picks from; the whole subnet when `None`.
    pub range: Option<Ipv4Net>,
}

impl Pool {
    /// Validates a network's addressing; the gateway defaults to the first host address.
    pub fn new(
        subnet: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        range: Option<Ipv4Net>,
    ) -> Result<Self, IpamError> {
        // Normalise `10.1.2.3/24` to `10.1.2.0/24`, as Docker does.
        let subnet = subnet.trunc();
        if subnet.prefix_len() > 30 {
            return Err(IpamError::SubnetTooSmall(subnet));
        }
        let gateway = match gateway {
            Some(gw) => {
                if !subnet.contains(&gw) {
                    return Err(IpamError::GatewayOutside {
                        gateway: gw,
                        subnet,
                    });
                }
                if gw == subnet.network() || gw == subnet.broadcast() {
                    return Err(IpamError::GatewayReserved(gw));
                }
                gw
            }
            None => next(subnet.network()),
        };
        if let Some(range) = range {
            let range = range.trunc();
            if !subnet.contains(&range) {
                return Err(IpamError::RangeOutside { range, subnet });
            }
        }
        Ok(Self {
            subnet,
            gateway,
            range: range.map(|r| r.trunc()),
        })
    }

    /// Picks `requested` if it is valid and free, otherwise the lowest free address in the
    /// range.
    pub fn allocate(
        &self,
        in_use: &BTreeSet<Ipv4Addr>,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = requested {
            if !self.subnet.contains(&ip) {
                return Err(IpamError::AddressOutside {
                    ip,
                    subnet: self.subnet,
                });
            }
            if self.is_reserved(ip) {
                return Err(IpamError::AddressReserved(ip));
            }
            if in_use.contains(&ip) {
                return Err(IpamError::AddressInUse(ip));
            }
            return Ok(ip);
        }
        let range = self.range.unwrap_or(self.subnet);
        range
            .hosts()
            .find(|ip| !self.is_reserved(*ip) && !in_use.contains(ip))
            .ok_or(IpamError::Exhausted(range))
    }

    fn is_reserved(&self, ip: Ipv4Addr) -> bool {
        ip == self.subnet.network() || ip == self.subnet.broadcast() || ip == self.gateway
    }
}

/// The MAC Docker derives from an IPv4 address: `02:42` then the four address bytes. It is
/// locally administered and unicast, and stable across restarts of the same container.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x42, a, b, c, d]
}

pub fn format_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// The first subnet of length `prefix_len` inside `pool` that overlaps none of `taken`.
pub fn free_subnet(pool: Ipv4Net, prefix_len: u8, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    pool.subnets(prefix_len)
        .ok()?
        .find(|candidate| !taken.iter().any(|t| overlaps(*candidate, *t)))
}

pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn next(ip: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(ip).wrapping_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn gateway_defaults_to_first_address_and_allocation_skips_it() {
        let pool = Pool::new(net("10.9.0.7/24"), None, None).unwrap();
        assert_eq!(pool.subnet, net("10.9.0.0/24"));
        assert_eq!(pool.gateway, ip("10.9.0.1"));
        assert_eq!(pool.allocate(&BTreeSet::new(), None), Ok(ip("10.9.0.2")));
    }

    #[test]
    fn allocation_takes_lowest_free_and_stays_in_range() {
        let pool = Pool::new(net("10.9.0.0/24"), None, Some(net("10.9.0.128/30"))).unwrap();
        let mut used = BTreeSet::new();
        let first = pool.allocate(&used, None).unwrap();
        assert_eq!(first, ip("10.9.0.129"));
        used.insert(first);
        assert_eq!(pool.allocate(&used, None), Ok(ip("10.9.0.130")));
        used.insert(ip("10.9.0.130"));
        assert_eq!(
            pool.allocate(&used, None),
            Err(IpamError::Exhausted(net("10.9.0.128/30")))
        );
        // A released address is handed out again.
        used.remove(&first);
        assert_eq!(pool.allocate(&used, None), Ok(first));
    }

    #[test]
    fn requested_addresses_are_checked() {
        let pool = Pool::new(net("10.9.0.0/24"), Some(ip("10.9.0.254")), None).unwrap();
        let used = BTreeSet::from([ip("10.9.0.5")]);
        assert_eq!(
            pool.allocate(&used, Some(ip("10.9.0.9"))),
            Ok(ip("10.9.0.9"))
        );
        assert_eq!(
            pool.allocate(&used, Some(ip("10.9.0.5"))),
            Err(IpamError::AddressInUse(ip("10.9.0.5")))
        );
        assert_eq!(
            pool.allocate(&used, Some(ip("10.9.0.254"))),
            Err(IpamError::AddressReserved(ip("10.9.0.254")))
        );
        assert_eq!(
            pool.allocate(&used, Some(ip("10.9.0.0"))),
            Err(IpamError::AddressReserved(ip("10.9.0.0")))
        );
        assert!(matches!(
            pool.allocate(&used, Some(ip("10.8.0.9"))),
            Err(IpamError::AddressOutside { .. })
        ));
        // The gateway was moved, so .1 is an ordinary address now.
        assert_eq!(pool.allocate(&used, None), Ok(ip("10.9.0.1")));
    }

    #[test]
    fn bad_pools_are_refused() {
        assert!(matches!(
            Pool::new(net("10.9.0.0/24"), Some(ip("10.8.0.1")), None),
            Err(IpamError::GatewayOutside { .. })
        ));
        assert_eq!(
            Pool::new(net("10.9.0.0/24"), Some(ip("10.9.0.255")), None),
            Err(IpamError::GatewayReserved(ip("10.9.0.255")))
        );
        assert!(matches!(
            Pool::new(net("10.9.0.0/24"), None, Some(net("10.10.0.0/25"))),
            Err(IpamError::RangeOutside { .. })
        ));
        assert_eq!(
            Pool::new(net("10.9.0.0/31"), None, None),
            Err(IpamError::SubnetTooSmall(net("10.9.0.0/31")))
        );
    }

    #[test]
    fn macs_follow_docker() {
        assert_eq!(format_mac(mac_for(ip("172.17.0.2"))), "02:42:ac:11:00:02");
    }

    #[test]
    fn free_subnets_skip_taken_ones() {
        let taken = [net("10.214.0.0/24"), net("10.214.1.128/25")];
        assert_eq!(
            free_subnet(net("10.214.0.0/15"), 24, &taken),
            Some(net("10.214.2.0/24"))
        );
        assert_eq!(free_subnet(net("10.214.0.0/23"), 24, &taken), None);
        assert!(overlaps(net("10.0.0.0/8"), net("10.214.0.0/24")));
        assert!(!overlaps(net("10.213.0.0/16"), net("10.214.0.0/24")));
    }
}

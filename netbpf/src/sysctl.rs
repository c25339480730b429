//! Per-interface kernel settings under `/proc/sys/net`, as `sysctl` would write them, in the
//! daemon's (host) namespace. Interface names may contain dots (`eth1.60`), so a setting is
//! named by its parts rather than by a dotted key.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("cannot set net.{family}.conf.{iface}.{key}={value}: {source}")]
pub struct SysctlError {
    family: &'static str,
    iface: String,
    key: &'static str,
    value: &'static str,
    source: std::io::Error,
}

/// Writes `net.<family>.conf.<iface>.<key> = value`.
pub fn set_iface(
    family: &'static str,
    iface: &str,
    key: &'static str,
    value: &'static str,
) -> Result<(), SysctlError> {
    let path: PathBuf = ["/proc/sys/net", family, "conf", iface, key]
        .iter()
        .collect();
    std::fs::write(&path, value).map_err(|source| SysctlError {
        family,
        iface: iface.to_owned(),
        key,
        value,
        source,
    })
}

/// An interface netbpf made on the host side takes no IPv6 router advertisements and
/// configures no address from them: a container's forged RA must never give the host a
/// route or an address (docs/security.md, guarantee 11).
pub fn refuse_router_advertisements(iface: &str) -> Result<(), SysctlError> {
    set_iface("ipv6", iface, "accept_ra", "0")?;
    set_iface("ipv6", iface, "autoconf", "0")
}

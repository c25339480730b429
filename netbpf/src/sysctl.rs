//! Kernel settings under `/proc/sys/net`, as `sysctl` would write them, in the daemon's
//! (host) namespace: per-interface ones (interface names may contain dots, `eth1.60`, so a
//! setting is named by its parts rather than by a dotted key) and the reserved local ports.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("cannot set {setting}={value}: {source}")]
pub struct SysctlError {
    /// The dotted name, as `sysctl` shows it.
    setting: String,
    value: String,
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
        setting: format!("net.{family}.conf.{iface}.{key}"),
        value: value.to_owned(),
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

const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Adds `min..=max` to `net.ipv4.ip_local_reserved_ports` (keeping what is there), so the
/// kernel never picks those ports when a socket binds to port 0 or connects unbound.
pub fn reserve_local_ports(min: u16, max: u16) -> Result<(), SysctlError> {
    let range = format!("{min}-{max}");
    let error = |source| SysctlError {
        setting: "net.ipv4.ip_local_reserved_ports".into(),
        value: range.clone(),
        source,
    };
    let current = std::fs::read_to_string(RESERVED_PORTS).map_err(error)?;
    if covers(current.trim(), min, max) {
        return Ok(());
    }
    let wanted = match current.trim() {
        "" => range.clone(),
        other => format!("{other},{range}"),
    };
    std::fs::write(RESERVED_PORTS, wanted).map_err(error)
}

/// Whether one range of a reserved-ports list (`"8080,61000-64999"`) holds `min..=max`.
fn covers(list: &str, min: u16, max: u16) -> bool {
    list.split(',').any(|range| {
        let mut ends = range.trim().splitn(2, '-').map(|p| p.parse::<u16>());
        match (ends.next(), ends.next()) {
            (Some(Ok(lo)), Some(Ok(hi))) => lo <= min && max <= hi,
            (Some(Ok(port)), None) => port == min && port == max,
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserved_range_is_found_in_the_list() {
        assert!(covers("61000-64999", 61000, 64999));
        assert!(covers("8080,60000-65000", 61000, 64999));
        assert!(!covers("", 61000, 64999));
        assert!(!covers("61000-62000", 61000, 64999));
        assert!(!covers("8080", 61000, 64999));
    }
}

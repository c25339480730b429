//! Each container's `/etc/resolv.conf` and `/etc/hosts`, kept under its state directory and
//! bind-mounted over the originals in its own mount namespace when it starts.

use std::net::{IpAddr, Ipv4Addr};

/// resolv.conf for a container on a user-defined network: the embedded DNS only, which
/// answers container names and forwards the rest.
pub fn resolv_conf_embedded(search: &[String]) -> String {
    let mut out = format!("nameserver {}\n", super::server::DNS_ADDR);
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    out.push_str("options ndots:0\n");
    out
}

/// resolv.conf for a container on the default bridge (or with no network): the host's
/// resolvers, or its `--dns` servers, as Docker writes it. Loopback resolvers of the host
/// are unreachable from a container: then those of `upstream_conf` (systemd-resolved's).
pub fn resolv_conf_direct(
    host_resolv_conf: &str,
    upstream_conf: &str,
    dns: &[IpAddr],
    search: &[String],
) -> String {
    let mut out = String::new();
    if dns.is_empty() {
        for ns in super::table::direct_nameservers(host_resolv_conf, upstream_conf) {
            out.push_str(&format!("nameserver {}\n", ns.ip()));
        }
    } else {
        for ip in dns {
            out.push_str(&format!("nameserver {ip}\n"));
        }
    }
    let host_search = host_resolv_conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("search"))
        .map(|s| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .unwrap_or_default();
    let search = if search.is_empty() {
        host_search
    } else {
        search.to_vec()
    };
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    out
}

/// /etc/hosts: localhost, the container itself, and its `--link` entries.
pub fn hosts(name: &str, own_ip: Option<Ipv4Addr>, links: &[(Ipv4Addr, String, String)]) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for (ip, alias, target) in links {
        if alias == target {
            out.push_str(&format!("{ip}\t{target}\n"));
        } else {
            out.push_str(&format!("{ip}\t{alias} {target}\n"));
        }
    }
    if let Some(ip) = own_ip {
        out.push_str(&format!("{ip}\t{name}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_resolv_conf_points_at_127_0_0_11() {
        assert_eq!(
            resolv_conf_embedded(&[]),
            "nameserver 127.0.0.11\noptions ndots:0\n"
        );
        assert!(resolv_conf_embedded(&["example.test".into()]).contains("search example.test\n"));
    }

    #[test]
    fn direct_resolv_conf_follows_the_host_or_dns_flags() {
        let host = "search corp.example\nnameserver 127.0.0.53\nnameserver 192.0.2.1\n";
        assert_eq!(
            resolv_conf_direct(host, "", &[], &[]),
            "nameserver 192.0.2.1\nsearch corp.example\n"
        );
        // Only systemd-resolved's stub: the real servers behind it, as Docker does.
        assert_eq!(
            resolv_conf_direct(
                "nameserver 127.0.0.53\n",
                "nameserver 10.20.0.2\n",
                &[],
                &[]
            ),
            "nameserver 10.20.0.2\n"
        );
        let dns = ["192.0.2.53".parse().unwrap()];
        assert_eq!(
            resolv_conf_direct(host, "", &dns, &["example.test".into()]),
            "nameserver 192.0.2.53\nsearch example.test\n"
        );
    }

    #[test]
    fn hosts_have_links_and_self() {
        let links = [(
            "10.213.0.2".parse().unwrap(),
            "webserver".to_owned(),
            "c1".to_owned(),
        )];
        let out = hosts("c4", Some("10.213.0.3".parse().unwrap()), &links);
        assert!(out.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(out.contains("10.213.0.2\twebserver c1\n"), "{out}");
        assert!(out.ends_with("10.213.0.3\tc4\n"), "{out}");
    }
}

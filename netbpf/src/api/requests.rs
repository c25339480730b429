//! Request bodies parsed into the controller's typed specs. Form is checked here (addresses,
//! subnets, port specs, driver options), with the messages the CLI has always printed;
//! what needs the state is checked by the controller.

use std::{path::PathBuf, str::FromStr};

use super::{ApiError, AttachRequest, ConnectRequest, ContainerCreate, NetworkCreate};
use crate::{
    controller::specs::{
        AttachSpec, ConnectSpec, ContainerSpec, DriverSpec, NetnsSource, NetworkSpec,
    },
    network,
    publish::PortSpec,
};

fn parse<T: FromStr>(what: &str, value: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e| ApiError::bad_request(format!("invalid {what} {value:?}: {e}")))
}

fn parse_opt<T: FromStr>(what: &str, value: Option<&str>) -> Result<Option<T>, ApiError>
where
    T::Err: std::fmt::Display,
{
    value.map(|v| parse(what, v)).transpose()
}

/// Names that end up in the DNS and in the container's resolv.conf or hosts file.
pub(super) fn check_dns_names<'a>(
    kind: &'static str,
    names: impl IntoIterator<Item = &'a String>,
) -> Result<(), ApiError> {
    for name in names {
        network::validate_dns_name(kind, name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    Ok(())
}

fn parse_ports(specs: &[String]) -> Result<Vec<PortSpec>, ApiError> {
    specs
        .iter()
        .map(|s| PortSpec::parse(s).map_err(|e| ApiError::bad_request(e.to_string())))
        .collect()
}

impl TryFrom<NetworkCreate> for NetworkSpec {
    type Error = ApiError;

    fn try_from(req: NetworkCreate) -> Result<Self, ApiError> {
        let driver = DriverSpec::parse(req.driver.as_deref(), &req.options)
            .map_err(ApiError::bad_request)?;
        Ok(Self {
            driver,
            subnet: parse_opt("subnet", req.subnet.as_deref())?,
            gateway: parse_opt("gateway", req.gateway.as_deref())?,
            ip_range: parse_opt("ip range", req.ip_range.as_deref())?,
            internal: req.internal,
            name: req.name,
            id: None,
        })
    }
}

impl TryFrom<ContainerCreate> for ContainerSpec {
    type Error = ApiError;

    fn try_from(req: ContainerCreate) -> Result<Self, ApiError> {
        let links = req
            .links
            .iter()
            .map(|link| {
                let (name, alias) = link.split_once(':').unwrap_or((link, link));
                if name.is_empty() || alias.is_empty() {
                    return Err(ApiError::bad_request(format!(
                        "invalid --link {link:?}: use NAME[:ALIAS]"
                    )));
                }
                network::validate_name("container", name)
                    .and_then(|()| network::validate_dns_name("link alias", alias))
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                Ok((name.to_owned(), alias.to_owned()))
            })
            .collect::<Result<_, _>>()?;
        check_dns_names("alias", &req.aliases)?;
        check_dns_names("--dns-search domain", &req.dns_search)?;
        Ok(Self {
            ip: parse_opt("IP address", req.ip.as_deref())?,
            ports: parse_ports(&req.ports)?,
            dns: req
                .dns
                .iter()
                .map(|d| parse("--dns address", d))
                .collect::<Result<_, _>>()?,
            links,
            name: req.name,
            cmd: req.cmd,
            network: req.network,
            auto_remove: req.auto_remove,
            aliases: req.aliases,
            dns_search: req.dns_search,
        })
    }
}

impl TryFrom<AttachRequest> for AttachSpec {
    type Error = ApiError;

    fn try_from(req: AttachRequest) -> Result<Self, ApiError> {
        let netns = match (req.pid, req.netns) {
            (Some(pid), None) => NetnsSource::Pid(pid),
            (None, Some(path)) => NetnsSource::Path(PathBuf::from(path)),
            _ => {
                return Err(ApiError::bad_request(
                    "give exactly one of --pid and --netns",
                ));
            }
        };
        Ok(Self {
            ip: parse_opt("IP address", req.ip.as_deref())?,
            ports: parse_ports(&req.ports)?,
            name: req.name,
            netns,
            network: req.network,
            ifname: None,
            aliases: vec![],
            cni: None,
        })
    }
}

impl TryFrom<ConnectRequest> for ConnectSpec {
    type Error = ApiError;

    fn try_from(req: ConnectRequest) -> Result<Self, ApiError> {
        check_dns_names("alias", &req.aliases)?;
        Ok(Self {
            ip: parse_opt("IP address", req.ip.as_deref())?,
            container: req.container,
            aliases: req.aliases,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_requests_keep_their_messages() {
        let req = |driver: &str, options: &[(&str, &str)]| NetworkCreate {
            name: "n".into(),
            driver: Some(driver.into()),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..NetworkCreate::default()
        };
        let err = |r: NetworkCreate| NetworkSpec::try_from(r).unwrap_err().message;
        assert_eq!(
            err(req("bridge", &[("x", "y")])),
            "bridge networks take no -o options"
        );
        assert!(err(req("weird", &[])).starts_with("driver \"weird\" is not supported"));
        assert!(err(req("macvlan", &[])).contains("needs -o parent=INTERFACE"));
        assert!(err(req("overlay", &[("vni", "0")])).starts_with("invalid vni"));
        let bad_subnet = NetworkCreate {
            subnet: Some("10.1.0.0/33".into()),
            ..req("bridge", &[])
        };
        assert!(err(bad_subnet).starts_with("invalid subnet \"10.1.0.0/33\""));
        let ok = NetworkSpec::try_from(req("macvlan", &[("parent", "eth1")])).unwrap();
        assert!(
            matches!(ok.driver, DriverSpec::Direct { ref parent, .. } if parent.mode == "bridge")
        );
    }

    #[test]
    fn container_requests_parse_links_ports_and_addresses() {
        let spec = ContainerSpec::try_from(ContainerCreate {
            name: "c".into(),
            cmd: vec!["true".into()],
            links: vec!["db".into(), "web:site".into()],
            ports: vec!["8080:80".into()],
            dns: vec!["1.1.1.1".into()],
            ..ContainerCreate::default()
        })
        .unwrap();
        assert_eq!(
            spec.links,
            [("db".into(), "db".into()), ("web".into(), "site".into())]
        );
        assert_eq!(spec.ports[0].container_ports, (80, 80));
        let bad = |req: ContainerCreate| ContainerSpec::try_from(req).unwrap_err().message;
        assert_eq!(
            bad(ContainerCreate {
                links: vec![":x".into()],
                ..ContainerCreate::default()
            }),
            "invalid --link \":x\": use NAME[:ALIAS]"
        );
        assert!(
            bad(ContainerCreate {
                ip: Some("10.0.0.300".into()),
                ..ContainerCreate::default()
            })
            .starts_with("invalid IP address")
        );
        let attach = AttachSpec::try_from(AttachRequest {
            pid: Some(1),
            netns: Some("/x".into()),
            ..AttachRequest::default()
        });
        assert_eq!(
            attach.unwrap_err().message,
            "give exactly one of --pid and --netns"
        );
    }
}

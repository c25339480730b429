//! `netbpf` as a CNI plugin (docs/runtimes.md): a runtime runs the binary with `CNI_COMMAND`
//! set and the network config on stdin. Like Cilium's CNI binary with its agent, it does no
//! networking itself: it forwards the call to the running daemon over its socket (the
//! config's `"socket"`, else `NETBPF_SOCKET`, else the default) and answers on stdout per
//! the CNI spec (1.1, 1.0 and the 0.3/0.4 result layout). The netbpf network is the
//! config's `"network"`, else its `name`. Published ports come from the `portMappings`
//! capability and are published in BPF, so no `portmap` plugin (no iptables) is needed.

use std::{collections::HashMap, io::Read as _, net::IpAddr, path::PathBuf, str::FromStr as _};

use rscni_types::{
    error::Error as CniError,
    ipnet::IpNet,
    legacy,
    types::{
        CNI_ARGS, CNI_COMMAND, CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS, CNIResult,
        CNIResultWithVersion, Cmd, Dns, ErrorResult, Interface, IpConfig, NetConf, Route,
    },
    version::{PluginInfo, SpecVersion},
};
use serde_json::Value;

use crate::api::{
    DaemonInfo,
    client::{Client, ClientError},
    cni::{CniAddRequest, CniAttachmentView, CniGcRequest, CniKeyRequest},
};

/// Where the daemon listens unless the config or `NETBPF_SOCKET` says otherwise.
const DEFAULT_SOCKET: &str = "/run/netbpf/netbpf.sock";

/// Whether this process was started as a CNI plugin.
pub fn invoked_as_plugin() -> bool {
    std::env::var_os(CNI_COMMAND).is_some()
}

/// Runs one CNI command; returns the exit code (an error is also printed as CNI error JSON).
pub fn run() -> i32 {
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let mut version = SpecVersion::CURRENT;
    let result = Cmd::from_str(&env(CNI_COMMAND)).and_then(|cmd| {
        if cmd == Cmd::Version {
            return print(&PluginInfo::default());
        }
        let conf = read_conf()?;
        version = PluginInfo::default().negotiate(&conf, cmd)?;
        let runtime = tokio::runtime::Runtime::new()
            .map_err(|e| CniError::IOFailure(format!("tokio runtime: {e}")))?;
        runtime.block_on(dispatch(cmd, &conf, version))
    });
    match result {
        Ok(()) => 0,
        Err(error) => {
            let _ = print(&ErrorResult::new(version, &error));
            1
        }
    }
}

fn print(value: &impl serde::Serialize) -> Result<(), CniError> {
    let text = serde_json::to_string(value).map_err(|e| CniError::IOFailure(e.to_string()))?;
    println!("{text}");
    Ok(())
}

fn read_conf() -> Result<NetConf, CniError> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| CniError::IOFailure(format!("reading the network config: {e}")))?;
    let conf: NetConf = serde_json::from_str(&text)
        .map_err(|e| CniError::FailedToDecode(format!("the network config: {e}")))?;
    conf.validate_name()?;
    Ok(conf)
}

/// The plugin's own config keys.
fn custom_str(conf: &NetConf, key: &str) -> Option<String> {
    conf.custom
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn client(conf: &NetConf) -> Client {
    let socket = custom_str(conf, "socket")
        .or_else(|| std::env::var("NETBPF_SOCKET").ok())
        .unwrap_or_else(|| DEFAULT_SOCKET.into());
    Client::new(&PathBuf::from(socket))
}

fn network_of(conf: &NetConf) -> String {
    custom_str(conf, "network").unwrap_or_else(|| conf.name.clone())
}

fn required_env(name: &str) -> Result<String, CniError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| CniError::missing_env(&[name]))
}

fn key() -> Result<CniKeyRequest, CniError> {
    Ok(CniKeyRequest {
        container_id: required_env(CNI_CONTAINERID)?,
        ifname: required_env(CNI_IFNAME)?,
    })
}

/// A daemon error as CNI reports it: unreachable is "try again later" (the daemon may be
/// starting), a refusal is an invalid network configuration, with the daemon's one-line
/// message.
fn from_client(error: ClientError) -> CniError {
    match error {
        ClientError::Connect { .. } => CniError::TryAgainLater(error.to_string()),
        ClientError::Api(message) => CniError::Custom(7, message, String::new()),
        other => CniError::IOFailure(other.to_string()),
    }
}

async fn dispatch(cmd: Cmd, conf: &NetConf, version: SpecVersion) -> Result<(), CniError> {
    let client = client(conf);
    match cmd {
        Cmd::Add => {
            let request = add_request(conf)?;
            let view: CniAttachmentView = client
                .post("/cni/add", &request)
                .await
                .map_err(from_client)?;
            print_result(version, result_of(&view)?)
        }
        Cmd::Del => {
            let _: Value = client
                .post("/cni/del", &key()?)
                .await
                .map_err(from_client)?;
            Ok(())
        }
        Cmd::Check => {
            let view: CniAttachmentView = client
                .post("/cni/check", &key()?)
                .await
                .map_err(from_client)?;
            check_against_previous(conf, &view)
        }
        Cmd::Gc => {
            let valid = conf
                .valid_attachments
                .iter()
                .flatten()
                .map(|a| CniKeyRequest {
                    container_id: a.container_id.clone(),
                    ifname: a.ifname.clone(),
                })
                .collect();
            let request = CniGcRequest {
                network: network_of(conf),
                valid,
            };
            let _: Vec<String> = client
                .post("/cni/gc", &request)
                .await
                .map_err(from_client)?;
            Ok(())
        }
        Cmd::Status => match client.get::<DaemonInfo>("/info").await {
            Ok(_) => Ok(()),
            Err(error) => Err(CniError::PluginNotAvailable(error.to_string())),
        },
        Cmd::Version => print(&PluginInfo::default()),
    }
}

fn print_result(version: SpecVersion, result: CNIResult) -> Result<(), CniError> {
    if version.is_legacy() {
        print(&legacy::CNIResult::new(version, result))
    } else {
        print(&CNIResultWithVersion::new(version, result))
    }
}

/// `K=V;K=V` from `CNI_ARGS`.
fn cni_args() -> HashMap<String, String> {
    std::env::var(CNI_ARGS)
        .unwrap_or_default()
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn add_request(conf: &NetConf) -> Result<CniAddRequest, CniError> {
    let key = key()?;
    let network = network_of(conf);
    let args = cni_args();
    let runtime = conf.runtime_config.as_ref();
    let ports = runtime
        .map(|r| r.port_mappings.iter().map(port_spec).collect())
        .unwrap_or_default();
    // Podman passes the container's name as K8S_POD_NAME, and more names per network
    // through the `aliases` capability: all of them answer in the embedded DNS.
    let mut aliases: Vec<String> = args.get("K8S_POD_NAME").cloned().into_iter().collect();
    if let Some(names) = runtime
        .and_then(|r| r.custom.get("aliases"))
        .and_then(|a| a.get(&network))
        .and_then(Value::as_array)
    {
        aliases.extend(names.iter().filter_map(Value::as_str).map(str::to_owned));
    }
    aliases.dedup();
    // A fixed address: `IP=` in CNI_ARGS, or the first of the `ips` capability.
    let ip = args.get("IP").cloned().or_else(|| {
        runtime
            .and_then(|r| r.custom.get("ips"))
            .and_then(Value::as_array)
            .and_then(|ips| ips.first())
            .and_then(Value::as_str)
            .map(|ip| ip.split('/').next().unwrap_or(ip).to_owned())
    });
    Ok(CniAddRequest {
        container_id: key.container_id,
        ifname: key.ifname,
        netns: required_env(CNI_NETNS)?,
        network,
        ports,
        aliases,
        ip,
    })
}

/// A `portMappings` entry in the `-p` form the daemon parses.
fn port_spec(p: &rscni_types::types::PortMapping) -> String {
    let proto = match p.protocol {
        Some(rscni_types::types::Protocol::Udp) => "udp",
        Some(rscni_types::types::Protocol::Sctp) => "sctp",
        _ => "tcp",
    };
    let host_ip = p
        .custom
        .get("hostIP")
        .and_then(Value::as_str)
        .filter(|ip| !ip.is_empty());
    match host_ip {
        Some(ip) => format!("{ip}:{}:{}/{proto}", p.host_port, p.container_port),
        None => format!("{}:{}/{proto}", p.host_port, p.container_port),
    }
}

fn result_of(view: &CniAttachmentView) -> Result<CNIResult, CniError> {
    let bad = |what: &str, e: String| CniError::IOFailure(format!("the daemon's {what}: {e}"));
    let address: IpNet = view
        .address
        .parse()
        .map_err(|e| bad("address", format!("{e}")))?;
    let gateway: IpAddr = view
        .gateway
        .parse()
        .map_err(|e| bad("gateway", format!("{e}")))?;
    let default: IpNet = "0.0.0.0/0".parse().expect("valid constant");
    Ok(CNIResult {
        interfaces: vec![Interface {
            name: view.interface.clone(),
            mac: view.mac.clone(),
            mtu: None,
            sandbox: Some(view.sandbox.clone()),
            socket_path: None,
            pci_id: None,
        }],
        ips: vec![IpConfig {
            interface: Some(0),
            address,
            gateway: Some(gateway),
        }],
        routes: vec![Route {
            dst: default,
            gw: Some(gateway),
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }],
        dns: Some(Dns {
            nameservers: view.nameservers.clone(),
            ..Dns::default()
        }),
    })
}

/// `CHECK`: the attachment must still have the address the runtime was given.
fn check_against_previous(conf: &NetConf, view: &CniAttachmentView) -> Result<(), CniError> {
    let Some(previous) = &conf.prev_result else {
        return Ok(());
    };
    let now = result_of(view)?;
    let had: Vec<IpNet> = previous.ips.iter().map(|ip| ip.address).collect();
    if now.ips.iter().all(|ip| had.contains(&ip.address)) {
        Ok(())
    } else {
        Err(CniError::Custom(
            7,
            format!(
                "interface {} now has {}, not the address of the previous result",
                view.interface, view.address
            ),
            String::new(),
        ))
    }
}

//! The command line: `netbpf daemon` ([`daemon`]) and the client commands, mirroring
//! Docker's verbs.

pub mod cluster;
pub mod cni;
pub mod daemon;
mod loops;
mod output;

use std::{io::Write as _, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use hyper::Method;

use crate::api::{
    AttachRequest, ConnectRequest, ContainerCreate, ContainerSummary, ContainerView, DaemonInfo,
    DisconnectRequest, ExecRequest, ExecResponse, NetworkCreate, NetworkView, StatsAnswer,
    StatsView, WaitResponse,
    client::{Client, ClientError},
};
use daemon::DaemonArgs;

pub const DEFAULT_SOCKET: &str = "/run/netbpf/netbpf.sock";

#[derive(Parser, Debug)]
#[command(
    name = "netbpf",
    version,
    about = "eBPF data plane for container networks"
)]
pub struct Cli {
    /// The daemon's API socket.
    #[arg(long, global = true, env = "NETBPF_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon (needs root): owns programs, maps, bridges, namespaces and state.
    Daemon(DaemonArgs),
    /// Manage networks.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Start a container: a command in its own network and mount namespaces.
    Run(RunArgs),
    /// Wire a namespace someone else made (a process or a namespace file) into a network.
    Attach(AttachArgs),
    /// Run a command inside a running container's namespaces.
    Exec {
        name: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// List containers.
    Ps {
        /// Show stopped containers too.
        #[arg(short, long)]
        all: bool,
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// List a container's published ports, like `docker port`.
    Port { name: String },
    /// Show a container as JSON: namespace, pid, networks with IP/MAC/interface, counters.
    Inspect { name: String },
    /// Print a container's output.
    Logs {
        name: String,
        #[arg(short, long)]
        follow: bool,
    },
    /// Stop containers (SIGTERM, then SIGKILL after --time seconds); releases their IPs.
    Stop {
        #[arg(short, long, default_value_t = 10)]
        time: u64,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Start stopped containers again (they get addresses anew).
    Start {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove containers.
    Rm {
        /// Stop running containers first.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Per-endpoint counters read from the BPF maps.
    Stats {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show the daemon's settings and the ids of its BPF programs and maps.
    Info,
}

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a network: bridge (the default), macvlan or ipvlan.
    Create {
        #[arg(short, long, default_value = "bridge")]
        driver: String,
        /// Driver option KEY=VALUE: parent=IFACE or IFACE.VLAN (macvlan, ipvlan; a missing
        /// VLAN sub-interface is created), macvlan_mode=bridge|private|vepa|passthru,
        /// ipvlan_mode=l2|l3|l3s.
        #[arg(short = 'o', long = "opt", value_parser = parse_key_value)]
        opt: Vec<(String, String)>,
        #[arg(long)]
        subnet: Option<String>,
        #[arg(long)]
        gateway: Option<String>,
        #[arg(long)]
        ip_range: Option<String>,
        /// No traffic leaves the network's subnet.
        #[arg(long)]
        internal: bool,
        name: String,
    },
    /// List networks.
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show networks as JSON, like `docker network inspect`.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove networks (refused while containers use them).
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Connect a container to a network (a new interface, live if it runs).
    Connect {
        #[arg(long)]
        ip: Option<String>,
        /// A DNS name for the container on this network.
        #[arg(long)]
        alias: Vec<String>,
        network: String,
        container: String,
    },
    /// Disconnect a container from a network.
    Disconnect { network: String, container: String },
    /// Remove all networks no container uses.
    Prune,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Run in the background and print the container id.
    #[arg(short, long)]
    detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    #[arg(long)]
    name: String,
    /// A network name, `bridge`, `host`, `none` or `container:NAME`.
    #[arg(long)]
    network: Option<String>,
    #[arg(long)]
    ip: Option<String>,
    /// Publish a port: [HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/tcp|/udp].
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
    /// A DNS name for the container on its (user-defined) network.
    #[arg(long)]
    network_alias: Vec<String>,
    /// NAME[:ALIAS]: a hosts entry for another container (legacy, default bridge).
    #[arg(long)]
    link: Vec<String>,
    /// Upstream DNS servers instead of the host's.
    #[arg(long)]
    dns: Vec<String>,
    /// DNS search domains.
    #[arg(long)]
    dns_search: Vec<String>,
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct AttachArgs {
    #[arg(long)]
    name: String,
    #[arg(long, conflicts_with = "netns", required_unless_present = "netns")]
    pid: Option<i32>,
    #[arg(long)]
    netns: Option<String>,
    #[arg(long)]
    network: Option<String>,
    #[arg(long)]
    ip: Option<String>,
    /// Publish a port, as for `run`.
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// Runs a client command; returns the process exit code.
/// `KEY=VALUE`, as `-o` takes it.
fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// Runs one client command. One match arm per command, each a request and its output: the
/// length is the number of commands, and splitting it would scatter that one table.
pub async fn run_client(socket: PathBuf, command: Command) -> Result<i32, ClientError> {
    let client = Client::new(&socket);
    match command {
        Command::Daemon(_) => unreachable!("handled by main"),
        Command::Network(cmd) => return network(&client, cmd).await,
        Command::Run(args) => return run(&client, args).await,
        Command::Attach(args) => {
            let req = AttachRequest {
                name: args.name,
                pid: args.pid,
                netns: args.netns,
                network: args.network,
                ip: args.ip,
                ports: args.publish,
            };
            let view: ContainerView = client
                .call(Method::POST, "/containers/attach", Some(&req))
                .await?;
            println!("{}", view.id);
        }
        Command::Exec { name, cmd } => {
            let out: ExecResponse = client
                .call(
                    Method::POST,
                    &format!("/containers/{name}/exec"),
                    Some(&ExecRequest { cmd }),
                )
                .await?;
            print!("{}", out.stdout);
            eprint!("{}", out.stderr);
            return Ok(out.exit_code);
        }
        Command::Ps { all, quiet, format } => {
            let list: Vec<ContainerSummary> = client.get(&format!("/containers?all={all}")).await?;
            output::containers(&list, quiet, format);
        }
        Command::Port { name } => {
            let ports: Vec<String> = client.get(&format!("/containers/{name}/port")).await?;
            for port in ports {
                println!("{port}");
            }
        }
        Command::Inspect { name } => {
            let view: ContainerView = client.get(&format!("/containers/{name}")).await?;
            output::json(&view);
        }
        Command::Logs { name, follow } => {
            client
                .stream(
                    &format!("/containers/{name}/logs?follow={follow}"),
                    |chunk| {
                        let mut stdout = std::io::stdout().lock();
                        let _ = stdout.write_all(chunk).and_then(|()| stdout.flush());
                    },
                )
                .await?;
        }
        Command::Stop { time, names } => {
            per_name(&client, Method::POST, names, |n| {
                format!("/containers/{n}/stop?timeout={time}")
            })
            .await?;
        }
        Command::Start { names } => {
            per_name(&client, Method::POST, names, |n| {
                format!("/containers/{n}/start")
            })
            .await?;
        }
        Command::Rm { force, names } => {
            per_name(&client, Method::DELETE, names, |n| {
                format!("/containers/{n}?force={force}")
            })
            .await?;
        }
        Command::Stats { format } => {
            let stats: StatsView = client.get::<StatsAnswer>("/stats").await?.into();
            output::stats(&stats, format);
            if format == Format::Table {
                let info: DaemonInfo = client.get("/info").await?;
                match (&info.uplink, &info.nat_mode) {
                    (Some(uplink), Some(mode)) => println!(
                        "uplink {uplink}: published ports and masquerade in {mode} mode, {} tracked flows, {} unconfirmed",
                        info.tracked_flows, info.unconfirmed_flows
                    ),
                    _ => println!("no uplink: published ports only for the host and containers"),
                }
            }
        }
        Command::Info => {
            let info: DaemonInfo = client.get("/info").await?;
            output::json(&info);
        }
    }
    Ok(0)
}

/// One request per name, printing each name as it succeeds (Docker's multi-name verbs);
/// stops at the first error.
async fn per_name(
    client: &Client,
    method: Method,
    names: Vec<String>,
    path: impl Fn(&str) -> String,
) -> Result<(), ClientError> {
    for name in names {
        client
            .call::<serde_json::Value>(method.clone(), &path(&name), None::<&()>)
            .await?;
        println!("{name}");
    }
    Ok(())
}

/// `netbpf network …`: one arm per subcommand, as in [`run_client`].
async fn network(client: &Client, cmd: NetworkCommand) -> Result<i32, ClientError> {
    let none = None::<&()>;
    match cmd {
        NetworkCommand::Create {
            driver,
            opt,
            subnet,
            gateway,
            ip_range,
            internal,
            name,
        } => {
            let req = NetworkCreate {
                name,
                driver: Some(driver),
                subnet,
                gateway,
                ip_range,
                internal,
                options: opt.into_iter().collect(),
            };
            let view: NetworkView = client.call(Method::POST, "/networks", Some(&req)).await?;
            println!("{}", view.id);
        }
        NetworkCommand::Ls { format } => {
            let list: Vec<NetworkView> = client.get("/networks").await?;
            output::networks(&list, format);
        }
        NetworkCommand::Inspect { names } => {
            let mut views = vec![];
            for name in names {
                views.push(
                    client
                        .get::<NetworkView>(&format!("/networks/{name}"))
                        .await?,
                );
            }
            output::json(&views);
        }
        NetworkCommand::Rm { names } => {
            per_name(client, Method::DELETE, names, |n| format!("/networks/{n}")).await?;
        }
        NetworkCommand::Connect {
            ip,
            alias,
            network,
            container,
        } => {
            let req = ConnectRequest {
                container,
                ip,
                aliases: alias,
            };
            client
                .call::<()>(
                    Method::POST,
                    &format!("/networks/{network}/connect"),
                    Some(&req),
                )
                .await?;
        }
        NetworkCommand::Disconnect { network, container } => {
            let req = DisconnectRequest { container };
            client
                .call::<()>(
                    Method::POST,
                    &format!("/networks/{network}/disconnect"),
                    Some(&req),
                )
                .await?;
        }
        NetworkCommand::Prune => {
            let removed: Vec<String> = client.call(Method::POST, "/networks/prune", none).await?;
            for name in removed {
                println!("{name}");
            }
        }
    }
    Ok(0)
}

/// `run`: with `-d`, print the id; otherwise follow the output and exit with the
/// command's status. For attached `--rm` runs the client removes the container after reading
/// the status, so a fast command's output and status are never lost to an early removal.
async fn run(client: &Client, args: RunArgs) -> Result<i32, ClientError> {
    let req = ContainerCreate {
        name: args.name,
        cmd: args.cmd,
        network: args.network,
        ip: args.ip,
        auto_remove: args.rm && args.detach,
        ports: args.publish,
        aliases: args.network_alias,
        links: args.link,
        dns: args.dns,
        dns_search: args.dns_search,
    };
    let view: ContainerView = client.call(Method::POST, "/containers", Some(&req)).await?;
    if args.detach {
        println!("{}", view.id);
        return Ok(0);
    }
    client
        .stream(
            &format!("/containers/{}/logs?follow=true", view.id),
            |chunk| {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(chunk).and_then(|()| stdout.flush());
            },
        )
        .await?;
    let wait: WaitResponse = client
        .call(
            Method::POST,
            &format!("/containers/{}/wait", view.id),
            None::<&()>,
        )
        .await?;
    if args.rm {
        client
            .call::<()>(
                Method::DELETE,
                &format!("/containers/{}", view.id),
                None::<&()>,
            )
            .await?;
    }
    Ok(wait.exit_code.unwrap_or(255))
}

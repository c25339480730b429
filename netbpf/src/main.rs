use clap::Parser as _;
use netbpf::cli::{Cli, Command};

fn main() {
    // Run by a container runtime as its CNI plugin: no command line, the call is in the
    // environment and on stdin.
    if netbpf::cli::cni::invoked_as_plugin() {
        std::process::exit(netbpf::cli::cni::run());
    }
    // A container process waiting until the daemon has recorded it.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(netbpf::container::START_GATE) {
        netbpf::container::run_start_gate(&args[1..]);
    }
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let code = match cli.command {
        Command::Daemon(args) => {
            let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            match runtime.block_on(netbpf::cli::daemon::run(cli.socket, args)) {
                Ok(()) => 0,
                Err(error) => {
                    eprintln!("Error: {error:#}");
                    1
                }
            }
        }
        command => match runtime.block_on(netbpf::cli::run_client(cli.socket, command)) {
            Ok(code) => code,
            Err(error) => {
                eprintln!("Error: {error}");
                1
            }
        },
    };
    std::process::exit(code);
}

//! `gatehouse`: the bastion daemon and its admin commands.
//!
//! `serve` runs the daemon; `check` validates a config; `hosts` shows who may reach what;
//! `ssh-config` writes a user's `~/.ssh/config` block; `sessions` shows who is in now; `audit`
//! sums up an audit log; `login` gets a certificate with the user's AWS identity; `demo` runs the daemon on the embedded
//! demo config with generated keys; `event-pattern` prints the EventBridge pattern of the IAM
//! change events it reads. Config errors exit with 64 and `file:line:column: message` lines,
//! before any socket is bound.

#![forbid(unsafe_code)]

// AWS as the source of truth, behind the default `aws` feature; without it, the same
// interface refusing `[aws]` configs, so the demo builds without the AWS SDK.
mod audit_summary;
#[cfg(feature = "aws")]
mod aws;
#[cfg(not(feature = "aws"))]
#[path = "no_aws.rs"]
mod aws;
mod demo;
mod hosts;
#[cfg(feature = "aws")]
mod login;
mod serve;
mod sessions;
mod ssh_config;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status for an invalid config or command line (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "A hardened SSH jump host: tunnels only, no shell."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bastion.
    Serve {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and print a summary; exit 64 on any error.
    Check {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show which hosts and ports each user may reach.
    Hosts {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Only this user.
        #[arg(long, short)]
        user: Option<String>,
    },
    /// Print the ~/.ssh/config block for one user: the bastion, a ProxyJump host per target
    /// the user may reach, and LocalForward tunnels for their other ports.
    SshConfig {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The user (login name, or IAM user name on AWS).
        #[arg(long, short)]
        user: String,
        /// How clients reach the bastion: HOST or HOST:PORT.
        #[arg(long)]
        bastion: String,
        /// The bastion's Host alias in the generated config.
        #[arg(long, default_value = "bastion")]
        alias: String,
        /// IdentityFile to use (default: ssh's own choice).
        #[arg(long)]
        identity_file: Option<PathBuf>,
        /// UserKnownHostsFile to use (default: ~/.ssh/known_hosts).
        #[arg(long)]
        known_hosts: Option<PathBuf>,
        /// User name on the target hosts (default: the local user name).
        #[arg(long)]
        target_user: Option<String>,
    },
    /// Show who is in now: each live session on this bastion (user, source, since when) and its
    /// open tunnels (target, bytes each way, idle time), read from the running daemon's
    /// control socket (`server.control_socket`; root or the daemon's group).
    Sessions {
        /// The daemon's control socket.
        #[arg(long, default_value = sessions::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print the daemon's JSON as is, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Sum up an audit log: logins by user, failed logins by reason, tunnels by host with
    /// bytes, refusals by reason, the sources refused most.
    Audit {
        /// The audit file (default: `[audit] file` of --config).
        file: Option<PathBuf>,
        /// The config whose `[audit] file` to read when no file is given.
        #[arg(long, short, default_value = "/etc/gatehouse/gatehouse.toml")]
        config: PathBuf,
        /// Only the last DURATION (e.g. 2h, 30m, 7d).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// Only lines about this user.
        #[arg(long)]
        user: Option<String>,
        /// Only tunnel lines about this host.
        #[arg(long)]
        host: Option<String>,
        /// Only refusals.
        #[arg(long)]
        refused: bool,
    },
    /// Print the EventBridge event pattern of the rule that feeds `aws.events_queue_url`: the
    /// IAM calls whose events the bastion reads (for setting the rule up without
    /// gatehouse-vpc, which provisions it).
    EventPattern,
    /// Log in with your AWS identity (IAM Identity Center / SSO, an assumed role, an IAM
    /// user; from the AWS SDK's usual places): the bastion certifies your SSH public key for
    /// a working day, written where ssh picks it up (`<key>-cert.pub`).
    #[cfg(feature = "aws")]
    Login {
        /// The bastion: HOST or HOST:PORT.
        #[arg(long)]
        bastion: String,
        /// Your private key (its `.pub` is certified); default ~/.ssh/id_ed25519, id_ecdsa
        /// or id_rsa.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Where to write the certificate; default `<key>-cert.pub`.
        #[arg(long)]
        out: Option<PathBuf>,
        /// known_hosts file to check the bastion's host key against; default
        /// ~/.ssh/known_hosts.
        #[arg(long)]
        known_hosts: Option<PathBuf>,
    },
    /// Run the bastion on the embedded demo config (static users and hosts, no AWS), with a
    /// demo key pair and an ssh_config generated in the state directory.
    Demo {
        /// Where the demo keeps its host key, client key and ssh_config.
        #[arg(long, default_value = "gatehouse-demo")]
        state_dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:2222")]
        listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => {
            load(&config).and_then(|c| run(serve::run(c, None, Some(config.clone()))))
        }
        Command::Check { config } => load(&config).map(|c| {
            println!("{}: OK", config.display());
            println!("{}", c.summary());
        }),
        Command::Hosts { config, user } => {
            load(&config).and_then(|c| run_plain(hosts::print(&c, user.as_deref())))
        }
        Command::SshConfig {
            config,
            user,
            bastion,
            alias,
            identity_file,
            known_hosts,
            target_user,
        } => load(&config).and_then(|c| {
            run_plain(ssh_config::print(
                &c,
                &ssh_config::Options {
                    user: &user,
                    bastion: &bastion,
                    alias: &alias,
                    identity_file: identity_file.as_deref(),
                    known_hosts: known_hosts.as_deref(),
                    target_user: target_user.as_deref(),
                },
            ))
        }),
        Command::Sessions { socket, json } => run_plain(sessions::print(&socket, json)),
        Command::Audit {
            file,
            config,
            since,
            user,
            host,
            refused,
        } => audit_file(file, &config).and_then(|path| {
            let filter = audit_summary::Filter {
                since,
                user,
                host,
                refused,
            };
            run_plain(audit_summary::print(&path, &filter))
        }),
        Command::EventPattern => aws::event_pattern()
            .map(|pattern| println!("{pattern}"))
            .map_err(Failure::Runtime),
        #[cfg(feature = "aws")]
        Command::Login {
            bastion,
            key,
            out,
            known_hosts,
        } => run_client(login::run(&login::Options {
            bastion,
            key,
            out,
            known_hosts,
        })),
        Command::Demo { state_dir, listen } => demo::prepare(&state_dir, listen)
            .map_err(Failure::Runtime)
            .and_then(|(config, hint)| run(serve::run(config, Some(hint), None))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("gatehouse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    /// The config is invalid: its diagnostics, each `file:line:column: message`.
    Config(gatehouse_config::ConfigError),
    /// Anything else, with its context chain.
    Runtime(anyhow::Error),
}

fn load(path: &Path) -> Result<gatehouse_config::Config, Failure> {
    gatehouse_config::load(path).map_err(Failure::Config)
}

/// The audit file to sum up: the one given, or the config's `[audit] file`.
fn audit_file(file: Option<PathBuf>, config: &Path) -> Result<PathBuf, Failure> {
    match file {
        Some(file) => Ok(file),
        None => load(config)?.audit.file.ok_or_else(|| {
            Failure::Runtime(anyhow::anyhow!(
                "{} has no [audit] file (its audit goes to stdout): name the file",
                config.display()
            ))
        }),
    }
}

fn run_plain(r: anyhow::Result<()>) -> Result<(), Failure> {
    r.map_err(Failure::Runtime)
}

/// A client command: no daemon logging, one thread.
#[cfg(feature = "aws")]
fn run_client(f: impl std::future::Future<Output = anyhow::Result<()>>) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    runtime.block_on(f).map_err(Failure::Runtime)
}

fn run(f: impl std::future::Future<Output = anyhow::Result<()>>) -> Result<(), Failure> {
    serve::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    runtime.block_on(f).map_err(Failure::Runtime)
}

//! Network namespaces: the per-test [`Topology`] (client <-> bastion <-> private) and
//! [`Netns`], a handle to run programs and open sockets inside one namespace.
//!
//! Isolation is by construction: no namespace has a default route, the client namespace has no
//! route to the private subnet at all, and the bastion namespace has `ip_forward=0` (and IPv6
//! off everywhere). So the client reaches the private side only through a bastion process,
//! and no packet of a test can leave the machine.
//!
//! Sockets are opened in a namespace by a short-lived thread that `setns`es into it; a socket
//! keeps its namespace for life, so the caller can use it from any thread afterwards.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::process::{command_line, try_run_with_timeout};

/// The client's address (client namespace, interface `to-bastion`).
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 240, 0, 2);
/// The bastion's address on the client side (bastion namespace, interface `to-client`).
pub const BASTION_CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 240, 0, 1);
/// The bastion's address on the private side (bastion namespace, interface `to-private`).
pub const BASTION_PRIVATE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 1);
/// The private host (private namespace, interface `to-bastion`).
pub const PRIVATE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 140);
/// A second private host address on the same interface, for tests that need two hosts.
pub const PRIVATE_ADDR_2: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 141);
/// Prefix length of both subnets (10.240.0.0/24 and 10.0.3.0/24).
pub const PREFIX_LEN: u8 = 24;

/// Every namespace name starts with this, followed by `<pid>x<counter>` and a role letter
/// (`c`, `b`, `p`); `tests/run` removes leftovers matching `^gh[0-9]+x[0-9]+[cbp]$`.
pub const NAME_PREFIX: &str = "gh";

/// Bound on each `ip`/`sysctl` call while building or tearing down.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A handle to a named network namespace (it does not own it: [`Topology`] does).
#[derive(Clone, Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A handle to the namespace `name` (as in `ip netns list`).
    pub fn named(name: impl Into<String>) -> Netns {
        Netns { name: name.into() }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A `Command` that runs `program` inside the namespace (`ip netns exec NAME program`; `ip`
    /// execs it, so the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered the namespace, and returns its result.
    pub fn run_in<T, F>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let path = self.path();
        let handle = thread::Builder::new()
            .name(format!("in-{}", self.name))
            .spawn(move || -> io::Result<T> {
                let ns = File::open(&path)?;
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                Ok(f())
            })?;
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Connects to `addr` from inside the namespace.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        self.run_in(move || TcpStream::connect_timeout(&addr, timeout))?
    }

    /// Binds a listening socket on `addr` inside the namespace.
    pub fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        self.run_in(move || TcpListener::bind(addr))?
    }

    /// The pids of the processes in the namespace (`ip netns pids`).
    pub fn pids(&self) -> Vec<u32> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "pids", &self.name]);
        match try_run_with_timeout(cmd, IP_TIMEOUT) {
            Ok(out) => out
                .stdout_str()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Runs `ip -n NAME args...` and panics with its output if it fails.
    fn ip(&self, args: &[&str]) {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name]).args(args);
        ip_checked(cmd);
    }
}

/// Runs an `ip`-like setup command, panicking with its output if it fails.
fn ip_checked(cmd: Command) {
    let line = command_line(&cmd);
    let out = try_run_with_timeout(cmd, IP_TIMEOUT)
        .unwrap_or_else(|e| panic!("start `{line}` (is iproute2 installed?): {e}"));
    out.expect_success("network namespace setup");
}

/// Three namespaces joined by two veth pairs:
///
/// ```text
///  client ns                bastion ns                          private ns
///  10.240.0.2 --veth-- 10.240.0.1 | 10.0.3.1 --veth-- 10.0.3.140, 10.0.3.141
/// ```
///
/// Dropping it kills every process in the three namespaces and deletes them (also when the
/// test panics).
pub struct Topology {
    pub client: Netns,
    pub bastion: Netns,
    pub private: Netns,
}

impl Topology {
    /// Builds the three namespaces (about 0.1 s). Panics (after cleaning up) if anything fails,
    /// or if the test is not running as root.
    pub fn new() -> Topology {
        super::require_root();
        let id = format!(
            "{NAME_PREFIX}{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        // The guard exists before the first namespace does, so a failed step is cleaned up.
        let topology = Topology {
            client: Netns::named(format!("{id}c")),
            bastion: Netns::named(format!("{id}b")),
            private: Netns::named(format!("{id}p")),
        };
        topology.build();
        topology
    }

    fn namespaces(&self) -> [&Netns; 3] {
        [&self.client, &self.bastion, &self.private]
    }

    fn build(&self) {
        for ns in self.namespaces() {
            let mut add = Command::new("ip");
            add.args(["netns", "add", ns.name()]);
            ip_checked(add);
            // Before any interface exists, so `default` covers the veths too.
            let mut sysctl = ns.command("sysctl");
            sysctl.args([
                "-q",
                "-w",
                "net.ipv4.ip_forward=0",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ]);
            ip_checked(sysctl);
            ns.ip(&["link", "set", "lo", "up"]);
        }
        // Each veth pair is created with its ends directly in the two namespaces, so no
        // interface name ever appears in the root namespace.
        let veth = |a: &Netns, a_if: &str, b: &Netns, b_if: &str| {
            let mut cmd = Command::new("ip");
            cmd.args(["link", "add", a_if, "netns", a.name(), "type", "veth"])
                .args(["peer", "name", b_if, "netns", b.name()]);
            ip_checked(cmd);
        };
        veth(&self.client, "to-bastion", &self.bastion, "to-client");
        veth(&self.bastion, "to-private", &self.private, "to-bastion");
        let addr = |ns: &Netns, ip: Ipv4Addr, dev: &str| {
            ns.ip(&["addr", "add", &format!("{ip}/{PREFIX_LEN}"), "dev", dev]);
        };
        addr(&self.client, CLIENT_ADDR, "to-bastion");
        addr(&self.bastion, BASTION_CLIENT_ADDR, "to-client");
        addr(&self.bastion, BASTION_PRIVATE_ADDR, "to-private");
        addr(&self.private, PRIVATE_ADDR, "to-bastion");
        addr(&self.private, PRIVATE_ADDR_2, "to-bastion");
        self.client.ip(&["link", "set", "to-bastion", "up"]);
        self.bastion.ip(&["link", "set", "to-client", "up"]);
        self.bastion.ip(&["link", "set", "to-private", "up"]);
        self.private.ip(&["link", "set", "to-bastion", "up"]);
    }
}

impl Default for Topology {
    fn default() -> Self {
        Topology::new()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        tear_down(&self.namespaces());
    }
}

/// Kills every process in `namespaces` (but this one) and deletes them (their veths go with
/// them). Bounded: each `ip` call has a timeout.
pub fn tear_down(namespaces: &[&Netns]) {
    let me = std::process::id();
    for ns in namespaces {
        for pid in ns.pids() {
            if pid != me {
                let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
    for ns in namespaces {
        if !ns.path().exists() {
            continue;
        }
        let mut del = Command::new("ip");
        del.args(["netns", "del", ns.name()]);
        match try_run_with_timeout(del, IP_TIMEOUT) {
            Ok(out) if out.success() => {}
            Ok(out) => eprintln!("teardown: {out}"),
            Err(e) => eprintln!("teardown: ip netns del {}: {e}", ns.name()),
        }
    }
}

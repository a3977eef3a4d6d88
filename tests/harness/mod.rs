//! The end-to-end test harness: everything a test needs to stand up a client, a bastion and a
//! private subnet on this machine, run real programs in them, and tear it all down again.
//!
//! The pieces, in the order a test usually uses them:
//! - [`Topology`] (netns): three network namespaces, client <-> bastion <-> private, with no
//!   default route anywhere and forwarding off in the bastion, so the private side is reachable
//!   only through a bastion *process*. Torn down on drop, also when the test panics.
//! - [`Scratch`]: the test's temporary directory; kept (and its path printed) when the test fails.
//! - [`KeyPair`] (keys): `ssh-keygen` keys.
//! - [`Sshd`] (sshd): throwaway OpenSSH servers, as a private host or as the comparison jump host.
//! - [`SshClient`] (ssh_client): the OpenSSH client in the client namespace, driven by an `-F`
//!   file (the only way options reach the `-J` hop).
//! - [`haproxy::Haproxy`] (haproxy): HAProxy as a TCP load balancer (PROXY v2, HTTP health
//!   checks, a runtime API), the stand-in for AWS's Network Load Balancer.
//! - [`Jupyter`] (jupyter): a real Jupyter Server and the `tests/py/jupyter_check.py` probe.
//! - [`TcpServer`], [`Pattern`], [`Digest`] (bytes): byte sinks, echo servers and checksums.
//! - [`moto::Moto`] (moto), [`moto_ns::NsMoto`] (moto_ns): the AWS API in memory, in the
//!   root namespace or on the loopback of a test namespace.
//! - [`Daemon`], [`run_with_timeout`], [`run_feeding`] (process): every child process is bounded
//!   in time and killed on drop, and a test fails if any of them printed a Rust panic (panics).
//!
//! Safety rule for everything here: traffic goes only to loopback or to addresses inside
//! namespaces the test created itself, never anywhere that could leave the machine.

#![forbid(unsafe_code)]
// Each test uses a different subset of the harness.
#![allow(dead_code, unused_imports)]

pub mod bytes;
pub mod haproxy;
pub mod jupyter;
pub mod keys;
pub mod metric_filter;
pub mod moto;
pub mod moto_ns;
pub mod netns;
pub mod panics;
pub mod process;
pub mod scratch;
pub mod ssh_client;
pub mod sshd;

use std::path::{Path, PathBuf};

pub use bytes::{sha256_hex, Digest, Pattern, Sha256Pipe, TcpServer};
pub use jupyter::{jupyter_check, venv_python, Jupyter};
pub use keys::{KeyPair, KeyType};
pub use netns::{
    Netns, Topology, BASTION_CLIENT_ADDR, BASTION_PRIVATE_ADDR, CLIENT_ADDR, PRIVATE_ADDR,
    PRIVATE_ADDR_2,
};
pub use process::{run_feeding, run_with_timeout, wait_until, CmdOutput, Daemon};
pub use scratch::Scratch;
pub use ssh_client::SshClient;
pub use sshd::{test_user, Sshd, SshdConfig, TestUser, TEST_USER};

/// Fails the test with a clear message unless it runs as root: namespaces, sshd and the test
/// user all need it, and a test that silently passed without them would prove nothing.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "the end-to-end tests need root (network namespaces, sshd): run them with \
             `sudo tests/run`"
        );
    }
}

/// The `gatehouse` binary built for this test run.
pub fn gatehouse_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_gatehouse"))
}

/// The repository root (the directory holding `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("canonicalize the repository root")
}

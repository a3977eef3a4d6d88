//! The end-to-end test harness (`tests/harness/`), compiled into the benchmark as is: the
//! namespace topology, throwaway sshd, the OpenSSH client config, process guards.
//!
//! Its `mod.rs` refers to the `gatehouse` test binary (`CARGO_BIN_EXE_gatehouse`), which only
//! exists for the package's own tests, so the modules are included one by one and the two
//! helpers they call through `super::` are provided here.
#![allow(dead_code, unused_imports)]

#[path = "../../../tests/harness/bytes.rs"]
pub mod bytes;
#[path = "../../../tests/harness/keys.rs"]
pub mod keys;
#[path = "../../../tests/harness/netns.rs"]
pub mod netns;
#[path = "../../../tests/harness/panics.rs"]
pub mod panics;
#[path = "../../../tests/harness/process.rs"]
pub mod process;
#[path = "../../../tests/harness/scratch.rs"]
pub mod scratch;
#[path = "../../../tests/harness/ssh_client.rs"]
pub mod ssh_client;
#[path = "../../../tests/harness/sshd.rs"]
pub mod sshd;

pub use keys::KeyPair;
pub use netns::{Netns, Topology, BASTION_CLIENT_ADDR, PRIVATE_ADDR};
pub use process::Daemon;
pub use scratch::Scratch;
pub use ssh_client::SshClient;
pub use sshd::{Sshd, SshdConfig, TEST_USER};

/// Panics unless running as root (namespaces and sshd need it); the harness calls it.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("the benchmark needs root (network namespaces, sshd): run it with sudo");
    }
}

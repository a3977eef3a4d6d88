//! Key push: before a tunnel to a host's SSH port, the bastion can give the key the user
//! logged in with to that host for a short time, for the host's OS users the inventory names
//! (`Grant::key_push`). On AWS that is EC2 Instance Connect; the implementation lives outside
//! this crate (the binary wires gatehouse-aws's), so the SSH layer stays free of AWS.

use std::future::Future;
use std::pin::Pin;

use russh::keys::PublicKey;

/// Why a push failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushError {
    /// One line for the user, in the channel-open failure: what failed, never credentials or
    /// account details (e.g. `AccessDeniedException`).
    pub brief: String,
    /// Everything known, for the bastion's log and audit line (the AWS action, code, message
    /// and what to do).
    pub detail: String,
}

/// The future a push returns.
pub type PushFuture = Pin<Box<dyn Future<Output = Result<(), PushError>> + Send>>;

/// Gives public keys to hosts.
pub trait KeyPush: Send + Sync {
    /// Makes host `host_id` (an inventory host id: the EC2 instance id on AWS) accept `key`
    /// for `os_user` for a short time. Bounded in time by the implementation.
    fn push(&self, host_id: &str, os_user: &str, key: &PublicKey) -> PushFuture;
}

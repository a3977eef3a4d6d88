//! The binary built without the `aws` feature (`--no-default-features`): the static directory
//! only, and none of the AWS SDK to compile, which is most of a cold build (the demo needs
//! none of it). A config with `[aws]` is refused with the way to get a build that reads it.
//! Same interface as `aws.rs`, so the rest of the binary does not know which one it has.

use std::convert::Infallible;
use std::sync::Arc;

use gatehouse_config::{AwsConfig, Config};
use gatehouse_directory::{Directory, Snapshot};
use russh::keys::PrivateKey;

/// Why an `[aws]` config cannot run here.
const NO_AWS: &str =
    "this gatehouse was built without AWS support (cargo's `--no-default-features`), \
     so it cannot use the config's [aws] table: build it with the default features \
     (`cargo build --release -p gatehouse`)";

/// Never made: without AWS support there is no AWS side.
pub struct Started {
    pub host_key: PrivateKey,
    pub user_ca: Option<PrivateKey>,
    never: Infallible,
}

impl Started {
    /// Always an error: see [`NO_AWS`].
    pub async fn new(
        _settings: &AwsConfig,
        _host_key_file: &std::path::Path,
        _user_ca_file: Option<&std::path::Path>,
        _audit_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Started> {
        anyhow::bail!(NO_AWS)
    }

    pub fn directory(&self) -> Arc<Directory> {
        match self.never {}
    }

    pub fn wakeup(&self) -> Arc<tokio::sync::Notify> {
        match self.never {}
    }

    pub fn spawn_refresh(self) {
        match self.never {}
    }

    pub fn key_push(&self) -> Option<Arc<dyn gatehouse_ssh::push::KeyPush>> {
        match self.never {}
    }
}

/// Never called: there is no AWS side to wake.
pub async fn refresh_on_hangup(
    _hangup: tokio::signal::unix::Signal,
    _wakeup: Arc<tokio::sync::Notify>,
) {
}

/// The static directory of `config`; an error for an `[aws]` config.
pub fn snapshot_now(config: &Config) -> anyhow::Result<Snapshot> {
    if config.aws.is_some() {
        anyhow::bail!(NO_AWS);
    }
    Ok(Snapshot::from_config(config))
}

/// The login name for `name` in a static `snapshot`: itself, if it is a user.
pub fn login_for(snapshot: &Snapshot, name: &str) -> Option<String> {
    snapshot.identity(name).map(|_| name.to_owned())
}

/// Always an error: see [`NO_AWS`].
pub fn event_pattern() -> anyhow::Result<String> {
    anyhow::bail!(NO_AWS)
}

/// Always an error: `gatehouse login`'s proofs are replayed to STS (see [`NO_AWS`]).
pub fn proof_verifier(
    _config: &Config,
) -> anyhow::Result<Arc<dyn gatehouse_ssh::issuer::ProofVerifier>> {
    anyhow::bail!("[sso]: {NO_AWS}")
}

//! AWS wiring of the binary: the host key from SSM, the directory from IAM and EC2, and its
//! refresh loop; and a one-shot listing for the admin commands. Everything that talks to AWS
//! is in `gatehouse-aws`; this module only decides what to do when it fails.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use gatehouse_aws::instance_connect::InstanceConnect;
use gatehouse_aws::refresh::{snapshot_once, AwsSource};
use gatehouse_aws::ship::Shipper;
use gatehouse_aws::{AwsDirectory, Calls, Clients};
use gatehouse_config::{AwsConfig, Config};
use gatehouse_directory::{Directory, Snapshot};
use gatehouse_ssh::push::{KeyPush, PushError, PushFuture};
use russh::keys::{PrivateKey, PublicKey};

/// A bastion's AWS side, ready to serve: the host key (if it comes from SSM) and a directory
/// holding a first successful listing.
pub struct Started {
    /// The host key: from SSM with `host_key_ssm_parameter`, else the `server.host_key` file.
    /// It also signs the listings this bastion saves and shares.
    pub host_key: PrivateKey,
    /// The `[sso]` CA's key, with `user_ca_ssm_parameter`: one for every replica.
    pub user_ca: Option<PrivateKey>,
    refresher: AwsDirectory,
    /// EC2 Instance Connect, with `instance_connect`.
    key_push: Option<Arc<dyn KeyPush>>,
}

/// Whether EC2 Instance Connect takes `key` (RSA and ed25519; not ECDSA or security keys).
fn supported_by_instance_connect(key: &PublicKey) -> bool {
    matches!(
        key.algorithm(),
        russh::keys::Algorithm::Ed25519 | russh::keys::Algorithm::Rsa { .. }
    )
}

/// The SSH layer's key push, done with EC2 Instance Connect.
struct InstanceConnectPush(InstanceConnect);

impl KeyPush for InstanceConnectPush {
    fn push(&self, host_id: &str, os_user: &str, key: &PublicKey) -> PushFuture {
        let pusher = self.0.clone();
        let (host_id, os_user) = (host_id.to_owned(), os_user.to_owned());
        // EC2 Instance Connect takes RSA and ed25519 keys; an ECDSA key is refused here with
        // what to do, rather than by AWS with a validation error.
        let line = if supported_by_instance_connect(key) {
            key.to_openssh().map_err(|e| PushError {
                brief: "the key cannot be written in OpenSSH form".to_owned(),
                detail: format!("the key cannot be written in OpenSSH form: {e}"),
            })
        } else {
            let brief = format!(
                "EC2 Instance Connect takes ed25519 and RSA keys, not {}: log in to the bastion \
                 with one of those",
                key.algorithm()
            );
            Err(PushError {
                detail: brief.clone(),
                brief,
            })
        };
        Box::pin(async move {
            let line = line?;
            pusher
                .push(&host_id, &os_user, &line)
                .await
                .map_err(|e| PushError {
                    brief: match e.code() {
                        Some(code) => format!("EC2 Instance Connect refused it ({code})"),
                        None => "EC2 Instance Connect did not answer".to_owned(),
                    },
                    detail: e.to_string(),
                })
        })
    }
}

impl Started {
    /// Loads (or creates) the host key (SSM's, or the file `host_key_file`) and makes the
    /// first listing, retrying for up to
    /// `max_staleness` (each failure is logged). A bastion that cannot read AWS at all serves
    /// nobody, so after that it gives up with the last error.
    ///
    /// `user_ca_file` is `[sso]`'s CA key file (`None` without `[sso]`); with it, IAM roles
    /// are read too.
    ///
    /// With `audit_log_group`, shipping the audit file (`audit_file`) starts first, so the
    /// lines a previous run left unshipped go out while the listing runs.
    pub async fn new(
        settings: &AwsConfig,
        host_key_file: &Path,
        user_ca_file: Option<&Path>,
        audit_file: Option<&Path>,
    ) -> anyhow::Result<Started> {
        let clients = Clients::new(settings).await;
        if let (Some(client), Some(group), Some(file)) =
            (&clients.logs, &settings.audit_log_group, audit_file)
        {
            let stream = match &settings.audit_log_stream {
                Some(stream) => stream.clone(),
                None => host_name()?,
            };
            tokio::spawn(
                Shipper::new(client.clone(), group.clone(), stream, file.to_path_buf()).run(),
            );
        }
        // With a saved listing, a restart may serve while AWS is down: it then needs the host
        // key too, so a copy of the SSM key is kept at `server.host_key`.
        let copy = settings.snapshot_file.is_some().then_some(host_key_file);
        let host_key = match &settings.host_key_ssm_parameter {
            Some(parameter) => ssm_key(&clients, settings, parameter, copy, "host key").await?,
            None => gatehouse_ssh::hostkey::load_or_create(host_key_file)?,
        };
        let user_ca = match &settings.user_ca_ssm_parameter {
            Some(parameter) => {
                let copy = user_ca_file.filter(|_| settings.snapshot_file.is_some());
                Some(ssm_key(&clients, settings, parameter, copy, "SSO CA key").await?)
            }
            None => None,
        };
        // The saved and shared listings are signed with the host key: only this fleet (which
        // alone holds it) can write a listing that a replica will serve.
        let seal = gatehouse_aws::persist::Seal::new(host_key.clone());
        // With [sso] (which is what gives a CA key file), roles with the groups tag map
        // `gatehouse login` callers: the sweep reads them too.
        let mut source = AwsSource::new(&clients, settings);
        if user_ca_file.is_some() {
            source = source.reading_roles();
        }
        let refresher = AwsDirectory::start(source, seal)
            .await
            .context("cannot list users and hosts from AWS")?;
        let key_push = settings.instance_connect.then(|| {
            Arc::new(InstanceConnectPush(InstanceConnect::new(
                clients.instance_connect.clone(),
                Calls::default(),
            ))) as Arc<dyn KeyPush>
        });
        Ok(Started {
            host_key,
            user_ca,
            refresher,
            key_push,
        })
    }

    /// The directory the refresh loop publishes to.
    pub fn directory(&self) -> Arc<Directory> {
        self.refresher.directory()
    }

    /// Wakes the refresh loop for an immediate refresh.
    pub fn wakeup(&self) -> Arc<tokio::sync::Notify> {
        self.refresher.wakeup()
    }

    /// The key push for tunnels to hosts with login users (`aws.instance_connect`).
    pub fn key_push(&self) -> Option<Arc<dyn KeyPush>> {
        self.key_push.clone()
    }

    /// Starts the background refresh loop.
    pub fn spawn_refresh(self) {
        tokio::spawn(self.refresher.run());
    }
}

/// A key kept in SSM (`what`: the host key, the SSO CA key); kept at `copy` (when given),
/// and read from there when SSM cannot be.
async fn ssm_key(
    clients: &Clients,
    settings: &AwsConfig,
    parameter: &str,
    copy: Option<&Path>,
    what: &str,
) -> anyhow::Result<PrivateKey> {
    let from_ssm = gatehouse_aws::hostkey::load_or_create(
        &clients.ssm,
        parameter,
        &settings.host_key_tags,
        what,
        &Calls::default(),
    )
    .await;
    match (from_ssm, copy) {
        (Ok(key), Some(path)) => {
            if let Err(e) = gatehouse_ssh::hostkey::store(path, &key) {
                tracing::warn!("cannot keep a copy of the SSM {what}: {e}");
            }
            Ok(key)
        }
        (Ok(key), None) => Ok(key),
        (Err(e), Some(path)) => match gatehouse_ssh::hostkey::load(path) {
            Ok(key) => {
                tracing::warn!(
                    "cannot load the {what} from SSM {parameter} ({e}); using the copy kept \
                     at {} (the SSM key as last read)",
                    path.display()
                );
                Ok(key)
            }
            Err(copy_error) => Err(anyhow::Error::new(e).context(format!(
                "cannot load the {what} from SSM {parameter}, and there is no usable copy \
                 ({copy_error})"
            ))),
        },
        (Err(e), None) => {
            Err(anyhow::Error::new(e)
                .context(format!("cannot load the {what} from SSM {parameter}")))
        }
    }
}

/// On each SIGHUP in AWS mode: refresh from AWS at once. The config file is not re-read: its
/// `[[users]]` and `[[hosts]]` are empty by construction, so publishing them would revoke
/// everyone; `[server]`, `[audit]` and `[aws]` changes apply at restart.
pub async fn refresh_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    wakeup: Arc<tokio::sync::Notify>,
) {
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP: refreshing users and hosts from AWS now");
        wakeup.notify_one();
    }
}

/// The directory of `config` right now: the static one, or one AWS listing.
pub fn snapshot_now(config: &Config) -> anyhow::Result<Snapshot> {
    let Some(settings) = &config.aws else {
        return Ok(Snapshot::from_config(config));
    };
    crate::serve::init_logging();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let clients = Clients::new(settings).await;
        snapshot_once(&clients, settings)
            .await
            .context("cannot list users and hosts from AWS")
    })
}

/// The login name for `name` in `snapshot`: itself, or the login name of the IAM user `name`
/// (so `--user jane@example.org` works as well as `--user jane~40example.org`).
pub fn login_for(snapshot: &Snapshot, name: &str) -> Option<String> {
    if snapshot.identity(name).is_some() {
        return Some(name.to_owned());
    }
    gatehouse_aws::names::login_name(name)
        .ok()
        .filter(|login| snapshot.identity(login).is_some())
}

/// The EventBridge pattern of the rule that feeds `aws.events_queue_url`, as pretty JSON.
///
/// # Errors
/// Never here (the build without AWS support has no pattern).
pub fn event_pattern() -> anyhow::Result<String> {
    Ok(format!("{:#}", gatehouse_aws::events::iam_event_pattern()))
}

/// This machine's host name (the default audit log stream: unique per instance on EC2).
fn host_name() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("cannot read the host name for the audit log stream (set aws.audit_log_stream)")?;
    let name = name.trim();
    anyhow::ensure!(
        !name.is_empty() && !name.contains([':', '*']),
        "the host name {name:?} cannot name an audit log stream: set aws.audit_log_stream"
    );
    Ok(name.to_owned())
}

/// The bastion's side of `gatehouse login`: proofs replayed to STS (or to `aws.endpoint_url`,
/// the one other URL a proof may name).
pub fn proof_verifier(
    config: &Config,
) -> anyhow::Result<Arc<dyn gatehouse_ssh::issuer::ProofVerifier>> {
    Ok(Arc::new(crate::login::StsVerifier::new(
        config.aws.as_ref().and_then(|a| a.endpoint_url.clone()),
    )))
}

//! EC2 Instance Connect: `SendSSHPublicKey` makes an instance's sshd (with the image's stock
//! `ec2-instance-connect` package, which reads the pushed keys from the instance metadata)
//! accept one public key for one OS user for 60 seconds. The bastion pushes the key a user
//! logged in with, for the OS users of the instance's login tag, before a tunnel to its SSH
//! port opens; nothing is installed on the host and access ends by itself.

use std::time::Duration;

use aws_sdk_ec2instanceconnect::Client;

use crate::actions;
use crate::calls::Calls;
use crate::error::AwsError;

/// Bound on one attempt: a tunnel's open waits on it.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on one push with its retries (under the client's usual 15 s to open a channel).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(8);

/// Pushes keys with one client.
#[derive(Debug, Clone)]
pub struct InstanceConnect {
    client: Client,
    calls: Calls,
}

impl InstanceConnect {
    /// A pusher over `client`, counting its calls in `calls`.
    pub fn new(client: Client, calls: Calls) -> Self {
        InstanceConnect { client, calls }
    }

    /// Makes instance `instance_id` accept `public_key` (one OpenSSH line, `type base64`) for
    /// `os_user` for 60 seconds.
    ///
    /// # Errors
    /// The failed call (access denied names the action the role lacks), or an answer that
    /// says it did not succeed.
    pub async fn push(
        &self,
        instance_id: &str,
        os_user: &str,
        public_key: &str,
    ) -> Result<(), AwsError> {
        self.calls.count(actions::SEND_SSH_PUBLIC_KEY);
        let answer = self
            .client
            .send_ssh_public_key()
            .instance_id(instance_id)
            .instance_os_user(os_user)
            .ssh_public_key(public_key)
            .send()
            .await
            .map_err(|e| AwsError::call("ec2-instance-connect", "SendSSHPublicKey", &e))?;
        if answer.success() {
            Ok(())
        } else {
            Err(AwsError::Call {
                service: "ec2-instance-connect",
                operation: "SendSSHPublicKey",
                action: None,
                code: None,
                message: format!(
                    "the answer says the key was not accepted (request {})",
                    answer.request_id().unwrap_or("without id")
                ),
            })
        }
    }
}

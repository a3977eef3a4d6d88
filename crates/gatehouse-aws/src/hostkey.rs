//! The bastion's host key in SSM Parameter Store, shared by every replica; the `[sso]` CA's
//! key (`aws.user_ca_ssm_parameter`) is kept the same way.
//!
//! Read the SecureString; if it does not exist, generate an ed25519 key and create the
//! parameter with `Overwrite=false`. If another replica created it in between
//! (`ParameterAlreadyExists`), read theirs. So replicas started at the same moment still end up
//! with one key: exactly one `PutParameter` can win.
//!
//! The parameter is created with the tags of `aws.host_key_tags` (in the same request, so it
//! never exists untagged): gatehouse-vpc tags it with its stack, and its `destroy` deletes it
//! with the stack. IAM then checks `ssm:AddTagsToResource` as well as `ssm:PutParameter`.

use std::collections::BTreeMap;

use aws_sdk_ssm::types::{ParameterType, Tag};
use aws_sdk_ssm::Client;
use ssh_key::{Algorithm, LineEnding, PrivateKey};

use crate::actions;
use crate::calls::Calls;
use crate::error::AwsError;

/// How many read / create rounds before giving up (a parameter that keeps vanishing).
const ROUNDS: usize = 3;

/// Loads the key (`what`: "host key", "SSO CA key") from `parameter`, creating it with `tags`
/// if absent (an existing parameter is used as it is).
///
/// # Errors
/// An SSM call failed, or the parameter holds something that is not an unencrypted ed25519
/// OpenSSH private key.
pub async fn load_or_create(
    client: &Client,
    parameter: &str,
    tags: &BTreeMap<String, String>,
    what: &str,
    calls: &Calls,
) -> Result<PrivateKey, AwsError> {
    let tags = tags
        .iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AwsError::HostKey {
            parameter: parameter.to_owned(),
            reason: format!("invalid tag: {e}"),
        })?;
    for _ in 0..ROUNDS {
        if let Some(text) = get(client, parameter, calls).await? {
            return parse(parameter, &text);
        }
        let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(|e| {
            AwsError::HostKey {
                parameter: parameter.to_owned(),
                reason: format!("generating a key failed: {e}"),
            }
        })?;
        let text = key
            .to_openssh(LineEnding::LF)
            .map_err(|e| AwsError::HostKey {
                parameter: parameter.to_owned(),
                reason: format!("encoding the new key failed: {e}"),
            })?;
        calls.count(actions::PUT_PARAMETER);
        let put = client
            .put_parameter()
            .name(parameter)
            .description(format!(
                "gatehouse bastion {what} (ed25519, OpenSSH format)"
            ))
            .value(text.as_str())
            .r#type(ParameterType::SecureString)
            .overwrite(false)
            .set_tags((!tags.is_empty()).then(|| tags.clone()))
            .send()
            .await;
        match put {
            Ok(_) => {
                tracing::info!(parameter, "created a new ed25519 {what} in SSM");
                return Ok(key);
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_parameter_already_exists()) =>
            {
                // Another replica won the race: use its key (next round reads it).
                tracing::info!(
                    parameter,
                    "another replica created the {what} first; using it"
                );
            }
            Err(e) => return Err(AwsError::call("ssm", "PutParameter", &e)),
        }
    }
    Err(AwsError::HostKey {
        parameter: parameter.to_owned(),
        reason: "the parameter exists and then does not, repeatedly".to_owned(),
    })
}

/// The parameter's decrypted value, `None` if it does not exist.
async fn get(client: &Client, parameter: &str, calls: &Calls) -> Result<Option<String>, AwsError> {
    calls.count(actions::GET_PARAMETER);
    match client
        .get_parameter()
        .name(parameter)
        .with_decryption(true)
        .send()
        .await
    {
        Ok(answer) => Ok(answer
            .parameter()
            .and_then(|p| p.value())
            .map(str::to_owned)),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_parameter_not_found()) =>
        {
            Ok(None)
        }
        Err(e) => Err(AwsError::call("ssm", "GetParameter", &e)),
    }
}

/// Parses the parameter's text as the host key: OpenSSH format, unencrypted, ed25519.
pub fn parse(parameter: &str, text: &str) -> Result<PrivateKey, AwsError> {
    let invalid = |reason: String| AwsError::HostKey {
        parameter: parameter.to_owned(),
        reason,
    };
    let key = PrivateKey::from_openssh(text.trim().as_bytes())
        .map_err(|e| invalid(format!("not an OpenSSH private key: {e}")))?;
    if key.is_encrypted() {
        return Err(invalid("the key is encrypted with a passphrase".to_owned()));
    }
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(invalid(format!(
            "the key is {}, gatehouse uses ed25519 host keys",
            key.algorithm()
        )));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_generated_key_and_refuses_junk() {
        let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let text = key.to_openssh(LineEnding::LF).unwrap();
        let back = parse("/p", &text).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        let err = parse("/p", "hello").unwrap_err().to_string();
        assert!(
            err.starts_with("SSM parameter /p: not an OpenSSH private key"),
            "{err}"
        );
    }
}

//! `gatehouse-vpc output`: the bastion's address and a ready `~/.ssh/config` block, derived from
//! the spec and what AWS reports (pure, so it is unit-tested).

use serde::Serialize;

use crate::model::{Observed, TAG_GROUPS, TAG_PORTS};
use crate::spec::Spec;

/// What `output` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StackOutput {
    pub stack: String,
    pub region: String,
    pub vpc_id: Option<String>,
    pub bastion_instance_id: Option<String>,
    /// The Elastic IP of the bastion (falls back to the instance's public IP); with
    /// replicas, the balancer's DNS name.
    pub bastion_address: Option<String>,
    /// With replicas and `fixed_addresses`: the balancer's Elastic IPs, for allow-lists.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub balancer_ips: Vec<String>,
    pub host_key_parameter: String,
    /// Subnet name -> subnet id (like the Terraform module's `public_subnets`/`private_subnets`).
    pub subnet_ids: std::collections::BTreeMap<String, String>,
    /// Public IPs of the NAT gateways (like `nat_public_ips`), e.g. for allow lists elsewhere.
    pub nat_public_ips: Vec<String>,
    /// The bastion's security group (every replica's too): what a host the stack did not
    /// create must admit on its SSH and Jupyter ports.
    pub bastion_security_group: Option<String>,
    /// The one thing left to the user for such a host: the AWS CLI commands that admit the
    /// bastion's group on `[private] ports` in the host's own group, tag the host so the
    /// bastion finds it, and (before `destroy`) revoke the first (placeholders in `<>`).
    pub admit_commands: Vec<String>,
    pub ssh_config: String,
}

/// The commands that make a host the stack did not create reachable through the bastion:
/// its security group admits the bastion's on `ports`, and its tags name who may reach it on
/// which ports (the daemon's `gatehouse:groups` and `gatehouse:ports`). JSON arguments, not
/// the CLI's shorthand, which would split the comma in `22,8888`.
pub fn admit_commands(region: &str, bastion_group: &str, ports: &[u16]) -> Vec<String> {
    let permissions: Vec<serde_json::Value> = ports
        .iter()
        .map(|p| {
            serde_json::json!({
                "IpProtocol": "tcp",
                "FromPort": p,
                "ToPort": p,
                "UserIdGroupPairs": [{"GroupId": bastion_group, "Description": "gatehouse bastion"}],
            })
        })
        .collect();
    let listed: Vec<String> = ports.iter().map(u16::to_string).collect();
    let tags = serde_json::json!([
        {"Key": TAG_GROUPS, "Value": "<group>"},
        {"Key": TAG_PORTS, "Value": listed.join(",")},
    ]);
    let permissions = serde_json::Value::from(permissions);
    vec![
        format!(
            "aws ec2 authorize-security-group-ingress --region {region} --group-id \
             <security group of your hosts> --ip-permissions '{permissions}'"
        ),
        format!("aws ec2 create-tags --region {region} --resources <instance id> --tags '{tags}'"),
        // A group that still admits the bastion's keeps `destroy` from deleting it
        // (DependencyViolation): this undoes the first command.
        format!(
            "before destroy: aws ec2 revoke-security-group-ingress --region {region} --group-id \
             <security group of your hosts> --ip-permissions '{permissions}'"
        ),
    ]
}

/// An `--user` that no IAM user can have, so the bastion has no login name for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--user {user:?}: {reason}; give the IAM user name you log in with")]
pub struct BadUser {
    pub user: String,
    pub reason: gatehouse_aws::names::NameError,
}

/// The SSH login name the bastion knows the IAM user `user` by: the daemon's own mapping
/// ([`gatehouse_aws::names::login_name`], e.g. `jane@example.org` -> `jane~40example.org`).
///
/// # Errors
/// `user` is not a valid IAM user name.
pub fn login_name(user: &str) -> Result<String, BadUser> {
    gatehouse_aws::names::login_name(user).map_err(|reason| BadUser {
        user: user.to_owned(),
        reason,
    })
}

/// Build the output; `user` is the IAM user name people log in with (the ssh config gets its
/// login name, see [`login_name`]).
///
/// # Errors
/// `user` is not a valid IAM user name.
pub fn stack_output(spec: &Spec, obs: &Observed, user: &str) -> Result<StackOutput, BadUser> {
    let login = login_name(user)?;
    let obs = crate::plan::only_ours(&spec.stack, obs);
    let existing = match &spec.network {
        crate::spec::Network::Existing {
            found: Some(found), ..
        } => Some(found.vpc_id.clone()),
        _ => None,
    };
    let vpc_id = obs
        .vpcs
        .iter()
        .find(|v| v.key == "vpc")
        .map(|v| v.id.clone())
        .or(existing);
    let bastion_security_group = obs
        .security_groups
        .iter()
        .find(|g| g.key == "sg/bastion")
        .map(|g| g.id.clone());
    let bastion = obs.instances.iter().find(|i| i.key == "instance/bastion");
    let address = if spec.bastion.scaled_out() {
        obs.balancer.as_ref().map(|b| b.dns_name.clone())
    } else {
        obs.eips
            .iter()
            .find(|e| e.key == "eip/bastion" && e.instance_id.is_some())
            .map(|e| e.public_ip.clone())
            .or_else(|| bastion.and_then(|b| b.public_ip.clone()))
    };
    let alias = format!("{}-bastion", spec.stack);
    let mut cfg = String::new();
    cfg.push_str(&format!(
        "# gatehouse stack {} ({})\n",
        spec.stack, spec.region
    ));
    cfg.push_str(&format!("Host {alias}\n"));
    cfg.push_str(&format!(
        "    HostName {}\n",
        address.as_deref().unwrap_or("<not yet assigned>")
    ));
    cfg.push_str(&format!("    User {login}\n"));
    cfg.push_str("    IdentityFile ~/.ssh/id_ed25519\n");
    cfg.push_str("    IdentitiesOnly yes\n");
    cfg.push_str("    # gatehouse is a jump host only: no shell, no agent or X11 forwarding.\n");
    cfg.push_str("    RequestTTY no\n");
    cfg.push_str("    ForwardAgent no\n");
    cfg.push_str("    ServerAliveInterval 30\n");
    if !spec.builds_vpc() {
        cfg.push_str(&format!(
            "\n# A host the stack did not create, once tagged and admitting the bastion (above):\n\
             # Host <its Name tag, instance id or private IP>\n\
             #     ProxyJump {alias}\n"
        ));
    }
    for h in &spec.hosts {
        cfg.push('\n');
        cfg.push_str(&format!("Host {}\n", h.name));
        cfg.push_str(&format!("    HostName {}\n", h.name));
        cfg.push_str(&format!("    ProxyJump {alias}\n"));
        cfg.push_str("    # User <your account on this host>\n");
        for port in h.ports.iter().filter(|p| **p != 22) {
            cfg.push_str(&format!(
                "# tunnel to {}:{port}: ssh -N -L {port}:{}:{port} {alias}\n",
                h.name, h.name
            ));
        }
    }
    Ok(StackOutput {
        stack: spec.stack.clone(),
        region: spec.region.clone(),
        vpc_id,
        bastion_instance_id: bastion.map(|b| b.id.clone()),
        bastion_address: address,
        balancer_ips: obs
            .eips
            .iter()
            .filter(|e| e.key.starts_with("eip/nlb/"))
            .map(|e| e.public_ip.clone())
            .collect(),
        host_key_parameter: crate::names::host_key_parameter(&spec.stack),
        subnet_ids: obs
            .subnets
            .iter()
            .filter_map(|s| Some((s.key.strip_prefix("subnet/")?.to_string(), s.id.clone())))
            .chain(
                spec.subnets
                    .iter()
                    .filter_map(|s| Some((s.name.clone(), s.existing.clone()?))),
            )
            .collect(),
        nat_public_ips: obs
            .eips
            .iter()
            .filter(|e| e.key.starts_with("eip/nat-"))
            .map(|e| e.public_ip.clone())
            .collect(),
        admit_commands: bastion_security_group
            .as_deref()
            .map(|g| admit_commands(&spec.region, g, &spec.private_ports))
            .unwrap_or_default(),
        bastion_security_group,
        ssh_config: cfg,
    })
}

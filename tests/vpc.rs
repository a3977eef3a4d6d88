//! gatehouse-vpc against moto (server mode, real AWS SDK, real `gatehouse-vpc` binary).
//! Every test starts its own moto on a free 127.0.0.1 port; no traffic leaves the machine.
//!
//! - apply_from_empty_converges_and_is_idempotent: apply, plan = no changes, 2nd apply = no changes, output
//! - destroy_removes_only_the_stack: untagged VPC and a second stack beside it survive; the
//!   host key the daemon creates (its own code, the config gatehouse-vpc writes) is deleted,
//!   and a re-created stack gets a new one
//! - interrupted_apply_converges: apply killed after N steps, for several N, then apply
//! - drift_is_planned_and_repaired: a removed route, a removed and an added SG rule
//! - nat_mode_changes_converge: per_az -> single -> none
//! - destroy_never_touches_foreign_resources_inside_the_stack_vpc: foreign instance + SG survive
//! - foreign_iam_role_is_refused: same role name without the stack tag
//! - bad_specs_are_rejected_before_any_aws_call: each bad spec, exit 64, its message
//! - user_data_is_cloud_config_under_16k: YAML parse (PyYAML from tests/.venv), keys, size
//! - iam_events_from_empty_carry_the_daemons_events_to_the_queue_the_bastion_reads: the queue
//!   (attributes, policy, tags), the rule (pattern as JSON, state, one target, tags), the
//!   daemon's config and role from the user data; PutEvents on us-east-1's bus: a listed,
//!   successful IAM call arrives and every receive sees it, an unlisted or failed one does not
//! - iam_events_drift_is_repaired_the_switch_removes_and_recreates_and_destroy_leaves_nothing:
//!   target removed, pattern and retention changed; off, on (killed after the queue), destroy
//! - iam_events_are_refused_without_a_logging_trail_and_never_touch_a_queue_not_ours: no trail,
//!   a trail not logging, one without global events; an untagged queue of the stack's name
//! - the_audit_log_group_is_the_stacks_with_its_retention_and_the_bastion_ships_to_it: the
//!   group (default retention, the stack's tags), the daemon config in the user data (audit
//!   file and group, by the daemon's parser), the role's shipping actions on that group; a
//!   retention changed in the spec, and retention and tag drift by hand, repaired
//! - destroy_keeps_the_audit_log_group_and_says_so_unless_asked: destroy leaves the group with
//!   its lines and prints its name and retention; a new apply adopts it;
//!   `destroy --delete-audit-log` deletes it
//! - a_log_group_of_the_stacks_name_not_ours_is_refused_and_never_touched: plan and apply
//!   refuse it, destroy (with --delete-audit-log too) leaves it and says so
//! - replicas_from_empty_stand_behind_a_balancer_and_plan_then_says_no_changes: `replicas = 3`:
//!   the balancer (network, internet-facing, two zones, cross-zone, its security group holding
//!   allowed_cidrs), the target group (PROXY v2 on, preservation off, deregistration delay =
//!   shutdown_grace, HTTP checks of 8022/health), the listener, the group (3/3/6 over both
//!   public subnets, ELB health checks), the template (IMDSv2, the role, the daemon config its
//!   user data writes, read by the daemon's parser), no single bastion, `output` names the
//!   balancer
//! - replicas_drift_is_repaired_a_new_build_rolls_them_and_one_to_n_to_one_converges: drift in
//!   the target group, balancer, listener and group repaired; a new build replaces every
//!   replica; 1 -> 3 -> 1 -> 3 and destroy leave nothing
//! - an_interrupted_scaled_out_apply_converges: killed after the template, the target group,
//!   the balancer, the listener
//! - fixed_addresses_give_the_balancer_an_elastic_ip_per_zone_for_allow_lists: one per zone,
//!   `output` lists them, destroy releases them
//! - alarms_on_the_audit_log_group_send_to_the_stacks_topic_drift_is_repaired_and_destroy_removes_them:
//!   the metric filters, the alarms (thresholds, both actions to the topic, tags), the topic
//!   and its email subscriptions; drift in each repaired, a stranger's address left and named;
//!   destroy removes the family and keeps the log group
//! - a_topic_of_the_stacks_name_not_ours_is_refused_and_never_touched
//! - a_binary_with_debug_info_is_planned_with_a_warning_and_a_dist_build_without
//! - brownfield_apply_and_destroy_leave_the_teams_vpc_exactly_as_it_was: a network another
//!   tool made (tests/py/brownfield.py); the plan changes nothing existing; every Describe
//!   answer about it identical after apply and after destroy; the bastion in the team's public
//!   subnet behind the stack's group, the created subnet and its NAT route the stack's; plan
//!   then says no changes; destroy leaves nothing of the stack
//! - brownfield_on_the_default_vpc_splits_it_and_destroy_restores_it: `id = "default"`, a
//!   default subnet public, a created private one without NAT; the default VPC, its subnets,
//!   main table, default group (rules kept), ACL and gateway identical after apply and destroy
//! - brownfield_replicas_span_existing_public_subnets: the VPC named by its Name tag; the
//!   balancer and the group over exactly the two existing public subnets (one named by id, one
//!   by Name); network unchanged after apply and after destroy, which leaves no balancer,
//!   target group, group, template or tagged EC2 resource
//! - brownfield_refusals_name_the_problem_and_change_nothing: a public subnet without a route
//!   to an internet gateway (own table, main table), replicas in one zone, a VPC of another
//!   region, an overlapping and an outside CIDR, an ambiguous subnet and VPC Name: plan and
//!   apply fail naming it, nothing of the stack exists, the network is unchanged
//! - brownfield_created_public_subnets_route_to_the_vpcs_own_gateway: a created public and
//!   private subnet: the public table's 0.0.0.0/0 to the team's gateway (none created), the
//!   NAT in the created public subnet; network unchanged after apply and after destroy

#[path = "harness/moto.rs"]
mod moto;
#[path = "harness/panics.rs"]
mod panics;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aws_sdk_ec2::types::Filter;
use moto::Moto;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse-vpc");

/// Runs a command to completion; fails the test if it printed a Rust panic (the harness
/// rule, `harness/panics.rs`), whatever its exit status.
trait CheckedOutput {
    fn checked_output(&mut self, what: &str) -> Output;
}

impl CheckedOutput for Command {
    #[track_caller]
    fn checked_output(&mut self, what: &str) -> Output {
        let out = self
            .output()
            .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
        let context = format!("{what}: {out:?}");
        panics::assert_no_panic(what, &String::from_utf8_lossy(&out.stdout), &context);
        panics::assert_no_panic(what, &String::from_utf8_lossy(&out.stderr), &context);
        out
    }
}

fn spec_text(stack: &str, cidr_second_octet: u8, nat: &str) -> String {
    let o = cidr_second_octet;
    format!(
        r#"
[stack]
name = "{stack}"
region = "us-east-1"

[vpc]
cidr = "10.{o}.0.0/16"
azs = ["us-east-1a", "us-east-1b"]
nat = "{nat}"

[tags]
project = "gatehouse-test"

[[subnets]]
name = "dmz-a"
tier = "public"
cidr = "10.{o}.0.0/24"
az = "us-east-1a"

[[subnets]]
name = "dmz-b"
tier = "public"
cidr = "10.{o}.1.0/24"
az = "us-east-1b"

[[subnets]]
name = "analysis-a"
tier = "private"
cidr = "10.{o}.10.0/24"
az = "us-east-1a"

[[subnets]]
name = "analysis-b"
tier = "private"
cidr = "10.{o}.11.0/24"
az = "us-east-1b"

[bastion]
subnet = "dmz-a"
ami = "ami-12c6146b"
allowed_cidrs = ["198.51.100.0/24", "203.0.113.7/32"]
gatehouse_download_url = "https://example.org/releases/gatehouse"
gatehouse_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"

[private]
ports = [22, 8888]

[[hosts]]
name = "jupyter"
subnet = "analysis-a"
ami = "ami-12c6146b"
groups = ["research"]
ports = [22, 8888]
private_ip = "10.{o}.10.10"
"#
    )
}

struct Rig {
    moto: Moto,
    dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Rig {
        Rig {
            moto: Moto::start(),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn write_spec(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write spec");
        path
    }

    fn command(&self, spec: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env_remove("AWS_PROFILE");
        for (k, v) in self.moto.env() {
            cmd.env(k, v);
        }
        cmd.arg("--spec")
            .arg(spec)
            .args([
                "--endpoint-url",
                &self.moto.url(),
                "--poll-interval",
                "50ms",
                "--wait-timeout",
                "20s",
            ])
            .args(args);
        cmd
    }

    fn run(&self, spec: &Path, args: &[&str]) -> Output {
        self.command(spec, args).checked_output("run gatehouse-vpc")
    }

    /// Run and require success; returns stdout.
    fn ok(&self, spec: &Path, args: &[&str]) -> String {
        let out = self.run(spec, args);
        assert!(
            out.status.success(),
            "gatehouse-vpc {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn assert_no_changes(&self, spec: &Path, stack: &str) {
        let plan = self.ok(spec, &["plan"]);
        assert_eq!(
            plan,
            format!("stack {stack}: no changes\n"),
            "plan after apply"
        );
        let json: serde_json::Value =
            serde_json::from_str(&self.ok(spec, &["plan", "--json"])).expect("plan json");
        assert_eq!(json["steps"].as_array().map(Vec::len), Some(0), "{json:#}");
    }

    /// The SDK's settings for moto: us-east-1, moto's accept-anything credentials.
    fn sdk(&self) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(self.moto.url())
            .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(
                aws_sdk_ec2::config::Credentials::new("test", "test", None, None, "test"),
            ))
            .build()
    }

    fn ec2(&self) -> (tokio::runtime::Runtime, aws_sdk_ec2::Client) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        (rt, aws_sdk_ec2::Client::new(&self.sdk()))
    }

    fn ssm(&self) -> aws_sdk_ssm::Client {
        aws_sdk_ssm::Client::new(&self.sdk())
    }

    fn s3(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&self.sdk())
                .force_path_style(true)
                .build(),
        )
    }

    /// A stand-in gatehouse binary in the spec's folder: an ELF header and `fill`.
    fn write_binary(&self, name: &str, fill: u8) -> (PathBuf, String) {
        let mut bytes = b"\x7fELF\x02\x01\x01".to_vec();
        bytes.resize(256 * 1024, fill);
        let path = self.dir.path().join(name);
        std::fs::write(&path, &bytes).expect("write binary");
        use sha2::Digest;
        let sha: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        (path, sha)
    }

    fn iam(&self) -> aws_sdk_iam::Client {
        aws_sdk_iam::Client::new(&self.sdk())
    }
}

/// `spec_text` with the binary stored by apply (`gatehouse_binary`) instead of a download URL.
fn spec_with_binary(stack: &str, cidr_second_octet: u8, binary: &str) -> String {
    spec_text(stack, cidr_second_octet, "single").replace(
        "gatehouse_download_url = \"https://example.org/releases/gatehouse\"\n\
         gatehouse_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n",
        &format!("gatehouse_binary = \"{binary}\"\n"),
    )
}

fn tag(stack: &str) -> Filter {
    Filter::builder()
        .name("tag:gatehouse:stack")
        .values(stack)
        .build()
}

/// Count of each kind of EC2 resource tagged with the stack (live instances/NATs only).
async fn tagged_counts(ec2: &aws_sdk_ec2::Client, stack: &str) -> Vec<(&'static str, usize)> {
    let vpcs = ec2
        .describe_vpcs()
        .filters(tag(stack))
        .send()
        .await
        .expect("vpcs")
        .vpcs()
        .len();
    let subnets = ec2
        .describe_subnets()
        .filters(tag(stack))
        .send()
        .await
        .expect("subnets")
        .subnets()
        .len();
    let igws = ec2
        .describe_internet_gateways()
        .filters(tag(stack))
        .send()
        .await
        .expect("igws")
        .internet_gateways()
        .len();
    let eips = ec2
        .describe_addresses()
        .filters(tag(stack))
        .send()
        .await
        .expect("eips")
        .addresses()
        .len();
    let nats = ec2
        .describe_nat_gateways()
        .filter(tag(stack))
        .send()
        .await
        .expect("nats")
        .nat_gateways()
        .iter()
        .filter(|n| n.state().map(|s| s.as_str()) != Some("deleted"))
        // moto 5.2.5 ignores tag filters on DescribeNatGateways: check the tag here.
        .filter(|n| {
            n.tags()
                .iter()
                .any(|t| t.key() == Some("gatehouse:stack") && t.value() == Some(stack))
        })
        .count();
    let rts = ec2
        .describe_route_tables()
        .filters(tag(stack))
        .send()
        .await
        .expect("rts")
        .route_tables()
        .len();
    let sgs = ec2
        .describe_security_groups()
        .filters(tag(stack))
        .send()
        .await
        .expect("sgs")
        .security_groups()
        .iter()
        .filter(|g| g.group_name() != Some("default"))
        .count();
    let instances = ec2
        .describe_instances()
        .filters(tag(stack))
        .send()
        .await
        .expect("instances")
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str()) != Some("terminated"))
        .count();
    vec![
        ("vpc", vpcs),
        ("subnet", subnets),
        ("igw", igws),
        ("eip", eips),
        ("nat", nats),
        ("route table", rts),
        ("security group", sgs),
        ("instance", instances),
    ]
}

fn expected_counts(nats: usize, private_tables: usize) -> Vec<(&'static str, usize)> {
    vec![
        ("vpc", 1),
        ("subnet", 4),
        ("igw", 1),
        ("eip", 1 + nats),
        ("nat", nats),
        ("route table", 1 + private_tables),
        ("security group", 2),
        ("instance", 2),
    ]
}

#[test]
fn apply_from_empty_converges_and_is_idempotent() {
    let rig = Rig::new();
    let spec = rig.write_spec("lab.toml", &spec_text("lab", 50, "single"));

    let plan = rig.ok(&spec, &["plan"]);
    assert!(plan.contains("+ vpc"), "{plan}");
    assert!(plan.contains("+ instance/bastion"), "{plan}");
    let out = rig.ok(&spec, &["apply"]);
    // One round: 45 steps from empty (nat = single; 11 of them the alarms), nothing left for a
    // second round.
    assert_eq!(out, "stack lab: applied 45 step(s); now up to date\n");

    rig.assert_no_changes(&spec, "lab");
    let again = rig.ok(&spec, &["apply"]);
    assert_eq!(again, "stack lab: no changes\n");

    let (rt, ec2) = rig.ec2();
    rt.block_on(async {
        assert_eq!(tagged_counts(&ec2, "lab").await, expected_counts(1, 1));
        // The bastion: IMDSv2 only, hop limit 1, the instance profile, its Elastic IP.
        let res = ec2
            .describe_instances()
            .filters(tag("lab"))
            .filters(
                Filter::builder()
                    .name("tag:gatehouse:resource")
                    .values("instance/bastion")
                    .build(),
            )
            .send()
            .await
            .expect("describe bastion");
        let bastion = res.reservations()[0].instances()[0].clone();
        let meta = bastion.metadata_options().expect("metadata options");
        assert_eq!(meta.http_tokens().map(|t| t.as_str()), Some("required"));
        assert_eq!(meta.http_put_response_hop_limit(), Some(1));
        let profile = bastion
            .iam_instance_profile()
            .and_then(|p| p.arn())
            .unwrap_or_default();
        assert!(profile.ends_with("/gatehouse-lab-bastion"), "{profile}");
        let eips = ec2
            .describe_addresses()
            .filters(tag("lab"))
            .send()
            .await
            .expect("eips");
        let eip = eips
            .addresses()
            .iter()
            .find(|a| a.instance_id() == bastion.instance_id())
            .expect("bastion EIP associated");
        let ip = eip.public_ip().unwrap_or_default().to_string();

        // The VPC has DNS hostnames on; the default group has no rules.
        let vpc_id = bastion.vpc_id().unwrap_or_default().to_string();
        let attr = ec2
            .describe_vpc_attribute()
            .vpc_id(&vpc_id)
            .attribute(aws_sdk_ec2::types::VpcAttributeName::EnableDnsHostnames)
            .send()
            .await
            .expect("vpc attribute");
        assert_eq!(
            attr.enable_dns_hostnames().and_then(|a| a.value()),
            Some(true)
        );
        let default = ec2
            .describe_security_groups()
            .filters(Filter::builder().name("vpc-id").values(&vpc_id).build())
            .filters(
                Filter::builder()
                    .name("group-name")
                    .values("default")
                    .build(),
            )
            .send()
            .await
            .expect("default sg");
        let default = &default.security_groups()[0];
        assert!(default.ip_permissions().is_empty() && default.ip_permissions_egress().is_empty());

        // Bastion SG: 22 from the allowed CIDRs only. Private SG: 22 and 8888 from the bastion SG only.
        let sgs = ec2
            .describe_security_groups()
            .filters(tag("lab"))
            .send()
            .await
            .expect("sgs");
        let by_name = |n: &str| {
            sgs.security_groups()
                .iter()
                .find(|g| g.group_name() == Some(n))
                .cloned()
        };
        let bsg = by_name("lab-bastion").expect("bastion sg");
        let psg = by_name("lab-private").expect("private sg");
        let mut cidrs: Vec<String> = bsg
            .ip_permissions()
            .iter()
            .inspect(|p| assert_eq!((p.from_port(), p.to_port()), (Some(22), Some(22))))
            .flat_map(|p| {
                p.ip_ranges()
                    .iter()
                    .filter_map(|r| r.cidr_ip().map(str::to_string))
            })
            .collect();
        cidrs.sort();
        assert_eq!(cidrs, vec!["198.51.100.0/24", "203.0.113.7/32"]);
        let mut ports: Vec<i32> = Vec::new();
        for p in psg.ip_permissions() {
            assert!(
                p.ip_ranges().is_empty(),
                "private SG must not allow CIDRs: {p:?}"
            );
            for pair in p.user_id_group_pairs() {
                assert_eq!(pair.group_id(), bsg.group_id());
                ports.push(p.from_port().unwrap_or(-1));
            }
        }
        ports.sort();
        assert_eq!(ports, vec![22, 8888]);

        // The private host carries the discovery tags and its fixed address.
        let res = ec2
            .describe_instances()
            .filters(Filter::builder().name("tag:Name").values("jupyter").build())
            .send()
            .await
            .expect("describe jupyter");
        let j = res.reservations()[0].instances()[0].clone();
        let tags: std::collections::BTreeMap<_, _> = j
            .tags()
            .iter()
            .map(|t| (t.key().unwrap_or_default(), t.value().unwrap_or_default()))
            .collect();
        assert_eq!(tags.get("gatehouse:groups"), Some(&"research"));
        assert_eq!(tags.get("gatehouse:ports"), Some(&"22,8888"));
        assert_eq!(j.private_ip_address(), Some("10.50.10.10"));

        // The role's inline policy is the least-privilege one.
        let pol = rig
            .iam()
            .get_role_policy()
            .role_name("gatehouse-lab-bastion")
            .policy_name("gatehouse-bastion")
            .send()
            .await
            .expect("role policy");
        let doc = gatehouse_vpc::aws::observe::parse_policy(pol.policy_document());
        assert_eq!(
            doc["Statement"][2]["Resource"],
            "arn:aws:ssm:us-east-1:*:parameter/gatehouse/lab/host_ed25519"
        );

        // output: address and ssh config.
        let out = rig.ok(&spec, &["output", "--user", "alice"]);
        assert!(out.contains(&format!("bastion: {ip}")), "{out}");
        assert!(
            out.contains(&format!(
                "Host lab-bastion\n    HostName {ip}\n    User alice"
            )),
            "{out}"
        );
        assert!(
            out.contains("Host jupyter\n    HostName jupyter\n    ProxyJump lab-bastion"),
            "{out}"
        );
        assert!(
            out.contains("ssh -N -L 8888:jupyter:8888 lab-bastion"),
            "{out}"
        );
        // The IAM user's login name on the bastion (the daemon's mapping), not the IAM name.
        let out = rig.ok(&spec, &["output", "--user", "jane@example.org"]);
        assert!(out.contains("    User jane~40example.org\n"), "{out}");
    });
}

#[test]
fn destroy_removes_only_the_stack() {
    let rig = Rig::new();
    let (rt, ec2) = rig.ec2();
    // Beside the stack: an untagged VPC with a subnet and a group, and a second stack.
    let (other_vpc, other_subnet, other_sg) = rt.block_on(async {
        let vpc = ec2
            .create_vpc()
            .cidr_block("10.99.0.0/16")
            .send()
            .await
            .expect("vpc");
        let vpc = vpc
            .vpc()
            .and_then(|v| v.vpc_id())
            .expect("vpc id")
            .to_string();
        let subnet = ec2
            .create_subnet()
            .vpc_id(&vpc)
            .cidr_block("10.99.1.0/24")
            .send()
            .await
            .expect("subnet");
        let subnet = subnet
            .subnet()
            .and_then(|s| s.subnet_id())
            .expect("subnet id")
            .to_string();
        let sg = ec2
            .create_security_group()
            .vpc_id(&vpc)
            .group_name("someone-elses")
            .description("not ours")
            .send()
            .await
            .expect("sg");
        (vpc, subnet, sg.group_id().expect("sg id").to_string())
    });
    let lab = rig.write_spec("lab.toml", &spec_text("lab", 50, "per_az"));
    let other = rig.write_spec("other.toml", &spec_text("other", 60, "single"));
    rig.ok(&lab, &["apply"]);
    rig.ok(&other, &["apply"]);

    // The host key parameter, created by the daemon's own code from the config gatehouse-vpc
    // writes into the bastion's user data.
    let ssm = rig.ssm();
    let first = rt.block_on(daemon_host_key(&ssm, "lab"));
    let out = rig.ok(&lab, &["destroy"]);
    assert!(out.contains("stack lab: destroyed"), "{out}");
    // Everything but the audit trail, which outlives the stack.
    assert!(
        out.contains("kept: log group /gatehouse/lab/audit: the audit trail outlives the stack"),
        "{out}"
    );
    let logs = rig.logs();
    rt.block_on(async {
        assert!(log_group(&logs, "lab").await.is_some(), "kept by destroy");
        assert!(log_group(&logs, "other").await.is_some(), "another stack's");
    });
    rt.block_on(async {
        let gone = ssm
            .get_parameter()
            .name("/gatehouse/lab/host_ed25519")
            .send()
            .await;
        assert!(
            gone.is_err(),
            "the daemon's host key parameter must be deleted with its stack"
        );
    });
    rt.block_on(async {
        let left: Vec<_> = tagged_counts(&ec2, "lab")
            .await
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        assert!(left.is_empty(), "tagged resources left: {left:?}");
        let role = rig
            .iam()
            .get_role()
            .role_name("gatehouse-lab-bastion")
            .send()
            .await;
        assert!(role.is_err(), "role must be gone");
        let profile = rig
            .iam()
            .get_instance_profile()
            .instance_profile_name("gatehouse-lab-bastion")
            .send()
            .await;
        assert!(profile.is_err(), "instance profile must be gone");
        // Untouched: the untagged VPC, its subnet and group.
        let v = ec2
            .describe_vpcs()
            .vpc_ids(&other_vpc)
            .send()
            .await
            .expect("untagged vpc still there");
        assert_eq!(v.vpcs().len(), 1);
        let s = ec2
            .describe_subnets()
            .subnet_ids(&other_subnet)
            .send()
            .await
            .expect("untagged subnet");
        assert_eq!(s.subnets().len(), 1);
        let g = ec2
            .describe_security_groups()
            .group_ids(&other_sg)
            .send()
            .await
            .expect("untagged sg");
        assert_eq!(g.security_groups().len(), 1);
        assert_eq!(tagged_counts(&ec2, "other").await, expected_counts(1, 1));
    });
    // The other stack is intact and still converged; destroying again is a no-op.
    rig.assert_no_changes(&other, "other");
    let again = rig.ok(&lab, &["destroy"]);
    assert!(again.contains("destroyed (0 step(s))"), "{again}");
    // A new stack of the same name gets a new host key, not the old stack's.
    rig.ok(&lab, &["apply"]);
    let second = rt.block_on(daemon_host_key(&ssm, "lab"));
    assert_ne!(
        first.public_key(),
        second.public_key(),
        "a re-created stack must not reuse the destroyed stack's host key"
    );
}

/// Loads or creates the host key of stack `stack` as its bastion does at start: the `[aws]`
/// settings of the daemon config gatehouse-vpc renders, read by the daemon's config parser,
/// passed to the daemon's `hostkey::load_or_create`.
async fn daemon_host_key(
    ssm: &aws_sdk_ssm::Client,
    stack: &str,
) -> gatehouse_config::ssh_key::PrivateKey {
    let spec =
        gatehouse_vpc::spec::parse("t.toml", &spec_text(stack, 50, "per_az"), None).expect("spec");
    let text = gatehouse_vpc::userdata::daemon_config(&spec, "vpc-0123456789abcdef0", ACCOUNT);
    let config = gatehouse_config::parse(&text, Path::new("gatehouse.toml"))
        .unwrap_or_else(|e| panic!("the rendered daemon config is invalid: {e}\n{text}"));
    let aws = config.aws.expect("[aws]");
    let parameter = aws
        .host_key_ssm_parameter
        .as_deref()
        .expect("host_key_ssm_parameter");
    gatehouse_aws::hostkey::load_or_create(
        ssm,
        parameter,
        &aws.host_key_tags,
        "host key",
        &gatehouse_aws::Calls::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("host key: {e}"))
}

#[test]
fn interrupted_apply_converges() {
    let rig = Rig::new();
    let spec = rig.write_spec("lab.toml", &spec_text("lab", 50, "per_az"));
    let (rt, ec2) = rig.ec2();
    // The plan from empty has 49 steps (see `plan`). Kill at several points: after the VPC,
    // mid-network, right after the audit log group, mid-IAM, after the bastion launched,
    // between the instances and the EIP, mid-filters, after the alarm topic, mid-alarms.
    let steps = rig.ok(&spec, &["plan"]);
    assert!(
        steps.contains("33 to create, 16 to change, 0 to delete"),
        "{steps}"
    );
    let group_step = steps
        .lines()
        .position(|l| l.starts_with("+ log group /gatehouse/lab/audit "))
        .unwrap_or_else(|| panic!("no log group in\n{steps}"))
        + 1;
    assert_eq!(group_step, 31, "{steps}");
    let logs = rig.logs();
    for kill_after in [1, 9, 23, 31, 33, 36, 37, 41, 45, 47] {
        let out = rig
            .command(&spec, &["apply"])
            .env(
                "GATEHOUSE_VPC_TEST_KILL_AFTER_STEPS",
                kill_after.to_string(),
            )
            .checked_output("run");
        assert_eq!(
            out.status.code(),
            Some(137),
            "kill_after {kill_after}: {out:?}"
        );
        let out = rig.ok(&spec, &["apply"]);
        assert!(out.contains("stack lab:"), "{out}");
        rig.assert_no_changes(&spec, "lab");
        rt.block_on(async {
            assert_eq!(
                tagged_counts(&ec2, "lab").await,
                expected_counts(2, 2),
                "after kill at {kill_after}"
            );
            assert_eq!(
                log_group(&logs, "lab").await.map(|g| g.0),
                Some(Some(365)),
                "after kill at {kill_after}"
            );
        });
        // From empty again: the audit log group too.
        rig.ok(&spec, &["destroy", "--delete-audit-log"]);
    }
}

#[test]
fn drift_is_planned_and_repaired() {
    let rig = Rig::new();
    let spec = rig.write_spec("lab.toml", &spec_text("lab", 50, "single"));
    rig.ok(&spec, &["apply"]);
    let (rt, ec2) = rig.ec2();
    rt.block_on(async {
        // Remove the private default route by hand.
        let rts = ec2
            .describe_route_tables()
            .filters(tag("lab"))
            .filters(
                Filter::builder()
                    .name("tag:gatehouse:resource")
                    .values("rt/private")
                    .build(),
            )
            .send()
            .await
            .expect("rts");
        let rt_id = rts.route_tables()[0]
            .route_table_id()
            .expect("rt id")
            .to_string();
        ec2.delete_route()
            .route_table_id(&rt_id)
            .destination_cidr_block("0.0.0.0/0")
            .send()
            .await
            .expect("delete route");
        // Remove an allowed CIDR and open SSH to the world on the bastion group.
        let sgs = ec2
            .describe_security_groups()
            .filters(
                Filter::builder()
                    .name("group-name")
                    .values("lab-bastion")
                    .build(),
            )
            .send()
            .await
            .expect("sg");
        let gid = sgs.security_groups()[0]
            .group_id()
            .expect("gid")
            .to_string();
        let perm = |cidr: &str| {
            aws_sdk_ec2::types::IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(22)
                .to_port(22)
                .ip_ranges(aws_sdk_ec2::types::IpRange::builder().cidr_ip(cidr).build())
                .build()
        };
        ec2.revoke_security_group_ingress()
            .group_id(&gid)
            .ip_permissions(perm("203.0.113.7/32"))
            .send()
            .await
            .expect("revoke");
        ec2.authorize_security_group_ingress()
            .group_id(&gid)
            .ip_permissions(perm("0.0.0.0/0"))
            .send()
            .await
            .expect("authorize");
    });
    let plan = rig.ok(&spec, &["plan"]);
    assert!(
        plan.contains("~ rt/private") && plan.contains("+ route 0.0.0.0/0 -> nat/us-east-1a"),
        "{plan}"
    );
    assert!(plan.contains("+ ingress tcp 22 203.0.113.7/32"), "{plan}");
    assert!(plan.contains("- ingress tcp 22 0.0.0.0/0"), "{plan}");
    assert!(
        plan.contains("0 to create, 3 to change, 0 to delete"),
        "{plan}"
    );
    rig.ok(&spec, &["apply"]);
    rig.assert_no_changes(&spec, "lab");
}

#[test]
fn nat_mode_changes_converge() {
    let rig = Rig::new();
    let (rt, ec2) = rig.ec2();
    for (nat, nats, private_tables) in [
        ("per_az", 2, 2),
        ("single", 1, 1),
        ("none", 0, 1),
        ("per_az", 2, 2),
    ] {
        let spec = rig.write_spec("lab.toml", &spec_text("lab", 50, nat));
        rig.ok(&spec, &["apply"]);
        rig.assert_no_changes(&spec, "lab");
        rt.block_on(async {
            assert_eq!(
                tagged_counts(&ec2, "lab").await,
                expected_counts(nats, private_tables),
                "nat = {nat}"
            );
        });
    }
}

/// moto's account.
const ACCOUNT: &str = "123456789012";

#[test]
fn a_local_binary_is_stored_in_the_stacks_private_bucket_and_named_by_the_user_data() {
    let rig = Rig::new();
    let (rt, ec2) = rig.ec2();
    let s3 = rig.s3();
    let (_, sha_a) = rig.write_binary("gatehouse", 0xa5);
    let spec = rig.write_spec("bin.toml", &spec_with_binary("bin", 70, "gatehouse"));
    let bucket = format!("gatehouse-bin-{ACCOUNT}");

    let plan = rig.ok(&spec, &["plan"]);
    assert!(
        plan.contains(&format!("+ bucket {bucket}")),
        "no bucket in the plan:\n{plan}"
    );
    assert!(
        plan.contains(&format!("+ bucket {bucket}/gatehouse/{sha_a}")),
        "no upload in the plan:\n{plan}"
    );
    rig.ok(&spec, &["apply"]);
    rig.assert_no_changes(&spec, "bin");

    rt.block_on(async {
        // The bucket: the stack's tag, private, encrypted, TLS only, holding the binary.
        let tags = s3
            .get_bucket_tagging()
            .bucket(&bucket)
            .send()
            .await
            .expect("bucket tags");
        assert!(
            tags.tag_set()
                .iter()
                .any(|t| t.key() == "gatehouse:stack" && t.value() == "bin"),
            "{tags:?}"
        );
        let block = s3
            .get_public_access_block()
            .bucket(&bucket)
            .send()
            .await
            .expect("public access block");
        let block = block
            .public_access_block_configuration()
            .expect("configuration");
        assert_eq!(
            (
                block.block_public_acls(),
                block.ignore_public_acls(),
                block.block_public_policy(),
                block.restrict_public_buckets()
            ),
            (Some(true), Some(true), Some(true), Some(true))
        );
        let enc = s3
            .get_bucket_encryption()
            .bucket(&bucket)
            .send()
            .await
            .expect("encryption");
        let algo = enc
            .server_side_encryption_configuration()
            .and_then(|c| c.rules().first())
            .and_then(|r| r.apply_server_side_encryption_by_default())
            .map(|d| d.sse_algorithm().as_str().to_string());
        assert_eq!(algo.as_deref(), Some("AES256"));
        let policy = s3
            .get_bucket_policy()
            .bucket(&bucket)
            .send()
            .await
            .expect("bucket policy");
        let policy: serde_json::Value =
            serde_json::from_str(policy.policy().expect("policy")).expect("json");
        assert_eq!(policy["Statement"][0]["Effect"], "Deny", "{policy:#}");
        assert_eq!(
            policy["Statement"][0]["Condition"]["Bool"]["aws:SecureTransport"],
            "false",
            "{policy:#}"
        );
        let object = s3
            .get_object()
            .bucket(&bucket)
            .key(format!("gatehouse/{sha_a}"))
            .send()
            .await
            .expect("the binary is stored");
        let body = object.body.collect().await.expect("body").into_bytes();
        assert_eq!(body.len(), 256 * 1024);
        assert_eq!(&body[..4], b"\x7fELF");
        // The same request not over TLS is denied by the bucket policy (moto serves http for
        // AWS's https and reads the transport from X-Forwarded-Proto: tests/py/moto_fixes.py).
        let plain = s3
            .get_object()
            .bucket(&bucket)
            .key(format!("gatehouse/{sha_a}"))
            .customize()
            .mutate_request(|req| {
                req.headers_mut().insert("x-forwarded-proto", "http");
            })
            .send()
            .await;
        let status = plain
            .as_ref()
            .err()
            .and_then(|e| e.raw_response())
            .map(|r| r.status().as_u16());
        assert_eq!(status, Some(403), "a plain-http GetObject: {plain:?}");

        // The role may read the bucket's binaries and nothing else of S3.
        let pol = rig
            .iam()
            .get_role_policy()
            .role_name("gatehouse-bin-bastion")
            .policy_name("gatehouse-bastion")
            .send()
            .await
            .expect("role policy");
        let doc = gatehouse_vpc::aws::observe::parse_policy(pol.policy_document());
        let s3_statements: Vec<&serde_json::Value> = doc["Statement"]
            .as_array()
            .expect("statements")
            .iter()
            .filter(|s| s.to_string().contains("s3:"))
            .collect();
        assert_eq!(s3_statements.len(), 1, "{doc:#}");
        assert_eq!(s3_statements[0]["Action"], serde_json::json!(["s3:GetObject"]));
        assert_eq!(
            s3_statements[0]["Resource"],
            format!("arn:aws:s3:::{bucket}/gatehouse/*")
        );

        // The user data fetches exactly that object and checks its digest.
        let text = bastion_user_data(&ec2, "bin").await;
        assert!(
            text.contains(&format!(
                "/usr/local/sbin/gatehouse-fetch 'https://{bucket}.s3.us-east-1.amazonaws.com/gatehouse/{sha_a}' 'us-east-1' '{sha_a}'"
            )),
            "{text}"
        );
        assert!(text.contains("- path: /usr/local/sbin/gatehouse-fetch"), "{text}");
    });

    // A new build: uploaded, the bastion replaced, the old binary deleted after it.
    let (_, sha_b) = rig.write_binary("gatehouse", 0x5a);
    let plan = rig.ok(&spec, &["plan"]);
    let upload = plan
        .find(&format!("+ bucket {bucket}/gatehouse/{sha_b}"))
        .unwrap_or_else(|| panic!("no upload of the new binary:\n{plan}"));
    let launch = plan
        .find("+ instance/bastion")
        .unwrap_or_else(|| panic!("the bastion is not replaced:\n{plan}"));
    let delete = plan
        .find(&format!("- bucket {bucket}/gatehouse/{sha_a}"))
        .unwrap_or_else(|| panic!("the old binary is kept:\n{plan}"));
    assert!(upload < launch && launch < delete, "{plan}");
    assert!(!plan.contains("instance/jupyter"), "{plan}");
    rig.ok(&spec, &["apply"]);
    rig.assert_no_changes(&spec, "bin");
    rt.block_on(async {
        let list = s3
            .list_objects_v2()
            .bucket(&bucket)
            .send()
            .await
            .expect("list");
        let keys: Vec<&str> = list.contents().iter().filter_map(|o| o.key()).collect();
        assert_eq!(keys, vec![format!("gatehouse/{sha_b}")]);
        assert!(bastion_user_data(&ec2, "bin").await.contains(&sha_b));
    });

    // Someone changes the bucket: apply puts it back.
    rt.block_on(async {
        s3.delete_public_access_block()
            .bucket(&bucket)
            .send()
            .await
            .expect("delete block");
        s3.delete_bucket_policy()
            .bucket(&bucket)
            .send()
            .await
            .expect("delete policy");
    });
    let plan = rig.ok(&spec, &["plan"]);
    assert!(
        plan.contains(&format!("~ bucket {bucket}")) && plan.contains("block public access"),
        "{plan}"
    );
    rig.ok(&spec, &["apply"]);
    rig.assert_no_changes(&spec, "bin");

    // destroy empties and deletes the bucket.
    rig.ok(&spec, &["destroy"]);
    rt.block_on(async {
        let head = s3.head_bucket().bucket(&bucket).send().await;
        assert!(head.is_err(), "the bucket outlived destroy");
        assert_eq!(
            tagged_counts(&ec2, "bin")
                .await
                .iter()
                .map(|(_, n)| n)
                .sum::<usize>(),
            0
        );
    });
}

#[test]
fn a_bucket_of_the_stacks_name_that_is_not_ours_is_refused_and_kept() {
    let rig = Rig::new();
    let (rt, _) = rig.ec2();
    let s3 = rig.s3();
    let bucket = format!("gatehouse-lab-{ACCOUNT}");
    rt.block_on(async {
        s3.create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .expect("create bucket");
        s3.put_object()
            .bucket(&bucket)
            .key("theirs")
            .body(aws_sdk_s3::primitives::ByteStream::from_static(b"x"))
            .send()
            .await
            .expect("put object");
    });
    rig.write_binary("gatehouse", 1);
    let spec = rig.write_spec("lab.toml", &spec_with_binary("lab", 50, "gatehouse"));
    let out = rig.run(&spec, &["plan"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "S3 bucket \"{bucket}\" exists but does not carry gatehouse:stack = lab"
        )),
        "{err}"
    );
    rig.ok(&spec, &["destroy"]);
    rt.block_on(async {
        s3.head_object()
            .bucket(&bucket)
            .key("theirs")
            .send()
            .await
            .expect("the foreign bucket and its object are kept");
    });
}

/// The tests' venv Python running `script` with `args`, `input` on its stdin.
fn python_with_input(script: &str, args: &[&str], input: &[u8]) -> Output {
    let python = moto::moto_server_path().with_file_name("python3");
    let mut child = Command::new(&python)
        .args(["-c", script])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write");
    child.wait_with_output().expect("python")
}

/// What parliament (a lint of IAM policies against AWS's Service Authorization Reference:
/// actions, the resource types each takes, the condition keys each resource type supports)
/// finds in `docs` (name -> policy document): one line per finding, `name: ISSUE detail`.
fn lint_policies(docs: &serde_json::Value) -> Vec<String> {
    let script = r#"
import json, sys, parliament
for name, doc in json.load(sys.stdin).items():
    for f in parliament.analyze_policy_string(json.dumps(doc)).findings:
        print(f"{name}: {f.issue} {json.dumps(f.detail, default=str)}")
"#;
    let out = python_with_input(script, &[], docs.to_string().as_bytes());
    assert!(
        out.status.success(),
        "parliament failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_deployers_and_the_bastions_policies_pass_the_iam_reference_lint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = dir.path().join("gatehouse");
    std::fs::write(&binary, b"\x7fELF").expect("write");
    let spec_path = dir.path().join("lab.toml");
    std::fs::write(
        &spec_path,
        spec_with_binary("lab", 50, &binary.display().to_string()),
    )
    .expect("write spec");
    let out = Command::new(BIN)
        .arg("--spec")
        .arg(&spec_path)
        .args(["policy", "--json"])
        .checked_output("gatehouse-vpc policy");
    assert!(out.status.success(), "{out:?}");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let spec = gatehouse_vpc::spec::load(&spec_path, None, gatehouse_vpc::spec::ReadBinary::Yes)
        .expect("spec");
    let bucket = gatehouse_vpc::names::binary_bucket("lab", ACCOUNT);
    // And the role with EC2 Instance Connect: its statement's tag condition.
    let push_path = dir.path().join("push.toml");
    std::fs::write(
        &push_path,
        spec_with_binary("lab", 50, &binary.display().to_string())
            + "\n[bastion.daemon.aws]\ninstance_connect = true\n",
    )
    .expect("write spec");
    let push_spec =
        gatehouse_vpc::spec::load(&push_path, None, gatehouse_vpc::spec::ReadBinary::Yes)
            .expect("spec with instance_connect");
    let push_role = gatehouse_vpc::policy::bastion_policy(&push_spec, Some(&bucket), ACCOUNT);
    assert!(
        push_role
            .to_string()
            .contains("ec2-instance-connect:SendSSHPublicKey"),
        "{push_role:#}"
    );
    // And the role with the IAM change events (and a group prefix): the queue statement.
    let events_spec = gatehouse_vpc::spec::parse(
        "t.toml",
        &(spec_with_events("lab", 50) + "\n[bastion.daemon.aws]\niam_group_prefix = \"gh-\"\n"),
        None,
    )
    .expect("spec with iam_events");
    let events_role = gatehouse_vpc::policy::bastion_policy(&events_spec, None, ACCOUNT);
    assert!(
        events_role.to_string().contains("sqs:ReceiveMessage")
            && events_role.to_string().contains("iam:ListGroupsForUser"),
        "{events_role:#}"
    );
    // The deployer's statements for them are in the printed policy (every stack reads them).
    for sid in [
        "TheIamEventQueue",
        "TheIamEventRule",
        "ListTheTrails",
        "ReadTheTrailsOfIamEvents",
        "ListTheLogGroups",
        "TheAuditLogGroup",
        "TagTheAuditLogGroup",
    ] {
        assert!(
            printed["policy"]["Statement"]
                .as_array()
                .is_some_and(|l| l.iter().any(|s| s["Sid"] == sid)),
            "no {sid}: {:#}",
            printed["policy"]
        );
    }
    let docs = serde_json::json!({
        "deployer": printed["policy"],
        "bastion": gatehouse_vpc::policy::bastion_policy(&spec, Some(&bucket), ACCOUNT),
        "bastion with instance_connect": push_role,
        "bastion with iam_events": events_role,
        // The queue's own policy (a resource policy: parliament checks its actions and keys).
        "event queue": serde_json::from_str::<serde_json::Value>(
            &gatehouse_vpc::plan::events::event_queue_attributes("lab", ACCOUNT)["Policy"],
        )
        .expect("queue policy"),
    });
    let findings = lint_policies(&docs);
    // Accepted, as the README says: the deployer sets the bucket's policy (the TLS-only Deny),
    // which parliament calls a possible escalation because it could also grant reads; and the
    // EC2 creates are on `*`.
    let creates = [
        "ec2:AllocateAddress",
        "ec2:CreateInternetGateway",
        "ec2:CreateLaunchTemplate",
        "ec2:CreateNatGateway",
        "ec2:CreateRouteTable",
        "ec2:CreateSecurityGroup",
        "ec2:CreateSubnet",
        "ec2:CreateVpc",
        "ec2:RunInstances",
    ];
    let accepted = |f: &str| {
        if let Some(detail) = f.strip_prefix("deployer: RESOURCE_STAR ") {
            let listed: Vec<String> = serde_json::from_str(detail).unwrap_or_default();
            return !listed.is_empty() && listed.iter().all(|a| creates.contains(&a.as_str()));
        }
        f.starts_with("deployer: RESOURCE_POLICY_PRIVILEGE_ESCALATION")
            && f.contains("s3:PutBucketPolicy")
    };
    let unexpected: Vec<&String> = findings.iter().filter(|f| !accepted(f)).collect();
    assert!(unexpected.is_empty(), "{unexpected:#?}");

    // The lint sees what it is for: a condition key the action's resource does not support,
    // a resource type the action does not take.
    let findings = lint_policies(&serde_json::json!({"wrong": {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "ec2:DeleteVpc", "Resource": "arn:aws:ec2:us-east-1:*:subnet/*"},
            {"Effect": "Allow", "Action": "ec2:CreateSubnet", "Resource": "arn:aws:ec2:us-east-1:*:vpc/*",
             "Condition": {"StringEquals": {"ec2:CreateAction": "CreateSubnet"}}}
        ]
    }}));
    assert!(
        findings.iter().any(|f| f.contains("RESOURCE_MISMATCH")),
        "{findings:#?}"
    );
    assert!(
        findings
            .iter()
            .any(|f| f.contains("UNKNOWN_CONDITION_FOR_ACTION")),
        "{findings:#?}"
    );
}

#[test]
fn foreign_iam_role_is_refused() {
    let rig = Rig::new();
    let (rt, _) = rig.ec2();
    rt.block_on(async {
        rig.iam()
            .create_role()
            .role_name("gatehouse-lab-bastion")
            .assume_role_policy_document("{}")
            .send()
            .await
            .expect("create role");
    });
    let spec = rig.write_spec("lab.toml", &spec_text("lab", 50, "single"));
    let out = rig.run(&spec, &["plan"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "IAM role \"gatehouse-lab-bastion\" exists but does not carry gatehouse:stack = lab"
        ),
        "{err}"
    );
    // destroy must leave it alone as well, and an untagged parameter under the stack's path.
    let ssm = rig.ssm();
    rt.block_on(async {
        ssm.put_parameter()
            .name("/gatehouse/lab/host_ed25519")
            .value("someone else's")
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .send()
            .await
            .expect("put parameter");
    });
    rig.ok(&spec, &["destroy"]);
    rt.block_on(async {
        rig.iam()
            .get_role()
            .role_name("gatehouse-lab-bastion")
            .send()
            .await
            .expect("role kept");
        ssm.get_parameter()
            .name("/gatehouse/lab/host_ed25519")
            .send()
            .await
            .expect("untagged parameter kept");
    });
}

#[test]
fn bad_specs_are_rejected_before_any_aws_call() {
    // A closed port: any AWS call would fail with a connection error, not the spec message.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let good = spec_text("lab", 50, "single");
    let every: &[&str] = &["plan", "apply", "destroy", "output"];
    let plan_and_apply: &[&str] = &["plan", "apply"];
    let mut cases: Vec<(&str, String, &str, &[&str])> = vec![
        (
            "overlap",
            good.replace("10.50.11.0/24", "10.50.10.128/25"),
            "overlaps subnet analysis-a",
            every,
        ),
        (
            "outside",
            good.replace("10.50.11.0/24", "10.51.11.0/24"),
            "is outside the vpc cidr 10.50.0.0/16",
            every,
        ),
        (
            "unknown az",
            good.replace("\"us-east-1b\"]", "\"eu-west-1b\"]"),
            "unknown availability zone \"eu-west-1b\"",
            every,
        ),
        (
            "world",
            good.replace("\"198.51.100.0/24\", ", "\"0.0.0.0/0\", "),
            "set allow_world = true",
            every,
        ),
        (
            "unknown key",
            good.replace("[private]", "[private]\nport = 22"),
            "unknown field `port`",
            every,
        ),
        (
            "user data",
            format!(
                "{good}\n[bastion.daemon.penalties]\nexempt = [{}]\n",
                (0..1000)
                    .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "bastion user data is",
            every,
        ),
        (
            "bastion private",
            good.replace("subnet = \"dmz-a\"", "subnet = \"analysis-a\""),
            "must be public",
            every,
        ),
        (
            "per_az",
            good.replace("nat = \"single\"", "nat = \"per_az\"")
                .replace(
                    "az = \"us-east-1b\"\n\n[[subnets]]\nname = \"analysis-a\"",
                    "az = \"us-east-1a\"\n\n[[subnets]]\nname = \"analysis-a\"",
                ),
            "needs a public subnet in us-east-1b",
            every,
        ),
        (
            "dotted group",
            good.replace("groups = [\"research\"]", "groups = [\"research.gpu\"]"),
            "group `research.gpu` contains '.'",
            every,
        ),
        (
            "retention",
            good.replace(
                "gatehouse_download_url",
                "audit_retention_days = 42\ngatehouse_download_url",
            ),
            "audit_retention_days = 42: CloudWatch Logs keeps log events for one of 1, 3, 5, 7, \
             14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, \
             3288, 3653 days",
            every,
        ),
        (
            "own audit log group",
            format!("{good}\n[bastion.daemon.aws]\naudit_log_group = \"/elsewhere\"\n"),
            "aws.audit_log_group is written by gatehouse-vpc; remove it",
            every,
        ),
        (
            "own events queue",
            format!(
                "{good}\n[bastion.daemon.aws]\nevents_queue_url = \
                 \"https://sqs.us-east-1.amazonaws.com/123456789012/mine\"\n"
            ),
            "aws.events_queue_url is written by gatehouse-vpc; remove it and set iam_events = true",
            every,
        ),
    ];
    // The binary apply stores: plan and apply read it; destroy and output do not need it.
    let not_elf = dir.path().join("not-elf");
    std::fs::write(&not_elf, "#!/bin/sh\n").expect("write");
    let stored = good.replace(
        "gatehouse_download_url = \"https://example.org/releases/gatehouse\"\n\
         gatehouse_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n",
        "gatehouse_binary = \"BINARY\"\n",
    );
    assert_ne!(stored, good);
    cases.extend([
        (
            "missing binary",
            stored.replace("BINARY", "no-such-file"),
            "gatehouse_binary",
            plan_and_apply,
        ),
        (
            "not an ELF",
            stored.replace("BINARY", "not-elf"),
            "not an ELF executable",
            plan_and_apply,
        ),
        (
            "both",
            stored.replace(
                "gatehouse_binary",
                "gatehouse_download_url = \"https://example.org/g\"\ngatehouse_binary",
            ),
            "set gatehouse_download_url or gatehouse_binary, not both",
            every,
        ),
        (
            "neither",
            stored.replace("gatehouse_binary = \"BINARY\"\n", ""),
            "needs gatehouse_binary",
            every,
        ),
    ]);
    for (what, text, needle, cmds) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).expect("write");
        for &cmd in every {
            let out = Command::new(BIN)
                .env_remove("AWS_PROFILE")
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test")
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{closed}"))
                .env("AWS_MAX_ATTEMPTS", "1")
                .arg("--spec")
                .arg(&path)
                .args(["--endpoint-url", &format!("http://127.0.0.1:{closed}"), cmd])
                .checked_output("run");
            let err = String::from_utf8_lossy(&out.stderr);
            if cmds.contains(&cmd) {
                assert_eq!(out.status.code(), Some(64), "{what}/{cmd}: {err}");
                assert!(
                    err.contains(needle),
                    "{what}/{cmd}: expected {needle:?} in:\n{err}"
                );
                assert!(
                    err.contains(&format!("{}:", path.display())),
                    "{what}: no file:line:col in {err}"
                );
            } else {
                // Past the spec: the AWS call to the closed port fails, not the spec.
                assert_eq!(out.status.code(), Some(1), "{what}/{cmd}: {err}");
                assert!(!err.contains(needle), "{what}/{cmd}: {err}");
            }
        }
    }
}

#[test]
fn user_data_is_cloud_config_under_16k() {
    let spec =
        gatehouse_vpc::spec::parse("t.toml", &spec_text("lab", 50, "single"), None).expect("spec");
    check_user_data(&spec, None);
    // With a stored binary: the fetcher is written too, and is valid Python.
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = dir.path().join("gatehouse");
    std::fs::write(&binary, b"\x7fELF and the rest").expect("write");
    let spec = gatehouse_vpc::spec::parse(
        "t.toml",
        &spec_with_binary("lab", 50, &binary.display().to_string()),
        None,
    )
    .expect("spec");
    check_user_data(&spec, Some("gatehouse-lab-123456789012"));
    // Replicas: port 22 speaks PROXY v2 (the socket's drop-in), the health port, no plain
    // listener.
    let spec = gatehouse_vpc::spec::parse("t.toml", &spec_with_replicas("lab", 50, 3), None)
        .expect("spec");
    check_user_data(&spec, None);
}

fn check_user_data(spec: &gatehouse_vpc::spec::Spec, bucket: Option<&str>) {
    let text = gatehouse_vpc::userdata::render(spec, "vpc-0123456789abcdef0", ACCOUNT, bucket);
    assert!(text.len() < 16384, "user data is {} bytes", text.len());
    assert!(text.starts_with("#cloud-config\n"));
    let check = r#"
import sys, yaml, tomllib
doc = yaml.safe_load(sys.stdin.read())
files = {f["path"]: f for f in doc["write_files"]}
stored = sys.argv[1] != "-"
replicas = sys.argv[2] == "replicas"
expected = {"/etc/gatehouse/gatehouse.toml", "/etc/systemd/system/gatehouse.service", "/etc/systemd/system/gatehouse.socket", "/etc/systemd/system/gatehouse.service.d/aws.conf", "/usr/local/sbin/gatehouse-install"}
if stored:
    expected.add("/usr/local/sbin/gatehouse-fetch")
    fetcher = files["/usr/local/sbin/gatehouse-fetch"]
    assert fetcher["permissions"] == "0755", fetcher
    compile(fetcher["content"], "gatehouse-fetch", "exec")
    assert fetcher["content"].startswith('#!/usr/bin/python3')
if replicas:
    expected.add("/etc/systemd/system/gatehouse.socket.d/proxy.conf")
    drop_in = files["/etc/systemd/system/gatehouse.socket.d/proxy.conf"]["content"]
    assert "[Socket]\nFileDescriptorName=proxy\n" in drop_in, drop_in
assert set(files) == expected, files.keys()
cfg = tomllib.loads(files["/etc/gatehouse/gatehouse.toml"]["content"])
if replicas:
    assert cfg["server"]["listen"] == [], cfg
    assert cfg["server"]["proxy_listen"] == ["0.0.0.0:22"], cfg
    assert cfg["server"]["health_listen"] == "0.0.0.0:8022", cfg
else:
    assert cfg["server"]["listen"] == ["0.0.0.0:22"], cfg
    assert "proxy_listen" not in cfg["server"], cfg
assert cfg["aws"]["vpc_ids"] == ["vpc-0123456789abcdef0"], cfg
assert cfg["aws"]["host_key_ssm_parameter"] == "/gatehouse/lab/host_ed25519", cfg
assert cfg["audit"]["file"] == "/var/lib/gatehouse/audit.jsonl", cfg
assert cfg["aws"]["audit_log_group"] == "/gatehouse/lab/audit", cfg
unit = files["/etc/systemd/system/gatehouse.service"]["content"]
assert "ExecStart=/usr/local/bin/gatehouse serve --config /etc/gatehouse/gatehouse.toml" in unit
assert "ListenStream=22" in files["/etc/systemd/system/gatehouse.socket"]["content"]
assert "IPAddressDeny=\n" in files["/etc/systemd/system/gatehouse.service.d/aws.conf"]["content"]
script = files["/usr/local/sbin/gatehouse-install"]["content"]
if stored:
    assert "/usr/local/sbin/gatehouse-fetch 'https://" + sys.argv[1] + ".s3.us-east-1.amazonaws.com/gatehouse/" in script, script
else:
    assert "sha256sum -c" in script and "https://example.org/releases/gatehouse" in script
import subprocess
assert subprocess.run(["sh", "-n"], input=script.encode()).returncode == 0, "install script: sh syntax error"
assert doc["runcmd"] == [["/usr/local/sbin/gatehouse-install"]], doc["runcmd"]
print("ok")
"#;
    let mode = if spec.bastion.scaled_out() {
        "replicas"
    } else {
        "single"
    };
    let out = python_with_input(check, &[bucket.unwrap_or("-"), mode], text.as_bytes());
    assert!(
        out.status.success(),
        "cloud-config check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        text
    );
    // The unit embedded is the one in systemd/.
    assert!(text.contains("SystemCallFilter=@system-service"));
}

#[test]
fn destroy_never_touches_foreign_resources_inside_the_stack_vpc() {
    let rig = Rig::new();
    let spec = rig.write_spec("lab.toml", &spec_text("lab", 50, "single"));
    rig.ok(&spec, &["apply"]);
    let (rt, ec2) = rig.ec2();
    // Someone else's instance and security group inside the stack's VPC and private subnet.
    let (foreign_instance, foreign_sg) = rt.block_on(async {
        let subnets = ec2
            .describe_subnets()
            .filters(tag("lab"))
            .filters(
                Filter::builder()
                    .name("tag:gatehouse:resource")
                    .values("subnet/analysis-b")
                    .build(),
            )
            .send()
            .await
            .expect("subnets");
        let subnet = &subnets.subnets()[0];
        let vpc = subnet.vpc_id().expect("vpc").to_string();
        let sg = ec2
            .create_security_group()
            .vpc_id(&vpc)
            .group_name("not-gatehouse")
            .description("someone else's")
            .send()
            .await
            .expect("sg");
        let sg = sg.group_id().expect("sg id").to_string();
        let run = ec2
            .run_instances()
            .image_id("ami-12c6146b")
            .min_count(1)
            .max_count(1)
            .subnet_id(subnet.subnet_id().expect("subnet id"))
            .security_group_ids(&sg)
            .send()
            .await
            .expect("run foreign instance");
        (
            run.instances()[0].instance_id().expect("id").to_string(),
            sg,
        )
    });
    // Destroy removes what it can; the VPC cannot go while foreign things live in it.
    let out = rig
        .command(&spec, &["destroy", "--wait-timeout", "1s"])
        .checked_output("destroy");
    let err = String::from_utf8_lossy(&out.stderr);
    rt.block_on(async {
        let i = ec2
            .describe_instances()
            .instance_ids(&foreign_instance)
            .send()
            .await
            .expect("describe");
        let state = i.reservations()[0].instances()[0]
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string());
        assert_eq!(
            state.as_deref(),
            Some("running"),
            "foreign instance touched; destroy said:\n{err}"
        );
        let g = ec2
            .describe_security_groups()
            .group_ids(&foreign_sg)
            .send()
            .await
            .expect("foreign sg kept");
        assert_eq!(g.security_groups().len(), 1);
        // Everything of the stack that does not hold the foreign resources is gone.
        let counts = tagged_counts(&ec2, "lab").await;
        assert!(
            counts.contains(&("instance", 0)) && counts.contains(&("nat", 0)),
            "{counts:?}"
        );
    });
    eprintln!(
        "destroy with foreign resources inside: {}\n{err}",
        out.status
    );
    if !out.status.success() {
        // The refusal names the resource and AWS's reason.
        assert!(err.contains("DependencyViolation"), "{err}");
    }
}

// ---- IAM change events ([bastion] iam_events) ----

/// `spec_text` with `[bastion] iam_events = true`.
fn spec_with_events(stack: &str, cidr_second_octet: u8) -> String {
    spec_with_events_set(stack, cidr_second_octet, true)
}

/// `spec_text` with `[bastion] iam_events` set explicitly.
fn spec_with_events_set(stack: &str, cidr_second_octet: u8, on: bool) -> String {
    let text = spec_text(stack, cidr_second_octet, "single");
    let with = text.replace(
        "gatehouse_download_url = ",
        &format!("iam_events = {on}\ngatehouse_download_url = "),
    );
    assert_ne!(with, text);
    with
}

const QUEUE: &str = "gatehouse-lab-iam-events";
const RULE: &str = "gatehouse-lab-iam-changes";
const QUEUE_ARN: &str = "arn:aws:sqs:us-east-1:123456789012:gatehouse-lab-iam-events";

impl Rig {
    fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk())
    }

    fn events(&self) -> aws_sdk_eventbridge::Client {
        aws_sdk_eventbridge::Client::new(&self.sdk())
    }

    fn cloudtrail(&self) -> aws_sdk_cloudtrail::Client {
        aws_sdk_cloudtrail::Client::new(&self.sdk())
    }

    /// A trail `name` in us-east-1 (and its bucket), multi-region or with global service
    /// events as asked, logging when `logging`.
    async fn trail(&self, name: &str, multi_region: bool, global: bool, logging: bool) {
        let bucket = format!("{name}-trail-logs");
        self.s3()
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .expect("trail bucket");
        let ct = self.cloudtrail();
        ct.create_trail()
            .name(name)
            .s3_bucket_name(&bucket)
            .is_multi_region_trail(multi_region)
            .include_global_service_events(global)
            .send()
            .await
            .expect("create trail");
        if logging {
            ct.start_logging()
                .name(name)
                .send()
                .await
                .expect("start logging");
        }
    }
}

/// The stack's queue URL, or None when there is no queue of its name.
async fn queue_url(sqs: &aws_sdk_sqs::Client) -> Option<String> {
    sqs.get_queue_url()
        .queue_name(QUEUE)
        .send()
        .await
        .ok()
        .and_then(|o| o.queue_url().map(str::to_owned))
}

/// The queue's attributes by name.
async fn queue_attributes(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
) -> std::collections::BTreeMap<String, String> {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .expect("queue attributes")
        .attributes()
        .map(|a| {
            a.iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The rule's targets as (id, arn, rewrites the event).
async fn rule_targets(events: &aws_sdk_eventbridge::Client) -> Vec<(String, String, bool)> {
    events
        .list_targets_by_rule()
        .rule(RULE)
        .send()
        .await
        .expect("targets")
        .targets()
        .iter()
        .map(|t| {
            (
                t.id().to_owned(),
                t.arn().to_owned(),
                t.input().is_some() || t.input_transformer().is_some(),
            )
        })
        .collect()
}

/// The user data of the stack's bastion.
async fn bastion_user_data(ec2: &aws_sdk_ec2::Client, stack: &str) -> String {
    let id = bastion_instance(ec2, stack)
        .await
        .instance_id()
        .expect("id")
        .to_string();
    let attr = ec2
        .describe_instance_attribute()
        .instance_id(&id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .expect("user data");
    let b64 = attr
        .user_data()
        .and_then(|v| v.value())
        .expect("user data value");
    use base64::Engine;
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64"),
    )
    .expect("utf-8")
}

/// The daemon config a cloud-config writes to /etc/gatehouse/gatehouse.toml (a YAML block
/// scalar indented by 6).
fn written_daemon_config(user_data: &str) -> String {
    let start = user_data
        .find("- path: /etc/gatehouse/gatehouse.toml\n")
        .unwrap_or_else(|| panic!("no daemon config in\n{user_data}"));
    let body = &user_data[start..];
    let body = &body[body.find("content: |\n").expect("content") + "content: |\n".len()..];
    body.lines()
        .take_while(|l| l.is_empty() || l.starts_with("      "))
        .map(|l| format!("{}\n", l.get(6..).unwrap_or("")))
        .collect()
}

/// Put `detail` on us-east-1's default bus as CloudTrail puts an IAM call there.
async fn put_iam_call(events: &aws_sdk_eventbridge::Client, detail: serde_json::Value) {
    let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
        .source("aws.iam")
        .detail_type("AWS API Call via CloudTrail")
        .detail(detail.to_string())
        .build();
    let out = events
        .put_events()
        .entries(entry)
        .send()
        .await
        .expect("put events");
    assert_eq!(out.failed_entry_count(), 0, "{out:?}");
}

/// Every message the queue shows in `rounds` receives, by id (the queue is a broadcast:
/// nothing is deleted, every receive sees them again).
async fn queue_messages(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    rounds: usize,
) -> (
    std::collections::BTreeMap<String, serde_json::Value>,
    Vec<usize>,
) {
    let mut seen = std::collections::BTreeMap::new();
    let mut per_round = Vec::new();
    for _ in 0..rounds {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        per_round.push(out.messages().len());
        for m in out.messages() {
            let body: serde_json::Value =
                serde_json::from_str(m.body().unwrap_or_default()).expect("a JSON event");
            seen.insert(m.message_id().unwrap_or_default().to_owned(), body);
        }
    }
    (seen, per_round)
}

#[test]
fn iam_events_from_empty_carry_the_daemons_events_to_the_queue_the_bastion_reads() {
    let rig = Rig::new();
    let (rt, ec2) = rig.ec2();
    rt.block_on(rig.trail("org", true, true, true));
    let spec = rig.write_spec("lab.toml", &spec_with_events("lab", 50));
    let plan = rig.ok(&spec, &["plan"]);
    assert!(plan.contains(&format!("+ sqs queue {QUEUE}")), "{plan}");
    assert!(plan.contains(&format!("+ events rule {RULE}")), "{plan}");
    assert!(
        plan.contains(&format!(
            "~ events rule {RULE} target queue -> {QUEUE}, events as they are"
        )),
        "{plan}"
    );
    // The 45 steps of the stack, and the queue, the rule and its target.
    let out = rig.ok(&spec, &["apply"]);
    assert_eq!(out, "stack lab: applied 48 step(s); now up to date\n");
    rig.assert_no_changes(&spec, "lab");
    assert_eq!(rig.ok(&spec, &["apply"]), "stack lab: no changes\n");

    let sqs = rig.sqs();
    let events = rig.events();
    rt.block_on(async {
        // The queue: a broadcast of 60 s, encrypted, only the rule may send.
        let url = queue_url(&sqs).await.expect("the queue exists");
        let attrs = queue_attributes(&sqs, &url).await;
        let attr = |k: &str| attrs.get(k).cloned().unwrap_or_default();
        assert_eq!(
            attr("MessageRetentionPeriod"),
            gatehouse_aws::events::QUEUE_RETENTION_SECS.to_string()
        );
        assert_eq!(attr("VisibilityTimeout"), "0");
        assert_eq!(attr("ReceiveMessageWaitTimeSeconds"), "20");
        assert_eq!(attr("SqsManagedSseEnabled"), "true");
        assert_eq!(attr("QueueArn"), QUEUE_ARN);
        let policy: serde_json::Value = serde_json::from_str(&attr("Policy")).expect("policy");
        let statements = policy["Statement"].as_array().expect("statements");
        assert_eq!(statements.len(), 2, "{policy:#}");
        // Every other sender is denied (the account's own principals included).
        assert_eq!(statements[1]["Effect"], "Deny", "{policy:#}");
        assert_eq!(statements[1]["Principal"], "*", "{policy:#}");
        assert_eq!(
            statements[1]["Condition"]["ArnNotEquals"]["aws:SourceArn"],
            format!("arn:aws:events:us-east-1:{ACCOUNT}:rule/{RULE}")
        );
        assert_eq!(
            statements[0]["Principal"],
            serde_json::json!({"Service": "events.amazonaws.com"})
        );
        assert_eq!(statements[0]["Action"], "sqs:SendMessage");
        assert_eq!(statements[0]["Resource"], QUEUE_ARN);
        assert_eq!(
            statements[0]["Condition"]["ArnEquals"]["aws:SourceArn"],
            format!("arn:aws:events:us-east-1:{ACCOUNT}:rule/{RULE}")
        );
        let tags = sqs
            .list_queue_tags()
            .queue_url(&url)
            .send()
            .await
            .expect("queue tags");
        let tags = tags.tags().cloned().unwrap_or_default();
        assert_eq!(tags.get("gatehouse:stack").map(String::as_str), Some("lab"));
        assert_eq!(
            tags.get("project").map(String::as_str),
            Some("gatehouse-test")
        );

        // The rule: the daemon's pattern (compared as JSON), enabled, one target, tagged.
        let rule = events
            .describe_rule()
            .name(RULE)
            .send()
            .await
            .expect("the rule exists");
        let pattern: serde_json::Value =
            serde_json::from_str(rule.event_pattern().expect("pattern")).expect("json");
        assert_eq!(pattern, gatehouse_aws::events::iam_event_pattern());
        assert_eq!(rule.state().map(|s| s.as_str()), Some("ENABLED"));
        assert_eq!(
            rule_targets(&events).await,
            [("queue".to_owned(), QUEUE_ARN.to_owned(), false)]
        );
        let tags = events
            .list_tags_for_resource()
            .resource_arn(rule.arn().expect("arn"))
            .send()
            .await
            .expect("rule tags");
        assert!(
            tags.tags()
                .iter()
                .any(|t| t.key() == "gatehouse:stack" && t.value() == "lab"),
            "{tags:?}"
        );

        // The bastion's config names the queue, as the daemon parses it, and the role grants
        // what the daemon's own list needs for that config: the receive on this queue.
        let text = written_daemon_config(&bastion_user_data(&ec2, "lab").await);
        let config = gatehouse_config::parse(&text, Path::new("gatehouse.toml"))
            .unwrap_or_else(|e| panic!("the written config is invalid: {e}\n{text}"));
        let aws = config.aws.expect("[aws]");
        assert_eq!(
            aws.events_queue_url.as_deref(),
            Some(format!("https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/{QUEUE}").as_str()),
            "{text}"
        );
        let mode = gatehouse_aws::actions::Mode::of(&aws);
        assert!(mode.events);
        let doc = lab_role_grants_exactly(&rig, mode).await;
        let receive = doc["Statement"]
            .as_array()
            .and_then(|l| {
                l.iter()
                    .find(|s| s["Action"] == serde_json::json!(["sqs:ReceiveMessage"]))
            })
            .unwrap_or_else(|| panic!("no receive statement: {doc:#}"));
        assert_eq!(receive["Resource"], QUEUE_ARN);

        // Events as CloudTrail puts them on us-east-1's default bus: the call the daemon acts
        // on arrives; a call it does not list, and a listed call that failed, do not.
        let ignored = "GetUser";
        assert!(!gatehouse_aws::events::IAM_EVENT_NAMES.contains(&ignored));
        put_iam_call(
            &events,
            serde_json::json!({
                "eventSource": "iam.amazonaws.com",
                "eventName": ignored,
                "requestParameters": {"userName": "mallory"},
            }),
        )
        .await;
        put_iam_call(
            &events,
            serde_json::json!({
                "eventSource": "iam.amazonaws.com",
                "eventName": "UploadSSHPublicKey",
                "errorCode": "AccessDenied",
                "requestParameters": {"userName": "eve"},
            }),
        )
        .await;
        put_iam_call(
            &events,
            serde_json::json!({
                "eventSource": "iam.amazonaws.com",
                "eventName": "UpdateSSHPublicKey",
                "requestParameters": {"userName": "alice", "status": "Inactive"},
            }),
        )
        .await;
        let (seen, per_round) = queue_messages(&sqs, &url, 3).await;
        assert_eq!(seen.len(), 1, "{seen:#?}");
        let event = seen.values().next().expect("one event");
        assert_eq!(event["source"], "aws.iam");
        assert_eq!(event["detail-type"], "AWS API Call via CloudTrail");
        assert_eq!(event["detail"]["eventName"], "UpdateSSHPublicKey");
        assert_eq!(event["detail"]["requestParameters"]["userName"], "alice");
        // Nobody deleted it: every receive (every replica) sees it again.
        assert_eq!(per_round, [1, 1, 1]);
    });
}

#[test]
fn iam_events_drift_is_repaired_the_switch_removes_and_recreates_and_destroy_leaves_nothing() {
    let rig = Rig::new();
    let (rt, ec2) = rig.ec2();
    rt.block_on(rig.trail("org", true, true, true));
    let on = rig.write_spec("on.toml", &spec_with_events("lab", 50));
    // With a trail that delivers, an unset switch is on: off takes an explicit false.
    let off = rig.write_spec("off.toml", &spec_with_events_set("lab", 50, false));
    let unset = rig.write_spec("unset.toml", &spec_text("lab", 50, "single"));
    rig.ok(&on, &["apply"]);
    let out = rig.run(&unset, &["plan"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "stack lab: no changes\n",
        "unset is on, like the applied spec"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "note: iam_events (not set in the spec): on: CloudTrail trail org delivers IAM's \
             calls to EventBridge in us-east-1; set iam_events = false to keep it off"
        ),
        "{out:?}"
    );
    let sqs = rig.sqs();
    let events = rig.events();
    let url = rt.block_on(queue_url(&sqs)).expect("queue");

    // Drift by hand: the target removed, the pattern widened, the retention raised.
    rt.block_on(async {
        events
            .remove_targets()
            .rule(RULE)
            .ids("queue")
            .send()
            .await
            .expect("remove target");
        events
            .put_rule()
            .name(RULE)
            .event_pattern(r#"{"source": ["aws.iam"]}"#)
            .send()
            .await
            .expect("put rule");
        sqs.set_queue_attributes()
            .queue_url(&url)
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::MessageRetentionPeriod,
                "345600",
            )
            .send()
            .await
            .expect("set retention");
    });
    let plan = rig.ok(&on, &["plan"]);
    // moto 5.2.5's SetQueueAttributes also drops the queue policy when the call does not name
    // it (AWS keeps it): the plan sees that drift too, and repairs it.
    assert!(
        plan.contains(&format!(
            "~ sqs queue {QUEUE} attributes MessageRetentionPeriod, Policy\n"
        )),
        "{plan}"
    );
    for line in [
        format!("~ events rule {RULE} event pattern\n"),
        format!("~ events rule {RULE} target queue -> {QUEUE}, events as they are\n"),
        "stack lab: 0 to create, 3 to change, 0 to delete\n".to_owned(),
    ] {
        assert!(plan.contains(&line), "{line:?} not in\n{plan}");
    }
    rig.ok(&on, &["apply"]);
    rig.assert_no_changes(&on, "lab");
    rt.block_on(async {
        let attrs = queue_attributes(&sqs, &url).await;
        assert_eq!(
            attrs.get("MessageRetentionPeriod").map(String::as_str),
            Some("60")
        );
        let policy: serde_json::Value =
            serde_json::from_str(attrs.get("Policy").map_or("null", String::as_str))
                .expect("policy");
        assert_eq!(
            policy["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"],
            format!("arn:aws:events:us-east-1:{ACCOUNT}:rule/{RULE}"),
            "{attrs:#?}"
        );
        let rule = events
            .describe_rule()
            .name(RULE)
            .send()
            .await
            .expect("rule");
        let pattern: serde_json::Value =
            serde_json::from_str(rule.event_pattern().expect("pattern")).expect("json");
        assert_eq!(pattern, gatehouse_aws::events::iam_event_pattern());
        assert_eq!(
            rule_targets(&events).await,
            [("queue".to_owned(), QUEUE_ARN.to_owned(), false)]
        );
    });

    // Off: the rule (targets first) and the queue go; the bastion is replaced.
    let plan = rig.ok(&off, &["plan"]);
    let rule_at = plan
        .find(&format!("- events rule {RULE}"))
        .unwrap_or_else(|| panic!("the rule is kept:\n{plan}"));
    let queue_at = plan
        .find(&format!("- sqs queue {QUEUE}"))
        .unwrap_or_else(|| panic!("the queue is kept:\n{plan}"));
    assert!(rule_at < queue_at, "{plan}");
    assert!(plan.contains("replace: user data changed"), "{plan}");
    rig.ok(&off, &["apply"]);
    rig.assert_no_changes(&off, "lab");
    rt.block_on(async {
        assert_eq!(queue_url(&sqs).await, None, "the queue outlived the switch");
        assert!(events.describe_rule().name(RULE).send().await.is_err());
        let text = written_daemon_config(&bastion_user_data(&ec2, "lab").await);
        assert!(!text.contains("events_queue_url"), "{text}");
    });

    // On again, interrupted right after the queue is created: the next apply finds it and
    // makes the rest.
    let plan = rig.ok(&on, &["plan"]);
    let steps: Vec<&str> = plan.lines().filter(|l| !l.starts_with("stack ")).collect();
    let queue_step = steps
        .iter()
        .position(|l| l.starts_with(&format!("+ sqs queue {QUEUE}")))
        .unwrap_or_else(|| panic!("no queue in\n{plan}"));
    let out = rig
        .command(&on, &["apply"])
        .env(
            "GATEHOUSE_VPC_TEST_KILL_AFTER_STEPS",
            (queue_step + 1).to_string(),
        )
        .checked_output("run");
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    let killed = String::from_utf8_lossy(&out.stderr);
    assert!(killed.contains(&format!("+ sqs queue {QUEUE}")), "{killed}");
    assert!(
        !killed.contains(&format!("+ events rule {RULE}")),
        "{killed}"
    );
    rt.block_on(async {
        assert!(queue_url(&sqs).await.is_some(), "the queue was created");
        assert!(events.describe_rule().name(RULE).send().await.is_err());
    });
    let plan = rig.ok(&on, &["plan"]);
    assert!(!plan.contains(&format!("+ sqs queue {QUEUE}")), "{plan}");
    assert!(plan.contains(&format!("+ events rule {RULE}")), "{plan}");
    rig.ok(&on, &["apply"]);
    rig.assert_no_changes(&on, "lab");

    // destroy: nothing of the stack is left, the queue and the rule included.
    let out = rig.ok(&on, &["destroy"]);
    assert!(out.contains("stack lab: destroyed"), "{out}");
    rt.block_on(async {
        assert_eq!(queue_url(&sqs).await, None, "the queue outlived destroy");
        assert!(events.describe_rule().name(RULE).send().await.is_err());
        let left: Vec<_> = tagged_counts(&ec2, "lab")
            .await
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        assert!(left.is_empty(), "tagged resources left: {left:?}");
    });
    let again = rig.ok(&on, &["destroy"]);
    assert!(again.contains("destroyed (0 step(s))"), "{again}");
}

#[test]
fn iam_events_are_refused_without_a_logging_trail_and_never_touch_a_queue_not_ours() {
    let rig = Rig::new();
    let (rt, ec2) = rig.ec2();
    let spec = rig.write_spec("lab.toml", &spec_with_events("lab", 50));
    let refused = |what: &str| -> String {
        let out = rig.run(&spec, &[what]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains(
                "[bastion] iam_events: no CloudTrail trail delivers IAM's API calls to \
                 EventBridge in us-east-1"
            ),
            "{what}: {err}"
        );
        assert!(err.contains("or set iam_events = false"), "{err}");
        err
    };
    // No trail at all: plan and apply refuse, and apply created nothing.
    let err = refused("plan");
    assert!(
        err.contains("The account has no trail that us-east-1 sees."),
        "{err}"
    );
    refused("apply");
    // Unset, the switch is off without a trail, and plan says why.
    let unset = rig.write_spec("unset.toml", &spec_text("lab", 50, "single"));
    let out = rig.run(&unset, &["plan"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(
            "note: iam_events (not set in the spec): off: no CloudTrail trail delivers IAM's \
             calls to EventBridge in us-east-1. The account has no trail that us-east-1 sees; \
             revocations wait for the IAM sweep"
        ),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("iam-events"));
    rt.block_on(async {
        let made: usize = tagged_counts(&ec2, "lab")
            .await
            .iter()
            .map(|(_, n)| n)
            .sum();
        assert_eq!(made, 0, "apply changed something before refusing");
        assert_eq!(queue_url(&rig.sqs()).await, None);
    });
    // Trails that cannot deliver: each named with why.
    rt.block_on(async {
        rig.trail("audit", true, true, false).await;
        rig.trail("local", false, false, true).await;
    });
    let err = refused("plan");
    assert!(
        err.contains("Trails: audit (logging is off); local (without global service events)."),
        "{err}"
    );
    // Logging on: planned.
    rt.block_on(async {
        rig.cloudtrail()
            .start_logging()
            .name("audit")
            .send()
            .await
            .expect("start logging");
    });
    let plan = rig.ok(&spec, &["plan"]);
    assert!(plan.contains(&format!("+ sqs queue {QUEUE}")), "{plan}");

    // A queue of the stack's name without its tag: refused, and destroy leaves it.
    let sqs = rig.sqs();
    rt.block_on(async {
        sqs.create_queue()
            .queue_name(QUEUE)
            .send()
            .await
            .expect("someone else's queue");
    });
    let out = rig.run(&spec, &["plan"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "SQS queue \"{QUEUE}\" exists but does not carry gatehouse:stack = lab"
        )),
        "{err}"
    );
    // Switched off the stack does not need the name: planned without touching it.
    let off = rig.write_spec("off.toml", &spec_with_events_set("lab", 50, false));
    let plan = rig.ok(&off, &["plan"]);
    assert!(!plan.contains("iam-events"), "{plan}");
    let out = rig.ok(&spec, &["destroy"]);
    assert!(out.contains("destroyed (0 step(s))"), "{out}");
    assert!(
        rt.block_on(queue_url(&sqs)).is_some(),
        "the foreign queue was deleted"
    );
}

// ---- the audit log group ----

const AUDIT_GROUP: &str = "/gatehouse/lab/audit";
const AUDIT_GROUP_ARN: &str = "arn:aws:logs:us-east-1:123456789012:log-group:/gatehouse/lab/audit";

impl Rig {
    fn logs(&self) -> aws_sdk_cloudwatchlogs::Client {
        aws_sdk_cloudwatchlogs::Client::new(&self.sdk())
    }
}

/// A stack's audit log group as CloudWatch Logs reports it: (retention in days, tags); None
/// when there is no group of its name.
async fn log_group(
    logs: &aws_sdk_cloudwatchlogs::Client,
    stack: &str,
) -> Option<(Option<i32>, std::collections::BTreeMap<String, String>)> {
    let name = format!("/gatehouse/{stack}/audit");
    let out = logs
        .describe_log_groups()
        .log_group_name_prefix(&name)
        .send()
        .await
        .expect("describe log groups");
    let group = out
        .log_groups()
        .iter()
        .find(|g| g.log_group_name() == Some(name.as_str()))?
        .clone();
    let arn = group.log_group_arn().expect("logGroupArn").to_owned();
    let tags = logs
        .list_tags_for_resource()
        .resource_arn(&arn)
        .send()
        .await
        .expect("log group tags")
        .tags()
        .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    Some((group.retention_in_days(), tags))
}

/// `spec_text` with `[bastion] audit_retention_days = days`.
fn spec_with_retention(stack: &str, cidr_second_octet: u8, days: u32) -> String {
    let text = spec_text(stack, cidr_second_octet, "single");
    let with = text.replace(
        "gatehouse_download_url = ",
        &format!("audit_retention_days = {days}\ngatehouse_download_url = "),
    );
    assert_ne!(with, text);
    with
}

#[test]
fn the_audit_log_group_is_the_stacks_with_its_retention_and_the_bastion_ships_to_it() {
    let rig = Rig::new();
    let (rt, ec2) = rig.ec2();
    let logs = rig.logs();
    let spec = rig.write_spec("lab.toml", &spec_text("lab", 50, "single"));
    let plan = rig.ok(&spec, &["plan"]);
    assert!(
        plan.contains(&format!(
            "+ log group {AUDIT_GROUP} the bastions' audit lines, retention 365 days; destroy \
             keeps it (--delete-audit-log deletes it)\n"
        )),
        "{plan}"
    );
    rig.ok(&spec, &["apply"]);
    rig.assert_no_changes(&spec, "lab");
    rt.block_on(async {
        let (retention, tags) = log_group(&logs, "lab").await.expect("the log group");
        assert_eq!(retention, Some(365));
        let tag = |k: &str| tags.get(k).map(String::as_str);
        assert_eq!(tag("gatehouse:stack"), Some("lab"), "{tags:?}");
        assert_eq!(
            tag("gatehouse:resource"),
            Some("log-group/audit"),
            "{tags:?}"
        );
        assert_eq!(tag("project"), Some("gatehouse-test"), "{tags:?}");
        assert_eq!(tag("Name"), Some("lab-log-group-audit"), "{tags:?}");

        // The bastion's config, as its daemon parses it: the audit file in its state
        // directory, shipped to this group.
        let text = written_daemon_config(&bastion_user_data(&ec2, "lab").await);
        let config = gatehouse_config::parse(&text, Path::new("gatehouse.toml"))
            .unwrap_or_else(|e| panic!("the written config is invalid: {e}\n{text}"));
        assert_eq!(
            config.audit.file.as_deref(),
            Some(Path::new("/var/lib/gatehouse/audit.jsonl")),
            "{text}"
        );
        let aws = config.aws.expect("[aws]");
        assert_eq!(aws.audit_log_group.as_deref(), Some(AUDIT_GROUP), "{text}");
        let mode = gatehouse_aws::actions::Mode::of(&aws);
        assert!(mode.audit_shipping);

        // The role: what the daemon's list needs for that config, the shipping on this group's
        // streams in this account.
        let doc = lab_role_grants_exactly(&rig, mode).await;
        let ship = doc["Statement"]
            .as_array()
            .and_then(|l| {
                l.iter().find(|s| {
                    s["Action"] == serde_json::json!(["logs:CreateLogStream", "logs:PutLogEvents"])
                })
            })
            .unwrap_or_else(|| panic!("no shipping statement: {doc:#}"));
        assert_eq!(ship["Resource"], format!("{AUDIT_GROUP_ARN}:*"));
    });

    // Another retention in the spec: changed in place, nothing else (the bastion stays).
    let monthly = rig.write_spec("lab.toml", &spec_with_retention("lab", 50, 30));
    let plan = rig.ok(&monthly, &["plan"]);
    assert_eq!(
        plan,
        format!(
            "~ log group {AUDIT_GROUP} retention 365 days -> retention 30 days\n\
             stack lab: 0 to create, 1 to change, 0 to delete\n"
        )
    );
    rig.ok(&monthly, &["apply"]);
    rig.assert_no_changes(&monthly, "lab");
    rt.block_on(async {
        assert_eq!(log_group(&logs, "lab").await.map(|g| g.0), Some(Some(30)));
    });

    // Drift by hand: the retention changed, a tag removed, another edited.
    rt.block_on(async {
        logs.put_retention_policy()
            .log_group_name(AUDIT_GROUP)
            .retention_in_days(1)
            .send()
            .await
            .expect("retention");
        logs.untag_resource()
            .resource_arn(AUDIT_GROUP_ARN)
            .tag_keys("project")
            .send()
            .await
            .expect("untag");
        logs.tag_resource()
            .resource_arn(AUDIT_GROUP_ARN)
            .tags("Name", "edited")
            .send()
            .await
            .expect("tag");
    });
    let plan = rig.ok(&monthly, &["plan"]);
    for line in [
        format!("~ log group {AUDIT_GROUP} retention 1 days -> retention 30 days\n"),
        format!("~ log group {AUDIT_GROUP} tags Name, project\n"),
        "stack lab: 0 to create, 2 to change, 0 to delete\n".to_owned(),
    ] {
        assert!(plan.contains(&line), "{line:?} not in\n{plan}");
    }
    rig.ok(&monthly, &["apply"]);
    rig.assert_no_changes(&monthly, "lab");
    // A retention removed (never expires), as an apply killed between CreateLogGroup and
    // PutRetentionPolicy leaves it: put back.
    rt.block_on(async {
        logs.delete_retention_policy()
            .log_group_name(AUDIT_GROUP)
            .send()
            .await
            .expect("delete retention");
    });
    let plan = rig.ok(&monthly, &["plan"]);
    assert!(
        plan.contains(&format!(
            "~ log group {AUDIT_GROUP} retention: never expires -> retention 30 days\n"
        )),
        "{plan}"
    );
    rig.ok(&monthly, &["apply"]);
    rig.assert_no_changes(&monthly, "lab");
    rt.block_on(async {
        let (retention, tags) = log_group(&logs, "lab").await.expect("the log group");
        assert_eq!(retention, Some(30));
        assert_eq!(
            tags.get("project").map(String::as_str),
            Some("gatehouse-test")
        );
        assert_eq!(
            tags.get("Name").map(String::as_str),
            Some("lab-log-group-audit")
        );
    });
}

#[test]
fn destroy_keeps_the_audit_log_group_and_says_so_unless_asked() {
    let rig = Rig::new();
    let (rt, ec2) = rig.ec2();
    let logs = rig.logs();
    let spec = rig.write_spec("lab.toml", &spec_text("lab", 50, "single"));
    rig.ok(&spec, &["apply"]);
    // A line the bastion shipped.
    rt.block_on(async {
        logs.create_log_stream()
            .log_group_name(AUDIT_GROUP)
            .log_stream_name("ip-10-50-0-10")
            .send()
            .await
            .expect("stream");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64;
        logs.put_log_events()
            .log_group_name(AUDIT_GROUP)
            .log_stream_name("ip-10-50-0-10")
            .log_events(
                aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                    .timestamp(now)
                    .message(r#"{"event":"auth.success","user":"alice"}"#)
                    .build()
                    .expect("event"),
            )
            .send()
            .await
            .expect("put log events");
    });

    let kept = format!(
        "kept: log group {AUDIT_GROUP}: the audit trail outlives the stack (retention 365 \
         days); `destroy --delete-audit-log` deletes it\n"
    );
    let out = rig.ok(&spec, &["destroy"]);
    assert!(out.starts_with("stack lab: destroyed ("), "{out}");
    assert!(out.ends_with(&kept), "{out}");
    rt.block_on(async {
        let left: Vec<_> = tagged_counts(&ec2, "lab")
            .await
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        assert!(left.is_empty(), "tagged resources left: {left:?}");
        let (retention, tags) = log_group(&logs, "lab").await.expect("kept");
        assert_eq!(retention, Some(365));
        assert_eq!(tags.get("gatehouse:stack").map(String::as_str), Some("lab"));
        let events = logs
            .get_log_events()
            .log_group_name(AUDIT_GROUP)
            .log_stream_name("ip-10-50-0-10")
            .send()
            .await
            .expect("the line is still there");
        assert_eq!(events.events().len(), 1, "{events:?}");
    });
    // Again: nothing to do, and still said.
    assert_eq!(
        rig.ok(&spec, &["destroy"]),
        format!("stack lab: destroyed (0 step(s))\n{kept}")
    );
    // The stack made again finds its trail: no new group.
    let plan = rig.ok(&spec, &["plan"]);
    assert!(!plan.contains("log group"), "{plan}");

    // Asked: the group goes too, with its lines.
    let out = rig.ok(&spec, &["destroy", "--delete-audit-log"]);
    assert_eq!(out, "stack lab: destroyed (1 step(s))\n");
    rt.block_on(async {
        assert_eq!(log_group(&logs, "lab").await, None, "deleted");
    });
    assert_eq!(
        rig.ok(&spec, &["destroy", "--delete-audit-log"]),
        "stack lab: destroyed (0 step(s))\n"
    );
}

#[test]
fn a_log_group_of_the_stacks_name_not_ours_is_refused_and_never_touched() {
    // A moto of its own: moto 5.2.5 keeps a deleted log group's tags and gives them to a new
    // group of the same name, so "untagged" needs a group that never had tags.
    let rig = Rig::new();
    let (rt, ec2) = rig.ec2();
    let logs = rig.logs();
    rt.block_on(async {
        logs.create_log_group()
            .log_group_name(AUDIT_GROUP)
            .send()
            .await
            .expect("someone else's log group");
    });
    let spec = rig.write_spec("lab.toml", &spec_text("lab", 50, "single"));
    let refusal = format!(
        "CloudWatch Logs log group \"{AUDIT_GROUP}\" exists but does not carry gatehouse:stack = \
         lab; refusing to touch it"
    );
    for command in ["plan", "apply"] {
        let out = rig.run(&spec, &[command]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {err}");
        assert!(err.contains(&refusal), "{command}: {err}");
    }
    rt.block_on(async {
        let made: usize = tagged_counts(&ec2, "lab")
            .await
            .iter()
            .map(|(_, n)| n)
            .sum();
        assert_eq!(made, 0, "apply changed something before refusing");
    });
    let said = format!(
        "kept: log group {AUDIT_GROUP}: does not carry gatehouse:stack = lab: not the stack's, \
         left alone\n"
    );
    for args in [&["destroy"][..], &["destroy", "--delete-audit-log"]] {
        assert_eq!(
            rig.ok(&spec, args),
            format!("stack lab: destroyed (0 step(s))\n{said}"),
            "{args:?}"
        );
    }
    rt.block_on(async {
        let (retention, tags) = log_group(&logs, "lab").await.expect("left alone");
        assert_eq!((retention, tags.len()), (None, 0));
    });
}

/// The lab stack's bastion role policy, checked to grant exactly the actions the daemon
/// needs in `mode` (gatehouse-aws's list), no more and no fewer.
async fn lab_role_grants_exactly(
    rig: &Rig,
    mode: gatehouse_aws::actions::Mode,
) -> serde_json::Value {
    let pol = rig
        .iam()
        .get_role_policy()
        .role_name("gatehouse-lab-bastion")
        .policy_name("gatehouse-bastion")
        .send()
        .await
        .expect("role policy");
    let doc = gatehouse_vpc::aws::observe::parse_policy(pol.policy_document());
    let mut granted: Vec<String> = doc["Statement"]
        .as_array()
        .expect("statements")
        .iter()
        .flat_map(|s| s["Action"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    granted.sort();
    let mut needed: Vec<String> = gatehouse_aws::actions::needed(mode)
        .iter()
        .map(|a| a.name().to_owned())
        .collect();
    needed.sort();
    assert_eq!(granted, needed);
    doc
}

// ---- replicas behind a Network Load Balancer ----

/// `spec_text` with `replicas` bastions behind the balancer.
fn spec_with_replicas(stack: &str, cidr_second_octet: u8, replicas: u32) -> String {
    spec_text(stack, cidr_second_octet, "single").replace(
        "allowed_cidrs = [",
        &format!("replicas = {replicas}\nallowed_cidrs = ["),
    )
}

/// The stack's replicas as the balancer, its target group, the group and the template hold
/// them, read with the SDK.
#[derive(Debug)]
struct Replicas {
    balancer: Option<aws_sdk_elasticloadbalancingv2::types::LoadBalancer>,
    target_group: Option<aws_sdk_elasticloadbalancingv2::types::TargetGroup>,
    tg_attributes: std::collections::BTreeMap<String, String>,
    listeners: Vec<aws_sdk_elasticloadbalancingv2::types::Listener>,
    group: Option<aws_sdk_autoscaling::types::AutoScalingGroup>,
    /// The template's latest version data.
    template: Option<aws_sdk_ec2::types::ResponseLaunchTemplateData>,
    templates: usize,
}

impl Rig {
    fn elb(&self) -> aws_sdk_elasticloadbalancingv2::Client {
        aws_sdk_elasticloadbalancingv2::Client::new(&self.sdk())
    }

    fn autoscaling(&self) -> aws_sdk_autoscaling::Client {
        aws_sdk_autoscaling::Client::new(&self.sdk())
    }

    async fn replicas(&self, stack: &str) -> Replicas {
        let elb = self.elb();
        let balancer = elb
            .describe_load_balancers()
            .names(gatehouse_vpc::names::balancer_name(stack))
            .send()
            .await
            .ok()
            .and_then(|o| o.load_balancers().first().cloned());
        let listeners = match &balancer {
            Some(b) => elb
                .describe_listeners()
                .load_balancer_arn(b.load_balancer_arn().expect("arn"))
                .send()
                .await
                .expect("listeners")
                .listeners()
                .to_vec(),
            None => Vec::new(),
        };
        let target_group = elb
            .describe_target_groups()
            .names(gatehouse_vpc::names::target_group_name(stack))
            .send()
            .await
            .ok()
            .and_then(|o| o.target_groups().first().cloned());
        let tg_attributes = match &target_group {
            Some(t) => elb
                .describe_target_group_attributes()
                .target_group_arn(t.target_group_arn().expect("arn"))
                .send()
                .await
                .expect("attributes")
                .attributes()
                .iter()
                .filter_map(|a| Some((a.key()?.to_owned(), a.value()?.to_owned())))
                .collect(),
            None => Default::default(),
        };
        let group = self
            .autoscaling()
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(gatehouse_vpc::names::group_name(stack))
            .send()
            .await
            .expect("groups")
            .auto_scaling_groups()
            .first()
            .cloned();
        let (_rt, ec2) = (0, aws_sdk_ec2::Client::new(&self.sdk()));
        let listed = ec2
            .describe_launch_templates()
            .filters(tag(stack))
            .send()
            .await
            .expect("templates");
        let templates = listed.launch_templates().len();
        let template = match listed.launch_templates().first() {
            Some(t) => ec2
                .describe_launch_template_versions()
                .launch_template_id(t.launch_template_id().expect("id"))
                .versions("$Latest")
                .send()
                .await
                .expect("versions")
                .launch_template_versions()
                .first()
                .and_then(|v| v.launch_template_data().cloned()),
            None => None,
        };
        Replicas {
            balancer,
            target_group,
            tg_attributes,
            listeners,
            group,
            template,
            templates,
        }
    }
}

/// The daemon config in a launch template's user data.
fn template_daemon_config(data: &aws_sdk_ec2::types::ResponseLaunchTemplateData) -> String {
    use base64::Engine;
    let text = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(data.user_data().expect("user data"))
            .expect("base64"),
    )
    .expect("utf-8");
    assert!(
        text.contains("- path: /etc/systemd/system/gatehouse.socket.d/proxy.conf")
            && text.contains("FileDescriptorName=proxy"),
        "{text}"
    );
    written_daemon_config(&text)
}

#[test]
fn replicas_from_empty_stand_behind_a_balancer_and_plan_then_says_no_changes() {
    let rig = Rig::new();
    let spec = rig.write_spec("lab.toml", &spec_with_replicas("lab", 50, 3));
    let plan = rig.ok(&spec, &["plan"]);
    for want in [
        "+ lt/bastion                   launch template gatehouse-lab-bastion: t3.micro ami-12c6146b, IMDSv2",
        "+ tg/ssh                       target group gh-lab: TCP 22, health check HTTP 8022/health",
        "+ nlb                          network load balancer gh-lab: internet-facing, TCP 22, in subnet/dmz-a, subnet/dmz-b",
        "+ asg/bastion                  auto scaling group gatehouse-lab-bastion: 3 replicas over subnet/dmz-a, subnet/dmz-b, behind tg/ssh",
    ] {
        assert!(plan.contains(want), "{want}:\n{plan}");
    }
    rig.ok(&spec, &["apply"]);
    rig.assert_no_changes(&spec, "lab");
    let (rt, ec2) = rig.ec2();
    let r = rt.block_on(rig.replicas("lab"));

    // The balancer: network, internet-facing, one subnet in each of the two zones, behind
    // its own security group, cross-zone on.
    let b = r.balancer.as_ref().expect("balancer");
    assert_eq!(b.r#type().map(|t| t.as_str()), Some("network"));
    assert_eq!(b.scheme().map(|s| s.as_str()), Some("internet-facing"));
    assert_eq!(b.availability_zones().len(), 2, "{b:?}");
    let attributes = rt
        .block_on(
            rig.elb()
                .describe_load_balancer_attributes()
                .load_balancer_arn(b.load_balancer_arn().expect("arn"))
                .send(),
        )
        .expect("attributes");
    assert!(
        attributes
            .attributes()
            .iter()
            .any(|a| a.key() == Some("load_balancing.cross_zone.enabled")
                && a.value() == Some("true")),
        "{attributes:?}"
    );
    let groups = rt
        .block_on(ec2.describe_security_groups().filters(tag("lab")).send())
        .expect("groups");
    let sg = |key: &str| {
        groups
            .security_groups()
            .iter()
            .find(|g| {
                g.tags()
                    .iter()
                    .any(|t| t.key() == Some("gatehouse:resource") && t.value() == Some(key))
            })
            .unwrap_or_else(|| panic!("no {key}"))
            .clone()
    };
    let nlb_sg = sg("sg/nlb");
    assert_eq!(
        b.security_groups(),
        [nlb_sg.group_id().expect("id").to_owned()]
    );
    // Only allowed_cidrs reach the balancer; only the balancer reaches the replicas, on SSH
    // and the health port.
    let cidrs: Vec<&str> = nlb_sg
        .ip_permissions()
        .iter()
        .inspect(|p| assert_eq!((p.from_port(), p.to_port()), (Some(22), Some(22)), "{p:?}"))
        .flat_map(|p| p.ip_ranges())
        .filter_map(|r| r.cidr_ip())
        .collect();
    assert_eq!(cidrs, ["198.51.100.0/24", "203.0.113.7/32"]);
    let replica_sg = sg("sg/bastion");
    let mut ports: Vec<i32> = replica_sg
        .ip_permissions()
        .iter()
        .inspect(|p| {
            assert!(p.ip_ranges().is_empty(), "{p:?}");
            assert_eq!(
                p.user_id_group_pairs()
                    .iter()
                    .filter_map(|g| g.group_id())
                    .collect::<Vec<_>>(),
                [nlb_sg.group_id().expect("id")],
                "{p:?}"
            );
        })
        .filter_map(|p| p.from_port())
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, [22, 8022]);

    // The target group: TCP 22, HTTP health checks of the daemon's health endpoint, PROXY v2
    // on, preservation off, deregistration delay = the daemon's shutdown_grace (its default).
    let t = r.target_group.as_ref().expect("target group");
    assert_eq!(t.port(), Some(22));
    assert_eq!(t.health_check_protocol().map(|p| p.as_str()), Some("HTTP"));
    assert_eq!(t.health_check_port(), Some("8022"));
    assert_eq!(t.health_check_path(), Some("/health"));
    assert_eq!(r.tg_attributes["proxy_protocol_v2.enabled"], "true");
    assert_eq!(r.tg_attributes["preserve_client_ip.enabled"], "false");
    assert_eq!(
        r.tg_attributes["deregistration_delay.timeout_seconds"],
        "30"
    );
    assert_eq!(r.listeners.len(), 1);
    let l = &r.listeners[0];
    assert_eq!(
        (l.port(), l.protocol().map(|p| p.as_str())),
        (Some(22), Some("TCP"))
    );
    assert_eq!(
        l.default_actions()[0].target_group_arn(),
        t.target_group_arn()
    );

    // The group: 3 replicas (6 at most, during a roll) over both public subnets, in the
    // target group, replaced on the balancer's verdict.
    let g = r.group.as_ref().expect("group");
    assert_eq!(
        (g.min_size(), g.desired_capacity(), g.max_size()),
        (Some(3), Some(3), Some(6))
    );
    assert_eq!(
        g.vpc_zone_identifier().map(|z| z.split(',').count()),
        Some(2)
    );
    assert_eq!(
        g.target_group_arns(),
        [t.target_group_arn().expect("arn").to_owned()]
    );
    assert_eq!(g.health_check_type(), Some("ELB"));
    assert_eq!(g.instances().len(), 3);

    // The alarm on the replicas' health names this balancer and target group as CloudWatch
    // spells them, and goes off below three healthy.
    let suffix =
        |arn: &str, after: &str| arn[arn.find(after).expect(after) + after.len()..].to_owned();
    let balancer_arn = b.load_balancer_arn().expect("arn");
    let group_arn = t.target_group_arn().expect("arn");
    let alarms = rt
        .block_on(
            aws_sdk_cloudwatch::Client::new(&rig.sdk())
                .describe_alarms()
                .alarm_names("gatehouse-lab-healthy-replicas")
                .send(),
        )
        .expect("describe alarms");
    let alarm = alarms
        .metric_alarms()
        .first()
        .expect("the healthy-replicas alarm");
    let dimensions: Vec<(&str, &str)> = alarm
        .dimensions()
        .iter()
        .map(|d| (d.name().unwrap_or_default(), d.value().unwrap_or_default()))
        .collect();
    assert_eq!(
        dimensions,
        [
            (
                "LoadBalancer",
                suffix(balancer_arn, ":loadbalancer/").as_str()
            ),
            (
                "TargetGroup",
                format!("targetgroup/{}", suffix(group_arn, ":targetgroup/")).as_str()
            ),
        ]
    );
    assert_eq!(
        (alarm.namespace(), alarm.metric_name(), alarm.threshold()),
        (Some("AWS/NetworkELB"), Some("HealthyHostCount"), Some(3.0))
    );

    // The template: IMDSv2, the role, and the daemon config its user data writes, read by
    // the daemon's own parser: PROXY v2 on 22 from the public subnets, the health endpoint,
    // the shared listing in the stack's bucket.
    let data = r.template.as_ref().expect("template");
    let meta = data.metadata_options().expect("metadata options");
    assert_eq!(meta.http_tokens().map(|t| t.as_str()), Some("required"));
    assert_eq!(meta.http_put_response_hop_limit(), Some(1));
    assert!(
        data.iam_instance_profile()
            .and_then(|p| p.name())
            .is_some_and(|n| n == "gatehouse-lab-bastion"),
        "{data:?}"
    );
    let text = template_daemon_config(data);
    let config = gatehouse_config::parse(&text, Path::new("gatehouse.toml"))
        .unwrap_or_else(|e| panic!("the daemon refuses the written config: {e:?}\n{text}"));
    assert!(config.server.listen.is_empty(), "{text}");
    assert_eq!(
        config.server.proxy_listen,
        ["0.0.0.0:22".parse::<std::net::SocketAddr>().expect("addr")]
    );
    let trusted: Vec<String> = config
        .server
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(trusted, ["10.50.0.0/24", "10.50.1.0/24"]);
    assert_eq!(
        config.server.health_listen,
        Some("0.0.0.0:8022".parse().expect("addr"))
    );
    let shared = config
        .aws
        .as_ref()
        .and_then(|a| a.shared_snapshot.clone())
        .expect("shared_snapshot");
    assert_eq!(
        (shared.bucket.as_str(), shared.key.as_str()),
        ("gatehouse-lab-123456789012", "directory/aws-directory.json")
    );
    // The bucket exists (the URL binary alone would need none).
    rt.block_on(
        rig.s3()
            .head_bucket()
            .bucket("gatehouse-lab-123456789012")
            .send(),
    )
    .expect("the shared listing's bucket");

    // No single bastion and no Elastic IP of its own; the replicas carry the stack's tags.
    let instances = rt
        .block_on(
            ec2.describe_instances()
                .filters(tag("lab"))
                .filters(
                    Filter::builder()
                        .name("instance-state-name")
                        .values("running")
                        .build(),
                )
                .send(),
        )
        .expect("instances");
    let keys: Vec<String> = instances
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| {
            i.tags()
                .iter()
                .find(|t| t.key() == Some("gatehouse:resource"))
                .and_then(|t| t.value().map(str::to_owned))
        })
        .collect();
    assert_eq!(
        keys.iter().filter(|k| *k == "replica/bastion").count(),
        3,
        "{keys:?}"
    );
    assert!(!keys.iter().any(|k| k == "instance/bastion"), "{keys:?}");
    let eips = rt
        .block_on(ec2.describe_addresses().filters(tag("lab")).send())
        .expect("eips");
    assert!(
        !eips
            .addresses()
            .iter()
            .any(|a| a.tags().iter().any(|t| t.value() == Some("eip/bastion"))),
        "{eips:?}"
    );

    // output names the balancer.
    let out = rig.ok(&spec, &["output"]);
    let dns = b.dns_name().expect("dns name");
    assert!(
        out.contains(&format!("bastion: {dns} (the load balancer of 3 replicas)"))
            && out.contains(&format!("HostName {dns}")),
        "{out}"
    );
}

#[test]
fn replicas_drift_is_repaired_a_new_build_rolls_them_and_one_to_n_to_one_converges() {
    let rig = Rig::new();
    let one = rig.write_spec("one.toml", &spec_text("lab", 50, "single"));
    let three = rig.write_spec("three.toml", &spec_with_replicas("lab", 50, 3));
    let (rt, ec2) = rig.ec2();
    rig.ok(&one, &["apply"]);
    rig.ok(&three, &["apply"]);
    rig.assert_no_changes(&three, "lab");
    let r = rt.block_on(rig.replicas("lab"));
    let tg = r
        .target_group
        .as_ref()
        .and_then(|t| t.target_group_arn())
        .expect("tg")
        .to_owned();
    let lb = r
        .balancer
        .as_ref()
        .and_then(|b| b.load_balancer_arn())
        .expect("lb")
        .to_owned();

    // Drift by hand: PROXY v2 off, the health check on port 22, cross-zone off, the group's
    // maximum raised, the listener deleted.
    let elb = rig.elb();
    rt.block_on(async {
        elb.modify_target_group_attributes()
            .target_group_arn(&tg)
            .attributes(
                aws_sdk_elasticloadbalancingv2::types::TargetGroupAttribute::builder()
                    .key("proxy_protocol_v2.enabled")
                    .value("false")
                    .build(),
            )
            .send()
            .await
            .expect("attributes");
        elb.modify_target_group()
            .target_group_arn(&tg)
            .health_check_port("22")
            .send()
            .await
            .expect("health check");
        elb.modify_load_balancer_attributes()
            .load_balancer_arn(&lb)
            .attributes(
                aws_sdk_elasticloadbalancingv2::types::LoadBalancerAttribute::builder()
                    .key("load_balancing.cross_zone.enabled")
                    .value("false")
                    .build(),
            )
            .send()
            .await
            .expect("cross zone");
        elb.delete_listener()
            .listener_arn(r.listeners[0].listener_arn().expect("arn"))
            .send()
            .await
            .expect("delete listener");
        rig.autoscaling()
            .update_auto_scaling_group()
            .auto_scaling_group_name("gatehouse-lab-bastion")
            .max_size(9)
            .send()
            .await
            .expect("max");
    });
    let plan = rig.ok(&three, &["plan"]);
    for want in [
        "~ tg/ssh                       health check HTTP 22/health -> HTTP 8022/health",
        "~ tg/ssh                       proxy_protocol_v2.enabled = true",
        "~ nlb                          load_balancing.cross_zone.enabled = true",
        "+ listener/ssh                 TCP 22 -> tg/ssh",
        "~ asg/bastion                  size 3/3/9 -> 3/3/6 (min/desired/max)",
        "stack lab: 1 to create, 4 to change, 0 to delete",
    ] {
        assert!(plan.contains(want), "{want}:\n{plan}");
    }
    rig.ok(&three, &["apply"]);
    rig.assert_no_changes(&three, "lab");

    // A new build: a new template version, the group on it, every replica replaced, new ones
    // first.
    let before: Vec<String> = rt
        .block_on(rig.replicas("lab"))
        .group
        .expect("group")
        .instances()
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect();
    let newer = rig.write_spec(
        "newer.toml",
        &spec_with_replicas("lab", 50, 3).replace(
            "https://example.org/releases/gatehouse\"",
            "https://example.org/releases/gatehouse-2\"",
        ),
    );
    let plan = rig.ok(&newer, &["plan"]);
    assert!(
        plan.contains("~ lt/bastion                   version 2: user data changed"),
        "{plan}"
    );
    assert!(
        plan.contains("~ asg/bastion                  replace 3 of 3 replica(s), new ones first"),
        "{plan}"
    );
    assert!(
        !plan.contains("\n- "),
        "nothing is deleted outright: {plan}"
    );
    rig.ok(&newer, &["apply"]);
    rig.assert_no_changes(&newer, "lab");
    let after = rt.block_on(rig.replicas("lab")).group.expect("group");
    let ids: Vec<&str> = after
        .instances()
        .iter()
        .filter_map(|i| i.instance_id())
        .collect();
    assert_eq!(ids.len(), 3, "{after:?}");
    assert!(
        ids.iter().all(|i| !before.iter().any(|b| b == i)),
        "{before:?} -> {ids:?}"
    );

    // Back to one bastion: the replicas' resources go, the bastion and its address come back.
    rig.ok(&one, &["apply"]);
    rig.assert_no_changes(&one, "lab");
    let r = rt.block_on(rig.replicas("lab"));
    assert!(
        r.balancer.is_none() && r.target_group.is_none() && r.group.is_none(),
        "{r:?}"
    );
    assert_eq!(r.templates, 0, "{r:?}");
    let out = rig.ok(&one, &["output"]);
    assert!(!out.contains("load balancer"), "{out}");
    rt.block_on(async {
        assert_eq!(tagged_counts(&ec2, "lab").await, expected_counts(1, 1));
    });
    // And to three again, then destroy: nothing of the stack is left.
    rig.ok(&three, &["apply"]);
    rig.assert_no_changes(&three, "lab");
    rig.ok(&three, &["destroy", "--delete-audit-log"]);
    let r = rt.block_on(rig.replicas("lab"));
    assert!(
        r.balancer.is_none() && r.target_group.is_none() && r.group.is_none() && r.templates == 0,
        "{r:?}"
    );
    rt.block_on(async {
        let counts = tagged_counts(&ec2, "lab").await;
        assert!(counts.iter().all(|(_, n)| *n == 0), "{counts:?}");
    });
}

#[test]
fn an_interrupted_scaled_out_apply_converges() {
    let rig = Rig::new();
    let spec = rig.write_spec("lab.toml", &spec_with_replicas("lab", 50, 2));
    let plan = rig.ok(&spec, &["plan"]);
    let lines: Vec<&str> = plan.lines().collect();
    let at = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{plan}"))
            + 1
    };
    // Kill right after the template, the target group, the balancer and the listener.
    for kill_after in [
        at("+ lt/bastion"),
        at("+ tg/ssh"),
        at("+ nlb"),
        at("+ listener/ssh"),
    ] {
        let out = rig
            .command(&spec, &["apply"])
            .env(
                "GATEHOUSE_VPC_TEST_KILL_AFTER_STEPS",
                kill_after.to_string(),
            )
            .checked_output("run");
        assert_eq!(
            out.status.code(),
            Some(137),
            "kill_after {kill_after}: {out:?}"
        );
        rig.ok(&spec, &["apply"]);
        rig.assert_no_changes(&spec, "lab");
        let (rt, _) = rig.ec2();
        let r = rt.block_on(rig.replicas("lab"));
        assert_eq!(r.templates, 1, "after kill at {kill_after}: {r:?}");
        assert_eq!(
            r.group.as_ref().map(|g| g.instances().len()),
            Some(2),
            "after kill at {kill_after}"
        );
        rig.ok(&spec, &["destroy", "--delete-audit-log"]);
    }
}

#[test]
fn fixed_addresses_give_the_balancer_an_elastic_ip_per_zone_for_allow_lists() {
    let rig = Rig::new();
    let spec = rig.write_spec(
        "lab.toml",
        &spec_with_replicas("lab", 50, 2)
            .replace("replicas = 2", "replicas = 2\nfixed_addresses = true"),
    );
    let plan = rig.ok(&spec, &["plan"]);
    assert!(
        plan.contains("+ eip/nlb/us-east-1a") && plan.contains("+ eip/nlb/us-east-1b"),
        "{plan}"
    );
    assert!(plan.contains(", an Elastic IP in each"), "{plan}");
    rig.ok(&spec, &["apply"]);
    rig.assert_no_changes(&spec, "lab");
    let (rt, ec2) = rig.ec2();
    let eips = rt
        .block_on(ec2.describe_addresses().filters(tag("lab")).send())
        .expect("eips");
    let mut ips: Vec<String> = eips
        .addresses()
        .iter()
        .filter(|a| {
            a.tags()
                .iter()
                .any(|t| t.value().is_some_and(|v| v.starts_with("eip/nlb/")))
        })
        .filter_map(|a| a.public_ip().map(str::to_owned))
        .collect();
    ips.sort();
    assert_eq!(ips.len(), 2, "{eips:?}");
    let out = rig.ok(&spec, &["output"]);
    let line = out
        .lines()
        .find(|l| l.starts_with("balancer addresses: "))
        .unwrap_or_else(|| panic!("{out}"));
    let mut listed: Vec<&str> = line["balancer addresses: ".len()..].split(", ").collect();
    listed.sort_unstable();
    assert_eq!(listed, ips.iter().map(String::as_str).collect::<Vec<_>>());
    rig.ok(&spec, &["destroy", "--delete-audit-log"]);
    let eips = rt
        .block_on(ec2.describe_addresses().filters(tag("lab")).send())
        .expect("eips");
    assert!(eips.addresses().is_empty(), "{eips:?}");
}

const TOPIC_ARN: &str = "arn:aws:sns:us-east-1:123456789012:gatehouse-lab-alerts";

/// What CloudWatch, CloudWatch Logs and SNS report of the lab stack's alarm family: its
/// metric filters (name -> pattern, metric, value), alarms (name -> metric, threshold,
/// actions, tags) and the topic's email subscriptions and tags.
#[derive(Debug, PartialEq)]
struct AlarmFamily {
    filters: std::collections::BTreeMap<String, (String, String, String)>,
    alarms: std::collections::BTreeMap<String, SeenAlarm>,
    emails: Vec<String>,
    topic_tags: Option<std::collections::BTreeMap<String, String>>,
}

/// An alarm as read back: metric, threshold, alarm and OK actions, `gatehouse:*` tags.
type SeenAlarm = (String, f64, Vec<String>, Vec<(String, String)>);

async fn alarm_family(rig: &Rig) -> AlarmFamily {
    let config = rig.sdk();
    let logs = aws_sdk_cloudwatchlogs::Client::new(&config);
    let cloudwatch = aws_sdk_cloudwatch::Client::new(&config);
    let sns = aws_sdk_sns::Client::new(&config);
    let filters = match logs
        .describe_metric_filters()
        .log_group_name(AUDIT_GROUP)
        .send()
        .await
    {
        Ok(out) => out
            .metric_filters()
            .iter()
            .map(|f| {
                let t = &f.metric_transformations()[0];
                (
                    f.filter_name().unwrap_or_default().to_owned(),
                    (
                        f.filter_pattern().unwrap_or_default().to_owned(),
                        t.metric_name().to_owned(),
                        t.metric_value().to_owned(),
                    ),
                )
            })
            .collect(),
        Err(_) => Default::default(),
    };
    let described = cloudwatch
        .describe_alarms()
        .alarm_name_prefix("gatehouse-lab-")
        .send()
        .await
        .expect("describe alarms");
    let mut alarms = std::collections::BTreeMap::new();
    for a in described.metric_alarms() {
        let arn = a.alarm_arn().expect("arn");
        let tags = cloudwatch
            .list_tags_for_resource()
            .resource_arn(arn)
            .send()
            .await
            .expect("alarm tags");
        let mut actions = a.alarm_actions().to_vec();
        actions.extend(a.ok_actions().iter().cloned());
        alarms.insert(
            a.alarm_name().unwrap_or_default().to_owned(),
            (
                a.metric_name().unwrap_or_default().to_owned(),
                a.threshold().unwrap_or_default(),
                actions,
                tags.tags()
                    .iter()
                    .filter(|t| t.key().is_some_and(|k| k.starts_with("gatehouse:")))
                    .map(|t| {
                        (
                            t.key().unwrap_or_default().to_owned(),
                            t.value().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect(),
            ),
        );
    }
    let (emails, topic_tags) = match sns
        .list_tags_for_resource()
        .resource_arn(TOPIC_ARN)
        .send()
        .await
    {
        Ok(tags) => {
            let subs = sns
                .list_subscriptions_by_topic()
                .topic_arn(TOPIC_ARN)
                .send()
                .await
                .expect("subscriptions");
            let mut emails: Vec<String> = subs
                .subscriptions()
                .iter()
                .filter(|s| s.protocol() == Some("email"))
                .filter_map(|s| s.endpoint().map(str::to_owned))
                .collect();
            emails.sort();
            let tags = tags
                .tags()
                .iter()
                .map(|t| (t.key().to_owned(), t.value().to_owned()))
                .collect();
            (emails, Some(tags))
        }
        Err(_) => (Vec::new(), None),
    };
    AlarmFamily {
        filters,
        alarms,
        emails,
        topic_tags,
    }
}

/// `spec_text` with `[alerts]`: two addresses.
fn spec_with_alerts(stack: &str, cidr_second_octet: u8) -> String {
    spec_text(stack, cidr_second_octet, "single")
        + "\n[alerts]\nemails = [\"ops@example.org\", \"oncall@example.org\"]\nrefusals = 500\n"
}

#[test]
fn alarms_on_the_audit_log_group_send_to_the_stacks_topic_drift_is_repaired_and_destroy_removes_them(
) {
    let rig = Rig::new();
    let (rt, _) = rig.ec2();
    let spec = rig.write_spec("lab.toml", &spec_with_alerts("lab", 50));
    let plan = rig.ok(&spec, &["plan"]);
    for line in [
        "+ metric filter gatehouse-lab-failed-logins count FailedLogins in gatehouse/lab: { $.event = \"auth.failure\" }\n",
        "+ sns topic gatehouse-lab-alerts where the stack's alarms send\n",
        "+ sns topic gatehouse-lab-alerts/ops@example.org email subscription (AWS mails a link to confirm)\n",
        "+ alarm gatehouse-lab-refusals Refusals Sum >= 500 per 300 s, 1 period(s)\n",
    ] {
        assert!(plan.contains(line), "{line:?} not in\n{plan}");
    }
    rig.ok(&spec, &["apply"]);
    rig.assert_no_changes(&spec, "lab");
    let made = rt.block_on(alarm_family(&rig));
    let filters: Vec<(&str, &str, &str)> = made
        .filters
        .iter()
        .map(|(name, (_, metric, value))| (name.as_str(), metric.as_str(), value.as_str()))
        .collect();
    assert_eq!(
        filters,
        [
            ("gatehouse-lab-directory-stale", "DirectoryStale", "1"),
            ("gatehouse-lab-failed-logins", "FailedLogins", "1"),
            ("gatehouse-lab-key-push-failures", "KeyPushFailures", "1"),
            ("gatehouse-lab-key-pushes", "KeyPushes", "1"),
            ("gatehouse-lab-refusals", "Refusals", "1"),
            (
                "gatehouse-lab-refusals-summarized",
                "Refusals",
                "$.summarized"
            ),
        ]
    );
    let names: Vec<&str> = made.alarms.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "gatehouse-lab-directory-stale",
            "gatehouse-lab-failed-logins",
            "gatehouse-lab-key-push-failures",
            "gatehouse-lab-refusals",
        ]
    );
    for (name, (_, _, actions, tags)) in &made.alarms {
        assert_eq!(
            actions,
            &[TOPIC_ARN, TOPIC_ARN],
            "{name}: alarm and OK actions"
        );
        let kind = name.trim_start_matches("gatehouse-lab-");
        assert_eq!(
            tags,
            &[
                ("gatehouse:resource".to_owned(), format!("alarm/{kind}")),
                ("gatehouse:stack".to_owned(), "lab".to_owned()),
            ],
            "{name}"
        );
    }
    assert_eq!(made.alarms["gatehouse-lab-refusals"].1, 500.0);
    assert_eq!(made.emails, ["oncall@example.org", "ops@example.org"]);
    let tags = made.topic_tags.clone().expect("the topic");
    assert_eq!(tags.get("gatehouse:stack").map(String::as_str), Some("lab"));
    assert_eq!(
        tags.get("project").map(String::as_str),
        Some("gatehouse-test")
    );

    // Drift by hand: a filter deleted, an alarm deleted, another's threshold, the topic's
    // tag, an address unsubscribed, a stranger's subscribed.
    rt.block_on(async {
        let config = rig.sdk();
        let logs = aws_sdk_cloudwatchlogs::Client::new(&config);
        let cloudwatch = aws_sdk_cloudwatch::Client::new(&config);
        let sns = aws_sdk_sns::Client::new(&config);
        // (A filter deleted, not edited: moto's PutMetricFilter adds a second filter of the
        // name where CloudWatch Logs replaces it; the planner's repair of an edited one is
        // unit-tested.)
        logs.delete_metric_filter()
            .log_group_name(AUDIT_GROUP)
            .filter_name("gatehouse-lab-failed-logins")
            .send()
            .await
            .expect("delete filter");
        cloudwatch
            .delete_alarms()
            .alarm_names("gatehouse-lab-directory-stale")
            .send()
            .await
            .expect("delete alarm");
        cloudwatch
            .put_metric_alarm()
            .alarm_name("gatehouse-lab-refusals")
            .namespace("gatehouse/lab")
            .metric_name("Refusals")
            .statistic(aws_sdk_cloudwatch::types::Statistic::Sum)
            .period(300)
            .evaluation_periods(1)
            .threshold(1e9)
            .comparison_operator(
                aws_sdk_cloudwatch::types::ComparisonOperator::GreaterThanOrEqualToThreshold,
            )
            .send()
            .await
            .expect("edit alarm");
        sns.untag_resource()
            .resource_arn(TOPIC_ARN)
            .tag_keys("project")
            .send()
            .await
            .expect("untag topic");
        let subs = sns
            .list_subscriptions_by_topic()
            .topic_arn(TOPIC_ARN)
            .send()
            .await
            .expect("subscriptions");
        let oncall = subs
            .subscriptions()
            .iter()
            .find(|s| s.endpoint() == Some("oncall@example.org"))
            .and_then(|s| s.subscription_arn())
            .expect("oncall's subscription")
            .to_owned();
        sns.unsubscribe()
            .subscription_arn(oncall)
            .send()
            .await
            .expect("unsubscribe");
        sns.subscribe()
            .topic_arn(TOPIC_ARN)
            .protocol("email")
            .endpoint("stranger@example.net")
            .send()
            .await
            .expect("subscribe");
    });
    let plan = rig.ok(&spec, &["plan"]);
    for line in [
        "+ metric filter gatehouse-lab-failed-logins count FailedLogins in gatehouse/lab: { $.event = \"auth.failure\" }\n",
        "+ alarm gatehouse-lab-directory-stale DirectoryStale Sum >= 1 per 300 s, 1 period(s)\n",
        "~ alarm gatehouse-lab-refusals put back: threshold, missing data, description, actions\n",
        "~ sns topic gatehouse-lab-alerts tags project\n",
        "+ sns topic gatehouse-lab-alerts/oncall@example.org email subscription (AWS mails a link to confirm)\n",
        "= subscription email stranger@example.net not in [alerts] emails; left alone (`aws sns unsubscribe --subscription-arn arn:aws:sns:us-east-1:123456789012:gatehouse-lab-alerts:",
        "stack lab: 3 to create, 2 to change, 0 to delete\n",
    ] {
        assert!(plan.contains(line), "{line:?} not in\n{plan}");
    }
    rig.ok(&spec, &["apply"]);
    let plan = rig.ok(&spec, &["plan"]);
    assert!(
        plan.starts_with("= subscription email stranger@example.net ")
            && plan.ends_with("stack lab: no changes\n"),
        "{plan}"
    );
    let repaired = rt.block_on(alarm_family(&rig));
    assert_eq!(repaired.filters, made.filters);
    assert_eq!(repaired.alarms, made.alarms);
    assert_eq!(repaired.topic_tags, made.topic_tags);
    assert_eq!(
        repaired.emails,
        [
            "oncall@example.org",
            "ops@example.org",
            "stranger@example.net"
        ]
    );

    // destroy: the alarms, the filters and the topic go; the audit log group stays.
    rig.ok(&spec, &["destroy"]);
    let left = rt.block_on(alarm_family(&rig));
    assert_eq!(
        left,
        AlarmFamily {
            filters: Default::default(),
            alarms: Default::default(),
            emails: Vec::new(),
            topic_tags: None,
        }
    );
    rt.block_on(async {
        assert!(log_group(&rig.logs(), "lab").await.is_some(), "kept");
    });
}

#[test]
fn a_topic_of_the_stacks_name_not_ours_is_refused_and_never_touched() {
    let rig = Rig::new();
    let (rt, ec2) = rig.ec2();
    rt.block_on(async {
        aws_sdk_sns::Client::new(&rig.sdk())
            .create_topic()
            .name("gatehouse-lab-alerts")
            .send()
            .await
            .expect("someone else's topic");
    });
    let spec = rig.write_spec("lab.toml", &spec_with_alerts("lab", 50));
    for command in ["plan", "apply"] {
        let out = rig.run(&spec, &[command]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {err}");
        assert!(
            err.contains(&format!(
                "SNS topic \"{TOPIC_ARN}\" exists but does not carry gatehouse:stack = lab; \
                 refusing to touch it"
            )),
            "{command}: {err}"
        );
    }
    rt.block_on(async {
        let made: usize = tagged_counts(&ec2, "lab")
            .await
            .iter()
            .map(|(_, n)| n)
            .sum();
        assert_eq!(made, 0, "apply changed something before refusing");
    });
    assert_eq!(
        rig.ok(&spec, &["destroy"]),
        "stack lab: destroyed (0 step(s))\n"
    );
    let family = rt.block_on(alarm_family(&rig));
    assert!(family.topic_tags.is_some(), "left alone");
}

#[test]
fn a_binary_with_debug_info_is_planned_with_a_warning_and_a_dist_build_without() {
    let rig = Rig::new();
    let debug = rig.dir.path().join("gatehouse-release");
    let mut bytes = b"\x7fELF".to_vec();
    bytes.resize(100_000, 1);
    bytes.extend_from_slice(b".debug_info\0.debug_line\0");
    std::fs::write(&debug, &bytes).expect("write");
    let spec = rig.write_spec(
        "lab.toml",
        &spec_with_binary("lab", 50, &debug.display().to_string()),
    );
    let out = rig.run(&spec, &["plan"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(
        err.contains(&format!(
            "warning: gatehouse_binary {} has debug info (0 MB), and every bastion fetches it \
             at boot: build it with `cargo build --profile dist --locked -p gatehouse`",
            debug.display()
        )),
        "{err}"
    );
    let dist = rig.dir.path().join("gatehouse-dist");
    std::fs::write(&dist, &bytes[..100_000]).expect("write");
    let spec = rig.write_spec(
        "lab.toml",
        &spec_with_binary("lab", 50, &dist.display().to_string()),
    );
    let out = rig.run(&spec, &["plan"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{out:?}"
    );
}

// ---- brownfield: the stack inside a network another tool made ----

/// The stack's tables, one per subnet: an existing subnet by `id` (an id or its Name tag).
fn existing_subnet(name: &str, tier: &str, id: &str) -> String {
    format!("\n[[subnets]]\nname = \"{name}\"\ntier = \"{tier}\"\nid = \"{id}\"\n")
}

/// A subnet the stack creates inside the existing VPC.
fn created_subnet(name: &str, tier: &str, cidr: &str, az: &str) -> String {
    format!(
        "\n[[subnets]]\nname = \"{name}\"\ntier = \"{tier}\"\ncidr = \"{cidr}\"\naz = \"{az}\"\n"
    )
}

/// A brownfield spec: the stack in VPC `vpc` (an id, "default" or a Name tag), with
/// `subnets` (from [`existing_subnet`] and [`created_subnet`]), the bastion in the one it
/// calls "dmz", no private hosts (the team tags its own).
fn brownfield_spec(stack: &str, vpc: &str, nat: &str, subnets: &[String]) -> String {
    let subnets = subnets.concat();
    format!(
        r#"
[stack]
name = "{stack}"
region = "us-east-1"

[vpc]
id = "{vpc}"
nat = "{nat}"

[tags]
project = "gatehouse-test"
{subnets}
[bastion]
subnet = "dmz"
ami = "ami-12c6146b"
allowed_cidrs = ["198.51.100.0/24", "203.0.113.7/32"]
gatehouse_download_url = "https://example.org/releases/gatehouse"
gatehouse_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"

[private]
ports = [22, 8888]
"#
    )
}

impl Rig {
    /// `tests/py/brownfield.py ARGS` against this rig's moto; its JSON answer.
    fn brownfield(&self, args: &[&str]) -> serde_json::Value {
        let python = moto::moto_server_path().with_file_name("python3");
        let script = moto::moto_server_path()
            .ancestors()
            .nth(3)
            .map(|tests| tests.join("py").join("brownfield.py"))
            .expect("tests/.venv/bin/moto_server has a tests/ folder");
        let mut cmd = Command::new(&python);
        cmd.env_remove("AWS_PROFILE");
        for (k, v) in self.moto.env() {
            cmd.env(k, v);
        }
        let out = cmd.arg(&script).args(args).checked_output("brownfield.py");
        assert!(
            out.status.success(),
            "brownfield.py {:?} failed: {}",
            args.first(),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("brownfield.py prints JSON")
    }

    /// Every Describe answer about the resources `made` (what `brownfield.py make` or
    /// `default` printed) names, canonical; see tests/py/brownfield.py for what it leaves out.
    fn network_snapshot(&self, made: &serde_json::Value) -> serde_json::Value {
        self.brownfield(&["snapshot", &made.to_string()])
    }
}

/// Where `after` differs from `before`: one line per path, with both values (a list of a
/// different length: the elements gone and the elements new).
fn json_differences(
    path: &str,
    before: &serde_json::Value,
    after: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = format!("{path}/{k}");
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => json_differences(&p, x, y, out),
                    (Some(x), None) => out.push(format!("{p}: gone, was {x}")),
                    (None, Some(y)) => out.push(format!("{p}: new {y}")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                json_differences(&format!("{path}[{i}]"), x, y, out);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for x in a.iter().filter(|x| !b.contains(x)) {
                out.push(format!("{path}[]: gone {x}"));
            }
            for y in b.iter().filter(|y| !a.contains(y)) {
                out.push(format!("{path}[]: new {y}"));
            }
        }
        (x, y) if x == y => {}
        (x, y) => out.push(format!("{path}: {x} -> {y}")),
    }
}

#[track_caller]
fn assert_network_unchanged(before: &serde_json::Value, after: &serde_json::Value, when: &str) {
    let mut differences = Vec::new();
    json_differences("", before, after, &mut differences);
    assert!(
        differences.is_empty(),
        "{when}: the existing network changed ({} difference(s)):\n{}",
        differences.len(),
        differences.join("\n")
    );
}

/// The ids of everything `made` names (every region), for plan lines that must not name them.
fn made_ids(made: &serde_json::Value) -> Vec<String> {
    made["regions"]
        .as_object()
        .expect("regions")
        .values()
        .flat_map(|kinds| kinds.as_object().expect("kinds").values())
        .flat_map(|ids| ids.as_array().expect("ids").iter())
        .map(|id| id.as_str().expect("id").to_owned())
        .collect()
}

/// A brownfield plan from empty: nothing deleted; changes only to resources the plan itself
/// creates, and none naming an existing id; no create of what exists (`existing_keys`).
#[track_caller]
fn assert_plan_creates_beside(plan: &str, existing: &[String], existing_keys: &[&str]) {
    let key = |line: &str| line[2..].split_whitespace().next().unwrap_or("").to_owned();
    let created: Vec<String> = plan
        .lines()
        .filter(|l| l.starts_with("+ "))
        .map(key)
        .collect();
    assert!(!created.is_empty(), "nothing to create:\n{plan}");
    for line in plan.lines() {
        assert!(!line.starts_with("- "), "a deletion: {line}\n{plan}");
        if line.starts_with("~ ") || line.starts_with("+ ") {
            assert!(
                !existing_keys.contains(&key(line).as_str()),
                "the plan makes or changes an existing resource: {line}\n{plan}"
            );
        }
        if line.starts_with("~ ") {
            assert!(
                created.contains(&key(line)),
                "a change to something the plan does not create: {line}\n{plan}"
            );
            if let Some(id) = existing.iter().find(|id| line.contains(id.as_str())) {
                panic!("a change names existing {id}: {line}\n{plan}");
            }
        }
    }
    assert!(
        plan.lines()
            .last()
            .is_some_and(|l| l.ends_with(" to change, 0 to delete")),
        "{plan}"
    );
}

/// The stack's counts per kind (`tagged_counts`) that are not zero.
async fn tagged_left(ec2: &aws_sdk_ec2::Client, stack: &str) -> Vec<(&'static str, usize)> {
    tagged_counts(ec2, stack)
        .await
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// The stack's instance that carries `gatehouse:resource=instance/bastion`.
async fn bastion_instance(ec2: &aws_sdk_ec2::Client, stack: &str) -> aws_sdk_ec2::types::Instance {
    let res = ec2
        .describe_instances()
        .filters(tag(stack))
        .filters(
            Filter::builder()
                .name("tag:gatehouse:resource")
                .values("instance/bastion")
                .build(),
        )
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .values("running")
                .values("pending")
                .build(),
        )
        .send()
        .await
        .expect("describe bastion");
    let found: Vec<_> = res
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .cloned()
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.into_iter().next().expect("one bastion")
}

/// The id of the stack's security group tagged `gatehouse:resource=key`.
async fn stack_group(ec2: &aws_sdk_ec2::Client, stack: &str, key: &str) -> String {
    let groups = ec2
        .describe_security_groups()
        .filters(tag(stack))
        .filters(
            Filter::builder()
                .name("tag:gatehouse:resource")
                .values(key)
                .build(),
        )
        .send()
        .await
        .expect("groups");
    assert_eq!(groups.security_groups().len(), 1, "{key}: {groups:?}");
    groups.security_groups()[0]
        .group_id()
        .expect("group id")
        .to_owned()
}

/// The subnet of `cidr` in `vpc` and the route table explicitly associated with it.
async fn subnet_and_table(
    ec2: &aws_sdk_ec2::Client,
    vpc: &str,
    cidr: &str,
) -> (aws_sdk_ec2::types::Subnet, aws_sdk_ec2::types::RouteTable) {
    let subnets = ec2
        .describe_subnets()
        .filters(Filter::builder().name("vpc-id").values(vpc).build())
        .filters(Filter::builder().name("cidr-block").values(cidr).build())
        .send()
        .await
        .expect("subnets");
    assert_eq!(subnets.subnets().len(), 1, "{cidr}: {subnets:?}");
    let subnet = subnets.subnets()[0].clone();
    let tables = ec2
        .describe_route_tables()
        .filters(
            Filter::builder()
                .name("association.subnet-id")
                .values(subnet.subnet_id().expect("subnet id"))
                .build(),
        )
        .send()
        .await
        .expect("route tables");
    assert_eq!(tables.route_tables().len(), 1, "{cidr}: {tables:?}");
    (subnet, tables.route_tables()[0].clone())
}

fn has_tag(tags: &[aws_sdk_ec2::types::Tag], key: &str, value: &str) -> bool {
    tags.iter()
        .any(|t| t.key() == Some(key) && t.value() == Some(value))
}

/// The target of a table's 0.0.0.0/0 route: (gateway id, NAT gateway id); None without one.
fn default_route(
    table: &aws_sdk_ec2::types::RouteTable,
) -> Option<(Option<String>, Option<String>)> {
    table
        .routes()
        .iter()
        .find(|r| r.destination_cidr_block() == Some("0.0.0.0/0"))
        .map(|r| {
            (
                r.gateway_id().map(str::to_owned),
                r.nat_gateway_id().map(str::to_owned),
            )
        })
}

fn str_of<'a>(v: &'a serde_json::Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} in brownfield.py's answer"))
}

/// How many entries the snapshot holds of `kind` in us-east-1: proof that it saw them.
fn snapshot_len(snapshot: &serde_json::Value, kind: &str) -> usize {
    snapshot["us-east-1"][kind].as_array().map_or(0, Vec::len)
}

#[test]
fn brownfield_apply_and_destroy_leave_the_teams_vpc_exactly_as_it_was() {
    let rig = Rig::new();
    let made = rig.brownfield(&["make"]);
    let before = rig.network_snapshot(&made);
    // The snapshot sees the team's network: 3 VPCs, 5 subnets, 5 route tables (the team VPC's
    // main, public and private ones and the sandboxes' main ones), 2 instances.
    assert_eq!(
        [
            snapshot_len(&before, "vpcs"),
            snapshot_len(&before, "subnets"),
            snapshot_len(&before, "route_tables"),
            snapshot_len(&before, "instances"),
        ],
        [3, 5, 5, 2],
        "{before:#}"
    );
    let vpc = str_of(&made["vpc"], "vpc");
    let dmz = str_of(&made["public_subnets"][0], "public subnet");
    let spec = rig.write_spec(
        "bf.toml",
        &brownfield_spec(
            "bf",
            vpc,
            "single",
            &[
                existing_subnet("dmz", "public", dmz),
                existing_subnet(
                    "team",
                    "private",
                    str_of(&made["private_subnet_name"], "private subnet name"),
                ),
                created_subnet("analysis", "private", "10.77.50.0/24", "us-east-1a"),
            ],
        ),
    );

    let plan = rig.ok(&spec, &["plan"]);
    for want in [
        "+ subnet/analysis",
        "+ nat/",
        "+ instance/bastion",
        "+ sg/bastion",
    ] {
        assert!(plan.contains(want), "{want}:\n{plan}");
    }
    assert_plan_creates_beside(
        &plan,
        &made_ids(&made),
        &["vpc", "igw", "sg/default", "subnet/dmz", "subnet/team"],
    );
    rig.ok(&spec, &["apply"]);
    rig.assert_no_changes(&spec, "bf");
    assert_network_unchanged(&before, &rig.network_snapshot(&made), "after apply");

    let (rt, ec2) = rig.ec2();
    rt.block_on(async {
        // Only what the stack owns carries its tag: one subnet, its table, the NAT and its
        // address, the bastion's address, two groups, the bastion.
        assert_eq!(
            tagged_counts(&ec2, "bf").await,
            vec![
                ("vpc", 0),
                ("subnet", 1),
                ("igw", 0),
                ("eip", 2),
                ("nat", 1),
                ("route table", 1),
                ("security group", 2),
                ("instance", 1),
            ]
        );
        // The bastion runs in the team's public subnet, behind the stack's group.
        let bastion = bastion_instance(&ec2, "bf").await;
        assert_eq!(bastion.subnet_id(), Some(dmz));
        assert_eq!(bastion.vpc_id(), Some(vpc));
        let bastion_sg = stack_group(&ec2, "bf", "sg/bastion").await;
        let groups: Vec<&str> = bastion
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id())
            .collect();
        assert_eq!(groups, [bastion_sg.as_str()]);
        // The created subnet is the stack's; its table routes out through the stack's NAT,
        // which stands in the team's public subnet.
        let (subnet, table) = subnet_and_table(&ec2, vpc, "10.77.50.0/24").await;
        assert!(
            has_tag(subnet.tags(), "gatehouse:stack", "bf"),
            "{subnet:?}"
        );
        assert_eq!(subnet.availability_zone(), Some("us-east-1a"));
        assert!(has_tag(table.tags(), "gatehouse:stack", "bf"), "{table:?}");
        let nats = ec2.describe_nat_gateways().send().await.expect("nats");
        let nat = nats
            .nat_gateways()
            .iter()
            .find(|n| n.state().map(|s| s.as_str()) != Some("deleted"))
            .expect("a NAT gateway");
        assert_eq!(nat.subnet_id(), Some(dmz));
        assert_eq!(
            default_route(&table),
            Some((None, nat.nat_gateway_id().map(str::to_owned))),
            "{table:?}"
        );
        let private_sg = stack_group(&ec2, "bf", "sg/private").await;
        let private = ec2
            .describe_security_groups()
            .group_ids(&private_sg)
            .send()
            .await
            .expect("private group");
        assert_eq!(private.security_groups()[0].vpc_id(), Some(vpc));
    });

    let out = rig.ok(&spec, &["destroy"]);
    assert!(out.contains("stack bf: destroyed"), "{out}");
    assert_network_unchanged(&before, &rig.network_snapshot(&made), "after destroy");
    rt.block_on(async {
        assert_eq!(tagged_left(&ec2, "bf").await, []);
        let role = rig
            .iam()
            .get_role()
            .role_name("gatehouse-bf-bastion")
            .send()
            .await;
        assert!(role.is_err(), "the role must be gone: {role:?}");
    });
}

#[test]
fn brownfield_on_the_default_vpc_splits_it_and_destroy_restores_it() {
    let rig = Rig::new();
    let found = rig.brownfield(&["default"]);
    let before = rig.network_snapshot(&found);
    // moto's default VPC in us-east-1: one default subnet per zone (six), its main table.
    assert_eq!(
        [
            snapshot_len(&before, "vpcs"),
            snapshot_len(&before, "subnets"),
            snapshot_len(&before, "route_tables"),
            snapshot_len(&before, "security_groups"),
            snapshot_len(&before, "internet_gateways"),
        ],
        [1, 6, 1, 1, 1],
        "{before:#}"
    );
    let vpc = str_of(&found["vpc"], "vpc");
    let dmz = str_of(
        &found["subnets_by_az"]["us-east-1a"],
        "default subnet in us-east-1a",
    );
    let spec = rig.write_spec(
        "bf.toml",
        &brownfield_spec(
            "bf",
            "default",
            "none",
            &[
                existing_subnet("dmz", "public", dmz),
                created_subnet("analysis", "private", "172.31.128.0/24", "us-east-1a"),
            ],
        ),
    );
    let plan = rig.ok(&spec, &["plan"]);
    assert!(plan.contains("+ subnet/analysis"), "{plan}");
    assert!(!plan.contains("+ nat/"), "nat = none:\n{plan}");
    assert_plan_creates_beside(
        &plan,
        &made_ids(&found),
        &["vpc", "igw", "sg/default", "subnet/dmz"],
    );
    rig.ok(&spec, &["apply"]);
    rig.assert_no_changes(&spec, "bf");
    assert_network_unchanged(&before, &rig.network_snapshot(&found), "after apply");

    let (rt, ec2) = rig.ec2();
    rt.block_on(async {
        let bastion = bastion_instance(&ec2, "bf").await;
        assert_eq!(bastion.subnet_id(), Some(dmz));
        assert_eq!(bastion.vpc_id(), Some(vpc));
        // The private half: the stack's subnet on a table of its own without a way out.
        let (subnet, table) = subnet_and_table(&ec2, vpc, "172.31.128.0/24").await;
        assert!(
            has_tag(subnet.tags(), "gatehouse:stack", "bf"),
            "{subnet:?}"
        );
        assert!(has_tag(table.tags(), "gatehouse:stack", "bf"), "{table:?}");
        assert_eq!(default_route(&table), None, "{table:?}");
        // The default group keeps its rules (the snapshot compares them; this says why).
        let default_sg = str_of(&found["default_security_group"], "default group");
        let group = ec2
            .describe_security_groups()
            .group_ids(default_sg)
            .send()
            .await
            .expect("default group");
        let group = &group.security_groups()[0];
        assert!(
            !group.ip_permissions().is_empty() && !group.ip_permissions_egress().is_empty(),
            "the default group was locked down: {group:?}"
        );
        assert_eq!(
            tagged_counts(&ec2, "bf").await,
            vec![
                ("vpc", 0),
                ("subnet", 1),
                ("igw", 0),
                ("eip", 1),
                ("nat", 0),
                ("route table", 1),
                ("security group", 2),
                ("instance", 1),
            ]
        );
    });

    rig.ok(&spec, &["destroy"]);
    assert_network_unchanged(&before, &rig.network_snapshot(&found), "after destroy");
    rt.block_on(async {
        assert_eq!(tagged_left(&ec2, "bf").await, []);
    });
}

#[test]
fn brownfield_replicas_span_existing_public_subnets() {
    let rig = Rig::new();
    let made = rig.brownfield(&["make"]);
    let before = rig.network_snapshot(&made);
    assert_eq!(snapshot_len(&before, "subnets"), 5, "{before:#}");
    let publics: Vec<&str> = made["public_subnets"]
        .as_array()
        .expect("public subnets")
        .iter()
        .map(|s| str_of(s, "public subnet"))
        .collect();
    // One by id, one by its Name tag.
    let text = brownfield_spec(
        "bf",
        str_of(&made["vpc_name"], "vpc name"),
        "none",
        &[
            existing_subnet("dmz", "public", publics[0]),
            existing_subnet(
                "dmz-b",
                "public",
                str_of(&made["public_subnet_names"][1], "public subnet name"),
            ),
        ],
    );
    let replicated = text.replace("allowed_cidrs = [", "replicas = 2\nallowed_cidrs = [");
    assert_ne!(replicated, text);
    let spec = rig.write_spec("bf.toml", &replicated);
    let plan = rig.ok(&spec, &["plan"]);
    assert!(plan.contains("+ nlb"), "{plan}");
    assert_plan_creates_beside(
        &plan,
        &made_ids(&made),
        &["vpc", "igw", "sg/default", "subnet/dmz", "subnet/dmz-b"],
    );
    rig.ok(&spec, &["apply"]);
    rig.assert_no_changes(&spec, "bf");
    assert_network_unchanged(&before, &rig.network_snapshot(&made), "after apply");

    let (rt, ec2) = rig.ec2();
    let r = rt.block_on(rig.replicas("bf"));
    let mut expected: Vec<&str> = publics.clone();
    expected.sort_unstable();
    let balancer = r.balancer.as_ref().expect("balancer");
    let mut in_subnets: Vec<&str> = balancer
        .availability_zones()
        .iter()
        .filter_map(|z| z.subnet_id())
        .collect();
    in_subnets.sort_unstable();
    assert_eq!(in_subnets, expected, "{balancer:?}");
    assert_eq!(balancer.vpc_id(), made["vpc"].as_str());
    let group = r.group.as_ref().expect("auto scaling group");
    let mut group_subnets: Vec<&str> = group
        .vpc_zone_identifier()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .collect();
    group_subnets.sort_unstable();
    assert_eq!(group_subnets, expected, "{group:?}");
    assert_eq!(group.desired_capacity(), Some(2));

    rig.ok(&spec, &["destroy"]);
    assert_network_unchanged(&before, &rig.network_snapshot(&made), "after destroy");
    let r = rt.block_on(rig.replicas("bf"));
    assert!(
        r.balancer.is_none() && r.group.is_none() && r.target_group.is_none() && r.templates == 0,
        "{r:?}"
    );
    rt.block_on(async {
        assert_eq!(tagged_left(&ec2, "bf").await, []);
    });
}

#[test]
fn brownfield_refusals_name_the_problem_and_change_nothing() {
    let rig = Rig::new();
    let made = rig.brownfield(&["make"]);
    let before = rig.network_snapshot(&made);
    assert_eq!(snapshot_len(&before, "vpcs"), 3, "{before:#}");
    let vpc = str_of(&made["vpc"], "vpc");
    let dmz = existing_subnet("dmz", "public", str_of(&made["public_subnets"][0], "dmz"));
    let analysis = created_subnet("analysis", "private", "10.77.50.0/24", "us-east-1a");
    let with_replicas = |text: String| {
        let with = text.replace("allowed_cidrs = [", "replicas = 2\nallowed_cidrs = [");
        assert_ne!(with, text);
        with
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "a public subnet whose own table has no route out",
            brownfield_spec(
                "bf",
                vpc,
                "none",
                &[
                    existing_subnet("dmz", "public", str_of(&made["private_subnet"], "private")),
                    analysis.clone(),
                ],
            ),
            "no route to an internet gateway",
        ),
        (
            "a public subnet on the main table, which has no route out",
            brownfield_spec(
                "bf",
                vpc,
                "none",
                &[
                    existing_subnet(
                        "dmz",
                        "public",
                        str_of(&made["scratch_subnets"][0], "scratch"),
                    ),
                    analysis.clone(),
                ],
            ),
            "no route to an internet gateway",
        ),
        (
            "replicas over public subnets in one zone",
            with_replicas(brownfield_spec(
                "bf",
                vpc,
                "none",
                &[dmz.clone(), analysis.clone()],
            )),
            "at least two availability zones",
        ),
        (
            "a VPC of another region",
            brownfield_spec(
                "bf",
                str_of(&made["west_vpc"], "west vpc"),
                "none",
                &[dmz.clone(), analysis.clone()],
            ),
            "not found in us-east-1",
        ),
        (
            "a created subnet over an existing one",
            brownfield_spec(
                "bf",
                vpc,
                "none",
                &[
                    dmz.clone(),
                    created_subnet("analysis", "private", "10.77.10.128/25", "us-east-1a"),
                ],
            ),
            "overlaps",
        ),
        (
            "a subnet Name two subnets carry",
            brownfield_spec(
                "bf",
                vpc,
                "none",
                &[
                    dmz.clone(),
                    existing_subnet(
                        "scratch",
                        "private",
                        str_of(&made["scratch_subnet_name"], "scratch name"),
                    ),
                ],
            ),
            "ambiguous",
        ),
        (
            "a VPC Name two VPCs carry",
            brownfield_spec(
                "bf",
                str_of(&made["sandbox_vpc_name"], "sandbox name"),
                "none",
                &[created_subnet(
                    "dmz",
                    "public",
                    "10.88.0.0/24",
                    "us-east-1a",
                )],
            ),
            "ambiguous",
        ),
        (
            "a created subnet outside the VPC's blocks",
            brownfield_spec(
                "bf",
                vpc,
                "none",
                &[
                    dmz.clone(),
                    created_subnet("analysis", "private", "10.99.50.0/24", "us-east-1a"),
                ],
            ),
            "outside",
        ),
    ];
    let (rt, ec2) = rig.ec2();
    let logs = rig.logs();
    for (what, text, message) in &cases {
        let spec = rig.write_spec("bf.toml", text);
        for command in ["plan", "apply"] {
            let out = rig.run(&spec, &[command]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success(),
                "{what}: {command} succeeded:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
            assert!(err.contains(message), "{what}: {command} said:\n{err}");
        }
        rt.block_on(async {
            assert_eq!(tagged_left(&ec2, "bf").await, [], "{what}");
            assert_eq!(log_group(&logs, "bf").await, None, "{what}");
            let role = rig
                .iam()
                .get_role()
                .role_name("gatehouse-bf-bastion")
                .send()
                .await;
            assert!(role.is_err(), "{what}: a role was made");
        });
        assert_network_unchanged(&before, &rig.network_snapshot(&made), what);
    }
}

#[test]
fn brownfield_created_public_subnets_route_to_the_vpcs_own_gateway() {
    let rig = Rig::new();
    let made = rig.brownfield(&["make"]);
    let before = rig.network_snapshot(&made);
    assert_eq!(snapshot_len(&before, "internet_gateways"), 1, "{before:#}");
    let vpc = str_of(&made["vpc"], "vpc");
    let igw = str_of(&made["igw"], "igw");
    let spec = rig.write_spec(
        "bf.toml",
        &brownfield_spec(
            "bf",
            vpc,
            "single",
            &[
                created_subnet("dmz", "public", "10.77.60.0/24", "us-east-1b"),
                created_subnet("analysis", "private", "10.77.61.0/24", "us-east-1b"),
            ],
        ),
    );
    let plan = rig.ok(&spec, &["plan"]);
    assert!(!plan.contains("+ igw"), "the VPC has its gateway:\n{plan}");
    assert_plan_creates_beside(&plan, &made_ids(&made), &["vpc", "igw", "sg/default"]);
    rig.ok(&spec, &["apply"]);
    rig.assert_no_changes(&spec, "bf");
    assert_network_unchanged(&before, &rig.network_snapshot(&made), "after apply");

    let (rt, ec2) = rig.ec2();
    rt.block_on(async {
        // The public subnet's table sends 0.0.0.0/0 to the team's gateway; the NAT stands in
        // that subnet and the private table routes to it.
        let (dmz, public) = subnet_and_table(&ec2, vpc, "10.77.60.0/24").await;
        assert!(has_tag(dmz.tags(), "gatehouse:stack", "bf"), "{dmz:?}");
        assert!(
            has_tag(public.tags(), "gatehouse:stack", "bf"),
            "{public:?}"
        );
        assert_eq!(
            default_route(&public),
            Some((Some(igw.to_owned()), None)),
            "{public:?}"
        );
        let (_, private) = subnet_and_table(&ec2, vpc, "10.77.61.0/24").await;
        assert_ne!(private.route_table_id(), public.route_table_id());
        let nats = ec2.describe_nat_gateways().send().await.expect("nats");
        let nat = nats
            .nat_gateways()
            .iter()
            .find(|n| n.state().map(|s| s.as_str()) != Some("deleted"))
            .expect("a NAT gateway");
        assert_eq!(nat.subnet_id(), dmz.subnet_id());
        assert_eq!(
            default_route(&private),
            Some((None, nat.nat_gateway_id().map(str::to_owned))),
            "{private:?}"
        );
        let bastion = bastion_instance(&ec2, "bf").await;
        assert_eq!(bastion.subnet_id(), dmz.subnet_id());
        assert_eq!(
            tagged_counts(&ec2, "bf").await,
            vec![
                ("vpc", 0),
                ("subnet", 2),
                ("igw", 0),
                ("eip", 2),
                ("nat", 1),
                ("route table", 2),
                ("security group", 2),
                ("instance", 1),
            ]
        );
    });
    rig.ok(&spec, &["destroy"]);
    assert_network_unchanged(&before, &rig.network_snapshot(&made), "after destroy");
    rt.block_on(async {
        assert_eq!(tagged_left(&ec2, "bf").await, []);
    });
}

/// The JSON argument of `flag` in a printed AWS CLI command (`--flag '<json>'`).
fn cli_json_argument(command: &str, flag: &str) -> serde_json::Value {
    let rest = command
        .split_once(&format!("{flag} '"))
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("{flag} in {command}"));
    let json = rest.split_once('\'').map_or(rest, |(json, _)| json);
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{flag}: {e}: {json}"))
}

#[test]
fn output_names_the_bastions_group_and_the_commands_that_admit_a_teams_host_work() {
    let rig = Rig::new();
    let made = rig.brownfield(&["make"]);
    let vpc = str_of(&made["vpc"], "vpc");
    let dmz = str_of(&made["public_subnets"][0], "public subnet");
    let private = str_of(&made["private_subnet"], "private subnet");
    let spec = rig.write_spec(
        "bf.toml",
        &brownfield_spec(
            "bf",
            vpc,
            "none",
            &[
                existing_subnet("dmz", "public", dmz),
                existing_subnet("team", "private", private),
            ],
        ),
    );
    rig.ok(&spec, &["apply"]);
    let text = rig.ok(&spec, &["output"]);
    let json: serde_json::Value =
        serde_json::from_str(&rig.ok(&spec, &["output", "--json"])).expect("output json");
    let group = str_of(&json["bastion_security_group"], "bastion group").to_owned();
    assert!(group.starts_with("sg-"), "{json:#}");
    assert!(
        text.contains(&format!(
            "bastion security group: {group}: a host the stack did not create"
        )),
        "{text}"
    );
    // The VPC and the existing subnets are named, though the stack does not own them.
    assert_eq!(json["vpc_id"], vpc, "{json:#}");
    assert_eq!(json["subnet_ids"]["dmz"], dmz, "{json:#}");
    assert_eq!(json["subnet_ids"]["team"], private, "{json:#}");

    // The printed commands, run as the team would (their JSON through the SDK): the team's
    // group admits the bastion's on [private] ports, and the team's instance gets the tags
    // the daemon reads.
    let commands: Vec<&str> = json["admit_commands"]
        .as_array()
        .expect("admit_commands")
        .iter()
        .map(|c| c.as_str().expect("a command"))
        .collect();
    assert_eq!(commands.len(), 3, "{commands:?}");
    // The third undoes the first, so destroy can delete the bastion's group.
    assert!(
        commands[2].starts_with(
            "before destroy: aws ec2 revoke-security-group-ingress --region us-east-1 --group-id \
             <security group of your hosts> --ip-permissions '"
        ),
        "{}",
        commands[2]
    );
    assert_eq!(
        cli_json_argument(commands[2], "--ip-permissions"),
        cli_json_argument(commands[0], "--ip-permissions")
    );
    assert!(
        text.contains(
            "# Host <its Name tag, instance id or private IP>\n#     ProxyJump bf-bastion"
        ),
        "{text}"
    );
    for command in &commands {
        assert!(text.contains(command), "{command} in:\n{text}");
    }
    assert!(
        commands[0].starts_with(
            "aws ec2 authorize-security-group-ingress --region us-east-1 --group-id <security \
             group of your hosts> --ip-permissions '"
        ),
        "{}",
        commands[0]
    );
    let permissions = cli_json_argument(commands[0], "--ip-permissions");
    let tags = cli_json_argument(commands[1], "--tags");
    let team_group = str_of(&made["team_security_group"], "team group").to_owned();
    let instance = str_of(&made["instances"][0], "team instance").to_owned();
    let (rt, ec2) = rig.ec2();
    rt.block_on(async {
        let mut request = ec2.authorize_security_group_ingress().group_id(&team_group);
        for p in permissions.as_array().expect("permissions") {
            let pair = &p["UserIdGroupPairs"][0];
            request = request.ip_permissions(
                aws_sdk_ec2::types::IpPermission::builder()
                    .ip_protocol(str_of(&p["IpProtocol"], "protocol"))
                    .from_port(p["FromPort"].as_i64().expect("from") as i32)
                    .to_port(p["ToPort"].as_i64().expect("to") as i32)
                    .user_id_group_pairs(
                        aws_sdk_ec2::types::UserIdGroupPair::builder()
                            .group_id(str_of(&pair["GroupId"], "group"))
                            .description(str_of(&pair["Description"], "description"))
                            .build(),
                    )
                    .build(),
            );
        }
        request.send().await.expect("authorize as printed");
        let mut request = ec2.create_tags().resources(&instance);
        for t in tags.as_array().expect("tags") {
            request = request.tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key(str_of(&t["Key"], "key"))
                    .value(str_of(&t["Value"], "value").replace("<group>", "research"))
                    .build(),
            );
        }
        request.send().await.expect("tag as printed");

        let sg = ec2
            .describe_security_groups()
            .group_ids(&team_group)
            .send()
            .await
            .expect("team group");
        let mut admitted: Vec<(i32, String)> = sg.security_groups()[0]
            .ip_permissions()
            .iter()
            .flat_map(|p| {
                p.user_id_group_pairs().iter().map(move |g| {
                    (
                        p.from_port().unwrap_or(-1),
                        g.group_id().unwrap_or_default().to_string(),
                    )
                })
            })
            .collect();
        // (The team's own rules stay beside them.)
        admitted.retain(|(_, from)| from == &group);
        admitted.sort();
        assert_eq!(admitted, [(22, group.clone()), (8888, group.clone())]);
        let described = ec2
            .describe_instances()
            .instance_ids(&instance)
            .send()
            .await
            .expect("team instance");
        let tags = described.reservations()[0].instances()[0].tags();
        assert!(has_tag(tags, "gatehouse:groups", "research"), "{tags:?}");
        assert!(has_tag(tags, "gatehouse:ports", "22,8888"), "{tags:?}");
    });
}

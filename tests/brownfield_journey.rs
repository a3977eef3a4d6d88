//! The journey in a network another tool made (brownfield): a team already has its VPC, its
//! internet gateway, public and private subnets, its security group and a Jupyter host it
//! runs and tags itself. `gatehouse-vpc` is given that VPC and those subnets by id (one by its
//! Name tag) plus one private subnet of its own by CIDR, and puts its own things next to
//! them: the bastion (then two replicas behind the balancer) in the team's public subnets,
//! its groups, role, log group, alarms and event queue (`iam_events` is not set: the
//! account's trail turns it on), the bucket of the replicas' shared listing. It changes
//! nothing of the team's: every Describe answer about the team's network
//! (`tests/py/brownfield.py snapshot`) is the same after apply, after scaling out and after
//! destroy. The team's one change, admitting the bastion's group in its own group as `output`
//! prints it, is the team's to take back before destroy (AWS refuses to delete a group
//! another group's rule names).
//!
//! What the journey module proves for a stack that builds its own VPC is proven here for one
//! placed into an existing VPC, with the same parts: moto in server mode with IAM enforced,
//! the deploy identity holding exactly what `gatehouse-vpc policy` prints for this spec, the
//! bastion on the daemon config from its user data with exactly the role's actions (the role's
//! push condition evaluated by hand on the team's host tags, as moto evaluates none), the
//! stock OpenSSH client, an sshd on the team host's address whose keys come only from EC2
//! Instance Connect pushes, a real Jupyter Server. The replicas run on the config in the user
//! data the group's instances were launched with (the stack's template), behind HAProxy
//! configured from the stack's target group (the NLB's stand-in, as in the scaleout module),
//! with the balancer's node and the replicas on addresses of the team's public subnets, which
//! is what the written `trusted_proxies` trusts. The bastion's binary comes from a release URL
//! that is never reached (the daemons are this build's binary; the journey covers the fetch
//! from the stack's bucket).
//!
//! The stack keeps the journey's name, so that the journey's helpers (leftovers, the walk and
//! its repairs) apply as they are.
//!
//! `the_brownfield_deployer_needs_every_action_it_is_granted` is the journey's walk for this
//! deployer: each action of the brownfield policy removed in turn makes a command fail naming
//! it, and the policy is the greenfield one less exactly the VPC-building actions.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::aws::{fixture_as, gatehouse_cmd, Proxy};
use crate::harness::haproxy::{BackendServer, BalancerConfig, Haproxy};
use crate::harness::jupyter::py_script;
use crate::harness::moto_ns::{AccessKey, NsMoto};
use crate::harness::{
    jupyter_check, run_with_timeout, venv_python, Daemon, Jupyter, KeyPair, Scratch, SshClient,
    Topology, BASTION_CLIENT_ADDR, CLIENT_ADDR, PRIVATE_ADDR, TEST_USER,
};
use crate::instance_connect::{eic_host, pushes};
use crate::journey::{
    actions_of, checkable, key_of, leftovers, logging_trail, printed_policy, stand_in_binary,
    substitute, vpc, vpc_try, walk_spec, Walk, APPLY_FROM_EMPTY, AUDIT_FILE, AUDIT_GROUP,
    CMD_TIMEOUT, JUPYTER_PORT, PARAMETER, PUSH_SID, QUEUE, REFRESH, ROLE, RULE, SCALE_OUT, SQS_URL,
    STACK,
};

/// The team's VPC.
const TEAM_CIDR: &str = "10.0.0.0/16";
/// The team's public subnets, in us-east-1a and us-east-1b (the bastion's, then the
/// replicas' and the balancer's).
const PUBLIC_CIDRS: [&str; 2] = ["10.0.0.0/24", "10.0.1.0/24"];
/// The second public subnet's Name tag: the spec names it by that, not by its id.
const PUBLIC_B_NAME: &str = "team-public-b";
/// The private subnet the stack creates inside the team's VPC.
const CREATED_CIDR: &str = "10.0.50.0/24";
/// The public subnet the walk's stack creates inside the team's VPC.
const CREATED_PUBLIC_CIDR: &str = "10.0.60.0/24";
/// Every team resource carries it; it is not the stack's.
const TEAM_TAG: (&str, &str) = ("team", "data-platform");

/// Where the bastion gets its binary in the journey here: a release URL, never reached (the
/// daemon is this build's binary). A stored binary is the journey's and the walk's: the
/// 130 MB debug build, hashed by every plan, would cost this test a minute.
const RELEASE: &str = "gatehouse_download_url = \"https://example.org/releases/gatehouse\"\n\
                       gatehouse_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"";

/// The actions that build a VPC of the stack's own: what a brownfield deployer is not given.
const VPC_BUILDING: [&str; 8] = [
    "ec2:AttachInternetGateway",
    "ec2:CreateInternetGateway",
    "ec2:CreateVpc",
    "ec2:DeleteInternetGateway",
    "ec2:DeleteVpc",
    "ec2:DescribeVpcAttribute",
    "ec2:DetachInternetGateway",
    "ec2:ModifyVpcAttribute",
];
/// The NAT gateway's actions: not given without a NAT (`nat = "none"`).
const NAT_ACTIONS: [&str; 2] = ["ec2:CreateNatGateway", "ec2:DeleteNatGateway"];

/// The balancer's node, in the team's first public subnet: HAProxy's source address towards
/// the replicas (on the bastion namespace's loopback).
const BALANCER_NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
/// The two replicas, one in each public subnet (on the bastion namespace's loopback).
const REPLICAS: [(&str, Ipv4Addr); 2] = [
    ("replica-a", Ipv4Addr::new(10, 0, 0, 11)),
    ("replica-b", Ipv4Addr::new(10, 0, 1, 12)),
];

/// The team's private subnet: the one holding the private namespace's address, where the
/// team's Jupyter host answers.
fn private_cidr() -> String {
    let [a, b, c, _] = PRIVATE_ADDR.octets();
    format!("{a}.{b}.{c}.0/24")
}

/// `[{"ResourceType": kind, "Tags": [Name, the team's tag, more...]}]`.
fn team_tags(kind: &str, name: &str, more: &[(&str, &str)]) -> Value {
    let tags: Vec<Value> = [("Name", name), TEAM_TAG]
        .iter()
        .chain(more)
        .map(|(k, v)| json!({"Key": k, "Value": v}))
        .collect();
    json!([{"ResourceType": kind, "Tags": tags}])
}

/// `{"op": "call", "service": "ec2", ...}`.
fn ec2(method: &str, args: Value) -> Value {
    json!({"op": "call", "service": "ec2", "method": method, "args": args})
}

fn str_at<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("no {what} in the answer"))
}

/// The network the data platform team made with another tool, before gatehouse.
struct TeamNetwork {
    vpc: String,
    igw: String,
    /// In us-east-1a and us-east-1b.
    public: [String; 2],
    private_subnet: String,
    group: String,
    /// The team's Jupyter host, on the private namespace's address.
    instance: String,
    /// Every id above and what EC2 made with them (main route table, default group and
    /// network ACL, the host's network interface), as `brownfield.py snapshot` takes them.
    ids: Value,
}

impl TeamNetwork {
    /// Built by the admin (the team's tool) with boto3: a VPC, its internet gateway, a public
    /// route table to it for two public subnets, a private subnet with a table of its own, the
    /// team's group (SSH from the VPC) and the Jupyter host in the private subnet, tagged by
    /// its owners for gatehouse: who may reach it, on which ports, and its login user for EC2
    /// Instance Connect.
    fn make(admin: impl Fn(Value) -> Vec<Value>) -> TeamNetwork {
        let r = admin(json!([
            ec2(
                "create_vpc",
                json!({"CidrBlock": TEAM_CIDR,
                "TagSpecifications": team_tags("vpc", "team-network", &[])})
            ),
            ec2(
                "create_internet_gateway",
                json!({
                "TagSpecifications": team_tags("internet-gateway", "team-igw", &[])})
            ),
        ]));
        let vpc = str_at(&r[0]["Vpc"]["VpcId"], "VpcId").to_owned();
        let igw = str_at(&r[1]["InternetGateway"]["InternetGatewayId"], "igw").to_owned();
        let by_vpc = json!({"Name": "vpc-id", "Values": [vpc]});
        let subnet = |cidr: &str, az: &str, name: &str| {
            ec2(
                "create_subnet",
                json!({"VpcId": vpc, "CidrBlock": cidr, "AvailabilityZone": az,
                       "TagSpecifications": team_tags("subnet", name, &[])}),
            )
        };
        let r = admin(json!([
            ec2(
                "attach_internet_gateway",
                json!({"InternetGatewayId": igw, "VpcId": vpc})
            ),
            ec2(
                "describe_route_tables",
                json!({"Filters": [by_vpc,
                {"Name": "association.main", "Values": ["true"]}]})
            ),
            ec2(
                "describe_security_groups",
                json!({"Filters": [by_vpc,
                {"Name": "group-name", "Values": ["default"]}]})
            ),
            ec2(
                "describe_network_acls",
                json!({"Filters": [by_vpc,
                {"Name": "default", "Values": ["true"]}]})
            ),
            ec2(
                "create_route_table",
                json!({"VpcId": vpc,
                "TagSpecifications": team_tags("route-table", "team-public", &[])})
            ),
            ec2(
                "create_route_table",
                json!({"VpcId": vpc,
                "TagSpecifications": team_tags("route-table", "team-private", &[])})
            ),
            subnet(PUBLIC_CIDRS[0], "us-east-1a", "team-public-a"),
            subnet(PUBLIC_CIDRS[1], "us-east-1b", PUBLIC_B_NAME),
            subnet(&private_cidr(), "us-east-1a", "team-private-a"),
            ec2(
                "create_security_group",
                json!({"VpcId": vpc, "GroupName": "team-jupyter",
                "Description": "the data platform team's notebooks",
                "TagSpecifications": team_tags("security-group", "team-jupyter", &[])})
            ),
        ]));
        let main_table = str_at(&r[1]["RouteTables"][0]["RouteTableId"], "main table");
        let default_group = str_at(&r[2]["SecurityGroups"][0]["GroupId"], "default group");
        let default_acl = str_at(&r[3]["NetworkAcls"][0]["NetworkAclId"], "default ACL");
        let public_table = str_at(&r[4]["RouteTable"]["RouteTableId"], "public table");
        let private_table = str_at(&r[5]["RouteTable"]["RouteTableId"], "private table");
        let subnet_id = |i: usize| str_at(&r[i]["Subnet"]["SubnetId"], "subnet").to_owned();
        let public = [subnet_id(6), subnet_id(7)];
        let private_subnet = subnet_id(8);
        let group = str_at(&r[9]["GroupId"], "team group").to_owned();
        let associate = |table: &str, subnet: &str| {
            ec2(
                "associate_route_table",
                json!({"RouteTableId": table, "SubnetId": subnet}),
            )
        };
        let map_public = |subnet: &str| {
            ec2(
                "modify_subnet_attribute",
                json!({"SubnetId": subnet, "MapPublicIpOnLaunch": {"Value": true}}),
            )
        };
        let r = admin(json!([
            ec2(
                "create_route",
                json!({"RouteTableId": public_table,
                "DestinationCidrBlock": "0.0.0.0/0", "GatewayId": igw})
            ),
            map_public(&public[0]),
            map_public(&public[1]),
            associate(public_table, &public[0]),
            associate(public_table, &public[1]),
            associate(private_table, &private_subnet),
            ec2(
                "authorize_security_group_ingress",
                json!({"GroupId": group, "IpPermissions": [
                {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                 "IpRanges": [{"CidrIp": TEAM_CIDR, "Description": "team ssh"}]}]})
            ),
            ec2(
                "run_instances",
                json!({"ImageId": "ami-12c6146b", "InstanceType": "t3.medium",
                "MinCount": 1, "MaxCount": 1, "SubnetId": private_subnet,
                "PrivateIpAddress": PRIVATE_ADDR.to_string(), "SecurityGroupIds": [group],
                "TagSpecifications": team_tags("instance", "jupyter", &[
                    ("gatehouse:groups", "research"),
                    ("gatehouse:ports", &format!("22,{JUPYTER_PORT}")),
                    ("gatehouse:login", TEST_USER),
                ])})
            ),
        ]));
        let host = &r[7]["Instances"][0];
        assert_eq!(host["PrivateIpAddress"], PRIVATE_ADDR.to_string(), "{host}");
        let instance = str_at(&host["InstanceId"], "instance").to_owned();
        let interface = str_at(
            &host["NetworkInterfaces"][0]["NetworkInterfaceId"],
            "network interface",
        );
        let ids = json!({"regions": {"us-east-1": {
            "vpcs": [vpc],
            "subnets": [public[0], public[1], private_subnet],
            "route_tables": [main_table, public_table, private_table],
            "internet_gateways": [igw],
            "security_groups": [default_group, group],
            "network_acls": [default_acl],
            "instances": [instance],
            "network_interfaces": [interface],
        }}});
        TeamNetwork {
            vpc,
            igw,
            public,
            private_subnet,
            group,
            instance,
            ids,
        }
    }

    /// Every Describe answer about the team's network, canonical, as the admin reads it
    /// (`tests/py/brownfield.py snapshot`; what it leaves out, and why, is said there).
    fn snapshot(&self, topology: &Topology, moto: &NsMoto, admin: &AccessKey) -> Value {
        let mut cmd = topology.bastion.command(venv_python());
        admin.apply(&mut cmd);
        cmd.env("AWS_ENDPOINT_URL", moto.url())
            .arg(py_script("brownfield.py"))
            .arg("snapshot")
            .arg(self.ids.to_string());
        let out = run_with_timeout(cmd, CMD_TIMEOUT);
        out.expect_success("brownfield.py snapshot");
        let snapshot: Value = serde_json::from_str(&out.stdout_str())
            .unwrap_or_else(|e| panic!("brownfield.py prints JSON ({e}): {out}"));
        // It saw the network: one VPC, three subnets, three route tables, the host.
        let len = |kind: &str| snapshot["us-east-1"][kind].as_array().map_or(0, Vec::len);
        assert_eq!(
            [
                len("vpcs"),
                len("subnets"),
                len("route_tables"),
                len("instances")
            ],
            [1, 3, 3, 1],
            "{snapshot:#}"
        );
        snapshot
    }
}

/// The brownfield spec: the stack in the team's VPC (by id), its bastion in the team's first
/// public subnet, the second one named by its Name tag, the team's private subnet, and one
/// private subnet the stack creates (`nat` for it). No `[[hosts]]`: the team's host is the
/// team's. `iam_events` is not set: the account's trail decides.
fn brownfield_spec(team: &TeamNetwork, binary: &str, nat: &str) -> String {
    format!(
        r#"
[stack]
name = "{STACK}"
region = "us-east-1"

[vpc]
id = "{vpc}"
nat = "{nat}"

[[subnets]]
name = "dmz-a"
tier = "public"
id = "{public_a}"

[[subnets]]
name = "dmz-b"
tier = "public"
id = "{PUBLIC_B_NAME}"

[[subnets]]
name = "team"
tier = "private"
id = "{private}"

[[subnets]]
name = "analysis"
tier = "private"
cidr = "{CREATED_CIDR}"
az = "us-east-1a"

[bastion]
subnet = "dmz-a"
ami = "ami-12c6146b"
allowed_cidrs = ["203.0.113.0/24"]
{binary}

[bastion.daemon.aws]
refresh_interval = "{refresh}s"
iam_group_prefix = "gatehouse-"
instance_connect = true

[private]
ports = [22, {JUPYTER_PORT}]

[alerts]
emails = ["ops@example.org"]
"#,
        vpc = team.vpc,
        public_a = team.public[0],
        private = team.private_subnet,
        refresh = REFRESH.as_secs(),
    )
}

/// The same stack scaled out: two replicas over the team's two public subnets.
fn with_replicas(spec: &str) -> String {
    substitute(spec, "allowed_cidrs = [", "replicas = 2\nallowed_cidrs = [")
}

/// The walk's stack: [`brownfield_spec`] with a NAT gateway for the created private subnet
/// and a created public subnet beside the team's (so that the stack owns two route tables,
/// between which a subnet can be moved and moved back).
fn walk_brownfield_spec(team: &TeamNetwork, binary: &Path) -> String {
    substitute(
        &brownfield_spec(
            team,
            &format!("gatehouse_binary = \"{}\"", binary.display()),
            "single",
        ),
        "[[subnets]]\nname = \"analysis\"",
        &format!(
            "[[subnets]]\nname = \"dmz-c\"\ntier = \"public\"\ncidr = \"{CREATED_PUBLIC_CIDR}\"\n\
             az = \"us-east-1a\"\n\n[[subnets]]\nname = \"analysis\""
        ),
    )
}

/// The actions of a printed policy, each once.
fn granted(printed: &Value) -> BTreeSet<String> {
    actions_of(&printed["policy"]).into_iter().collect()
}

/// The brownfield deployer's policy as moto can check it: the journey's `checkable_deployer`
/// widening (see there), whose statements are the greenfield deployer's but one: an existing
/// VPC's default group is not the stack's to tag (`TagTheDefaultSecurityGroup` is gone).
fn checkable_brownfield_deployer(policy: &Value) -> Value {
    let mut policy = policy.clone();
    let mut widened = Vec::new();
    for statement in policy["Statement"].as_array_mut().into_iter().flatten() {
        let arn = statement["Resource"].as_str().unwrap_or_default();
        if arn != "*" && !arn.starts_with("arn:aws:s3:::") {
            widened.push(statement["Sid"].as_str().unwrap_or_default().to_owned());
            statement["Resource"] = json!("*");
        }
    }
    assert_eq!(
        widened,
        [
            "TagOnCreate",
            "RetagTheStacksResources",
            "ChangeOnlyTheStacksEc2Resources",
            "TheBastionRole",
            "TheBastionInstanceProfile",
            "PassTheBastionRoleToEc2Only",
            "TheHostKeyParameter",
            "TheLoadBalancer",
            "TheTargetGroup",
            "TagTheBalancerAndItsParts",
            "TheAutoScalingGroup",
            "ServiceLinkedRolesOfAutoScalingAndElb",
            "TheAuditLogGroup",
            "TagTheAuditLogGroup",
            "TheStacksAlarms",
            "TheAlarmTopic",
            "TheIamEventQueue",
            "TheIamEventRule",
            "ReadTheTrailsOfIamEvents"
        ],
        "{policy:#}"
    );
    policy
}

/// An IAM user holding exactly `printed`'s deployer policy (as moto can check it).
fn brownfield_deployer(
    topology: &Topology,
    moto: &NsMoto,
    admin: &AccessKey,
    printed: &Value,
) -> AccessKey {
    let policy = checkable_brownfield_deployer(&printed["policy"]);
    let r = fixture_as(
        topology,
        moto,
        Some(admin),
        json!([{"op": "principal", "name": "deployer", "policy": policy}]),
    );
    key_of(&r[0])
}

/// Where `after` differs from `before`: one line per path, with both values.
fn differences(path: &str, before: &Value, after: &Value, out: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = format!("{path}/{k}");
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => differences(&p, x, y, out),
                    (Some(x), None) => out.push(format!("{p}: gone, was {x}")),
                    (None, Some(y)) => out.push(format!("{p}: new {y}")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differences(&format!("{path}[{i}]"), x, y, out);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            out.extend(
                a.iter()
                    .filter(|x| !b.contains(x))
                    .map(|x| format!("{path}[]: gone {x}")),
            );
            out.extend(
                b.iter()
                    .filter(|y| !a.contains(y))
                    .map(|y| format!("{path}[]: new {y}")),
            );
        }
        (x, y) if x == y => {}
        (x, y) => out.push(format!("{path}: {x} -> {y}")),
    }
}

#[track_caller]
fn assert_network_unchanged(before: &Value, after: &Value, when: &str) {
    let mut found = Vec::new();
    differences("", before, after, &mut found);
    assert!(
        found.is_empty(),
        "{when}: the team's network changed ({} difference(s)):\n{}",
        found.len(),
        found.join("\n")
    );
}

/// The daemon config `written` by gatehouse-vpc, as it runs here: only the addresses (the
/// bastion's listener, or a replica's PROXY and health listeners on `replica`'s address), the
/// endpoint (also in the event queue's URL, `queue_path` after the endpoint) and the paths of
/// the listing, the audit file and the host key file (each daemon its own) change. The host
/// key itself comes from the stack's SSM parameter.
fn local_config(
    scratch: &Scratch,
    name: &str,
    written: &str,
    endpoint: &str,
    queue_path: &str,
    replica: Option<Ipv4Addr>,
) -> (PathBuf, PathBuf) {
    use gatehouse_vpc::userdata::{AUDIT_FILE_PATH, HEALTH_PORT, HOST_KEY_PATH, SNAPSHOT_PATH};
    assert_eq!(AUDIT_FILE_PATH, AUDIT_FILE);
    let audit_file = scratch.join(format!("{name}-audit.jsonl"));
    let path = |suffix: &str| {
        scratch
            .join(format!("{name}-{suffix}"))
            .display()
            .to_string()
    };
    let mut text = substitute(
        written,
        "[aws]\n",
        &format!("[aws]\nendpoint_url = \"{endpoint}\"\n"),
    );
    for (from, to) in [
        (
            format!("snapshot_file = \"{SNAPSHOT_PATH}\""),
            format!("snapshot_file = \"{}\"", path("aws-directory.json")),
        ),
        (
            format!("events_queue_url = \"{SQS_URL}{queue_path}\""),
            format!("events_queue_url = \"{endpoint}/{queue_path}\""),
        ),
        (
            format!("file = \"{AUDIT_FILE_PATH}\""),
            format!("file = \"{}\"", audit_file.display()),
        ),
        (
            format!("host_key = \"{HOST_KEY_PATH}\""),
            format!("host_key = \"{}\"", path("host_key")),
        ),
    ] {
        text = substitute(&text, &from, &to);
    }
    text = match replica {
        None => substitute(
            &text,
            "listen = [\"0.0.0.0:22\"]",
            &format!("listen = [\"{BASTION_CLIENT_ADDR}:22\"]"),
        ),
        Some(ip) => substitute(
            &substitute(
                &text,
                "proxy_listen = [\"0.0.0.0:22\"]",
                &format!("proxy_listen = [\"{ip}:22\"]"),
            ),
            &format!("health_listen = \"0.0.0.0:{HEALTH_PORT}\""),
            &format!("health_listen = \"{ip}:{HEALTH_PORT}\""),
        ),
    };
    let config = scratch.write(format!("{name}.toml"), text.as_bytes());
    (config, audit_file)
}

/// `gatehouse serve` (this build's binary: the spec's release URL is not reached here) as `key`
/// (the role's policy), named `name` (its logs: `<scratch>/<name>.stderr`), once listening.
fn start_named_daemon(
    topology: &Topology,
    scratch: &Scratch,
    name: &str,
    key: &AccessKey,
    config: &Path,
) -> Daemon {
    let mut cmd = gatehouse_cmd(topology);
    key.apply(&mut cmd);
    cmd.arg("serve").arg("--config").arg(config);
    let mut daemon = Daemon::spawn(name, cmd, scratch);
    daemon.wait_for_stderr("gatehouse listening", Duration::from_secs(60));
    daemon
}

/// A field of the daemon's "gatehouse listening" line (`host_key`, `hosts`, ...).
fn listening_field(daemon: &Daemon, field: &str) -> String {
    let log = daemon.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("gatehouse listening"))
        .unwrap_or_else(|| panic!("no listening line:\n{log}"));
    let start = line
        .find(&format!("{field}="))
        .unwrap_or_else(|| panic!("no {field} in {line:?}"))
        + field.len()
        + 1;
    line[start..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The audit lines of `file`.
fn audit_lines(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The id of the stack's security group `key` (`sg/bastion`, ...), as the admin sees it.
fn stack_group(admin: impl Fn(Value) -> Vec<Value>, key: &str) -> String {
    let r = admin(json!([ec2(
        "describe_security_groups",
        json!({"Filters": [
        {"Name": "tag:gatehouse:stack", "Values": [STACK]},
        {"Name": "tag:gatehouse:resource", "Values": [key]}]})
    )]));
    let groups = r[0]["SecurityGroups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(groups.len(), 1, "{key}: {r:?}");
    str_at(&groups[0]["GroupId"], "group id").to_owned()
}

/// The permissions `output`'s command gives the team's group: each port of `[private] ports`
/// from the bastion's group.
fn admit_permissions(output: &str, bastion_group: &str) -> Value {
    let line = output
        .lines()
        .find(|l| l.contains("aws ec2 authorize-security-group-ingress"))
        .unwrap_or_else(|| panic!("no command admitting the bastion's group:\n{output}"));
    let json = line
        .split_once("--ip-permissions '")
        .and_then(|(_, rest)| rest.strip_suffix('\''))
        .unwrap_or_else(|| panic!("no --ip-permissions '...' in {line:?}"));
    let permissions: Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("--ip-permissions is not JSON ({e}): {json}"));
    let ports: Vec<(i64, &str)> = permissions
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            assert_eq!(p["FromPort"], p["ToPort"], "{p}");
            (
                p["FromPort"].as_i64().unwrap_or_default(),
                p["UserIdGroupPairs"][0]["GroupId"]
                    .as_str()
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            (22, bastion_group),
            (i64::from(JUPYTER_PORT), bastion_group)
        ],
        "{line}"
    );
    permissions
}

/// The kinds of the stack's resources `leftovers` lists, with how many of each.
fn kinds(left: &[String]) -> std::collections::BTreeMap<String, usize> {
    let mut kinds = std::collections::BTreeMap::new();
    for entry in left {
        let kind = entry
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        *kinds.entry(kind).or_insert(0) += 1;
    }
    kinds
}

/// The role's policy as moto can check it, with the replicas' shared listing: the journey's
/// [`checkable`] for every statement but `SharedListing`, which keeps its object's ARN (moto
/// checks S3 calls against it).
fn checkable_replica(role_policy: &Value) -> Value {
    let mut without_listing = role_policy.clone();
    let statements = without_listing["Statement"]
        .as_array_mut()
        .expect("statements");
    let at = statements
        .iter()
        .position(|s| s["Sid"] == "SharedListing")
        .unwrap_or_else(|| panic!("no SharedListing statement: {role_policy:#}"));
    let listing = statements.remove(at);
    let object = listing["Resource"].as_str().unwrap_or_default();
    assert!(
        object.starts_with(&format!("arn:aws:s3:::gatehouse-{STACK}-")) && !object.contains('*'),
        "{listing}"
    );
    let mut policy = checkable(&without_listing);
    policy["Statement"]
        .as_array_mut()
        .expect("statements")
        .push(listing);
    policy
}

/// The actions the daemon needs on `config_text` (by its own parser and the daemon's list),
/// each once. (No fetch of the binary from the stack's bucket: it comes from a release URL.)
fn role_actions(config_text: &str) -> (BTreeSet<String>, gatehouse_config::AwsConfig) {
    let settings = gatehouse_config::parse(config_text, Path::new("gatehouse.toml"))
        .unwrap_or_else(|e| panic!("the written config is invalid: {e}\n{config_text}"))
        .aws
        .expect("[aws]");
    let names = gatehouse_aws::actions::needed(gatehouse_aws::actions::Mode::of(&settings))
        .iter()
        .map(|a| a.name().to_owned())
        .collect();
    (names, settings)
}

/// Drift the admin makes with one EC2 call on the stack's resources: apply without `action`
/// fails naming it, then apply repairs it.
fn drift(walk: &mut Walk<'_>, method: &str, args: Value, action: &str) {
    walk.admin(json!([ec2(method, args)]));
    walk.needs(action, &["apply"]);
    walk.full(&["apply"]);
}

/// [`drift`] with a call of another service.
fn service_drift(walk: &mut Walk<'_>, service: &str, method: &str, args: Value, action: &str) {
    walk.admin_call(service, method, args);
    walk.needs(action, &["apply"]);
    walk.full(&["apply"]);
}

/// The journey in the team's network: apply as the printed policy's deployer (nothing of the
/// team's changes), the bastion in the team's public subnet reaching the team's own host
/// (ssh -J with the key pushed by EC2 Instance Connect, Jupyter through -L), then two
/// replicas over the team's two public subnets behind the balancer, reaching it too with the
/// same host key, and destroy, after which the team's network is exactly as it was and
/// nothing of the stack is left but its audit log group.
#[test]
fn brownfield_journey_single_and_replicas_reach_a_preexisting_host_and_destroy_restores_the_vpc() {
    let topology = Topology::new();
    let scratch = Scratch::new();
    let (moto, admin) = NsMoto::start_enforced_in(&topology.bastion);
    let admin_fixture = |ops: Value| fixture_as(&topology, &moto, Some(&admin), ops);

    // 1. The account: the team's network, made by another tool, and the organization's
    //    trail (which turns `iam_events` on, as the spec does not set it).
    admin_fixture(logging_trail());
    let team = TeamNetwork::make(admin_fixture);
    let before = team.snapshot(&topology, &moto, &admin);

    // 2. The deploy identity holds exactly what `gatehouse-vpc policy` prints for this spec:
    //    none of the VPC-building actions, and no NAT actions (`nat = "none"`), but those of
    //    the subnet it creates.
    let spec_text = brownfield_spec(&team, RELEASE, "none");
    let spec = scratch.write("brownfield.toml", spec_text.as_bytes());
    let printed = printed_policy(&topology, &moto, &spec);
    let given = granted(&printed);
    for action in VPC_BUILDING.iter().chain(&NAT_ACTIONS) {
        assert!(!given.contains(*action), "{action} granted: {given:?}");
    }
    for action in [
        "ec2:CreateSubnet",
        "ec2:CreateRouteTable",
        "ec2:DeleteSubnet",
    ] {
        assert!(given.contains(action), "{action} not granted: {given:?}");
    }
    let deployer = brownfield_deployer(&topology, &moto, &admin, &printed);
    let out = vpc_try(&topology, &moto, &deployer, &spec, &["apply"]);
    out.expect_success("gatehouse-vpc apply (brownfield)");
    assert!(out.stdout_str().contains("now up to date"), "{out}");
    assert!(
        out.stderr_str().contains(
            "note: iam_events (not set in the spec): on: CloudTrail trail org delivers IAM's \
             calls to EventBridge in us-east-1"
        ),
        "{out}"
    );
    let plan = vpc(&topology, &moto, &deployer, &spec, &["plan"]);
    assert_eq!(plan, format!("stack {STACK}: no changes\n"));
    assert_network_unchanged(
        &before,
        &team.snapshot(&topology, &moto, &admin),
        "after apply",
    );
    // Of the network, the stack owns only what it made: one subnet and its table, no VPC,
    // gateway or NAT; the bastion's address, its two groups, the bastion.
    let made = leftovers(admin_fixture);
    let counts = kinds(&made);
    for (kind, want) in [
        ("vpc", 0),
        ("internet-gateway", 0),
        ("nat-gateway", 0),
        ("subnet", 1),
        ("route-table", 1),
        ("security-group", 2),
        ("address", 1),
        ("instance", 1),
    ] {
        assert_eq!(
            counts.get(kind).copied().unwrap_or(0),
            want,
            "{kind}: {made:#?}"
        );
    }
    for id in [&team.vpc, &team.igw, &team.private_subnet, &team.instance] {
        assert!(
            !made.iter().any(|m| m.ends_with(id.as_str())),
            "{id}: {made:#?}"
        );
    }

    // 3. `output`: the jump, and the one thing left to the team: admit the bastion's group
    //    in the host's own group, which the team does with the printed command.
    let output = vpc(
        &topology,
        &moto,
        &deployer,
        &spec,
        &["output", "--user", "alice"],
    );
    // (No host block: the stack does not know the team's hosts; the spec names none.)
    assert!(output.contains("\nHost journey-bastion\n"), "{output}");
    let bastion_group = stack_group(admin_fixture, "sg/bastion");
    assert!(
        output.contains(&format!("bastion security group: {bastion_group}:")),
        "{output}"
    );
    let admitted = admit_permissions(&output, &bastion_group);
    admin_fixture(json!([ec2(
        "authorize_security_group_ingress",
        json!({"GroupId": team.group, "IpPermissions": admitted})
    )]));
    // What the stack must leave as it is from now on: the team's network with that rule.
    let admitted_snapshot = team.snapshot(&topology, &moto, &admin);

    // 4. The bastion's config, as cloud-init writes it from the user data, names the team's
    //    VPC and the event queue apply made; the role grants exactly what the daemon needs on
    //    it.
    let pushes_file = scratch.join("pushes.jsonl");
    let proxy = Proxy::start_recording(&topology, &scratch, moto.addr().port(), Some(&pushes_file));
    let r = admin_fixture(json!([
        {"op": "user_data_file", "tag": "instance/bastion", "path": "/etc/gatehouse/gatehouse.toml"},
        {"op": "role_policies", "role": ROLE},
        {"op": "call", "service": "sqs", "method": "get_queue_url", "args": {"QueueName": QUEUE}},
        ec2("describe_instances", json!({"InstanceIds": [team.instance]})),
    ]));
    let written = str_at(&r[0]["content"], "the daemon config in the user data").to_owned();
    let queue_url = str_at(&r[2]["QueueUrl"], "the event queue");
    let queue_path = queue_url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, path)| path.to_owned())
        .unwrap_or_else(|| panic!("not a queue URL: {queue_url}"));
    let (needed, settings) = role_actions(&written);
    assert_eq!(settings.vpc_ids, [team.vpc.as_str()], "{written}");
    assert!(settings.instance_connect, "{written}");
    assert_eq!(
        settings.events_queue_url.as_deref(),
        Some(format!("{SQS_URL}{queue_path}").as_str()),
        "iam_events on: {written}"
    );
    let policies = r[1]["policies"].as_object().expect("role policies");
    assert_eq!(policies.len(), 1, "one inline policy: {policies:?}");
    let created = policies.values().next().expect("the policy");
    let role_policy = checkable(created);
    assert_eq!(
        actions_of(&role_policy)
            .into_iter()
            .collect::<BTreeSet<_>>(),
        needed
    );
    // The push is allowed on instances that carry the tags the team put on its host (moto
    // evaluates no condition: the statement's condition is evaluated here, on the host's
    // tags, as AWS would).
    let host_tags: Vec<(String, String)> = r[3]["Reservations"][0]["Instances"][0]["Tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["Key"].as_str().unwrap_or_default().to_owned(),
                t["Value"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let push = created["Statement"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["Sid"] == PUSH_SID))
        .unwrap_or_else(|| panic!("no {PUSH_SID}: {created:#}"));
    let present = push["Condition"]["Null"]
        .as_object()
        .unwrap_or_else(|| panic!("no Null condition: {push:#}"));
    assert!(!present.is_empty(), "{push:#}");
    for (key, value) in present {
        assert_eq!(value, "false", "{push:#}");
        let tag = key
            .strip_prefix("aws:ResourceTag/")
            .unwrap_or_else(|| panic!("{key}"));
        assert!(
            host_tags.iter().any(|(k, _)| k == tag),
            "the team's host lacks {tag}: {host_tags:?}"
        );
    }
    assert!(
        !push["Condition"]["StringNotEquals"]["ec2:osuser"]
            .as_array()
            .is_some_and(|users| users.contains(&json!(TEST_USER))),
        "{push:#}"
    );
    let (config, audit_file) = local_config(
        &scratch,
        "bastion",
        &written,
        &proxy.url(),
        &queue_path,
        None,
    );

    // 5. alice, by tag; the daemon's principal: an IAM user with the role's policy only.
    let alice = KeyPair::ed25519(&scratch, "alice_key");
    let r = admin_fixture(json!([
        {"op": "user", "name": "alice", "groups": "research", "keys": [alice.public_line.trim()]},
        {"op": "principal", "name": "bastion-role", "policy": role_policy},
    ]));
    let bastion = key_of(&r[1]);

    // 6. The team's host: an sshd with no key of its own, taking the keys EC2 Instance
    //    Connect pushed for its login user; Jupyter beside it. The bastion serves it: one host,
    //    found in the team's VPC by the tags its owners gave it.
    let (_eic_imds, mut sshd) = eic_host(&topology, &scratch, &pushes_file, &team.instance);
    let jupyter = Jupyter::start(
        &topology.private,
        &scratch,
        (PRIVATE_ADDR, JUPYTER_PORT).into(),
    );
    let mut daemon = start_named_daemon(&topology, &scratch, "bastion", &bastion, &config);
    assert_eq!(listening_field(&daemon, "hosts"), "1", "{}", daemon.logs());
    let host_key = listening_field(&daemon, "host_key");
    let mut alice_client = SshClient::new(
        &topology.client,
        &scratch,
        (BASTION_CLIENT_ADDR, 22).into(),
        "alice",
        &alice.private,
    );
    alice_client.add_target("jupyter-box", "jupyter", 22, TEST_USER, None);
    let login = |client: &SshClient| {
        let mut ssh = client.ssh();
        ssh.args(["jupyter-box", "echo", "reached"]);
        let out = run_with_timeout(ssh, CMD_TIMEOUT);
        out.expect_success("ssh -J bastion jupyter as alice");
        assert_eq!(out.stdout_str().trim(), "reached");
    };
    login(&alice_client);
    sshd.daemon()
        .wait_for_stderr("Accepted publickey for", Duration::from_secs(5));
    let recorded = pushes(&pushes_file);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0]["instance"], team.instance.as_str());
    assert_eq!(recorded[0]["user"], TEST_USER);
    // The Jupyter recipe: ssh -N -L 8888:jupyter:8888 bastion; the kernel runs code.
    let local_port = 18888;
    let tunnel = alice_client.local_forward(
        &scratch,
        "alice_tunnel",
        local_port,
        "jupyter",
        JUPYTER_PORT,
        "bastion",
    );
    let out = jupyter_check(
        &topology.client,
        &format!("http://127.0.0.1:{local_port}"),
        jupyter.token(),
        Duration::from_secs(90),
    );
    out.expect_success("Jupyter through ssh -L as alice");
    assert!(out.stdout_str().contains("\"result\": \"42\""), "{out}");
    drop(tunnel);
    let dialed: BTreeSet<String> = audit_lines(&audit_file)
        .iter()
        .filter(|l| l["event"] == "tunnel.open" && l["user"] == "alice")
        .map(|l| l["dial"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        dialed,
        BTreeSet::from([
            format!("{PRIVATE_ADDR}:22"),
            format!("{PRIVATE_ADDR}:{JUPYTER_PORT}")
        ]),
        "the team's host, at its private address"
    );
    daemon.terminate(Duration::from_secs(10));
    let mut logs = vec![daemon.stderr()];

    // 7. Scaled out: two replicas over the team's two public subnets behind the stack's
    //    balancer; the single bastion goes.
    let replicated = with_replicas(&spec_text);
    std::fs::write(&spec, &replicated).expect("rewrite the spec");
    let applied = vpc(&topology, &moto, &deployer, &spec, &["apply"]);
    assert!(applied.contains("now up to date"), "{applied}");
    let plan = vpc(&topology, &moto, &deployer, &spec, &["plan"]);
    assert_eq!(plan, format!("stack {STACK}: no changes\n"));
    assert_network_unchanged(
        &admitted_snapshot,
        &team.snapshot(&topology, &moto, &admin),
        "after scaling out",
    );
    let name = gatehouse_vpc::names::balancer_name(STACK);
    let r = admin_fixture(json!([
        {"op": "call", "service": "elbv2", "method": "describe_load_balancers",
         "args": {"Names": [name]}},
        {"op": "call", "service": "elbv2", "method": "describe_target_groups",
         "args": {"Names": [gatehouse_vpc::names::target_group_name(STACK)]}},
        {"op": "call", "service": "autoscaling", "method": "describe_auto_scaling_groups",
         "args": {"AutoScalingGroupNames": [gatehouse_vpc::names::group_name(STACK)]}},
        ec2("describe_instances", json!({"Filters": [
            {"Name": "tag:gatehouse:stack", "Values": [STACK]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]}]})),
    ]));
    let mut publics = team.public.to_vec();
    publics.sort();
    let balancer = &r[0]["LoadBalancers"][0];
    let mut balancer_subnets: Vec<String> = balancer["AvailabilityZones"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|z| z["SubnetId"].as_str().unwrap_or_default().to_owned())
        .collect();
    balancer_subnets.sort();
    assert_eq!(balancer_subnets, publics, "{balancer}");
    assert_eq!(balancer["VpcId"], team.vpc.as_str());
    let group = &r[2]["AutoScalingGroups"][0];
    let mut group_subnets: Vec<String> = str_at(&group["VPCZoneIdentifier"], "zones")
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect();
    group_subnets.sort();
    assert_eq!(group_subnets, publics, "{group}");
    assert_eq!(group["DesiredCapacity"], 2, "{group}");
    // The stack's instances now: the two replicas, each in a team public subnet (moto puts
    // a group's instances all in its first subnet); no single bastion.
    let instances: Vec<&Value> = r[3]["Reservations"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|res| res["Instances"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(instances.len(), 2, "{instances:#?}");
    for instance in &instances {
        assert!(
            publics.iter().any(|s| instance["SubnetId"] == s.as_str()),
            "{instance}"
        );
        assert!(
            instance["Tags"]
                .as_array()
                .is_some_and(|t| t.contains(&json!({"Key": "gatehouse:resource",
                    "Value": gatehouse_vpc::names::REPLICA_KEY}))),
            "{instance}"
        );
    }
    // The team admitted one group: it is still the replicas' group.
    assert_eq!(stack_group(admin_fixture, "sg/bastion"), bastion_group);
    let output = vpc(
        &topology,
        &moto,
        &deployer,
        &spec,
        &["output", "--user", "alice"],
    );
    assert!(
        output.contains(&format!("bastion security group: {bastion_group}:")),
        "{output}"
    );

    // The replicas' config, from the user data of the instances the group launched from the
    // stack's template: PROXY v2 on port 22 from the team's public subnets (where the
    // balancer's nodes are), health checks on their own port, the fleet's shared listing.
    let target_group = &r[1]["TargetGroups"][0];
    let target_group_arn = str_at(&target_group["TargetGroupArn"], "target group");
    let r = admin_fixture(json!([
        {"op": "user_data_file", "tag": gatehouse_vpc::names::REPLICA_KEY,
         "path": "/etc/gatehouse/gatehouse.toml"},
        {"op": "role_policies", "role": ROLE},
        {"op": "call", "service": "elbv2", "method": "describe_target_group_attributes",
         "args": {"TargetGroupArn": target_group_arn}},
    ]));
    let written = str_at(&r[0]["content"], "the replicas' daemon config").to_owned();
    let replica_config = gatehouse_config::parse(&written, Path::new("gatehouse.toml"))
        .unwrap_or_else(|e| panic!("the replicas' config is invalid: {e}\n{written}"));
    let trusted: Vec<String> = replica_config
        .server
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(trusted, PUBLIC_CIDRS, "{written}");
    assert!(replica_config.server.listen.is_empty(), "{written}");
    let (needed, settings) = role_actions(&written);
    let shared = settings
        .shared_snapshot
        .clone()
        .unwrap_or_else(|| panic!("no shared listing: {written}"));
    let policies = r[1]["policies"].as_object().expect("role policies");
    assert_eq!(policies.len(), 1, "one inline policy: {policies:?}");
    let role_policy = checkable_replica(policies.values().next().expect("the policy"));
    assert_eq!(
        actions_of(&role_policy)
            .into_iter()
            .collect::<BTreeSet<_>>(),
        needed
    );
    admin_fixture(json!([
        {"op": "set_user_policy", "name": "bastion-role", "policy": role_policy},
    ]));
    let attribute = |key: &str| {
        r[2]["Attributes"]
            .as_array()
            .and_then(|l| l.iter().find(|a| a["Key"] == key))
            .and_then(|a| a["Value"].as_str())
            .unwrap_or_else(|| panic!("no {key}: {r:?}"))
            .to_owned()
    };
    assert_eq!(attribute("proxy_protocol_v2.enabled"), "true");

    // The balancer as the stack's target group configures it (HAProxy for the NLB): PROXY v2,
    // HTTP health checks on the group's port and path; its node and the replicas on addresses
    // of the team's public subnets.
    for ip in [BALANCER_NODE, REPLICAS[0].1, REPLICAS[1].1] {
        let mut cmd = topology.bastion.command("ip");
        cmd.args(["addr", "add", &format!("{ip}/32"), "dev", "lo"]);
        run_with_timeout(cmd, Duration::from_secs(10)).expect_success("ip addr add");
    }
    let mut replicas = Vec::new();
    for (name, ip) in REPLICAS {
        let (config, audit) = local_config(
            &scratch,
            name,
            &written,
            &proxy.url(),
            &queue_path,
            Some(ip),
        );
        let daemon = start_named_daemon(&topology, &scratch, name, &bastion, &config);
        // One host key, the one the single bastion had: the fleet's, from SSM.
        assert_eq!(listening_field(&daemon, "host_key"), host_key, "{name}");
        replicas.push((daemon, audit));
    }
    let check_port: u16 = str_at(&target_group["HealthCheckPort"], "health check port")
        .parse()
        .expect("a port");
    let haproxy = Haproxy::start(
        &topology.bastion,
        &scratch,
        "balancer",
        &BalancerConfig {
            // The path the stack's target group checks.
            check_path: str_at(&target_group["HealthCheckPath"], "health check path").to_owned(),
            check_interval: Duration::from_millis(200),
            ..BalancerConfig::like_an_nlb(
                (BASTION_CLIENT_ADDR, 22).into(),
                REPLICAS
                    .iter()
                    .map(|(name, ip)| BackendServer {
                        name: (*name).to_owned(),
                        addr: SocketAddr::from((*ip, 22)),
                        check_port,
                        enabled: true,
                    })
                    .collect(),
                IpAddr::V4(BALANCER_NODE),
            )
        },
    );
    for (name, _) in REPLICAS {
        haproxy.wait_server(
            name,
            "up with a passed check",
            Duration::from_secs(20),
            |s| s.is_up() && s.check_status == "L7OK",
        );
    }
    // alice through the balancer, until each replica has admitted her (round robin: one
    // login each), every login landing on the team's host.
    let pushed_before = pushes(&pushes_file).len();
    let admitted_by = |audit: &Path| {
        audit_lines(audit)
            .into_iter()
            .filter(|l| l["event"] == "auth.success" && l["user"] == "alice")
            .collect::<Vec<_>>()
    };
    let mut logins = 0;
    while replicas.iter().any(|(_, a)| admitted_by(a).is_empty()) {
        assert!(
            logins < 4,
            "not every replica admitted alice after {logins} logins\n{}",
            haproxy.log()
        );
        login(&alice_client);
        logins += 1;
    }
    for (daemon, audit) in &replicas {
        // The client's own address, from the balancer's PROXY header.
        for line in admitted_by(audit) {
            let source = line["source"].as_str().unwrap_or_default();
            assert!(
                source.starts_with(&format!("{CLIENT_ADDR}:")),
                "{}: {line}",
                daemon.name()
            );
        }
    }
    let recorded = pushes(&pushes_file);
    assert_eq!(recorded.len(), pushed_before + logins, "{recorded:?}");
    assert!(recorded
        .iter()
        .all(|p| p["instance"] == team.instance.as_str()));
    // The fleet's listing, shared through the stack's bucket (made for it: the binary comes
    // from a release URL), written by the replicas under the role's policy.
    let r = admin_fixture(
        json!([{"op": "call", "service": "s3", "method": "list_objects_v2",
                                  "args": {"Bucket": shared.bucket}}]),
    );
    let keys: Vec<&str> = r[0]["Contents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["Key"].as_str())
        .collect();
    assert_eq!(keys, [shared.key.as_str()], "{r:?}");
    eprintln!("brownfield replicas: {logins} logins through the balancer, one per replica");
    drop(haproxy);
    for (mut daemon, _) in replicas {
        daemon.terminate(Duration::from_secs(10));
        logs.push(daemon.stderr());
    }
    drop(jupyter);
    drop(sshd);
    // The role was enough for everything the daemons did.
    for log in &logs {
        assert!(!log.contains("lacks the action"), "{log}");
    }

    // 8. The team takes back its admission of the bastion's group, then destroy: nothing of
    //    the stack is left but its audit log group (then nothing at all), and the team's
    //    network is exactly as it was.
    admin_fixture(json!([ec2(
        "revoke_security_group_ingress",
        json!({"GroupId": team.group, "IpPermissions": admitted})
    )]));
    let destroyed = vpc(&topology, &moto, &deployer, &spec, &["destroy"]);
    assert!(
        destroyed.contains(&format!("kept: log group {AUDIT_GROUP}")),
        "{destroyed}"
    );
    assert_eq!(
        leftovers(admin_fixture),
        [format!("log-group {AUDIT_GROUP}")],
        "left after destroy"
    );
    assert_network_unchanged(
        &before,
        &team.snapshot(&topology, &moto, &admin),
        "after destroy",
    );
    vpc(
        &topology,
        &moto,
        &deployer,
        &spec,
        &["destroy", "--delete-audit-log"],
    );
    assert_eq!(
        leftovers(admin_fixture),
        Vec::<String>::new(),
        "left after destroy --delete-audit-log"
    );
}

/// The walk for a stack placed into the team's VPC, with a private subnet of its own and a
/// NAT gateway for it (`nat = "single"`), and a public subnet of its own (routed to the team's
/// internet gateway) beside the team's two: every action of its
/// printed policy is shown needed, the policy being the greenfield walk's less exactly the
/// VPC-building actions. The network actions the greenfield walk shows while building its
/// VPC (tagging and locking down the VPC's default group: `ec2:CreateTags`,
/// `ec2:RevokeSecurityGroupEgress`) are shown here by repairs of the stack's own group.
#[test]
fn the_brownfield_deployer_needs_every_action_it_is_granted() {
    let topology = Topology::new();
    let scratch = Scratch::new();
    let (moto, admin) = NsMoto::start_enforced_in(&topology.bastion);
    let admin_fixture = |ops: Value| fixture_as(&topology, &moto, Some(&admin), ops);
    admin_fixture(logging_trail());
    let team = TeamNetwork::make(admin_fixture);
    let before = team.snapshot(&topology, &moto, &admin);
    let binary = scratch.join("gatehouse");
    stand_in_binary(&binary, 1);
    let spec_text = walk_brownfield_spec(&team, &binary);
    let spec = scratch.write("walk.toml", spec_text.as_bytes());

    // The policy: the greenfield walk's (its spec, same binary) less the VPC-building
    // actions, and nothing else.
    let greenfield_spec = scratch.write("greenfield.toml", walk_spec(&binary).as_bytes());
    let greenfield = granted(&printed_policy(&topology, &moto, &greenfield_spec));
    let printed = printed_policy(&topology, &moto, &spec);
    let brownfield = granted(&printed);
    let added: Vec<&String> = brownfield.difference(&greenfield).collect();
    assert!(added.is_empty(), "not in the greenfield policy: {added:?}");
    let dropped: Vec<&str> = greenfield
        .difference(&brownfield)
        .map(String::as_str)
        .collect();
    eprintln!(
        "deployer actions: greenfield {}, brownfield {} (dropped {}: {})",
        greenfield.len(),
        brownfield.len(),
        dropped.len(),
        dropped.join(", ")
    );
    assert_eq!(dropped, VPC_BUILDING);
    assert_eq!(brownfield.len(), greenfield.len() - VPC_BUILDING.len());

    let policy = checkable_brownfield_deployer(&printed["policy"]);
    let deployer = brownfield_deployer(&topology, &moto, &admin, &printed);
    let mut walk = Walk::new(&topology, &moto, &admin, deployer, spec.clone(), policy);

    // apply from empty, in the order apply makes the calls: the created subnet, the NAT
    // gateway in the team's public subnet, the subnet's table, then what any stack makes. The
    // greenfield walk's order, less the VPC-building actions and the default group's (its
    // CreateTags and RevokeSecurityGroupEgress are shown below by drift on the stack's group).
    let default_group = ["ec2:CreateTags", "ec2:RevokeSecurityGroupEgress"];
    let apply_order = APPLY_FROM_EMPTY
        .iter()
        .filter(|a| !VPC_BUILDING.contains(a) && !default_group.contains(a));
    for action in apply_order {
        walk.needs(action, &["apply"]);
    }
    walk.full(&["apply"]);
    assert_eq!(walk.full(&["plan"]), format!("stack {STACK}: no changes\n"));

    // Scaled out over the team's two public subnets.
    std::fs::write(&spec, with_replicas(&spec_text)).expect("rewrite the spec");
    for action in SCALE_OUT {
        walk.needs(action, &["apply"]);
    }
    walk.full(&["apply"]);
    assert_eq!(walk.full(&["plan"]), format!("stack {STACK}: no changes\n"));

    // Every read, on the whole stack and the team's network it is placed into.
    let reads: BTreeSet<String> = printed["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|a| {
            a["commands"]
                .as_array()
                .is_some_and(|c| c.contains(&json!("plan")))
        })
        .map(|a| a["action"].as_str().expect("action").to_owned())
        .collect();
    assert!(reads.len() >= 18, "{reads:?}");
    for action in &reads {
        walk.needs(action, &["plan"]);
    }

    // The replicas' repairs (the journey's), then back to one bastion.
    walk.scaled_out_repairs(&binary);
    std::fs::write(&spec, &spec_text).expect("rewrite the spec");
    for action in [
        "cloudwatch:DeleteAlarms",
        "autoscaling:DeleteAutoScalingGroup",
        "elasticloadbalancing:DeleteListener",
        "elasticloadbalancing:DeleteLoadBalancer",
        "elasticloadbalancing:DeleteTargetGroup",
        "ec2:DeleteLaunchTemplate",
    ] {
        walk.needs(action, &["apply"]);
    }
    walk.full(&["apply"]);
    assert_eq!(walk.full(&["plan"]), format!("stack {STACK}: no changes\n"));

    // Repairs: drift the admin makes in the stack's own resources, which apply undoes.
    let private = walk.id_of(
        "describe_route_tables",
        "RouteTables",
        "RouteTableId",
        "rt/private",
    );
    let bastion_sg = walk.id_of(
        "describe_security_groups",
        "SecurityGroups",
        "GroupId",
        "sg/bastion",
    );
    drift(
        &mut walk,
        "revoke_security_group_egress",
        json!({"GroupId": bastion_sg, "IpPermissions": [
            {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}),
        "ec2:AuthorizeSecurityGroupEgress",
    );
    drift(
        &mut walk,
        "authorize_security_group_ingress",
        json!({"GroupId": bastion_sg, "IpPermissions": [{"IpProtocol": "tcp",
            "FromPort": 2222, "ToPort": 2222, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}),
        "ec2:RevokeSecurityGroupIngress",
    );
    drift(
        &mut walk,
        "authorize_security_group_egress",
        json!({"GroupId": bastion_sg, "IpPermissions": [{"IpProtocol": "tcp",
            "FromPort": 2222, "ToPort": 2222, "IpRanges": [{"CidrIp": "10.99.0.0/16"}]}]}),
        "ec2:RevokeSecurityGroupEgress",
    );
    drift(
        &mut walk,
        "create_tags",
        json!({"Resources": [bastion_sg], "Tags": [{"Key": "Name", "Value": "edited"}]}),
        "ec2:CreateTags",
    );
    drift(
        &mut walk,
        "create_route",
        json!({"RouteTableId": private, "DestinationCidrBlock": "10.99.0.0/16",
               "GatewayId": team.igw}),
        "ec2:DeleteRoute",
    );
    drift(
        &mut walk,
        "replace_route",
        json!({"RouteTableId": private, "DestinationCidrBlock": "0.0.0.0/0",
               "GatewayId": team.igw}),
        "ec2:ReplaceRoute",
    );
    // The created private subnet moved onto the stack's public table: apply moves it back.
    let public = walk.id_of(
        "describe_route_tables",
        "RouteTables",
        "RouteTableId",
        "rt/public",
    );
    let r = walk.admin(json!([ec2(
        "describe_route_tables",
        json!({"RouteTableIds": [private]})
    )]));
    let association = r[0]["RouteTables"][0]["Associations"]
        .as_array()
        .and_then(|l| l.iter().find(|a| a["SubnetId"].is_string()))
        .and_then(|a| a["RouteTableAssociationId"].as_str())
        .unwrap_or_else(|| panic!("no subnet association: {r:?}"))
        .to_owned();
    drift(
        &mut walk,
        "replace_route_table_association",
        json!({"AssociationId": association, "RouteTableId": public}),
        "ec2:ReplaceRouteTableAssociation",
    );
    let (queue_url, queue_arn) = walk.queue();
    service_drift(
        &mut walk,
        "sqs",
        "set_queue_attributes",
        json!({"QueueUrl": queue_url, "Attributes": {"MessageRetentionPeriod": "345600"}}),
        "sqs:SetQueueAttributes",
    );
    service_drift(
        &mut walk,
        "sqs",
        "tag_queue",
        json!({"QueueUrl": queue_url, "Tags": {"Name": "edited"}}),
        "sqs:TagQueue",
    );
    let rule = walk.admin_call("events", "describe_rule", json!({"Name": RULE}));
    let rule_arn = str_at(&rule["Arn"], "rule ARN").to_owned();
    service_drift(
        &mut walk,
        "events",
        "tag_resource",
        json!({"ResourceARN": rule_arn, "Tags": [{"Key": "Name", "Value": "edited"}]}),
        "events:TagResource",
    );
    service_drift(
        &mut walk,
        "events",
        "put_targets",
        json!({"Rule": RULE, "Targets": [{"Id": "extra", "Arn": queue_arn}]}),
        "events:RemoveTargets",
    );
    let groups = walk.admin_call(
        "logs",
        "describe_log_groups",
        json!({"logGroupNamePrefix": AUDIT_GROUP}),
    );
    let group_arn = str_at(&groups["logGroups"][0]["logGroupArn"], "log group ARN").to_owned();
    service_drift(
        &mut walk,
        "logs",
        "tag_resource",
        json!({"resourceArn": group_arn, "tags": {"Name": "edited"}}),
        "logs:TagResource",
    );
    walk.alarm_repairs();
    assert_eq!(walk.full(&["plan"]), format!("stack {STACK}: no changes\n"));

    // A new build replaces the bastion: the old one is terminated first.
    stand_in_binary(&binary, 2);
    walk.needs("ec2:TerminateInstances", &["apply"]);
    walk.full(&["apply"]);
    assert_eq!(walk.full(&["plan"]), format!("stack {STACK}: no changes\n"));

    // Without NAT: apply deletes the NAT gateway.
    std::fs::write(
        &spec,
        substitute(&spec_text, "nat = \"single\"", "nat = \"none\""),
    )
    .expect("rewrite the spec");
    walk.needs("ec2:DeleteNatGateway", &["apply"]);
    walk.full(&["apply"]);

    // destroy, in its order (no VPC, no gateway: they are the team's); the host key exists,
    // tagged, as the daemon creates it.
    walk.admin_call(
        "ssm",
        "put_parameter",
        json!({"Name": PARAMETER, "Value": "key", "Type": "SecureString",
               "Tags": [{"Key": "gatehouse:stack", "Value": STACK}]}),
    );
    for action in [
        "sns:DeleteTopic",
        "ec2:DisassociateAddress",
        "ec2:ReleaseAddress",
        "ec2:DisassociateRouteTable",
        "ec2:DeleteRouteTable",
        "ec2:DeleteSubnet",
        "ec2:DeleteSecurityGroup",
        "iam:RemoveRoleFromInstanceProfile",
        "iam:DeleteInstanceProfile",
        "iam:DeleteRolePolicy",
        "iam:DeleteRole",
        "s3:DeleteObject",
        "s3:DeleteBucket",
        "ssm:DeleteParameter",
        "events:DeleteRule",
        "sqs:DeleteQueue",
    ] {
        walk.needs(action, &["destroy"]);
    }
    walk.full(&["destroy"]);
    assert_eq!(
        leftovers(|ops| walk.admin(ops)),
        [format!("log-group {AUDIT_GROUP}")],
        "left after destroy"
    );
    walk.needs("logs:DeleteLogGroup", &["destroy", "--delete-audit-log"]);
    walk.full(&["destroy", "--delete-audit-log"]);
    assert_eq!(
        leftovers(|ops| walk.admin(ops)),
        Vec::<String>::new(),
        "left after destroy --delete-audit-log"
    );
    // The walk's drift, repairs and destroy left the team's network as it was.
    assert_network_unchanged(
        &before,
        &team.snapshot(&topology, &moto, &admin),
        "after the walk",
    );

    // Every action of the policy was shown needed, except those AWS checks inside another
    // call (listed by `policy --json`; the same four as the greenfield walk's).
    let unchecked: Vec<String> = printed["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|a| a["checked_inside_another_call"] == json!(true))
        .map(|a| a["action"].as_str().expect("action").to_owned())
        .collect();
    assert_eq!(
        unchecked,
        [
            "iam:PassRole",
            "iam:CreateServiceLinkedRole",
            "iam:TagRole",
            "iam:TagInstanceProfile"
        ],
        "{printed:#}"
    );
    let mut shown = walk.shown.clone();
    eprintln!(
        "brownfield walk: {} actions shown needed, {} checked inside another call",
        shown.len(),
        unchecked.len()
    );
    shown.extend(unchecked);
    shown.sort();
    let mut in_policy = actions_of(&walk.policy);
    in_policy.dedup();
    assert_eq!(shown, in_policy, "each action shown needed, once");
}

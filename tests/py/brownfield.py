"""A network that another tool made, and every answer EC2 gives about it, for the brownfield
tests of gatehouse-vpc (tests/vpc.rs): a stack placed inside an existing VPC may put things
next to what it finds there, but must change none of it, and `destroy` must leave it as it was.

    brownfield.py make           builds the team's network (below) and prints its ids as JSON
    brownfield.py default        completes us-east-1's default VPC as AWS has it (moto 5.2.5
                                 leaves out its internet gateway, the main route table's
                                 0.0.0.0/0 route to it and the default security group's
                                 self-referencing rule) and prints its ids and those of what
                                 comes with it (default subnets, main route table, default
                                 security group, default network ACL, internet gateway), in
                                 the form `make` prints them
    brownfield.py snapshot IDS   prints, as canonical JSON (keys sorted, lists sorted,
                                 ResponseMetadata dropped), every Describe answer about the
                                 resources IDS (the JSON `make` or `default` printed) names

The endpoint is AWS_ENDPOINT_URL (the test's moto); any credentials do.

The snapshot leaves out only what changes by itself when a stack legitimately puts things next
to the existing ones (each at its place below, with the reason): a subnet's
AvailableIpAddressCount, and the default network ACL's association entries of subnets that
did not exist when IDS was taken.

`make` builds, in us-east-1:
- VPC 10.77.0.0/16 "team-network" (DNS hostnames off, as EC2 leaves them), an attached
  internet gateway, a public route table (0.0.0.0/0 -> the gateway) explicitly associated
  with two public subnets, 10.77.0.0/24 in us-east-1a and 10.77.1.0/24 in us-east-1b;
- a private subnet 10.77.10.0/24 "team-private-a" with its own route table (no default route);
- two subnets 10.77.20.0/24 and 10.77.21.0/24 that are both named "team-scratch" (an
  ambiguous Name) and use the VPC's main route table (no association of their own, no
  default route);
- the team's security group "team-jupyter" with rules of its own, and two instances in the
  private subnet tagged like gatehouse hosts (Name, gatehouse:groups=research,
  gatehouse:ports=22,8888) plus the team's own tag;
- two more VPCs both named "team-sandbox" (an ambiguous VPC Name), and in us-west-2 a VPC
  "team-west" (an id that does not exist in us-east-1).
Every resource carries `team=data-platform`, which is not the stack's.
"""

import json
import os
import sys

import boto3
import botocore.exceptions

REGION = "us-east-1"
OTHER_REGION = "us-west-2"
TEAM_TAG = {"Key": "team", "Value": "data-platform"}


def client(region):
    return boto3.client(
        "ec2",
        region_name=region,
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
    )


def tags(resource_type, name, **more):
    pairs = [{"Key": "Name", "Value": name}, TEAM_TAG]
    pairs += [{"Key": k, "Value": v} for k, v in more.items()]
    return [{"ResourceType": resource_type, "Tags": pairs}]


def empty_ids():
    return {
        "vpcs": [],
        "subnets": [],
        "route_tables": [],
        "internet_gateways": [],
        "security_groups": [],
        "network_acls": [],
        "instances": [],
        "network_interfaces": [],
    }


def defaults_of(ec2, vpc_id, ids):
    """Adds what EC2 made along with VPC `vpc_id`: its main route table, default security
    group, default network ACL."""
    by_vpc = [{"Name": "vpc-id", "Values": [vpc_id]}]
    main = ec2.describe_route_tables(
        Filters=by_vpc + [{"Name": "association.main", "Values": ["true"]}]
    )["RouteTables"]
    ids["route_tables"] += [t["RouteTableId"] for t in main]
    sgs = ec2.describe_security_groups(
        Filters=by_vpc + [{"Name": "group-name", "Values": ["default"]}]
    )["SecurityGroups"]
    ids["security_groups"] += [g["GroupId"] for g in sgs]
    acls = ec2.describe_network_acls(
        Filters=by_vpc + [{"Name": "default", "Values": ["true"]}]
    )["NetworkAcls"]
    ids["network_acls"] += [a["NetworkAclId"] for a in acls]
    return main[0]["RouteTableId"], sgs[0]["GroupId"], acls[0]["NetworkAclId"]


def complete_like_aws(ec2, default_sg):
    """What AWS makes with a VPC and moto 5.2.5 leaves out: the default security group's
    rule that lets its members reach each other (moto makes only the egress rule)."""
    group = ec2.describe_security_groups(GroupIds=[default_sg])["SecurityGroups"][0]
    if not group["IpPermissions"]:
        ec2.authorize_security_group_ingress(
            GroupId=default_sg,
            IpPermissions=[{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": default_sg}]}],
        )


def make():
    ec2 = client(REGION)
    ids = empty_ids()
    out = {"regions": {REGION: ids}}

    vpc = ec2.create_vpc(
        CidrBlock="10.77.0.0/16", TagSpecifications=tags("vpc", "team-network")
    )["Vpc"]["VpcId"]
    ids["vpcs"].append(vpc)
    out["vpc"] = vpc
    out["vpc_name"] = "team-network"
    out["main_route_table"], out["default_security_group"], out["default_network_acl"] = (
        defaults_of(ec2, vpc, ids)
    )
    complete_like_aws(ec2, out["default_security_group"])

    igw = ec2.create_internet_gateway(
        TagSpecifications=tags("internet-gateway", "team-igw")
    )["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    ids["internet_gateways"].append(igw)
    out["igw"] = igw

    def subnet(cidr, az, name):
        s = ec2.create_subnet(
            VpcId=vpc,
            CidrBlock=cidr,
            AvailabilityZone=az,
            TagSpecifications=tags("subnet", name),
        )["Subnet"]["SubnetId"]
        ids["subnets"].append(s)
        return s

    def route_table(name):
        t = ec2.create_route_table(
            VpcId=vpc, TagSpecifications=tags("route-table", name)
        )["RouteTable"]["RouteTableId"]
        ids["route_tables"].append(t)
        return t

    public_rt = route_table("team-public")
    ec2.create_route(
        RouteTableId=public_rt, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw
    )
    out["public_route_table"] = public_rt
    out["public_subnets"] = []
    for cidr, az, name in [
        ("10.77.0.0/24", "us-east-1a", "team-public-a"),
        ("10.77.1.0/24", "us-east-1b", "team-public-b"),
    ]:
        s = subnet(cidr, az, name)
        ec2.modify_subnet_attribute(SubnetId=s, MapPublicIpOnLaunch={"Value": True})
        ec2.associate_route_table(RouteTableId=public_rt, SubnetId=s)
        out["public_subnets"].append(s)
    out["public_subnet_names"] = ["team-public-a", "team-public-b"]

    private_rt = route_table("team-private")
    out["private_route_table"] = private_rt
    private = subnet("10.77.10.0/24", "us-east-1a", "team-private-a")
    ec2.associate_route_table(RouteTableId=private_rt, SubnetId=private)
    out["private_subnet"] = private
    out["private_subnet_name"] = "team-private-a"

    # Two subnets of one Name, on the main route table (no explicit association).
    out["scratch_subnets"] = [
        subnet("10.77.20.0/24", "us-east-1a", "team-scratch"),
        subnet("10.77.21.0/24", "us-east-1b", "team-scratch"),
    ]
    out["scratch_subnet_name"] = "team-scratch"

    sg = ec2.create_security_group(
        VpcId=vpc,
        GroupName="team-jupyter",
        Description="the data platform team's notebooks",
        TagSpecifications=tags("security-group", "team-jupyter"),
    )["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=sg,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 22,
                "ToPort": 22,
                "IpRanges": [{"CidrIp": "10.77.0.0/16", "Description": "team ssh"}],
            },
            {
                "IpProtocol": "tcp",
                "FromPort": 8888,
                "ToPort": 8888,
                "UserIdGroupPairs": [{"GroupId": sg, "Description": "notebooks"}],
            },
        ],
    )
    ids["security_groups"].append(sg)
    out["team_security_group"] = sg

    out["instances"] = []
    for n, ip in [(1, "10.77.10.10"), (2, "10.77.10.11")]:
        name = f"team-jupyter-{n}"
        run = ec2.run_instances(
            ImageId="ami-12c6146b",
            InstanceType="t3.medium",
            MinCount=1,
            MaxCount=1,
            SubnetId=private,
            PrivateIpAddress=ip,
            SecurityGroupIds=[sg],
            TagSpecifications=tags(
                "instance",
                name,
                **{"gatehouse:groups": "research", "gatehouse:ports": "22,8888"},
            ),
        )
        instance = run["Instances"][0]
        ids["instances"].append(instance["InstanceId"])
        ids["network_interfaces"] += [
            e["NetworkInterfaceId"] for e in instance["NetworkInterfaces"]
        ]
        out["instances"].append(instance["InstanceId"])

    out["sandbox_vpcs"] = []
    for cidr in ["10.88.0.0/16", "10.89.0.0/16"]:
        v = ec2.create_vpc(
            CidrBlock=cidr, TagSpecifications=tags("vpc", "team-sandbox")
        )["Vpc"]["VpcId"]
        ids["vpcs"].append(v)
        defaults_of(ec2, v, ids)
        out["sandbox_vpcs"].append(v)
    out["sandbox_vpc_name"] = "team-sandbox"

    west = client(OTHER_REGION)
    west_ids = empty_ids()
    out["regions"][OTHER_REGION] = west_ids
    v = west.create_vpc(
        CidrBlock="10.79.0.0/16", TagSpecifications=tags("vpc", "team-west")
    )["Vpc"]["VpcId"]
    west_ids["vpcs"].append(v)
    defaults_of(west, v, west_ids)
    out["west_vpc"] = v
    return out


def default():
    ec2 = client(REGION)
    ids = empty_ids()
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if len(vpcs) != 1:
        sys.exit(f"expected one default VPC in {REGION}, found {len(vpcs)}")
    vpc = vpcs[0]["VpcId"]
    ids["vpcs"].append(vpc)
    out = {"regions": {REGION: ids}, "vpc": vpc, "cidr": vpcs[0]["CidrBlock"]}
    out["main_route_table"], out["default_security_group"], out["default_network_acl"] = (
        defaults_of(ec2, vpc, ids)
    )
    complete_like_aws(ec2, out["default_security_group"])
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
    ids["subnets"] += [s["SubnetId"] for s in subnets]
    out["subnets_by_az"] = {s["AvailabilityZone"]: s["SubnetId"] for s in subnets}
    igws = ec2.describe_internet_gateways(
        Filters=[{"Name": "attachment.vpc-id", "Values": [vpc]}]
    )["InternetGateways"]
    if not igws:
        # AWS's default VPC has an internet gateway that its main route table sends
        # 0.0.0.0/0 to (what makes its default subnets public); moto 5.2.5's has neither.
        igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
        ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
        ec2.create_route(
            RouteTableId=out["main_route_table"], DestinationCidrBlock="0.0.0.0/0", GatewayId=igw
        )
        igws = [{"InternetGatewayId": igw}]
    ids["internet_gateways"] += [g["InternetGatewayId"] for g in igws]
    out["igw"] = igws[0]["InternetGatewayId"]
    return out


# ---- snapshot ----


def canonical(value):
    """Keys sorted (by the final dump), lists sorted by their elements' canonical text (the
    order of an answer's list carries no meaning in these answers), ResponseMetadata
    dropped."""
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items() if k != "ResponseMetadata"}
    if isinstance(value, list):
        items = [canonical(v) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True, default=str))
    return value


def error_code(call):
    """The answer of `call`, or {"Error": code} when EC2 refuses it (an attribute moto does not
    serve is refused the same way before and after)."""
    try:
        return call()
    except botocore.exceptions.ClientError as e:
        return {"Error": e.response.get("Error", {}).get("Code", "?")}


INSTANCE_ATTRIBUTES = [
    "instanceType",
    "kernel",
    "ramdisk",
    "userData",
    "disableApiTermination",
    "instanceInitiatedShutdownBehavior",
    "rootDeviceName",
    "blockDeviceMapping",
    "productCodes",
    "sourceDestCheck",
    "groupSet",
    "ebsOptimized",
    "sriovNetSupport",
    "enaSupport",
    "enclaveOptions",
    "disableApiStop",
]

VPC_ATTRIBUTES = [
    "enableDnsSupport",
    "enableDnsHostnames",
    "enableNetworkAddressUsageMetrics",
]


def snapshot_region(ec2, ids):
    snap = {}
    vpcs, subnets = ids["vpcs"], ids["subnets"]
    known_subnets = set(subnets)

    def described(method, key, id_arg, values):
        if not values:
            return []
        return getattr(ec2, method)(**{id_arg: values})[key]

    snap["vpcs"] = described("describe_vpcs", "Vpcs", "VpcIds", vpcs)
    snap["vpc_attributes"] = {
        v: {
            a: error_code(lambda: ec2.describe_vpc_attribute(VpcId=v, Attribute=a))
            for a in VPC_ATTRIBUTES
        }
        for v in vpcs
    }
    # "default" names no options set (EC2's own DNS); the VPC's answer holds it.
    dhcp = sorted({v.get("DhcpOptionsId") for v in snap["vpcs"]} - {None, "default"})
    snap["dhcp_options"] = described(
        "describe_dhcp_options", "DhcpOptions", "DhcpOptionsIds", dhcp
    )

    # What belongs to a VPC as a whole: the stack may add none of these to it.
    snap["per_vpc"] = {}
    for v in vpcs:
        by_vpc = [{"Name": "vpc-id", "Values": [v]}]
        snap["per_vpc"][v] = {
            "main_route_table": [
                t["RouteTableId"]
                for t in ec2.describe_route_tables(
                    Filters=by_vpc + [{"Name": "association.main", "Values": ["true"]}]
                )["RouteTables"]
            ],
            "default_network_acl": [
                a["NetworkAclId"]
                for a in ec2.describe_network_acls(
                    Filters=by_vpc + [{"Name": "default", "Values": ["true"]}]
                )["NetworkAcls"]
            ],
            "internet_gateways": [
                g["InternetGatewayId"]
                for g in ec2.describe_internet_gateways(
                    Filters=[{"Name": "attachment.vpc-id", "Values": [v]}]
                )["InternetGateways"]
            ],
            # Whole answers, so that a call moto refuses shows as its error code in both
            # snapshots rather than as an empty list.
            "egress_only_internet_gateways": error_code(
                lambda: {
                    "EgressOnlyInternetGateways": [
                        g
                        for g in ec2.describe_egress_only_internet_gateways()[
                            "EgressOnlyInternetGateways"
                        ]
                        if any(a.get("VpcId") == v for a in g.get("Attachments", []))
                    ]
                }
            ),
            "vpc_endpoints": error_code(lambda: ec2.describe_vpc_endpoints(Filters=by_vpc)),
            "flow_logs": error_code(
                lambda: ec2.describe_flow_logs(Filters=[{"Name": "resource-id", "Values": [v]}])
            ),
        }

    # Subnets. Excluded: AvailableIpAddressCount, which falls by itself when the stack puts
    # a network interface (the bastion's, a NAT gateway's, the balancer's) into an existing
    # subnet, as it may.
    snap["subnets"] = [
        {k: v for k, v in s.items() if k != "AvailableIpAddressCount"}
        for s in described("describe_subnets", "Subnets", "SubnetIds", subnets)
    ]
    # Which route table and network ACL each existing subnet is explicitly associated with:
    # the stack must not move an existing subnet to a table or ACL of its own (a move away
    # from the main table would not show in the main table's own answer).
    snap["per_subnet"] = {}
    for s in subnets:
        by_subnet = [{"Name": "association.subnet-id", "Values": [s]}]
        snap["per_subnet"][s] = {
            "route_tables": [
                [t["RouteTableId"], a.get("RouteTableAssociationId")]
                for t in ec2.describe_route_tables(Filters=by_subnet)["RouteTables"]
                for a in t.get("Associations", [])
                if a.get("SubnetId") == s
            ],
            "network_acls": [
                [n["NetworkAclId"], a.get("NetworkAclAssociationId")]
                for n in ec2.describe_network_acls(Filters=by_subnet)["NetworkAcls"]
                for a in n.get("Associations", [])
                if a.get("SubnetId") == s
            ],
        }

    snap["route_tables"] = described(
        "describe_route_tables", "RouteTables", "RouteTableIds", ids["route_tables"]
    )
    snap["internet_gateways"] = described(
        "describe_internet_gateways",
        "InternetGateways",
        "InternetGatewayIds",
        ids["internet_gateways"],
    )
    snap["security_groups"] = described(
        "describe_security_groups", "SecurityGroups", "GroupIds", ids["security_groups"]
    )
    snap["security_group_rules"] = (
        ec2.describe_security_group_rules(
            Filters=[{"Name": "group-id", "Values": ids["security_groups"]}]
        )["SecurityGroupRules"]
        if ids["security_groups"]
        else []
    )

    # Network ACLs. Excluded: association entries of subnets that did not exist when the
    # ids were taken: EC2 associates every new subnet (the stack's own) with its VPC's
    # default ACL, and drops the entry when the subnet goes. Entries of existing subnets
    # stay, ids and all.
    acls = described(
        "describe_network_acls", "NetworkAcls", "NetworkAclIds", ids["network_acls"]
    )
    for acl in acls:
        acl["Associations"] = [
            a for a in acl.get("Associations", []) if a.get("SubnetId") in known_subnets
        ]
    snap["network_acls"] = acls

    instances = ids["instances"]
    snap["instances"] = [
        i
        for r in described("describe_instances", "Reservations", "InstanceIds", instances)
        for i in r["Instances"]
    ]
    snap["instance_attributes"] = {
        i: {
            a: error_code(
                lambda: ec2.describe_instance_attribute(InstanceId=i, Attribute=a)
            )
            for a in INSTANCE_ATTRIBUTES
        }
        for i in instances
    }
    snap["network_interfaces"] = described(
        "describe_network_interfaces",
        "NetworkInterfaces",
        "NetworkInterfaceIds",
        ids["network_interfaces"],
    )
    snap["volumes"] = (
        ec2.describe_volumes(
            Filters=[{"Name": "attachment.instance-id", "Values": instances}]
        )["Volumes"]
        if instances
        else []
    )

    every_id = [i for kind in ids.values() for i in kind]
    snap["tags"] = (
        ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": every_id}])["Tags"]
        if every_id
        else []
    )
    return snap


def snapshot(ids):
    return {
        region: snapshot_region(client(region), region_ids)
        for region, region_ids in ids["regions"].items()
    }


def main():
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "make":
        result = make()
    elif command == "default":
        result = default()
    elif command == "snapshot" and len(sys.argv) == 3:
        result = canonical(snapshot(json.loads(sys.argv[2])))
    else:
        sys.exit(__doc__)
    print(json.dumps(result, sort_keys=True, indent=1, default=str))


if __name__ == "__main__":
    main()

"""Creates and changes AWS state in moto for the gatehouse AWS end-to-end tests, with boto3.

    aws_fixture.py ENDPOINT_URL 'JSON list of operations'

Prints one JSON list with a result per operation. Operations:

    {"op": "user", "name": N, "groups": "a,b" | null, "keys": [LINE...], "iam_groups": [G...],
     "path": "/", "gen_keys": n}                     -> {"key_ids": [...]}
    {"op": "deactivate_key", "user": N, "key_id": K} -> {"at": unix time after the call}
    {"op": "delete_key", "user": N, "key_id": K}     -> {"at": ...}
    {"op": "untag_user", "user": N, "key": TAGKEY}   -> {"at": ...}
    {"op": "vpc", "cidr": C, "subnet": S}            -> {"vpc_id": V, "subnet_id": S}
    {"op": "instance", "subnet_id": S, "ip": IP, "tags": {K: V}} -> {"id": I}
    {"op": "stop" | "terminate", "id": I}            -> {"at": ...}
    {"op": "untag", "id": I, "key": K}               -> {"at": ...}
    {"op": "tag", "id": I, "tags": {K: V}}           -> {"at": ...}
    {"op": "get_parameter", "name": P}               -> {"value": V | null}
    {"op": "seed", "value": N}                       -> {} (moto's ids are deterministic from here:
                                                        two motos seeded alike, then given the
                                                        same operations, hand out the same ids)
    {"op": "user_data_file", "tag": V, "path": P}    -> {"content": C} (the file cloud-init would
                                                        write from the user data of the running
                                                        instance tagged gatehouse:resource=V)
    {"op": "role_policies", "role": R}               -> {"policies": {NAME: DOCUMENT}}
    {"op": "principal", "name": N, "policy": DOC}    -> {"access_key_id": K, "secret_access_key": S}
                                                        (an IAM user whose only permission is DOC)
    {"op": "set_user_policy", "name": N, "policy": DOC} -> {} (replaces its inline policy)
    {"op": "delete_parameter", "name": P}            -> {"deleted": bool}
    {"op": "call", "service": "ec2" | "sqs" | "events" | ..., "method": M, "args": {...}}
                                                     -> the answer (boto3's, as JSON; a body
                                                        read as text)
        with "may_fail": true, an AWS error answer   -> {"error": CODE}
    {"op": "stack_leftovers", "stack": S, "role": R, "parameter": P}
                                                     -> {"leftovers": ["kind id", ...]}
                                                        (buckets: any named gatehouse-S-*;
                                                        the replicas' resources too)

Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the environment when set (moto with
IAM enforced: tests/py/moto_enforced.py's admin), else moto's accept-anything "test".
"""

import base64
import json
import os
import sys
import time
import urllib.request

import boto3
import botocore.config


def new_public_key():
    """A fresh ed25519 public key line, for users whose private key no test needs."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH,
                               serialization.PublicFormat.OpenSSH).decode()


def running_tagged(ec2, key, value):
    """Instances not terminated (or terminating) that carry tag key=value."""
    answer = ec2.describe_instances(Filters=[{"Name": f"tag:{key}", "Values": [value]}])
    return [i for r in answer["Reservations"] for i in r["Instances"]
            if i["State"]["Name"] not in ("terminated", "shutting-down")]


def cloud_config_file(user_data, path):
    """The content cloud-init's write_files would give `path` (plain `content:` only)."""
    import yaml
    assert user_data.startswith("#cloud-config\n"), user_data[:40]
    for entry in yaml.safe_load(user_data).get("write_files", []):
        if entry["path"] == path:
            assert entry.get("encoding") in (None, "text/plain"), entry
            return entry["content"]
    return None


def stack_leftovers(ec2, iam, ssm, s3, op, kw):
    """Everything of stack op["stack"] still in AWS: tagged EC2 resources, the role and its
    instance profile (fixed names), the host-key parameter, the binary bucket, the replicas'
    template, balancer, target group and group."""
    tag = [{"Name": "tag:gatehouse:stack", "Values": [op["stack"]]}]
    found = [f"instance {i['InstanceId']}" for i in running_tagged(ec2, "gatehouse:stack", op["stack"])]
    for kind, call, key, field in [
        ("vpc", ec2.describe_vpcs, "Vpcs", "VpcId"),
        ("subnet", ec2.describe_subnets, "Subnets", "SubnetId"),
        ("security-group", ec2.describe_security_groups, "SecurityGroups", "GroupId"),
        ("route-table", ec2.describe_route_tables, "RouteTables", "RouteTableId"),
        ("internet-gateway", ec2.describe_internet_gateways, "InternetGateways",
         "InternetGatewayId"),
        ("address", ec2.describe_addresses, "Addresses", "AllocationId"),
    ]:
        found += [f"{kind} {r[field]}" for r in call(Filters=tag)[key]]
    found += [f"nat-gateway {n['NatGatewayId']}"
              for n in ec2.describe_nat_gateways()["NatGateways"]
              if n["State"] not in ("deleted", "deleting")
              and {"Key": "gatehouse:stack", "Value": op["stack"]} in n.get("Tags", [])]
    try:
        iam.get_role(RoleName=op["role"])
        found.append(f"role {op['role']}")
    except iam.exceptions.NoSuchEntityException:
        pass
    try:
        iam.get_instance_profile(InstanceProfileName=op["role"])
        found.append(f"instance-profile {op['role']}")
    except iam.exceptions.NoSuchEntityException:
        pass
    try:
        ssm.get_parameter(Name=op["parameter"])
        found.append(f"parameter {op['parameter']}")
    except ssm.exceptions.ParameterNotFound:
        pass
    found += [f"bucket {b['Name']}" for b in s3.list_buckets().get("Buckets", [])
              if b["Name"].startswith(f"gatehouse-{op['stack']}-")]
    # A scaled-out stack's: its launch templates (tagged), and the balancer, target group and
    # Auto Scaling group (fixed names).
    found += [f"launch-template {t['LaunchTemplateId']}"
              for t in ec2.describe_launch_templates(Filters=tag)["LaunchTemplates"]]
    elb = boto3.client("elbv2", **kw)
    for kind, call, key, field in [
        ("load-balancer", elb.describe_load_balancers, "LoadBalancers", "LoadBalancerName"),
        ("target-group", elb.describe_target_groups, "TargetGroups", "TargetGroupName"),
    ]:
        try:
            found += [f"{kind} {r[field]}" for r in call(Names=[f"gh-{op['stack']}"])[key]]
        except elb.exceptions.ClientError:
            pass
    groups = boto3.client("autoscaling", **kw).describe_auto_scaling_groups(
        AutoScalingGroupNames=[f"gatehouse-{op['stack']}-bastion"])["AutoScalingGroups"]
    found += [f"auto-scaling-group {g['AutoScalingGroupName']}" for g in groups]
    return found


def main():
    endpoint, ops = sys.argv[1], json.loads(sys.argv[2])
    kw = dict(endpoint_url=endpoint, region_name="us-east-1",
              aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
              aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"))
    iam = boto3.client("iam", **kw)
    ec2 = boto3.client("ec2", **kw)
    ssm = boto3.client("ssm", **kw)
    s3 = boto3.client("s3", config=botocore.config.Config(s3={"addressing_style": "path"}), **kw)
    out = []
    for op in ops:
        kind = op["op"]
        if kind == "user":
            iam.create_user(UserName=op["name"], Path=op.get("path", "/"))
            if op.get("groups") is not None:
                iam.tag_user(UserName=op["name"],
                             Tags=[{"Key": op.get("tag", "gatehouse:groups"), "Value": op["groups"]}])
            for group in op.get("iam_groups", []):
                try:
                    iam.create_group(GroupName=group)
                except iam.exceptions.EntityAlreadyExistsException:
                    pass
                iam.add_user_to_group(GroupName=group, UserName=op["name"])
            ids = []
            keys = list(op.get("keys", []))
            for _ in range(op.get("gen_keys", 0)):
                keys.append(new_public_key())
            for line in keys:
                key = iam.upload_ssh_public_key(UserName=op["name"], SSHPublicKeyBody=line)
                ids.append(key["SSHPublicKey"]["SSHPublicKeyId"])
            out.append({"key_ids": ids})
        elif kind == "deactivate_key":
            iam.update_ssh_public_key(UserName=op["user"], SSHPublicKeyId=op["key_id"],
                                      Status="Inactive")
            out.append({"at": time.time()})
        elif kind == "delete_key":
            iam.delete_ssh_public_key(UserName=op["user"], SSHPublicKeyId=op["key_id"])
            out.append({"at": time.time()})
        elif kind == "untag_user":
            iam.untag_user(UserName=op["user"], TagKeys=[op["key"]])
            out.append({"at": time.time()})
        elif kind == "vpc":
            vpc = ec2.create_vpc(CidrBlock=op["cidr"])["Vpc"]["VpcId"]
            subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=op["subnet"])["Subnet"]["SubnetId"]
            out.append({"vpc_id": vpc, "subnet_id": subnet})
        elif kind == "instance":
            args = dict(ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType="t3.micro")
            if op.get("subnet_id"):
                args["SubnetId"] = op["subnet_id"]
            if op.get("ip"):
                args["PrivateIpAddress"] = op["ip"]
            tags = [{"Key": k, "Value": v} for k, v in op.get("tags", {}).items()]
            if tags:
                args["TagSpecifications"] = [{"ResourceType": "instance", "Tags": tags}]
            inst = ec2.run_instances(**args)["Instances"][0]
            out.append({"id": inst["InstanceId"], "ip": inst.get("PrivateIpAddress"),
                        "dns": inst.get("PrivateDnsName")})
        elif kind == "stop":
            ec2.stop_instances(InstanceIds=[op["id"]])
            out.append({"at": time.time()})
        elif kind == "terminate":
            ec2.terminate_instances(InstanceIds=[op["id"]])
            out.append({"at": time.time()})
        elif kind == "untag":
            ec2.delete_tags(Resources=[op["id"]], Tags=[{"Key": op["key"]}])
            out.append({"at": time.time()})
        elif kind == "tag":
            ec2.create_tags(Resources=[op["id"]],
                            Tags=[{"Key": k, "Value": v} for k, v in op["tags"].items()])
            out.append({"at": time.time()})
        elif kind == "seed":
            request = urllib.request.Request(f"{endpoint}/moto-api/seed?a={int(op['value'])}",
                                             method="POST")
            with urllib.request.urlopen(request, timeout=30) as answer:
                answer.read()
            out.append({})
        elif kind == "get_parameter":
            try:
                value = ssm.get_parameter(Name=op["name"], WithDecryption=True)["Parameter"]["Value"]
            except ssm.exceptions.ParameterNotFound:
                value = None
            out.append({"value": value})
        elif kind == "user_data_file":
            content = None
            for inst in running_tagged(ec2, "gatehouse:resource", op["tag"]):
                data = ec2.describe_instance_attribute(InstanceId=inst["InstanceId"],
                                                       Attribute="userData")
                text = base64.b64decode(data["UserData"]["Value"]).decode()
                content = cloud_config_file(text, op["path"])
            out.append({"content": content})
        elif kind == "role_policies":
            names = iam.list_role_policies(RoleName=op["role"])["PolicyNames"]
            out.append({"policies": {
                name: iam.get_role_policy(RoleName=op["role"], PolicyName=name)["PolicyDocument"]
                for name in names}})
        elif kind == "principal":
            iam.create_user(UserName=op["name"])
            iam.put_user_policy(UserName=op["name"], PolicyName="only",
                                PolicyDocument=json.dumps(op["policy"]))
            key = iam.create_access_key(UserName=op["name"])["AccessKey"]
            out.append({"access_key_id": key["AccessKeyId"],
                        "secret_access_key": key["SecretAccessKey"]})
        elif kind == "set_user_policy":
            iam.put_user_policy(UserName=op["name"], PolicyName="only",
                                PolicyDocument=json.dumps(op["policy"]))
            out.append({})
        elif kind == "delete_parameter":
            try:
                ssm.delete_parameter(Name=op["name"])
                out.append({"deleted": True})
            except ssm.exceptions.ParameterNotFound:
                out.append({"deleted": False})
        elif kind == "call":
            client = ({"ec2": ec2, "iam": iam, "ssm": ssm, "s3": s3}.get(op["service"])
                      or boto3.client(op["service"], **kw))
            try:
                answer = getattr(client, op["method"])(**op.get("args", {}))
            except client.exceptions.ClientError as e:
                if not op.get("may_fail"):
                    raise
                out.append({"error": e.response["Error"]["Code"]})
                continue
            answer.pop("ResponseMetadata", None)
            if hasattr(answer.get("Body"), "read"):
                answer["Body"] = answer["Body"].read().decode()
            out.append(json.loads(json.dumps(answer, default=str)))
        elif kind == "stack_leftovers":
            out.append({"leftovers": stack_leftovers(ec2, iam, ssm, s3, op, kw)})
        else:
            raise SystemExit(f"unknown op {kind}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()

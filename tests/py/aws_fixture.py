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
"""

import json
import sys
import time
import urllib.request

import boto3


def new_public_key():
    """A fresh ed25519 public key line, for users whose private key no test needs."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH,
                               serialization.PublicFormat.OpenSSH).decode()


def main():
    endpoint, ops = sys.argv[1], json.loads(sys.argv[2])
    kw = dict(endpoint_url=endpoint, region_name="us-east-1",
              aws_access_key_id="test", aws_secret_access_key="test")
    iam = boto3.client("iam", **kw)
    ec2 = boto3.client("ec2", **kw)
    ssm = boto3.client("ssm", **kw)
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
        else:
            raise SystemExit(f"unknown op {kind}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()

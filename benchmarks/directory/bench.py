"""The AWS directory at organization scale: gatehouse against moto behind tests/py/aws_proxy.py,
which adds AWS's latency to every call and throttles IAM per API with a token bucket. Two
gatehouse builds in the same run (the reference, e.g. the previous release, and the one under
test), at several directory sizes; prints a Markdown table and writes JSON.

    sudo tests/.venv/bin/python benchmarks/directory/bench.py \
        --gatehouse target/release/gatehouse --reference /path/to/old/gatehouse \
        [--users 100,1000,5000] [--instances 1000] [--latency-ms 50] \
        [--iam-rate 10] [--iam-burst 20] [--json benchmarks/directory/latest.json] \
        [--events] [--sweep-s 1800] [--replicas 3] [--shared]

Per size N: N IAM users (a tenth of them gatehouse users, tagged, each with one key), the
others untagged; `--instances` running instances tagged for the bastion. Per build:
- ready: seconds from the daemon's start to "gatehouse listening" (it serves from then on);
- steady: IAM calls per second of one daemon over two refresh intervals after the first
  listing (the fleet's figure is this times the replicas);
- revocation: seconds from a key's deactivation to the refresh that drops its user (the
  session closes on that refresh: tests/aws.rs), over a few trials, max and median.
With --events, the build under test also reads IAM change events: moto gets the queue and the
rule gatehouse-vpc provisions (pattern and retention from the daemon's own test fixture), the
daemon sweeps IAM every --sweep-s, and each revocation is the key's deactivation followed by
the event CloudTrail would deliver; the figures add the IAM calls of one sweep (measured: the
cold listing's, without its key bodies, which a sweep has cached) and the fleet's steady rate
for --replicas replicas (replicas x calls per sweep / sweep interval, plus what was measured
between sweeps), and an instance's revocation (its groups tag removed; instances are listed
every refresh interval, not evented).
With --shared, the build under test also shares its listing in an S3 object (moto's), and a
second replica of it is started once the first has measured: its "new replica ready" is the
time it took to serve, from the shared listing, while IAM refuses the account listing (as if
throttled for good). `--reference none` measures the build under test alone.
Only loopback is used: moto, the proxy and the daemon listen on 127.0.0.1.
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import boto3

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = os.path.join(ROOT, "tests", "py")
REFRESH_S = 30


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on {port} after {timeout}s")


def control(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/__proxy/{path}", timeout=10) as r:
        return json.loads(r.read())


def client(kind, port):
    return boto3.client(kind, endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def new_key():
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/k"],
                       check=True)
        return open(f"{d}/k.pub").read().strip()


def populate(moto, users, instances):
    iam, ec2 = client("iam", moto), client("ec2", moto)
    keys = {}
    for i in range(users):
        name = f"user{i:05}"
        iam.create_user(UserName=name)
        if i % 10 == 0:
            iam.tag_user(UserName=name, Tags=[{"Key": "gatehouse:groups", "Value": "research"}])
            kid = iam.upload_ssh_public_key(UserName=name, SSHPublicKeyBody=new_key())
            keys[name] = kid["SSHPublicKey"]["SSHPublicKeyId"]
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/20")["Subnet"]["SubnetId"]
    left = instances
    while left:
        n = min(left, 500)
        ec2.run_instances(ImageId="ami-12c6146b", MinCount=n, MaxCount=n, SubnetId=subnet,
                          TagSpecifications=[{"ResourceType": "instance", "Tags": [
                              {"Key": "gatehouse:groups", "Value": "research"}]}])
        left -= n
    return vpc, keys


QUEUE = "gatehouse-bench-iam-events"


def event_channel(moto, binary):
    """The queue and the rule gatehouse-vpc provisions, in moto, with the daemon's own pattern
    (`gatehouse event-pattern`)."""
    pattern = subprocess.run([binary, "event-pattern"], check=True, capture_output=True,
                             text=True).stdout
    sqs, events = client("sqs", moto), client("events", moto)
    sqs.create_queue(QueueName=QUEUE, Attributes={"MessageRetentionPeriod": "60",
                                                  "VisibilityTimeout": "0"})
    events.put_rule(Name="bench-iam-changes", EventPattern=pattern)
    events.put_targets(Rule="bench-iam-changes", Targets=[
        {"Id": "queue", "Arn": f"arn:aws:sqs:us-east-1:123456789012:{QUEUE}"}])


def iam_event(moto, name, params):
    client("events", moto).put_events(Entries=[{
        "Source": "aws.iam", "DetailType": "AWS API Call via CloudTrail",
        "Detail": json.dumps({"eventSource": "iam.amazonaws.com", "eventName": name,
                              "requestParameters": params})}])


BUCKET = "gatehouse-bench-shared"


def config(tmp, name, listen, proxy, vpc, events_sweep_s=None, shared=False):
    path = os.path.join(tmp, f"{name}.toml")
    with open(path, "w") as f:
        f.write(f"""[server]
listen = ["127.0.0.1:{listen}"]
host_key = "{tmp}/{name}_host_key"

[audit]
file = "{tmp}/{name}.audit.jsonl"

[aws]
region = "us-east-1"
endpoint_url = "http://127.0.0.1:{proxy}"
vpc_ids = ["{vpc}"]
refresh_interval = "{REFRESH_S}s"
max_staleness = "15m"
""")
        if events_sweep_s:
            f.write(f'events_queue_url = "http://127.0.0.1:{proxy}/123456789012/{QUEUE}"\n'
                    f'iam_sweep_interval = "{events_sweep_s}s"\n')
        if shared:
            f.write(f'shared_snapshot = "s3://{BUCKET}/aws-directory.json"\n')
    return path


def refreshed_users(log):
    """The user counts of the "AWS directory refreshed" lines in `log` (colours removed)."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", log)
    return [int(m) for m in re.findall(r"AWS directory refreshed.*?users=(\d+)", plain)]


def event_revocations(errpath):
    """The users of the "IAM change events applied" lines that changed someone."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", open(errpath).read())
    return re.findall(r"IAM change events applied.*?changed=\[([^\]]*)\]", plain)


def refreshed_hosts(log):
    plain = re.sub(r"\x1b\[[0-9;]*m", "", log)
    return [int(m) for m in re.findall(r"AWS directory refreshed.*?hosts=(\d+)", plain)]


ENV = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
           AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/nonexistent/aws-config",
           AWS_SHARED_CREDENTIALS_FILE="/nonexistent/aws-credentials",
           RUST_LOG="info,russh=warn", NO_COLOR="1")


def new_replica_ready(binary, tmp, proxy, vpc, events_sweep_s, ready_limit):
    """Seconds a second replica takes to serve, from the shared listing, with IAM refusing
    the account listing; None when it did not serve within `ready_limit`."""
    listen = free_port()
    cfg = config(tmp, "replica2", listen, proxy, vpc, events_sweep_s, shared=True)
    errpath = os.path.join(tmp, "replica2.stderr")
    control(proxy, "deny?action=iam:GetAccountAuthorizationDetails")
    started = time.time()
    with open(errpath, "w") as err:
        daemon = subprocess.Popen([binary, "serve", "--config", cfg], stderr=err,
                                  stdout=subprocess.DEVNULL, env=ENV)
    try:
        while time.time() - started < ready_limit:
            if "gatehouse listening" in open(errpath).read():
                return round(time.time() - started, 2)
            if daemon.poll() is not None:
                return None
            time.sleep(0.05)
        return None
    finally:
        control(proxy, "allow?action=iam:GetAccountAuthorizationDetails")
        daemon.terminate()
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()


def measure(binary, name, tmp, proxy, moto, vpc, keys, trials, ready_limit,
            events_sweep_s=None, shared=False):
    listen = free_port()
    cfg = config(tmp, name, listen, proxy, vpc, events_sweep_s, shared)
    errpath = os.path.join(tmp, f"{name}.stderr")
    env = ENV
    control(proxy, "reset")
    started = time.time()
    with open(errpath, "w") as err:
        daemon = subprocess.Popen([binary, "serve", "--config", cfg], stderr=err,
                                  stdout=subprocess.DEVNULL, env=env)
    try:
        ready = None
        while time.time() - started < ready_limit:
            if "gatehouse listening" in open(errpath).read():
                ready = time.time() - started
                break
            if daemon.poll() is not None:
                break
            time.sleep(0.05)
        cold = control(proxy, "counts")
        if ready is None:
            log = re.sub(r"\x1b\[[0-9;]*m", "", open(errpath).read())
            failures = [l for l in log.splitlines() if "listing failed" in l]
            return {"ready_s": None, "cold_calls": cold, "ready_limit_s": ready_limit,
                    "first_listing_failures": len(failures),
                    "last_failure": failures[-1][-300:] if failures else None}
        control(proxy, "reset")
        window = 2 * REFRESH_S + 5
        time.sleep(window)
        counts = control(proxy, "counts")
        iam_calls = sum(v for k, v in counts.items() if k.startswith("iam:"))
        throttled = counts.get("_iam_throttled", 0)
        iam = client("iam", moto)
        revocations = []
        if events_sweep_s:
            seen = lambda: len(event_revocations(errpath))  # noqa: E731
        else:
            seen = lambda: len(refreshed_users(open(errpath).read()))  # noqa: E731
        for name_ in list(keys)[:trials]:
            before = seen()
            t0 = time.time()
            iam.update_ssh_public_key(UserName=name_, SSHPublicKeyId=keys[name_],
                                      Status="Inactive")
            if events_sweep_s:
                iam_event(moto, "UpdateSSHPublicKey", {"userName": name_, "status": "Inactive"})
            while time.time() - t0 < 3 * REFRESH_S:
                if seen() > before:
                    revocations.append(time.time() - t0)
                    break
                time.sleep(0.05)
            else:
                revocations.append(None)
            iam.update_ssh_public_key(UserName=name_, SSHPublicKeyId=keys[name_],
                                      Status="Active")
            if events_sweep_s:
                iam_event(moto, "UpdateSSHPublicKey", {"userName": name_, "status": "Active"})
            # Let the user come back before the next trial.
            t1 = time.time()
            while time.time() - t1 < 3 * REFRESH_S:
                if seen() > before + 1:
                    break
                time.sleep(0.05)
        extra = {}
        if events_sweep_s:
            cold_iam = sum(v for k, v in cold.items() if k.startswith("iam:"))
            sweep = cold_iam - cold.get("iam:GetSSHPublicKey", 0)
            extra = {
                "sweep_iam_calls": sweep,
                "sweep_s": events_sweep_s,
                "instance_revocation_s": instance_revocation(moto, vpc, errpath),
            }
        if shared:
            extra["new_replica_ready_s"] = new_replica_ready(binary, tmp, proxy, vpc,
                                                             events_sweep_s, ready_limit)
        log = open(errpath).read()
        return {
            **extra,
            "ready_s": round(ready, 2),
            "cold_calls": {k: v for k, v in cold.items()},
            "steady_iam_calls_per_s": round(iam_calls / window, 2),
            "steady_iam_throttled": throttled,
            "revocation_s": [round(r, 1) if r is not None else None for r in revocations],
            "panicked": "panicked" in log,
        }
    finally:
        daemon.terminate()
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()


def instance_revocation(moto, vpc, errpath):
    """Seconds from one instance's groups tag removed to the refresh that drops it."""
    ec2 = client("ec2", moto)
    found = ec2.describe_instances(Filters=[{"Name": "vpc-id", "Values": [vpc]}],
                                   MaxResults=5)["Reservations"][0]["Instances"][0]
    before = len(refreshed_hosts(open(errpath).read()))
    t0 = time.time()
    ec2.delete_tags(Resources=[found["InstanceId"]], Tags=[{"Key": "gatehouse:groups"}])
    try:
        while time.time() - t0 < 3 * REFRESH_S:
            if len(refreshed_hosts(open(errpath).read())) > before:
                return round(time.time() - t0, 1)
            time.sleep(0.05)
        return None
    finally:
        ec2.create_tags(Resources=[found["InstanceId"]],
                        Tags=[{"Key": "gatehouse:groups", "Value": "research"}])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gatehouse", required=True)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--users", default="100,1000,5000")
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--latency-ms", type=int, default=50)
    ap.add_argument("--iam-rate", type=float, default=10)
    ap.add_argument("--iam-burst", type=float, default=20)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--ready-limit", type=int, default=300,
                    help="seconds after which a daemon not serving is reported as not ready")
    ap.add_argument("--events", action="store_true",
                    help="the build under test reads IAM change events (see above)")
    ap.add_argument("--sweep-s", type=int, default=1800)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--shared", action="store_true",
                    help="the build under test shares its listing in S3 (see above)")
    ap.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "directory",
                                                   "latest.json"))
    args = ap.parse_args()
    results = []
    for n in [int(x) for x in args.users.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            moto, proxy = free_port(), free_port()
            procs = [subprocess.Popen([sys.executable, os.path.join(PY, "moto_server.py"),
                                       "-H", "127.0.0.1", "-p", str(moto)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
            try:
                wait_port(moto)
                procs.append(subprocess.Popen([sys.executable, os.path.join(PY, "aws_proxy.py"),
                                               str(proxy), str(moto)]))
                wait_port(proxy)
                t = time.time()
                vpc, keys = populate(moto, n, args.instances)
                print(f"N={n}: populated in {time.time() - t:.0f}s", file=sys.stderr)
                control(proxy, f"delay?ms={args.latency_ms}")
                control(proxy, f"iam_rate?per_second={args.iam_rate}&burst={args.iam_burst}")
                if args.events:
                    event_channel(moto, args.gatehouse)
                if args.shared:
                    client("s3", moto).create_bucket(Bucket=BUCKET)
                builds = [("reference", args.reference), ("gatehouse", args.gatehouse)]
                for label, binary in builds:
                    if binary == "none":
                        continue
                    sweep = args.sweep_s if args.events and label == "gatehouse" else None
                    r = measure(binary, label, tmp, proxy, moto, vpc, keys, args.trials,
                                args.ready_limit, sweep, args.shared and label == "gatehouse")
                    if "sweep_iam_calls" in r:
                        r["fleet_iam_calls_per_s"] = round(
                            args.replicas * (r["sweep_iam_calls"] / args.sweep_s
                                             + r["steady_iam_calls_per_s"]), 3)
                        r["replicas"] = args.replicas
                    r.update(users=n, gatehouse_users=len(keys), instances=args.instances,
                             build=label)
                    print(json.dumps(r), file=sys.stderr)
                    results.append(r)
            finally:
                for p in reversed(procs):
                    p.terminate()
                    p.wait(10)
    with open(args.json, "w") as f:
        json.dump({"latency_ms": args.latency_ms, "iam_rate": args.iam_rate,
                   "iam_burst": args.iam_burst, "refresh_s": REFRESH_S,
                   "results": results}, f, indent=1)
    print("| users (gatehouse users) | build | ready, s | steady IAM calls/s (one replica) "
          "| throttled in steady state | revocation, s (max of trials) "
          "| IAM calls per sweep | fleet IAM calls/s | instance revocation, s "
          "| new replica ready, s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        rev = [x for x in r.get("revocation_s", []) if x is not None]
        lost = len(r.get("revocation_s", [])) - len(rev)
        ready = r["ready_s"] if r["ready_s"] is not None else f"not in {r['ready_limit_s']}"
        build = r["build"] + (" + events" if "sweep_iam_calls" in r else "")
        fleet = (f"{r['fleet_iam_calls_per_s']} ({r['replicas']} replicas, sweep every "
                 f"{r['sweep_s'] // 60} min)" if "sweep_iam_calls" in r else "–")
        print(f"| {r['users']} ({r['gatehouse_users']}) | {build} | {ready} "
              f"| {r.get('steady_iam_calls_per_s')} | {r.get('steady_iam_throttled')} "
              f"| {max(rev) if rev else '-'}{f' ({lost} not seen)' if lost else ''} "
              f"| {r.get('sweep_iam_calls', '–')} | {fleet} "
              f"| {r.get('instance_revocation_s', '–')} "
              f"| {r.get('new_replica_ready_s', '–')} |")


if __name__ == "__main__":
    main()

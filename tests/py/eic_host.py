"""The instance side of EC2 Instance Connect, for a test's private host (stdlib only).

    eic_host.py imds PUSHES_FILE INSTANCE_ID
        The instance metadata service as the stock ec2-instance-connect package reads it
        (IMDSv2): binds 127.0.0.1 on a port the kernel picks (inside the private namespace),
        prints "imds listening on 127.0.0.1:PORT", then serves until killed:
            PUT /latest/api/token    (needs X-aws-ec2-metadata-token-ttl-seconds) -> a token
            GET /latest/meta-data/managed-ssh-keys/active-keys/USER/  (needs the token)
                -> the keys pushed for INSTANCE_ID and USER in the last 60 seconds, one per
                   line (404 when there are none, as on EC2)
        Pushes come from PUSHES_FILE, which `aws_proxy.py` appends to as moto accepts them
        (each with its time, "at"; a test lets a minute pass by moving those back).

    eic_host.py keys IMDS_URL USER
        sshd's AuthorizedKeysCommand, like the package's: fetches the token, then USER's
        active keys, and prints them. Prints nothing (and exits 0) when there are none.
        (The package also checks AWS's signature on each key; moto signs nothing.)
"""

import json
import sys
import time
import urllib.error
import urllib.request

import fake_imds  # the IMDSv2 token handling (same directory)

PREFIX = "/latest/meta-data/managed-ssh-keys/active-keys/"
# How long EC2 Instance Connect keeps a pushed key.
LIFETIME = 60.0


def serve(pushes, instance):
    def active(user):
        keys = []
        try:
            with open(pushes, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            lines = []
        t = time.time()
        for line in lines:
            push = json.loads(line)
            if (push["instance"] == instance and push["user"] == user
                    and t - push["at"] < LIFETIME and push["key"] not in keys):
                keys.append(push["key"])
        return keys

    class KeysHandler(fake_imds.Imdsv2Handler):
        def metadata(self, path):
            if not path.startswith(PREFIX) or not path.endswith("/"):
                return 404, ""
            keys = active(path[len(PREFIX):-1])
            if not keys:
                return 404, ""
            return 200, "\n".join(keys) + "\n"

    fake_imds.serve(KeysHandler)


def keys(url, user):
    token_request = urllib.request.Request(
        url + "/latest/api/token", method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    with urllib.request.urlopen(token_request, timeout=5) as r:
        token = r.read().decode()
    request = urllib.request.Request(
        f"{url}{PREFIX}{user}/", headers={"X-aws-ec2-metadata-token": token})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            sys.stdout.write(r.read().decode())
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise


if __name__ == "__main__":
    if sys.argv[1] == "imds":
        serve(*sys.argv[2:4])
    elif sys.argv[1] == "keys":
        keys(*sys.argv[2:4])
    else:
        sys.exit(f"unknown command {sys.argv[1]!r}")

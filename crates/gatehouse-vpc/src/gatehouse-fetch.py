#!/usr/bin/python3
# gatehouse-fetch URL SHA256 DEST: download the gatehouse binary from the stack's S3 bucket with
# the instance role's credentials, check its SHA-256 and move it to DEST.
#
# Written by gatehouse-vpc into the bastion's user data. Python's standard library only: every
# image that runs cloud-init has python3, while the AWS CLI is on Amazon Linux only. The request
# is signed with AWS Signature Version 4 (GET, UNSIGNED-PAYLOAD); credentials come from the
# instance metadata service (IMDSv2), or from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
# AWS_SESSION_TOKEN when set. AWS_EC2_METADATA_SERVICE_ENDPOINT overrides the metadata address,
# as it does for the AWS SDKs.
import datetime
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

TIMEOUT = 20


class ChecksumMismatch(Exception):
    pass


def imds_credentials():
    base = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://169.254.169.254").rstrip("/")
    token_req = urllib.request.Request(
        base + "/latest/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"},
    )
    token = urllib.request.urlopen(token_req, timeout=TIMEOUT).read().decode()
    headers = {"X-aws-ec2-metadata-token": token}
    path = base + "/latest/meta-data/iam/security-credentials/"

    def get(url):
        req = urllib.request.Request(url, headers=headers)
        return urllib.request.urlopen(req, timeout=TIMEOUT).read().decode()

    role = get(path).split("\n")[0].strip()
    if not role:
        raise RuntimeError("the instance has no IAM role (no instance profile attached)")
    creds = json.loads(get(path + role))
    return creds["AccessKeyId"], creds["SecretAccessKey"], creds.get("Token")


def credentials():
    key = os.environ.get("AWS_ACCESS_KEY_ID")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        return key, secret, os.environ.get("AWS_SESSION_TOKEN")
    return imds_credentials()


def signed_get(url, region, key, secret, token):
    parts = urllib.parse.urlsplit(url)
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = now.strftime("%Y%m%d")
    headers = {
        "host": parts.netloc,
        "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
        "x-amz-date": amz_date,
    }
    if token:
        headers["x-amz-security-token"] = token
    names = sorted(headers)
    canonical = "\n".join(
        [
            "GET",
            urllib.parse.quote(parts.path or "/", safe="/~"),
            "",
            "".join(f"{n}:{headers[n]}\n" for n in names),
            ";".join(names),
            "UNSIGNED-PAYLOAD",
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    k = ("AWS4" + secret).encode()
    for part in (day, region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    del headers["host"]
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)


def fetch(url, region, sha256, dest):
    part = dest + ".part"
    key, secret, token = credentials()
    digest = hashlib.sha256()
    with signed_get(url, region, key, secret, token) as resp, open(part, "wb") as out:
        while True:
            chunk = resp.read(1 << 16)
            if not chunk:
                break
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != sha256:
        os.unlink(part)
        raise ChecksumMismatch(f"SHA-256 mismatch: got {digest.hexdigest()}, the spec says {sha256}")
    os.chmod(part, 0o755)
    os.replace(part, dest)


def main():
    if len(sys.argv) != 5:
        print("usage: gatehouse-fetch URL REGION SHA256 DEST", file=sys.stderr)
        return 2
    url, region, sha256, dest = sys.argv[1:]
    # A role created moments ago may not be usable yet (IAM is eventually consistent), and the
    # metadata service may not have its credentials yet: retry everything but a bad checksum.
    attempts = int(os.environ.get("GATEHOUSE_FETCH_ATTEMPTS", "10"))
    for attempt in range(1, attempts + 1):
        try:
            fetch(url, region, sha256, dest)
            print(f"gatehouse-fetch: {url} -> {dest} (sha256 {sha256})")
            return 0
        except ChecksumMismatch as e:
            print(f"gatehouse-fetch: {url}: {e}", file=sys.stderr)
            return 1
        except urllib.error.HTTPError as e:
            body = e.read(2048).decode(errors="replace")
            print(f"gatehouse-fetch: GET {url}: HTTP {e.code}: {body}", file=sys.stderr)
        except Exception as e:  # network, metadata service
            print(f"gatehouse-fetch: {url}: {e}", file=sys.stderr)
        if attempt < attempts:
            time.sleep(min(2 * attempt, 10))
    return 1


if __name__ == "__main__":
    sys.exit(main())

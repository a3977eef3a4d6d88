"""The EC2 instance metadata service (IMDSv2) as gatehouse-fetch uses it, for one role.

    fake_imds.py ROLE ACCESS_KEY_ID SECRET_ACCESS_KEY

Binds 127.0.0.1 on a port the kernel picks, prints "imds listening on 127.0.0.1:PORT", then
serves until killed:
    PUT /latest/api/token  (needs X-aws-ec2-metadata-token-ttl-seconds)  -> a token
    GET /latest/meta-data/iam/security-credentials/       -> ROLE
    GET /latest/meta-data/iam/security-credentials/ROLE   -> the credentials JSON
Every GET needs the token (IMDSv2, as gatehouse-vpc launches the bastion); without it, 401.

As a module: `Imdsv2Handler` (the token dance; subclasses answer `metadata(path)`) and
`serve(handler)`, also used by eic_host.py.
"""

import json
import secrets
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = secrets.token_hex(16)
PREFIX = "/latest/meta-data/iam/security-credentials/"


class Imdsv2Handler(BaseHTTPRequestHandler):
    """IMDSv2: a token from PUT /latest/api/token, required on every GET."""

    def answer(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        if self.path != "/latest/api/token" or not self.headers.get(
                "X-aws-ec2-metadata-token-ttl-seconds"):
            return self.answer(400, "bad token request")
        self.answer(200, TOKEN)

    def do_GET(self):
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            return self.answer(401, "")
        status, body = self.metadata(self.path)
        self.answer(status, body)

    def metadata(self, path):
        """(status, body) for a GET of `path`, the token checked."""
        return 404, ""

    def log_message(self, fmt, *args):
        sys.stderr.write("imds: " + fmt % args + "\n")


def serve(handler):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    print(f"imds listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


def main():
    role, key, secret = sys.argv[1:4]

    class RoleHandler(Imdsv2Handler):
        def metadata(self, path):
            if path == PREFIX:
                return 200, role
            if path == PREFIX + role:
                return 200, json.dumps({
                    "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": key,
                    "SecretAccessKey": secret, "Token": "",
                    "Expiration": "2099-01-01T00:00:00Z"})
            return 404, ""

    serve(RoleHandler)


if __name__ == "__main__":
    main()

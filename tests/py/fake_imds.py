"""The EC2 instance metadata service (IMDSv2) as gatehouse-fetch uses it, for one role.

    fake_imds.py ROLE ACCESS_KEY_ID SECRET_ACCESS_KEY

Binds 127.0.0.1 on a port the kernel picks, prints "imds listening on 127.0.0.1:PORT", then
serves until killed:
    PUT /latest/api/token  (needs X-aws-ec2-metadata-token-ttl-seconds)  -> a token
    GET /latest/meta-data/iam/security-credentials/       -> ROLE
    GET /latest/meta-data/iam/security-credentials/ROLE   -> the credentials JSON
Every GET needs the token (IMDSv2, as gatehouse-vpc launches the bastion); without it, 401.
"""

import json
import secrets
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROLE, KEY, SECRET = sys.argv[1:4]
TOKEN = secrets.token_hex(16)
PREFIX = "/latest/meta-data/iam/security-credentials/"


class Handler(BaseHTTPRequestHandler):
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
        if self.path == PREFIX:
            return self.answer(200, ROLE)
        if self.path == PREFIX + ROLE:
            return self.answer(200, json.dumps({
                "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": KEY,
                "SecretAccessKey": SECRET, "Token": "", "Expiration": "2099-01-01T00:00:00Z"}))
        self.answer(404, "")

    def log_message(self, fmt, *args):
        sys.stderr.write("imds: " + fmt % args + "\n")


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"imds listening on 127.0.0.1:{server.server_address[1]}", flush=True)
server.serve_forever()

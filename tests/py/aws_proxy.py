"""A fault-injecting HTTP proxy in front of moto, for the gatehouse AWS end-to-end tests.

    aws_proxy.py LISTEN_PORT UPSTREAM_PORT [PUSHES_FILE]

Listens on 127.0.0.1:LISTEN_PORT (inside the test's bastion namespace) and forwards every
request to moto on 127.0.0.1:UPSTREAM_PORT, counting AWS actions. With PUSHES_FILE, every
EC2 Instance Connect SendSSHPublicKey that moto accepted is appended to it as one JSON line
({"instance", "user", "key", "at"}: what AWS would hand the instance's metadata service;
moto does not keep it), for `eic_host.py imds` to serve. Control requests (GET):

    /__proxy/throttle?seconds=S   answer every AWS request with a throttling error for S seconds
    /__proxy/upstream?port=P      forward to another moto from now on (a restarted one)
    /__proxy/counts               {"Action": n, ...} forwarded since the last reset, and
                                  "_throttled": n answered with a throttling error
    /__proxy/reset                zero the counts
    /__proxy/gone?user=U&action=A answer IAM action A for user U (the UserName parameter) with
                                  NoSuchEntity from now on, as IAM does for a user deleted
                                  after the account listing named it (counted as "_gone")
    /__proxy/deny?action=S:A      answer action A of service S (e.g. iam:ListSSHPublicKeys) with AWS's
                                  access-denied error from now on, as for a role that lacks it
                                  (counted as "_denied")
    /__proxy/allow?action=S:A     undo a deny
    /__proxy/delay?ms=N           add N ms before forwarding each AWS request (AWS's latency)
    /__proxy/iam_rate?per_second=R&burst=B
                                  a token bucket per IAM API (R requests a second, B at once),
                                  as IAM throttles: a request finding its API's bucket empty is
                                  answered with IAM's Throttling error (counted as
                                  "_iam_throttled"); per_second=0 turns it off

When the upstream is down, the client's connection is closed without an answer: to the SDK
that is an unreachable endpoint. Only loopback is ever contacted.
"""

import http.client
import json
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATE = {"upstream": 0, "throttle_until": 0.0, "counts": {}, "gone": set(), "deny": set(),
         "delay": 0.0, "iam_rate": 0.0, "iam_burst": 0.0, "buckets": {}}
PUSHES = sys.argv[3] if len(sys.argv) > 3 else None

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-authorization", "proxy-authenticate", "content-length"}


def service_of(headers, body):
    auth = headers.get("Authorization", "")
    for svc in ("iam", "ec2", "ssm", "sts", "ec2-instance-connect", "sqs", "events", "logs"):
        if f"/{svc}/aws4_request" in auth:
            return svc
    return "unknown"


def action_of(headers, body):
    target = headers.get("X-Amz-Target")
    if target:
        return target.split(".")[-1]
    try:
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        return form.get("Action", ["?"])[0]
    except Exception:  # noqa: BLE001 - a count label only
        return "?"


def user_of(body):
    try:
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        return form.get("UserName", [None])[0]
    except Exception:  # noqa: BLE001 - only used to pick requests to fail
        return None


def no_such_entity_answer(user):
    body = ("<ErrorResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><Error>"
            "<Type>Sender</Type><Code>NoSuchEntity</Code>"
            f"<Message>The user with name {user} cannot be found.</Message>"
            "</Error><RequestId>gone</RequestId></ErrorResponse>")
    return 404, "text/xml", body.encode()


def denied_answer(service, action):
    who = "arn:aws:sts::123456789012:assumed-role/gatehouse-bastion/i-0123456789abcdef0"
    if service == "sqs":
        body = json.dumps({"__type": "com.amazon.coral.service#AccessDeniedException",
                           "message": f"User: {who} is not authorized to perform: "
                                      f"sqs:{action} because no identity-based policy allows "
                                      f"the sqs:{action} action"})
        return 400, "application/x-amz-json-1.0", body.encode()
    if service == "logs":
        body = json.dumps({"__type": "AccessDeniedException",
                           "message": f"User: {who} is not authorized to perform: "
                                      f"logs:{action} because no identity-based policy allows "
                                      f"the logs:{action} action"})
        return 400, "application/x-amz-json-1.1", body.encode()
    if service in ("ssm", "ec2-instance-connect"):
        body = json.dumps({"__type": "AccessDeniedException",
                           "Message": f"User: {who} is not authorized to perform: "
                                      f"ssm:{action} because no identity-based policy allows "
                                      f"the ssm:{action} action"})
        return 400, "application/x-amz-json-1.1", body.encode()
    if service == "ec2":
        body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error>"
                "<Code>UnauthorizedOperation</Code>"
                "<Message>You are not authorized to perform this operation.</Message>"
                "</Error></Errors><RequestID>denied</RequestID></Response>")
        return 403, "text/xml", body.encode()
    body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
            "<ErrorResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><Error>"
            "<Type>Sender</Type><Code>AccessDenied</Code>"
            f"<Message>User: {who} is not authorized to perform: iam:{action} on resource: "
            "arn:aws:iam::123456789012:user/ because no identity-based policy allows the "
            f"iam:{action} action</Message>"
            "</Error><RequestId>denied</RequestId></ErrorResponse>")
    return 403, "text/xml", body.encode()


def throttle_answer(service):
    if service == "ssm":
        body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"})
        return 400, "application/x-amz-json-1.1", body.encode()
    if service == "ec2":
        body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error>"
                "<Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message>"
                "</Error></Errors><RequestID>throttle</RequestID></Response>")
        return 503, "text/xml", body.encode()
    body = ("<ErrorResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><Error>"
            "<Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message>"
            "</Error><RequestId>throttle</RequestId></ErrorResponse>")
    return 400, "text/xml", body.encode()


def take_token(action):
    """One token from `action`'s bucket (LOCK held); False when it is empty."""
    now = time.time()
    tokens, last = STATE["buckets"].get(action, (STATE["iam_burst"], now))
    tokens = min(STATE["iam_burst"], tokens + (now - last) * STATE["iam_rate"])
    if tokens < 1:
        STATE["buckets"][action] = (tokens, now)
        return False
    STATE["buckets"][action] = (tokens - 1, now)
    return True


def record_push(body):
    """Appends an accepted push to PUSHES, as the instance's metadata service would get it."""
    request = json.loads(body.decode("utf-8"))
    line = json.dumps({"instance": request["InstanceId"], "user": request["InstanceOSUser"],
                       "key": request["SSHPublicKey"], "at": time.time()})
    with LOCK, open(PUSHES, "a", encoding="utf-8") as f:
        f.write(line + "\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def control(self):
        url = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(url.query)
        with LOCK:
            if url.path == "/__proxy/throttle":
                STATE["throttle_until"] = time.time() + float(query["seconds"][0])
                answer = {"ok": True}
            elif url.path == "/__proxy/upstream":
                STATE["upstream"] = int(query["port"][0])
                answer = {"ok": True}
            elif url.path == "/__proxy/counts":
                answer = dict(STATE["counts"])
            elif url.path == "/__proxy/gone":
                STATE["gone"].add((query["user"][0], query["action"][0]))
                answer = {"ok": True}
            elif url.path == "/__proxy/deny":
                STATE["deny"].add(query["action"][0])
                answer = {"ok": True}
            elif url.path == "/__proxy/allow":
                STATE["deny"].discard(query["action"][0])
                answer = {"ok": True}
            elif url.path == "/__proxy/iam_rate":
                STATE["iam_rate"] = float(query["per_second"][0])
                STATE["iam_burst"] = float(query.get("burst", ["1"])[0])
                STATE["buckets"] = {}
                answer = {"ok": True}
            elif url.path == "/__proxy/delay":
                STATE["delay"] = float(query["ms"][0]) / 1000.0
                answer = {"ok": True}
            elif url.path == "/__proxy/reset":
                STATE["counts"] = {}
                answer = {"ok": True}
            else:
                answer = {"error": "unknown control path"}
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def reply(self, status, ctype, body):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        service = service_of(self.headers, body)
        action = action_of(self.headers, body)
        user = user_of(body) if service == "iam" else None
        with LOCK:
            throttled = time.time() < STATE["throttle_until"]
            bucket_empty = (not throttled and service == "iam" and STATE["iam_rate"] > 0
                            and not take_token(action))
            if bucket_empty:
                STATE["counts"]["_iam_throttled"] = STATE["counts"].get("_iam_throttled", 0) + 1
        if bucket_empty:
            return self.reply(*throttle_answer("iam"))
        with LOCK:
            gone = not throttled and (user, action) in STATE["gone"]
            denied = not throttled and not gone and f"{service}:{action}" in STATE["deny"]
            upstream = STATE["upstream"]
            key = ("_throttled" if throttled else "_gone" if gone
                   else "_denied" if denied else f"{service}:{action}")
            STATE["counts"][key] = STATE["counts"].get(key, 0) + 1
        if throttled or gone or denied:
            if throttled:
                status, ctype, answer = throttle_answer(service)
            elif gone:
                status, ctype, answer = no_such_entity_answer(user)
            else:
                status, ctype, answer = denied_answer(service, action)
            return self.reply(status, ctype, answer)
        with LOCK:
            delay = STATE["delay"]
        if delay:
            time.sleep(delay)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            resp_headers = resp.getheaders()
            status = resp.status
            conn.close()
        except OSError:
            # Upstream down: close without an answer, as an unreachable endpoint would.
            self.close_connection = True
            return
        if PUSHES and service == "ec2-instance-connect" and action == "SendSSHPublicKey" \
                and status == 200:
            record_push(body)
        self.send_response(status)
        for k, v in resp_headers:
            if k.lower() not in HOP and k.lower() not in ("server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_one(self):
        if self.path.startswith("/__proxy/"):
            self.control()
        else:
            self.forward()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_one


def main():
    listen, upstream = int(sys.argv[1]), int(sys.argv[2])
    STATE["upstream"] = upstream
    server = ThreadingHTTPServer(("127.0.0.1", listen), Handler)
    server.daemon_threads = True
    print(f"aws_proxy listening on 127.0.0.1:{listen} -> {upstream}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

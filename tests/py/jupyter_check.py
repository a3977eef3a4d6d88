"""End-to-end probe of a Jupyter Server: what a browser does when a user opens a notebook.

Usage: jupyter_check.py --url http://127.0.0.1:18888 --token TOKEN [--timeout 60]

Steps: GET /api, GET /api/kernelspecs, POST /api/kernels, open the kernel's websocket
(/api/kernels/<id>/channels), send an execute_request for `6*7`, expect the execute_result
`42` and an ok execute_reply, close, DELETE the kernel and check it is gone.

Prints one JSON object on stdout ({"ok": true, ...} or {"ok": false, "step": ..., "error": ...})
and exits 0 only if every step worked. Every network call is bounded by the remaining time.
"""

import argparse
import datetime
import json
import sys
import time
import urllib.error
import urllib.request
import uuid

import websocket  # websocket-client

CODE = "6*7"
EXPECTED = "42"


class CheckFailed(Exception):
    def __init__(self, step, error):
        super().__init__(f"{step}: {error}")
        self.step = step
        self.error = error


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self, step):
        left = self.end - time.monotonic()
        if left <= 0:
            raise CheckFailed(step, "out of time")
        return left


def http(method, url, token, deadline, step, body=None, expect=(200,)):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"token {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=min(30, deadline.left(step))) as resp:
            status, payload = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, payload = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        raise CheckFailed(step, f"{method} {url}: {e}") from e
    if status not in expect:
        raise CheckFailed(step, f"{method} {url}: HTTP {status}: {payload[:300]!r}")
    return json.loads(payload) if payload else None


def execute(ws_url, token, deadline):
    step = "websocket"
    ws = websocket.create_connection(
        ws_url,
        timeout=min(30, deadline.left(step)),
        header=[f"Authorization: token {token}"],
    )
    try:
        session = uuid.uuid4().hex
        msg_id = uuid.uuid4().hex
        ws.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "msg_type": "execute_request",
                        "username": "gatehouse-e2e",
                        "session": session,
                        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                        "version": "5.3",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "content": {
                        "code": CODE,
                        "silent": False,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                    "channel": "shell",
                    "buffers": [],
                }
            )
        )
        result, reply_status, idle = None, None, False
        step = "execute"
        while result is None or reply_status is None or not idle:
            ws.settimeout(min(30, deadline.left(step)))
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg.get("msg_type") or msg.get("header", {}).get("msg_type")
            content = msg.get("content", {})
            if kind == "execute_result":
                result = content.get("data", {}).get("text/plain")
            elif kind == "error":
                raise CheckFailed(step, f"kernel error: {content.get('ename')}: {content.get('evalue')}")
            elif kind == "execute_reply":
                reply_status = content.get("status")
            elif kind == "status" and content.get("execution_state") == "idle":
                idle = True
        if reply_status != "ok":
            raise CheckFailed(step, f"execute_reply status {reply_status!r}")
        if result != EXPECTED:
            raise CheckFailed(step, f"{CODE} gave {result!r}, expected {EXPECTED!r}")
        return result
    except (websocket.WebSocketException, OSError) as e:
        raise CheckFailed(step, f"{type(e).__name__}: {e}") from e
    finally:
        ws.close()


def check(base, token, deadline, summary):
    api = http("GET", f"{base}/api", token, deadline, "api")
    summary["server_version"] = api.get("version")

    specs = http("GET", f"{base}/api/kernelspecs", token, deadline, "kernelspecs")
    name = specs.get("default")
    if not name or name not in specs.get("kernelspecs", {}):
        raise CheckFailed("kernelspecs", f"no usable default kernelspec in {specs!r}")
    summary["kernelspec"] = name

    kernel = http("POST", f"{base}/api/kernels", token, deadline, "start kernel", body={"name": name}, expect=(201,))
    kernel_id = kernel["id"]
    summary["kernel_id"] = kernel_id
    try:
        ws_base = "ws" + base[len("http"):]
        ws_url = f"{ws_base}/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}"
        summary["result"] = execute(ws_url, token, deadline)
    finally:
        http("DELETE", f"{base}/api/kernels/{kernel_id}", token, deadline, "delete kernel", expect=(204,))
    remaining = http("GET", f"{base}/api/kernels", token, deadline, "list kernels")
    if any(k.get("id") == kernel_id for k in remaining):
        raise CheckFailed("delete kernel", f"kernel {kernel_id} still listed")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:18888")
    parser.add_argument("--token", required=True)
    parser.add_argument("--timeout", type=float, default=60.0, help="overall limit in seconds")
    args = parser.parse_args()
    if not args.url.startswith(("http://", "https://")):
        parser.error("--url must start with http:// or https://")

    started = time.monotonic()
    summary = {"ok": False, "url": args.url}
    try:
        check(args.url.rstrip("/"), args.token, Deadline(args.timeout), summary)
        summary["ok"] = True
    except CheckFailed as e:
        summary["step"], summary["error"] = e.step, str(e.error)
    except Exception as e:  # report anything unexpected in the same JSON shape
        summary["step"], summary["error"] = "unexpected", f"{type(e).__name__}: {e}"
    summary["elapsed_s"] = round(time.monotonic() - started, 3)
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

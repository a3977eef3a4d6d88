"""A hostile source for the abuse-resistance tests: opens many connections to the bastion from
one source address and keeps them busy in three ways: half-open (connect, send nothing), slow
senders (the version line one byte a second), and bad keys (a full SSH login with a key the
bastion does not know). Everything is bounded: at most COUNT connections, none older than
HOLD seconds, the whole run at most HOLD + 15 seconds.

usage: flood.py HOST PORT SOURCE_ADDRESS COUNT HOLD_SECONDS
prints a JSON summary: how many connections were made, refused at once (closed without an SSH
version line), or served, and how many bad-key logins were attempted.
"""

import json
import socket
import sys
import threading
import time

import paramiko


class Tally:
    """Counts from many threads, under a lock."""

    def __init__(self, counts):
        self.counts = counts
        self.lock = threading.Lock()

    def inc(self, key):
        with self.lock:
            self.counts[key] += 1


def connect(host, port, source):
    s = socket.create_connection((host, port), timeout=5, source_address=(source, 0))
    s.settimeout(2)
    return s


def first_line(s):
    """The server's version line, or '' if it closed the connection without one."""
    data = b""
    try:
        while not data.endswith(b"\n") and len(data) < 256:
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data.decode("latin-1").strip()


def half_open(host, port, source, hold, results):
    try:
        s = connect(host, port, source)
    except OSError:
        results.inc("connect_failed")
        return
    line = first_line(s)
    results.inc("served" if line.startswith("SSH-") else "refused")
    deadline = time.time() + hold
    while time.time() < deadline:
        try:
            if not s.recv(1024):
                break
        except socket.timeout:
            continue
        except OSError:
            break
    s.close()


def slow_sender(host, port, source, hold, results):
    try:
        s = connect(host, port, source)
    except OSError:
        results.inc("connect_failed")
        return
    line = first_line(s)
    results.inc("served" if line.startswith("SSH-") else "refused")
    deadline = time.time() + hold
    for byte in b"SSH-2.0-slowpoke-" + b"x" * 200:
        if time.time() > deadline:
            break
        try:
            s.send(bytes([byte]))
        except OSError:
            break
        time.sleep(1)
    s.close()


def bad_key(host, port, source, key, results):
    try:
        s = connect(host, port, source)
    except OSError:
        results.inc("connect_failed")
        return
    t = paramiko.Transport(s)
    try:
        t.start_client(timeout=5)
        results.inc("served")
        results.inc("bad_key_logins")
        t.auth_publickey("alice", key)
    except Exception:
        results.inc("refused_or_failed_login")
    finally:
        t.close()


def main():
    host, port, source = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    count, hold = int(sys.argv[4]), float(sys.argv[5])
    results = {k: 0 for k in ("connect_failed", "refused", "served", "bad_key_logins", "refused_or_failed_login")}
    shared = Tally(results)
    # One key the bastion has never seen, made once (RSA generation is slow).
    key = paramiko.RSAKey.generate(2048)
    threads = []
    started = time.time()
    for i in range(count):
        kind = i % 3
        if kind == 0:
            t = threading.Thread(target=half_open, args=(host, port, source, hold, shared))
        elif kind == 1:
            t = threading.Thread(target=slow_sender, args=(host, port, source, hold, shared))
        else:
            t = threading.Thread(target=bad_key, args=(host, port, source, key, shared))
        t.daemon = True
        t.start()
        threads.append(t)
        time.sleep(0.005)
    for t in threads:
        t.join(timeout=max(0.0, started + hold + 15 - time.time()))
    results["connections"] = count
    results["seconds"] = round(time.time() - started, 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()

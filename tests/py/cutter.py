"""An ssh ProxyCommand that relays one OpenSSH client connection to the bastion and ends it at
a chosen phase of the SSH handshake: the lifecycle tests' way of producing connections that
end at every step (tests/lifecycle.rs).

usage: cutter.py HOST PORT PHASE [--hold] [--rst] [--bind IP] [--proxy-source IP:PORT]
                 [--report FILE] [--max-seconds N]

The client side is stdin/stdout (ssh runs this as its ProxyCommand, one connection per run);
the bastion side is a TCP connection to HOST:PORT, from --bind if given. With --proxy-source
the relay plays the trusted load balancer: it first sends a PROXY protocol v2 header naming
that address as the client.

Until NEWKEYS the SSH binary packet protocol is plaintext (RFC 4253 section 6: uint32
packet_length, byte padding_length, then the payload, whose first byte is the message code),
so the relay forwards the client's stream packet by packet and knows where it is. PHASE:

  before-version  the bastion connection is opened (and the PROXY header sent), nothing else.
                  A cut closes it at once; a hold first waits for the bastion's version line
                  (proof that the bastion took the connection) and forwards nothing.
  mid-version     the first half of the client's version line is forwarded, then the end.
  after-kexinit   forwarded up to and including the client's KEXINIT (message 20).
  mid-kex         forwarded up to and including the client's KEX_ECDH_INIT (message 30); the
                  bastion's reply never reaches the client.
  after-newkeys   forwarded up to and including the client's NEWKEYS (message 21).
  silent          connected, not even a PROXY header is sent (use with --hold).
  pass            no cut: relays both ways until either side closes.

At the phase the relay either cuts (closes the bastion socket, with a TCP RST if --rst, and
exits: ssh sees its ProxyCommand end) or, with --hold, stops forwarding in both directions but
keeps the connection open until the bastion closes it (or --max-seconds pass).

--report FILE gets one JSON object per line, each with "at" (Unix time): {"event": "cut"}, {"event": "held"}, then
{"event": "server-closed", "after": SECONDS} for a hold; {"event": "ended-early", "detail": ...}
if the stream ended before the phase was reached (exit status 3); {"event": "gave-up"} when a
hold ran out of time (exit status 4). Every run is bounded by --max-seconds (default 30).
"""

import argparse
import json
import os
import select
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proxy_connect import header  # noqa: E402  (the PROXY v2 header, as the other tests send it)

MSG_KEXINIT = 20
MSG_NEWKEYS = 21
MSG_KEX_ECDH_INIT = 30
PHASE_CODES = {
    "after-kexinit": MSG_KEXINIT,
    "mid-kex": MSG_KEX_ECDH_INIT,
    "after-newkeys": MSG_NEWKEYS,
}
PHASES = ["before-version", "mid-version", "silent", "pass"] + list(PHASE_CODES)
# A plaintext packet longer than this means we lost the framing.
MAX_PACKET = 256 * 1024


class Relay:
    def __init__(self, args):
        self.args = args
        self.started = time.monotonic()
        self.deadline = self.started + args.max_seconds
        self.sock = None

    def report(self, **event):
        event["at"] = round(time.time(), 3)
        if self.args.report:
            with open(self.args.report, "a") as f:
                f.write(json.dumps(event) + "\n")

    def remaining(self):
        return max(0.0, self.deadline - time.monotonic())

    def connect(self):
        source = (self.args.bind, 0) if self.args.bind else None
        self.sock = socket.create_connection(
            (self.args.host, self.args.port), timeout=10, source_address=source
        )
        self.sock.settimeout(None)
        if self.args.proxy_source and self.args.phase != "silent":
            ip, _, port = self.args.proxy_source.rpartition(":")
            self.sock.sendall(header(ip, int(port), self.sock.getpeername()[0], self.args.port))

    def end_early(self, detail):
        self.report(event="ended-early", detail=detail)
        sys.exit(3)

    def act(self):
        """The phase is reached: cut or hold."""
        if self.args.hold:
            self.hold()
        self.cut()

    def cut(self):
        if self.args.rst:
            # SO_LINGER with a zero timeout: close() sends a RST instead of a FIN.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
        self.report(event="cut")
        sys.exit(0)

    def hold(self):
        self.report(event="held")
        held = time.monotonic()
        while True:
            left = self.remaining()
            if left <= 0:
                self.report(event="gave-up")
                sys.exit(4)
            readable, _, _ = select.select([self.sock], [], [], left)
            if not readable:
                continue
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                self.report(event="server-closed", after=round(time.monotonic() - held, 3))
                sys.exit(0)

    def wait_server_version(self):
        buf = b""
        while b"\n" not in buf:
            left = self.remaining()
            if left <= 0:
                self.end_early("no version line from the bastion")
            readable, _, _ = select.select([self.sock], [], [], left)
            if readable:
                data = self.sock.recv(4096)
                if not data:
                    self.end_early("the bastion closed before its version line")
                buf += data

    def run(self):
        phase = self.args.phase
        self.connect()
        if phase == "silent":
            time.sleep(0.3)
            self.hold()
        if phase == "before-version":
            if self.args.hold:
                self.wait_server_version()
            self.act()
        target = PHASE_CODES.get(phase)
        pending = b""  # client bytes not forwarded yet
        version_done = False
        encrypted = False
        stdin_open = True
        while True:
            left = self.remaining()
            if left <= 0:
                self.end_early(f"phase {phase} not reached within {self.args.max_seconds}s")
            watch = [self.sock] + ([0] if stdin_open else [])
            readable, _, _ = select.select(watch, [], [], left)
            if self.sock in readable:
                try:
                    data = self.sock.recv(65536)
                except OSError as e:
                    data, err = b"", str(e)
                else:
                    err = "EOF"
                if not data:
                    if phase == "pass":
                        sys.exit(0)
                    self.end_early(f"the bastion closed first ({err})")
                os.write(1, data)
            if 0 in readable:
                data = os.read(0, 65536)
                if not data:
                    if phase == "pass":
                        stdin_open = False
                        self.sock.shutdown(socket.SHUT_WR)
                        continue
                    self.end_early("the client closed first")
                if phase == "pass":
                    self.sock.sendall(data)
                    continue
                pending += data
                if not version_done:
                    end = pending.find(b"\n")
                    if end < 0:
                        continue
                    line, pending = pending[: end + 1], pending[end + 1 :]
                    if phase == "mid-version":
                        self.sock.sendall(line[: len(line) // 2])
                        self.act()
                    self.sock.sendall(line)
                    version_done = True
                while not encrypted and len(pending) >= 6:
                    (length,) = struct.unpack("!I", pending[:4])
                    if length > MAX_PACKET:
                        self.end_early(f"lost the packet framing (length {length})")
                    if len(pending) < 4 + length:
                        break
                    packet, pending = pending[: 4 + length], pending[4 + length :]
                    code = packet[5]
                    self.sock.sendall(packet)
                    if code == target:
                        self.act()
                    if code == MSG_NEWKEYS:
                        encrypted = True
                if encrypted and pending:
                    self.sock.sendall(pending)
                    pending = b""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("phase", choices=PHASES)
    p.add_argument("--hold", action="store_true")
    p.add_argument("--rst", action="store_true")
    p.add_argument("--bind")
    p.add_argument("--proxy-source")
    p.add_argument("--report")
    p.add_argument("--max-seconds", type=float, default=30.0)
    Relay(p.parse_args()).run()


if __name__ == "__main__":
    main()

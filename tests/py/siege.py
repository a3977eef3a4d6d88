"""Many hostile sources at once against the bastion's pre-authentication slots (the siege tests
in tests/hardening.rs). Each of CONCURRENCY workers loops: connect from the next address of
the pool, send nothing (past a PROXY v2 header naming that address, with --proxy), read until
the server closes, then wait PAUSE seconds and go again.

  slowloris  PAUSE 1 s: every connection holds its slot as long as the server lets it.
  flood      PAUSE 0: reconnect at once, as fast as this process can.

Addresses come from a pool of POOL addresses, 10.128.0.1, 10.128.1.1, ... (each in a /24 of its
own, so per-network caps cannot help); the test adds them to the client namespace (or, with
--proxy, they only appear in the headers, sent from the one trusted balancer address). Each
connection takes the next address, so until the pool wraps every connection has a fresh one.

Bounded: the run ends after SECONDS; each connection is closed after at most --max-hold s.

usage: siege.py HOST PORT MODE SECONDS CONCURRENCY POOL [--proxy FROM_ADDRESS] [--max-hold S]
prints a JSON summary: connections opened, served (got the server's version line), refused
(closed without one), connect errors, and the run's length.
"""

import argparse
import asyncio
import ipaddress
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proxy_connect import header  # noqa: E402  (the PROXY v2 header, as the other tests send it)

POOL_BASE = int(ipaddress.ip_address("10.128.0.1"))


def pool_address(i):
    """The i-th address of the pool: 10.128.0.1, 10.128.1.1, ... one per /24."""
    return str(ipaddress.ip_address(POOL_BASE + (i << 8)))


class Siege:
    def __init__(self, args):
        self.args = args
        self.next = 0
        self.counts = {"opened": 0, "served": 0, "refused": 0, "connect_errors": 0}
        self.deadline = time.monotonic() + args.seconds

    def address(self):
        a = pool_address(self.next % self.args.pool)
        self.next += 1
        return a

    async def one(self, source):
        """One connection from `source`: open, (header), read until closed."""
        bind = self.args.proxy or source
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.args.host, self.args.port, local_addr=(bind, 0)),
                timeout=5,
            )
        except (OSError, asyncio.TimeoutError):
            self.counts["connect_errors"] += 1
            return
        self.counts["opened"] += 1
        try:
            if self.args.proxy:
                writer.write(header(source, 40000, self.args.host, self.args.port))
            hold = min(self.args.max_hold, max(0.0, self.deadline - time.monotonic()))
            first = await asyncio.wait_for(reader.read(64), timeout=hold)
            self.counts["served" if first.startswith(b"SSH-") else "refused"] += 1
            while first:
                left = min(self.args.max_hold, self.deadline - time.monotonic())
                if left <= 0:
                    break
                first = await asyncio.wait_for(reader.read(4096), timeout=left)
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    async def worker(self):
        while time.monotonic() < self.deadline:
            await self.one(self.address())
            if self.args.mode == "slowloris":
                await asyncio.sleep(1.0)

    async def run(self):
        started = time.monotonic()
        await asyncio.gather(*(self.worker() for _ in range(self.args.concurrency)))
        self.counts["seconds"] = round(time.monotonic() - started, 2)
        return self.counts


def main():
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("mode", choices=["slowloris", "flood"])
    p.add_argument("seconds", type=float)
    p.add_argument("concurrency", type=int)
    p.add_argument("pool", type=int)
    p.add_argument("--proxy", metavar="FROM_ADDRESS")
    p.add_argument("--max-hold", type=float, default=30.0)
    args = p.parse_args()
    if not (0 < args.seconds <= 120 and 0 < args.concurrency <= 1000 and 0 < args.pool <= 32768):
        sys.exit("siege.py: SECONDS, CONCURRENCY or POOL out of bounds")
    counts = asyncio.run(Siege(args).run())
    print(json.dumps(counts))


if __name__ == "__main__":
    socket.setdefaulttimeout(10)
    main()

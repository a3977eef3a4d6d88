"""Opens session channels on one authenticated connection, more than the bastion allows, the
way a hostile client would (the OpenSSH client opens one). Then a direct-tcpip channel while
at the limit, then again after closing one session channel. Prints a JSON summary.

usage: channels_probe.py HOST PORT USER KEYFILE SESSIONS TARGET TARGET_PORT
"""

import json
import socket
import sys
import time

import paramiko


def outcome(open_channel):
    try:
        open_channel()
        return "open"
    except paramiko.ChannelException as e:
        return f"refused {e.code}: {e.text}"


def main():
    host, port, user, keyfile, sessions, target, target_port = sys.argv[1:8]
    sock = socket.create_connection((host, int(port)), timeout=10)
    transport = paramiko.Transport(sock)
    transport.start_client(timeout=10)
    transport.auth_publickey(user, paramiko.Ed25519Key.from_private_key_file(keyfile))
    held = []

    def session():
        held.append(transport.open_session(timeout=10))

    def tunnel():
        held.append(
            transport.open_channel(
                "direct-tcpip", (target, int(target_port)), ("127.0.0.1", 1), timeout=10
            )
        )

    summary = {"sessions": [outcome(session) for _ in range(int(sessions))]}
    summary["tunnel_at_limit"] = outcome(tunnel)
    held[0].close()
    # The bastion gives the slot back once it has seen the close: retry for a few seconds.
    deadline = time.monotonic() + 5
    while True:
        summary["tunnel_after_close"] = outcome(tunnel)
        if summary["tunnel_after_close"] == "open" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    transport.close()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

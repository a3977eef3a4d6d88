"""Tries the authentication methods a hardened bastion must refuse (none, password,
keyboard-interactive), sending each request whatever the server advertises, which the OpenSSH
client would not do. Prints a JSON summary; exits 0 only if every method was refused.

usage: auth_probe.py HOST PORT USER
"""

import json
import socket
import sys

import paramiko


def attempt(host, port, user, method):
    sock = socket.create_connection((host, port), timeout=10)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=10)
        if method == "none":
            transport.auth_none(user)
        elif method == "password":
            transport.auth_password(user, "hunter2", fallback=False)
        elif method == "keyboard-interactive":
            transport.auth_interactive(user, lambda title, instr, prompts: ["hunter2"] * len(prompts))
        return {"accepted": transport.is_authenticated()}
    except paramiko.BadAuthenticationType as e:
        return {"accepted": False, "allowed": list(e.allowed_types)}
    except paramiko.AuthenticationException as e:
        return {"accepted": False, "error": str(e)}
    finally:
        transport.close()


def main():
    host, port, user = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    results = {m: attempt(host, port, user, m) for m in ("none", "password", "keyboard-interactive")}
    print(json.dumps(results))
    sys.exit(1 if any(r["accepted"] for r in results.values()) else 0)


if __name__ == "__main__":
    main()

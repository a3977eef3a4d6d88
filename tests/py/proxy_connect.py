"""An ssh ProxyCommand that plays a load balancer: connects to HOST:PORT (from SOURCE if
given), sends a PROXY protocol v2 header naming CLIENT_IP:CLIENT_PORT as the client, then
relays stdin/stdout both ways until either side closes.

usage: proxy_connect.py HOST PORT CLIENT_IP CLIENT_PORT [SOURCE_ADDRESS]
"""

import ipaddress
import os
import socket
import struct
import sys
import threading

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def header(client_ip, client_port, server_ip, server_port):
    src, dst = ipaddress.ip_address(client_ip), ipaddress.ip_address(server_ip)
    if src.version == 4:
        family, body = 0x11, src.packed + dst.packed + struct.pack("!HH", client_port, server_port)
    else:
        family, body = 0x21, src.packed + dst.packed + struct.pack("!HH", client_port, server_port)
    return SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    client_ip, client_port = sys.argv[3], int(sys.argv[4])
    source = (sys.argv[5], 0) if len(sys.argv) > 5 else None
    s = socket.create_connection((host, port), timeout=10, source_address=source)
    s.settimeout(None)
    server_ip = s.getpeername()[0]
    s.sendall(header(client_ip, client_port, server_ip, port))

    def upstream():
        while True:
            data = os.read(0, 65536)
            if not data:
                s.shutdown(socket.SHUT_WR)
                return
            s.sendall(data)

    threading.Thread(target=upstream, daemon=True).start()
    while True:
        data = s.recv(65536)
        if not data:
            return
        os.write(1, data)


if __name__ == "__main__":
    main()

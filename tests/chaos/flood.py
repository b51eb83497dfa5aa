"""Hostile on-link sender for the chaos runs: CARP-shaped packets at a fixed rate.

Run inside a test's client namespace: ``flood.py KIND PPS SECONDS PASSWORD VIP``. Kinds:
``garbage`` (random proto-112 payloads), ``wrong_hmac``, ``foreign_vhid``, ``replay`` (one valid
advert of a worse node, advskew 100, replayed from random source addresses — the HMAC covers
neither), ``mixed`` (all four in turn). Frames are built ahead of time (a pool of 512) so the
rate holds at 20k pps on one core. Prints the number of frames the kernel accepted.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import sys
import time
from ipaddress import IPv4Address

from sidecar.core.auth import DEFAULT_GROUP
from sidecar.core.protocol import (
    Advert,
    build_frame,
    build_ip_packet,
    internet_checksum,
)

POOL = 512


def random_source(rng: random.Random) -> IPv4Address:
    return IPv4Address(bytes([172, 16, rng.randrange(1, 255), rng.randrange(1, 255)]))


def frames(kind: str, key: bytes, vip: IPv4Address, rng: random.Random) -> list[bytes]:
    out = []
    replayed = build_ip_packet(Advert(vhid=1, advbase=1, advskew=100, counter=0x1234),
                               key=key, vip=vip, src=IPv4Address("172.16.0.12"),
                               dst=DEFAULT_GROUP, ident=1)
    for i in range(POOL):
        k = ("garbage", "wrong_hmac", "foreign_vhid", "replay")[i % 4] if kind == "mixed" else kind
        src = random_source(rng)
        if k == "garbage":
            payload = os.urandom(rng.randrange(0, 60))
            header = struct.pack("!BBHHHBBH4s4s", 0x45, 0x10, 20 + len(payload), i, 0x4000, 255,
                                 112, 0, src.packed, DEFAULT_GROUP.packed)
            header = header[:10] + internet_checksum(header).to_bytes(2, "big") + header[12:]
            packet = header + payload
        elif k == "replay":
            header = bytearray(replayed[:20])
            header[12:16], header[10:12] = src.packed, b"\0\0"
            header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
            packet = bytes(header) + replayed[20:]
        else:
            advert = Advert(vhid=99 if k == "foreign_vhid" else 1, advbase=1, advskew=0,
                            counter=rng.getrandbits(64))
            packet = build_ip_packet(advert, key=b"not-the-key" if k == "wrong_hmac" else key,
                                     vip=vip, src=src, dst=DEFAULT_GROUP, ident=i)
        out.append(build_frame(packet, vhid=1, group=DEFAULT_GROUP, broadcast=False))
    return out


def main() -> int:
    kind, pps, seconds, password, vip = sys.argv[1:6]
    pool = frames(kind, password.encode(), IPv4Address(vip), random.Random(7))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind(("eth0", 0))
    rate, end, sent, delivered = float(pps), time.monotonic() + float(seconds), 0, 0
    start = time.monotonic()
    while (now := time.monotonic()) < end:
        due = int((now - start) * rate)
        while sent < due:
            try:
                sock.send(pool[sent % POOL])
                delivered += 1
            except OSError:  # a full queue: not sent, go on at the same rate
                pass
            sent += 1
        time.sleep(0.002)
    print(delivered)
    return 0


if __name__ == "__main__":
    sys.exit(main())

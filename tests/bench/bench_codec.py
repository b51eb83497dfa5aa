#!/usr/bin/env python3
"""Codec and start-up figures (printed, never asserted).

- parse + HMAC verify of real-format adverts per second on one core (target >= 50,000/s)
- `python -c "import sidecar.core.protocol, sidecar.core.machine"` wall time, median of 15 (target < 150 ms),
  next to a bare `python -c pass` measured in the same run
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Address

from sidecar.core.auth import carp_key
from sidecar.core.protocol import Advert, Expect, build_ip_packet, parse_packet


def parse_rate(seconds: float = 2.0) -> float:
    vip, key = IPv4Address("172.16.0.1"), carp_key("geheim")
    packets = [build_ip_packet(Advert(1, 1, 0, counter=i), key=key, vip=vip,
                               src=IPv4Address("172.16.0.11")) for i in range(1000)]
    expect = Expect(vhid=1, key=key, vip=vip)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for p in packets:
            parse_packet(p, expect)
        done += len(packets)
    return done / (time.perf_counter() - start)


def import_ms(code: str, runs: int = 15) -> float:
    samples = []
    for _ in range(runs + 1):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples[1:])


def main() -> None:
    rate = parse_rate()
    imports = import_ms("import sidecar.core.protocol, sidecar.core.machine")
    bare = import_ms("pass")
    print(f"parse + HMAC verify: {rate:,.0f} adverts/s on one core (target >= 50,000; "
          f"{rate / 50000:.1f}x the target)")
    print(f"import sidecar.core.protocol, sidecar.core.machine: {imports:.0f} ms median "
          f"(bare interpreter {bare:.0f} ms; target < 150 ms)")
    print(json.dumps({"parse_verify_per_s": round(rate), "import_ms": round(imports, 1),
                      "bare_python_ms": round(bare, 1)}))


if __name__ == "__main__":
    main()

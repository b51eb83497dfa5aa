"""The VIP seen from outside the nodes, as Prometheus users watch it: Debian's
prometheus-blackbox-exporter in the client namespace, probing ``http://VIP/`` (module
``http_2xx``, as in deploy/prometheus/blackbox.yml) when Prometheus asks it to.

``start_blackbox(topo, work_dir)`` starts it on 127.0.0.1:9115 of the client namespace;
``scrape_config(vip)`` is the Prometheus job that probes the VIP through it (``probe_success``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from sidecar.lab.netns import Topology

BLACKBOX = "prometheus-blackbox-exporter"
LISTEN = "127.0.0.1:9115"
# one probe per scrape, answered well before the next (the lab scrapes every second)
CONFIG = """modules:
  http_2xx:
    prober: http
    timeout: 900ms
    http:
      method: GET
      no_follow_redirects: true
      preferred_ip_protocol: ip4
"""


def available() -> bool:
    return shutil.which(BLACKBOX) is not None


def start_blackbox(topo: Topology, work_dir: Path, host: str = "client") -> subprocess.Popen[bytes]:
    """The exporter in ``host``'s namespace (the client: outside the CARP nodes)."""
    conf = work_dir / "blackbox.yml"
    conf.write_text(CONFIG)
    return topo.start(host, [BLACKBOX, f"--config.file={conf}", f"--web.listen-address={LISTEN}"],
                      log=work_dir / "blackbox.log")


def probe_url(vip: str) -> str:
    """What Prometheus asks the exporter (curl it from the client namespace)."""
    return f"http://{LISTEN}/probe?module=http_2xx&target=http://{vip}/"


def scrape_config(vip: str, group: str, interval: str = "1s") -> str:
    """The Prometheus job (YAML, under scrape_configs:) probing ``http://vip/``; ``group``
    labels it as the agents label their series, so dashboard panels select it with $group."""
    target = f"http://{vip}/"
    return f"""  - job_name: blackbox-vip
    metrics_path: /probe
    params: {{module: [http_2xx]}}
    scrape_interval: {interval}
    scrape_timeout: {interval}
    static_configs:
      - targets: [{json.dumps(target)}]
        labels: {{group: {json.dumps(group)}}}
    relabel_configs:
      - source_labels: [__address__]
        target_label: __param_target
      - source_labels: [__param_target]
        target_label: instance
      - target_label: __address__
        replacement: {LISTEN}
"""

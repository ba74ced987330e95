"""Run one agent node in its own process for the wallet tests (argv: HOME PORT).

Stand-in for ``sov-node serve`` until the node's CLI lands: it uses the node's public entry
points (``agent_node.home.load_home`` + ``agent_node.server.start``), prints ``READY <port>``
once the TLS gRPC server listens, and serves until it is terminated.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from agent_node.home import load_home
from agent_node.server import start


def main() -> None:
    home, port = Path(sys.argv[1]), int(sys.argv[2])
    node = start(load_home(home, os.environ["SOV_NODE_PASSPHRASE"]), address=f"127.0.0.1:{port}")
    print(f"READY {node.port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()

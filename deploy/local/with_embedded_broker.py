"""Run a command against the embedded dev broker (Tansu, memory-only):

    python -m deploy.local.with_embedded_broker -- pytest tests/integration/...

Sets KAFKA_BOOTSTRAP_SERVERS for the command, with the settings that broker needs:
no idempotent producer (it has no InitProducerId) and a short group session timeout
(each group join there takes about half of it)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from deploy.local.embedded import EmbeddedBroker, install_signal_handlers


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    install_signal_handlers()
    with tempfile.TemporaryDirectory(prefix="caseflow-tansu-") as work, EmbeddedBroker(port=0, work_dir=Path(work)) as broker:
        env = dict(
            os.environ,
            KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
            KAFKA_ENABLE_IDEMPOTENCE="false",
            KAFKA_SESSION_TIMEOUT_MS="3000",
            KAFKA_HEARTBEAT_INTERVAL_MS="500",
        )
        return subprocess.run(argv, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

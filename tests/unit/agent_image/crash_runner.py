"""Run crash_bundle workflows to completion in this process (which the crash tests kill -9 and restart).

usage: crash_runner.py DB WORKFLOWS NAP
Starts workflows w0..w{WORKFLOWS-1} (idempotently), sends each its "go" message once it waits in recv,
and prints a JSON map of results when all are done."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import crash_bundle

from agent_image import Runtime
from agent_image.logs import configure_logging

BONUS = 7


def main() -> None:
    db, count, nap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    configure_logging("WARNING")
    runtime = Runtime(db, crash_bundle)
    runtime.recover()
    ids = [f"w{i}" for i in range(count)]
    for workflow_id in ids:
        runtime.start(crash_bundle.pipeline, (nap,), id=workflow_id)
    sent: set[str] = set()
    delay = float(os.environ.get("CRASH_RECV_DELAY", "0.05"))
    while True:
        statuses = {wid: runtime.get(wid) for wid in ids}
        if all(s.status == "SUCCESS" for s in statuses.values()):
            break
        bad = [s for s in statuses.values() if s.status not in ("RUNNING", "SUCCESS")]
        if bad:
            raise SystemExit(f"workflow ended badly: {bad}")
        for wid in ids:
            waiting = any(step.kind == "recv.wait" for step in runtime.steps(wid))
            if wid not in sent and waiting:
                time.sleep(delay)  # a window for the killer while the workflow waits in recv
                runtime.send(wid, {"bonus": BONUS}, "go")
                sent.add(wid)
        time.sleep(0.01)
    print(json.dumps({wid: s.result for wid, s in statuses.items()}))
    runtime.close()


if __name__ == "__main__":
    main()

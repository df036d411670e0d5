"""A supervisord program for the lifecycle test: records how it was stopped.

At SIGTERM it appends ``restart`` or ``shutdown`` (``Lifecycle.shutting_down()``)
to the file named by its argument, the way a real worker decides whether to
keep or tear down its kernel state.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from anchord.lifecycle import Lifecycle


def main() -> None:
    out = Path(sys.argv[1])
    life = Lifecycle(Path(os.environ["ANCHORD_RUN_DIR"]))
    life.install_signal_handlers()
    with out.open("a") as f:
        f.write(f"started {os.getpid()}\n")
    while not life.stop_requested:
        time.sleep(0.05)  # the probe has nothing else to wait on; the flag is what matters
    with out.open("a") as f:
        f.write("shutdown\n" if life.shutting_down() else "restart\n")


if __name__ == "__main__":
    main()

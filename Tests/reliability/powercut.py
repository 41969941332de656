#!/usr/bin/env python3
"""Power cuts: the crash rounds of crash.py with a simulated power loss instead of a SIGKILL
(unsynced writes dropped or torn by libStampdFaults), always on SQLite files. Takes crash.py's
options; the last line is `powercut: N passed, M failed`.

    powercut.py [--binary PATH] [--rounds N] [--seed S] [--customers C] [--owners O] [--creates K]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import crash  # noqa: E402

if __name__ == "__main__":
    sys.exit(crash.main(["--power-cut", "--database", ""] + sys.argv[1:], tag="powercut"))

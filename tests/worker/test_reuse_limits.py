"""The bounds of the warm Firework processes (pilot/worker/reuse.py): the worker's rule, and the child's check
of a process that grew, run in a process of its own (the check makes its process a subreaper, which the test
runner must not become)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pilot.worker.reuse import MAX_FIREWORKS_PER_CHILD, REUSE_BELOW_S, worker_keeps
from tests.helpers import REPO


@pytest.mark.parametrize(("completed", "ran_s", "runs", "keeps"), [
    (True, 0.01, 1, True),
    (True, REUSE_BELOW_S - 0.01, MAX_FIREWORKS_PER_CHILD - 1, True),
    (True, REUSE_BELOW_S, 1, False),                    # long enough that a fresh process costs nothing
    (True, 0.01, MAX_FIREWORKS_PER_CHILD, False),       # the bound on one process
    (False, 0.01, 1, False),                            # a failure always leaves a fresh process
])
def test_the_worker_keeps_only_short_completed_fireworks_a_bounded_number_of_times(completed, ran_s, runs, keeps):
    assert worker_keeps(completed, ran_s, runs) is keeps


CHECK = r"""
import os, signal, sys
from pilot.worker.reuse import CleanSlate, RSS_GROWTH_LIMIT_BYTES
slate = CleanSlate()
print("clean:", slate.restore())
ballast = bytearray(RSS_GROWTH_LIMIT_BYTES + 64 * 2**20)   # touched pages: resident
for i in range(0, len(ballast), 4096):
    ballast[i] = 1
print("grown:", slate.restore())
del ballast
"""


def test_a_process_whose_memory_grew_past_the_limit_takes_no_other_firework():
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, capture_output=True, text=True, timeout=60,
                         check=True).stdout.splitlines()
    assert out[0] == "clean: None"
    assert out[1].startswith("grown: its memory grew by ") and out[1].endswith(" MiB"), out
    assert int(out[1].split()[-2]) > 256

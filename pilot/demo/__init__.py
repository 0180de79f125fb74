"""``pilot demo``: a small, real MD campaign on this machine with nothing configured.

What it does, in the config directory (``--config-dir``, default ``~/.pilot``):

1. refuses a config directory that holds a configuration the demo did not write (it never overwrites a
   user's files, and never adds demo work to a user's LaunchPad);
2. starts the embedded LaunchPad server with the same code as ``pilot launchpad init`` (data in
   ``CONFIG_DIR/lpserver``, ``CONFIG_DIR/my_launchpad.yaml`` written), or reuses the one running;
3. writes ``pilot.yaml`` and ``clusters/local.yaml`` (scheduler ``local``: pilots are processes on this
   machine with a short wall time) unless the demo wrote them before;
4. measures how fast the engine runs here (a few hundred steps), then adds ``--sims`` segmented water-box
   simulations (:mod:`tasks.testsystems`, :func:`tasks.workflow.make_md_workflow`) whose length gives about
   ``--segments`` segments of ``--segment-seconds`` each;
5. runs the manager in this process (:meth:`pilot.manager.Manager.run_cycle` every ``poll_interval``) with
   a progress display until every simulation has finished, then lets the pilots drain (they leave when
   idle) and cancels any that remain: no pilot process outlives the demo;
6. prints ``pilot status`` and the throughput report, and writes ``CONFIG_DIR/report.png``.

The LaunchPad server keeps running afterwards so that ``pilot status`` and ``pilot report`` work on the
directory; ``pilot launchpad stop`` stops it.

The package, each module importing only those above it: :mod:`~pilot.demo.options` (options, sizes,
:class:`DemoError`), :mod:`~pilot.demo.directory` (steps 1-3), :mod:`~pilot.demo.watch` (the simulations'
state and the progress display), :mod:`~pilot.demo.engine` (step 4), :mod:`~pilot.demo.pilots` (stopping
the pilots) and :mod:`~pilot.demo.run` (:func:`run_demo`: setup -> loop -> teardown). It imports no click:
``pilot/cli/demo.py`` passes in how to show ``pilot status`` and where the lines go.
"""

from __future__ import annotations

from pilot.demo.options import DemoError, DemoOptions
from pilot.demo.run import run_demo

__all__ = ["DemoError", "DemoOptions", "run_demo"]

"""The web dashboard (``pilot dashboard``, issue 22): what ``pilot status`` and ``pilot report`` say, at a
glance, live, with the actions a person takes on what needs them. See ``docs/dashboard.md``.

Modules, each one thing:

* :mod:`~pilot.dashboard.tokens`: login tokens, stored as salted scrypt hashes;
* :mod:`~pilot.dashboard.sessions`: sessions and their CSRF tokens (in memory);
* :mod:`~pilot.dashboard.queries`: the paginated, indexed reads of the cluster, pilot and Firework pages;
* :mod:`~pilot.dashboard.views`: pure: a status report into the overview's rows and live numbers;
* :mod:`~pilot.dashboard.logs`: the tail of a pilot's output files, over the manager's transport;
* :mod:`~pilot.dashboard.throughput`: the trajectory rows of ``pilot report`` shaped for uPlot;
* :mod:`~pilot.dashboard.actions`: rerun, defuse, reignite, drain, resume, cancel, through the CLI's own code;
* :mod:`~pilot.dashboard.app`: the state a request needs, and each page's data;
* :mod:`~pilot.dashboard.handler`: routes, login, CSRF, headers;
* :mod:`~pilot.dashboard.server`: the LaunchPads, the address rule, TLS, the threaded server.
"""

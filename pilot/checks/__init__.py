"""Checks and set-up of a cluster: ``pilot doctor`` and ``pilot bootstrap``.

The room's modules, from the bottom up:

``probes``       the one probe code: the small scripts run on the cluster after the setup lines, how they are
                 run (:func:`~pilot.checks.probes.with_setup`) and read (:func:`~pilot.checks.probes.read_probe`),
                 and how a cluster is named in messages (:func:`~pilot.checks.probes.address_of`)
``route_probe``  the route probe: the batch job that tries each route to the LaunchPad from a compute node, and
                 how its answers and the login node's route files are read
``results``      what the doctor finds (check results per cluster) and how it reads as text
``doctor_base``, ``doctor_connection``, ``doctor_environment``, ``doctor_launchpad``, ``doctor_route``
                 the doctor's checks, grouped by what they check
``doctor``       runs them: :class:`~pilot.checks.doctor.ClusterDoctor`, :func:`~pilot.checks.doctor.run_doctor`
``progress``     the numbered step lines of a long job
``bootstrap_context``, ``bootstrap_wheels``, ``bootstrap_venv``, ``bootstrap_files``
                 bootstrap's steps: shared context, wheels built here, the venv on the cluster, the files written
``bootstrap``    runs them: :func:`~pilot.checks.bootstrap.bootstrap`

Callers import from ``pilot.checks.doctor``, ``pilot.checks.bootstrap`` and ``pilot.checks.probes`` (each
keeps an explicit ``__all__``); nothing is imported here, so that ``pilot status`` (which needs only
:func:`~pilot.checks.probes.address_of`) does not load the doctor or bootstrap.
"""

__all__: list[str] = []

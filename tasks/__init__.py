"""FireTasks for segmented MD runs, staging and pull.

Modules, imports pointing down only: ``workflow`` (make_md_workflow; loads the engines by name) ->
``gromacs``, ``openmm`` (engine FireTasks) -> ``segment`` (the engine-neutral segment and ``ContinueTask``)
-> ``chain`` (what comes after a segment) -> ``staging`` (StageTask, PullTask) -> ``contract`` (spec keys,
environment names, outcomes). ``testsystems`` builds tiny inputs for tests and first tries. Stored workflows
name the FireTasks by module path (``{{tasks.segment.ContinueTask}}``, ...): those paths stay.
"""

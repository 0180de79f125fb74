"""``pilot submit`` and ``pilot cancel``: pilots by hand, tracked like the manager's own."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from pilot.cli import AppContext
    from pilot.manager.cycle import Manager
    from pilot.manager.runtime import ClusterRuntime


def _manager(obj: AppContext, cluster: str) -> tuple[Manager, ClusterRuntime]:
    """A manager for the config dir, and its runtime of ``cluster`` (click.ClickException: no such cluster)."""
    from pilot.cli.manager import load_manager_inputs
    from pilot.manager.cycle import Manager

    config, lp, _ = load_manager_inputs(obj)
    if cluster not in config.clusters:
        known = ", ".join(sorted(config.clusters)) or "none"
        raise click.ClickException(f"no cluster named {cluster!r} in {obj.config_dir / 'clusters'} (known: {known})")
    mgr = Manager(config, lp)
    return mgr, mgr.clusters[cluster]


@click.command("submit")
@click.argument("cluster")
@click.option("--category", "-c", default=None, help="Category the pilots serve (default: the cluster's first).")
@click.option("--profile", "-p", default=None, help="Queue profile of the pilots (default: the cluster's first).")
@click.option("-n", "count", default=1, show_default=True, type=click.IntRange(1, 1000), help="How many pilots.")
@click.option("--json", "as_json", is_flag=True, help="Print the submitted pilots as JSON.")
@click.pass_obj
def submit_cmd(obj: AppContext, cluster: str, category: str | None, profile: str | None, count: int,
               as_json: bool) -> None:
    """Upload the pilot script and submit COUNT pilots to CLUSTER now, printing their job ids.

    The pilots are recorded like the manager's own, so the manager counts them and reruns their work if
    they die.
    """
    from pilot.manager.runtime import CycleReport

    mgr, rt = _manager(obj, cluster)
    cats = list(rt.config.categories)
    category = category or cats[0]
    if category not in cats:
        raise click.ClickException(f"cluster {cluster} does not serve category {category!r} "
                                   f"(its categories: {', '.join(cats)})")
    profiles = list(rt.config.pilot_profiles)
    if profile is not None and profile not in profiles:
        raise click.ClickException(f"cluster {cluster} has no queue profile {profile!r} (its profiles: "
                                   f"{', '.join(profiles)})")
    if profile is not None and category not in rt.config.profile_categories(profile):
        raise click.ClickException(f"queue profile {profile!r} of cluster {cluster} does not serve category "
                                   f"{category!r} (the profiles that do: "
                                   f"{', '.join(rt.config.profiles_for(category))})")
    report = CycleReport(started=0.0)
    try:
        for _ in range(count):
            if not mgr.submit(rt, category, report, profile):
                break
    finally:
        mgr.close()
    if as_json:
        click.echo(json.dumps({"submitted": report.submitted, "errors": report.errors}))
    else:
        for s in report.submitted:
            click.echo(f"{s['job_id']}\t{s['job_name']}")
    if report.errors or len(report.submitted) < count:
        err = report.errors.get(cluster, "see the log")
        raise click.ClickException(f"submitted {len(report.submitted)} of {count} pilots to {cluster}: {err}")


@click.command("cancel")
@click.argument("cluster")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Cancel every live pilot of this manager on CLUSTER.")
@click.pass_obj
def cancel_cmd(obj: AppContext, cluster: str, job_ids: tuple[str, ...], all_: bool) -> None:
    """Cancel pilots on CLUSTER: the given JOB_IDS, or --all of ours (never other jobs of the user)."""
    from pilot.manager.cancel import cancel_pilots
    from pilot.transport import TransportError

    if bool(job_ids) == all_:
        raise click.UsageError("give JOB_IDS or --all (one of the two)")
    mgr, rt = _manager(obj, cluster)
    try:
        outcome = cancel_pilots(mgr.records, rt, list(job_ids) if job_ids else None)
    except TransportError as e:
        raise click.ClickException(str(e)) from None
    finally:
        mgr.close()
    result = outcome.result
    if result is None:
        click.echo(f"no live pilots on {cluster}")
        return
    for jid in result.cancelled:
        click.echo(f"{jid}\tcancelled")
    for jid in result.already_gone:
        click.echo(f"{jid}\talready gone")
    if not result.ok:
        raise click.ClickException(f"cancel on {cluster} failed: {result.reason}")

"""Configuration: good files load, every bad file gets a message with file, field and fix; CLI init/check/render.

Wall-time formats and their values come from the schedulers' documentation:
- SLURM sbatch(1), --time: "Acceptable time formats include "minutes", "minutes:seconds",
  "hours:minutes:seconds", "days-hours", "days-hours:minutes" and "days-hours:minutes:seconds"."
  https://slurm.schedmd.com/sbatch.html#OPT_time
- LSF bsub -W: "The run limit is in the form of [hour:]minute. The minutes can be specified as a number
  greater than 59. For example, three and a half hours can either be specified as 3:30, or 210."
  https://www.ibm.com/docs/en/spectrum-lsf/10.1.0?topic=options-w
- PBS Pro walltime is a duration "[[hours:]minutes:]seconds[.milliseconds]" (PBS Professional Reference
  Guide, "Resources": walltime); a bare number is seconds.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel

from pilot.cli import main as cli_main
from pilot.config import (
    BackoffConfig,
    ClusterConfig,
    Config,
    ConfigError,
    Limits,
    PilotConfig,
    PilotResources,
    Scheduler,
    format_walltime,
    load_cluster,
    load_config,
    load_pilot_config,
    parse_memory_mb,
    parse_walltime,
)


# ----------------------------------------------------------------------------------------- helpers
@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A fake SSH key and known_hosts (validation checks that they exist, not what they hold)."""
    key = tmp_path / "id_ed25519"
    key.write_text("not a real key\n")
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    lp = tmp_path / "my_launchpad.yaml"
    lp.write_text("host: localhost\n")
    return {"key": key, "known_hosts": kh, "launchpad": lp}


def stampede(files: dict[str, Path]) -> dict[str, Any]:
    """The example cluster file of the task description (clusters/stampede.yaml)."""
    return {
        "host": "login.stampede.example.org", "user": "alice", "port": 22,
        "identity_file": str(files["key"]), "proxy_jump": None, "strict_host_key_checking": True,
        "known_hosts": str(files["known_hosts"]), "scheduler": "slurm", "categories": ["md"],
        "launchpad_file": "/home/alice/.pilot/my_launchpad.yaml", "work_dir": "/scratch/alice/pilot",
        "setup": "module load gromacs/2022\nsource ~/venvs/pilot/bin/activate\n",
        "pilot": {"walltime": "24:00:00", "nodes": 1, "cores": 68, "memory": None, "partition": "normal",
                  "account": None, "qos": None, "extra_directives": []},
        "walltime_margin": 600, "limits": {"max_queued": 10, "max_running": 20, "min_pilots": 0},
        "template": None,
    }


def write_config(root: Path, pilot: dict[str, Any] | str | None, clusters: dict[str, dict[str, Any] | str]) -> Path:
    cdir = root / "cfg"
    (cdir / "clusters").mkdir(parents=True, exist_ok=True)
    if pilot is not None:
        (cdir / "pilot.yaml").write_text(pilot if isinstance(pilot, str) else yaml.safe_dump(pilot))
    for name, data in clusters.items():
        fname = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
        (cdir / "clusters" / fname).write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return cdir


def problems_of(cdir: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(cdir)
    return [str(p) for p in info.value.problems]


# ----------------------------------------------------------------------------------------- good configs
def test_the_documented_example_loads(tmp_path, files):
    cdir = write_config(tmp_path, {"launchpad_file": str(files["launchpad"]), "poll_interval": 60,
                                   "log_dir": "logs"}, {"stampede": stampede(files)})
    cfg = load_config(cdir)
    assert isinstance(cfg, Config) and cfg.config_dir == cdir
    assert list(cfg.clusters) == ["stampede"]
    st = cfg.clusters["stampede"]
    assert st.scheduler is Scheduler.SLURM
    assert st.walltime_seconds == 24 * 3600
    assert st.pilot.cores == 68 and st.pilot.partition == "normal"
    assert st.limits.max_queued == 10 and st.limits.max_running == 20
    assert st.source_file == cdir / "clusters" / "stampede.yaml"
    assert st.worker_argv == ["pilot", "worker"]
    assert cfg.pilot.log_dir == cdir / "logs"          # relative to the config directory
    assert cfg.pilot.max_reruns == 3 and cfg.pilot.job_name_prefix == "fwp"
    assert cfg.categories == ["md"]


def test_defaults_and_tilde_expansion(tmp_path, files, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "known_hosts").write_text("")
    (tmp_path / ".ssh" / "id_ed25519").write_text("k")
    minimal = {"host": "h.example.org", "scheduler": "pbs", "categories": ["md", "analysis"],
               "launchpad_file": "~/.pilot/lp.yaml", "work_dir": "/scratch/p", "identity_file": "~/.ssh/id_ed25519",
               "pilot": {"walltime": "01:00:00"}}
    cdir = write_config(tmp_path, "", {"c1": minimal})   # empty pilot.yaml: all defaults
    cfg = load_config(cdir)
    c = cfg.clusters["c1"]
    assert c.known_hosts == tmp_path / ".ssh" / "known_hosts"
    assert c.identity_file == tmp_path / ".ssh" / "id_ed25519"
    assert c.launchpad_file == "~/.pilot/lp.yaml"       # expanded by the job's shell, on the cluster
    assert (c.port, c.user, c.grace, c.idle_timeout, c.fireworks_per_pilot) == (22, None, 60, 300, 1)
    assert c.use_ssh_config is False
    # docs/configuration.md: the default is relative to the config directory
    assert cfg.pilot.launchpad_file == cdir / "my_launchpad.yaml"
    assert cfg.pilot.log_dir == cdir / "logs"
    assert cfg.pilot.poll_interval == 60
    assert cfg.categories == ["analysis", "md"]


def test_local_cluster_needs_no_ssh(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cdir = write_config(tmp_path, {}, {"laptop": {
        "scheduler": "local", "host": "localhost", "categories": ["md"], "launchpad_file": "~/lp.yaml",
        "work_dir": "~/pilot-work", "pilot": {"walltime": 600}, "walltime_margin": 60, "grace": 10}})
    c = load_config(cdir).clusters["laptop"]
    assert c.is_local and c.host is None
    assert c.work_dir == str(tmp_path / "pilot-work")
    assert c.launchpad_file == str(tmp_path / "lp.yaml")
    assert c.walltime_seconds == 600


def test_unquoted_walltime_is_not_read_as_base_60(tmp_path, files):
    """YAML 1.1 reads 24:00:00 as the integer 86400; for SLURM that would be 86400 *minutes*."""
    text = yaml.safe_dump({k: v for k, v in stampede(files).items() if k != "pilot"})
    text += "pilot:\n  walltime: 24:00:00\n  cores: 4\n"
    cdir = write_config(tmp_path, {}, {"stampede": text})
    assert load_config(cdir).clusters["stampede"].walltime_seconds == 86400


@pytest.mark.parametrize("sched, value, seconds", [
    ("slurm", "90", 90 * 60), ("slurm", 30, 30 * 60), ("slurm", "90:30", 90 * 60 + 30),
    ("slurm", "24:00:00", 86400), ("slurm", "2-12", 2 * 86400 + 12 * 3600),
    ("slurm", "2-12:30", 2 * 86400 + 12 * 3600 + 30 * 60), ("slurm", "2-12:30:15", 2 * 86400 + 45015),
    ("pbs", "24:00:00", 86400), ("pbs", 3600, 3600), ("pbs", "48:00:00", 2 * 86400), ("pbs", "10:30", 630),
    ("lsf", "3:30", 12600), ("lsf", "210", 12600), ("lsf", 210, 12600),
    ("local", "01:00:00", 3600), ("local", 45, 45),
])
def test_walltime_formats_of_each_scheduler(sched, value, seconds):
    assert parse_walltime(value, sched) == seconds


@pytest.mark.parametrize("sched, value", [
    ("slurm", "1-25:00:00"), ("slurm", "24:61:00"), ("slurm", "1h"), ("slurm", "0"), ("slurm", "UNLIMITED"),
    ("pbs", "1-00:00:00"), ("pbs", "1:2:3:4"), ("lsf", "24:00:00"), ("lsf", "1-2"), ("local", "2-00:00:00"),
])
def test_walltime_formats_a_scheduler_rejects(sched, value):
    with pytest.raises(ValueError, match="write"):
        parse_walltime(value, sched)


@pytest.mark.parametrize("sched, seconds, text", [
    ("slurm", 86400, "1-00:00:00"), ("slurm", 3600, "01:00:00"), ("slurm", 2 * 86400 + 45015, "2-12:30:15"),
    ("pbs", 2 * 86400, "48:00:00"), ("lsf", 12600, "3:30"), ("lsf", 86400, "24:00"),
])
def test_walltime_is_written_in_the_scheduler_format(sched, seconds, text):
    assert format_walltime(seconds, sched) == text
    assert parse_walltime(text, sched) == seconds


@pytest.mark.parametrize("value, mb", [("4G", 4096), ("4000M", 4000), ("64GB", 65536), (512, 512),
                                       ("2048K", 2), ("1T", 1024 ** 2), ("8gib", 8192)])
def test_memory_amounts(value, mb):
    assert parse_memory_mb(value) == mb


def test_every_field_has_a_description():
    for model in (PilotConfig, BackoffConfig, ClusterConfig, PilotResources, Limits):
        assert model.model_config.get("extra") == "forbid", model
        for name, f in model.model_fields.items():
            assert f.description and len(f.description) > 15, f"{model.__name__}.{name} has no description"


# ----------------------------------------------------------------------------------------- bad configs
def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            d = d.setdefault(p, {})
        d[last] = value
    return apply


def _del(path: str) -> Callable[[dict[str, Any]], None]:
    def apply(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            d = d[p]
        del d[last]
    return apply


def _rename(path: str, new: str) -> Callable[[dict[str, Any]], None]:
    def apply(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            d = d[p]
        d[new] = d.pop(last)
    return apply


# (id, change to the stampede cluster, field in the message, phrases the message must hold)
BAD_CLUSTERS: list[tuple[str, Callable[[dict[str, Any]], None], str, list[str]]] = [
    ("misspelt key", _rename("pilot.walltime", "wallclock"), "pilot.wallclock",
     ["unknown field 'wallclock'", "did you mean 'walltime'?"]),
    ("misspelt top-level key", _rename("categories", "categores"), "categores", ["did you mean 'categories'?"]),
    ("key in the wrong section", _rename("walltime_margin", "margin_x"), "margin_x", ["unknown field"]),
    ("pilot.yaml key in a cluster", _set("poll_interval", 30), "poll_interval", ["belongs in pilot.yaml"]),
    ("walltime outside pilot:", _set("walltime", "1:00:00"), "walltime", ["belongs under 'pilot:'"]),
    ("unknown scheduler", _set("scheduler", "slurmm"), "scheduler",
     ["unknown scheduler 'slurmm'", "did you mean 'slurm'", "slurm, pbs, lsf, local"]),
    ("walltime not in SLURM format", _set("pilot.walltime", "24h"), "pilot.walltime",
     ["not valid for slurm", "D-HH:MM:SS"]),
    ("walltime zero", _set("pilot.walltime", "0"), "pilot.walltime", ["finite, positive"]),
    ("walltime as a float", _set("pilot.walltime", 1.5), "pilot.walltime", ["in quotes", "24:00:00"]),
    ("margin longer than the wall time", _set("walltime_margin", 90000), "walltime_margin",
     ["not less than the wall time (86400 s)", "smaller margin"]),
    ("shell characters in partition", _set("pilot.partition", "normal; rm -rf ~"), "pilot.partition",
     ["cannot be used as partition", "no spaces"]),
    ("newline in account", _set("pilot.account", "abc\n#SBATCH --x"), "pilot.account",
     ["cannot be used as account"]),
    ("shell characters in qos", _set("pilot.qos", "$(id)"), "pilot.qos", ["cannot be used as qos"]),
    ("category with a space", _set("categories", ["md", "long md"]), "categories[1]",
     ["category 'long md' is not allowed", "letters, digits"]),
    ("category twice", _set("categories", ["md", "md"]), "categories[1]", ["listed twice", "remove one"]),
    ("no categories", _set("categories", []), "categories", ["must not be empty"]),
    ("min_pilots above max_running", _set("limits", {"max_queued": 2, "max_running": 3, "min_pilots": 9}),
     "limits.min_pilots", ["more than max_running (3)", "min_pilots: 3 or less"]),
    ("min_pilots for each category", lambda d: d.update(categories=["md", "qm"], limits={
        "max_queued": 4, "max_running": 5, "min_pilots": 3}), "limits.min_pilots",
     ["each of the 2 categories makes 6 pilots, more than max_running (5)", "min_pilots: 2 or less"]),
    ("queue room that is never used", _set("limits", {"max_queued": 30, "max_running": 20}), "limits.max_queued",
     ["more than max_running (20)", "max_queued: 20 or less"]),
    ("max_queued zero", _set("limits.max_queued", 0), "limits.max_queued", ["too small", "1 or more"]),
    ("directive of another scheduler", _set("pilot.extra_directives", ["#PBS -l place=scatter"]),
     "pilot.extra_directives[0]", ["not a slurm directive", "'#SBATCH '"]),
    ("directive that is no option", _set("pilot.extra_directives", ["exclusive"]),
     "pilot.extra_directives[0]", ["neither an option nor a directive", "--constraint=knl"]),
    ("nodes not a number", _set("pilot.nodes", "two"), "pilot.nodes", ["expected a whole number", "'two'"]),
    ("bool that is not one", _set("strict_host_key_checking", "maybe"), "strict_host_key_checking",
     ["expected true or false"]),
    ("key file missing", _set("identity_file", "/nonexistent/id_rsa"), "identity_file",
     ["file not found: /nonexistent/id_rsa", "null to use your SSH agent"]),
    ("known_hosts missing", _set("known_hosts", "/nonexistent/known_hosts"), "known_hosts",
     ["file not found", "ssh-keyscan -p 22 login.stampede.example.org"]),
    ("host missing", _del("host"), "host", ["required for scheduler slurm", "host: login."]),
    ("host with a space", _set("host", "login node"), "host", ["not a host name"]),
    ("relative work_dir", _set("work_dir", "~/pilot"), "work_dir",
     ["not an absolute path", "'~' is not expanded", "/scratch/alice/pilot"]),
    ("work_dir with a percent", _set("work_dir", "/scratch/%u/pilot"), "work_dir", ["break scheduler directives"]),
    ("relative launchpad_file", _set("launchpad_file", "lp.yaml"), "launchpad_file", ["is relative", "absolute"]),
    ("qos on PBS", lambda d: (d.update(scheduler="pbs"), d["pilot"].update(qos="high")), "pilot.qos",
     ["SLURM option", "pbs has none"]),
    ("LSF walltime with seconds", lambda d: (d.update(scheduler="lsf"), None), "pilot.walltime",
     ["not valid for lsf", "HH:MM"]),
    ("memory not an amount", _set("pilot.memory", "lots"), "pilot.memory", ["not an amount", "4G"]),
    ("grace longer than the margin", _set("grace", 700), "grace", ["not less than walltime_margin (600 s)"]),
    ("reserved env name", _set("env", {"PILOT_DEADLINE": "1"}), "env.PILOT_DEADLINE", ["set by the pilot script"]),
    ("bad env name", _set("env", {"1X": "1"}), "env.1X", ["not a variable name"]),
    ("template missing", _set("template", "nothere.sh.j2"), "template", ["file not found", "clusters/ folder"]),
    ("bad jump host", _set("proxy_jump", "gw host"), "proxy_jump", ["[user@]host[:port]"]),
    ("ssh config that is not there", _set("use_ssh_config", True), "use_ssh_config",
     ["use_ssh_config is true but", "/nonexistent-home/.ssh/config does not exist", "use_ssh_config: false"]),
    ("SSH field for local", lambda d: (d.update(scheduler="local", host=None, user=None, identity_file=None),
                                       d.pop("proxy_jump"), d["pilot"].update(partition=None)), "port",
     ["scheduler local does not use SSH: remove port"]),
    ("partition for local", lambda d: (d.update(scheduler="local", host=None, user=None, identity_file=None),
                                       d.pop("port")), "pilot.partition", ["scheduler local has no partition"]),
    ("both python and worker_command", lambda d: d.update(python="/usr/bin/python3", worker_command="x worker"),
     "worker_command", ["keep one"]),
    ("margin above SLURM's signal limit", lambda d: (d.update(walltime_margin=70000),
                                                     d["pilot"].update(walltime="2-00:00:00")),
     "walltime_margin", ["65535 or less"]),
]


@pytest.mark.parametrize("case_id, change, field, phrases", BAD_CLUSTERS, ids=[c[0] for c in BAD_CLUSTERS])
def test_bad_cluster_file(tmp_path, files, case_id, change, field, phrases, monkeypatch):
    monkeypatch.setenv("HOME", "/nonexistent-home")
    data = copy.deepcopy(stampede(files))
    change(data)
    cdir = write_config(tmp_path, {"launchpad_file": str(files["launchpad"])}, {"stampede": data})
    cfile = str(cdir / "clusters" / "stampede.yaml")
    lines = problems_of(cdir)
    mine = [p for p in lines if p.startswith(f"{cfile}: {field}: ")]
    assert mine, f"no problem for field {field!r} in {lines}"
    assert any(all(ph in p for ph in phrases) for p in mine), f"expected {phrases} in {mine}"
    # a field problem carries the line of the field in the file
    assert all("(line " in p for p in mine), mine


BAD_PILOT: list[tuple[str, str, str, list[str]]] = [
    ("prefix with a dash", "job_name_prefix: fw-p\n", "job_name_prefix", ["not a usable job-name prefix", "fwp"]),
    ("backoff upside down", "backoff: {initial: 600, max: 60}\n", "backoff.max",
     ["larger than max", "max: 600 or more"]),
    ("poll interval not a number", "poll_interval: soon\n", "poll_interval", ["expected a number"]),
    ("misspelt key", "poll_intervall: 30\n", "poll_intervall", ["did you mean 'poll_interval'?"]),
    ("cluster key in pilot.yaml", "scheduler: slurm\n", "scheduler", ["belongs at the top level of the cluster file"]),
    ("negative reruns", "max_reruns: -1\n", "max_reruns", ["too small", "0 or more"]),
]


@pytest.mark.parametrize("case_id, text, field, phrases", BAD_PILOT, ids=[c[0] for c in BAD_PILOT])
def test_bad_pilot_file(tmp_path, files, case_id, text, field, phrases):
    cdir = write_config(tmp_path, text, {"stampede": stampede(files)})
    lines = problems_of(cdir)
    mine = [p for p in lines if p.startswith(f"{cdir / 'pilot.yaml'}: {field}: ")]
    assert mine and any(all(ph in p for ph in phrases) for p in mine), lines


def test_yaml_syntax_error_has_line_and_column(tmp_path, files):
    text = "host: h\nscheduler: slurm\ncategories: [md\nwork_dir: /x\n"
    cdir = write_config(tmp_path, {}, {"broken": text})
    (p,) = [x for x in problems_of(cdir) if "broken.yaml" in x]
    assert p.startswith(f"{cdir / 'clusters' / 'broken.yaml'}: (syntax): YAML syntax error at line 4, column")
    assert "check the indentation and quoting" in p


def test_tab_indentation_is_explained(tmp_path):
    cdir = write_config(tmp_path, {}, {"tabs": "pilot:\n\twalltime: 10\n"})
    (p,) = problems_of(cdir)
    assert "(syntax)" in p and "tabs" in p and "use spaces" in p


def test_cluster_file_that_is_not_a_mapping(tmp_path):
    cdir = write_config(tmp_path, {}, {"listy": "- host: a\n- host: b\n"})
    (p,) = problems_of(cdir)
    assert p == (f"{cdir / 'clusters' / 'listy.yaml'}: (file): expected a mapping of settings (key: value lines), "
                 "got a list; see docs/configuration.md for the layout")


def test_empty_cluster_file(tmp_path):
    cdir = write_config(tmp_path, {}, {"empty": ""})
    (p,) = problems_of(cdir)
    # the hint keeps the --config-dir the user typed (issue "One package per room": hints dropped it)
    assert "empty.yaml: (file): the file is empty" in p and f"`pilot --config-dir {cdir} init`" in p


def test_duplicate_key_is_reported(tmp_path, files):
    text = yaml.safe_dump(stampede(files)) + "scheduler: pbs\n"
    cdir = write_config(tmp_path, {}, {"dup": text})
    lines = problems_of(cdir)
    assert any(": scheduler: written twice (first at line" in p and "remove one" in p for p in lines), lines


def test_bad_cluster_name_from_the_file_name(tmp_path, files):
    cdir = write_config(tmp_path, {}, {"my cluster": stampede(files)})
    lines = problems_of(cdir)
    assert any("my cluster.yaml: (file): cluster name (the file name) 'my cluster' is not allowed" in p
               and "rename the file" in p for p in lines), lines


def test_missing_files_and_dirs(tmp_path, files):
    want = (f"{tmp_path / 'nope'}: (dir): configuration directory not found; run `pilot --config-dir "
            f"{tmp_path / 'nope'} init` to create it, or pass --config-dir / set PILOT_CONFIG_DIR to an existing one")
    assert problems_of(tmp_path / "nope") == [want]
    cdir = write_config(tmp_path, None, {})
    lines = problems_of(cdir)
    assert f"{cdir / 'pilot.yaml'}: (file): file not found; run `pilot --config-dir {cdir} init` to write an " \
           "example, or pass the right --config-dir" in lines
    assert any(p.startswith(f"{cdir / 'clusters'}: (dir): no cluster files") and f"`pilot --config-dir {cdir} init`"
               in p for p in lines), lines
    assert any(p.startswith(f"{cdir / 'clusters'}: (dir): no cluster files") for p in lines)


def test_all_problems_of_all_files_are_collected(tmp_path, files):
    a = stampede(files)
    a["pilot"]["wallclock"] = a["pilot"].pop("walltime")
    a["scheduler"] = "slurmm"
    b = stampede(files)
    b["limits"]["max_running"] = 0
    cdir = write_config(tmp_path, "poll_interval: 0\n", {"a": a, "b": b})
    with pytest.raises(ConfigError) as info:
        load_config(cdir)
    got = {(Path(p.file).name, p.field) for p in info.value.problems}
    assert {("pilot.yaml", "poll_interval"), ("a.yaml", "pilot.wallclock"), ("a.yaml", "scheduler"),
            ("b.yaml", "limits.max_running")} <= got
    text = str(info.value)
    assert text.startswith(f"{len(info.value.problems)} configuration problems:")


def test_load_cluster_alone(tmp_path, files):
    cdir = write_config(tmp_path, {}, {"stampede": stampede(files)})
    c = load_cluster(cdir / "clusters" / "stampede.yaml")
    assert isinstance(c, ClusterConfig) and c.walltime_seconds == 86400
    bad = stampede(files)
    bad["pilot"]["walltime"] = "soon"
    (cdir / "clusters" / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"bad.yaml: pilot.walltime: wall time 'soon' is not valid for slurm"):
        load_cluster(cdir / "clusters" / "bad.yaml")


def test_extra_directives_plain_and_prefixed(tmp_path, files):
    d = stampede(files)
    d["pilot"]["extra_directives"] = ["--constraint=knl", "#SBATCH --exclusive"]
    cdir = write_config(tmp_path, {}, {"s": d})
    c = load_config(cdir).clusters["s"]
    assert c.directive_lines() == ["#SBATCH --constraint=knl", "#SBATCH --exclusive"]


# ----------------------------------------------------------------------------------------- CLI
def run_cli(*args: str) -> Any:
    return CliRunner().invoke(cli_main, list(args), catch_exceptions=False)


def test_init_writes_examples_that_load(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "known_hosts").write_text("")
    cdir = tmp_path / "conf"
    r = run_cli("--config-dir", str(cdir), "init")
    assert r.exit_code == 0, r.output
    assert (cdir / "pilot.yaml").read_text().startswith("# fireworks-pilot")
    assert "# One cluster." in (cdir / "clusters" / "example.yaml").read_text()
    cfg = load_config(cdir)                     # the examples are valid as written
    ex = cfg.clusters["example"]
    assert ex.walltime_seconds == 86400 and ex.scheduler is Scheduler.SLURM and cfg.pilot.poll_interval == 60
    # never overwrites without --force
    (cdir / "pilot.yaml").write_text("poll_interval: 5\n")
    r = run_cli("--config-dir", str(cdir), "init")
    assert r.exit_code == 1 and "already exist" in r.output and "--force" in r.output
    assert (cdir / "pilot.yaml").read_text() == "poll_interval: 5\n"
    r = run_cli("--config-dir", str(cdir), "init", "--force")
    assert r.exit_code == 0 and (cdir / "pilot.yaml").read_text().startswith("# fireworks-pilot")


def test_config_check_ok(tmp_path, files):
    pbs = stampede(files)
    pbs.update(scheduler="pbs", categories=["md", "analysis"])
    cdir = write_config(tmp_path, {"launchpad_file": str(files["launchpad"])},
                        {"stampede": stampede(files), "pbsbox": pbs, "other": stampede(files)})
    r = run_cli("--config-dir", str(cdir), "config", "check")
    assert r.exit_code == 0, r.output
    assert r.stdout == "3 clusters, 2 categories: OK\n"
    r = run_cli("--config-dir", str(cdir), "config", "check", "--json")
    data = json.loads(r.stdout)
    assert data["ok"] is True and data["clusters"] == ["other", "pbsbox", "stampede"]
    assert data["categories"] == ["analysis", "md"] and data["problems"] == []


def test_config_check_prints_every_problem(tmp_path, files):
    bad = stampede(files)
    bad["pilot"]["wallclock"] = bad["pilot"].pop("walltime")
    bad["limits"]["max_queued"] = 0
    cdir = write_config(tmp_path, {"launchpad_file": str(files["launchpad"])}, {"bad": bad})
    r = run_cli("--config-dir", str(cdir), "config", "check")
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    cfile = cdir / "clusters" / "bad.yaml"
    assert any(line.startswith(f"{cfile}: pilot.wallclock: unknown field 'wallclock'; did you mean 'walltime'?")
               for line in lines), lines
    assert any(line.startswith(f"{cfile}: limits.max_queued: 0 is too small: write 1 or more") for line in lines)
    # the renamed key is also a missing one
    assert any(line.startswith(f"{cfile}: pilot.walltime: required field is missing; add it, "
                               'e.g. walltime: "24:00:00"') for line in lines), lines
    assert "3 problems" in r.stderr
    data = json.loads(run_cli("--config-dir", str(cdir), "config", "check", "--json").stdout)
    assert data["ok"] is False
    assert {p["field"] for p in data["problems"]} == {"pilot.wallclock", "pilot.walltime", "limits.max_queued"}


def test_config_check_finds_a_missing_launchpad_and_a_broken_template(tmp_path, files):
    d = stampede(files)
    d["template"] = "mine.sh.j2"
    cdir = write_config(tmp_path, {"launchpad_file": "nothere.yaml"}, {"s": d})
    (cdir / "clusters" / "mine.sh.j2").write_text('{% extends "slurm.sh.j2" %}{% block setup %}{{ nosuch }}'
                                                  '{% endblock %}')
    r = run_cli("--config-dir", str(cdir), "config", "check")
    assert r.exit_code == 1
    assert f"{cdir / 'pilot.yaml'}: launchpad_file: file not found: {cdir / 'nothere.yaml'}" in r.stdout
    assert f"{cdir / 'clusters' / 's.yaml'}: template: template {cdir / 'clusters' / 'mine.sh.j2'}: " \
           "'nosuch' is undefined" in r.stdout


def test_config_check_runs_bash_on_the_setup(tmp_path, files):
    d = stampede(files)
    d["setup"] = "if true; then\n  echo unbalanced\n"
    cdir = write_config(tmp_path, {"launchpad_file": str(files["launchpad"])}, {"s": d})
    r = run_cli("--config-dir", str(cdir), "config", "check")
    assert r.exit_code == 1
    assert f"{cdir / 'clusters' / 's.yaml'}: setup: the rendered job script is not valid bash" in r.stdout


def test_render_command(tmp_path, files):
    d = stampede(files)
    d["categories"] = ["md", "analysis"]
    cdir = write_config(tmp_path, {"job_name_prefix": "abc"}, {"stampede": d})
    r = run_cli("--config-dir", str(cdir), "render", "stampede")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("#!/bin/bash\n#SBATCH --job-name=abc.md.")
    assert "PILOT_CATEGORY=md\n" in r.stdout
    r = run_cli("--config-dir", str(cdir), "render", "stampede", "--category", "analysis", "--job-name", "x.y.z")
    assert "#SBATCH --job-name=x.y.z\n" in r.stdout and "PILOT_CATEGORY=analysis\n" in r.stdout
    r = run_cli("--config-dir", str(cdir), "render", "stampede", "--category", "qm")
    assert r.exit_code == 1
    assert "does not serve category 'qm'; its categories are: md, analysis" in r.output
    r = run_cli("--config-dir", str(cdir), "render", "stampeed")
    assert r.exit_code == 1 and "no cluster 'stampeed' (did you mean 'stampede'?)" in r.output
    out = tmp_path / "script.sh"
    r = run_cli("--config-dir", str(cdir), "render", "stampede", "-o", str(out))
    assert r.exit_code == 0 and out.read_text().startswith("#!/bin/bash\n")


def test_config_show(tmp_path, files):
    cdir = write_config(tmp_path, {}, {"stampede": stampede(files)})
    r = run_cli("--config-dir", str(cdir), "config", "show", "stampede", "--json")
    data = json.loads(r.stdout)
    assert data["pilot"]["walltime"] == "24:00:00" and data["grace"] == 60 and "profiles" not in data
    r = run_cli("--config-dir", str(cdir), "config", "show")
    assert yaml.safe_load(r.stdout)["pilot"]["job_name_prefix"] == "fwp"


def _unused(_: BaseModel) -> None:  # keep the import for type checkers
    return None


# ----------------------------------------------------------------------------------------- the documentation
DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _doc_blocks(lang: str) -> list[str]:
    import re
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_every_field_is_documented():
    text = DOC.read_text()
    from pilot.config.models_fworker import FWorkerSettings

    for model, pre in ((PilotConfig, ""), (BackoffConfig, "backoff."), (ClusterConfig, ""),
                       (PilotResources, "pilot."), (Limits, "limits."), (FWorkerSettings, "fworker.")):
        for name in model.model_fields:
            assert f"| `{pre}{name}` |" in text, f"{pre}{name} has no row in {DOC.name}"


def test_the_documented_cluster_files_load(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    for f in ("id_ed25519", "known_hosts"):
        (tmp_path / ".ssh" / f).write_text("")
    examples = {b.splitlines()[0].removeprefix("# clusters/").removesuffix(".yaml"): b
                for b in _doc_blocks("yaml") if b.startswith("# clusters/")}
    assert set(examples) == {"stampede", "laptop", "gpu1"}
    cdir = write_config(tmp_path, {}, examples)
    cfg = load_config(cdir)
    assert cfg.clusters["stampede"].pilot.cores == 68 and cfg.clusters["stampede"].walltime_seconds == 86400
    assert cfg.clusters["laptop"].is_local and cfg.clusters["laptop"].walltime_seconds == 7200
    gpu1 = cfg.clusters["gpu1"]
    assert list(gpu1.pilot_profiles) == ["gpu", "cpu"] and gpu1.profile("gpu").gpus == 1
    assert gpu1.profile("cpu").pack and gpu1.walltime_seconds == 86400


def test_the_documented_custom_templates_render(tmp_path, files):
    import subprocess

    from pilot.render import render_pilot_script
    blocks = _doc_blocks("jinja")
    assert len(blocks) == 2
    for i, (block, sched) in enumerate(zip(blocks, ("slurm", "pbs"), strict=True)):
        d = stampede(files)
        d.update(scheduler=sched, template=f"t{i}.sh.j2")
        cdir = write_config(tmp_path / str(i), {}, {"c": d})
        (cdir / "clusters" / f"t{i}.sh.j2").write_text(block)
        script = render_pilot_script(load_cluster(cdir / "clusters" / "c.yaml"), "c", "md", "fwp.md.a")
        res = subprocess.run(["bash", "-n"], check=False, input=script, capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        assert ("#SBATCH --constraint=knl" in script and "module purge" in script
                and "module load gromacs/2022\nsource ~/venvs" in script) if sched == "slurm" else \
               ("#PBS -l select=1:ncpus=68\n#PBS -l place=scatter:excl" in script)


def test_the_documented_pilot_yaml_is_what_init_writes(tmp_path):
    """The example under "what `pilot init` writes" is the file the command writes, and it loads."""
    import subprocess
    import sys

    (block,) = [b for b in _doc_blocks("yaml") if b.startswith("# fireworks-pilot: settings of the manager")]
    res = subprocess.run([sys.executable, "-m", "pilot", "--config-dir", str(tmp_path / "d"), "init"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "d" / "pilot.yaml").read_text() == block
    cfg = load_pilot_config(tmp_path / "d" / "pilot.yaml")
    # relative defaults land inside the config directory, not in ~/.pilot
    assert cfg.launchpad_file == tmp_path / "d" / "my_launchpad.yaml"
    assert cfg.log_dir == tmp_path / "d" / "logs"

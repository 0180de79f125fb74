"""``launchpad_route:`` in a cluster file (pilot/config/models_route.py): the two forms, the defaults the
manager and the pilots use, and a message with file, field, line and fix for every mistake."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from pilot.config import ClusterConfig, LaunchPadRoute, SshRoute, load_config
from pilot.config.models_route import DEFAULT_PORT_RANGE, default_route_port
from tests.config.test_config import problems_of, stampede, write_config


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """What the cluster file names must exist (a key, known_hosts, the LaunchPad file): their contents do not
    matter to validation."""
    out = {"key": tmp_path / "id_ed25519", "known_hosts": tmp_path / "known_hosts",
           "launchpad": tmp_path / "my_launchpad.yaml"}
    for path in out.values():
        path.write_text("x\n")
    return out


def _load(tmp_path, files, route: Any = None, **over: Any) -> ClusterConfig:
    data = stampede(files)
    if route is not None:
        data["launchpad_route"] = route
    data.update(over)
    cdir = write_config(tmp_path, {"launchpad_file": str(files["launchpad"])}, {"stampede": data})
    return load_config(cdir).clusters["stampede"]


def test_the_default_is_direct(tmp_path, files):
    c = _load(tmp_path, files)
    assert c.launchpad_route.via == "direct" and not c.launchpad_route.is_ssh
    assert c.ssh_route is None


@pytest.mark.parametrize("word", ["direct", "Direct", " direct "])
def test_direct_as_a_word(tmp_path, files, word):
    assert _load(tmp_path, files, word).ssh_route is None


def test_ssh_as_a_word_takes_the_login_node_and_a_stable_port(tmp_path, files):
    c = _load(tmp_path, files, "ssh", port=2222)
    route = c.ssh_route
    assert isinstance(route, SshRoute)
    # the login node as the manager reaches it, and its sshd port
    assert route.login_address == "login.stampede.example.org" and route.login_port == 2222
    lo, hi = DEFAULT_PORT_RANGE
    assert lo <= route.port <= hi
    # the same user and login node give the same port on every load (the pilots' key is bound to it) ...
    assert _load(tmp_path / "again", files, "ssh").ssh_route.port == route.port   # type: ignore[union-attr]
    # ... and another user of that login node, most likely another one
    assert default_route_port("bob", "login.stampede.example.org") != route.port


def test_ssh_as_a_mapping_with_every_field(tmp_path, files):
    c = _load(tmp_path, files, {"via": "ssh", "port": 37117, "login_address": "203.0.113.161", "login_port": 2200})
    assert c.ssh_route == SshRoute(port=37117, login_address="203.0.113.161", login_port=2200)
    assert c.launchpad_route == LaunchPadRoute(via="ssh", port=37117, login_address="203.0.113.161", login_port=2200)


def test_a_mapping_without_the_login_node_takes_the_clusters(tmp_path, files):
    c = _load(tmp_path, files, {"via": "ssh", "port": 37117})
    assert c.ssh_route == SshRoute(port=37117, login_address="login.stampede.example.org", login_port=22)


def test_the_route_survives_config_show_and_reload(tmp_path, files):
    """``pilot config show`` dumps the models as JSON; what it prints loads again to the same route."""
    for route in ("direct", {"via": "ssh", "port": 37117, "login_address": "203.0.113.161"}):
        c = _load(tmp_path / str(len(str(route))), files, route)
        dumped = c.model_dump(mode="json")["launchpad_route"]
        again = _load(tmp_path / f"re{len(str(route))}", files, dumped)
        assert again.launchpad_route == c.launchpad_route and again.ssh_route == c.ssh_route


def test_every_route_field_has_a_description():
    assert LaunchPadRoute.model_config.get("extra") == "forbid"
    for name, f in LaunchPadRoute.model_fields.items():
        assert f.description and len(f.description) > 15, name
    assert ClusterConfig.model_fields["launchpad_route"].description


# (id, route or a change to the cluster, field in the message, phrases the message must hold)
BAD: list[tuple[str, Any, str, list[str]]] = [
    ("unknown word", "tunnel", "launchpad_route", ["'tunnel' is not a route", "launchpad_route: direct",
                                                    "launchpad_route: ssh"]),
    ("misspelt word", "shh", "launchpad_route", ["did you mean 'ssh'?"]),
    ("a number", 5, "launchpad_route", ["expected direct, ssh or a mapping", "{via: ssh, port: 37117}"]),
    ("a list", ["ssh"], "launchpad_route", ["expected direct, ssh or a mapping"]),
    ("misspelt via", {"via": "shh", "port": 37117}, "launchpad_route.via",
     ["'shh' (text) is not a route (did you mean 'ssh'?)", "via: direct or via: ssh"]),
    ("privileged port", {"via": "ssh", "port": 80}, "launchpad_route.port", ["80 is too small", "1024 or more"]),
    ("port past the end", {"via": "ssh", "port": 70000}, "launchpad_route.port", ["65535 or less"]),
    ("port as text", {"via": "ssh", "port": "high"}, "launchpad_route.port",
     ["expected a whole number", "port: 37117"]),
    ("port with direct", {"via": "direct", "port": 37117}, "launchpad_route.port",
     ["only used with via: ssh", "remove it, or write via: ssh"]),
    ("port without via", {"port": 37117}, "launchpad_route.port", ["only used with via: ssh"]),
    ("login node with direct", {"login_address": "203.0.113.161"}, "launchpad_route.login_address",
     ["only used with via: ssh"]),
    ("login address that reads as an option", {"via": "ssh", "login_address": "-oProxyCommand=x"},
     "launchpad_route.login_address", ["not a host name or address", "login_address: 203.0.113.161"]),
    ("login address with a user", {"via": "ssh", "login_address": "alice@login"}, "launchpad_route.login_address",
     ["without user, port or spaces"]),
    ("login port zero", {"via": "ssh", "login_port": 0}, "launchpad_route.login_port", ["1 or more"]),
    ("misspelt key", {"via": "ssh", "prot": 37117}, "launchpad_route.prot", ["did you mean 'port'?"]),
    ("a synonym", {"via": "ssh", "login_host": "x"}, "launchpad_route.login_host", ["did you mean 'login_address'?"]),
]


@pytest.mark.parametrize("case_id, route, field, phrases", BAD, ids=[c[0] for c in BAD])
def test_bad_route(tmp_path, files, case_id, route, field, phrases, monkeypatch):
    monkeypatch.setenv("HOME", "/nonexistent-home")
    data = copy.deepcopy(stampede(files))
    data["launchpad_route"] = route
    cdir = write_config(tmp_path, {"launchpad_file": str(files["launchpad"])}, {"stampede": data})
    cfile = str(cdir / "clusters" / "stampede.yaml")
    lines = problems_of(cdir)
    mine = [p for p in lines if p.startswith(f"{cfile}: {field}: ")]
    assert mine, f"no problem for field {field!r} in {lines}"
    assert any(all(ph in p for ph in phrases) for p in mine), f"expected {phrases} in {mine}"
    assert all("(line " in p for p in mine), mine


def test_route_fields_written_at_the_top_level_are_sent_under_launchpad_route(tmp_path, files):
    data = stampede(files)
    data.update(via="ssh", login_address="203.0.113.161")
    cdir = write_config(tmp_path, {"launchpad_file": str(files["launchpad"])}, {"stampede": data})
    lines = problems_of(cdir)
    cfile = cdir / "clusters" / "stampede.yaml"
    for key in ("via", "login_address"):
        assert any(p.startswith(f"{cfile}: {key}: ") and "it belongs under 'launchpad_route:'" in p
                   for p in lines), lines


def test_a_misnamed_route_key_is_recognised(tmp_path, files):
    data = stampede(files)
    data["tunnel"] = "ssh"
    cdir = write_config(tmp_path, {"launchpad_file": str(files["launchpad"])}, {"stampede": data})
    assert any("did you mean 'launchpad_route'?" in p for p in problems_of(cdir))


def test_a_local_cluster_has_no_ssh_route(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    local = {"scheduler": "local", "categories": ["md"], "launchpad_file": str(tmp_path / "lp.yaml"),
             "work_dir": str(tmp_path / "w"), "pilot": {"walltime": 60}, "launchpad_route": "ssh"}
    cdir = write_config(tmp_path, {}, {"laptop": local})
    lines = problems_of(cdir)
    assert any(p.startswith(f"{cdir / 'clusters' / 'laptop.yaml'}: launchpad_route: ")
               and "scheduler local runs pilots on this machine" in p and "launchpad_route: direct" in p
               for p in lines), lines
    local["launchpad_route"] = "direct"
    (cdir / "clusters" / "laptop.yaml").write_text(yaml.safe_dump(local))
    assert load_config(cdir).clusters["laptop"].ssh_route is None


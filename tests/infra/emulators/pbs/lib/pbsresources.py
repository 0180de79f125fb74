"""Resource requests of the emulated PBS Pro: ``-l`` lists resolved into Resource_List and chunks.

The server's conversions are reproduced: ``select`` chunks, Torque-style ``nodes=N:ppn=M``, a bare
``ncpus``/``mem``; consumable chunk resources summed into Resource_List; sizes printed in the largest
unit that keeps an integer.
"""

from __future__ import annotations

import os
import re
import sys

# installed, emucore.py sits next to this file; in the repository it is in ../../common
sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "common"))
import emucore as core  # noqa: E402


def parse_select(spec: str) -> list[dict[str, str]] | None:
    """``2:ncpus=4:mem=1gb+1:ncpus=1`` -> chunks [{'count': '2', 'ncpus': '4', ...}, ...]."""
    chunks = []
    for part in spec.split("+"):
        items = part.split(":")
        chunk: dict[str, str] = {"count": "1"}
        for i, item in enumerate(items):
            if i == 0 and item.isdigit():
                chunk["count"] = item
                continue
            if "=" not in item:
                return None
            k, v = item.split("=", 1)
            if not k or not v:
                return None
            chunk[k] = v
        if int(chunk["count"]) < 1:
            return None
        if "ncpus" in chunk and not chunk["ncpus"].isdigit():
            return None
        chunks.append(chunk)
    return chunks


def chunks_to_select(chunks: list[dict[str, str]]) -> str:
    return "+".join(":".join([c["count"]] + [f"{k}={v}" for k, v in c.items() if k != "count"]) for c in chunks)


def resource_list(res: dict[str, str]) -> tuple[dict[str, str], list[dict[str, str]]] | str:
    """Resolve ``-l`` resources into Resource_List and chunks; a string names the bad resource."""
    out = dict(res)
    if "walltime" in out:
        secs = core.parse_hms(out["walltime"])
        if secs is None:
            return "walltime"
        out["walltime"] = core.fmt_hms(secs)
    if "select" in out:
        chunks = parse_select(out["select"])
        if chunks is None:
            return "select"
    elif "nodes" in out:  # Torque-style nodes=N:ppn=M, converted by the PBS Pro server
        m = re.match(r"^(\d+)(?::ppn=(\d+))?$", out["nodes"])
        if not m:
            return "nodes"
        chunks = [{"count": m.group(1), "ncpus": m.group(2) or "1"}]
        out["select"] = chunks_to_select(chunks)
    else:
        ncpus = out.get("ncpus", "1")
        if not ncpus.isdigit():
            return "ncpus"
        chunks = [{"count": "1", "ncpus": ncpus}]
        if "mem" in out:
            chunks[0]["mem"] = out["mem"]
        out["select"] = chunks_to_select(chunks)
    out["ncpus"] = str(sum(int(c["count"]) * int(c.get("ncpus", "1")) for c in chunks))
    out["nodect"] = str(sum(int(c["count"]) for c in chunks))
    for name in ("mpiprocs", "ngpus"):   # the server sums consumable chunk resources into Resource_List
        if any(name in c for c in chunks):
            if not all(c.get(name, "0").isdigit() for c in chunks):
                return "select"
            out[name] = str(sum(int(c["count"]) * int(c.get(name, "0")) for c in chunks))
    if any("mem" in c for c in chunks):
        sizes = [_size_bytes(c.get("mem", "0b")) for c in chunks]
        if None in sizes:
            return "select"
        out["mem"] = _size_text(sum(int(c["count"]) * (b or 0) for c, b in zip(chunks, sizes, strict=True)))
    out.setdefault("place", "pack" if out["nodect"] == "1" else "free")
    return out, chunks


SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4, "w": 8, "kw": 8 * 1024,
              "mw": 8 * 1024**2, "gw": 8 * 1024**3, "tw": 8 * 1024**4}


def _size_bytes(text: str) -> int | None:
    m = re.match(r"^(\d+)([kmgt]?[bw]?)$", text.lower())
    if not m:
        return None
    unit = m.group(2) or "b"
    return int(m.group(1)) * SIZE_UNITS[unit if unit[-1] in "bw" else unit + "b"]


def _size_text(n: int) -> str:
    """Bytes as PBS prints a size: the largest unit that keeps an integer (8gb, 1536mb)."""
    for unit in ("tb", "gb", "mb", "kb"):
        if n and n % SIZE_UNITS[unit] == 0:
            return f"{n // SIZE_UNITS[unit]}{unit}"
    return f"{n}b"

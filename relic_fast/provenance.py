"""Where a result came from: the one record every results JSON of the project carries.

A number in `benchmarks/results/` is only evidence if the recipe and the code behind it can be recovered.
`provenance` gathers, in one dict: the whole resolved config and its run plan (what ran on this machine),
the config file's path relative to the repository and its SHA-256 (and whether git tracks it unchanged),
the commit and whether the working tree had uncommitted changes, the machine and library versions.
`write_results_json` is how the experiment and the benchmarks write their JSON; `provenance_warnings`
says what makes a record weak (an untracked or edited config file, a dirty tree).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from dali_pipelines.atomic import write_text_atomically
from relic_fast.config import Config
from relic_fast.environment import machine_info
from relic_fast.run_plan import resolve_plan

CODE_DIR = Path(__file__).resolve().parent
"""Where git is asked about the code that runs (its checkout, whatever the working directory)."""


def git(*args: str, cwd: Path = CODE_DIR) -> str | None:
    """stdout of `git ARGS` run in `cwd`, None when git fails or is missing."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=cwd, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def repository_root() -> Path | None:
    """The top of the git checkout the code runs from; None outside one."""
    top = git("rev-parse", "--show-toplevel")
    return Path(top.strip()) if top and top.strip() else None


def git_state() -> dict[str, Any]:
    """{"commit": full hash, "dirty": bool, "uncommitted": tracked files with changes, "untracked": files git
    does not know (and does not ignore)}; all None outside a git checkout. Untracked files do not make the
    tree dirty, but new code among them ran too, so they are listed."""
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=all")
    if status is None:
        return {"commit": None, "dirty": None, "uncommitted": None, "untracked": None}
    lines = [line for line in status.splitlines() if line.strip()]
    uncommitted = sorted(line[3:] for line in lines if not line.startswith("??"))
    return {"commit": commit.strip() if commit else None, "dirty": bool(uncommitted), "uncommitted": uncommitted,
            "untracked": sorted(line[3:] for line in lines if line.startswith("??"))}


def config_file_record(path: str | os.PathLike) -> dict[str, Any]:
    """The config file's path (relative to the repository when inside it), SHA-256, and whether git tracks it
    (`tracked`) with no uncommitted change (`committed`); both None outside a checkout."""
    path = Path(path).resolve()
    record: dict[str, Any] = {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                              "in_repository": False, "tracked": None, "committed": None}
    root = repository_root()
    if root is None or not path.is_relative_to(root.resolve()):
        return record
    relative = path.relative_to(root.resolve()).as_posix()
    tracked = git("ls-files", "--error-unmatch", "--", relative, cwd=root) is not None
    changed = git("status", "--porcelain", "--", relative, cwd=root)
    record.update(path=relative, in_repository=True, tracked=tracked,
                  committed=tracked and changed is not None and not changed.strip())
    return record


def provenance(config: Config | None = None, config_path: str | os.PathLike | None = None,
               plan: Any = None) -> dict[str, Any]:
    """The record of where a result came from (see the module docstring). `plan`: a `RunPlan` (or a dict);
    None with a `config`: the plan `resolve_plan` makes of it here."""
    record: dict[str, Any] = {"git": git_state(), "machine": machine_info()}
    record["config_file"] = config_file_record(config_path) if config_path is not None else None
    if config is not None:
        if plan is None:
            plan = resolve_plan(config)
        record["config"] = config.to_dict()
        record["plan"] = dataclasses.asdict(plan) if dataclasses.is_dataclass(plan) else dict(plan)
    return record


def provenance_warnings(record: dict[str, Any]) -> list[str]:
    """What weakens `record` as evidence: a config file outside git or edited since the commit, a dirty tree."""
    warnings = []
    config_file = record.get("config_file")
    if config_file is not None and config_file["tracked"] is False:
        warnings.append(f"the config file {config_file['path']} is not tracked by git: commit it, or nobody "
                        f"can recover the recipe behind these results")
    elif config_file is not None and not config_file["in_repository"]:
        warnings.append(f"the config file {config_file['path']} is outside the repository: results should cite "
                        f"a committed config")
    elif config_file is not None and config_file["committed"] is False:
        warnings.append(f"the config file {config_file['path']} has uncommitted changes")
    if record["git"]["dirty"]:
        files = record["git"]["uncommitted"]
        listed = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        warnings.append(f"the working tree has uncommitted changes ({listed}): the results belong to commit "
                        f"{(record['git']['commit'] or '?')[:12]} plus those edits")
    return warnings


def write_results_json(path: str | os.PathLike, payload: dict[str, Any], record: dict[str, Any]) -> Path:
    """Write `payload` with `record` under "provenance" to `path` (atomically: a reader never sees half)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps({**payload, "provenance": record}, indent=2, default=str) + "\n")
    return path

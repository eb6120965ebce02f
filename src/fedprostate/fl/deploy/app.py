"""The Flower app as the coordinator submits it, and the run config the SuperLink receives."""

from __future__ import annotations

import json
import shutil
import sys
import tomllib
from pathlib import Path

import tomli_w

from fedprostate.config import RunConfig, flatten


def flower_bin(name: str) -> str:
    """A Flower executable from this environment (never a different installation on PATH)."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found: install fedprostate (it depends on flwr)")
    return found


def app_dir() -> Path:
    """The Flower app: the project folder when it has ``[tool.flwr.app]``.

    Installed from a wheel (no source tree) a minimal app folder is written instead: the same
    components and defaults, importing the installed ``fedprostate`` package.
    """
    here = Path(__file__).resolve()
    for parent in here.parents:
        pyproject = parent / "pyproject.toml"
        if pyproject.exists() and "[tool.flwr.app]" in pyproject.read_text(encoding="utf-8"):
            return parent
    return Path()


def write_app_dir(out: Path) -> Path:
    from importlib.metadata import version

    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "project": {"name": "fedprostate", "version": version("fedprostate")},
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "fedprostate",
                    "components": {
                        "serverapp": "fedprostate.fl.server_app:app",
                        "clientapp": "fedprostate.fl.client_app:app",
                    },
                    "config": nest(RunConfig().to_flat()),
                }
            }
        },
    }
    (out / "pyproject.toml").write_text(tomli_w.dumps(doc), encoding="utf-8")
    return out


def app_config_keys(app: Path) -> list[str]:
    """Dotted keys that the app's ``[tool.flwr.app.config]`` defines (all others are refused)."""
    doc = tomllib.loads((app / "pyproject.toml").read_text(encoding="utf-8"))
    return list(flatten(doc["tool"]["flwr"]["app"].get("config", {})))


def nest(flat: dict) -> dict:
    """Dotted keys → nested tables (what Flower flattens back to dotted keys)."""
    out: dict = {}
    for key, value in flat.items():
        *groups, name = key.split(".")
        node = out
        for g in groups:
            node = node.setdefault(g, {})
        node[name] = value
    return out


def node_config_text(values: dict) -> str:
    """``--node-config`` text: space-separated ``key=value`` with TOML values."""
    return " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in values.items())


def deployment_config(
    cfg: RunConfig,
    out: str | Path,
    n_sites: int,
    resume: bool = False,
    sites_file: str | Path | None = None,
) -> RunConfig:
    """The run config the SuperLink gets: absolute paths, no data on the server (federated
    evaluation only), the coordinator's site registry, one torch thread per ClientApp."""
    if cfg.data.partition != "natural":
        raise ValueError(
            "a deployment is one SuperNode per hospital: data.partition must be natural"
        )
    changes: dict = {
        "out": str(Path(out).resolve()),
        "resume": resume,
        "data.cache": "",
        # A round needs this many connected nodes (a config, never forced to the site count, so
        # a node that died for good cannot stall the run; see fl.strategies).
        "fl.min_available_nodes": min(cfg.fl.min_available_nodes, n_sites),
        "fl.min_train_nodes": min(cfg.fl.min_train_nodes, n_sites),
        "fl.sites": str(Path(sites_file).resolve()) if sites_file else cfg.fl.sites,
    }
    if cfg.model.foundation:
        changes["model.foundation"] = str(Path(cfg.model.foundation).resolve())
    if cfg.train.threads == 0:
        changes["train.threads"] = 1
    return cfg.replace(**changes)

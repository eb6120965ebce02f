"""Flower run config / node config → the project's typed RunConfig (parsed once, here)."""

from __future__ import annotations

from fedprostate.config import RunConfig

# Node-config keys a hospital may set for itself, and the run-config key each one overrides.
NODE_OVERRIDES = {"cache": "data.cache", "device": "train.device", "threads": "train.threads"}


def config_from_context(
    run_config: dict, overrides: dict | None = None, node_config: dict | None = None
) -> RunConfig:
    """Run config from Flower (dotted keys), then in-process overrides, then the node's own keys.

    Flower's in-process simulation hands every app an empty run config, so the simulation passes
    the whole configuration as ``overrides``; with ``flwr run`` it arrives through its run config.
    """
    flat = dict(run_config or {})
    flat.update(overrides or {})
    for node_key, cfg_key in NODE_OVERRIDES.items():
        if node_config and node_key in node_config:
            flat[cfg_key] = node_config[node_key]
    return RunConfig.from_flat(flat)

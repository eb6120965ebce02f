"""fedprostate: federated fine-tuning of foundation models for csPCa detection from bpMRI.

The entry points a notebook needs are importable from here (loaded on first use, so that
``import fedprostate`` stays fast)::

    import fedprostate as fp

    cfg = fp.load_config("configs/demo.toml", ["fl.rounds=2", "data.cache=cache"])
    fp.prepare("raw", "cache")
    summary = fp.federate(cfg, "runs/fed")
    metrics = fp.evaluate("runs/fed")
    model, meta = fp.load_bundle("runs/fed/bundle")
    result = fp.predict("runs/fed/bundle", "raw/images/10002")

See :mod:`fedprostate.api` for each one's documentation.
"""

from fedprostate._version import __version__

API = ("load_config", "prepare", "federate", "centralize", "evaluate", "export", "load_bundle",
       "predict")  # fmt: skip
__all__ = ["__version__", *API]


def __getattr__(name: str):
    if name in API:
        from fedprostate import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedprostate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])

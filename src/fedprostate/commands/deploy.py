"""``fedprostate deploy-local`` (a real TLS + node-auth deployment on loopback) and
``fedprostate site preflight`` (what a hospital runs before joining the federation)."""

from __future__ import annotations

import hashlib
import json
import shlex
import signal
from collections import Counter
from pathlib import Path

import typer

from fedprostate.cli_app import app, site_app


@app.command("deploy-local")
def deploy_local_command(
    sites: int = typer.Option(..., "--sites", min=1, help="Number of hospitals (SuperNodes)."),
    cache: Path = typer.Option(
        ...,
        "--data",
        "--cache",
        help="Crop cache from `data prepare`; SuperNode i serves site i of it.",
    ),
    out: Path = typer.Option(..., "--out", help="Run folder (outputs, certificates, logs)."),
    rounds: int | None = typer.Option(None, "--rounds", help="Federated rounds (fl.rounds)."),
    config: Path | None = typer.Option(None, "--config", help="Run configuration TOML."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config key: key=value."),
    resume: bool = typer.Option(False, "--resume", help="Continue after the last saved round."),
) -> None:
    """Start a SuperLink and one SuperNode per site on 127.0.0.1 with TLS and SuperNode
    authentication, run the federated fine-tuning with `flwr run`, stop everything."""
    from fedprostate.config import RunConfig
    from fedprostate.data.cache import load_index
    from fedprostate.fl.deploy.deployment import deploy_local

    cfg = RunConfig.load(config, overrides)
    if rounds is not None:
        cfg = cfg.replace(**{"fl.rounds": rounds})
    if resume:
        cfg = cfg.replace(resume=True)
    if not (cache / "index.csv").exists():
        raise typer.BadParameter(f"{cache}: not a crop cache (no index.csv)", param_hint="--data")
    names = sorted({r["site"] for r in load_index(cache)})
    if sites > len(names):
        raise typer.BadParameter(
            f"{cache} holds {len(names)} sites ({', '.join(names)}), not {sites}",
            param_hint="--sites",
        )
    # SIGTERM (e.g. from a job scheduler) ends the run like Ctrl-C: every process is stopped.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        summary = deploy_local(cfg, cache, names[:sites], out, echo=typer.echo)
    except KeyboardInterrupt:
        typer.echo("interrupted: every SuperLink/SuperNode process was stopped", err=True)
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    typer.echo(json.dumps(summary, indent=2))


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


# ---- site preflight ---------------------------------------------------------------------


def describe_cache(cache: Path) -> tuple[dict[str, Counter], list[dict]]:
    """Per site: crops per split and positives; and the rejected studies."""
    from fedprostate.data.cache import load_index, load_rejected

    counts: dict[str, Counter] = {}
    for row in load_index(cache):
        c = counts.setdefault(row["site"], Counter())
        c[row["split"]] += 1
        c[f"{row['split']}_positive"] += int(row["label"])
    return counts, load_rejected(cache)


def describe_raw(folder: Path) -> tuple[dict[str, Counter], list[dict]]:
    """Read every study of a raw folder; count the readable ones, list the rejected ones."""
    from fedprostate.data.formats.registry import list_studies, load_study
    from fedprostate.data.study import StudyError

    _, refs, errors = list_studies(folder)
    counts: dict[str, Counter] = {}
    rejected = [{"patient_id": "", "study_id": "", "reason": str(e)} for e in errors]
    for ref in refs:
        c = counts.setdefault(ref.site, Counter())
        try:
            study = load_study(ref)
        except (StudyError, ValueError, RuntimeError) as exc:
            rejected.append(
                {"patient_id": ref.patient_id, "study_id": ref.study_id, "reason": str(exc)}
            )
            c["rejected"] += 1
            continue
        c["studies"] += 1
        c["findings"] += len(study.findings)
        c["significant"] += sum(bool(getattr(f, "clinsig", False)) for f in study.findings)
    return counts, rejected


def foundation_hashes(ckpt: Path) -> dict:
    """SHA-256 of the checkpoint file, of its backbone weights, and the value its metadata states."""
    from fedprostate.models.foundation import backbone_sha256, checkpoint_meta, load_foundation

    meta = checkpoint_meta(ckpt) or {}
    file_sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    out = {"file": file_sha, "metadata": meta.get("sha256", ""), "arch": meta.get("arch")}
    if meta.get("arch") and meta.get("crop"):
        state = load_foundation(ckpt, meta["arch"], int(meta["crop"]))
        out["backbone"] = backbone_sha256(state)
    return out


def supernode_command(
    site: str, data: Path, superlink: str, key: Path, root_certificates: Path, state_dir: Path
) -> str:
    node_config = f'site="{site}" cache="{data.resolve()}" state-dir="{state_dir.resolve()}"'
    parts = [
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1",
        "flower-supernode",
        "--superlink", superlink,
        "--root-certificates", str(root_certificates),
        "--auth-supernode-private-key", str(key),
        "--node-config", node_config,
    ]  # fmt: skip
    return " ".join(shlex.quote(p) if i > 1 else p for i, p in enumerate(parts))


@site_app.command("preflight")
def preflight_command(
    data: Path = typer.Option(..., "--data", help="Crop cache or raw study folder."),
    foundation: Path = typer.Option(..., "--foundation", help="Foundation checkpoint."),
    expected_sha256: str = typer.Option(
        "", "--expected-sha256", help="The consortium's foundation SHA-256."
    ),
    site: str = typer.Option("", "--site", help="This hospital's site name (default: from data)."),
    superlink: str = typer.Option(
        "SUPERLINK_HOST:8000", "--superlink", help="The SuperLink's address, host:port."
    ),
    key: Path = typer.Option(
        Path("supernode_key"), "--key", help="This hospital's private SuperNode key."
    ),
    root_certificates: Path = typer.Option(
        Path("ca.pem"), "--root-certificates", help="The consortium's CA certificate."
    ),
    state_dir: Path = typer.Option(Path("fedprostate_state"), "--state-dir"),
) -> None:
    """Check this hospital's data and foundation checkpoint; print the SuperNode command."""
    if not data.exists():
        raise typer.BadParameter(f"{data}: no such file or folder", param_hint="--data")
    if not foundation.is_file():
        raise typer.BadParameter(f"{foundation}: no such checkpoint", param_hint="--foundation")
    is_cache = (data / "index.csv").exists()
    counts, rejected = describe_cache(data) if is_cache else describe_raw(data)
    typer.echo(f"data: {data} ({'crop cache' if is_cache else 'raw studies'})")
    for name, c in sorted(counts.items()):
        typer.echo(f"  site {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    typer.echo(f"  rejected studies: {len(rejected)}")
    for row in rejected:
        typer.echo(
            f"    {row.get('patient_id', '')} {row.get('study_id', '')}: {row.get('reason', '')}"
        )
    ok = bool(counts) and sum(sum(c.values()) for c in counts.values()) > 0
    if not ok:
        typer.echo("FAIL: no usable data", err=True)

    hashes = foundation_hashes(foundation)
    typer.echo(f"foundation: {foundation}")
    typer.echo(f"  file sha256 (what `sha256sum {foundation.name}` prints): {hashes['file']}")
    if hashes.get("backbone"):
        typer.echo(
            f"  backbone weights sha256 (the consortium hash, model.foundation_sha256): "
            f"{hashes['backbone']}"
        )
    if hashes.get("metadata"):
        typer.echo(f"  backbone weights sha256 stated in the checkpoint: {hashes['metadata']}")
    if (
        hashes.get("metadata")
        and hashes.get("backbone")
        and hashes["metadata"] != hashes["backbone"]
    ):
        typer.echo("FAIL: the checkpoint's weights do not match its metadata (corrupt?)", err=True)
        ok = False
    if expected_sha256:
        matches = expected_sha256.lower() in {v for v in hashes.values() if isinstance(v, str)}
        if matches:
            typer.echo("  matches the consortium's expected SHA-256")
        else:
            typer.echo(
                f"FAIL: foundation SHA-256 differs from the consortium's {expected_sha256}: "
                "LoRA updates on another backbone are meaningless; get the consortium's checkpoint",
                err=True,
            )
            ok = False
    else:
        typer.echo("  (no --expected-sha256 given: hash not checked)")

    names = sorted(counts)
    site_name = site or (names[0] if len(names) == 1 else "SITE_NAME")
    typer.echo("\nTo join, send your public key (supernode_key.pub) to the coordinator, then run:")
    typer.echo(supernode_command(site_name, data, superlink, key, root_certificates, state_dir))
    if not ok:
        raise typer.Exit(1)

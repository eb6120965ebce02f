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

from fedprostate.cli_app import app, fail, site_app


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
    force: bool = typer.Option(
        False, "--force", help="With --resume: accept a configuration that differs from the run's."
    ),
    signing_key: Path | None = typer.Option(
        None,
        "--signing-key",
        help="Sign the app with this OpenSSH Ed25519 key instead of the consortium's "
        "(SuperNodes trust only the consortium's: another key is refused).",
    ),
    superlink_state: str = typer.Option(
        "file",
        "--superlink-state",
        help="file: the SuperLink keeps nodes and runs in SQLite under --out (survives a "
        "restart; --resume needs it); memory: Flower's in-memory state (no SQLite lock: a "
        "17-SuperNode deployment on 2 cores lost its run to 'database is locked' with file).",
    ),
    warm_seconds: float = typer.Option(
        600.0,
        "--warm-seconds",
        min=0.0,
        help="Each SuperNode's warm site process (node config warm-seconds): its ClientApp "
        "processes hand messages to it, so imports and the model build are paid once; it "
        "exits after this many idle seconds (0 = none: every message starts cold).",
    ),
) -> None:
    """Start a SuperLink (loopback), its nginx front (Fleet API only) and one SuperNode per site
    on 127.0.0.1 with TLS, SuperNode authentication and a consortium-signed app; run the
    federated fine-tuning with `flwr run`, stop everything."""
    from fedprostate.config import RunConfig
    from fedprostate.fl.deploy.deployment import (
        SUPERLINK_STATES,
        DeployedRunError,
        deploy_local,
        deployment_config,
    )
    from fedprostate.fl.deploy.proxy import ProxyUnavailableError
    from fedprostate.runs.federated import RunFailedError, finished_summary
    from fedprostate.runs.resume import ResumeRefusedError, check_resume

    try:
        cfg = RunConfig.load(config, overrides)
        if rounds is not None:
            cfg = cfg.replace(**{"fl.rounds": rounds})
    except (ValueError, OSError) as exc:
        fail(f"configuration: {exc}")
    if superlink_state not in SUPERLINK_STATES:
        fail(f"--superlink-state must be file or memory, not {superlink_state!r}")
    if resume and superlink_state == "memory":
        fail("--resume needs --superlink-state file: an in-memory SuperLink forgets its nodes")
    if not (cache / "index.csv").exists():
        fail(f"{cache}: not a crop cache (no index.csv) (--cache)")
    from fedprostate.engine.setup import crop_mismatch

    mismatch = crop_mismatch(cfg, cache)
    if mismatch:
        fail(mismatch)
    counts, _ = describe_cache(cache)
    names = sorted(counts)
    if sites > len(names):
        fail(f"{cache} holds {len(names)} sites ({', '.join(names)}), not {sites} (--sites)")
    chosen = {n: {"train": counts[n]["train"], "val": counts[n]["val"]} for n in names[:sites]}
    if resume:
        cfg = cfg.replace(resume=True)
        root = out.resolve() / "deployment"
        planned = deployment_config(cfg, out, sites, True, sites_file=root / "sites.json")
        try:
            done = check_resume(out, planned, force)
        except ResumeRefusedError as exc:
            fail(exc)
        if done is not None:
            typer.echo(f"run {out} already finished {done['rounds']} rounds: nothing to do")
            typer.echo(json.dumps(done, indent=2))
            return
    # SIGTERM (e.g. from a job scheduler) ends the run like Ctrl-C: every process is stopped.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        summary = deploy_local(
            cfg, cache, chosen, out, echo=typer.echo, signing_key=signing_key,
            warm_s=warm_seconds, superlink_state=superlink_state,
        )  # fmt: skip
        finished_summary(out)
    except KeyboardInterrupt:
        typer.echo("interrupted: every SuperLink/SuperNode process was stopped", err=True)
        raise typer.Exit(130) from None
    except ProxyUnavailableError as exc:
        fail(exc)
    except (RunFailedError, DeployedRunError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
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
    site: str,
    data: Path,
    superlink: str,
    key: Path,
    root_certificates: Path,
    state_dir: Path,
    trusted_entities: Path = Path("trusted_entities.yaml"),
) -> str:
    node_config = f'site="{site}" cache="{data.resolve()}" state-dir="{state_dir.resolve()}"'
    parts = [
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1",
        "flower-supernode",
        "--superlink", superlink,
        "--root-certificates", str(root_certificates),
        "--auth-supernode-private-key", str(key),
        "--trusted-entities", str(trusted_entities),
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
    trusted_entities: Path = typer.Option(
        Path("trusted_entities.yaml"),
        "--trusted-entities",
        help="The consortium's app-signing public key(s), Flower's --trusted-entities YAML.",
    ),
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

    try:
        hashes = foundation_hashes(foundation)
    except Exception as exc:  # any unreadable checkpoint: one clear line, no traceback
        hashes = {"file": hashlib.sha256(foundation.read_bytes()).hexdigest()}
        typer.echo(f"FAIL: {foundation}: cannot load the backbone ({exc})", err=True)
        ok = False
    typer.echo(f"foundation: {foundation}")
    typer.echo("  file sha256 (sha256sum format; compare with `sha256sum FILE`):")
    typer.echo(f"    {hashes['file']}  {foundation}")
    if hashes.get("backbone"):
        typer.echo(
            f"  backbone sha256 (of the loaded weights; what the server checks): {hashes['backbone']}"
        )
    if hashes.get("metadata"):
        typer.echo(
            f"  stated by the checkpoint's own metadata (never trusted): {hashes['metadata']}"
        )
    if (
        hashes.get("metadata")
        and hashes.get("backbone")
        and hashes["metadata"] != hashes["backbone"]
    ):
        typer.echo("FAIL: the checkpoint's weights do not match its metadata (corrupt?)", err=True)
        ok = False
    if expected_sha256:
        # Only hashes computed here count: a checkpoint can state any hash about itself.
        computed = {k: hashes[k] for k in ("file", "backbone") if hashes.get(k)}
        matched = [k for k, v in computed.items() if v == expected_sha256.lower()]
        if matched:
            typer.echo(f"  matches the consortium's expected SHA-256 ({matched[0]} hash)")
        else:
            typer.echo(
                f"FAIL: neither the file's nor the backbone's SHA-256 is the consortium's "
                f"{expected_sha256}: LoRA updates on another backbone are meaningless; get the "
                "consortium's checkpoint",
                err=True,
            )
            ok = False
    else:
        typer.echo("  (no --expected-sha256 given: hash not checked)")

    names = sorted(counts)
    site_name = site or (names[0] if len(names) == 1 else "SITE_NAME")
    sizes = counts.get(site_name, {})
    typer.echo(
        f"\nTo join, send the coordinator your public key ({key}.pub) and your registered "
        f"sizes: site {site_name}, train {sizes.get('train', 0)}, val {sizes.get('val', 0)}"
    )
    typer.echo("(the server caps every reply's num-examples at them). Then run:")
    typer.echo(
        supernode_command(
            site_name, data, superlink, key, root_certificates, state_dir, trusted_entities
        )
    )
    if not ok:
        raise typer.Exit(1)


# ---- the coordinator's side ---------------------------------------------------------------

coordinator_app = typer.Typer(
    help="Commands the coordinator runs: register hospitals, sign and serve the app, the proxy.",
    no_args_is_help=True,
)
app.add_typer(coordinator_app, name="coordinator")


@coordinator_app.command("register")
def register_command(
    key: Path = typer.Option(..., "--key", help="The hospital's SuperNode public key (.pub)."),
    site: str = typer.Option(..., "--site", help="The hospital's site name."),
    train: int = typer.Option(..., "--train", min=1, help="Its preflight training-set size."),
    val: int = typer.Option(..., "--val", min=0, help="Its preflight validation-set size."),
    registry: Path = typer.Option(
        Path("sites.json"), "--registry", help="Site registry (fl.sites)."
    ),
    audit: Path = typer.Option(Path("audit.jsonl"), "--audit", help="The coordinator's audit log."),
    connection: str = typer.Option("", "--connection", help="flwr SuperLink connection name."),
) -> None:
    """`flwr supernode register KEY` on this (loopback) SuperLink, then the node id, the site
    and its sizes into the registry the ServerApp trusts (run with --set fl.sites=REGISTRY)."""
    import subprocess

    from fedprostate.fl.deploy.registration import register_node
    from fedprostate.fl.registry import RegistryError
    from fedprostate.records.audit import AuditLog

    if not key.is_file():
        fail(f"{key}: no such public key (--key)")

    def flwr(args: list[str]) -> str:
        done = subprocess.run(
            ["flwr", *args],
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args)}: {done.stdout} {done.stderr}")
        return done.stdout

    try:
        node = register_node(flwr, key, site, train, val, registry, AuditLog(audit), connection)
    except (RuntimeError, RegistryError, OSError) as exc:
        fail(exc)
    typer.echo(f"registered {site} as node {node} in {registry}")


@coordinator_app.command("sign-app")
def sign_app_command(
    app_dir: Path = typer.Option(Path("."), "--app", help="The Flower app folder (pyproject)."),
    key: Path = typer.Option(..., "--key", help="The consortium's OpenSSH Ed25519 private key."),
    out: Path = typer.Option(Path("signed_apps"), "--out", help="Signed-app store folder."),
    key_id: str = typer.Option("fedprostate-consortium", "--key-id", help="Its trusted-entity id."),
) -> None:
    """Build the app's FAB and sign it (Flower's format) into the store `serve-apps` serves."""
    from fedprostate.fl.deploy.signing import SigningError, sign_app

    if not (app_dir / "pyproject.toml").is_file():
        fail(f"{app_dir}: no pyproject.toml (--app)")
    try:
        signed = sign_app(app_dir, key, out, key_id)
    except SigningError as exc:
        fail(exc)
    typer.echo(f"signed {signed.spec}: FAB sha256 {signed.fab_sha256} ({signed.fab})")
    typer.echo(f"run it with: flwr run {signed.spec} <connection> --run-config run_config.toml")


@coordinator_app.command("serve-apps")
def serve_apps_command(
    store: Path = typer.Option(Path("signed_apps"), "--dir", help="Signed-app store folder."),
    port: int = typer.Option(8765, "--port", help="Loopback port (FLWR_SUPERGRID_API_URL)."),
) -> None:
    """Serve signed apps to the SuperLink with Flower's Hub protocol, until Ctrl-C. Start the
    SuperLink with FLWR_SUPERGRID_API_URL=http://127.0.0.1:PORT/v1."""
    import time

    from fedprostate.fl.deploy.signing import AppRegistry

    if not store.is_dir():
        fail(f"{store}: no such folder (--dir)")
    registry = AppRegistry(store, port=port).start()
    typer.echo(f"serving {store} at {registry.api_url} (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        registry.stop()


@coordinator_app.command("proxy-config")
def proxy_config_command(
    listen: str = typer.Option("0.0.0.0:443", "--listen", help="Public host:port for hospitals."),
    superlink_port: int = typer.Option(..., "--superlink-port", help="SuperLink's loopback port."),
    cert: Path = typer.Option(..., "--cert", help="Server certificate (server.pem)."),
    key: Path = typer.Option(..., "--key", help="Server private key (server.key)."),
    ca: Path = typer.Option(..., "--ca", help="Consortium CA certificate (ca.pem)."),
    prefix: Path = typer.Option(..., "--prefix", help="nginx prefix folder (logs, pid, conf)."),
) -> None:
    """Write the nginx front (only Fleet API routes pass) and print how to start it."""
    from fedprostate.fl.deploy.proxy import nginx_config

    for path in (cert, key, ca):
        if not path.is_file():
            fail(f"{path}: not found")
    prefix = prefix.resolve()
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(
        nginx_config(
            prefix,
            listen,
            f"127.0.0.1:{superlink_port}",
            cert.resolve(),
            key.resolve(),
            ca.resolve(),
        ),
        encoding="utf-8",
    )
    typer.echo(f"wrote {conf}; start it with: nginx -p {prefix} -c {conf}")

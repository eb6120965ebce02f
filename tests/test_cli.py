"""CLI conventions: --version, one-line user errors (exit 2; --debug shows the traceback), plain
output off a terminal, --json summaries and the shared input/output option names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedprostate import __version__
from fedprostate.cli import app
from fl_fixtures import write_tiny_cache
from mri_fixtures import picai_phantoms, write_picai

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The command as a user runs it: a separate process, stdout/stderr pipes (not a terminal)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-c", "from fedprostate.cli import app; app()", *args],
        capture_output=True, text=True, encoding="utf-8", env=env, cwd=cwd,
    )  # fmt: skip


def _one_line_error(proc: subprocess.CompletedProcess, *phrases: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"fedprostate {__version__}"


def test_federate_with_a_missing_cache_is_one_line_and_debug_shows_the_traceback(tmp_path):
    args = ["federate", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]
    _one_line_error(_cli(*args), "not a crop cache", "fedprostate data prepare")
    debug = _cli("--debug", *args)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert "RunInputError" in debug.stderr


def test_unknown_backbone_and_unreadable_inputs_are_one_line(tmp_path):
    cache = write_tiny_cache(tmp_path / "cache", sites=("siteA",))
    _one_line_error(
        _cli("federate", "--data", str(cache), "--set", "model.arch=nope", "--out", "r"),
        "model.arch = 'nope' is not allowed",
    )
    _one_line_error(_cli("predict", "--model", str(tmp_path / "nobundle")), "bundle.json")
    _one_line_error(
        _cli("data", "prepare", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "c")),
    )
    _one_line_error(_cli("export", str(tmp_path / "norun")), "config.toml")


def test_a_validation_split_of_one_class_is_refused_before_training(tmp_path):
    cache = write_tiny_cache(tmp_path / "cache", sites=("siteA",))
    index = cache / "index.csv"
    lines = index.read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",")
    split, label = header.index("split"), header.index("label")
    rows = [line.split(",") for line in lines[1:]]
    for row in rows:
        if row[split] == "val":
            row[label] = "0"
    index.write_text("\n".join([lines[0], *(",".join(r) for r in rows)]) + "\n")
    _one_line_error(
        _cli(
            "centralize",
            "--data",
            str(cache),
            "--out",
            str(tmp_path / "run"),
            "--set",
            "model.crop=32",
        ),
        "validation split",
        "only label 0",
    )
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_cache_of_another_crop_size_is_one_line_before_any_process_starts(tmp_path):
    """Mutant: no crop check -> a 17-SuperNode deployment ran 2 rounds (9.5 min) in which all
    68 replies failed with timm's AssertionError; the simulation failed the same way."""
    cache = write_tiny_cache(tmp_path / "cache", sites=("siteA", "siteB"), crop=32)
    for command in ("federate", "deploy-local"):
        args = ["--sites", "2"] if command == "deploy-local" else []
        out = tmp_path / command
        _one_line_error(
            _cli(
                command, *args, "--data", str(cache), "--out", str(out), "--set", "model.crop=64"
            ),  # fmt: skip
            "holds 32 px crops but model.crop = 64",
            "model.crop=32",
        )
        assert not (out / "metrics.jsonl").exists() and not (out / "deployment").exists()


def test_plain_unwrapped_output_when_piped_and_json(tmp_path):
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "cache"
    cache = write_tiny_cache(deep, sites=("siteA", "siteB"))
    proc = _cli("data", "summary", str(cache))
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" not in proc.stdout  # no colour codes in a file or pipe
    assert any(str(cache) in line for line in proc.stdout.splitlines())  # not cut at 80 columns
    raw = write_picai(tmp_path / "raw", picai_phantoms(n=4))
    proc = _cli("data", "prepare", "--data", str(raw), "--out", str(tmp_path / "c"), "--crop",
                "32", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["kept"] == 4 and report["format"] == "picai" and report["crops"] > 0


def _options(command: str) -> set[str]:
    click_app = typer.main.get_command(app)
    words = command.split()
    cmd = click_app
    for w in words:
        cmd = cmd.commands[w]
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}


@pytest.mark.parametrize(
    "command, names",
    [
        ("data prepare", {"--data", "--src", "--out", "--json"}),
        ("federate", {"--data", "--cache", "--out", "--json", "--keep-last", "--seeds"}),
        ("centralize", {"--data", "--cache", "--out", "--json", "--seeds"}),
        ("local", {"--data", "--cache", "--out", "--json"}),
        ("distill", {"--data", "--cache", "--out", "--json"}),
        ("predict", {"--data", "--study", "--model", "--out", "--json", "--detection-maps"}),
        ("export", {"--out", "--json"}),
        ("report", {"--data", "--cache"}),
        ("deploy-local", {"--data", "--cache", "--out"}),
        ("site preflight", {"--data"}),
        ("pretrain", {"--data", "--out"}),
        ("data synth", {"--out"}),
    ],
)
def test_one_vocabulary_for_inputs_and_outputs_old_names_kept(command, names):
    assert names <= _options(command)


def test_preflight_prints_the_sha256sum_of_the_file_and_labels_the_backbone_hash(tmp_path):
    import hashlib

    from fedprostate.models.backbones import create_backbone
    from fedprostate.models.foundation import save_checkpoint

    cache = write_tiny_cache(tmp_path / "cache", sites=("siteA",))
    ckpt = tmp_path / "foundation.safetensors"
    meta = save_checkpoint(ckpt, create_backbone("swin_test", crop=32), {"arch": "swin_test",
                           "crop": 32, "normalization": "z"})  # fmt: skip
    result = CliRunner().invoke(
        app, ["site", "preflight", "--data", str(cache), "--foundation", str(ckpt)]
    )
    assert result.exit_code == 0, result.output
    file_sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    # exactly the line `sha256sum FILE` prints, so IT can compare them by eye or with diff
    assert f"    {file_sha}  {ckpt}" in result.output.splitlines()
    backbone = next(line for line in result.output.splitlines() if "backbone sha256" in line)
    assert "of the loaded weights" in backbone and meta["sha256"] in backbone
    assert file_sha != meta["sha256"]  # why the two must never be confused


def test_detection_maps_need_an_output_folder(tmp_path):
    _one_line_error(
        _cli("predict", "--model", str(tmp_path), "--data", str(tmp_path), "--detection-maps"),
        "--detection-maps needs --out",
    )


def test_deploy_local_superlink_state_is_file_or_memory_and_resume_needs_file(tmp_path):
    """Mutants: the value not checked, or --resume accepted with an in-memory SuperLink (it
    forgets the registered nodes) -> no one-line refusal -> fails."""
    cache = write_tiny_cache(tmp_path / "cache", sites=("siteA", "siteB"), crop=32)
    base = ["deploy-local", "--sites", "2", "--data", str(cache), "--out", str(tmp_path / "d")]
    _one_line_error(_cli(*base, "--superlink-state", "disk"), "--superlink-state", "'disk'")
    _one_line_error(
        _cli(*base, "--superlink-state", "memory", "--resume"), "--resume needs", "file"
    )
    assert not (tmp_path / "d" / "deployment").exists()


def test_an_in_memory_superlink_is_started_without_a_database_file(tmp_path, monkeypatch):
    """Mutant: --database always the SQLite file -> a 17-SuperNode run on 2 cores loses its
    ServerApp to 'database is locked' -> the command line still names the file -> fails."""
    from fedprostate.fl.deploy import deployment

    started = []

    class _Started:
        def __init__(self, name, cmd, *args):
            started.append(cmd)

        def wait_for_log(self, *args):
            return True

    monkeypatch.setattr(deployment, "ManagedProcess", _Started)
    monkeypatch.setattr(deployment, "port_open", lambda *a, **k: True)

    class _Registry:
        api_url = "http://127.0.0.1:1"

        def __init__(self, root):
            pass

        def start(self):
            return self

    monkeypatch.setattr(deployment, "AppRegistry", _Registry)
    with pytest.raises(ValueError, match="superlink_state"):  # not silently in memory
        deployment.LocalDeployment(tmp_path / "disk", superlink_state="disk")
    assert not (tmp_path / "disk").exists()
    for state, expected in (("memory", ":flwr-in-memory:"), ("file", "superlink.db")):
        dep = deployment.LocalDeployment(tmp_path / state, superlink_state=state)
        dep.start_superlink(timeout=1)
        cmd = started[-1]
        assert cmd[cmd.index("--database") + 1].endswith(expected)

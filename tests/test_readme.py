"""Every command the README shows is exercised here, as a user following the README would.

Commands are read from the README itself:

* **examples** — lines of fenced ``bash`` blocks, and inline code spans that start with
  ``fedprostate``, ``python benchmarks/`` or ``make`` and hold no placeholder — are *executed*,
  in README order, in one working folder (so ``runs/demo`` made by ``make demo`` is there for the
  examples that use it). Only their size is shrunk, by the substitutions in ``SHRINK`` (fewer
  rounds, patients, epochs; ``make demo`` runs the demo's ``--quick`` preset; ``study`` runs with
  ``--dry-run``), never their meaning: a wrong option, config key or path fails the test.
* **synopses** — inline spans with placeholders (``DIR``, ``CACHE``, ``[--opt]``, ``a|b``) — are
  *checked*: the command exists and every option they name is one it accepts.

A command that cannot run on this machine is listed in ``NOT_RUN_HERE`` with the test that covers
it instead; anything else that cannot be run or checked fails the test.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedprostate.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PLACEHOLDER = re.compile(r"\[|\||\.\.\.|…|<|\b(DIR|CACHE|RUN|CSV|N|X|CKPT|RUN_OR_STUDY|HOST)\b")
PREFIXES = ("fedprostate ", "python benchmarks/", "make ")
# Commands that need what this machine has not, and the test that exercises them instead.
NOT_RUN_HERE = {
    "python benchmarks/gpu_finetune.py": "needs a CUDA GPU (run on the lent accelerator)",
    "make test": "is this test suite",
    "make test-fast": "is this test suite without the slow tests",
    "make bench": "= python benchmarks/synth_throughput.py, run here with small sizes",
    "make docs": "installs pdoc and writes docs/api; tests/test_docs.py runs pdoc on the API",
}
RUN_KNOBS = ["--set", "fl.rounds=1", "--set", "eval.n_boot=20"]
BENCH_KNOBS = {
    "synth_throughput.py": ["--small-patients", "6", "--per-site", "1"],
    "prepare_throughput.py": ["--sites", "2", "--patients", "8", "--crop", "32"],
    "finetune_cost.py": ["--backbones", "swin_test", "--methods", "lora", "--quick", "--crop", "32"],
    "fl_overhead.py": ["--sites", "2", "--patients", "12", "--arch", "swin_test", "--crop", "32",
                       "--epochs", "1", "--rounds", "2"],
    "compression.py": ["--sites", "2", "--patients", "40", "--arch", "swin_test", "--crop", "32",
                       "--rounds", "1", "--steps", "1", "--arms", "lora-fp32,lora-int8"],
    "pretrain_vs_scratch.py": ["--rounds", "1", "--n-boot", "20"],
    "bad_input_corpus.py": [],
    "poisoning.py": ["--rounds", "1", "--options", "fedavg"],
    "clinical_task.py": ["--arch", "swin_test", "--crop", "32", "--rounds", "1", "--steps", "1",
                         "--n-boot", "20"],
    "gpu_study_slice.py": ["--sites", "2", "--patients", "8", "--rounds", "1", "--device", "cpu"],
    "privacy.py": ["--sites", "3", "--patients", "20", "--rounds", "1", "--steps", "1",
                   "--eps", "8", "--shadows", "2"],
    "foundation_probe.py": ["--methods", "dino", "--batch-size", "8", "--max-crops", "64",
                            "--n-boot", "20", "--quiet"],
    "federated_pretrain.py": ["--sites", "3", "--rounds", "1", "--batch-size", "8",
                              "--n-boot", "20"],
    "gpu_pretrain.py": ["--tiny", "--device", "cpu"],
    "cpu_speed.py": ["--arch", "swin_test", "--crop", "32", "--batch", "4", "--steps", "1",
                     "--warmup", "1", "--peak-n", "128", "--stages", "1"],
    "gpu_speed.py": ["--arch", "swin_test", "--crop", "32", "--batch", "4", "--steps", "1",
                     "--warmup", "1", "--peak-n", "128", "--stages", "1"],
    "deploy_overhead.py": ["--sites", "2", "--patients", "12", "--arch", "swin_test", "--crop",
                           "32", "--repeats", "1"],
    "many_clients.py": ["--clients", "3,4", "--sites", "3", "--patients", "30", "--rounds", "1",
                        "--alpha", "100"],
}  # fmt: skip
CAPS = {"--sites": 3, "--patients": 30, "--unlabeled": 6, "--epochs": 1, "--rounds": 1}


def _spans(text: str) -> tuple[list[str], list[str]]:
    """(fenced bash lines, inline code spans) in README order."""
    fenced, inline = [], []
    blocks = re.split(r"^```", text, flags=re.M)
    for i, block in enumerate(blocks):
        if i % 2 == 1:  # inside a fence
            lang, _, body = block.partition("\n")
            if lang.strip() in ("bash", "sh"):
                body = body.replace("\\\n", " ")
                for line in body.splitlines():
                    line = line.split(" #")[0].strip()
                    if line and not line.startswith("#"):
                        fenced.append(line)
        else:
            inline += [s for s in re.findall(r"`([^`\n]+)`", block) if s.startswith(PREFIXES)]
    return fenced, inline


def readme_commands() -> tuple[list[str], list[str]]:
    fenced, inline = _spans(README.read_text(encoding="utf-8"))
    # a span that only names a command ("`fedprostate federate`") is a synopsis, not an example
    named = [s for s in inline if not PLACEHOLDER.search(s) and "-" not in s.split()[-1]]
    named = [s for s in named if s.startswith("fedprostate ") and len(_click_command(
        s.split()[1:])[1]) == 0 and "--" not in s]  # fmt: skip
    examples = fenced + [s for s in inline if not PLACEHOLDER.search(s) and s not in named]
    synopses = [s for s in inline if PLACEHOLDER.search(s)] + named
    return list(dict.fromkeys(examples)), list(dict.fromkeys(synopses))


def _click_command(words: list[str]):
    """The click command a `fedprostate a b ...` line names, and the words after it."""
    command = typer.main.get_command(app)
    rest = list(words)
    while rest and hasattr(command, "commands") and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    return command, rest


def _options(command) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}


def _shrink(words: list[str]) -> list[str]:
    out = list(words)
    for i, word in enumerate(out[:-1]):
        if word in CAPS and out[i + 1].isdigit():
            out[i + 1] = str(min(int(out[i + 1]), CAPS[word]))
    return out


def _run_fedprostate(words: list[str], cwd: Path) -> None:
    command, _ = _click_command(words)
    name = command.name
    args = _shrink(words)
    if name in ("federate", "centralize", "local", "distill") and "--resume" not in args:
        args += RUN_KNOBS
    if name == "study":
        args.append("--dry-run")
    if name == "demo" and "--quick" not in args:
        args.append("--quick")
    old = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, args, catch_exceptions=False)
    finally:
        os.chdir(old)
    assert result.exit_code == 0, f"fedprostate {' '.join(args)}\n{result.output}"


def _run_process(argv: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, encoding="utf-8")
    assert proc.returncode == 0, f"{' '.join(argv)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def run_example(line: str, cwd: Path) -> None:
    words = shlex.split(line)
    if words[0] == "fedprostate":
        _run_fedprostate(words[1:], cwd)
    elif words[0] == "make" and words[1:] == ["demo"]:
        _run_fedprostate(["demo", "--quick", "--out", "runs/demo"], cwd)
    elif words[0] == "make":
        _run_process(["make", "-C", str(ROOT), *words[1:]], cwd)
    elif words[0] == "python" and words[1].startswith("benchmarks/"):
        script = Path(words[1]).name
        knobs = BENCH_KNOBS[script]
        _run_process([sys.executable, str(ROOT / words[1]), *_shrink(words[2:]), *knobs], cwd)
    else:
        raise AssertionError(f"README command no test knows how to run: {line}")


@pytest.mark.slow
def test_every_readme_example_runs(tmp_path):
    examples, _ = readme_commands()
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    ran = []
    for line in examples:
        key = next((k for k in NOT_RUN_HERE if line.startswith(k)), None)
        if key is not None:
            continue
        run_example(line, tmp_path)
        ran.append(line)
    assert ran, "the README shows no runnable example"


def test_every_readme_synopsis_names_real_commands_and_options():
    _, synopses = readme_commands()
    assert synopses
    for line in synopses:
        words = shlex.split(re.sub(r"[\[\]]", " ", line.replace("|", " ")))
        if words[0] == "fedprostate":
            command, rest = _click_command(words[1:])
            assert command.name != "fedprostate", f"no such command: {line}"
            unknown = [w for w in rest if w.startswith("--") and w not in _options(command)]
            assert not unknown, f"{line}: options {unknown} do not exist"
        elif words[0] == "python":
            help_text = subprocess.run(
                [sys.executable, str(ROOT / words[1]), "--help"],
                capture_output=True, text=True, encoding="utf-8", cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
            ).stdout  # fmt: skip
            unknown = [w for w in words[2:] if w.startswith("--") and w not in help_text]
            assert not unknown, f"{line}: options {unknown} do not exist"


def test_unknown_commands_are_caught():
    """The runner refuses what it cannot run, and the synopsis check refuses unknown options."""
    with pytest.raises(AssertionError, match="no test knows"):
        run_example("pip download -d wheelhouse fedprostate", Path("."))
    command, rest = _click_command(["data", "prepare", "--nope"])
    assert command.name == "prepare" and "--nope" not in _options(command)

"""Bad input to pre-training and foundation evaluation, as a user meets it: one line on stderr,
exit 2, nothing overwritten (issue 14's list)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fedprostate.models.backbones import create_backbone
from fedprostate.models.foundation import save_checkpoint
from fl_fixtures import write_tiny_cache
from mri_fixtures import picai_phantoms, write_picai

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-c", "from fedprostate.cli import app; app()", *args],
        capture_output=True, text=True, encoding="utf-8", env=env,
    )  # fmt: skip


def _one_line_error(proc, *phrases):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()
    }


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pool") / "pool.safetensors"
    noise = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    save_file({"crops": noise.half()}, str(path))
    return path


def test_resume_with_a_different_method_overwrites_nothing(tmp_path, pool_file):
    out = tmp_path / "f.safetensors"
    base = ["pretrain", "--data", str(pool_file), "--out", str(out), "--arch", "swin_test",
            "--epochs", "1", "--batch-size", "4", "--no-progress"]  # fmt: skip
    first = _cli(*base, "--method", "simclr")
    assert first.returncode == 0, first.stderr
    before = _digests(tmp_path)
    _one_line_error(_cli(*base, "--method", "dino", "--resume"), "method 'simclr'", "'dino'")
    _one_line_error(_cli(*base, "--method", "simclr", "--resume", "--arch", "vit_test"),
                    "arch 'swin_test'")  # fmt: skip
    assert _digests(tmp_path) == before


def test_a_checkpoint_of_another_crop_or_architecture_or_truncated(tmp_path):
    cache = write_tiny_cache(tmp_path / "cache", crop=32)
    ckpt = tmp_path / "swin64.safetensors"
    save_checkpoint(ckpt, create_backbone("swin_test", crop=64),
                    {"arch": "swin_test", "crop": 64, "normalization": "z"})  # fmt: skip
    before = _digests(tmp_path)
    _one_line_error(_cli("foundation", "eval", str(ckpt), "--data", str(cache)), "64 px", "32 px")
    wrong = tmp_path / "vit.pth"
    torch.save(create_backbone("vit_test", crop=32).state_dict(), wrong)
    _one_line_error(_cli("foundation", "eval", str(wrong), "--data", str(cache), "--arch",
                         "swin_test"), "timm-vit", "swin_test")  # fmt: skip
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(ckpt.read_bytes()[:-500])
    truncated.with_suffix(".json").write_text(json.dumps({"arch": "swin_test", "crop": 32}))
    _one_line_error(_cli("foundation", "eval", str(truncated), "--data", str(cache)),
                    "unreadable checkpoint")  # fmt: skip
    assert {k: v for k, v in _digests(tmp_path).items() if k in before} == before


def test_a_truncated_pool_and_a_pool_without_readable_studies(tmp_path, pool_file):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(pool_file.read_bytes()[:-300])
    out = tmp_path / "f.safetensors"
    _one_line_error(_cli("pretrain", "--data", str(cut), "--out", str(out), "--arch", "swin_test"),
                    "not a readable .safetensors")  # fmt: skip
    root = write_picai(tmp_path / "raw", picai_phantoms(2))
    for t2 in root.glob("images/*/*_t2w.mha"):
        t2.write_bytes(t2.read_bytes()[:200])  # every study unreadable
    _one_line_error(_cli("data", "pool", "--data", str(root), "--out", str(tmp_path / "p.safetensors")),
                    "none of the 2 unlabeled studies", "2 unreadable")  # fmt: skip
    _one_line_error(_cli("pretrain", "--data", str(tmp_path / "nothing"), "--out", str(out)),
                    "no such file or folder")  # fmt: skip
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(
        _cli("pretrain", "--data", str(empty), "--out", str(out)), "no unlabeled studies"
    )
    assert not out.exists() and not (tmp_path / "p.safetensors").exists()

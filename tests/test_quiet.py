"""Quiet by default: a command whose output is a file or a pipe prints no progress-bar redraws and no
third-party loading bars (transformers' "Loading weights"), unless the user's own settings ask for them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import make_random_model
from test_export import _save_as_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _save_as_model_dir(make_random_model(seed=2).eval(), tmp_path_factory.mktemp("quiet"))


def export(model_dir, out, **env):
    """`python -m minillava export` with stdout and stderr piped (not a terminal), as in a CI log."""
    run_env = {k: v for k, v in os.environ.items()
               if k not in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")}
    done = subprocess.run([sys.executable, "-m", "minillava", "export", "--model", str(model_dir), "--out", str(out)],
                          capture_output=True, text=True, env={**run_env, "HF_HUB_OFFLINE": "1", **env}, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_a_piped_command_prints_no_bars_only_its_result(model_dir, tmp_path):
    printed = export(model_dir, tmp_path / "hf")
    assert "Loading weights" not in printed and "\r" not in printed and "%|" not in printed
    assert printed.strip() == f"exported to {tmp_path / 'hf'}"


def test_the_users_own_settings_still_win(model_dir, tmp_path):
    # the same command with the bars asked for shows transformers' loading bar: the check above can fail
    printed = export(model_dir, tmp_path / "hf", TQDM_DISABLE="", HF_HUB_DISABLE_PROGRESS_BARS="0")
    assert "Loading weights" in printed

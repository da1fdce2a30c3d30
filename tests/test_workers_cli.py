"""`python -m workers`: the process plan it prints with --dry-run."""

from __future__ import annotations

import pytest

from workers.__main__ import main


def test_options_after_double_dash_reach_every_celery_worker(capsys):
    assert main(["all", "--gpus", "0,1", "--dry-run", "--", "--without-gossip", "--loglevel=DEBUG"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    workers = [line for line in lines if " worker " in line]
    assert len(workers) == 3  # controller + gpu0 + gpu1
    assert all(line.endswith("--without-gossip --loglevel=DEBUG") for line in workers)
    assert "CUDA_VISIBLE_DEVICES=1" in lines[2] and "-n gpu1@%h" in lines[2]
    assert any(" beat " in line for line in lines)


def test_an_unknown_role_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bogus"])
    assert exc.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_the_controller_runs_torch_on_one_thread_unless_told(capsys, monkeypatch):
    """A PPO update is small: torch's thread per core only fights the web tier and PostgreSQL."""
    monkeypatch.delenv("NAS_CONTROLLER_THREADS", raising=False)
    main(["controller", "--dry-run"])
    assert capsys.readouterr().out.startswith("OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 ")
    monkeypatch.setenv("NAS_CONTROLLER_THREADS", "4")
    main(["controller", "--dry-run"])
    assert capsys.readouterr().out.startswith("OMP_NUM_THREADS=4 MKL_NUM_THREADS=4 ")

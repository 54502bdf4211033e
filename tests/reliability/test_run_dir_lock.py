"""A run directory has one owner: a second training process on it is refused, naming the holder;
the lock dies with its process, so a SIGKILLed run resumes."""

from __future__ import annotations

from relhelp import Paused, read_jsonl, run_cli


def test_a_second_train_on_a_run_directory_in_use_is_refused(cli_config, tmp_path):
    cfg = cli_config(**{"train.epochs": 2, "train.checkpoint_every_steps": 2})
    run = tmp_path / "run"
    first = Paused(tmp_path, "train", cfg, "--run-dir", run, pause_after_step=3).wait()
    try:
        second = run_cli("train", cfg, "--run-dir", run, "--resume")
        assert second.returncode == 1, second.stderr
        assert f"in use by process {first.proc.pid} on host" in second.stderr
        assert "choose another --run-dir" in second.stderr
        first.marker.unlink()  # the first run goes on, undisturbed
        _, err = first.proc.communicate(timeout=300)
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
    assert first.proc.returncode == 0, err
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "train"]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) == 12
    assert len(list(run.glob("events.out.tfevents.*"))) == 1


def test_resume_after_sigkill_takes_the_lock_the_killed_run_held(cli_config, tmp_path):
    cfg = cli_config(**{"train.epochs": 2, "train.checkpoint_every_steps": 2})
    run = tmp_path / "run"
    killed = run_cli("train", cfg, "--run-dir", run, kill_after_step=5)
    assert killed.returncode == -9
    assert (run / ".lock").exists()  # the file stays; the kernel dropped the lock with the process
    resumed = run_cli("train", cfg, "--run-dir", run, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout + resumed.stderr and "(step 4)" in resumed.stdout + resumed.stderr
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "train"]
    assert steps == list(range(1, 13))

"""hparams_search=: Optuna studies over real runs on the embedded digits, kept in SQLite, so a
killed search resumes (zeroinit/search.py)."""

import json
from pathlib import Path

import pytest

SEARCH = [
    "-m",
    "hparams_search=lr_per_init",
    "hydra.sweeper.studies.init=[zero,bias_normal]",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=4",
    "callbacks.diagnostics=null",
]


def studies(db: Path) -> dict:
    import optuna

    storage = f"sqlite:///{db}"
    return {
        s.study_name: optuna.load_study(study_name=s.study_name, storage=storage).trials
        for s in optuna.get_all_study_summaries(storage)
    }


def final_acc(sweep: Path) -> dict:
    """{(init, lr): final test accuracy} of the runs on disk."""
    out = {}
    for f in sweep.glob("*/results.json"):
        r = json.loads(f.read_text())
        out[(r["config"]["init"]["name"], r["config"]["optimizer"]["lr"])] = r["final"]["test_acc"]
    return out


def test_a_four_trial_search_scores_each_run_and_resumes_after_a_kill(tmp_path, here):
    import optuna
    from optuna.trial import TrialState

    log_dir = f"paths.log_dir={tmp_path}"
    out = here("train.py", *SEARCH, "hydra.sweeper.n_trials=2", log_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = tmp_path / "sweeps" / "lr_per_init"
    found = studies(sweep / "optuna.db")
    assert sorted(found) == ["lr_per_init-init=bias_normal", "lr_per_init-init=zero"]
    runs = final_acc(sweep)
    assert len(runs) == 4  # 2 studies x 2 trials, each a run folder of its own
    for name, trials in found.items():
        init = name.rsplit("=", 1)[1]
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
        for t in trials:  # scored by the run's final test accuracy
            assert t.value == pytest.approx(runs[(init, t.params["optimizer.lr"])])
    best = json.loads((sweep / "search_best.json").read_text())
    assert best["lr_per_init-init=zero"]["value"] == max(
        t.value for t in found["lr_per_init-init=zero"]
    )

    # A kill during the next trial of one study: its trial stays RUNNING in the storage.
    storage = f"sqlite:///{sweep / 'optuna.db'}"
    study = optuna.load_study(study_name="lr_per_init-init=zero", storage=storage)
    killed = study.ask(
        {"optimizer.lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)}
    )
    again = here("train.py", *SEARCH, "hydra.sweeper.n_trials=3", log_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped") == 0 and again.stdout.count("epoch   1/1") == 2
    found = studies(sweep / "optuna.db")
    zero = found["lr_per_init-init=zero"]
    done = [t for t in zero if t.state == TrialState.COMPLETE]
    assert len(done) == 3  # the two before, and the killed trial's values asked again
    assert done[-1].params == killed.params
    assert [t.state for t in found["lr_per_init-init=bias_normal"]] == [TrialState.COMPLETE] * 3
    assert len(final_acc(sweep)) == 6  # no run trained twice


@pytest.mark.parametrize(
    "override, message",
    [
        ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials: 0 is not allowed"),
        ("hydra.sweeper.direction=up", "hydra.sweeper.direction: 'up' is not allowed"),
        ("seed=0,1", "a search takes one value per key on the command line"),
    ],
)
def test_a_bad_search_setting_is_one_line(tmp_path, here, override, message):
    out = here("train.py", *SEARCH, override, f"paths.log_dir={tmp_path}")
    assert out.returncode == 2
    assert out.stderr.strip().startswith(f"error: {message}")
    assert not list((tmp_path / "sweeps").glob("lr_per_init/*/results.json"))

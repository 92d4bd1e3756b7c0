"""zeroinit.stacked.size: the stack size chosen from measured step times (here a fake cost
model, so the choice is known), the cache of those times, and the setting's checks."""

import json

import pytest

from zeroinit.errors import UserError
from zeroinit.stacked import size


def timings(cost, sizes=(1, 2, 4, 8, 15)):
    return {k: cost(k) for k in sizes}


@pytest.mark.parametrize(
    "cost, want",
    [
        (lambda k: k**1.3, 1),  # stacking loses at every size: one at a time
        (lambda k: 1 + 0.1 * k, 15),  # every member costs little more: one big stack
        (lambda k: {1: 2.5, 2: 3.8, 4: 6.8, 8: 15.2, 15: 34.5}[k], 4),  # mnist_fnn on 2 cores
        (lambda k: 13.1 * k * (1.25 if k >= 8 else 1), 4),  # cifar_fnn: flat, then slower
        (lambda k: k * 1.0, 15),  # equal per run: the largest (fewest fits)
    ],
)
def test_best_size_follows_the_timings(cost, want):
    assert size.best_size(timings(cost)) == want


def test_measure_stops_growing_once_a_size_is_slower_and_keeps_the_fastest_of_two_rounds():
    calls = []
    noise = iter([0.5, 0, 0, 0, 0, 0, 0, 0])  # the first timing of size 1 was disturbed

    def step_seconds(k):
        calls.append(k)
        return k**1.5 + next(noise)

    seconds = size.measure([1, 2, 4, 8, 16], step_seconds)
    # round 1: the disturbed size 1 made 2 look faster; 4 is slower than 2, and again when
    # timed once more: 8 and 16 are never built. Round 2 times 1, 2, 4 again and keeps each
    # one's fastest.
    assert calls == [1, 2, 4, 4, 1, 2, 4]
    assert seconds == {1: 1.0, 2: 2**1.5, 4: 8.0}
    assert size.best_size(seconds) == 1


def test_a_burst_of_load_on_one_size_does_not_end_the_search():
    calls = []
    burst = {4: iter([3.0])}  # the first timing of size 4 came during a burst of load

    def step_seconds(k):
        calls.append(k)
        return 1 + 0.1 * k + next(burst.get(k, iter([])), 0.0)  # stacking pays at every size

    seconds = size.measure([1, 2, 4, 8, 16], step_seconds)
    assert calls[:6] == [1, 2, 4, 4, 8, 16]  # 4 timed again, and the search went on
    assert size.best_size(seconds) == 16


def test_measure_keeps_to_its_budget():
    calls = []
    seconds = size.measure([1, 2, 4, 8], lambda k: calls.append(k) or 0.01, budget_s=0.0)
    assert calls == [1] and list(seconds) == [1]


@pytest.fixture
def cached(tmp_path, monkeypatch, make_cfg):
    monkeypatch.setenv("ZEROINIT_CACHE", str(tmp_path / "cache"))
    return make_cfg


def test_probe_is_cached_per_model_and_device(cached, monkeypatch):
    calls = []

    def fake(k):
        calls.append(k)
        return {1: 2.5, 2: 3.8, 4: 6.8, 8: 15.2}[k]

    cfg = cached("model=mnist_fnn")
    first = size.probe(cfg, 8, step_seconds=fake)
    assert first["size"] == 4 and not first["cached"] and calls
    assert first["gain"] == pytest.approx(4 * 2.5 / 6.8)
    calls.clear()
    again = size.probe(cfg, 8, step_seconds=fake)
    assert again["cached"] and again["size"] == 4 and calls == []
    assert size.probe(cfg, 4, step_seconds=fake)["cached"]  # a smaller cap: measured already
    size.probe(cached("model=logreg"), 8, step_seconds=fake)  # another model: measured
    assert calls
    calls.clear()
    size.probe(cached("model=mnist_fnn", "model.hidden=[300]"), 8, step_seconds=fake)
    assert calls  # another width is another model
    calls.clear()
    size.probe(cached("model=mnist_fnn", "speed.channels_last=true"), 8, step_seconds=fake)
    assert calls  # another speed setting: measured
    calls.clear()
    compiled = cached("model=mnist_fnn", "speed.compile=true", "speed.compile_mode=max-autotune")
    assert size.probe(compiled, 8, step_seconds=fake)["cached"]  # compiling is not probed
    monkeypatch.setattr(size, "_device_name", lambda device: "cpu: another machine")
    size.probe(cfg, 8, step_seconds=fake)
    assert calls  # another device: measured


def test_resolve_forces_checks_and_caps(cached, capsys):
    cfg = cached()
    assert size.resolve(8, cfg, 15) == 8 and size.resolve(20, cfg, 15) == 15
    assert size.resolve("auto", cfg, 1) == 1  # nothing to stack: nothing measured
    for bad in (0, -1, "abc", 2.5, True):
        with pytest.raises(
            UserError,
            match=r"hydra.launcher.stack_size: .* allowed: an "
            r"integer >= 1, or auto",
        ):
            size.resolve(bad, cfg, 15)
    capsys.readouterr()


def test_resolve_auto_measures_the_real_model_and_says_what_it_chose(cached, capsys):
    chosen = size.resolve("auto", cached("model=logreg"), 4)
    line = capsys.readouterr().out
    assert 1 <= chosen <= 4
    assert line.startswith("stacked: logreg on cpu: ") and "4 runs -> " in line
    assert size.resolve("auto", cached("model=logreg"), 4) == chosen  # from the cache
    assert "(measured before)" in capsys.readouterr().out


def test_an_image_folders_stacks_are_measured_from_its_first_image(cached, tmp_path, capsys):
    """The config leaves an image folder's shape to the data (dataset.input_shape: null); the
    probe reads it off the first training image instead of stacking up to the memory cap
    unmeasured (a CIFAR-10 JPEG folder once made stacks of 50 cifar_fnn runs)."""
    from fakedata import write_image_folder

    write_image_folder(tmp_path / "images", classes=("a", "b", "c"), size=(8, 6), channels=1)
    cfg = cached("dataset=image_folder", f"dataset.data_dir={tmp_path / 'images'}")
    assert size.with_data_shape(cfg).dataset.input_shape == [1, 8, 6]
    assert size.with_data_shape(cfg).dataset.num_classes == 3
    assert cfg.dataset.input_shape is None  # the run's own config is left as it was
    chosen = size.resolve("auto", cfg, 4)
    assert 1 <= chosen <= 4 and capsys.readouterr().out.startswith("stacked: mnist_fnn on cpu")
    (entry,) = json.loads((tmp_path / "cache" / size.FILE).read_text()).values()
    assert entry["key"]["shape"] == [1, 8, 6] and entry["key"]["classes"] == 3
    missing = cached("dataset=image_folder", f"dataset.data_dir={tmp_path / 'none'}")
    assert size.with_data_shape(missing) is missing  # unreadable: the run itself says why


def test_a_bad_stack_size_stops_the_sweep_in_one_line_before_any_run_folder(tmp_path, here):
    for bad in ("0", "abc"):
        out = here(
            "train.py",
            "-m",
            "seed=0,1",
            "launcher=stacked",
            f"hydra.launcher.stack_size={bad}",
            f"paths.log_dir={tmp_path}",
        )
        assert out.returncode == 2
        assert out.stderr.strip().splitlines()[-1].startswith("error: hydra.launcher.stack_size: ")
        assert "Traceback" not in out.stderr
        assert not [p for p in tmp_path.rglob("*") if p.is_dir() and p.name.endswith("-s0")]


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"x": {"seconds": "?"}}'])
def test_a_bad_cache_file_is_measured_again_and_replaced(cached, tmp_path, content):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / size.FILE).write_text(content)
    calls = []
    got = size.probe(cached(), 4, step_seconds=lambda k: calls.append(k) or k * 1.0)
    assert calls and not got["cached"] and got["size"] == 4
    assert size.probe(cached(), 4, step_seconds=lambda k: 1 / 0)["cached"]


def test_a_stack_of_one_trains_as_the_plain_run(tmp_path, make_cfg):
    from zeroinit.results import read_results
    from zeroinit.run import run
    from zeroinit.stacked.group import train_group

    extra = [
        "model=logreg",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "callbacks.diagnostics=null",
    ]
    jobs = [
        (make_cfg(*extra, f"seed={s}", f"paths.output_dir={tmp_path / f's{s}'}"), [f"seed={s}"])
        for s in (0, 1)
    ]
    outcomes = train_group(jobs, stack_size=1)
    assert [o for o, _, _ in outcomes] == ["completed", "completed"]
    alone = run(make_cfg(*extra, "seed=1", f"paths.output_dir={tmp_path / 'alone'}"))
    got = read_results(tmp_path / "s1")
    assert "stack_size" not in got  # not a member of a stack

    def strip(r):
        return [{k: v for k, v in e.items() if k != "epoch_time_s"} for e in r["epochs"]]

    assert strip(got) == strip(alone)  # the same path, the same bits

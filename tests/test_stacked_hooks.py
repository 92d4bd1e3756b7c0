"""Every hook of Lightning's Callback reaches a stacked member's callbacks, as in a run alone."""

import json

import lightning as L

from zeroinit.stacked.members import NOT_FORWARDED_AS_IS, StackedRuns, callback_hooks


def test_every_callback_hook_is_forwarded_to_the_members():
    hooks = callback_hooks()
    assert {"setup", "teardown", "on_save_checkpoint", "on_validation_batch_start"} <= set(hooks)
    for hook in hooks:  # StackedRuns has its own method for each: none is Callback's no-op
        assert getattr(StackedRuns, hook) is not getattr(L.Callback, hook), hook
    assert set(NOT_FORWARDED_AS_IS) <= set(hooks)


def test_a_users_callback_gets_the_same_hook_calls_stacked_and_alone(tmp_path, here):
    args = [
        "model=logreg",
        "seed=0,1",
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=3",
        "callbacks.diagnostics=null",
        "+callbacks.counter._target_=hookcounter.HookCounter",
        "+callbacks.counter.path=${paths.output_dir}/hooks.json",
    ]
    counts = {}
    for launcher in ("stacked", "basic"):
        out = here(
            "train.py",
            "-m",
            *args,
            f"launcher={launcher}",
            *(["hydra.launcher.stack_size=2"] if launcher == "stacked" else []),
            f"paths.log_dir={tmp_path / launcher}",
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert ("stacked: 2 runs in one fit" in out.stdout) == (launcher == "stacked")
        runs = sorted((tmp_path / launcher / "sweeps").rglob("hooks.json"))
        assert len(runs) == 2
        counts[launcher] = [json.loads(p.read_text()) for p in runs]
    alone, stacked = counts["basic"], counts["stacked"]
    for hook in ("setup", "teardown", "on_save_checkpoint", "on_validation_batch_start"):
        assert alone[0].get(hook), hook  # the hooks the issue found missing, called alone
    assert stacked == alone


def test_a_member_loads_its_own_part_of_the_stacks_checkpoint():
    import torch

    from zeroinit.stacked.members import combine_checkpoints, member_part

    def ckpt(x):
        return {
            "epoch": 1,
            "state_dict": {"net.w": torch.full((2, 3), x), "net.n": torch.tensor(5)},
            "optimizer_states": [
                {
                    "state": {0: {"step": torch.tensor(4.0), "exp_avg": torch.full((2, 3), -x)}},
                    "param_groups": [{"lr": 1e-3, "params": [0]}],
                }
            ],
            "callbacks": {"Writer": {"seen": x}},
        }

    members = [ckpt(1.0), ckpt(2.0)]
    stack = combine_checkpoints(members)
    states = stack["callbacks"][StackedRuns.__qualname__]["members"]
    for k, original in enumerate(members):
        own = member_part(stack, k, states)
        assert own["epoch"] == 1 and own["callbacks"] == original["callbacks"]
        for name, t in original["state_dict"].items():
            assert torch.equal(own["state_dict"][name], t)
        got, want = own["optimizer_states"][0], original["optimizer_states"][0]
        assert torch.equal(got["state"][0]["exp_avg"], want["state"][0]["exp_avg"])
        assert got["param_groups"] == want["param_groups"]

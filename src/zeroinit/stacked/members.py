"""Each member of a stacked group is a run: its own callbacks, results.json, TensorBoard
events and checkpoint, exactly the objects a separate run has (both are built by
zeroinit.run.build_member).

The group's Trainer holds one callback, `StackedRuns`, which calls every hook of every
member's callbacks with a `MemberTrainer` and a `MemberModule` in place of the trainer and the
LightningModule. To a callback, these look like a separate run's: the loggers are the member's,
`pl_module.net` is a network with the member's parameters (views into the stacked tensors,
so nothing is copied), `epoch_metrics()` returns the member's metrics, setting
`trainer.should_stop` stops only this member, and `trainer.save_checkpoint` writes the
checkpoint the separate run would write (see `member_checkpoint`). So the ResultsWriter, the
diagnostics and the checkpoint callback run per member unchanged, and a new callback in
conf/callbacks/ works stacked without knowing about it.
"""

import lightning as L
import torch
from torch import nn

from zeroinit.stacked.layers import member_state_dict, stacked_state_dict


class Member:
    """One run of the group: its config, its network view and its callbacks."""

    def __init__(self, index: int, parts):
        """`parts`: the run's own objects (zeroinit.run.build_member's RunParts)."""
        self.index, self.cfg, self.net = index, parts.cfg, parts.net
        self.callbacks, self.loggers, self.writer = parts.callbacks, parts.loggers, parts.writer
        self.metrics: dict = {}
        self.stop_requested = False  # set through MemberTrainer.should_stop (divergence)
        self.ended = False  # its fit-end hooks have run; it no longer trains
        self.frozen: dict | None = None  # its parameters when it ended, restored every step
        self.proxies = None  # (MemberTrainer, MemberModule), made once per fit
        self._hooked: dict[str, list] = {}  # hook -> its callbacks that implement it

    def implementing(self, hook: str) -> list:
        """The member's callbacks that implement `hook` (looked up once per hook: a stack
        calls 5 hooks x K members every step)."""
        found = self._hooked.get(hook)
        if found is None:
            found = self._hooked[hook] = [cb for cb in self.callbacks if _implements(cb, hook)]
        return found


class MemberTrainer:
    """The group's Trainer as one member's callbacks should see it."""

    def __init__(self, trainer, member: Member, group: "StackedRuns"):
        object.__setattr__(self, "_trainer", trainer)
        object.__setattr__(self, "_member", member)
        object.__setattr__(self, "_group", group)

    def __getattr__(self, name):
        return getattr(self._trainer, name)

    def __setattr__(self, name, value):
        if name == "should_stop":  # a member stops alone; the group trains on
            self._member.stop_requested = self._member.stop_requested or bool(value)
        else:
            setattr(self._trainer, name, value)

    @property
    def should_stop(self):
        return self._member.stop_requested

    @property
    def logger(self):
        return self._member.loggers[0] if self._member.loggers else None

    @property
    def loggers(self):
        return self._member.loggers

    @property
    def callbacks(self):
        return self._member.callbacks

    @property
    def datamodule(self):
        return _MemberData(self._trainer.datamodule)

    def save_checkpoint(self, filepath, weights_only=False, storage_options=None):
        torch.save(self._group.member_checkpoint(self._trainer, self._member), filepath)


class _MemberData:
    """What a callback asks of the datamodule: the test batches as a separate run gets them."""

    def __init__(self, data):
        self.data = data

    def val_dataloader(self):
        return self.data.member_val_dataloader()

    def __getattr__(self, name):
        return getattr(self.data, name)


class MemberModule:
    """The group's LightningModule as one member's callbacks should see it."""

    def __init__(self, module, member: Member):
        self._module, self._member = module, member

    @property
    def net(self):
        return self._member.net

    def epoch_metrics(self):
        return self._member.metrics

    def parameters(self):
        return self._member.net.parameters()

    def __getattr__(self, name):
        return getattr(self._module, name)


def _implements(callback, hook: str) -> bool:
    return getattr(type(callback), hook, None) is not getattr(L.Callback, hook, None)


def _wants_gradients(callback, step: int) -> bool:
    """Whether `callback` reads .grad at optimizer step `step`. A callback may say so with a
    `wants_gradients(step)` method (Diagnostics does: only while it watches), and its
    on_before_optimizer_step is then called in a stack only at the steps it wants; otherwise
    any callback with an on_before_optimizer_step hook gets them at every step."""
    ask = getattr(callback, "wants_gradients", None)
    if ask is not None:
        return ask(step)
    return _implements(callback, "on_before_optimizer_step")


def _tensors(net: nn.Module):
    return [*net.named_parameters(), *net.named_buffers()]


def point_views(stacked: nn.Module, member: Member) -> None:
    """Make the member's network share storage with row k of the stacked tensors."""
    tensors = dict(_tensors(stacked))
    for name, t in _tensors(member.net):
        source = tensors[name]
        t.data = source.data if source.dim() == 0 else source.data[member.index]


def point_grads(stacked: nn.Module, member: Member) -> None:
    """member.net's .grad = row k of the stacked gradients (views), for gradient diagnostics."""
    params = dict(stacked.named_parameters())
    for name, p in member.net.named_parameters():
        g = params[name].grad
        p.grad = None if g is None else g[member.index]


def member_optimizer_state(state: dict, k: int) -> dict:
    """Row k of a stacked optimizer's state_dict: a separate run's optimizer state."""
    return {
        "state": {
            i: {
                key: v[k].clone() if torch.is_tensor(v) and v.dim() > 0 else v
                for key, v in s.items()
            }
            for i, s in state["state"].items()
        },
        "param_groups": state["param_groups"],
    }


def stacked_optimizer_state(states: list[dict]) -> dict:
    """The inverse of member_optimizer_state: the members' optimizer states stacked."""
    first = states[0]
    return {
        "state": {
            i: {
                key: torch.stack([s["state"][i][key] for s in states])
                if torch.is_tensor(v) and v.dim() > 0
                else v
                for key, v in entry.items()
            }
            for i, entry in first["state"].items()
        },
        "param_groups": first["param_groups"],
    }


def _callback_states(callbacks) -> dict:
    out = {}
    for cb in callbacks:
        state = cb.state_dict()
        if state:
            out[cb.state_key] = state
    return out


def combine_checkpoints(checkpoints: list[dict]) -> dict:
    """A group checkpoint for Trainer.fit(ckpt_path=...) from its members' checkpoints (all
    at the same epoch): stacked weights and optimizer state, the members' callback states."""
    combined = {
        k: v
        for k, v in checkpoints[0].items()
        if k not in ("state_dict", "optimizer_states", "callbacks")
    }
    combined["state_dict"] = stacked_state_dict([c["state_dict"] for c in checkpoints])
    combined["optimizer_states"] = [
        stacked_optimizer_state([c["optimizer_states"][0] for c in checkpoints])
    ]
    combined["callbacks"] = {
        StackedRuns.__qualname__: {"members": [c.get("callbacks", {}) for c in checkpoints]}
    }
    combined.pop("epoch_metrics", None)  # a separate run's, before epoch_sums: not stacked
    if all("epoch_sums" in c for c in checkpoints):  # the epoch's running sums, per member
        combined["epoch_sums"] = {
            "train": torch.cat([c["epoch_sums"]["train"] for c in checkpoints], dim=1)
        }
    else:
        combined.pop("epoch_sums", None)
    return combined


def callback_hooks() -> list[str]:
    """Every hook of Lightning's Callback: its on_* methods, setup and teardown (state_dict
    and load_state_dict are not hooks: StackedRuns keeps the members' states by their keys)."""
    return [
        name
        for name, value in vars(L.Callback).items()
        if callable(value) and (name.startswith("on_") or name in ("setup", "teardown"))
    ]


# Hooks a member's callbacks get other than "called with the member's proxies whenever the
# stack's Trainer calls it", and why. Every other hook of Callback is forwarded as it is.
NOT_FORWARDED_AS_IS = {
    "on_save_checkpoint": "called with the member's own checkpoint as it is written "
    "(MemberTrainer.save_checkpoint), never with the stack's",
    "on_load_checkpoint": "called with the member's own part of the stack's checkpoint",
    "on_before_optimizer_step": "called only at the steps a callback reads gradients "
    "(wants_gradients), with the member's gradients in .grad",
    "teardown": "called for every member, those that ended early (diverged) too",
}
# What differs from a run alone, in every forwarded hook: `batch` and `outputs` are the
# stack's (x of shape (K, B, ...): member k's batch is x[k]; the stack's summed loss).


class StackedRuns(L.Callback):
    """Runs every member's callbacks, each as if its run were the only one."""

    def __init__(self, members: list[Member]):
        self.members = members
        self._dump = (None, None)  # (global_step, group checkpoint) shared by the members

    # -- plumbing
    def _call(self, hook, trainer, pl_module, *args, members=None):
        """Call `hook` of every member callback that implements it, with the member's
        proxies in place of the trainer and the module."""
        for m in members if members is not None else self.active():
            callbacks = m.implementing(hook)
            if callbacks:
                self._call_member(m, trainer, pl_module, hook, callbacks, *args)

    def _call_member(self, member, trainer, pl_module, hook, callbacks, *args):
        """Call `hook` of these `callbacks` of one member, with its proxies."""
        if member.proxies is None or member.proxies[0]._trainer is not trainer:
            member.proxies = (MemberTrainer(trainer, member, self), MemberModule(pl_module, member))
        for cb in callbacks:
            getattr(cb, hook)(*member.proxies, *args)

    def active(self):
        return [m for m in self.members if not m.ended]

    def _views(self, pl_module):
        for m in self.members:
            point_views(pl_module.net, m)

    # -- state: the members' callback states, by the keys a separate run uses
    def state_dict(self):
        return {"members": [_callback_states(m.callbacks) for m in self.members]}

    def load_state_dict(self, state):
        for m, states in zip(self.members, state["members"]):
            for cb in m.callbacks:
                if cb.state_key in states:
                    cb.load_state_dict(states[cb.state_key])

    def member_checkpoint(self, trainer, member: Member) -> dict:
        """What trainer.save_checkpoint would write in the member's separate run."""
        step, group = self._dump
        if step != trainer.global_step or group is None:
            group = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            self._dump = (trainer.global_step, group)
        ckpt = {
            k: v
            for k, v in group.items()
            if k not in ("state_dict", "optimizer_states", "callbacks")
        }
        ckpt["state_dict"] = {
            f"net.{k}": v
            for k, v in member_state_dict(trainer.lightning_module.net, member.index).items()
        }
        ckpt["optimizer_states"] = [
            member_optimizer_state(s, member.index) for s in group["optimizer_states"]
        ]
        ckpt["callbacks"] = _callback_states(member.callbacks)
        if "epoch_sums" in group:
            ckpt["epoch_sums"] = {"train": group["epoch_sums"]["train"][:, member.index, None]}
        # as Trainer.save_checkpoint does after collecting the callbacks' states
        self._call_member(
            member,
            trainer,
            trainer.lightning_module,
            "on_save_checkpoint",
            member.implementing("on_save_checkpoint"),
            ckpt,
        )
        return ckpt

    # -- hooks
    def setup(self, trainer, pl_module, stage):
        self._views(pl_module)  # before the move to the device: on_fit_start points again
        self._call("setup", trainer, pl_module, stage)

    def teardown(self, trainer, pl_module, stage):
        self._call("teardown", trainer, pl_module, stage, members=self.members)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        pass  # the stack's checkpoint is no member's: each gets its own (member_checkpoint)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        states = checkpoint.get("callbacks", {}).get(type(self).__qualname__, {})
        for m in self.active():
            if m.implementing("on_load_checkpoint"):
                own = member_part(checkpoint, m.index, states.get("members", [{}] * (m.index + 1)))
                self._call_member(
                    m,
                    trainer,
                    pl_module,
                    "on_load_checkpoint",
                    m.implementing("on_load_checkpoint"),
                    own,
                )

    def on_fit_start(self, trainer, pl_module):
        self._views(pl_module)  # after the move to the device: views of the final storage
        self._call("on_fit_start", trainer, pl_module)

    def on_train_start(self, trainer, pl_module):
        self._views(pl_module)
        self._call("on_train_start", trainer, pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        hook, step = "on_before_optimizer_step", trainer.global_step + 1
        # only the callbacks that read this step's gradients (the diagnostics: while they
        # watch), not K x each one every step; each asked once
        members = self.active()
        wanting = [
            (m, cbs)
            for m in members
            if (cbs := [cb for cb in m.implementing(hook) if _wants_gradients(cb, step)])
        ]
        if not wanting:
            return
        for m in members:
            point_grads(pl_module.net, m)
        for m, cbs in wanting:
            self._call_member(m, trainer, pl_module, hook, cbs, optimizer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._restore_frozen(pl_module)
        self._call("on_train_batch_end", trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        self._call(
            "on_validation_batch_end", trainer, pl_module, outputs, batch, batch_idx, dataloader_idx
        )

    def on_train_epoch_end(self, trainer, pl_module):
        for m, metrics in zip(self.members, pl_module.epoch_metrics()):
            m.metrics = metrics
        self._call("on_train_epoch_end", trainer, pl_module)
        for m in self.active():
            if m.stop_requested:  # diverged: its run ends here, as a separate run's would
                self._end(trainer, pl_module, m)
        if not self.active():
            trainer.should_stop = True

    def on_exception(self, trainer, pl_module, exception):
        self._call("on_exception", trainer, pl_module, exception)

    def _end(self, trainer, pl_module, member):
        self._call("on_train_end", trainer, pl_module, members=[member])
        self._call("on_fit_end", trainer, pl_module, members=[member])
        member.ended = True
        member.frozen = {n: t.detach().clone() for n, t in _tensors(member.net)}

    def _restore_frozen(self, pl_module):
        # An ended member (diverged) stops updating: its slice of every tensor is put back
        # after each optimizer step. Its values never reach the other members.
        for m in self.members:
            if m.frozen:
                with torch.no_grad():
                    for name, t in _tensors(m.net):
                        t.copy_(m.frozen[name])


def member_part(checkpoint: dict, k: int, callback_states: list) -> dict:
    """Member k's checkpoint cut from a stack's (the inverse of combine_checkpoints)."""
    own = {
        key: v
        for key, v in checkpoint.items()
        if key not in ("state_dict", "optimizer_states", "callbacks", "epoch_sums")
    }
    own["state_dict"] = {
        n: t if t.dim() == 0 else t[k] for n, t in checkpoint.get("state_dict", {}).items()
    }
    own["optimizer_states"] = [
        member_optimizer_state(s, k) for s in checkpoint.get("optimizer_states", [])
    ]
    own["callbacks"] = callback_states[k]
    if "epoch_sums" in checkpoint:
        own["epoch_sums"] = {"train": checkpoint["epoch_sums"]["train"][:, k, None]}
    return own


def _forward(hook):
    def method(self, trainer, pl_module, *args, **kwargs):
        self._call(hook, trainer, pl_module, *args, *kwargs.values())

    method.__name__ = hook
    return method


for _hook in callback_hooks():  # every hook StackedRuns does not define itself
    if _hook not in StackedRuns.__dict__:
        setattr(StackedRuns, _hook, _forward(_hook))

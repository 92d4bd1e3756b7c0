"""A user's own callback for the tests: counts every hook of Lightning's Callback it gets and
writes the counts to `path` (JSON) at every call, so a hook that is never called is missing."""

import json
from collections import Counter
from pathlib import Path

import lightning as L

from zeroinit.stacked.members import callback_hooks


class HookCounter(L.Callback):
    def __init__(self, path: str):
        self.path, self.counts = Path(path), Counter()


def _counting(hook):
    def method(self, *args, **kwargs):
        self.counts[hook] += 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.counts, sort_keys=True))

    method.__name__ = hook
    return method


for _hook in callback_hooks():
    setattr(HookCounter, _hook, _counting(_hook))

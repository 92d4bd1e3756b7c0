"""A sweep's jobs as stacks, and the stacks spread over the places that train them.

The stack is the unit of scheduling. A group (jobs that may share a stack) is cut into as
few stacks as its cap allows (zeroinit.stacked.size: what fits and what is fastest), with
sizes as equal as can be (10 runs, cap 4: 4/3/3, not 4/4/2); a job that cannot stack is a
stack of one. Then, while there are fewer stacks
than places (GPUs, or CPU workers), the largest stack is halved, so that every place has
work: 30 runs on 4 GPUs become 8/8/7/7, trained at once, not one stack of 30 on GPU 0.
Finally each stack goes to the place with the least work so far (in the sweep's order), and
every place trains its stacks one after another.

Pure functions over lists: `split`, `spread` and `assign` know nothing of Hydra or torch.
"""

import math


def split(items: list, cap: int) -> list[list]:
    """`items` in ceil(n / cap) consecutive parts whose sizes differ by at most one."""
    n = len(items)
    if n == 0:
        return []
    parts = math.ceil(n / max(1, cap))
    sizes = [n // parts + (i < n % parts) for i in range(parts)]
    out, start = [], 0
    for size in sizes:
        out.append(items[start : start + size])
        start += size
    return out


def spread(stacks: list[list], places: int) -> list[list]:
    """Halve the largest stack until there are at least `places` stacks (or all are single
    runs): a place without work is a GPU left idle."""
    stacks = [list(s) for s in stacks]
    while len(stacks) < places:
        i = max(range(len(stacks)), key=lambda j: len(stacks[j]), default=None)
        if i is None or len(stacks[i]) < 2:
            break
        big = stacks.pop(i)
        half = (len(big) + 1) // 2
        stacks[i:i] = [big[:half], big[half:]]
    return stacks


def assign(stacks: list[list], places: int) -> list[list[list]]:
    """Each stack, in order, to the place with the fewest runs so far (ties: the lowest
    place). Returns the stacks of each place, in the order it trains them."""
    load = [0] * places
    out: list[list[list]] = [[] for _ in range(places)]
    for stack in stacks:
        p = min(range(places), key=lambda j: (load[j], j))
        out[p].append(stack)
        load[p] += len(stack)
    return out

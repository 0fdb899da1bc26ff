"""``ci-gate demo``: the whole job offline, on generated data, in a couple of minutes on a CPU."""

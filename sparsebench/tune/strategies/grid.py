"""Exhaustive grid: every valid config, in the space's order."""


def search(space, evaluate, rng, seeds):
    for config in space.configs:
        evaluate(config)

"""Random search: the seeds, then valid configs in a seeded random order without repeats."""


def search(space, evaluate, rng, seeds):
    for config in seeds:
        evaluate(config)
    for i in rng.permutation(len(space.configs)):
        evaluate(space.configs[i])

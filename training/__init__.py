"""Training: tensors from a dataset version, the models, their training loop, evaluation, the
registry and the agents that plan with them.

- :mod:`.data`: trajectory table -> dense tensors, windows by index, episode split.
- :mod:`.models`: the world, behavior and offline-RL models, their shared layers, the rollout.
- :mod:`.loop`: the training loop and the train-evaluate-register workflow.
- :mod:`.evaluation`: baselines, metrics, reports, quality gates.
- :mod:`.registry`: model versions, cards and aliases.
- :mod:`.agents`: the planner and the arena.
"""

"""Training: tensors from a dataset, world and behavior models, training loop, baselines,
evaluation and imagination rollouts.

- :mod:`training.data`: trajectory table -> dense tensors, windows by index, episode split.
- :mod:`training.world_model`: ``WorldModel`` (next observation, reward, termination) and
  :func:`~training.world_model.imagine`.
- :mod:`training.behavior_model`: ``BehaviorModel`` (each agent's next action).
- :mod:`training.train`: ``train``, ``TrainConfig``, ``build_model``, ``model_state``.
- :mod:`training.baselines`, :mod:`training.evaluate`: baselines, metrics, reports.
"""

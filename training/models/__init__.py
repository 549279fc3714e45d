"""The generative models: :mod:`.world_model` (joint next state, reward, termination, and
imagined rollouts) and :mod:`.behavior_model` (each agent's next action)."""

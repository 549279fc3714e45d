"""simple_reference: two agents each know where the other must go and must say it.

Observation of each agent, 2 agents and 3 landmarks (21 floats; no own position):
``[self_vel(2), landmark_rel_pos(3*2), goal_color(3), other_agent_comm(10)]``. ``goal_color``
is the colour of the landmark the *other* agent must reach; landmark colours are fixed by
index (red, green, blue), so ``argmax(goal_color)`` is its index. ``comm`` is the one-hot
word the other agent said at the previous step (zeros at step 0). An action is
``move + 5 * word``: 50 in all.

Here: the scripted rules (:class:`ReferenceController`).
"""

from __future__ import annotations

import numpy as np

from foresight.datasets.sources.mpe import Controller, Simulator, move_toward


class ReferenceController(Controller):
    """simple_reference: tell the other agent its goal, go where the other agent says.

    A rule is ``{move}+{speech}``. Moves: ``listen`` (the landmark the other agent named last
    step; the landmarks' centre before anything was heard), ``nearest`` landmark, or
    ``fixed{k}``. Speech: ``honest`` (the index of the goal colour) or ``shifted`` (the next
    index: a consistent liar, recognisable only over time).
    """

    n_actions = 50
    accel = 5.0
    n_landmarks = 3
    n_words = 10

    def rules(self, agent: str) -> tuple[str, ...]:
        moves = ("listen", "nearest", *(f"fixed{k}" for k in range(self.n_landmarks)))
        return tuple(f"{m}+{s}" for s in ("honest", "shifted") for m in moves)

    def draw_rule(self, agent: str, rng: np.random.Generator) -> str:
        move = ("listen", "nearest", "fixed")[int(rng.integers(3))]
        if move == "fixed":
            move = f"fixed{int(rng.integers(self.n_landmarks))}"
        speech = "honest" if rng.random() < 0.75 else "shifted"
        return f"{move}+{speech}"

    def action(self, agent: str, obs: np.ndarray, rule: str) -> int:
        move_rule, _, speech = rule.partition("+")
        vel = obs[0:2]
        landmarks = obs[2:8].reshape(3, 2)
        goal_color = obs[8:11]
        heard = obs[11:21]
        if move_rule == "listen":
            word = int(np.argmax(heard))
            if heard[word] > 0 and word < self.n_landmarks:
                target = landmarks[word]
            else:
                target = landmarks.mean(axis=0)
        elif move_rule == "nearest":
            target = landmarks[int(np.argmin(np.linalg.norm(landmarks, axis=1)))]
        elif move_rule.startswith("fixed"):
            target = landmarks[int(move_rule[5:]) % self.n_landmarks]
        else:
            raise ValueError(f"simple_reference has no rule {rule!r}; rules: {self.rules(agent)}")
        say = int(np.argmax(goal_color)) if goal_color.any() else 0
        if speech == "shifted":
            say = (say + 1) % self.n_landmarks
        elif speech != "honest":
            raise ValueError(f"simple_reference has no rule {rule!r}; rules: {self.rules(agent)}")
        return move_toward(target, vel, self.accel) + 5 * say


SIMULATOR = Simulator("simple_reference", "simple_reference_v3", ReferenceController)

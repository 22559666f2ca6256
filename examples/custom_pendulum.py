"""A custom task family in a few lines: Pendulum-v1 whose pole mass and length vary per task.

    python examples/custom_pendulum.py                       # check it and run a few steps
    metarl train pretrained --env examples.custom_pendulum:family --out runs/pendulum

(Run the second command from the repository root: a ``module:Name`` env spec is imported
relative to the current folder when it is not an installed module.)
"""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from metarl.registry import make_env
from metarl.tasks import TaskFamily, check_task_family
from metarl.types import Task


@dataclass(frozen=True)
class PendulumTask(Task):
    family: ClassVar[str] = "pendulum"
    mass: float    # kg; Pendulum-v1 uses 1.0
    length: float  # m; Pendulum-v1 uses 1.0


def sample(rng: np.random.Generator) -> PendulumTask:
    return PendulumTask(mass=float(rng.uniform(0.5, 2.0)), length=float(rng.uniform(0.5, 1.5)))


def set_task(env, task: PendulumTask) -> None:
    env.unwrapped.m = task.mass     # Pendulum-v1 reads m and l in every step
    env.unwrapped.l = task.length


family = TaskFamily("Pendulum-v1", sample=sample, set_task=set_task,
                    ood_sample=lambda rng: PendulumTask(mass=float(rng.uniform(2.0, 3.0)), length=1.0))

if __name__ == "__main__":
    check_task_family(family)  # raises TaskFamilyError with the fix if something is wrong

    env = family.make()
    env.action_space.seed(0)
    for task in env.unwrapped.sample_tasks(3, rng=np.random.default_rng(0)):
        env.reset(seed=0, options={"task": task})
        ret = sum(env.step(env.action_space.sample())[1] for _ in range(50))
        print(f"{task}: return of 50 random steps {ret:.1f}")

    venv = family.make_vec(8)  # batched: one task per sub-env
    venv.reset(seed=0, options={"tasks": venv.sample_tasks(8, rng=np.random.default_rng(1), split="test")})
    print("batched observations:", venv.step(venv.action_space.sample())[0].shape)

    # What `--env examples.custom_pendulum:family` does in the scripts:
    print(make_env("examples.custom_pendulum:family").unwrapped.get_task())

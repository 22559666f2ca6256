"""Built-in task families, registered with Gymnasium under the ``metarl/`` namespace.

Each id has a single-env entry point and a batched twin (``vector_entry_point``), so
``gymnasium.make_vec("metarl/Navigation2D-v0", num_envs=1024)`` gives the NumPy-batched env.
Entry points are strings, so importing this package imports no env module.
"""

from __future__ import annotations

import gymnasium

ENV_IDS: dict[str, tuple[str, str]] = {
    "metarl/Navigation2D-v0": ("metarl.envs.navigation:Navigation2DEnv",
                               "metarl.envs.navigation:Navigation2DVectorEnv"),
    "metarl/CartPoleDynamics-v0": ("metarl.envs.cartpole_dynamics:CartPoleDynamicsEnv",
                                   "metarl.envs.cartpole_dynamics:CartPoleDynamicsVectorEnv"),
    "metarl/Bandit-v0": ("metarl.envs.bandit:BanditEnv", "metarl.envs.bandit:BanditVectorEnv"),
    "metarl/TabularMDP-v0": ("metarl.envs.tabular_mdp:TabularMDPEnv",
                             "metarl.envs.tabular_mdp:TabularMDPVectorEnv"),
}


def register_envs() -> None:
    """Register every built-in id (idempotent). Horizons are enforced by the envs themselves
    (``truncated`` at the horizon), identically in the batched twins, so no TimeLimit wrapper."""
    for env_id, (entry_point, vector_entry_point) in ENV_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point, vector_entry_point=vector_entry_point,
                               disable_env_checker=False)


register_envs()

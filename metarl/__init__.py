"""metarl: meta-reinforcement learning toolkit (PyTorch + Gymnasium).

Importing ``metarl`` registers the built-in task families with Gymnasium under the ``metarl/``
namespace (``gymnasium.make("metarl/Navigation2D-v0")``).
"""

from metarl.types import Task

__version__ = "0.1.0"

__all__ = ["Task", "__version__"]

import metarl.envs  # noqa: E402,F401  (registers the metarl/ env ids)

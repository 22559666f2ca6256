"""Classify new drawings with a trained few-shot learner, from Python (the README's few-shot example).

    metarl fewshot protonet --dataset omniglot --data-dir DATA --ways 5 --shots 1 --out runs/proto
    python examples/fewshot_classify.py runs/proto DATA
"""

import sys

import numpy as np
import torch

from metarl.data.omniglot import load_omniglot
from metarl.fewshot import load_fewshot_run
from metarl.types import Episode

run = load_fewshot_run(sys.argv[1])  # the trained learner, rebuilt from its weights-only checkpoint
omniglot = load_omniglot(sys.argv[2], run.data.sources)

# Five characters the learner never saw (test split), 20 drawings each: one to learn from, 19 to classify.
characters = omniglot.split(run.data.split, run.data.split_seed)["test"][::4][:5]
images = omniglot.load(characters, np.tile(np.arange(20), (5, 1)))  # [5, 20, 1, 28, 28]
support_x, new_x = images[:, :1].flatten(0, 1), images[:, 1:].flatten(0, 1)

predictor = run.learner.adapt(Episode.from_support(support_x, torch.arange(5), ways=5))
labels = predictor.classify(new_x)  # [95] labels in 0..4

truth = torch.arange(5).repeat_interleave(19)
print(f"{run.name}: {(labels == truth).double().mean() * 100:.1f}% of {len(truth)} new drawings of 5 unseen "
      "characters classified from one example each")

"""Few-shot data: Omniglot (:mod:`~metarl.data.omniglot`), episodic sampling from any class-indexed data
set (:mod:`~metarl.data.episodes`) and sinusoid regression tasks (:mod:`~metarl.data.sinusoid`)."""

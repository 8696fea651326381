"""prefpool.train: training from the pipeline's tables without a reference model.

- ``kinds/``: one spec per table kind (``pairwise``, ``mcpo``, ``mpo``): batch, loss, step-0
  sequences, eval ranking. MC-PO's two-pass step is ``kinds/mcpo.py``.
- The trainer behind ``prefpool train``: ``config`` (TrainConfig), ``data`` (the table decoded and
  tokenized once, batches), ``cache_check``, ``objective`` (a micro-batch's loss for any kind, step-0
  values), ``metrics``, ``card`` and ``trainer`` (``train(config)``).
- ``evaluate`` / ``eval_ranking`` / ``eval_samples`` (``prefpool eval``), ``plot``, ``online``
  (OnMC-PO), ``trl_plugin`` (TRL's DPO losses, MC-PO and MPO inside TRL's ``DPOTrainer``, on the cached
  reference log-probs).

Policy log-probs come from ``prefpool.pipeline.model.scoring``, the same function the ``logprobs``
stage uses, so cached reference values and the policy's agree at step 0.
"""

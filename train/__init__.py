"""prefpool.train: training from the pipeline's tables without a reference model.

``scoring`` (policy log-probs of tokenized pairs, batched by length),
``mcpo_step`` (MC-PO's two-pass step), and the trainer behind ``prefpool
train``: ``config`` (TrainConfig), ``data`` (tokenized table, batches),
``cache_check``, ``objective`` (per-kind loss, step-0 values), ``metrics``,
``card`` and ``trainer`` (``train(config)``).
"""

"""prefpool.train: the trainer that reads the pipeline's tables and holds no reference model.

Not yet implemented; the losses it will call are in ``prefpool.losses``.
"""

"""prefpool.train: training from the pipeline's tables without a reference model.

So far: ``scoring`` (policy log-probs of tokenized pairs, batched by length)
and ``mcpo_step`` (MC-PO's two-pass step). The trainer that reads the tables
and runs these is not written yet.
"""

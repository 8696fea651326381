"""What the pipeline and the trainer share about a model, so both compute the same numbers.

- ``tokenize``: the one place a (prompt, completion) pair becomes token ids.
- ``scoring``: per-sequence log-probs of tokenized pairs under a model (batched by length).
- ``cache_key``: what a cached reference log-prob depends on (weights, tokenizer, settings).
- ``info``: tokenizer, chat template, eos ids and hashes of a model folder.
"""

"""The controlled task with a known reward: the quickstart and the experiments of RESULTS.md.

- ``task``: the synthetic language, the hidden reward, the noisy annotator, the reference model.
- ``data``: the task's preference data made by prefpool's own commands (``prefpool run``).
- ``probe``: true reward and KL to the reference of a policy's fresh samples.
- ``training``: ``prefpool.train.Trainer`` with a probe every few steps.
- ``derive``: baseline tables the build stage has no policy for (max-margin, garbage, pairs).
- ``report``: plots and tables.
- ``grid``, ``stats``, ``verdict``: the paired design of experiments/controlled/design.md (its cells and
  comparisons, the matched-KL reading, bootstrap and sign test, the pre-registered verdict rule).
"""

"""Executors: where a stage's work units run (``local``: this process; ``ray``: a pool of Ray actors).

See ``base`` for the contract between a stage and an executor; ``ray`` for the cluster side.
"""

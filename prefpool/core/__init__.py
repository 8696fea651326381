"""The bottom layer that ``pipeline``, ``train`` and the CLI share: configuration, user errors, output
paths and the redaction of secrets."""

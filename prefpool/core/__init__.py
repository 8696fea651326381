"""The bottom layer that ``pipeline``, ``train`` and the CLI share: configuration and user errors."""

"""Card templates, shipped as package data: ``dataset_card.md`` (the Hub dataset card ``prefpool push``
writes) and ``model_card.md`` (the ``README.md`` ``prefpool train`` writes beside the model).

Both are ``string.Template`` texts, read with ``importlib.resources`` (``prefpool.pipeline.io.card.card_template``)
so an installed wheel finds them. No code lives here.
"""

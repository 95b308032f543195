"""Components: the label logits decomposed into every head, MLP, the embeddings and the bias terms, and their uses.

Modules in import order: ``result`` (:class:`Decomposition`), ``decompose``, ``stability``, ``estimators``,
``protocol``.
"""

"""Components: the label logits decomposed into every head, MLP, the embeddings and the bias terms, and their uses.

Modules, in the order they import each other:

* :mod:`~icl_heads.components.result`: :class:`~icl_heads.components.result.Decomposition`, the
  component table, each component's accuracy alone (Wilson intervals) and its kind;
* :mod:`~icl_heads.components.decompose`: :func:`~icl_heads.components.decompose.decompose`, the exact
  decomposition at the final position, checked against the model's own logits;
* :mod:`~icl_heads.components.stability`: component accuracies across demonstration sets and templates;
* :mod:`~icl_heads.components.estimators`: the estimators fitted on a decomposition (component
  reweighting, Calib+);
* :mod:`~icl_heads.components.protocol`: the reweighting protocol against K-shot ICL and Calib+.
"""

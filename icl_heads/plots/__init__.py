"""Plotly figures, one module per concept. Every function returns a ``go.Figure`` and never shows it.

Each module registers its functions as the figures of the results they draw (:func:`icl_heads.results.draws`),
so that ``result.plot()`` finds them while no result imports this package.
"""

from icl_heads.plots import bias, components, head_definitions, heads, mechanism, reading

__all__ = ["bias", "components", "head_definitions", "heads", "mechanism", "reading"]

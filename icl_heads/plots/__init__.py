"""Plotly figures, one module per concept. Every function returns a ``go.Figure`` and never shows it."""

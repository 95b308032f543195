"""The runtime type checker for the test suite: jaxtyping shapes checked by beartype.

``pyproject.toml`` passes ``--jaxtyping-packages=icl_heads,_typecheck.checker`` to
pytest, so every annotated function of the package checks its arguments' types and
tensor shapes while the tests run. Python's numeric tower is allowed (an ``int``
where a ``float`` is annotated), as in PEP 484.
"""

from beartype import BeartypeConf, beartype

checker = beartype(conf=BeartypeConf(is_pep484_tower=True))

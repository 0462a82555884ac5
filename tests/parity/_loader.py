"""Load one of scikit-learn's own test modules with its estimators swapped for ours.

The test source is read from the *installed* scikit-learn (its wheel ships
``sklearn/*/tests/``), rewritten mechanically on its syntax tree, compiled under its own
file name (so tracebacks point into scikit-learn's file) and executed in the namespace of
the parity module that asked for it, where pytest then collects its tests.  Nothing is
copied into this repository; a new scikit-learn release is picked up as it is installed.

The rewrite, driven by one entry of :data:`tests.parity.deviations.MODULES`:

``rebind``
    After every module-level ``import`` that binds one of these names, the name is bound
    again to the given object (``KMeans`` to :class:`tests.parity.estimators.KMeans`,
    ...), so decorators such as ``@pytest.mark.parametrize("Estimator", [KMeans, ...])``
    that run at import time see ours too.
``keywords``
    Keyword arguments renamed (``init_size`` to ``init_sample_size``) or, mapped to
    ``None``, removed, in every call of the module.
``after``
    Source inserted after the module-level assignment of a name (e.g. the ids of the
    input containers, which the module spells out as a literal).
``remove``
    Module-level test functions left out altogether (those that cannot even be
    collected here, e.g. parametrized by a generator); each has its reason in
    ``deviations.py``.

Which tests are then dropped or expected to fail is decided per test id in
``tests/parity/conftest.py`` from :data:`tests.parity.deviations.DEVIATIONS`.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

__all__ = ["sklearn_test_path", "adapted_source", "load_into"]


def sklearn_test_path(module: str) -> Path:
    """File of an installed scikit-learn test module, e.g. ``sklearn.cluster.tests.test_k_means``."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"{module} is not installed (scikit-learn's wheel ships its tests)")
    return Path(spec.origin)


class _Rewrite(ast.NodeTransformer):
    def __init__(self, rebind: dict, keywords: dict, after: dict, remove=()):
        self.rebind, self.keywords, self.after, self.remove = rebind, keywords, after, set(remove)
        self.used: set[str] = set()

    def visit_Call(self, node: ast.Call):
        self.generic_visit(node)
        kept = []
        for kw in node.keywords:
            if kw.arg in self.keywords:
                self.used.add(f"keyword {kw.arg}")
                if self.keywords[kw.arg] is None:
                    continue
                kw = ast.keyword(arg=self.keywords[kw.arg], value=kw.value)
            kept.append(kw)
        node.keywords = kept
        return node

    def rewrite_module(self, tree: ast.Module) -> ast.Module:
        body = []
        for stmt in tree.body:
            if isinstance(stmt, ast.FunctionDef) and stmt.name in self.remove:
                self.used.add(f"remove {stmt.name}")
                continue
            body.append(self.visit(stmt))
            bound = _bound_names(stmt)
            for name in bound & set(self.rebind):
                self.used.add(f"rebind {name}")
                body.extend(ast.parse(f"{name} = __parity_rebind__[{name!r}]").body)
            for name in bound & set(self.after):
                self.used.add(f"after {name}")
                body.extend(ast.parse(self.after[name]).body)
        tree.body = body
        return ast.fix_missing_locations(tree)


def _bound_names(stmt) -> set[str]:
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in stmt.names}
    if isinstance(stmt, ast.Assign):
        return {t.id for t in stmt.targets if isinstance(t, ast.Name)}
    return set()


def adapted_source(module: str, *, rebind: dict, keywords: dict | None = None,
                   after: dict | None = None, remove=()) -> tuple[ast.Module, Path]:
    """The rewritten syntax tree of ``module`` and its file.

    Raises ``LookupError`` when a requested rewrite found nothing to apply to (the test
    module changed under us: the adaptation must be revisited, not silently skipped).
    """
    path = sklearn_test_path(module)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    keywords, after = dict(keywords or {}), dict(after or {})
    rw = _Rewrite(rebind, keywords, after, remove)
    tree = rw.rewrite_module(tree)
    wanted = ({f"rebind {n}" for n in rebind} | {f"keyword {k}" for k in keywords}
              | {f"after {n}" for n in after} | {f"remove {n}" for n in remove})
    unused = sorted(wanted - rw.used)
    if unused:
        raise LookupError(f"{module}: these rewrites found nothing to apply to: {unused}")
    return tree, path


def load_into(namespace: dict, spec: dict) -> None:
    """Execute the adapted test module of ``spec`` (an entry of ``deviations.MODULES``) in
    ``namespace`` (a parity test module's ``globals()``)."""
    module, rebind = spec["module"], spec["rebind"]
    tree, path = adapted_source(module, rebind=rebind, keywords=spec.get("keywords"),
                                after=spec.get("after"), remove=spec.get("remove", {}))
    namespace["__parity_rebind__"] = dict(rebind)
    namespace["__parity_source__"] = str(path)
    exec(compile(tree, str(path), "exec"), namespace)  # noqa: S102 - scikit-learn's own tests

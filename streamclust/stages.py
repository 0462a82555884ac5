"""The stages of a run directory, declared once.

Every stage (``ingest``, ``fit``, ``assign``, ``select-k``, ``sample``, ``evaluate``,
``compare``, ``train-ae`` / ``train-vae``, ``encode``, ``report``) declares here, in
:data:`STAGES`, its key in ``config.json``, the stages it reads and the artefacts it
writes; the artefacts' paths are in :data:`ARTEFACTS`.  Everything else is derived from
that one declaration:

paths
    ``RunLayout.of(run_dir).features`` etc. (:meth:`streamclust.store.RunLayout.path`);
    no other module spells an artefact's name.
completion markers
    :func:`complete` writes ``.streamclust/<stage>.done`` last, after the stage's
    outputs: JSON with a fresh ``token`` and the tokens of the upstream stages the
    stage read (``upstream``), plus what the stage adds (e.g. its timing).
currency
    :func:`status` is ``"current"`` when the marker exists and every upstream stage it
    read is still the one it read (same token) and current itself; ``"stale"`` when an
    upstream stage was redone (or is gone) since; ``"missing"`` without a marker.
    Markers written before markers recorded their upstream are taken as current.
the invalidation cascade
    :func:`invalidate` removes every stage downstream of one (markers first, then
    checkpoints, then outputs), so that a kill part-way never leaves a stage marked
    done whose data is gone; redoing a stage with other settings calls it.
"run X first"
    :func:`require` raises :class:`~streamclust.errors.StageNotDoneError` naming the
    command of the missing (or stale) stage.

This module imports nothing heavy: the ingestion workers import :mod:`streamclust.store`.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .errors import StageNotDoneError

if TYPE_CHECKING:
    from .store import RunLayout

__all__ = ["Stage", "STAGES", "ARTEFACTS", "MODEL_FILES", "MODEL_NETS", "stage", "reads", "downstream", "edges",
           "token", "status", "statuses", "is_current", "complete", "invalidate", "require", "artefacts_of",
           "stray_partials", "CURRENT", "STALE", "MISSING"]

CURRENT, STALE, MISSING = "current", "stale", "missing"

#: every artefact of a run directory: name -> path relative to RUN_DIR
ARTEFACTS: dict[str, str] = {
    "config": "config.json",
    "images": "images.zarr",
    "manifest": "manifest.csv",
    "ingest_summary": "ingest_summary.json",
    "state_dir": ".streamclust",
    "model_dir": "model",
    "fit_rows": "model/fit_rows.npy",
    "features": "features.zarr",
    "embedding": "embedding.zarr",
    "fit_summary": "fit_summary.json",
    "assignments": "assignments.csv",
    "select_k_csv": "select_k.csv",
    "select_k_png": "select_k.png",
    "samples": "samples.png",
    "evaluation": "evaluation.json",
    "compare_csv": "compare.csv",
    "report_dir": "report",
    "deep_dir": "deep",
    "latents": "latents.zarr",
    "latent_rows": "deep/latent_rows.npy",
    "ae_weights": "deep/ae.pt",
    "ae_history": "deep/ae_history.json",
    "vae_weights": "deep/vae.pt",
    "vae_history": "deep/vae_history.json",
}

#: the fitted models ``fit`` writes in ``model/``, each one ``.npz`` file:
#: name -> path relative to RUN_DIR (:meth:`streamclust.store.RunLayout.model`)
MODEL_FILES: dict[str, str] = {name: f"{ARTEFACTS['model_dir']}/{name}.npz"
                               for name in ("pca", "kmeans", "gmm", "agglomerative", "kpca", "tsne", "tsne_kmeans")}

#: the networks ``streamclust train`` trains, each its own stage ``train-<net>``
MODEL_NETS = ("ae", "vae")


def _fit_on_latents(cfg: dict) -> bool:
    return (cfg.get("fit") or {}).get("features") == "latents"


def _encoded_with(net: str) -> Callable[[dict], bool]:
    def condition(cfg: dict) -> bool:
        return (cfg.get("encode") or {}).get("model", net) == net  # unknown: any network

    condition.__name__ = f"encoded_with_{net}"
    return condition


@dataclass(frozen=True)
class Stage:
    """One stage of a run: what it reads, what it writes, how to run it.

    Parameters
    ----------
    name : str
        The stage's name, also its marker's (``.streamclust/<name>.done``).
    command : str
        The command that runs it, ``{run}`` standing for the run directory.
    config_key : str or None
        Its settings' key in ``config.json``.
    needs : tuple of str
        Stages it reads and that must have completed before it runs.
    needs_if : tuple of (str, callable)
        Stages it reads only when ``condition(config.json)`` holds (``fit`` reads the
        latents of ``encode`` only when fitted on latents).
    writes : tuple of str
        Its outputs, names of :data:`ARTEFACTS`.
    state : tuple of str
        Glob patterns of its resume state under ``.streamclust`` (checkpoints and the
        markers of its sub-stages, ``*.done`` removed first).
    forget_config : bool
        Invalidation also removes its key from ``config.json`` (``encode``: the
        settings describe the latents that are gone).
    """

    name: str
    command: str
    config_key: str | None = None
    needs: tuple[str, ...] = ()
    needs_if: tuple[tuple[str, Callable[[dict], bool]], ...] = ()
    writes: tuple[str, ...] = ()
    state: tuple[str, ...] = ()
    forget_config: bool = False
    help: str = field(default="", compare=False)

    def command_for(self, run_dir) -> str:
        return self.command.format(run=run_dir)


_DECLARED = [
    Stage("ingest", "streamclust ingest SOURCE {run}", "ingest",
          writes=("images", "manifest", "ingest_summary"), state=("ingest*", "manifest.part.csv"),
          help="images.zarr and the manifest"),
    *(Stage(f"train-{net}", f"streamclust train {{run}} --model {net}", "train", needs=("ingest",),
            writes=(f"{net}_weights", f"{net}_history"), state=(f"train-{net}*",),
            help=f"the {net} network") for net in MODEL_NETS),
    Stage("encode", "streamclust encode {run}", "encode",
          needs_if=tuple((f"train-{net}", _encoded_with(net)) for net in MODEL_NETS),
          writes=("latents", "latent_rows"), forget_config=True, help="latents.zarr"),
    Stage("fit", "streamclust fit {run}", "fit", needs=("ingest",), needs_if=(("encode", _fit_on_latents),),
          writes=("model_dir", "features", "embedding", "fit_summary"), state=("fit-*", "pca-sketch.*"),
          help="the models and the PCA features"),
    Stage("assign", "streamclust assign {run}", needs=("fit",), writes=("assignments",),
          help="assignments.csv"),
    Stage("select-k", "streamclust select-k {run} --k START:STOP:STEP", "select_k", needs=("fit",),
          writes=("select_k_csv", "select_k_png"), state=("select-k.ckpt.npz", "select-k-score.ckpt.npz"),
          help="select_k.csv and select_k.png"),
    Stage("sample", "streamclust sample {run}", needs=("fit",), writes=("samples",), help="samples.png"),
    Stage("evaluate", "streamclust evaluate {run} --labels labels.csv", needs=("assign",),
          writes=("evaluation",), help="evaluation.json"),
    Stage("compare", "streamclust compare {run}", needs=("fit",), writes=("compare_csv",), help="compare.csv"),
    Stage("report", "streamclust report {run}", needs=("fit", "assign"), writes=("report_dir",),
          help="report/index.html"),
]

#: the stages in the order they run (every stage after the stages it reads)
STAGES: dict[str, Stage] = {s.name: s for s in _DECLARED}


def _check_declaration() -> None:
    seen: set[str] = set()
    owners: dict[str, str] = {}
    for s in _DECLARED:
        for up in (*s.needs, *(u for u, _ in s.needs_if)):
            if up not in seen:
                raise AssertionError(f"stage {s.name} reads {up}, declared after it")
        for a in s.writes:
            if a not in ARTEFACTS or a in owners:
                raise AssertionError(f"artefact {a} of {s.name}: unknown or written twice")
            owners[a] = s.name
        seen.add(s.name)


_check_declaration()


def stage(name: str) -> Stage:
    """The declaration of stage ``name``."""
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"no stage {name!r}; the stages are {', '.join(STAGES)}") from None


def _run_config(layout: "RunLayout") -> dict:
    try:
        return json.loads(layout.config.read_text())
    except (OSError, ValueError):
        return {}


def reads(name: str, config: dict | None = None) -> tuple[str, ...]:
    """The stages ``name`` reads, given the run's ``config.json`` (conditional reads with ``None``: all)."""
    s = stage(name)
    extra = tuple(u for u, cond in s.needs_if if config is None or cond(config))
    return (*s.needs, *extra)


def edges() -> list[tuple[str, str]]:
    """Every ``(upstream, downstream)`` edge of the declared graph, conditional ones included."""
    return [(u, s) for s in STAGES for u in reads(s)]


def downstream(name: str, config: dict | None = None) -> list[str]:
    """Every stage that reads ``name``, directly or not, in run order (``config``: as :func:`reads`)."""
    out: list[str] = []
    hit = {name}
    for s in STAGES:
        if s != name and any(u in hit for u in reads(s, config)):
            hit.add(s)
            out.append(s)
    return out


def artefacts_of(name: str) -> tuple[str, ...]:
    return stage(name).writes


# ------------------------------------------------------------------------------ markers
def _marker_record(layout: "RunLayout", name: str) -> dict | None:
    path = layout.marker(name)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {}


def token(layout: "RunLayout", name: str) -> str | None:
    """The identity of the completed ``name`` (``None`` when it has not completed).

    A fresh random token for markers :func:`complete` wrote; for other markers, the
    marker file's modification time.
    """
    record = _marker_record(layout, name)
    if record is None:
        return None
    if isinstance(record.get("token"), str):
        return record["token"]
    try:
        return f"mtime:{layout.marker(name).stat().st_mtime_ns}"
    except FileNotFoundError:
        return None


def complete(layout: "RunLayout", name: str, **extra: Any) -> Path:
    """Mark ``name`` complete: the last write of a stage, after its outputs.

    Records the tokens of the stages it read (as :func:`reads` says for the run's
    configuration now), so :func:`status` can tell later whether they were redone.
    ``name`` may also be a sub-stage (``fit-pca``), which reads nothing declared.
    """
    from ._atomic import write_json

    upstream = {}
    if name in STAGES:
        cfg = _run_config(layout)
        upstream = {u: token(layout, u) for u in reads(name, cfg)}
    record = {"stage": name, "token": uuid.uuid4().hex, "upstream": upstream, **extra}
    return write_json(layout.marker(name), record)


def status(layout: "RunLayout", name: str, _seen: dict | None = None) -> str:
    """``"current"``, ``"stale"`` (an upstream stage was redone or is gone since) or ``"missing"``."""
    memo = {} if _seen is None else _seen
    if name in memo:
        return memo[name]
    record = _marker_record(layout, name)
    if record is None:
        result = MISSING
    elif not isinstance(record.get("upstream"), dict):
        result = CURRENT  # written before markers named their upstream: nothing to compare
    else:
        result = CURRENT
        for up, recorded in record["upstream"].items():
            if recorded is None or token(layout, up) != recorded or status(layout, up, memo) != CURRENT:
                result = STALE
                break
    memo[name] = result
    return result


def statuses(layout: "RunLayout") -> dict[str, str]:
    """:func:`status` of every declared stage."""
    memo: dict = {}
    return {name: status(layout, name, memo) for name in STAGES}


def is_current(layout: "RunLayout", name: str) -> bool:
    return status(layout, name) == CURRENT


def stale_because(layout: "RunLayout", name: str) -> str | None:
    """The upstream stage whose redoing made ``name`` stale (``None`` if it is not stale)."""
    record = _marker_record(layout, name) or {}
    for up, recorded in (record.get("upstream") or {}).items():
        if recorded is None or token(layout, up) != recorded or status(layout, up) != CURRENT:
            return up
    return None


def require(layout: "RunLayout", name: str, command: str | None = None) -> None:
    """Raise :class:`StageNotDoneError` unless ``name`` is complete and current, naming the command to run."""
    command = command or stage(name).command_for(layout.root)
    if not layout.root.is_dir():
        raise StageNotDoneError(f"run directory {str(layout.root)!r} does not exist; run `{command}` first")
    state = status(layout, name)
    if state == MISSING:
        raise StageNotDoneError(f"{name} has not completed in {str(layout.root)!r}; run `{command}` first")
    if state == STALE:
        raise StageNotDoneError(f"{name} in {str(layout.root)!r} is stale ({stale_because(layout, name)} was redone "
                                f"since); run `{command}` again")


# ------------------------------------------------------------------------------ cascade
def _remove(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
        return True
    if path.exists() or path.is_symlink():
        path.unlink()
        return True
    return False


def _state_entries(layout: "RunLayout", names: Iterable[str]) -> list[Path]:
    if not layout.state_dir.is_dir():
        return []
    out = []
    for n in names:
        for pattern in stage(n).state:
            out.extend(p for p in sorted(layout.state_dir.glob(pattern)) if p.name != f"{n}.done")
    return out


def invalidate(layout: "RunLayout", name: str, *, include_self: bool = False) -> list[str]:
    """Remove what was computed from ``name``: every downstream stage (and ``name`` too with ``include_self``).

    Markers go first (every affected stage's, its sub-stages' included), then the
    checkpoints, then the outputs, so a kill part-way leaves nothing marked done whose
    data is gone.  Settings stay in ``config.json`` (a stage with ``forget_config``
    excepted), so running a command again with the same settings redoes it.  Which
    stages are downstream follows :func:`reads` for the run's configuration now.

    Returns the stages affected, in run order.
    """
    cfg = _run_config(layout)
    names = ([name] if include_self else []) + downstream(name, cfg)
    state = _state_entries(layout, names)
    for n in names:
        layout.marker(n).unlink(missing_ok=True)
    for p in state:
        if p.name.endswith(".done"):
            p.unlink(missing_ok=True)
    for p in state:
        _remove(p)
    for n in names:
        for a in stage(n).writes:
            if n == "ingest" and a == "images":
                from .store import images_location, remove_store

                remove_store(images_location(layout.root))  # wherever `ingest --store` put it
            else:
                _remove(layout.path(a))
    forget = [stage(n).config_key for n in names if stage(n).forget_config]
    if any(k in cfg for k in forget):
        from ._atomic import write_json

        cfg = _run_config(layout)
        for k in forget:
            cfg.pop(k, None)
        write_json(layout.config, cfg)
    return names


def found_any(layout: "RunLayout", name: str) -> bool:
    """Whether anything of stage ``name`` is in the run directory: its marker, state or outputs."""
    if layout.marker(name).exists() or _state_entries(layout, [name]):
        return True
    return any(layout.path(a).exists() for a in stage(name).writes)


def stray_partials(layout: "RunLayout") -> list[Path]:
    """Temp files of atomic writes (``name.<uuid>.partial``) in the run directory, its state
    folder and beside or inside every declared artefact (zarr stores excepted: zarr and
    ``fit`` clean their own).  A killed write leaves one; while no command writes the run
    (its writer's lock held, :mod:`streamclust.lock`), every one there is such a stray.
    """
    folders = {layout.root, layout.state_dir}
    for rel in ARTEFACTS.values():
        path = layout.root / rel
        folders.add(path.parent)
        if path.suffix != ".zarr" and path.is_dir():
            folders.add(path)
    return sorted(p for f in folders if f.is_dir() for p in f.glob("*.partial") if p.is_file())

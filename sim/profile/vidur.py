"""Read Vidur's measured GPU operator profiles (`<gpu>/[<organisation>/]<model>/mlp.csv`)
as unit times.

Vidur (microsoft/vidur, `data/profiling/compute/<gpu>/<model>/mlp.csv`) times every
operator of one transformer layer on a real GPU: columns `time_stats.<op>.<stat>` in
milliseconds per call, the model's shape (`n_head`, `n_kv_head`, `n_embd`,
`n_expanded_embd`, `vocab_size`, `use_gated_mlp`), `num_tokens` and
`num_tensor_parallel_workers`. Only the rows without tensor parallelism describe one
device running a whole layer, so only TP1 rows are read; the rest are counted as skipped.

The operators are summed into the units they cover (medians, milliseconds -> seconds):

- `mlp`, the MLP half of a block: `post_attention_layernorm` (absent in parallel-attention
  models such as phi-2, whose one norm feeds both halves), `mlp_up_proj`, `mlp_act`,
  `mlp_down_proj` and the residual `add`;
- `attn_proj`, the attention half without the attention kernel (which these files do not
  hold): `input_layernorm`, `attn_pre_proj`, `attn_rope`, `attn_post_proj`, plus the second
  residual `add` where the model has two (a `post_attention_layernorm` column);
- `embed`: `emb`.

Each operator is one kernel: a unit's `kernels` is the number of operators summed (the
per-kernel overhead is fitted on these counts). A unit whose operator columns are missing is skipped for that file and said so; rows with
a missing time are skipped and counted; repeated `num_tokens` rows are merged (median).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sim import limits as lim
from sim.catalog import ModelSpec, models
from sim.config.load import read_csv_file
from sim.errors import UserError

CONFIG = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp")
TOKENS_COL = "num_tokens"
TP_COL = "num_tensor_parallel_workers"
STAT = "median"
# unit -> (required operators, optional operators)
UNIT_OPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "mlp": (("mlp_up_proj", "mlp_act", "mlp_down_proj"), ("post_attention_layernorm", "add")),
    "attn_proj": (("attn_pre_proj", "attn_post_proj"), ("input_layernorm", "attn_rope")),
    "embed": (("emb",), ()),
}
_MS = 1e-3


@dataclass
class VidurModel:
    """One file's TP1 measurements, as seconds per unit and token count."""

    folder: str  # the model folder's name in the profile directory
    spec: ModelSpec  # the catalog model with this shape, or one built from the columns
    in_catalog: bool
    path: Path
    times: pd.DataFrame  # columns: unit, tokens, seconds, kernels (operators summed)
    skipped: list[str] = field(default_factory=list)  # what was left out, one line each


@dataclass
class VidurProfile:
    """A Vidur profile directory of one GPU."""

    path: Path
    gpu: str
    models: list[VidurModel]

    @property
    def skipped(self) -> list[str]:
        return [f"{m.folder}: {s}" for m in self.models for s in m.skipped]


def _col(op: str) -> str:
    return f"time_stats.{op}.{STAT}"


def find_files(path: Path) -> list[Path]:
    """The `mlp.csv` files of one GPU's directory (or the one file named): `<model>/mlp.csv`
    as in this project's copy, or `<organisation>/<model>/mlp.csv` as in Vidur's own tree
    (`data/profiling/compute/<gpu>/`). A folder of several GPUs is refused in one line."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"{path}: profile directory not found")
    files = sorted(path.glob("*/mlp.csv")) or sorted(path.glob("mlp.csv"))
    if files:
        return files
    nested = sorted(path.glob("*/*/mlp.csv"))
    if nested and not _one_model_twice(nested):
        return nested  # <organisation>/<model>/mlp.csv: Vidur's layout of one GPU
    tops = sorted({p.parent.parent.name for p in nested}) or sorted(
        {p.parents[2].name for p in path.glob("*/*/*/mlp.csv")}
    )
    if tops:
        raise UserError(
            f"{path}: holds the profiles of several GPUs ({', '.join(tops)}); pass one GPU's "
            f"folder, e.g. {path / tops[0]}"
        )
    raise UserError(f"{path}: no <model>/mlp.csv files (Vidur's compute profile format)")


def _one_model_twice(files: list[Path]) -> bool:
    """Whether two of `<top>/<model>/mlp.csv` under different tops are one model (the same
    folder name or the same shape columns): then the tops are GPUs, not organisations."""
    seen: dict[object, str] = {}
    for f in files:
        top = f.parent.parent.name
        try:
            head = pd.read_csv(f, nrows=1, usecols=lambda c: c in CONFIG)
            shape = tuple(str(v) for v in head.iloc[0]) if len(head) else None
        except (OSError, ValueError, pd.errors.ParserError):
            shape = None
        for key in (("name", _norm_name(f.parent.name)), ("shape", shape)):
            if key[1] is None:
                continue
            if seen.setdefault(key, top) != top:
                return True
    return False


def _read_csv(path: Path) -> pd.DataFrame:
    frame = read_csv_file(path, str(path))
    missing = [c for c in (*CONFIG, TOKENS_COL, TP_COL) if c not in frame.columns]
    if missing:
        raise UserError(
            f"{path}: Vidur profile needs column '{missing[0]}'; required: "
            f"{', '.join((*CONFIG, TOKENS_COL, TP_COL))} and time_stats.<op>.{STAT} columns"
        )
    return frame


_SHAPE_BOUNDS = {
    "n_head": lim.HEADS,
    "n_kv_head": lim.HEADS,
    "n_embd": lim.HIDDEN_SIZE,
    "n_expanded_embd": lim.MLP_SIZE,
    "vocab_size": lim.VOCAB_SIZE,
}


def _shape(frame: pd.DataFrame, path: Path) -> dict:
    """The model's shape from the config columns (one value each)."""
    shape = {}
    for col, bound in _SHAPE_BOUNDS.items():
        values = lim.column_in_bound(frame, col, str(path), bound)
        if len(np.unique(values)) != 1:
            raise UserError(f"{path}: column '{col}' must hold one value (one model per file)")
        shape[col] = int(values[0])
    gated = {str(v).strip().lower() for v in frame["use_gated_mlp"]}
    if not gated <= {"true", "false", "1", "0", "1.0", "0.0"} or len(gated) != 1:
        raise UserError(f"{path}: column 'use_gated_mlp' must hold one of True, False")
    shape["gated"] = gated.pop() in ("true", "1", "1.0")
    if shape["n_embd"] % shape["n_head"] or shape["n_head"] % shape["n_kv_head"]:
        raise UserError(
            f"{path}: n_embd ({shape['n_embd']}) must be a multiple of n_head "
            f"({shape['n_head']}), and n_head of n_kv_head ({shape['n_kv_head']})"
        )
    return shape


def _norm_name(text: str) -> str:
    text = text.lower().removesuffix("-hf")
    return re.sub(r"^(meta-|microsoft-|mistralai-)", "", text)


def match_model(folder: str, shape: dict, max_tokens: int) -> tuple[ModelSpec, bool]:
    """The catalog model with this shape (the folder's name or the nearest vocabulary
    breaks ties), else a spec built from the columns (named after the folder)."""
    same = [
        m
        for m in models().values()
        if m.architecture == "decoder"
        and m.hidden_size == shape["n_embd"]
        and m.mlp_size == shape["n_expanded_embd"]
        and m.heads == shape["n_head"]
        and m.n_kv_heads == shape["n_kv_head"]
        and (m.mlp_kind == "gated") == shape["gated"]
    ]
    named = [m for m in same if _norm_name(m.name) == _norm_name(folder)]
    if named or same:
        best = named or sorted(same, key=lambda m: abs(m.vocab_size - shape["vocab_size"]))
        return best[0], True
    gated = shape["gated"]
    name = re.sub(r"[^A-Za-z0-9._-]", "-", folder).lower().lstrip("._-") or "vidur-model"
    spec = ModelSpec(
        name=name,
        architecture="decoder",
        layers=1,  # per-layer measurements: the depth does not enter a unit's cost
        hidden_size=shape["n_embd"],
        heads=shape["n_head"],
        kv_heads=shape["n_kv_head"],
        mlp_size=shape["n_expanded_embd"],
        mlp_kind="gated" if gated else "gelu",
        vocab_size=shape["vocab_size"],
        max_positions=max(max_tokens, 1),
        position="rotary",
        norm="rmsnorm" if gated else "layernorm",
        bias=not gated,
        tied_embeddings=False,
        source=f"shape from the columns of a Vidur profile ({folder}); norm and bias guessed",
    )
    return spec, False


def read_model_file(path: Path, folder: str | None = None) -> VidurModel:
    """One `mlp.csv`: TP1 rows summed into unit times; what was left out, in `skipped`."""
    folder = folder or path.parent.name
    frame = _read_csv(path)
    skipped: list[str] = []
    tp = pd.to_numeric(frame[TP_COL], errors="coerce")
    others = frame[tp != 1]
    if len(others):
        counts = others[TP_COL].value_counts().sort_index()
        detail = ", ".join(f"{n} rows at TP{k}" for k, n in counts.items())
        skipped.append(f"tensor-parallel rows skipped ({detail}); only TP1 rows are read")
    frame = frame[tp == 1]
    if frame.empty:
        raise UserError(f"{path}: no rows with {TP_COL} = 1 (only TP1 rows are read)")
    tokens = lim.column_in_bound(frame, TOKENS_COL, str(path), lim.TOKENS).astype(int)
    shape = _shape(frame, path)
    spec, in_catalog = match_model(folder, shape, int(tokens.max()))
    parts, kernels = [], {}
    for unit, (required, optional) in UNIT_OPS.items():
        absent = [op for op in required if _col(op) not in frame.columns]
        if absent:
            skipped.append(f"unit {unit} skipped: no column {_col(absent[0])}")
            continue
        ops = list(required) + [op for op in optional if _col(op) in frame.columns]
        if unit == "attn_proj" and _col("post_attention_layernorm") in frame.columns:
            ops += ["add"] if _col("add") in frame.columns else []
        kernels[unit] = len(ops)  # one kernel per timed operator
        ms = frame[[_col(op) for op in ops]].apply(pd.to_numeric, errors="coerce")
        bad = ~(np.isfinite(ms.to_numpy(float)).all(axis=1) & (ms.to_numpy(float) >= 0).all(axis=1))
        if bad.any():
            skipped.append(f"unit {unit}: {int(bad.sum())} rows with a missing time skipped")
        secs = ms.to_numpy(float)[~bad].sum(axis=1) * _MS
        part = pd.DataFrame({"unit": unit, "tokens": tokens[~bad], "seconds": secs})
        part = part[part["seconds"] > 0]
        parts.append(part)
    if not parts or all(p.empty for p in parts):
        raise UserError(
            f"{path}: no unit could be read (the MLP half needs "
            f"{', '.join(_col(op) for op in UNIT_OPS['mlp'][0])})"
        )
    times = pd.concat(parts, ignore_index=True)
    repeated = int(times.duplicated(["unit", "tokens"]).sum())
    if repeated:
        skipped.append(f"{repeated} repeated (unit, num_tokens) rows merged by their median")
    times = times.groupby(["unit", "tokens"], as_index=False, sort=True)["seconds"].median()
    times["kernels"] = times["unit"].map(kernels).astype(int)
    return VidurModel(folder, spec, in_catalog, path, times, skipped)


def read_profile(path: str | Path) -> VidurProfile:
    """Every model of one GPU's Vidur profile directory."""
    path = Path(path)
    files = find_files(path)
    gpu = path.name if path.is_dir() else path.parent.parent.name
    read = [read_model_file(f) for f in files]
    names = [m.spec.name for m in read]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"{path}: two folders give the same model '{dup[0]}'")
    return VidurProfile(path, gpu, read)

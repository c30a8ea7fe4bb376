"""The tuning database: Optuna storage as the history, one study per tuning key.

Sits between the tuner (which writes trials) and the compiler (which calls `lookup` for each kernel).
Contract of `TuningDB`:
  - Any SQLAlchemy URL works (SQLite file by default, postgresql+psycopg://... to share). Many processes on
    many machines may write at once: Optuna's RDB storage serialises trials, `study()` survives two
    creators racing (retry on IntegrityError/OperationalError).
  - A study's user attributes hold its readable key fields ("fields"), the GPU facts ("gpu_info"); a trial's
    user attributes hold the config it measured ("config") and, for failures, the reason ("reason").
  - Everything read back is data: a config is used only after `template.space.contains` and
    `template.valid` accept it; anything else is skipped with a logged warning. Nothing read is executed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import TrialState

from ds4c.device import GpuInfo
from ds4c.errors import Ds4cError
from ds4c.kernel_templates.base import Config, Problem, Template
from ds4c.runtime.loader import cache_dir

from .key import SCHEMA_VERSION, KeyFields, canonical_json, key_fields, token_count, without_token_dim

log = logging.getLogger("ds4c.tuning_db")

STUDY_PREFIX = "ds4c:"
MAX_CONFIG_CHARS = 4096  # a config is a few small ints; anything bigger is not one of ours
RETRIES = 8


def default_url() -> str:
    """$DS4C_DB if set, else a SQLite file in the user's ds4c cache (never the working directory)."""
    env = os.environ.get("DS4C_DB")
    if env:
        return env
    path = cache_dir() / "tuning.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _engine_kwargs(url: str) -> dict:
    backend = sqlalchemy.engine.make_url(url).get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": 60}}
    if backend == "postgresql":
        return {"connect_args": {"connect_timeout": 5}, "pool_pre_ping": True}
    return {}


def _redact(url: str) -> str:
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable URL>"


def retry(fn: Callable, what: str):
    """Run fn, retrying the errors two processes creating one schema or study at once produce."""
    for attempt in range(RETRIES):
        try:
            return fn()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as e:
            if attempt == RETRIES - 1:
                raise
            log.info("retrying %s after %s", what, type(e).__name__)
            time.sleep(0.05 * 2**attempt)


@dataclass(frozen=True)
class Entry:
    """The best of one study: what `db ls`, export and merge deal in."""

    key: str
    fields: KeyFields
    gpu_info: dict
    config: Config | None
    us: float | None
    trials: int  # finished, measured trials (complete or failed; not invalid or duplicate)

    def to_json(self) -> dict:
        return {"key": self.key, "fields": self.fields.to_json(), "gpu_info": self.gpu_info,
                "config": self.config, "us": self.us}


def checked_config(template: Template, problem: Problem, gpu: GpuInfo, config: object, where: str
                   ) -> Config | None:
    """A config read from storage, completed with its space's implied parameters, when it may be used;
    None with a logged warning otherwise (never raises)."""
    try:
        config = template.space.complete(config)
        if len(canonical_json(config)) > MAX_CONFIG_CHARS:
            log.warning("%s: rejected an oversized config", where)
            return None
        if not template.space.contains(config):
            log.warning("%s: rejected config %.200s (not in the search space)", where, canonical_json(config))
            return None
        if not template.valid(dict(config), problem, gpu):  # type: ignore[arg-type]
            log.warning("%s: rejected config %.200s (not valid for this problem)", where,
                        canonical_json(config))
            return None
    except Exception as e:
        log.warning("%s: rejected a config that could not be checked (%s)", where, type(e).__name__)
        return None
    return dict(config)  # type: ignore[arg-type]


def gpu_from_json(d: object) -> GpuInfo:
    """GpuInfo from stored data (raises ValueError on anything malformed)."""
    if not isinstance(d, dict) or set(d) != {"name", "capability", "sm_count", "smem_per_block",
                                             "regs_per_sm", "l2_bytes"}:
        raise ValueError("bad gpu_info")
    cap = d["capability"]
    ints = [d[k] for k in ("sm_count", "smem_per_block", "regs_per_sm", "l2_bytes")]
    if not (isinstance(d["name"], str) and isinstance(cap, list) and len(cap) == 2
            and all(type(v) is int and 0 <= v < 2**40 for v in [*cap, *ints])):
        raise ValueError("bad gpu_info values")
    return GpuInfo(d["name"], (cap[0], cap[1]), *ints)


def gpu_to_json(gpu: GpuInfo) -> dict:
    d = asdict(gpu)
    d["capability"] = list(gpu.capability)
    return d


class TuningDB:
    """One tuning storage. `url`: None -> $DS4C_DB -> SQLite in the cache; `fallback`: when the URL
    cannot be reached, warn and use the local SQLite file instead of raising Ds4cError."""

    def __init__(self, url: str | None = None, *, fallback: bool = False):
        url = url or default_url()
        try:
            self.storage = self._open(url)
        except Ds4cError:
            local = f"sqlite:///{cache_dir() / 'tuning.db'}"
            if not fallback or url == local:
                raise
            log.warning("tuning database %s unreachable; using %s", _redact(url), local)
            (cache_dir()).mkdir(parents=True, exist_ok=True)
            url = local
            self.storage = self._open(url)
        self.url = url

    @staticmethod
    def _open(url: str) -> optuna.storages.RDBStorage:
        try:
            engine = sqlalchemy.create_engine(url, **_engine_kwargs(url))
            with engine.connect():
                pass
            engine.dispose()
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise Ds4cError(f"cannot open tuning database {_redact(url)}: {first}") from None
        return retry(lambda: optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url)),
                     "creating the storage schema")

    # --- studies -----------------------------------------------------------------------------------
    def study(self, fields: KeyFields, gpu: GpuInfo, sampler: optuna.samplers.BaseSampler | None = None
              ) -> optuna.Study:
        """The study of this key, created (with its readable attributes) when missing."""

        def create() -> optuna.Study:
            return optuna.create_study(storage=self.storage, study_name=STUDY_PREFIX + fields.key,
                                       sampler=sampler, direction="minimize", load_if_exists=True)

        study = retry(create, "creating a study")
        if "fields" not in study.user_attrs:
            retry(lambda: study.set_user_attr("fields", fields.to_json()), "labelling a study")
            retry(lambda: study.set_user_attr("gpu_info", gpu_to_json(gpu)), "labelling a study")
        return study

    def _study_id(self, key: str) -> int | None:
        try:
            return self.storage.get_study_id_from_name(STUDY_PREFIX + key)
        except KeyError:
            return None

    def _fields_of(self, frozen) -> KeyFields | None:
        try:
            return KeyFields.from_json(frozen.user_attrs.get("fields"))
        except ValueError:
            return None

    def studies(self) -> list[tuple[int, str, KeyFields | None, dict]]:
        """(study id, key, fields or None when unreadable, study user attrs) of every ds4c study."""
        out = []
        for s in self.storage.get_all_studies():
            if s.study_name.startswith(STUDY_PREFIX):
                sid = self.storage.get_study_id_from_name(s.study_name)
                out.append((sid, s.study_name[len(STUDY_PREFIX):], self._fields_of(s), s.user_attrs))
        return out

    def trials(self, key: str, states: tuple[TrialState, ...] | None = None) -> list:
        sid = self._study_id(key)
        if sid is None:
            return []
        return self.storage.get_all_trials(sid, deepcopy=False, states=states)

    # --- reading configs -----------------------------------------------------------------------------
    def best_valid(self, key: str, template: Template, problem: Problem, gpu: GpuInfo
                   ) -> tuple[Config, float] | None:
        """The fastest COMPLETE trial of key whose config passes checked_config, with its time."""
        done = self.trials(key, (TrialState.COMPLETE,))
        for t in sorted((t for t in done if _finite(t.value)), key=lambda t: t.value):
            config = checked_config(template, problem, gpu, t.user_attrs.get("config"),
                                    f"study {key[:12]} trial {t.number}")
            if config is not None:
                return config, float(t.value)
        return None

    def lookup(self, template: Template, problem: Problem, gpu: GpuInfo) -> Config | None:
        """Best config for this exact key; else the nearest tuned token count of the same kernel on the
        same GPU and versions; else None (the caller uses template.default)."""
        fields = key_fields(template, problem, gpu)
        exact = self.best_valid(fields.key, template, problem, gpu)
        if exact is not None:
            return exact[0]
        n = token_count(template, problem)
        if n is None:
            return None
        rest = without_token_dim(template, fields.problem)
        candidates = []
        for _, key, f, _ in self.studies():
            if f is None or f.template != template.name or not f.same_environment(fields):
                continue
            m = token_count(template, f.problem)
            if m is None or without_token_dim(template, f.problem) != rest:
                continue
            if not source_current(f, lambda _: template):
                continue  # tuned against another version of the template text
            candidates.append((abs(math.log(m / n)), -m, key))
        for _, _, key in sorted(candidates):
            found = self.best_valid(key, template, problem, gpu)
            if found is not None:
                return found[0]
        return None

    def entries(self) -> list[Entry]:
        """The best entry of every readable ds4c study (unreadable ones are skipped with a warning)."""
        out = []
        for sid, key, f, attrs in self.studies():
            if f is None or f.key != key:
                log.warning("study %s: unreadable or mismatched key fields, skipped", key[:12])
                continue
            finished = self.storage.get_all_trials(sid, deepcopy=False,
                                                   states=(TrialState.COMPLETE, TrialState.FAIL))
            counted = [t for t in finished if t.user_attrs.get("counted", True)]
            best = min((t for t in finished if t.state == TrialState.COMPLETE and _finite(t.value)
                        and isinstance(t.user_attrs.get("config"), dict)),
                       key=lambda t: t.value, default=None)
            gpu_info = attrs.get("gpu_info") if isinstance(attrs.get("gpu_info"), dict) else {}
            out.append(Entry(key, f, gpu_info, None if best is None else best.user_attrs["config"],
                             None if best is None else float(best.value), len(counted)))
        return out

    def find(self, prefix: str) -> list[Entry]:
        return [e for e in self.entries() if e.key.startswith(prefix)]

    # --- maintenance ---------------------------------------------------------------------------------
    def prune(self, keep_gpu: str | None = None, torch_version: str | None = None,
              triton_version: str | None = None,
              resolve: Callable[[str], Template] | None = None) -> list[str]:
        """Drop studies of another schema, torch or triton version (and of another GPU than keep_gpu,
        when given); unreadable ds4c studies go too. With resolve (template name -> template), also those
        measured on another text of their template, or of a template that no longer exists: no lookup can
        reach them again. Returns the dropped keys."""
        import torch
        import triton

        tv, trv = torch_version or torch.__version__, triton_version or triton.__version__
        dropped = []
        for _, key, f, _ in self.studies():
            stale = (f is None or f.schema != SCHEMA_VERSION or f.torch != tv or f.triton != trv
                     or (keep_gpu is not None and f.gpu != keep_gpu)
                     or (resolve is not None and not source_current(f, resolve)))
            if stale:
                optuna.delete_study(study_name=STUDY_PREFIX + key, storage=self.storage)
                dropped.append(key)
        return dropped


def source_current(fields: KeyFields, resolve: Callable[[str], Template]) -> bool:
    """Whether an entry was measured on the text its template renders for its problem today."""
    try:
        return fields.source_hash == resolve(fields.template).source_hash(fields.problem)
    except Exception:  # an unknown template, or a problem the template no longer renders
        return False


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def read_json(path: str | Path) -> object:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise Ds4cError(f"cannot read tuning export: {e}", path) from None

"""Portable tuning results: best configs with their key fields as JSON, for `db export/import/merge`.

Sits beside the database. An export is data from elsewhere: every entry is checked (key recomputed from
its fields, template known, config in the space and valid for the problem on the entry's GPU, time a
finite positive number) before it is written; rejected entries are counted and logged, never used.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from ds4c import kernel_templates
from ds4c.kernel_templates.base import Config, Template

from .db import TuningDB, checked_config, gpu_from_json, log
from .key import KeyFields

EXPORT_KIND = "ds4c-tuning-export"
MAX_ENTRIES = 100_000


def export_entries(db: TuningDB) -> dict:
    """Every study's best (config, time) with its key fields."""
    entries = [e.to_json() for e in db.entries() if e.config is not None]
    return {"kind": EXPORT_KIND, "version": 1, "entries": entries}


def distributions(template: Template) -> dict:
    """The Optuna distributions of a template's space: an index into each parameter's candidates."""
    return {n: optuna.distributions.IntDistribution(0, len(v) - 1) for n, v in template.space.params}


def params_of(template: Template, config: Config) -> dict:
    return {n: list(v).index(config[n]) for n, v in template.space.params}


def _check_entry(raw: object, resolve: Callable[[str], Template]):
    """(fields, gpu, template, config, us) of a well-formed entry; ValueError with the reason otherwise."""
    if not isinstance(raw, dict):
        raise ValueError("entry is not an object")
    fields = KeyFields.from_json(raw.get("fields"))
    if raw.get("key") != fields.key:
        raise ValueError("key does not match its fields")
    gpu = gpu_from_json(raw.get("gpu_info"))
    if (gpu.name, gpu.capability) != (fields.gpu, fields.capability):
        raise ValueError("gpu_info does not match the key's GPU")
    us = raw.get("us")
    if not (type(us) in (int, float) and math.isfinite(us) and 0 < us < 1e12):
        raise ValueError(f"bad time {us!r}")
    try:
        template = resolve(fields.template)
    except KeyError:
        raise ValueError(f"unknown template {fields.template!r}") from None
    config = checked_config(template, fields.problem, gpu, raw.get("config"), f"import {fields.key[:12]}")
    if config is None:
        raise ValueError("config rejected")
    return fields, gpu, template, config, float(us)


def import_entries(db: TuningDB, data: object,
                   resolve: Callable[[str], Template] = kernel_templates.get) -> tuple[int, int]:
    """Write every valid entry of an export into db; (accepted, rejected)."""
    entries = data.get("entries") if isinstance(data, dict) and data.get("kind") == EXPORT_KIND else None
    if not isinstance(entries, list):
        log.warning("not a ds4c tuning export")
        return 0, 1
    accepted = rejected = 0
    for i, raw in enumerate(entries[:MAX_ENTRIES]):
        try:
            fields, gpu, template, config, us = _check_entry(raw, resolve)
        except Exception as e:  # anything malformed: counted and logged, never used
            log.warning("import: entry %d rejected: %s", i, str(e)[:200])
            rejected += 1
            continue
        study = db.study(fields, gpu)
        same = [t for t in db.trials(fields.key, (TrialState.COMPLETE,))
                if t.user_attrs.get("config") == config and t.value == us]
        if not same:
            study.add_trial(optuna.trial.create_trial(
                value=us, params=params_of(template, config), distributions=distributions(template),
                user_attrs={"config": config, "counted": False, "imported": True}))
        accepted += 1
    rejected += max(0, len(entries) - MAX_ENTRIES)
    return accepted, rejected


def merge(db: TuningDB, other_url: str,
          resolve: Callable[[str], Template] = kernel_templates.get) -> tuple[int, int]:
    """Copy the best entries of another storage into db (checked like an import)."""
    return import_entries(db, export_entries(TuningDB(other_url)), resolve)

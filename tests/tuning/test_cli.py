"""The `tune` command factory and the `db` group, through click's runner on a real SQLite file."""

from __future__ import annotations

import json

from click.testing import CliRunner
from vecadd_template import VECADD, resolve

from ds4c.tuning_db.cli import make_db_group, tune_command
from ds4c.tuning_db.key import KeyFields

P = {"n": 300, "dtype": "float32"}


def test_tune_then_every_db_command(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    asked = []

    def problems_from(model: str, max_tokens: int, max_seq_len: int, precision: str):
        asked.append((model, max_tokens, precision))
        return [(VECADD, P), (VECADD, {**P, "n": 200})]

    runner = CliRunner()
    tune = tune_command(problems_from, precisions=("bf16", "mixed"))
    out = runner.invoke(tune, ["tiny", "--db", url, "--trials", "6", "--sampler", "random", "--seed", "2",
                               "--max-tokens", "64", "--precision", "mixed"])
    assert out.exit_code == 0, out.output
    assert asked == [("tiny", 64, "mixed")] and out.output.count(" trials ") == 2
    assert runner.invoke(tune, ["tiny", "--db", url, "--precision", "fp4"]).exit_code != 0
    db = make_db_group(resolve)
    ls = runner.invoke(db, ["--db", url, "ls"])
    assert ls.exit_code == 0 and ls.output.count("vecadd_test") == 2 and "6 trials" in ls.output
    prefix = ls.output.split()[0]
    show = runner.invoke(db, ["--db", url, "show", prefix])
    assert show.exit_code == 0, show.output
    shown = json.loads(show.output)
    assert shown["key"].startswith(prefix) and shown["fields"]["template"] == "vecadd_test"
    assert runner.invoke(db, ["--db", url, "show", "zz"]).exit_code != 0

    exported = tmp_path / "export.json"
    assert runner.invoke(db, ["--db", url, "export", str(exported)]).exit_code == 0
    fresh = f"sqlite:///{tmp_path / 'b.db'}"
    imp = runner.invoke(db, ["--db", fresh, "import", str(exported)])
    assert imp.exit_code == 0 and "imported 2 entries, rejected 0" in imp.output
    third = f"sqlite:///{tmp_path / 'c.db'}"
    merged = runner.invoke(db, ["--db", third, "merge", url])
    assert merged.exit_code == 0 and "merged 2 entries" in merged.output
    fields = {**data_entry(exported)["fields"], "source_hash": "0" * 16}  # measured before the text changed
    edited = {**data_entry(exported), "fields": fields, "key": KeyFields.from_json(fields).key}
    edited_file = tmp_path / "edited.json"
    edited_file.write_text(json.dumps({**json.loads(exported.read_text()), "entries": [edited]}))
    assert "imported 1 entries" in runner.invoke(db, ["--db", third, "import", str(edited_file)]).output
    ls = runner.invoke(db, ["--db", third, "ls"]).output.splitlines()
    assert len(ls) == 3 and sum(line.endswith("template changed") for line in ls) == 1
    pruned = runner.invoke(db, ["--db", third, "prune"])
    assert pruned.exit_code == 0 and "dropped 1 entries" in pruned.output
    pruned = runner.invoke(db, ["--db", third, "prune", "--gpu", "NVIDIA B300"])  # not this machine
    assert pruned.exit_code == 0 and "dropped 2 entries" in pruned.output
    assert runner.invoke(db, ["--db", third, "ls"]).output.strip() == ""


def data_entry(export_file):
    return json.loads(export_file.read_text())["entries"][0]


def test_tune_only_some_templates(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    items = [(VECADD, P), ("rmsnorm", {"rows": 4, "cols": 8})]  # templates or their names
    tune = tune_command(lambda model, max_tokens, max_seq_len, precision: items)
    runner = CliRunner()
    out = runner.invoke(tune, ["tiny", "--db", url, "--trials", "2", "--only", "vecadd_test"])
    assert out.exit_code == 0, out.output
    assert out.output.count(" trials ") == 1 and "vecadd_test" in out.output and "rmsnorm" not in out.output
    bad = runner.invoke(tune, ["tiny", "--db", url, "--only", "vecadd_test,gemv"])
    assert bad.exit_code != 0 and "gemv: no kernel of tiny uses it" in bad.output
    assert "rmsnorm, vecadd_test" in bad.output


def test_unreachable_db_is_one_line_and_fallback_works(tmp_path):
    db = make_db_group(resolve)
    runner = CliRunner()
    bad = "postgresql+psycopg://u:pw@127.0.0.1:1/none"
    out = runner.invoke(db, ["--db", bad, "ls"])
    assert out.exit_code == 1 and out.output.startswith("Error: cannot open tuning database")
    assert len(out.output.strip().splitlines()) == 1 and "pw" not in out.output
    assert runner.invoke(db, ["--db", bad, "--db-fallback", "ls"]).exit_code == 0
    (tmp_path / "bad.json").write_text("{not json")
    out = runner.invoke(db, ["import", str(tmp_path / "bad.json")])
    assert out.exit_code == 1 and "cannot read tuning export" in out.output

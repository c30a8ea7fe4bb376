"""`ds4c db ls`: an empty SQLite database lists nothing; an unreachable PostgreSQL URL is one line and a
non-zero exit code, in this process and in a real one."""

import sqlite3

from e2e_helpers import assert_user_error, invoke, run_subprocess

UNREACHABLE = "postgresql+psycopg://nobody@127.0.0.1:1/none"


def test_db_ls_on_an_empty_sqlite_file(tmp_path, monkeypatch):
    db = tmp_path / "tuning.sqlite"
    sqlite3.connect(db).close()  # an existing, empty database file
    monkeypatch.setenv("DS4C_DB", f"sqlite:///{db}")
    result = invoke("db", "ls")
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.output == ""


def test_db_ls_on_a_fresh_sqlite_path(tmp_path, monkeypatch):
    db = tmp_path / "new" / "tuning.sqlite"
    db.parent.mkdir()
    result = invoke("db", "--db", f"sqlite:///{db}", "ls")
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.output == ""


def test_db_ls_on_an_unreachable_postgres():
    assert_user_error(invoke("db", "--db", UNREACHABLE, "ls"), "127.0.0.1", "cannot open tuning database")


def test_db_ls_on_an_unreachable_postgres_from_the_environment(monkeypatch):
    monkeypatch.setenv("DS4C_DB", UNREACHABLE)
    assert_user_error(invoke("db", "ls"), "127.0.0.1", "cannot open tuning database")


def test_db_error_in_a_real_process_has_no_traceback(tmp_path):
    proc = run_subprocess("db", "--db", UNREACHABLE, "ls", cwd=tmp_path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "127.0.0.1" in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written into the working directory

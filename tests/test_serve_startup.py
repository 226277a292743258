"""``taskledger serve`` on a database it cannot write refuses to start with a clear message,
never a traceback."""

from __future__ import annotations

import subprocess
import sys


def test_serve_on_a_path_that_cannot_be_created_says_why(tmp_path):
    db = tmp_path / "missing-folder" / "ledger.db"
    result = subprocess.run(
        [sys.executable, "-m", "scripts.cli", "serve", "--db", str(db), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"Cannot open the database {db} for writing" in result.stderr
    assert "Traceback" not in result.stderr
    assert not db.exists()

"""`skillstore serve` and `skillstore api-token`: registered; the digest is what the API checks."""

from __future__ import annotations

from typer.testing import CliRunner

from skillstore.api.auth import hash_token, match_token
from skillstore.cli import app


def test_api_token_new_prints_a_token_and_its_digest():
    out = CliRunner().invoke(app, ["api-token", "new"])
    assert out.exit_code == 0, out.output
    lines = dict(line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)
    token, digest = lines["token"].strip(), lines["sha256"].strip()
    assert len(token) >= 40 and hash_token(token) == digest
    assert match_token(token, ("0" * 64, digest)) == digest
    assert match_token(token + "x", (digest,)) is None


def test_api_token_hash_reads_stdin():
    out = CliRunner().invoke(app, ["api-token", "hash"], input="s3cret\n")
    assert out.exit_code == 0 and out.stdout.strip() == hash_token("s3cret")
    empty = CliRunner().invoke(app, ["api-token", "hash"], input="\n")
    assert empty.exit_code != 0


def test_serve_is_a_command():
    out = CliRunner().invoke(app, ["serve", "--help"])
    assert out.exit_code == 0 and "--port" in out.stdout and "--host" in out.stdout

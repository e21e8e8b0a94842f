"""Site files are checked before anything reaches the portal: one line naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecpds.cli.main import app
from ecpds.cli.site import load_site

runner = CliRunner()
# Nothing listens here: a check that passed would fail to connect, not succeed.
ENV = {"ECPDS_API_URL": "https://127.0.0.1:9/api/v1", "ECPDS_API_PASSWORD": "x"}


def apply(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    site = tmp_path / "site.toml"
    site.write_text(text)
    result = runner.invoke(app, ["apply", "-f", str(site)], env={**ENV, **(env or {})})
    return result.exit_code, result.stderr.strip()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[destination]]\nname = "x"\nmax_conections = 3\n',
            "site.toml: destination 'x': unknown key 'max_conections' "
            "(did you mean 'max_connections'?)",
        ),
        ('[[desination]]\nname = "x"\n', "site.toml: unknown table 'desination'"),
        ('[[host]]\nurl = "file:///tmp"\n', "site.toml: host #1: missing key 'name'"),
        (
            '[[host]]\nname = "h"\nurl = "sftp://u@h/"\ncredentials = {password = "${NO_SUCH}"}\n',
            "site.toml: host 'h': environment variable 'NO_SUCH' (in 'credentials.password') "
            "is not set",
        ),
        (
            '[[destination]]\nname = "x"\nmax_connections = 0\n',
            "site.toml: destination 'x': max_connections:",
        ),
        ('[[user]]\nname = "u"\n[[user]]\nname = "u"\n', "site.toml: user 'u' appears twice"),
        ("[[host]\n", "site.toml: not valid TOML"),
    ],
)
def test_bad_site_file_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    code, stderr = apply(tmp_path, text)
    assert code == 1
    assert "\n" not in stderr
    assert stderr.startswith(f"error: {message}")


def test_missing_site_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["apply", "-f", str(tmp_path / "none.toml")], env=ENV)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {tmp_path / 'none.toml'}: no such file"


def test_environment_values_are_substituted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SITE_SECRET", "s3cret-value")
    site = tmp_path / "site.toml"
    site.write_text(
        '[[host]]\nname = "h"\nurl = "sftp://u@h/"\ncredentials = {password = "${SITE_SECRET}"}\n'
        '[[user]]\nname = "u"\npassword = "pw-${SITE_SECRET}"\ndestinations = []\n'
    )
    spec = load_site(site)
    assert spec["host"][0]["credentials"] == {"password": "s3cret-value"}
    assert spec["user"][0]["password"] == "pw-s3cret-value"
    assert spec["destination"] == [] and spec["alias"] == []


def test_unreachable_portal_is_one_line(tmp_path: Path) -> None:
    code, stderr = apply(tmp_path, '[[destination]]\nname = "x"\n')
    assert code == 1
    assert stderr == (
        "error: cannot reach the portal at https://127.0.0.1:9/api/v1: is `ecpds up` running?"
    )


def test_no_credentials_is_one_line(tmp_path: Path) -> None:
    env = {"ECPDS_HOME": str(tmp_path / "var"), "ECPDS_API_PASSWORD": ""}
    result = runner.invoke(app, ["destination", "list"], env=env)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: no API credentials: set ECPDS_API_PASSWORD")

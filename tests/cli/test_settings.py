"""Global --config and settings errors: one line, non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecpds.cli.main import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def no_config_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    # load_settings exports ECPDS_CONFIG for child processes; undo it after each test.
    monkeypatch.setenv("ECPDS_CONFIG", "")


def test_config_file_sets_the_portal_url(tmp_path: Path) -> None:
    config = tmp_path / "ecpds.toml"
    config.write_text('api_url = "https://127.0.0.1:9/api/v1"\napi_password = "x"\n')
    result = runner.invoke(app, ["--config", str(config), "destination", "list"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: cannot reach the portal at https://127.0.0.1:9/api/v1: is `ecpds up` running?"
    )


def test_missing_config_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--config", str(tmp_path / "none.toml"), "host", "list"])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: config file {tmp_path / 'none.toml'} does not exist"


def test_unknown_key_in_config_file(tmp_path: Path) -> None:
    config = tmp_path / "ecpds.toml"
    config.write_text("https_prot = 4443\n")
    result = runner.invoke(app, ["-c", str(config), "host", "list"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: settings: unknown setting 'https_prot'"


def test_bad_environment_value() -> None:
    result = runner.invoke(app, ["down"], env={"ECPDS_HTTPS_PORT": "many"})
    assert result.exit_code == 1
    assert result.stderr.startswith("error: settings: https_port (ECPDS_HTTPS_PORT): ")
    assert result.stderr.count("\n") == 1


def test_down_when_nothing_runs(tmp_path: Path) -> None:
    result = runner.invoke(app, ["down"], env={"ECPDS_HOME": str(tmp_path / "var")})
    assert result.exit_code == 0
    assert "nothing is running" in result.stdout


def test_put_missing_file(tmp_path: Path) -> None:
    """Checked before the portal is asked; the push options are the portal's to check
    (tests/store/test_push_options.py)."""
    env = {"ECPDS_API_URL": "https://127.0.0.1:9/api/v1", "ECPDS_API_PASSWORD": "x"}
    missing = runner.invoke(app, ["put", str(tmp_path / "none.grib"), "-d", "d"], env=env)
    assert missing.exit_code == 1
    assert missing.stderr.count("\n") == 1 and "none.grib" in missing.stderr

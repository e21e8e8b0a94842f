"""A store location configured only through settings: options in store_options, keys
sealed by `ecpds store credentials`, on moto S3 with fsspec's own configuration empty."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import NoCredentialsError
from typer.testing import CliRunner

from ecpds.cli.main import app as cli_app
from ecpds.core.settings import Settings
from ecpds.core.store import StoreError, open_store

from .conftest import s3_options, without_fsspec_config


@pytest.fixture
def s3_settings(tmp_path: Path, s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Settings:
    without_fsspec_config(monkeypatch)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    url = f"s3://{s3_server.bucket()}/store"
    return Settings(
        home=tmp_path / "var", store_locations=[url], store_options={url: s3_options(s3_server)}
    )


def cli(settings: Settings, *args: str) -> Any:
    env = {
        "ECPDS_HOME": str(settings.home),
        "ECPDS_STORE_LOCATIONS": json.dumps(settings.store_locations),
    }
    return CliRunner().invoke(cli_app, list(args), env=env)


def test_a_store_on_s3_from_settings_only(s3_settings: Settings, s3_server: Any) -> None:
    url = s3_settings.store_urls[0]
    with pytest.raises(NoCredentialsError):
        open_store(s3_settings).write("nokeys", [b"refused"])
    secret = s3_server.secret_access_key
    done = cli(
        s3_settings,
        "store",
        "credentials",
        url,
        f"key={s3_server.access_key_id}",
        f"secret={secret}",
    )
    assert done.exit_code == 0, done.output
    assert secret not in done.output
    assert secret not in s3_settings.store_secrets_file.read_text()
    assert s3_settings.store_secrets_file.stat().st_mode & 0o077 == 0

    store = open_store(s3_settings)
    stored = store.write("fromsettings", [b"written ", b"with sealed keys"])
    assert b"".join(store.iter_bytes("fromsettings", adler32=stored.adler32)) == (
        b"written with sealed keys"
    )
    assert s3_server.client().head_object(Bucket=url.split("/")[2], Key="store/fr/fromsettings")[
        "ContentLength"
    ] == len(b"written with sealed keys")

    removed = cli(s3_settings, "store", "credentials", url, "--remove")
    assert removed.exit_code == 0, removed.output
    with pytest.raises(NoCredentialsError):
        open_store(s3_settings).write("forgotten", [b"refused"])


def test_bad_store_settings_are_one_line(s3_settings: Settings, tmp_path: Path) -> None:
    url = s3_settings.store_urls[0]
    elsewhere = cli(s3_settings, "store", "credentials", "s3://other/x", "key=a")
    assert elsewhere.exit_code == 1
    assert elsewhere.output.startswith("error: 's3://other/x' is not a store location")
    unnamed = cli(s3_settings, "store", "credentials", url, "typed-secret-without-name")
    assert unnamed.exit_code == 1 and "typed-secret-without-name" not in unnamed.output
    assert len(unnamed.output.splitlines()) == 1
    nothing = cli(s3_settings, "store", "credentials", url)
    assert nothing.exit_code == 1 and "--remove" in nothing.output

    stray = s3_settings.model_copy(update={"store_options": {"s3://other/x": {}}})
    with pytest.raises(StoreError, match="not a store location"):
        open_store(stray)

    assert cli(s3_settings, "store", "credentials", url, "key=k", "secret=s3cr3t").exit_code == 0
    rekeyed = s3_settings.model_copy(update={"secret_key_file": tmp_path / "another.key"})
    with pytest.raises(StoreError, match="cannot be decrypted") as refused:
        open_store(rekeyed)
    assert "s3cr3t" not in str(refused.value)

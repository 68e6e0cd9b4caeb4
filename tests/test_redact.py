"""Secrets never reach a saved config, a log line or a message (embedding.redact)."""

from __future__ import annotations

import io
import logging

import pytest
import yaml

from embedding.config import Config
from embedding.redact import (
    REDACTED,
    install,
    is_secret_key,
    redact_config,
    redact_text,
    secret_values,
    strip_userinfo,
)

SECRETS = ("AKIAEXAMPLEKEY", "wJalrXUtnFEMI-secret", "ya29.token-value", "hunter22")


def secret_config() -> Config:
    return Config.model_validate(
        {
            "input": {
                "manifest": ["https://reader:hunter22@data.example/m.parquet"],
                "storage_options": {
                    "s3": {
                        "key": "AKIAEXAMPLEKEY",
                        "secret": "wJalrXUtnFEMI-secret",
                        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "us"},
                    },
                    "gs": {"token": {"access_token": "ya29.token-value"}},
                },
            },
            "output": {"root": "s3://bucket/out", "storage_options": {"key": "AKIAEXAMPLEKEY"}},
        }
    )


@pytest.mark.parametrize(
    "text, clean",
    [
        ("https://user:pass@host/x.jpg", "https://host/x.jpg"),
        ("s3://AKIA:secret@bucket/k", "s3://bucket/k"),
        ("https://user:p@ss@host:8080/x?a=b", "https://host:8080/x?a=b"),
        ("https://host/a@b.jpg", "https://host/a@b.jpg"),  # an @ in the path is no user-info
        ("/data/a@b.jpg", "/data/a@b.jpg"),
        ("mail me@example.com", "mail me@example.com"),
        (
            "reading 'https://u:p@h/x' failed, then http://a:b@c/d",
            "reading 'https://h/x' failed, then http://c/d",
        ),
    ],
)
def test_strip_userinfo(text: str, clean: str) -> None:
    assert strip_userinfo(text) == clean


def test_secret_keys_are_recognised_by_whole_words() -> None:
    for name in ("key", "secret", "token", "aws_access_key_id", "sessionToken", "client_secret", "password"):
        assert is_secret_key(name), name
    for name in ("tokenizer", "region_name", "endpoint_url", "max_image_bytes", "keyframes", "version"):
        assert not is_secret_key(name), name


def test_redact_config_hides_every_storage_option_and_keeps_the_rest() -> None:
    tree = secret_config().model_dump(mode="json")
    tree["service"] = {"api_key": "sk-live-123456", "port": 8000}
    clean = redact_config(tree)
    s3 = clean["input"]["storage_options"]["s3"]
    assert s3["key"] == s3["secret"] == REDACTED
    assert s3["client_kwargs"] == {"endpoint_url": REDACTED, "region_name": REDACTED}  # keys stay visible
    assert clean["input"]["storage_options"]["gs"] == {"token": {"access_token": REDACTED}}
    assert clean["output"]["storage_options"] == {"key": REDACTED}
    assert clean["service"] == {"api_key": REDACTED, "port": 8000}
    assert clean["input"]["manifest"] == ["https://data.example/m.parquet"]
    assert clean["model"] == tree["model"] and clean["output"]["root"] == "s3://bucket/out"
    assert tree["input"]["storage_options"]["s3"]["key"] == "AKIAEXAMPLEKEY"  # the input is not changed


def test_the_saved_config_has_no_secret_and_still_loads() -> None:
    cfg = secret_config()
    text = cfg.to_yaml()
    assert not any(secret in text for secret in SECRETS)
    again = Config.model_validate(yaml.safe_load(text))
    assert again.model.version == cfg.model.version and again.input.storage_options["s3"]["key"] == REDACTED
    assert "AKIAEXAMPLEKEY" in cfg.to_yaml(redacted=False)


def test_log_lines_and_tracebacks_are_redacted() -> None:
    cfg = secret_config()
    logger = logging.getLogger("embedding.test_redact")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    flt = install(cfg.model_dump(mode="json"), logger)
    try:
        logger.warning("using key %s against %s", "AKIAEXAMPLEKEY", "https://reader:hunter22@data.example/x")
        try:
            raise RuntimeError("signature mismatch for wJalrXUtnFEMI-secret")
        except RuntimeError:
            logger.exception("read failed")
    finally:
        logger.removeFilter(flt)
        handler.removeFilter(flt)
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "read failed" in text and "signature mismatch" in text and REDACTED in text
    assert not any(secret in text for secret in SECRETS)


def test_secret_values_skip_short_ones() -> None:
    values = secret_values(secret_config().model_dump(mode="json"))
    assert {"AKIAEXAMPLEKEY", "wJalrXUtnFEMI-secret", "ya29.token-value"} <= values
    assert "us" not in values
    assert redact_text("region us, key AKIAEXAMPLEKEY", values) == f"region us, key {REDACTED}"

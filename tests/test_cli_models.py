"""``medseg models``: list, show, verify, add, remove, import-bundle, run as the real console command.

Each test runs ``python -m napari_medseg.cli`` in a subprocess with a temporary registry
(``MEDSEG_MODELS`` and ``MEDSEG_USER_MODELS`` under ``tmp_path``).
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from _models import registry_model, write_bundle


@pytest.fixture
def registry_env(tmp_path):
    user, env = tmp_path / "user", tmp_path / "env"
    env.mkdir()
    return user, env, {**os.environ, "MEDSEG_USER_MODELS": str(user), "MEDSEG_MODELS": str(env)}


def test_list_show_and_shadowing(run_cli, registry_env, tmp_path):
    user, env, environ = registry_env
    winner = registry_model(env / "tiny", seed=1)
    registry_model(user / "tiny", seed=2)
    (env / "broken").mkdir()
    (env / "broken" / "model.yaml").write_text("name: broken\nversion: '1'\n")
    listing = json.loads(run_cli("models", "list", "--json", env=environ).stdout)
    ours = [m for m in listing["models"] if m["source"] != "shipped"]
    assert [(m["name"], m["source"], m["sha256"]) for m in ours] == [("tiny", "env", winner.sha256)]
    assert ours[0]["labels"] == {"0": "background", "1": "liver"} and ours[0]["channels"] == ["CT"]
    assert [(m["name"], m["source"], m["shadowed_by"]) for m in listing["shadowed"]] == [
        ("tiny", "user", str(winner.folder))
    ]
    problem = listing["problems"][0]
    assert problem["folder"].endswith("broken") and "task: Field required" in problem["error"]
    assert [s["source"] for s in listing["search_path"]][:2] == ["env", "user"]
    assert "first folder wins" in listing["precedence"]

    text = run_cli("models", "list", env={**environ, "COLUMNS": "300"})
    assert "shadowed by env" in text.stdout and "skipped" in text.stdout and "first folder wins" in text.stdout

    shown = json.loads(run_cli("models", "show", "tiny", "--json", env=environ).stdout)
    assert shown["source"] == "env" and shown["folder"] == str(winner.folder)
    assert shown["card"] == json.loads(json.dumps(winner.card.to_dict()))
    assert shown["shadows"] == [str((user / "tiny").resolve())]
    assert (shown["in_channels"], shown["out_channels"]) == (1, 2)


def test_invalid_show_unknown_name(run_cli, registry_env):
    user, env, environ = registry_env
    registry_model(env / "liver-ct", name="liver-ct")
    proc = run_cli("models", "show", "livr-ct", env=environ, check_rc=2)
    assert "no model named 'livr-ct'" in proc.stderr and "did you mean 'liver-ct'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_verify_and_tampered_file(run_cli, registry_env):
    user, env, environ = registry_env
    model = registry_model(env / "tiny")
    ok = run_cli("models", "verify", "tiny", env=environ)
    assert ok.stdout.startswith(f"ok tiny 1.0.0 (1 file, sha256 {model.sha256[:12]}...)")
    weights = model.weights_path()
    data = bytearray(weights.read_bytes())
    data[100] ^= 1
    weights.write_bytes(bytes(data))
    proc = run_cli("models", "verify", env=environ, check_rc=2)
    actual = hashlib.sha256(bytes(data)).hexdigest()
    assert f"{weights}: sha256 mismatch: expected {model.sha256}" in proc.stderr
    assert f"actual {actual}" in proc.stderr


def test_add_force_and_remove(run_cli, registry_env, tmp_path):
    user, env, environ = registry_env
    registry_model(tmp_path / "src", name="mine")
    proc = run_cli("models", "add", tmp_path / "src", env=environ)
    assert f"added mine 1.0.0 to {(user / 'mine').resolve()}" in proc.stdout
    assert sorted(p.name for p in (user / "mine").iterdir()) == ["model.safetensors", "model.yaml"]
    again = run_cli("models", "add", tmp_path / "src", env=environ, check_rc=2)
    assert "already exists" in again.stderr and "--force" in again.stderr
    run_cli("models", "add", tmp_path / "src", "--force", env=environ)
    registry_model(env / "shared", name="shared")
    refused = run_cli("models", "remove", "shared", env=environ, check_rc=2)
    assert "only models in the user folder can be removed" in refused.stderr
    run_cli("models", "remove", "mine", env=environ)
    assert not (user / "mine").exists()


def test_import_bundle_add(run_cli, registry_env, tmp_path):
    user, env, environ = registry_env
    bundle, _ = write_bundle(tmp_path / "spleen_ct_segmentation")
    proc = run_cli("models", "import-bundle", bundle, "--out", tmp_path / "converted", "--name", "spleen2", "--add",
                   env=environ)
    assert "as spleen2" in proc.stdout and f"added spleen2 to {(user / 'spleen2').resolve()}" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "converted").iterdir()) == ["bundle", "model.safetensors", "model.yaml"]
    assert sorted(p.name for p in (user / "spleen2").iterdir()) == ["bundle", "model.safetensors", "model.yaml"]
    verified = run_cli("models", "verify", "spleen2", "--load", env=environ)
    assert verified.stdout.startswith("ok spleen2 0.2.0 (3 files, sha256 ") and "loaded" in verified.stdout
    shown = json.loads(run_cli("models", "show", "spleen2", "--json", env=environ).stdout)
    assert shown["card"]["architecture"]["name"] == "monai.UNet" and shown["source"] == "user"
    assert shown["card"]["monai_bundle"]["task"] == "Decathlon spleen segmentation"


def test_invalid_import_bundle_expression(run_cli, registry_env, tmp_path):
    user, env, environ = registry_env
    network_def = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                   "channels": "$[__import__('os').system('touch pwned')]", "strides": [2]}
    bundle, _ = write_bundle(tmp_path / "b", network_def=network_def)
    proc = run_cli("models", "import-bundle", bundle, "--add", env=environ, cwd=tmp_path, check_rc=2)
    assert "__import__" in proc.stderr and "outside the expression subset" in proc.stderr
    assert "never run as code" in proc.stderr
    assert not (tmp_path / "pwned").exists() and not user.exists()

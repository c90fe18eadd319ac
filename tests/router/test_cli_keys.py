"""``epd keys DIR`` writes a CurveZMQ key set; ``epd up --curve-keys DIR`` gives it to every service
it starts (and refuses a directory without keys before starting anything)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from router.cli import build_parser, cluster_specs, main
from shared.wire.security import MeshKeys

pytestmark = pytest.mark.unit


def test_keys_then_up_passes_them_to_every_service(tmp_path: Path, capsys) -> None:
    keys = tmp_path / "keys"
    assert main(["keys", str(keys)]) == 0
    assert "server public key" in capsys.readouterr().out
    mesh = MeshKeys.load(keys)
    assert stat.S_IMODE((keys / "server.key_secret").stat().st_mode) == 0o600
    assert main(["keys", str(keys)]) == 1  # never overwrites a key set
    assert MeshKeys.load(keys) == mesh
    args = build_parser().parse_args(["up", "--curve-keys", str(keys), "--prefills", "2"])
    specs = cluster_specs(args, tmp_path)
    assert [s.name for s in specs] == ["encoder-0", "prefill-0", "prefill-1", "decode-0", "router"]
    for spec in specs:
        i = spec.args.index("--curve-keys")
        assert spec.args[i + 1] == str(keys), spec.name
    plain = cluster_specs(build_parser().parse_args(["up"]), tmp_path)
    assert not any("--curve-keys" in s.args for s in plain)


def test_up_refuses_a_folder_without_keys(tmp_path: Path, capsys) -> None:
    assert main(["up", "--curve-keys", str(tmp_path)]) == 2
    assert "epd keys" in capsys.readouterr().err

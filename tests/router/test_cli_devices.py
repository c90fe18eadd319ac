"""``epd up`` builds each worker's command line: its device, its KV transfer; without starting them."""

from __future__ import annotations

import pytest

from router.cli import build_parser, cluster_specs, main, with_env

pytestmark = pytest.mark.unit


def devices(argv: list[str], tmp_path) -> dict[str, str]:
    """Each service's ``--device`` (None for the router) in the command lines ``epd up argv`` builds."""
    specs = cluster_specs(build_parser().parse_args(["up", *argv]), tmp_path)
    return {s.name: s.args[s.args.index("--device") + 1] if "--device" in s.args else None for s in specs}


def test_device_places_every_service(tmp_path):
    placed = devices(["--device", "cuda:1", "--prefills", "2"], tmp_path)
    assert placed == {
        "encoder-0": "cuda:1", "prefill-0": "cuda:1", "prefill-1": "cuda:1", "decode-0": "cuda:1", "router": None
    }  # fmt: skip


def test_stage_devices_place_worker_i_on_element_i_mod_n(tmp_path):
    argv = ["--encoders", "2", "--prefills", "3", "--decodes", "3", "--prefill-devices", "cuda:0,cuda:1"]
    placed = devices([*argv, "--decode-devices", "cuda:2, cuda:3,cuda:4", "--device", "cpu"], tmp_path)
    assert placed == {
        "encoder-0": "cpu", "encoder-1": "cpu",  # --device is the default of every stage
        "prefill-0": "cuda:0", "prefill-1": "cuda:1", "prefill-2": "cuda:0",
        "decode-0": "cuda:2", "decode-1": "cuda:3", "decode-2": "cuda:4",
        "router": None,
    }  # fmt: skip


def test_other_flags_survive_the_placement(tmp_path):
    argv = ["up", "--encoder-devices", "cuda:0", "--decode-arg=--num-blocks=64", "--dtype", "bfloat16"]
    decode = next(s for s in cluster_specs(build_parser().parse_args(argv), tmp_path) if s.name == "decode-0")
    assert decode.args[-1] == "--num-blocks=64"
    assert decode.args[decode.args.index("--dtype") + 1] == "bfloat16"


@pytest.mark.parametrize(
    "argv, error",
    [
        (["--decode-devices", "gpu0"], "device must be cpu or cuda"),
        (["--decode-devices", ","], "separated by commas"),
        (["--colocated", "--prefill-devices", "cuda:0"], "--colocated runs one process"),
    ],
)
def test_bad_devices_are_usage_errors(argv, error, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["up", *argv])
    assert exit_.value.code == 2 and error in capsys.readouterr().err


def test_kv_transfer_reaches_prefill_and_decode_workers(tmp_path):
    specs = cluster_specs(
        build_parser().parse_args(["up", "--kv-transfer", "mooncake", "--decodes", "2"]), tmp_path
    )
    kv = {s.name: s.args[s.args.index("--kv-transfer") + 1] for s in specs if "--kv-transfer" in s.args}
    assert kv == {"prefill-0": "mooncake", "decode-0": "mooncake", "decode-1": "mooncake"}


def test_service_env_and_the_traces_endpoint_reach_their_services(tmp_path):
    argv = ["up", "--otlp-traces-endpoint", "http://127.0.0.1:4318/v1/traces"]
    argv += ["--service-env", "prefill-0:EPD_FAKE_CLOCK_SKEW_S=-45", "--service-env", "router:A=b=c"]
    args = build_parser().parse_args(argv)
    specs = {s.name: s for s in with_env(cluster_specs(args, tmp_path), args.service_env)}
    assert specs["prefill-0"].env == {"EPD_FAKE_CLOCK_SKEW_S": "-45"} and specs["router"].env == {"A": "b=c"}
    assert specs["decode-0"].env == {} and specs["encoder-0"].env == {}
    for spec in specs.values():
        i = spec.args.index("--otlp-traces-endpoint")
        assert spec.args[i + 1] == "http://127.0.0.1:4318/v1/traces"
    with pytest.raises(ValueError, match="names decode-7"):
        with_env(cluster_specs(args, tmp_path), [("decode-7", "K", "v")])


@pytest.mark.parametrize("text", ["prefill-0", "prefill-0:KEY", ":K=v", "prefill-0:=v"])
def test_a_malformed_service_env_is_a_usage_error(text, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--service-env", text])
    assert "SERVICE:KEY=VALUE" in capsys.readouterr().err

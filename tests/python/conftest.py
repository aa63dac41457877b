"""Shared fixtures: tiny exports built once per test session into a temp dir (seconds)."""
import contextlib
import io
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
from trendstory_tools.cli.export_onnx import main as export_onnx_main
from trendstory_tools.current_export import graph_matches
from trendstory_tools.export_options import parse_args
from trendstory_tools.export import export
from trendstory_tools.random_init import write_random_hf


def export_matches(out_dir: Path, exporter_args: list[str]) -> bool:
    """Whether out_dir/manifest.json records the graph and quantization these exporter
    arguments ask for (what `export_onnx.py --check-current` checks before the source and the
    files' digests)."""
    try:
        man = json.loads((Path(out_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return graph_matches(man, parse_args(["--hf-dir", "-", "--out", "-", *exporter_args]))


def build_tiny(out: Path, *, dtype="f32", precision="int4", accuracy_level=4, golden=16,
               tokenizer=None, linear_only=False, seed=0, block_size=32, zero_points=False,
               attention="explicit", quant=None, rounding="absmax"):
    """Random-init tiny preset: HF folder in out/hf, export in out (quiet). The explicit
    attention graph by default: most tests feed it masks and position ids directly; absmax
    rounding by default: the int4 layout tests rebuild its codes with quantize_q4."""
    with contextlib.redirect_stderr(io.StringIO()):
        write_random_hf("tiny", out / "hf", dtype, seed, tokenizer)
        export(out / "hf", out, source="random-init:tiny", random_weights=True,
               precision=precision, block_size=block_size, accuracy_level=accuracy_level,
               golden_tokens=golden, linear_only=linear_only, zero_points=zero_points,
               attention=attention, quant=quant, rounding=rounding)
    return out


@pytest.fixture(scope="session")
def tiny_int4(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny_int4"))


@pytest.fixture(scope="session")
def tiny_fp32(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny_fp32"), precision="fp32", golden=None)


@pytest.fixture(scope="session")
def tiny_packed(tmp_path_factory):
    """The default export: the packed one-pass graph (the same weights as tiny_int4)."""
    return build_tiny(tmp_path_factory.mktemp("tiny_packed"), attention="packed")


@pytest.fixture(scope="session")
def tiny_slots(tmp_path_factory):
    """The engine's slots graph, through the command line, with tiny_packed's weights and
    quantization; golden tokens are asked for (and skipped: stock ONNX Runtime cannot run it)."""
    out = tmp_path_factory.mktemp("tiny_slots")
    with contextlib.redirect_stderr(io.StringIO()):
        export_onnx_main(["--random-init", "--preset", "tiny", "--out", str(out),
                          "--attention", "slots", "--block-size", "32", "--rounding", "absmax",
                          "--golden-tokens", "4"])
    return out


@pytest.fixture(scope="session")
def tiny_packed_fp32(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny_packed_fp32"), precision="fp32", golden=None,
                      attention="packed")


@pytest.fixture(scope="session")
def tiny_int4_exact(tmp_path_factory):
    """int4 with accuracy_level 0 (fp32 compute): matches a numpy dequantized reference tightly."""
    return build_tiny(tmp_path_factory.mktemp("tiny_int4_acc0"), accuracy_level=0, golden=None)


@pytest.fixture(scope="session")
def tiny_int4_zp(tmp_path_factory):
    """Asymmetric int4 (--zero-points), block 128: K=128 and K=384 give 1 and 3 blocks per row,
    so the packed zero points have an odd count (a padded high nibble)."""
    return build_tiny(tmp_path_factory.mktemp("tiny_int4_zp"), block_size=128, zero_points=True,
                      golden=None)

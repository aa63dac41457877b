"""Tests of scripts/quant_quality.py (int4 vs fp32 agreement and KL) on the tiny exports."""
import contextlib
import io
import json

import numpy as np
import pytest

from trendstory_tools.cli.quant_quality import main as quant_quality_main
from trendstory_tools.quant_quality import (
    compare, describe, is_uniform_block32, log_softmax, windows_of)


def test_windows_start_with_bos_and_cover_the_text():
    ids = list(range(10, 10 + 300))
    w = windows_of(ids, 1, 128, None)
    assert [len(x) for x in w] == [128, 128, 47]  # 127 + 127 + 46 text tokens
    assert all(x[0] == 1 for x in w)
    assert sum((x[1:] for x in w), []) == ids
    assert len(windows_of(ids, 1, 128, 2)) == 2
    assert [len(x) for x in windows_of(list(range(260)), 1, 128, None)] == [128, 128]  # tail of 6 dropped
    # a model that takes no BOS (SmolLM2): windows of text alone
    w = windows_of(ids, None, 128, None)
    assert [len(x) for x in w] == [128, 128, 44] and sum(w, []) == ids


def test_kl_and_agreement_match_a_direct_computation():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 7)) * 3, rng.standard_normal((5, 7)) * 3
    kl, agree = compare(log_softmax(a), log_softmax(b))
    p = np.exp(a) / np.exp(a).sum(-1, keepdims=True)
    q = np.exp(b) / np.exp(b).sum(-1, keepdims=True)
    np.testing.assert_allclose(kl, (p * np.log(p / q)).sum(-1), rtol=1e-10)
    np.testing.assert_array_equal(agree, a.argmax(-1) == b.argmax(-1))
    kl0, agree0 = compare(log_softmax(a), log_softmax(a + 5.0))  # softmax is shift-invariant
    assert np.abs(kl0).max() < 1e-12 and agree0.all()


def test_report_on_tiny_exports(tiny_fp32, tiny_int4, tiny_int4_zp):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert quant_quality_main(["--ref", str(tiny_fp32), str(tiny_int4), str(tiny_int4_zp),
                                   str(tiny_fp32), "--max-windows", "3", "--threads", "1",
                                   "--json"]) == 0
    r = json.loads(out.getvalue())
    assert r["windows"] == 3 and r["positions"] == 3 * 128 and r["random_weights"] is True
    assert r["baseline"] == tiny_int4.name  # the symmetric block-32 variant
    v = {x["name"]: x for x in r["variants"]}
    same = v[tiny_fp32.name]  # fp32 against itself: identical distributions
    assert same["top1_agreement"] == 1.0 and same["kl_max"] < 1e-9
    for name in (tiny_int4.name, tiny_int4_zp.name):
        assert 0.9 <= v[name]["top1_agreement"] <= 1.0 and v[name]["kl_mean"] >= 0
    assert v[tiny_int4_zp.name]["quantization"].startswith("int4 asymmetric (zero points), block 128")
    assert "vs_baseline" not in v[tiny_int4.name]
    c = v[tiny_int4_zp.name]["vs_baseline"]
    assert c["verdict"].startswith(("meets", "fails")) and c["windows"] == 3
    assert "| variant |" in err.getvalue() and "not language quality" in err.getvalue()


def run_json(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert quant_quality_main([*argv, "--threads", "1", "--json"]) == 0
    return json.loads(out.getvalue())


def test_saved_results_compare_like_a_run(tiny_fp32, tiny_int4, tiny_int4_zp, tmp_path):
    """--save then --saved: a variant measured earlier is compared without its export, with
    the same figures, and only against the same reference, text and windows."""
    saved = tmp_path / "saved"
    first = run_json(["--ref", str(tiny_fp32), str(tiny_int4), str(tiny_int4_zp), "--max-windows", "2",
                      "--save", str(saved)])
    assert sorted(p.name for p in saved.iterdir()) == sorted(
        [f"{tiny_int4.name}.npz", f"{tiny_int4_zp.name}.npz", f"{tiny_fp32.name}.ref.npz"])
    zp_file = saved / f"{tiny_int4_zp.name}.npz"
    again = run_json(["--ref", str(tiny_fp32), str(tiny_int4), "--saved", str(zp_file), "--max-windows", "2"])
    a = {v["name"]: v for v in first["variants"]}
    b = {v["name"]: v for v in again["variants"]}
    for key in ("kl_mean", "kl_max", "top1_agree_count", "quantization"):
        assert b[tiny_int4_zp.name][key] == a[tiny_int4_zp.name][key], key
    assert b[tiny_int4_zp.name]["vs_baseline"] == a[tiny_int4_zp.name]["vs_baseline"]
    # a saved variant can be the baseline, and saved files alone are enough
    base = run_json(["--ref", str(tiny_fp32), "--saved", str(saved / f"{tiny_int4.name}.npz"),
                     "--saved", str(zp_file), "--baseline", tiny_int4.name, "--max-windows", "2"])
    assert {v["name"]: v for v in base["variants"]}[tiny_int4_zp.name]["vs_baseline"] == \
        a[tiny_int4_zp.name]["vs_baseline"]
    # the saved reference stands in for the fp32 export (float32 log-probabilities)
    ref_file = saved / f"{tiny_fp32.name}.ref.npz"
    from_ref = run_json(["--ref", str(ref_file), str(tiny_int4_zp), "--saved",
                         str(saved / f"{tiny_int4.name}.npz"), "--baseline", tiny_int4.name])
    assert from_ref["positions"] == 2 * 128 and from_ref["text_tokens"] == first["text_tokens"]
    c = {v["name"]: v for v in from_ref["variants"]}[tiny_int4_zp.name]
    assert c["top1_agree_count"] == a[tiny_int4_zp.name]["top1_agree_count"]
    assert abs(c["kl_mean"] - a[tiny_int4_zp.name]["kl_mean"]) < 1e-5 * a[tiny_int4_zp.name]["kl_mean"]
    assert c["vs_baseline"]["verdict"] == a[tiny_int4_zp.name]["vs_baseline"]["verdict"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        with pytest.raises(SystemExit, match="holds 2 windows"):
            quant_quality_main(["--ref", str(ref_file), str(tiny_int4), "--max-windows", "3"])
        with pytest.raises(SystemExit, match="another reference, text or windows"):
            quant_quality_main(["--ref", str(ref_file), str(tiny_int4), "--window", "64"])
        with pytest.raises(SystemExit, match="another reference, text or windows"):
            quant_quality_main(["--ref", str(tiny_fp32), "--saved", str(zp_file),
                                "--max-windows", "3"])
        with pytest.raises(SystemExit, match="must differ"):
            quant_quality_main(["--ref", str(tiny_fp32), str(tiny_int4_zp), "--saved",
                                str(zp_file)])
        with pytest.raises(SystemExit, match="not a quant_quality.py --save file"):
            quant_quality_main(["--ref", str(tiny_fp32), "--saved",
                                str(tiny_int4 / "manifest.json")])


def test_describe_per_kind_and_older_manifests():
    q = {"op": "com.microsoft.MatMulNBits", "bits": 4, "accuracy_level": 4, "rounding": "search",
         "kinds": {k: {"block_size": 128 if k in ("gate_up", "down") else 32,
                       "symmetric": k not in ("gate_up", "down")}
                   for k in ("qkv", "o", "gate_up", "down", "lm_head")}}
    man = {"precision": "int4", "quantization": q}
    assert describe(man) == ("int4 qkv=32,o=32,gate_up=128:zp,down=128:zp,lm_head=32, search "
                             "rounding, accuracy level 4")
    assert not is_uniform_block32(man)
    older = {"precision": "int4", "quantization": {"op": "com.microsoft.MatMulNBits", "bits": 4,
                                                   "block_size": 32, "accuracy_level": 4,
                                                   "symmetric": True}}
    assert describe(older) == "int4 symmetric, block 32, absmax rounding, accuracy level 4"
    assert is_uniform_block32(older)
    assert describe({"precision": "fp32", "quantization": None}) == "fp32"

"""Tests of scripts/quant_quality.py (int4 vs fp32 agreement and KL) on the tiny exports."""
import contextlib
import io
import json
import sys

import numpy as np

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import quant_quality as Q  # noqa: E402


def test_windows_start_with_bos_and_cover_the_text():
    ids = list(range(10, 10 + 300))
    w = Q.windows_of(ids, 1, 128, None)
    assert [len(x) for x in w] == [128, 128, 47]  # 127 + 127 + 46 text tokens
    assert all(x[0] == 1 for x in w)
    assert sum((x[1:] for x in w), []) == ids
    assert len(Q.windows_of(ids, 1, 128, 2)) == 2
    assert [len(x) for x in Q.windows_of(list(range(260)), 1, 128, None)] == [128, 128]  # tail of 6 dropped


def test_kl_and_agreement_match_a_direct_computation():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 7)) * 3, rng.standard_normal((5, 7)) * 3
    kl, agree = Q.compare(Q.log_softmax(a), Q.log_softmax(b))
    p = np.exp(a) / np.exp(a).sum(-1, keepdims=True)
    q = np.exp(b) / np.exp(b).sum(-1, keepdims=True)
    np.testing.assert_allclose(kl, (p * np.log(p / q)).sum(-1), rtol=1e-10)
    np.testing.assert_array_equal(agree, a.argmax(-1) == b.argmax(-1))
    kl0, agree0 = Q.compare(Q.log_softmax(a), Q.log_softmax(a + 5.0))  # softmax is shift-invariant
    assert np.abs(kl0).max() < 1e-12 and agree0.all()


def test_report_on_tiny_exports(tiny_fp32, tiny_int4, tiny_int4_zp):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert Q.main(["--ref", str(tiny_fp32), str(tiny_int4), str(tiny_int4_zp), str(tiny_fp32),
                       "--max-windows", "3", "--threads", "1", "--json"]) == 0
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

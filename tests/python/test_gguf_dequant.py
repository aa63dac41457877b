"""Tests of scripts/gguf_dequant.py: a GGUF of the tiny checkpoint (written here with the gguf
package, q/k permuted as llama.cpp's converter does) read back, checked and exported."""
import contextlib
import io
import json

import gguf
import numpy as np
import pytest

from trendstory_tools.cli.gguf_dequant import main as gguf_dequant_main
from trendstory_tools.gguf_import.dequant_check import check, load_weights, predicted_rel_error
from trendstory_tools.gguf_import.weights import unpermute
from trendstory_tools.golden import make_session, run_full
from trendstory_tools.int4.quantizer import dequantize_q4, quantize_q4
from trendstory_tools.loadtest import hf_to_gguf
from trendstory_tools.quant_quality import check_same_model, describe
from trendstory_tools.random_init import write_random_hf
from trendstory_tools.safetensors_io import SafeTensorsDir

QT = gguf.GGMLQuantizationType


def write_gguf(hf_dir, out, matrix_type, permute=True):
    """The checkpoint as a GGUF: matrices in matrix_type (the embedding and lm_head too, as
    llama.cpp's pure types do), norms in F32; q and k permuted unless permute is False."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    st = SafeTensorsDir(hf_dir)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg["num_hidden_layers"])
    w = gguf.GGUFWriter(out, "llama")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0 if matrix_type == QT.Q4_0
                    else gguf.LlamaFileType.MOSTLY_Q8_0)
    for name in st.where:
        t = st.get_f32(name)
        if permute and name.endswith("q_proj.weight"):
            t = hf_to_gguf.permute(t, cfg["num_attention_heads"])
        elif permute and name.endswith("k_proj.weight"):
            t = hf_to_gguf.permute(t, cfg["num_key_value_heads"])
        gname = names.get_name(name, try_suffixes=(".weight",))
        if t.ndim == 1:
            w.add_tensor(gname, t)
        else:
            w.add_tensor(gname, gguf.quants.quantize(t, matrix_type), raw_dtype=matrix_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def test_unpermute_inverts_the_converter_permutation():
    w = np.random.default_rng(0).standard_normal((4 * 2 * 8, 5)).astype(np.float32)
    for heads in (1, 2, 4):
        p = hf_to_gguf.permute(w, heads)
        assert not np.array_equal(p, w)
        np.testing.assert_array_equal(unpermute(p, heads), w)


def test_prediction_matches_our_own_q4_0_equivalent():
    """Q4_0 is symmetric absmax at block 32, like quantize_q4: the predicted error is within
    a few percent of the error that quantizer really makes on Gaussian weights."""
    w = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32) * 0.02
    p, s = quantize_q4(w, 32)
    real = np.linalg.norm(dequantize_q4(p, s, 256) - w) / np.linalg.norm(w)
    assert 0.95 < real / predicted_rel_error(w, "Q4_0") < 1.01
    assert predicted_rel_error(w, "Q8_0") < predicted_rel_error(w, "Q6_K") < \
        predicted_rel_error(w, "Q4_K") < predicted_rel_error(w, "Q4_0")
    assert predicted_rel_error(w, "F32") == 0


@pytest.mark.parametrize("qtype", [QT.Q4_0, QT.Q8_0])
def test_gguf_round_trip_check_and_export(tiny_int4, tiny_fp32, tmp_path, qtype):
    hf = tiny_int4 / "hf"
    path = write_gguf(hf, tmp_path / "tiny.gguf", qtype)
    cfg = json.loads((hf / "config.json").read_text())
    st = SafeTensorsDir(hf)
    weights = load_weights(path, cfg, list(st.where))
    assert weights.f.file_type == ("Q4_0" if qtype == QT.Q4_0 else "Q8_0")
    # q and k come back in HF row order: each row close to its own checkpoint row
    q = weights.get_f32("model.layers.1.self_attn.q_proj.weight")
    ref = st.get_f32("model.layers.1.self_attn.q_proj.weight")
    assert np.linalg.norm(q - ref) / np.linalg.norm(ref) < 0.1
    summary, bad = check(weights, st)
    assert bad == []
    kinds = {(s["kind"], s["type"]) for s in summary}
    assert ("self_attn.k_proj", qtype.name) in kinds and ("model.norm", "F32") in kinds
    out = tmp_path / "exported"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert gguf_dequant_main([str(path), "--hf-dir", str(hf), "--out", str(out),
                                  "--attention", "explicit", "--source", "random-init:tiny"]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["precision"] == "fp32" and man["source"] == "gguf:tiny.gguf"
    assert man["weights_of"] == "random-init:tiny" and man["gguf"]["file_type"] == weights.f.file_type
    assert man["random_weights"] is True
    # the export computes with the dequantized weights: close to the fp32 model, not equal
    ids = [[1, 300, 301, 302, 303, 304, 305]]
    a = run_full(make_session(out / "model.onnx"), cfg, np.array(ids))[0]
    b = run_full(make_session(tiny_fp32 / "model.onnx"), cfg, np.array(ids))[0]
    rel = np.linalg.norm(a - b) / np.linalg.norm(b)
    assert 0 < rel < (0.2 if qtype == QT.Q4_0 else 0.02), rel
    # quant_quality takes it as the same model as the fp32 reference
    check_same_model(tiny_fp32, json.loads((tiny_fp32 / "manifest.json").read_text()), out,
                     man, allow_other_source=False)
    assert describe(man) == f"llama.cpp {weights.f.file_type} (GGUF dequantized to fp32)"


def test_check_catches_a_missed_permutation(tiny_int4, tmp_path):
    hf = tiny_int4 / "hf"
    path = write_gguf(hf, tmp_path / "unpermuted.gguf", QT.Q8_0, permute=False)
    cfg = json.loads((hf / "config.json").read_text())
    st = SafeTensorsDir(hf)
    _, bad = check(load_weights(path, cfg, list(st.where)), st)
    assert len(bad) == 2 * 2 and all("q_proj" in b or "k_proj" in b for b in bad), bad
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        with pytest.raises(SystemExit, match="outside"):
            gguf_dequant_main([str(path), "--hf-dir", str(hf), "--out", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()


def test_a_gguf_of_another_checkpoint_is_refused(tiny_int4, tmp_path):
    other = tmp_path / "other"
    with contextlib.redirect_stderr(io.StringIO()):
        write_random_hf("tiny", other, "f32", 1, None)  # seed 1: other weights, same shape
    path = write_gguf(other, tmp_path / "other.gguf", QT.Q8_0)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        with pytest.raises(SystemExit, match="outside"):
            gguf_dequant_main([str(path), "--hf-dir", str(tiny_int4 / "hf")])

"""Tests of scripts/gguf_import.py on small GGUF files written here with the gguf package: the
tiny model's weights in llama.cpp's block formats (q and k permuted as llama.cpp's converter
does) and a byte-level BPE vocabulary trained on the exporter's corpus. The real file
(SmolLM2-135M-Instruct) is tested in test_real_text.py."""
import contextlib
import io
import json
import os

import gguf
import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from trendstory_tools.cli.gguf_import import main as gguf_import_main
from trendstory_tools.gguf_import.config import generation_config, hf_config, parse_sampling
from trendstory_tools.gguf_import.gguf_file import GGUFFile
from trendstory_tools.gguf_import.weights import GGUFWeights, q4_1_as_8bit
from trendstory_tools.golden import make_session, run_full
from trendstory_tools.int4.formats import MATRIX_KINDS
from trendstory_tools.int4.quantizer import unpack_zero_points
from trendstory_tools.llama_checkpoint import tensor_specs
from trendstory_tools.loadtest import hf_to_gguf
from trendstory_tools.paths import TOKENIZER_CORPUS
from trendstory_tools.random_init import random_init_producer, TINY_CONFIG
from trendstory_tools.safetensors_io import SafeTensorsDir

QT = gguf.GGMLQuantizationType
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TEXTS = ["Hello world", "The year 2024 had 365 days, didn't it?", "  two  spaces\n\nand lines",
         "Café ☕ naïve 東京 🚀", "<|im_start|>user\nhi<|im_end|>", "x<|im_end|>y 12345"]


@pytest.fixture(scope="module")
def vocab():
    """A byte-level BPE trained on the exporter's corpus, split as llama.cpp's "smollm"
    pre-tokenizer does: (tokens, merges, the trained tokenizer)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TOKENIZER_CORPUS.read_text().splitlines(), trainer=trainer)
    spec = json.loads(tok.to_str())["model"]
    tokens = [t for t, _ in sorted(spec["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["merges"]]
    return tokens, merges, tok


def tiny_cfg(n_vocab: int) -> dict:
    return dict(TINY_CONFIG, vocab_size=n_vocab)


def write_gguf(path, vocab, *, types=None, arch="llama", tokenizer_model="gpt2", pre="smollm",
               add_bos=False, drop=(), extra_tensor=False, kv=None, tie=False):
    """The tiny model as a GGUF: matrices in types.get(kind, Q4_0) (kind: the HF name's part,
    e.g. "q_proj", "embed_tokens", "lm_head"), norms F32."""
    tokens, merges, _ = vocab
    cfg = tiny_cfg(len(tokens))
    cfg["tie_word_embeddings"] = tie
    produce = random_init_producer(cfg, "tinyllama", 0)  # plain Gaussian weights
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg["num_hidden_layers"])
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL
                       for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(add_bos)
    w.add_chat_template(CHATML)
    for key, value in (kv or {}).items():
        getattr(w, key)(value)
    for name, shape in tensor_specs(cfg):
        gname = names.get_name(name, try_suffixes=(".weight",))
        if gname in drop:
            continue
        t = produce(name, shape)
        if name.endswith("q_proj.weight"):
            t = hf_to_gguf.permute(t, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            t = hf_to_gguf.permute(t, cfg["num_key_value_heads"])
        if t.ndim == 1:
            w.add_tensor(gname, t)
        else:
            kind = name.removesuffix(".weight").split(".")[-1]
            qtype = (types or {}).get(kind, QT.Q4_0)
            w.add_tensor(gname, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
    if extra_tensor:
        w.add_tensor("rope_freqs.weight", np.ones(16, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def run_import(gguf_path, out, *args):
    """gguf_import.main's exit status and what it wrote to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = gguf_import_main([str(gguf_path), "--out", str(out), "--no-golden", *args])
    return rc, err.getvalue()


def initializers(folder):
    """model.onnx's initializers by name (external data loaded) and its MatMulNBits nodes."""
    model = onnx.load(str(folder / "model.onnx"))
    inits = {t.name: numpy_helper.to_array(t, base_dir=str(folder)) for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node if n.op_type == "MatMulNBits"}
    return inits, nodes


def node_weight(inits, nodes, name):
    """The float weight [N, K] a MatMulNBits node multiplies by: (code - zero point) * scale."""
    node = nodes[f"{name}/MatMulNBits"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    bits, bs, n, k = attrs["bits"], attrs["block_size"], attrs["N"], attrs["K"]
    packed = inits[node.input[1]]
    scales = inits[node.input[2]].reshape(n, -1)
    if bits == 4:
        codes = np.empty(packed.shape[:2] + (bs,), np.float32)
        codes[..., 0::2], codes[..., 1::2] = packed & 15, packed >> 4
    else:
        codes = packed.astype(np.float32)
    if len(node.input) > 3:
        zp = inits[node.input[3]]
        zp = (unpack_zero_points(zp, scales.shape[1]) if bits == 4 else zp.reshape(n, -1))
    else:
        zp = np.full(scales.shape, 1 << (bits - 1))
    return ((codes - zp[..., None].astype(np.float32)) * scales[..., None]).reshape(n, k), bits


def gguf_weights(path, vocab):
    return GGUFWeights(GGUFFile(path), tiny_cfg(len(vocab[0])))


def test_q4_0_and_q8_0_keep_the_files_own_codes_and_scales(vocab, tmp_path):
    path = write_gguf(tmp_path / "m.gguf", vocab, types={"lm_head": QT.Q8_0, "v_proj": QT.Q8_0})
    out = tmp_path / "m"
    assert run_import(path, out)[0] == 0
    inits, nodes = initializers(out)
    w = gguf_weights(path, vocab)
    # q, k (Q4_0) and v (Q8_0) share one node: 8 bits, every value exactly the file's
    got, bits = node_weight(inits, nodes, "model.layers.1.self_attn.qkv_proj")
    want = np.concatenate([w.get_f32(f"model.layers.1.self_attn.{p}_proj.weight") for p in "qkv"])
    assert bits == 8 and np.array_equal(got, want)
    got, bits = node_weight(inits, nodes, "model.layers.0.mlp.gate_up_proj")  # Q4_0: 4 bits
    want = np.concatenate([w.get_f32(f"model.layers.0.mlp.{p}_proj.weight") for p in ("gate", "up")])
    assert bits == 4 and np.array_equal(got, want)
    got, bits = node_weight(inits, nodes, "lm_head")
    assert bits == 8 and np.array_equal(got, w.get_f32("lm_head.weight"))
    man = json.loads((out / "manifest.json").read_text())
    assert man["source"] == "gguf:m.gguf" and man["random_weights"] is False
    assert man["name"] == "m" and man["gguf"]["requantized"] == []
    nodes_by = man["quantization"]["nodes"]
    assert nodes_by["gate_up: 4-bit block 32, the file's own codes and scales (Q4_0)"] == 2
    assert nodes_by["qkv: 8-bit block 32, the file's own codes and scales (Q4_0+Q8_0)"] == 2
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name or ".old" in p.name]


def test_q4_1_becomes_8_bit_blocks_with_the_files_steps(vocab, tmp_path):
    path = write_gguf(tmp_path / "m.gguf", vocab, types={"down_proj": QT.Q4_1})
    out = tmp_path / "m"
    assert run_import(path, out)[0] == 0
    inits, nodes = initializers(out)
    w = gguf_weights(path, vocab).get_f32("model.layers.0.mlp.down_proj.weight")
    got, bits = node_weight(inits, nodes, "model.layers.0.mlp.down_proj")
    assert bits == 8
    # only each block's minimum moves (by at most half its step / k): far below Q4_1's own
    # rounding error (a step / sqrt(12) per value, about 8% of the weights' norm here)
    rel = np.linalg.norm(got - w) / np.linalg.norm(w)
    assert 0 < rel < 0.005, rel
    man = json.loads((out / "manifest.json").read_text())
    assert any(k.startswith("down: 8-bit block 32, Q4_1's codes") for k in man["quantization"]["nodes"])


def test_q4_1_8_bit_codes_reproduce_each_blocks_minimum():
    rng = np.random.default_rng(0)
    d = rng.uniform(0.001, 0.01, (64, 4)).astype(np.float32)
    m = (-d * rng.uniform(0, 15, d.shape)).astype(np.float32)
    m[0, 0] = 0.5 * d[0, 0]  # an all-positive block
    d[1, 1] = 0.0  # a block of equal values
    q = rng.integers(0, 16, (64, 4, 32))
    codes, scales, zp = q4_1_as_8bit(d, m, q)
    got = (codes.astype(np.float32) - zp[..., None]) * scales[..., None]
    want = d[..., None] * q + m[..., None]
    assert np.abs(got - want).max() <= (d.max() / 2 / 17) * 1.001 + 1e-9
    assert np.abs(got[1, 1] - m[1, 1]).max() < 1e-9  # the flat block exactly
    # a block far from zero with a tiny spread has no 8-bit form: the exporter quantizes it
    m[2, 2] = -300 * d[2, 2]
    assert q4_1_as_8bit(d, m, q) is None


def test_other_block_formats_and_requantize_use_our_int4(vocab, tmp_path):
    path = write_gguf(tmp_path / "m.gguf", vocab, types={"gate_proj": QT.Q5_0, "up_proj": QT.Q5_0})
    out = tmp_path / "m"
    assert run_import(path, out)[0] == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["quantization"]["nodes"]["gate_up: int4 block 128, quantized here (Q5_0)"] == 2
    assert run_import(path, out, "--requantize")[0] == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["gguf"]["requantized"] == list(MATRIX_KINDS)
    assert "keep_native" not in man["quantization"], "every node in our formats (kinds)"
    assert run_import(path, out, "--block-size", "64")[0] == 0  # our options: requantized too
    man = json.loads((out / "manifest.json").read_text())
    assert man["gguf"]["requantized"] == list(MATRIX_KINDS)
    assert man["quantization"]["kinds"]["down"] == {"block_size": 64, "symmetric": True}
    # some kinds in our formats, the others as the file has them
    assert run_import(path, out, "--requantize", "qkv,o", "--block-size", "32", "--zero-points")[0] == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["gguf"]["requantized"] == ["qkv", "o"]
    nodes = man["quantization"]["nodes"]
    assert nodes["qkv: int4 block 32 with zero points, quantized here (Q4_0)"] == 2
    assert nodes["down: 4-bit block 32, the file's own codes and scales (Q4_0)"] == 2
    with pytest.raises(SystemExit):  # argparse's usage error, naming the kinds
        run_import(path, out, "--requantize", "qkv,mlp")


def test_fp32_and_int4_imports_compute_the_same_model(vocab, tmp_path):
    path = write_gguf(tmp_path / "m.gguf", vocab, types={"embed_tokens": QT.Q8_0})
    assert run_import(path, tmp_path / "fp32", "--precision", "fp32")[0] == 0
    assert run_import(path, tmp_path / "int4", "--accuracy-level", "0")[0] == 0
    cfg = json.loads((tmp_path / "fp32" / "config.json").read_text())
    ids = np.array([[5, 300, 301, 302, 303, 40, 41]])
    a = run_full(make_session(tmp_path / "fp32" / "model.onnx"), cfg, ids)
    b = run_full(make_session(tmp_path / "int4" / "model.onnx"), cfg, ids)
    # the same weights in both (the file's), fp32 compute: equal up to summation order
    assert np.abs(a - b).max() < 1e-4 * np.abs(a).max()


def test_config_and_generation_config_come_from_the_metadata(vocab, tmp_path):
    path = write_gguf(tmp_path / "m.gguf", vocab, tie=True,
                      kv={"add_eot_token_id": 0})
    f = GGUFFile(path)
    cfg = hf_config(f)
    assert cfg["num_hidden_layers"] == 2 and cfg["hidden_size"] == 128
    assert cfg["num_key_value_heads"] == 2 and cfg["head_dim"] == 32
    assert cfg["vocab_size"] == len(vocab[0]) and cfg["tie_word_embeddings"] is True
    assert cfg["bos_token_id"] == vocab[0].index("<|im_start|>")
    assert cfg["eos_token_id"] == 0, "the end of turn is what the engine stops at"
    gen = generation_config(f, cfg, parse_sampling("temperature=0.3,top_k=20"))
    assert gen["temperature"] == 0.3 and gen["top_k"] == 20 and gen["do_sample"] is True
    with pytest.raises(ValueError, match="colour"):
        parse_sampling("colour=1")
    out = tmp_path / "m"
    assert run_import(path, out, "--sampling", "top_p=0.9")[0] == 0
    assert json.loads((out / "generation_config.json").read_text())["top_p"] == 0.9
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert tc["chat_template"] == CHATML and tc["eos_token"] == "<|endoftext|>"
    assert tc["add_bos_token"] is False


def test_the_tokenizer_is_built_from_the_vocabulary(vocab, tmp_path):
    _, _, trained = vocab
    out = tmp_path / "m"
    assert run_import(write_gguf(tmp_path / "m.gguf", vocab), out)[0] == 0
    built = Tokenizer.from_file(str(out / "tokenizer.json"))
    for text in TEXTS:
        ids = built.encode(text).ids
        assert ids == trained.encode(text).ids, text  # no BOS: add_bos_token is false
        assert built.decode(ids, skip_special_tokens=False) == text
    assert built.encode("<|im_start|>").ids == [vocab[0].index("<|im_start|>")]
    assert built.encode("2024").ids == [built.token_to_id(c) for c in "2024"]  # digit by digit
    assert run_import(write_gguf(tmp_path / "b.gguf", vocab, add_bos=True), out)[0] == 0
    built = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert built.encode("Hello").ids[0] == vocab[0].index("<|im_start|>")


def cut(path, size):
    data = path.read_bytes()[:size]
    path.write_bytes(data)
    return path


BAD_FILES = {
    # name: (how to make it, the field the error must name)
    "another architecture": (lambda p, v: write_gguf(p, v, arch="qwen2"), "general.architecture"),
    "a SentencePiece vocabulary": (lambda p, v: write_gguf(p, v, tokenizer_model="llama"),
                                   "tokenizer.ggml.model"),
    "an unknown pre-tokenizer": (lambda p, v: write_gguf(p, v, pre="mystery"), "tokenizer.ggml.pre"),
    "a missing tensor": (lambda p, v: write_gguf(p, v, drop=("blk.1.ffn_up.weight",)),
                         "tensor blk.1.ffn_up.weight"),
    "a tensor of no Llama part": (lambda p, v: write_gguf(p, v, extra_tensor=True), "tensors"),
    "RoPE scaling": (lambda p, v: write_gguf(p, v, kv={"add_rope_scaling_type":
                                                       gguf.RopeScalingType.LINEAR}),
                     "llama.rope.scaling.type"),
    "a truncated file": (lambda p, v: cut(write_gguf(p, v), 60_000), "truncated"),
    "a cut header": (lambda p, v: cut(write_gguf(p, v), 3_000), "truncated or corrupt"),
    "not a GGUF": (lambda p, v: (p.write_bytes(b"PK\x03\x04 a zip"), p)[1], "magic"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_is_a_clear_error_and_leaves_the_folder_alone(vocab, tmp_path, case):
    make, field = BAD_FILES[case]
    path = make(tmp_path / "bad.gguf", vocab)
    out = tmp_path / "models" / "m"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("the previous import")
    rc, err = run_import(path, out)
    assert rc == 1, err
    assert str(path) in err and field in err, err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert os.listdir(out.parent) == ["m"], "nothing half-written beside it"
    rc, err = run_import(path, tmp_path / "never")
    assert rc == 1 and not (tmp_path / "never").exists()


def test_options_for_another_source_are_refused(vocab, tmp_path):
    path = write_gguf(tmp_path / "m.gguf", vocab)
    with contextlib.redirect_stderr(io.StringIO()) as err, pytest.raises(SystemExit):
        gguf_import_main([str(path), "--out", str(tmp_path / "m"), "--random-init"])
    assert "not an option for a GGUF import" in err.getvalue()


def test_hf_folder_holds_config_tokenizer_and_weights(vocab, tmp_path):
    path = write_gguf(tmp_path / "m.gguf", vocab)
    with contextlib.redirect_stderr(io.StringIO()):
        assert gguf_import_main([str(path), "--hf-out", str(tmp_path / "hf")]) == 0
    hf = tmp_path / "hf"
    cfg = json.loads((hf / "config.json").read_text())
    assert cfg["torch_dtype"] == "bfloat16"
    st = SafeTensorsDir(hf)
    w = gguf_weights(path, vocab)
    q = "model.layers.1.self_attn.q_proj.weight"
    assert st.where[q].dtype(q) == "BF16"
    # bf16 keeps 8 bits of mantissa: within 0.4% of the file's values
    assert np.abs(st.get_f32(q) - w.get_f32(q)).max() <= 0.004 * np.abs(w.get_f32(q)).max()
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (hf / name).is_file()

#!/usr/bin/env python3
"""Exports a loom encoder-decoder checkpoint to a CTranslate2 model directory.

    .venv/bin/python bench/translate_ct2_export.py CHECKPOINT OUT_DIR

CHECKPOINT is a loom checkpoint directory (model.safetensors, recipe.yaml, tokenizer.model) of a
model.arch encoder_decoder recipe: pre-norm, sinusoidal positions, embed_scale, GELU FFN,
LayerNorm with bias, tied and shared embeddings, biases on every linear, n_kv_heads = n_heads.
Anything else is refused rather than exported wrong.

The model is described with CTranslate2's own spec API (ctranslate2.specs.TransformerSpec) and
written by a ctranslate2.converters.Converter subclass, so the standard path runs: spec
validation, optimization (fp32 kept: quantization None; a Translator can still quantize at load
with compute_type="int8"), vocabulary files and config.json.

Where loom and CTranslate2's defaults differ, the export makes CTranslate2 follow loom:
  - positions: CTranslate2's built-in sinusoidal table is [sin | cos] concatenated, with
    timescale step ln(10000) / (d/2 - 1) and positions from 1 (tensor2tensor's); loom's is
    interleaved (P[p, 2i] = sin(p f_i), P[p, 2i+1] = cos(p f_i), f_i = exp(-2i ln(10000) / d),
    positions from 0). The exact loom table, max_seq_len rows, goes into the spec's
    position_encodings.encodings, which CTranslate2 then uses instead of its own;
  - layer norm epsilon: loom's 1e-5 (CTranslate2's default is 1e-6), via the model config;
  - GELU: Activation.GELU, the exact erf form (torch::gelu), not GELUTanh / GELUSigmoid;
  - tokens: the vocabulary is the SentencePiece pieces in id order; "<unk>", "<s>", "</s>" are
    the pieces of ids 0, 1, 2, and the config names them as CTranslate2's unk / bos / eos;
    the decoder starts from "<s>" and add_source_eos appends "</s>" to each source, as loom does.
"""
import argparse
import os
import sys

import numpy as np


def read_recipe_model(path):
    """The `model:` mapping of a loom recipe.yaml (flat scalars), without needing PyYAML."""
    model, inside = {}, False
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.split("#", 1)[0].rstrip()
            if not line.strip():
                continue
            if not line.startswith((" ", "\t")):
                inside = line.strip() == "model:"
                continue
            if inside and line.strip().startswith("-"):  # an item of a block list: the last key is non-empty
                model[key] = "[" + model[key] + line.strip() + "]"
            elif inside and ":" in line:
                key, value = line.strip().split(":", 1)
                value = value.strip().strip("'\"")
                model[key] = value
    return model


def as_bool(value):
    return str(value).lower() in ("true", "1", "yes", "on")


def loom_sinusoidal_table(max_seq_len, d_model):
    """loom's SinusoidalPositionImpl table, computed in float32 the way libtorch does."""
    position = np.arange(max_seq_len, dtype=np.float32)[:, None]
    freq = np.exp(np.arange(0, d_model, 2, dtype=np.float32) * np.float32(-np.log(10000.0) / d_model))
    table = np.zeros((max_seq_len, d_model), dtype=np.float32)
    table[:, 0::2] = np.sin(position * freq)
    table[:, 1::2] = np.cos(position * freq)[:, : d_model // 2]
    return table


def check_supported(m):
    def need(key, expected, default=None):
        value = m.get(key, default)
        if str(value).lower() != str(expected).lower():
            sys.exit(f"translate_ct2_export: model.{key} is {value!r}; this exporter handles {expected!r} only")

    need("arch", "encoder_decoder")
    need("norm_placement", "pre")
    need("position", "sinusoidal")
    need("norm", "layernorm")
    need("ffn", "gelu")
    need("mixer", "attention", "attention")
    need("qk_norm", "false", "false")
    need("bias", "true", "true")
    if m.get("layers", "[]") not in ("", "[]"):
        sys.exit("translate_ct2_export: per-layer mixers (model.layers) are not handled")
    need("tie_embeddings", "true")
    need("share_embeddings", "true")
    if not as_bool(m.get("embed_scale", "false")):
        sys.exit("translate_ct2_export: model.embed_scale false is not handled")
    heads = int(m["n_heads"])
    if int(m.get("n_kv_heads", 0)) not in (0, heads):
        sys.exit("translate_ct2_export: grouped-query attention (n_kv_heads != n_heads) is not handled")


def build_spec(checkpoint):
    import ctranslate2
    import sentencepiece as spm
    from ctranslate2.specs import common_spec, transformer_spec
    from safetensors.numpy import load_file

    m = read_recipe_model(os.path.join(checkpoint, "recipe.yaml"))
    check_supported(m)
    d_model, n_heads = int(m["d_model"]), int(m["n_heads"])
    enc_layers, dec_layers = int(m["n_layers"]), int(m.get("dec_layers", 0)) or int(m["n_layers"])
    max_seq_len = int(m["max_seq_len"])
    eps = float(m.get("norm_eps", 1e-5))

    w = load_file(os.path.join(checkpoint, "model.safetensors"))
    used = set()

    def get(name):
        if name not in w:
            sys.exit(f"translate_ct2_export: {name} is missing from model.safetensors")
        used.add(name)
        return np.ascontiguousarray(w[name].astype(np.float32))

    def set_linear(spec, prefix):
        spec.weight = get(prefix + ".weight")
        spec.bias = get(prefix + ".bias")

    def set_norm(spec, prefix):
        spec.gamma = get(prefix + ".weight")
        spec.beta = get(prefix + ".bias")

    def set_ffn(spec, prefix):
        set_norm(spec.layer_norm, prefix + ".norm2")
        set_linear(spec.linear_0, prefix + ".ffn.w_in")
        set_linear(spec.linear_1, prefix + ".ffn.w_out")

    spec = transformer_spec.TransformerSpec.from_config(
        (enc_layers, dec_layers),
        n_heads,
        pre_norm=True,
        activation=common_spec.Activation.GELU,
    )
    emb = get("tok_emb.weight")
    vocab_size = emb.shape[0]
    if emb.shape[1] != d_model:
        sys.exit(f"translate_ct2_export: tok_emb is {emb.shape}, recipe d_model {d_model}")
    table = loom_sinusoidal_table(max_seq_len, d_model)

    enc = spec.encoder
    enc.embeddings[0].weight = emb
    enc.scale_embeddings = True
    enc.position_encodings.encodings = table
    for i, layer in enumerate(enc.layer):
        p = f"enc_layers.{i}"
        set_norm(layer.self_attention.layer_norm, p + ".norm1")
        set_linear(layer.self_attention.linear[0], p + ".mixer.wqkv")  # [3d, d], rows [q; k; v]
        set_linear(layer.self_attention.linear[1], p + ".mixer.wo")
        set_ffn(layer.ffn, p)
    set_norm(enc.layer_norm, "norm_enc")

    dec = spec.decoder
    dec.embeddings.weight = emb
    dec.scale_embeddings = True
    dec.position_encodings.encodings = table
    for i, layer in enumerate(dec.layer):
        p = f"layers.{i}"
        set_norm(layer.self_attention.layer_norm, p + ".norm1")
        set_linear(layer.self_attention.linear[0], p + ".mixer.wqkv")
        set_linear(layer.self_attention.linear[1], p + ".mixer.wo")
        set_norm(layer.attention.layer_norm, p + ".norm_cross")
        set_linear(layer.attention.linear[0], p + ".cross.wq")
        set_linear(layer.attention.linear[1], p + ".cross.wkv")  # [2d, d], rows [k; v]
        set_linear(layer.attention.linear[2], p + ".cross.wo")
        set_ffn(layer.ffn, p)
    set_norm(dec.layer_norm, "norm_f")
    dec.projection.weight = emb  # tied output projection, no bias

    unused = sorted(set(w) - used)
    if unused:
        sys.exit(f"translate_ct2_export: tensors the export does not map: {unused[:8]}")

    sp = spm.SentencePieceProcessor(model_file=os.path.join(checkpoint, "tokenizer.model"))
    if sp.get_piece_size() != vocab_size:
        sys.exit(f"translate_ct2_export: tokenizer has {sp.get_piece_size()} pieces, model {vocab_size}")
    pieces = [sp.id_to_piece(i) for i in range(vocab_size)]
    specials = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for piece, want in specials.items():
        if pieces[want] != piece:
            sys.exit(f"translate_ct2_export: piece {want} is {pieces[want]!r}, expected {piece!r}")
    if len(set(pieces)) != len(pieces):
        sys.exit("translate_ct2_export: the tokenizer has duplicate pieces")
    spec.register_source_vocabulary(pieces)
    spec.register_target_vocabulary(pieces)
    spec.config.unk_token = "<unk>"
    spec.config.bos_token = "<s>"
    spec.config.eos_token = "</s>"
    spec.config.decoder_start_token = "<s>"
    spec.config.add_source_bos = False
    spec.config.add_source_eos = True
    spec.config.layer_norm_epsilon = eps
    return spec


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="loom checkpoint directory (model.safetensors, recipe.yaml, tokenizer.model)")
    parser.add_argument("out_dir", help="CTranslate2 model directory to write (replaced if it exists)")
    parser.add_argument("--quantization", default=None, help="CTranslate2 weight type to save (default: fp32 as is)")
    args = parser.parse_args()

    from ctranslate2.converters.converter import Converter

    class LoomConverter(Converter):
        def __init__(self, checkpoint):
            self._checkpoint = checkpoint

        def _load(self):
            return build_spec(self._checkpoint)

    out = LoomConverter(args.checkpoint).convert(args.out_dir, quantization=args.quantization, force=True)
    print(f"translate_ct2_export: wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

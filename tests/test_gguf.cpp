// GGUF and Hugging Face interchange (io/gguf.h, convert/llama_format.h), checked against independent
// references in .venv (scripts/venv.sh): llama.cpp's own gguf-py reads loom's files and loom reads
// gguf-py's; loom's quantizers agree bit for bit with gguf-py's; exported models run in a numpy
// LLaMA forward pass written from the conventions (HF rotate-half, llama.cpp adjacent pairs) and
// give loom's logits; export -> import gives the same logits back.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "loom/checkpoint/checkpoint.h"
#include "loom/convert/llama_format.h"
#include "loom/convert/quantize_model.h"
#include "loom/data/spm_model.h"
#include "loom/data/tokenizer.h"
#include "loom/io/checkpoint_dir.h"
#include "loom/io/fs.h"
#include "loom/io/gguf.h"
#include "loom/io/safetensors.h"
#include "test_util.h"

using namespace loom;
namespace fs = std::filesystem;

namespace {

CommandResult run_shell(const std::string& command) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  std::string output;
  std::array<char, 4096> buffer{};
  while (size_t n = fread(buffer.data(), 1, buffer.size(), pipe)) output.append(buffer.data(), n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

// Runs a Python script with .venv's interpreter (gguf, numpy, safetensors); its stdout, or a test
// failure that says how to get the venv.
std::string run_python(const TempDir& dir, const std::string& script, const std::string& args) {
  const std::string python = std::string(LOOM_SOURCE_DIR) + "/.venv/bin/python";
  if (!fs::exists(python)) {
    ADD_FAILURE() << python << " is missing: run scripts/venv.sh (it installs gguf, numpy, safetensors)";
    return "";
  }
  const std::string path = dir / "script.py";
  std::ofstream(path) << script;
  const CommandResult r = run_shell("'" + python + "' '" + path + "' " + args);
  if (r.status != 0) ADD_FAILURE() << "python failed (run scripts/venv.sh?):\n" << r.output;
  return r.output;
}

std::vector<float> random_floats(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> x(n);
  for (auto& v : x) v = normal(rng);
  return x;
}

void write_floats(const std::string& path, const std::vector<float>& x) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(x.data()), x.size() * sizeof(float));
}

std::vector<double> parse_doubles(const std::string& text) {
  std::istringstream in(text);
  std::vector<double> out;
  double v;
  while (in >> v) out.push_back(v);
  return out;
}

}  // namespace

// ---- codecs ----

TEST(GgufCodec, Fp16ConversionMatchesTorchBitForBit) {
  // Every half decodes as torch decodes it (NaNs compared as NaN).
  auto all = torch::arange(65536, torch::kInt32).to(torch::kInt16);
  auto as_half = torch::from_blob(all.data_ptr(), {65536}, torch::kHalf).to(torch::kFloat);
  const auto* h = reinterpret_cast<const uint16_t*>(all.data_ptr());
  for (int i = 0; i < 65536; ++i) {
    const float ref = as_half[i].item<float>(), got = fp16_to_fp32(h[i]);
    if (std::isnan(ref)) ASSERT_TRUE(std::isnan(got)) << i;
    else ASSERT_EQ(std::memcmp(&ref, &got, 4), 0) << i << ": " << ref << " vs " << got;
  }
  // Encoding rounds to nearest even like torch, across normals, subnormals, overflow and ties.
  auto x = torch::cat({torch::randn({20000}) * 1000, torch::randn({20000}) * 1e-6, torch::randn({2000}) * 7e4,
                       torch::tensor({0.0f, -0.0f, 65504.0f, 65520.0f, 1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048,
                                      std::numeric_limits<float>::infinity(), 5.96e-8f, 2.98e-8f})});
  auto ref = x.to(torch::kHalf);
  const auto* r = reinterpret_cast<const uint16_t*>(ref.data_ptr());
  for (int64_t i = 0; i < x.numel(); ++i) ASSERT_EQ(fp32_to_fp16(x[i].item<float>()), r[i]) << x[i].item<float>();
}

TEST(GgufCodec, QuantizedRoundTripsStayWithinTheBlockStep) {
  const int64_t n = 32 * 64;
  auto x = random_floats(n, 3);
  for (int64_t i = 0; i < 64; i += 7) x[i * 32 + 5] *= 20;  // outliers, so some blocks have large steps
  for (GgmlType type : {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kF16, GgmlType::kBF16}) {
    const std::string bytes = ggml_quantize(type, x.data(), n);
    ASSERT_EQ(bytes.size(), ggml_nbytes(type, n));
    std::vector<float> y(n);
    ggml_dequantize(type, bytes.data(), n, y.data());
    for (int64_t b = 0; b < n / 32; ++b) {
      float lo = x[b * 32], hi = lo, amax = 0;
      for (int j = 0; j < 32; ++j) {
        const float v = x[b * 32 + j];
        lo = std::min(lo, v), hi = std::max(hi, v), amax = std::max(amax, std::fabs(v));
      }
      // The quantization step, and the error allowed: half a step (a full one for Q4_0, whose
      // positive side is clipped at q = 15), plus the fp16 rounding of the scale (and of m).
      float bound = 0;
      switch (type) {
        case GgmlType::kQ8_0: bound = amax / 127 * (0.5f + 127.0f / 1024); break;
        case GgmlType::kQ4_0: bound = amax / 8 * (1.0f + 8.0f / 1024); break;
        case GgmlType::kQ4_1: bound = (hi - lo) / 15 * (0.5f + 15.0f / 1024) + std::fabs(lo) / 1024; break;
        case GgmlType::kF16: bound = amax / 2048; break;
        default: bound = amax / 256; break;  // BF16: 8 significant bits
      }
      for (int j = 0; j < 32; ++j)
        ASSERT_LE(std::fabs(y[b * 32 + j] - x[b * 32 + j]), bound * 1.0001f + 1e-12f)
            << ggml_type_info(type).name << " block " << b << " element " << j;
    }
  }
  // Exact cases: Q8_0 keeps the block's largest magnitude to fp16 precision; zeros stay zeros.
  std::vector<float> zeros(32, 0.0f), out(32, 1.0f);
  ggml_dequantize(GgmlType::kQ4_0, ggml_quantize(GgmlType::kQ4_0, zeros.data(), 32).data(), 32, out.data());
  for (float v : out) EXPECT_EQ(v, 0.0f);
  EXPECT_NE(error_message([&] { ggml_quantize(GgmlType::kQ8_0, x.data(), 33); }).find("block"), std::string::npos);
}

// ---- loom's files read by gguf-py, gguf-py's files read by loom ----

namespace {

const char* kDescribeScript = R"PY(
import sys, numpy as np, gguf
from gguf import quants
path, xpath = sys.argv[1], sys.argv[2]
r = gguf.GGUFReader(path)
f = open(path, 'rb').read()
print('magic', f[:4].decode(), 'version', r.fields['GGUF.version'].contents())
for k, fld in r.fields.items():
    if k.startswith('GGUF.'): continue
    types = '/'.join(gguf.GGUFValueType(t).name for t in fld.types)
    print('kv', k, types, repr(fld.contents()))
x = np.fromfile(xpath, dtype=np.float32)
end = None
for t in r.tensors:
    shape = list(reversed([int(v) for v in t.shape]))
    aligned = t.data_offset % 32 == 0
    sequential = end is None or t.data_offset == end
    end = t.data_offset + (t.n_bytes + 31) // 32 * 32
    exact = ''
    if x.size and t.tensor_type in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.Q8_0,
                         gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1):
        ref = quants.quantize(x[:int(np.prod(shape))].reshape(shape), t.tensor_type)
        exact = ' bitexact=%s' % np.array_equal(ref.view(np.uint8).reshape(-1), np.asarray(t.data).view(np.uint8).reshape(-1))
    print('tensor', t.name, shape, t.tensor_type.name, 'aligned=%s sequential=%s%s' % (aligned, sequential, exact))
)PY";

}  // namespace

TEST(GgufPython, GgufPyReadsEveryValueTypeAndTensorLoomWrites) {
  TempDir dir;
  GgufWriter w;
  w.add("general.architecture", GgufValue::string("llama"));
  w.add("t.u8", GgufValue::scalar_int(GgufType::kU8, 200));
  w.add("t.i8", GgufValue::scalar_int(GgufType::kI8, -100));
  w.add("t.u16", GgufValue::scalar_int(GgufType::kU16, 60000));
  w.add("t.i16", GgufValue::scalar_int(GgufType::kI16, -30000));
  w.add("t.u32", GgufValue::u32(4000000000u));
  w.add("t.i32", GgufValue::i32(-2000000000));
  w.add("t.f32", GgufValue::f32(0.25f));
  w.add("t.bool", GgufValue::boolean(true));
  w.add("t.string", GgufValue::string("h\xc3\xa9llo \xe2\x96\x81"));
  w.add("t.u64", GgufValue::u64(18000000000000000000ull));
  w.add("t.i64", GgufValue::scalar_int(GgufType::kI64, -9000000000000000000ll));
  w.add("t.f64", GgufValue::scalar_float(GgufType::kF64, 0.1));
  w.add("t.strings", GgufValue::string_array({"a", "", "<0x0A>"}));
  w.add("t.i32s", GgufValue::int_array(GgufType::kI32, {1, -2, 3}));
  w.add("t.f32s", GgufValue::float_array(GgufType::kF32, {0.5, -1.25}));
  w.add("t.bools", GgufValue::int_array(GgufType::kBool, {1, 0}));
  const auto x = random_floats(96 * 4, 11);
  write_floats(dir / "x.f32", x);
  for (GgmlType type : {GgmlType::kF32, GgmlType::kF16, GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1})
    w.add_tensor(std::string("w.") + ggml_type_info(type).name, {4, 96}, type, ggml_quantize(type, x.data(), 4 * 96));
  w.add_tensor("w.norm", {5}, GgmlType::kF32, ggml_quantize(GgmlType::kF32, x.data(), 5));  // 20 bytes: padding follows
  w.add_tensor("w.3d", {2, 3, 32}, GgmlType::kQ8_0, ggml_quantize(GgmlType::kQ8_0, x.data(), 192));
  w.write(dir / "a.gguf");

  const std::string out = run_python(dir, kDescribeScript, "'" + (dir / "a.gguf") + "' '" + (dir / "x.f32") + "'");
  const std::vector<std::string> expected = {
      "magic GGUF version 3",
      "kv general.architecture STRING 'llama'",
      "kv t.u8 UINT8 200",
      "kv t.i8 INT8 -100",
      "kv t.u16 UINT16 60000",
      "kv t.i16 INT16 -30000",
      "kv t.u32 UINT32 4000000000",
      "kv t.i32 INT32 -2000000000",
      "kv t.f32 FLOAT32 0.25",
      "kv t.bool BOOL True",
      "kv t.string STRING 'héllo ▁'",
      "kv t.u64 UINT64 18000000000000000000",
      "kv t.i64 INT64 -9000000000000000000",
      "kv t.f64 FLOAT64 0.1",
      "kv t.strings ARRAY/STRING ['a', '', '<0x0A>']",
      "kv t.i32s ARRAY/INT32 [1, -2, 3]",
      "kv t.f32s ARRAY/FLOAT32 [0.5, -1.25]",
      "kv t.bools ARRAY/BOOL [True, False]",
      "tensor w.F32 [4, 96] F32 aligned=True sequential=True",
      "tensor w.F16 [4, 96] F16 aligned=True sequential=True bitexact=True",
      "tensor w.Q8_0 [4, 96] Q8_0 aligned=True sequential=True bitexact=True",
      "tensor w.Q4_0 [4, 96] Q4_0 aligned=True sequential=True bitexact=True",
      "tensor w.Q4_1 [4, 96] Q4_1 aligned=True sequential=True bitexact=True",
      "tensor w.norm [5] F32 aligned=True sequential=True",
      "tensor w.3d [2, 3, 32] Q8_0 aligned=True sequential=True bitexact=True",
  };
  std::string joined;
  for (const auto& line : expected) joined += line + "\n";
  EXPECT_EQ(out, joined);
}

namespace {

const char* kWriteScript = R"PY(
import sys, numpy as np, gguf
from gguf import quants
out, d = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(5)
w = gguf.GGUFWriter(out, 'llama')   # adds general.architecture
w.add_custom_alignment(64)  # sets the key and the writer's padding
w.add_uint8('k.u8', 7); w.add_int16('k.i16', -5); w.add_uint64('k.u64', 2**40 + 3)
w.add_float32('k.f32', 1e-5); w.add_float64('k.f64', -2.5); w.add_bool('k.bool', False)
w.add_string('k.str', 'smollm'); w.add_array('k.strs', ['Ġ t', 'i n'])
w.add_array('k.ints', [3, 1, 4])
x = rng.standard_normal((3, 64)).astype(np.float32)
x.tofile(d + '/x.f32')
w.add_tensor('f32', x)
w.add_tensor('f16', x.astype(np.float16))
for qt in (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1):
    q = quants.quantize(x, qt)
    w.add_tensor(qt.name.lower(), q, raw_shape=q.shape, raw_dtype=qt)
    quants.dequantize(q, qt).astype(np.float32).tofile(d + '/' + qt.name.lower() + '.f32')
# Q6_K blocks of random bytes with a sane fp16 scale, and gguf-py's decoding of them.
q6 = rng.integers(0, 256, size=(2, 210), dtype=np.uint8)
q6[:, 208:210] = np.array([0.01, -0.02], dtype=np.float16).view(np.uint8).reshape(2, 2)
w.add_tensor('q6_k', q6.reshape(1, 420), raw_shape=(1, 420), raw_dtype=gguf.GGMLQuantizationType.Q6_K)
quants.dequantize(q6.reshape(1, 420), gguf.GGMLQuantizationType.Q6_K).astype(np.float32).tofile(d + '/q6_k.f32')
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
)PY";

std::vector<float> read_floats(const std::string& path) {
  const std::string bytes = read_file(path);
  std::vector<float> v(bytes.size() / 4);
  std::memcpy(v.data(), bytes.data(), bytes.size());
  return v;
}

}  // namespace

TEST(GgufPython, LoomReadsWhatGgufPyWrites) {
  TempDir dir;
  run_python(dir, kWriteScript, "'" + (dir / "py.gguf") + "' '" + dir.path.string() + "'");
  const GgufFile f = read_gguf(dir / "py.gguf");
  EXPECT_EQ(f.version, 3u);
  EXPECT_EQ(f.alignment, 64u);
  EXPECT_EQ(f.get("general.architecture").as_string("a"), "llama");
  EXPECT_EQ(f.get("k.u8").type, GgufType::kU8);
  EXPECT_EQ(f.get("k.u8").as_int("k"), 7);
  EXPECT_EQ(f.get("k.i16").as_int("k"), -5);
  EXPECT_EQ(f.get("k.u64").type, GgufType::kU64);
  EXPECT_EQ(f.get("k.u64").as_int("k"), (int64_t{1} << 40) + 3);
  EXPECT_EQ(f.get("k.f32").type, GgufType::kF32);
  EXPECT_EQ(f.get("k.f32").as_float("k"), static_cast<double>(1e-5f));
  EXPECT_EQ(f.get("k.f64").as_float("k"), -2.5);
  EXPECT_EQ(f.get("k.bool").type, GgufType::kBool);
  EXPECT_EQ(f.get("k.bool").as_int("k"), 0);
  EXPECT_EQ(f.get("k.str").as_string("k"), "smollm");
  EXPECT_EQ(f.get("k.strs").strings, (std::vector<std::string>{"Ġ t", "i n"}));
  EXPECT_EQ(f.get("k.ints").ints, (std::vector<int64_t>{3, 1, 4}));
  const auto x = read_floats(dir / "x.f32");
  ASSERT_EQ(f.tensors.size(), 6u);
  for (const auto& t : f.tensors) {
    EXPECT_EQ(t.offset % 64, 0u) << t.name;
    const std::vector<float> got = f.dequantize(t);
    if (t.name == "q6_k") {
      EXPECT_EQ(t.shape, (std::vector<int64_t>{1, 512}));
      EXPECT_EQ(got, read_floats(dir / "q6_k.f32"));
      continue;
    }
    EXPECT_EQ(t.shape, (std::vector<int64_t>{3, 64})) << t.name;
    if (t.name == "f32") EXPECT_EQ(got, x);
    else if (t.name == "f16") {
      for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(got[i], fp16_to_fp32(fp32_to_fp16(x[i])));
    } else {
      EXPECT_EQ(got, read_floats(dir / (t.name + ".f32"))) << t.name;  // gguf-py's own decoding
      EXPECT_EQ(ggml_quantize(t.type, x.data(), x.size()), std::string(f.data(t), t.nbytes)) << t.name;
    }
  }
}

TEST(GgufFile, CorruptOrTruncatedFilesAreOneLineErrors) {
  GgufWriter w;
  w.add("general.architecture", GgufValue::string("llama"));
  w.add("t.strings", GgufValue::string_array({"a", "bc"}));
  const auto x = random_floats(64, 1);
  w.add_tensor("w", {2, 32}, GgmlType::kQ8_0, ggml_quantize(GgmlType::kQ8_0, x.data(), 64));
  const std::string good = w.serialize();
  const GgufFile parsed = parse_gguf(good, "good.gguf");
  // Every truncation before the end of the tensor data (the rest is padding) is an error, never a crash.
  const size_t data_end = parsed.data_offset + parsed.tensors.at(0).nbytes;
  ASSERT_LT(data_end, good.size());
  for (size_t n = 0; n < data_end; ++n) {
    const std::string e = error_message([&] { parse_gguf(good.substr(0, n), "cut.gguf"); });
    ASSERT_NE(e, "no error") << n;
    ASSERT_NE(e.find("cut.gguf"), std::string::npos) << e;
    ASSERT_EQ(e.find('\n'), std::string::npos) << e;
  }
  auto corrupt = [&](size_t at, const void* bytes, size_t n) {
    std::string s = good;
    std::memcpy(s.data() + at, bytes, n);
    return error_message([&] { parse_gguf(s, "bad.gguf"); });
  };
  EXPECT_NE(corrupt(0, "GGML", 4).find("not a GGUF file"), std::string::npos);
  const uint32_t v1 = 1;
  EXPECT_NE(corrupt(4, &v1, 4).find("version 1"), std::string::npos);
  const uint64_t huge = uint64_t{1} << 60;
  EXPECT_NE(corrupt(16, &huge, 8).find("cannot fit"), std::string::npos);  // n_kv
  // The tensor info is the last thing before the padding: name(8+1) n_dims(4) ne(16) type(4) offset(8).
  const size_t info = good.find(std::string("\x01\x00\x00\x00\x00\x00\x00\x00w", 9));
  ASSERT_NE(info, std::string::npos);
  const uint32_t bad_type = 99, f32 = 0;
  EXPECT_NE(corrupt(info + 9 + 4 + 16, &bad_type, 4).find("unknown ggml type 99"), std::string::npos);
  EXPECT_NE(corrupt(info + 9 + 4 + 16, &f32, 4).find("ends past"), std::string::npos);  // 256 bytes as F32
  const uint64_t far = 1 << 20, odd = 8;
  EXPECT_NE(corrupt(info + 9 + 4 + 16 + 4, &far, 8).find("ends past"), std::string::npos);
  EXPECT_NE(corrupt(info + 9 + 4 + 16 + 4, &odd, 8).find("not a multiple of the alignment"), std::string::npos);
  const uint32_t dims = 7;
  EXPECT_NE(corrupt(info + 9, &dims, 4).find("7 dimensions"), std::string::npos);
  // Through the CLI: one line naming the file.
  TempDir dir;
  write_file_atomic(dir / "cut.gguf", good.substr(0, data_end - 10));
  expect_one_line_error(run_loom("import '" + (dir / "cut.gguf") + "' --out '" + (dir / "out") + "'"), "cut.gguf");
  EXPECT_FALSE(fs::exists(dir / "out"));
}

// ---- export and import of LLaMA-style checkpoints ----

namespace {

// Numpy LLaMA forward pass from an HF directory (rotate-half RoPE, as transformers' LLaMA) or a
// GGUF file (adjacent pairs, as llama.cpp's `llama` architecture), in float64. Prints the logits.
const char* kForwardScript = R"PY(
import sys, json, numpy as np
mode, path, toks = sys.argv[1], sys.argv[2], [int(t) for t in sys.argv[3].split(',')]
names = ['attn_norm', 'q', 'k', 'v', 'o', 'ffn_norm', 'gate', 'up', 'down']
if mode == 'hf':
    from safetensors.numpy import load_file
    cfg = json.load(open(path + '/config.json'))
    W = {k: v.astype(np.float64) for k, v in load_file(path + '/model.safetensors').items()}
    L, H, K = cfg['num_hidden_layers'], cfg['num_attention_heads'], cfg['num_key_value_heads']
    eps, theta = cfg['rms_norm_eps'], cfg['rope_theta']
    hf = ['input_layernorm', 'self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj',
          'post_attention_layernorm', 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj']
    layers = [{n: W['model.layers.%d.%s.weight' % (i, h)] for n, h in zip(names, hf)} for i in range(L)]
    emb, norm = W['model.embed_tokens.weight'], W['model.norm.weight']
    out = emb if cfg['tie_word_embeddings'] else W['lm_head.weight']
    adjacent = False
else:
    import gguf
    from gguf import quants
    r = gguf.GGUFReader(path)
    g = lambda k: r.fields[k].contents()
    W = {t.name: quants.dequantize(t.data, t.tensor_type).astype(np.float64) for t in r.tensors}
    L, H, K = g('llama.block_count'), g('llama.attention.head_count'), g('llama.attention.head_count_kv')
    eps, theta = g('llama.attention.layer_norm_rms_epsilon'), g('llama.rope.freq_base')
    gg = ['attn_norm', 'attn_q', 'attn_k', 'attn_v', 'attn_output', 'ffn_norm', 'ffn_gate', 'ffn_up', 'ffn_down']
    layers = [{n: W['blk.%d.%s.weight' % (i, h)] for n, h in zip(names, gg)} for i in range(L)]
    emb, norm = W['token_embd.weight'], W['output_norm.weight']
    out = W.get('output.weight', emb)
    adjacent = True
T, d = len(toks), emb.shape[1]
D = d // H
ang = np.outer(np.arange(T), theta ** (-np.arange(D // 2) / (D // 2)))
c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
def rope(x):
    if adjacent:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        y = np.empty_like(x); y[..., 0::2] = x1 * c - x2 * s; y[..., 1::2] = x2 * c + x1 * s
        return y
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)
rms = lambda x, w: x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w
x = emb[toks]
mask = np.triu(np.full((T, T), -np.inf), 1)
for l in layers:
    h = rms(x, l['attn_norm'])
    q = rope((h @ l['q'].T).reshape(T, H, D)); k = rope((h @ l['k'].T).reshape(T, K, D))
    v = (h @ l['v'].T).reshape(T, K, D)
    k, v = np.repeat(k, H // K, axis=1), np.repeat(v, H // K, axis=1)
    sc = np.einsum('thd,shd->hts', q, k) / np.sqrt(D) + mask
    p = np.exp(sc - sc.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
    x = x + np.einsum('hts,shd->thd', p, v).reshape(T, H * D) @ l['o'].T
    h = rms(x, l['ffn_norm'])
    gate = h @ l['gate'].T
    x = x + (gate / (1 + np.exp(-gate)) * (h @ l['up'].T)) @ l['down'].T
print(' '.join(repr(float(v)) for v in (rms(x, norm) @ out.T).reshape(-1)))
)PY";

const std::vector<int64_t> kTokens = {1, 17, 250, 3, 99, 42, 7, 180, 260, 5, 64, 2};

class LlamaFormat : public ::testing::Test {
 protected:
  static constexpr int kVocab = 300;
  static void SetUpTestSuite() {
    dir_ = new TempDir;
    std::ofstream out(*dir_ / "train.txt");
    const char* words[] = {"the",  "quick", "brown", "fox",   "jumps", "over", "lazy", "dog",    "Elizabeth", "Darcy",
                           "said", "she",   "would", "never", "marry", "him",  "Mr.",  "Bennet", "é",         "naïve"};
    std::mt19937 rng(7);
    for (int line = 0; line < 300; ++line) {
      for (int w = 0; w < 10; ++w) out << (w ? " " : "") << words[rng() % std::size(words)];
      out << ".\n";
    }
    out.close();
    train_tokenizer(*dir_ / "train.txt", kVocab, *dir_ / "sp.model");
  }
  static void TearDownTestSuite() { delete dir_; }
  static TempDir* dir_;

  static ModelConfig llama(const std::string& position, bool tied) {
    ModelConfig c;
    c.vocab_size = kVocab;
    c.d_model = 64;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.d_ff = 96;
    c.max_seq_len = 32;
    c.position = position;
    c.rope_theta = 500;  // a short period, so that a pairing bug shows at these few positions
    c.norm = "rmsnorm";
    c.ffn = "swiglu";
    c.bias = false;
    c.tie_embeddings = tied;
    return c;
  }

  // A checkpoint directory holding a random model of `config` (norm weights random too, so that a
  // swapped norm shows) and the suite's tokenizer.
  static std::string make_checkpoint(const std::string& name, const ModelConfig& config) {
    torch::manual_seed(42);
    Model model(config);
    {
      torch::NoGradGuard no_grad;
      for (auto& p : model->parameters())
        p.copy_(p.dim() == 1 ? 1 + 0.3 * torch::randn_like(p) : 0.15 * torch::randn_like(p));
    }
    Recipe recipe = default_recipe();
    recipe.model = config;
    CheckpointWriter writer(dir_->path.string(), name);
    save_safetensors(writer.path("model.safetensors"), module_state(*model));
    writer.add("recipe.yaml", recipe_to_yaml(recipe));
    writer.add("tokenizer.model", read_file(*dir_ / "sp.model"));
    writer.add("trainer.json",
               R"({"format": 1, "step": 0, "tokens_seen": 0, "elapsed_seconds": 0, "valid_loss": null})");
    return writer.commit();
  }

  static torch::Tensor logits(LoadedModel& loaded) {
    torch::NoGradGuard no_grad;
    return loaded.model->forward(torch::tensor(kTokens).unsqueeze(0)).squeeze(0);  // [T, V]
  }
  static double relative_error(const torch::Tensor& a, const torch::Tensor& b) {
    return ((a - b).norm() / b.norm()).item<double>();
  }
  static torch::Tensor python_logits(const std::string& mode, const std::string& path) {
    std::string tokens;
    for (int64_t t : kTokens) tokens += (tokens.empty() ? "" : ",") + std::to_string(t);
    TempDir tmp;
    const auto values = parse_doubles(run_python(tmp, kForwardScript, mode + " '" + path + "' " + tokens));
    if (values.size() != kTokens.size() * kVocab) {
      ADD_FAILURE() << "expected " << kTokens.size() * kVocab << " logits from python, got " << values.size();
      return torch::zeros({static_cast<int64_t>(kTokens.size()), kVocab});
    }
    return torch::tensor(values).to(torch::kFloat).view({static_cast<int64_t>(kTokens.size()), kVocab});
  }
};
TempDir* LlamaFormat::dir_ = nullptr;

}  // namespace

TEST_F(LlamaFormat, GgufF32RoundTripKeepsTheLogitsForBothRopePairings) {
  for (const std::string position : {"rope", "rope_adjacent"}) {
    SCOPED_TRACE(position);
    auto original = load_checkpoint(make_checkpoint("gguf-" + position, llama(position, /*tied=*/false)));
    const std::string file = *dir_ / ("m-" + position + ".gguf");
    export_gguf(original, GgmlType::kF32, file, "test");
    const ImportSummary s = import_checkpoint(file, *dir_ / ("back-" + position));
    EXPECT_EQ(s.tokenizer, "sentencepiece");
    auto back = load_checkpoint(s.dir);
    EXPECT_EQ(back.recipe.model.position, "rope_adjacent");
    EXPECT_FALSE(back.recipe.model.tie_embeddings);
    EXPECT_EQ(back.recipe.model.n_kv_heads, 2);
    const auto want = logits(original), got = logits(back);
    EXPECT_LT((got - want).abs().max().item<double>(), 1e-4 * want.abs().max().item<double>());
    // llama.cpp's convention (adjacent pairs, read by gguf-py) gives the same logits.
    EXPECT_LT(relative_error(python_logits("gguf", file), want), 1e-5);
    // The check can fail: the same weights with the other pairing are a different model.
    ModelConfig wrong = back.recipe.model;
    wrong.position = "rope";
    Model other(wrong);
    load_module_state(*other, load_safetensors(s.dir + "/model.safetensors"), "x");
    torch::NoGradGuard no_grad;
    EXPECT_GT(relative_error(other->forward(torch::tensor(kTokens).unsqueeze(0)).squeeze(0), want), 1e-2);
    // The tokenizer came back through tokenizer.ggml.*: same pieces, same encoding.
    const std::string text = "Elizabeth said the lazy dog would never marry him. naïve é 漢字!";
    EXPECT_EQ(back.tokenizer.encode(text), original.tokenizer.encode(text));
    EXPECT_EQ(back.tokenizer.bos_id(), original.tokenizer.bos_id());
    EXPECT_EQ(back.tokenizer.eos_id(), original.tokenizer.eos_id());
  }
}

TEST_F(LlamaFormat, GgufMetadataHasLlamaCppsKeysAndTypes) {
  auto loaded = load_checkpoint(make_checkpoint("meta", llama("rope", /*tied=*/true)));
  const std::string file = *dir_ / "meta.gguf";
  export_gguf(loaded, GgmlType::kQ8_0, file, "tiny llama");
  TempDir tmp;
  const std::string out = run_python(tmp, kDescribeScript, "'" + file + "' /dev/null");
  for (const char* line : {"kv general.architecture STRING 'llama'",
                           "kv general.name STRING 'tiny llama'",
                           "kv general.file_type UINT32 7",
                           "kv llama.context_length UINT32 32",
                           "kv llama.embedding_length UINT32 64",
                           "kv llama.block_count UINT32 2",
                           "kv llama.feed_forward_length UINT32 96",
                           "kv llama.attention.head_count UINT32 4",
                           "kv llama.attention.head_count_kv UINT32 2",
                           "kv llama.attention.layer_norm_rms_epsilon FLOAT32 9.999999747378752e-06",
                           "kv llama.rope.dimension_count UINT32 16",
                           "kv llama.rope.freq_base FLOAT32 500.0",
                           "kv tokenizer.ggml.model STRING 'llama'",
                           "kv tokenizer.ggml.bos_token_id UINT32 1",
                           "kv tokenizer.ggml.eos_token_id UINT32 2",
                           "kv tokenizer.ggml.unknown_token_id UINT32 0",
                           "kv tokenizer.ggml.add_space_prefix BOOL True",
                           "kv tokenizer.ggml.add_bos_token BOOL False",
                           "tensor token_embd.weight [300, 64] Q8_0 aligned=True sequential=True",
                           "tensor blk.0.attn_norm.weight [64] F32 aligned=True sequential=True",
                           "tensor blk.0.attn_q.weight [64, 64] Q8_0",
                           "tensor blk.0.attn_k.weight [32, 64] Q8_0",
                           "tensor blk.1.ffn_down.weight [64, 96] Q8_0",
                           "tensor blk.1.ffn_gate.weight [96, 64] Q8_0",
                           "tensor output_norm.weight [64] F32"})
    EXPECT_NE(out.find(line), std::string::npos) << line << "\nin:\n" << out;
  EXPECT_EQ(out.find("tensor output.weight"), std::string::npos) << "tied: no output.weight";
  EXPECT_NE(out.find("kv tokenizer.ggml.tokens ARRAY/STRING ['<unk>', '<s>', '</s>', '<0x00>'"), std::string::npos)
      << out;
  EXPECT_NE(out.find("kv tokenizer.ggml.token_type ARRAY/INT32 [2, 3, 3, 6, 6"), std::string::npos) << out;
  EXPECT_EQ(out.find("bitexact=False"), std::string::npos) << out;
  EXPECT_EQ(out.find("=False"), std::string::npos) << out;
}

TEST_F(LlamaFormat, QuantizedGgufExportsStayClose) {
  auto original = load_checkpoint(make_checkpoint("quant", llama("rope", /*tied=*/true)));
  const auto want = logits(original);
  // These random weights make a sensitive model (peaked attention): the bounds are loose, the
  // order of the errors is the point.
  double previous = 0;
  for (const auto& [type, tolerance] :
       {std::pair{GgmlType::kF16, 5e-3}, std::pair{GgmlType::kQ8_0, 0.08}, std::pair{GgmlType::kQ4_0, 0.6}}) {
    SCOPED_TRACE(ggml_type_info(type).name);
    const std::string file = *dir_ / (std::string("q-") + ggml_type_info(type).name + ".gguf");
    export_gguf(original, type, file, "q");
    auto back = load_checkpoint(import_checkpoint(file, file + ".ckpt").dir);
    EXPECT_TRUE(back.recipe.model.tie_embeddings);
    const double error = relative_error(logits(back), want);
    EXPECT_LT(error, tolerance);
    EXPECT_GT(error, 2 * previous);
    previous = error;
    // What loom imports is what gguf-py decodes.
    EXPECT_LT(relative_error(python_logits("gguf", file), logits(back)), 1e-5);
    if (type != GgmlType::kQ4_0) {
      EXPECT_TRUE(back.quantized.empty());
      continue;
    }
    // Q4_0 linears keep the file's blocks: a q4 checkpoint (wqkv, wo, w_in, w_out per layer and the
    // tied embedding), and exporting it as Q4_0 again gives the same tensor bytes.
    EXPECT_EQ(back.quantization, "q4");
    EXPECT_EQ(back.quantized.size(), 2u * 4 + 1);
    EXPECT_TRUE(back.quantized.count("tok_emb.weight"));
    const std::string again = file + ".again.gguf";
    export_gguf(back, type, again, "q");
    const GgufFile first = read_gguf(file), second = read_gguf(again);
    ASSERT_EQ(first.tensors.size(), second.tensors.size());
    for (size_t i = 0; i < first.tensors.size(); ++i) {
      const auto& a = first.tensors[i];
      const auto& b = second.tensors[i];
      EXPECT_EQ(a.name, b.name);
      EXPECT_EQ(a.type, b.type) << a.name;
      EXPECT_EQ(std::string(first.data(a), a.nbytes), std::string(second.data(b), b.nbytes)) << a.name;
    }
  }
}

// A Q4_0 export of a GPTQ checkpoint carries its blocks unchanged (split and RoPE-permuted by rows):
// every Q4_0 tensor of the file decodes to exactly the weights the checkpoint holds (those of an
// F32 export of it). Re-rounding the dequantized weights would not: GPTQ's codes are not the
// nearest ones, and a block whose largest weight is not at code 0 gets another scale.
TEST_F(LlamaFormat, Q4_0ExportOfAGptqCheckpointKeepsItsBlocks) {
  for (const bool tied : {false, true}) {
    SCOPED_TRACE(tied ? "tied" : "untied");
    const std::string name = tied ? "gptq-tied" : "gptq";
    auto original = load_checkpoint(make_checkpoint(name + "-float", llama("rope", tied)));
    torch::manual_seed(3);
    const auto calibration = torch::randint(kVocab, {8, 16});
    const auto weights = quantize_model(original, QuantMethod::kGptq, calibration);
    auto quantized = load_checkpoint(save_quantized_checkpoint(original, weights, QuantMethod::kGptq, *dir_ / name));
    ASSERT_FALSE(quantized.quantized.empty());
    const std::string q4 = *dir_ / (name + "-q4_0.gguf"), f32 = *dir_ / (name + "-f32.gguf");
    export_gguf(quantized, GgmlType::kQ4_0, q4, "gptq");
    export_gguf(quantized, GgmlType::kF32, f32, "gptq");
    const GgufFile a = read_gguf(q4), b = read_gguf(f32);
    int q4_tensors = 0, would_differ = 0;
    for (const auto& t : a.tensors) {
      // An untied embedding is not quantized by `quantize` (only looked up): the export rounds it.
      if (t.type != GgmlType::kQ4_0 || (!tied && t.name == "token_embd.weight")) continue;
      ++q4_tensors;
      const auto* plain = b.find_tensor(t.name);
      ASSERT_NE(plain, nullptr) << t.name;
      const std::vector<float> got = a.dequantize(t), want = b.dequantize(*plain);
      EXPECT_EQ(got, want) << t.name;
      if (ggml_quantize(GgmlType::kQ4_0, want.data(), static_cast<int64_t>(want.size())) !=
          std::string(a.data(t), t.nbytes))
        ++would_differ;
    }
    EXPECT_EQ(q4_tensors, 2 * 7 + 1);  // q, k, v, o, gate, up, down per layer; output (tied: token_embd)
    EXPECT_GT(would_differ, 0) << "re-rounding happens to reproduce GPTQ's blocks: the test shows nothing";
  }
}

TEST_F(LlamaFormat, HfExportMatchesTransformersConventionAndRoundTrips) {
  for (const std::string position : {"rope", "rope_adjacent"}) {
    SCOPED_TRACE(position);
    auto original = load_checkpoint(make_checkpoint("hf-" + position, llama(position, position == "rope")));
    const std::string out = *dir_ / ("hf-out-" + position);
    export_hf(original, out);
    for (const char* f :
         {"model.safetensors", "config.json", "generation_config.json", "tokenizer.model", "tokenizer_config.json"})
      EXPECT_TRUE(fs::exists(out + "/" + f)) << f;
    const auto config = nlohmann::json::parse(read_file(out + "/config.json"));
    EXPECT_EQ(config["architectures"][0], "LlamaForCausalLM");
    EXPECT_EQ(config["num_key_value_heads"], 2);
    EXPECT_EQ(config["tie_word_embeddings"], position == "rope");
    const auto st = load_safetensors(out + "/model.safetensors");
    EXPECT_EQ(st.metadata.at("format"), "pt");
    EXPECT_EQ(st.tensors.front().first, "model.embed_tokens.weight");
    const auto want = logits(original);
    // The rotate-half numpy forward of the exported files gives loom's logits.
    EXPECT_LT(relative_error(python_logits("hf", out), want), 1e-5);
    auto back = load_checkpoint(import_checkpoint(out, out + "-back").dir);
    EXPECT_EQ(back.recipe.model.position, "rope");
    EXPECT_LT((logits(back) - want).abs().max().item<double>(), 1e-4 * want.abs().max().item<double>());
    if (position == "rope") {  // the same weights, bit for bit
      const auto a = load_safetensors(original.dir + "/model.safetensors"),
                 b = load_safetensors(back.dir + "/model.safetensors");
      ASSERT_EQ(a.tensors.size(), b.tensors.size());
      for (size_t i = 0; i < a.tensors.size(); ++i) {
        EXPECT_EQ(a.tensors[i].first, b.tensors[i].first);
        EXPECT_TRUE(torch::equal(a.tensors[i].second, b.tensors[i].second)) << a.tensors[i].first;
      }
    }
    EXPECT_EQ(back.tokenizer.serialized(), original.tokenizer.serialized());
  }
}

TEST_F(LlamaFormat, HfImportReadsShardsAndHalfPrecision) {
  auto original = load_checkpoint(make_checkpoint("shards", llama("rope", /*tied=*/false)));
  const std::string out = *dir_ / "hf-sharded";
  export_hf(original, out, GgmlType::kBF16);
  // Split model.safetensors into two shards with an index, as transformers' save_pretrained does.
  auto st = load_safetensors(out + "/model.safetensors");
  EXPECT_EQ(st.tensors.front().second.scalar_type(), torch::kBFloat16);
  NamedTensors a(st.tensors.begin(), st.tensors.begin() + 5), b(st.tensors.begin() + 5, st.tensors.end());
  save_safetensors(out + "/model-00001-of-00002.safetensors", a, {{"format", "pt"}});
  save_safetensors(out + "/model-00002-of-00002.safetensors", b, {{"format", "pt"}});
  nlohmann::json index;
  for (const auto& [name, t] : a) index["weight_map"][name] = "model-00001-of-00002.safetensors";
  for (const auto& [name, t] : b) index["weight_map"][name] = "model-00002-of-00002.safetensors";
  std::ofstream(out + "/model.safetensors.index.json") << index.dump();
  fs::remove(out + "/model.safetensors");
  auto back = load_checkpoint(import_checkpoint(out, out + "-back").dir);
  const double error = relative_error(logits(back), logits(original));
  EXPECT_LT(error, 0.05);  // bf16 weights
  EXPECT_GT(error, 0.0);
}

TEST_F(LlamaFormat, CommandsExportImportAndGenerate) {
  const std::string ckpt = make_checkpoint("cli", llama("rope", /*tied=*/true));
  const std::string file = *dir_ / "cli.gguf";
  auto r = run_loom("export '" + ckpt + "' --format gguf --type q8_0 --out '" + file + "'");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("Q8_0"), std::string::npos) << r.output;
  r = run_loom("import '" + file + "' --out '" + (*dir_ / "cli-back") + "'");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("tokenizer: sentencepiece"), std::string::npos) << r.output;
  r = run_loom("generate '" + (*dir_ / "cli-back") + "' --prompt 'the quick' --max-new-tokens 5 --temperature 0");
  EXPECT_EQ(r.status, 0) << r.output;
  r = run_loom("export '" + ckpt + "' --format hf --out '" + (*dir_ / "cli-hf") + "'");
  ASSERT_EQ(r.status, 0) << r.output;
  r = run_loom("import '" + (*dir_ / "cli-hf") + "' --out '" + (*dir_ / "cli-hf-back") + "'");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("position rope,"), std::string::npos) << r.output;
  expect_one_line_error(run_loom("export '" + ckpt + "' --format gguf --type q5_k --out x.gguf"), "Q5_K");
}

TEST_F(LlamaFormat, UnsupportedArchitecturesAreErrors) {
  ModelConfig gpt = llama("learned", true);
  gpt.norm = "layernorm";
  gpt.ffn = "gelu";
  gpt.bias = true;
  const std::string ckpt = make_checkpoint("gpt", gpt);
  auto loaded = load_checkpoint(ckpt);
  const std::string e = error_message([&] { export_gguf(loaded, GgmlType::kF32, *dir_ / "gpt.gguf", "x"); });
  for (const char* part : {"not a LLaMA-style model", "position learned", "norm layernorm", "ffn gelu", "bias true"})
    EXPECT_NE(e.find(part), std::string::npos) << e;
  expect_one_line_error(run_loom("export '" + ckpt + "' --format hf --out '" + (*dir_ / "gpt-hf") + "'"), "ffn gelu");
  EXPECT_FALSE(fs::exists(*dir_ / "gpt.gguf"));
  // A GGUF of another architecture.
  GgufWriter w;
  w.add("general.architecture", GgufValue::string("gpt2"));
  w.write(*dir_ / "gpt2.gguf");
  expect_one_line_error(run_loom("import '" + (*dir_ / "gpt2.gguf") + "' --out '" + (*dir_ / "gpt2-back") + "'"),
                        "general.architecture is 'gpt2'");
  // An HF config.json whose sizes are not integers: converting 1e30 to an integer was undefined.
  const std::string hf = *dir_ / "float-hf";
  fs::create_directories(hf);
  for (const char* key : {"hidden_size", "num_key_value_heads"}) {
    nlohmann::json config = {{"model_type", "llama"},  {"vocab_size", 300},        {"hidden_size", 32},
                             {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"intermediate_size", 64}};
    config[key] = 1e30;
    std::ofstream(hf + "/config.json") << config.dump();
    const std::string e = error_message([&] { import_checkpoint(hf, hf + "-back"); });
    EXPECT_NE(e.find(std::string(key) + " must be an integer"), std::string::npos) << e;
  }
}

// A SmolLM2-shaped file: llama tensors in Q4_1/Q8_0 and a GPT-2 byte-level BPE vocabulary, which
// is kept as tokenizer.gguf.json; the checkpoint loads it as a byte-level BPE tokenizer.
TEST_F(LlamaFormat, GgufWithGpt2VocabularyKeepsItAsJson) {
  auto loaded = load_checkpoint(make_checkpoint("smol", llama("rope_adjacent", true)));
  const std::string plain = *dir_ / "smol-plain.gguf";
  export_gguf(loaded, GgmlType::kQ4_1, plain, "smol");
  const GgufFile src = read_gguf(plain);
  GgufWriter w;
  for (const auto& [key, value] : src.metadata)
    if (key.rfind("tokenizer.", 0) != 0) w.add(key, value);
  std::vector<std::string> tokens;
  for (int i = 0; i < kVocab; ++i) tokens.push_back(i == 0 ? "<|endoftext|>" : "t" + std::to_string(i));
  w.add("tokenizer.ggml.model", GgufValue::string("gpt2"));
  w.add("tokenizer.ggml.pre", GgufValue::string("smollm"));
  w.add("tokenizer.ggml.tokens", GgufValue::string_array(tokens));
  w.add("tokenizer.ggml.token_type", GgufValue::int_array(GgufType::kI32, std::vector<int64_t>(kVocab, 1)));
  w.add("tokenizer.ggml.merges", GgufValue::string_array({"Ġ t", "i n"}));
  w.add("tokenizer.ggml.bos_token_id", GgufValue::u32(1));
  w.add("tokenizer.ggml.eos_token_id", GgufValue::u32(2));
  w.add("tokenizer.ggml.add_bos_token", GgufValue::boolean(false));
  w.add("tokenizer.chat_template", GgufValue::string("{% for m in messages %}{% endfor %}"));
  for (const auto& t : src.tensors) w.add_tensor(t.name, t.shape, t.type, std::string(src.data(t), t.nbytes));
  w.write(*dir_ / "smol.gguf");

  const ImportSummary s = import_checkpoint(*dir_ / "smol.gguf", *dir_ / "smol-back");
  EXPECT_EQ(s.tokenizer, "tokenizer.gguf.json (gpt2)");
  EXPECT_FALSE(fs::exists(s.dir + "/tokenizer.model"));
  const auto j = nlohmann::json::parse(read_file(s.dir + "/tokenizer.gguf.json"));
  EXPECT_EQ(j["model"], "gpt2");
  EXPECT_EQ(j["pre"], "smollm");
  EXPECT_EQ(j["tokens"].size(), static_cast<size_t>(kVocab));
  EXPECT_EQ(j["tokens"][0], "<|endoftext|>");
  EXPECT_EQ(j["merges"], nlohmann::json({"Ġ t", "i n"}));
  EXPECT_EQ(j["token_type"][5], 1);
  EXPECT_EQ(j["bos_token_id"], 1);
  EXPECT_EQ(j["eos_token_id"], 2);
  EXPECT_EQ(j["add_bos_token"], false);
  EXPECT_EQ(j["chat_template"], "{% for m in messages %}{% endfor %}");
  auto back = load_checkpoint(s.dir);
  // A "gpt2" vocabulary runs as loom's byte-level BPE tokenizer (data/bpe_tokenizer.h).
  EXPECT_TRUE(back.has_tokenizer);
  EXPECT_EQ(back.tokenizer.vocab_size(), kVocab);
  EXPECT_EQ(back.tokenizer.eos_id(), 2);
  EXPECT_EQ(back.tokenizer.prompt_prefix(), std::vector<int>{});  // add_bos_token false: no start token
  // The weights are those of the Q4_1 file, decoded as gguf-py decodes them.
  EXPECT_LT(relative_error(python_logits("gguf", *dir_ / "smol.gguf"), logits(back)), 1e-5);
  // Exported again, the file carries the same vocabulary keys with the same types.
  export_gguf(back, GgmlType::kF32, *dir_ / "smol-again.gguf", "smol");
  const GgufFile again = read_gguf(*dir_ / "smol-again.gguf"), original = read_gguf(*dir_ / "smol.gguf");
  int keys = 0;
  for (const auto& [key, value] : original.metadata) {
    if (key.rfind("tokenizer.", 0) != 0) continue;
    ++keys;
    const GgufValue* v = again.find(key);
    ASSERT_NE(v, nullptr) << key;
    EXPECT_EQ(v->type, value.type) << key;
    EXPECT_EQ(v->element_type, value.element_type) << key;
    EXPECT_EQ(v->ints, value.ints) << key;
    EXPECT_EQ(v->floats, value.floats) << key;
    EXPECT_EQ(v->strings, value.strings) << key;
  }
  EXPECT_EQ(keys, 9);
  EXPECT_LT(relative_error(python_logits("gguf", *dir_ / "smol-again.gguf"), logits(back)), 1e-5);
  expect_one_line_error(run_loom("export '" + s.dir + "' --format hf --out '" + (*dir_ / "smol-hf") + "'"),
                        "tokenizer.gguf.json");
  // Any other kind of GGUF vocabulary loads without a tokenizer; commands that need text say why.
  auto other = j;
  other["model"] = "bert";
  std::ofstream(s.dir + "/tokenizer.gguf.json") << other.dump();
  auto foreign = load_checkpoint(s.dir);
  EXPECT_FALSE(foreign.has_tokenizer);
  const std::string e = error_message([&] { require_tokenizer(foreign, "generate"); });
  EXPECT_NE(e.find("tokenizer.gguf.json"), std::string::npos) << e;
  expect_one_line_error(run_loom("generate '" + s.dir + "' --prompt hi"), "tokenizer.gguf.json");
  expect_one_line_error(run_loom("eval '" + s.dir + "'"), "tokenizer.gguf.json");
}

TEST_F(LlamaFormat, GgufVocabularyThatSentencePieceRejectsIsAnImportError) {
  auto loaded = load_checkpoint(make_checkpoint("novocab", llama("rope", true)));
  const std::string plain = *dir_ / "novocab-plain.gguf";
  export_gguf(loaded, GgmlType::kF32, plain, "x");
  const GgufFile src = read_gguf(plain);
  GgufWriter w;
  for (auto [key, value] : src.metadata) {
    if (key == "tokenizer.ggml.token_type") value.ints[0] = 1;  // <unk> no longer UNKNOWN: no unk piece
    w.add(key, value);
  }
  for (const auto& t : src.tensors) w.add_tensor(t.name, t.shape, t.type, std::string(src.data(t), t.nbytes));
  w.write(*dir_ / "novocab.gguf");
  expect_one_line_error(run_loom("import '" + (*dir_ / "novocab.gguf") + "' --out '" + (*dir_ / "novocab-back") + "'"),
                        "does not make a SentencePiece model");
  EXPECT_FALSE(fs::exists(*dir_ / "novocab-back"));
}

TEST(SpmModel, ParsesAndRebuildsATrainedTokenizer) {
  TempDir dir;
  std::ofstream(dir / "t.txt") << "hello world, hello there.\nthe world is wide and the sea is deep.\n";
  train_tokenizer(dir / "t.txt", 280, dir / "sp.model");
  const std::string bytes = read_file(dir / "sp.model");
  const SpmVocab v = parse_spm_model(bytes);
  ASSERT_EQ(v.pieces.size(), 280u);
  EXPECT_EQ(v.pieces[0].piece, "<unk>");
  EXPECT_EQ(v.pieces[0].type, SpmPieceType::kUnknown);
  EXPECT_EQ(v.pieces[1].type, SpmPieceType::kControl);
  EXPECT_EQ(v.pieces[3].piece, "<0x00>");
  EXPECT_EQ(v.pieces[3].type, SpmPieceType::kByte);
  EXPECT_EQ(v.model_type, 2);
  EXPECT_TRUE(v.byte_fallback);
  EXPECT_TRUE(v.add_dummy_prefix);
  EXPECT_FALSE(v.remove_extra_whitespaces);
  EXPECT_EQ(v.pad_id, -1);
  const Tokenizer original = Tokenizer::from_bytes(bytes), rebuilt = Tokenizer::from_bytes(build_spm_model(v));
  const std::string text = "hello  wide sea, 漢字 and \xf0\x9f\x99\x82 the end";
  EXPECT_EQ(rebuilt.encode(text), original.encode(text));
  EXPECT_EQ(rebuilt.decode(rebuilt.encode(text)), text);
  EXPECT_NE(error_message([] { parse_spm_model(std::string("\x0a\xff", 2)); }), "no error");
}

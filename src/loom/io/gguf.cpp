#include "loom/io/gguf.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <set>

#include "loom/core/error.h"
#include "loom/io/fs.h"
#include "loom/io/ggml_blocks.h"

namespace loom {
namespace {

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr uint64_t kDefaultAlignment = 32;
constexpr int kMaxDims = 4;  // GGML_MAX_DIMS

bool is_integer(GgufType t) {
  switch (t) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kU16:
    case GgufType::kI16:
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kU64:
    case GgufType::kI64:
    case GgufType::kBool: return true;
    default: return false;
  }
}
bool is_float(GgufType t) { return t == GgufType::kF32 || t == GgufType::kF64; }

// Bytes of one scalar of a fixed-size type; 0 for strings and arrays.
size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kBool: return 1;
    case GgufType::kU16:
    case GgufType::kI16: return 2;
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kF32: return 4;
    case GgufType::kU64:
    case GgufType::kI64:
    case GgufType::kF64: return 8;
    default: return 0;
  }
}

// Reads little-endian values from the file bytes; every read is bounds-checked.
class Cursor {
 public:
  Cursor(const std::string& bytes, const std::string& path) : bytes_(bytes), path_(path) {}
  size_t pos() const { return pos_; }
  size_t remaining() const { return bytes_.size() - pos_; }
  template <class T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(const char* what) {
    const uint64_t n = read<uint64_t>(what);
    need(n, what);
    std::string s = bytes_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  void need(uint64_t n, const char* what) const {
    if (n > remaining())
      fail("{}: truncated GGUF file: {} needs {} bytes at offset {}, {} left", path_, what, n, pos_, remaining());
  }

 private:
  const std::string& bytes_;
  const std::string& path_;
  size_t pos_ = 0;
};

int64_t read_int(Cursor& c, GgufType t, const char* what) {
  switch (t) {
    case GgufType::kU8: return c.read<uint8_t>(what);
    case GgufType::kI8: return c.read<int8_t>(what);
    case GgufType::kU16: return c.read<uint16_t>(what);
    case GgufType::kI16: return c.read<int16_t>(what);
    case GgufType::kU32: return c.read<uint32_t>(what);
    case GgufType::kI32: return c.read<int32_t>(what);
    case GgufType::kU64: return static_cast<int64_t>(c.read<uint64_t>(what));
    case GgufType::kI64: return c.read<int64_t>(what);
    case GgufType::kBool: return c.read<uint8_t>(what) != 0;
    default: return 0;
  }
}

void append_value(GgufValue& v, Cursor& c, GgufType t, const std::string& key, const std::string& path) {
  if (t == GgufType::kString) v.strings.push_back(c.read_string("a string value"));
  else if (t == GgufType::kF32) v.floats.push_back(c.read<float>("an f32 value"));
  else if (t == GgufType::kF64) v.floats.push_back(c.read<double>("an f64 value"));
  else if (is_integer(t)) v.ints.push_back(read_int(c, t, "an integer value"));
  else fail("{}: key '{}' has unknown value type {}", path, key, static_cast<uint32_t>(t));
}

GgufValue read_value(Cursor& c, const std::string& key, const std::string& path) {
  GgufValue v;
  v.type = static_cast<GgufType>(c.read<uint32_t>("a value type"));
  if (v.type != GgufType::kArray) {
    append_value(v, c, v.type, key, path);
    return v;
  }
  v.element_type = static_cast<GgufType>(c.read<uint32_t>("an array element type"));
  if (v.element_type == GgufType::kArray)
    fail("{}: key '{}' is an array of arrays, which loom does not read", path, key);
  if (v.element_type != GgufType::kString && !is_integer(v.element_type) && !is_float(v.element_type))
    fail("{}: key '{}' has unknown array element type {}", path, key, static_cast<uint32_t>(v.element_type));
  const uint64_t n = c.read<uint64_t>("an array length");
  // Every element takes at least one byte (a string at least its 8-byte length).
  const uint64_t min_size = v.element_type == GgufType::kString ? 8 : scalar_size(v.element_type);
  if (n > c.remaining() / min_size)
    fail("{}: truncated GGUF file: array '{}' claims {} elements, more than the {} bytes left hold", path, key, n,
         c.remaining());
  for (uint64_t i = 0; i < n; ++i) append_value(v, c, v.element_type, key, path);
  return v;
}

void write_raw(std::string& out, const void* p, size_t n) { out.append(static_cast<const char*>(p), n); }
template <class T>
void write_le(std::string& out, T v) {
  write_raw(out, &v, sizeof(T));
}
void write_string(std::string& out, const std::string& s) {
  write_le<uint64_t>(out, s.size());
  out += s;
}

void write_scalar(std::string& out, GgufType t, const GgufValue& v, size_t i) {
  switch (t) {
    case GgufType::kU8: write_le<uint8_t>(out, static_cast<uint8_t>(v.ints[i])); break;
    case GgufType::kI8: write_le<int8_t>(out, static_cast<int8_t>(v.ints[i])); break;
    case GgufType::kU16: write_le<uint16_t>(out, static_cast<uint16_t>(v.ints[i])); break;
    case GgufType::kI16: write_le<int16_t>(out, static_cast<int16_t>(v.ints[i])); break;
    case GgufType::kU32: write_le<uint32_t>(out, static_cast<uint32_t>(v.ints[i])); break;
    case GgufType::kI32: write_le<int32_t>(out, static_cast<int32_t>(v.ints[i])); break;
    case GgufType::kU64: write_le<uint64_t>(out, static_cast<uint64_t>(v.ints[i])); break;
    case GgufType::kI64: write_le<int64_t>(out, v.ints[i]); break;
    case GgufType::kBool: write_le<uint8_t>(out, v.ints[i] != 0); break;
    case GgufType::kF32: write_le<float>(out, static_cast<float>(v.floats[i])); break;
    case GgufType::kF64: write_le<double>(out, v.floats[i]); break;
    case GgufType::kString: write_string(out, v.strings[i]); break;
    case GgufType::kArray: fail("GGUF: nested arrays are not supported");
  }
}

uint64_t align_up(uint64_t n, uint64_t alignment) { return (n + alignment - 1) / alignment * alignment; }

// --- block codecs (ggml-quants.c reference versions) ---
constexpr int64_t kQK = 32;  // weights per Q4_0/Q4_1/Q8_0 block
constexpr int64_t kQK_K = 256;

#pragma pack(push, 1)
struct BlockQ4_1 {
  uint16_t d, m;
  uint8_t qs[kQK / 2];
};
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];      // low 4 bits
  uint8_t qh[kQK_K / 4];      // high 2 bits
  int8_t scales[kQK_K / 16];  // one per 16 weights
  uint16_t d;
};
#pragma pack(pop)
static_assert(sizeof(BlockQ4_1) == 20 && sizeof(BlockQ6_K) == 210);
// Q8_0 and Q4_0 (blocks, quantizers, fp16) are io/ggml_blocks.h's, which the matrix kernels share.
using ggml::BlockQ4_0;
using ggml::BlockQ8_0;
using ggml::dequantize_q4_0;
using ggml::dequantize_q8_0;
using ggml::quantize_q4_0;
using ggml::quantize_q8_0;

void quantize_q4_1(const float* x, int64_t n, BlockQ4_1* y) {
  for (int64_t b = 0; b < n / kQK; ++b, x += kQK) {
    float min = x[0], max = x[0];
    for (int j = 1; j < kQK; ++j) min = std::min(min, x[j]), max = std::max(max, x[j]);
    const float d = (max - min) / 15.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    y[b].m = fp32_to_fp16(min);
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = std::min(15, static_cast<int>(static_cast<int8_t>((x[j] - min) * id + 0.5f)));
      const int hi = std::min(15, static_cast<int>(static_cast<int8_t>((x[j + kQK / 2] - min) * id + 0.5f)));
      y[b].qs[j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

void dequantize_q4_1(const BlockQ4_1* x, int64_t n, float* y) {
  for (int64_t b = 0; b < n / kQK; ++b, y += kQK) {
    const float d = fp16_to_fp32(x[b].d), m = fp16_to_fp32(x[b].m);
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = static_cast<float>(x[b].qs[j] & 0x0F) * d + m;
      y[j + kQK / 2] = static_cast<float>(x[b].qs[j] >> 4) * d + m;
    }
  }
}

// 256 weights in two halves of 128; each half: 4 groups of 32 whose 6-bit q = 4 low bits (ql) +
// 2 high bits (qh), minus 32, times d * the scale of its 16 weights.
void dequantize_q6_k(const BlockQ6_K* x, int64_t n, float* y) {
  for (int64_t b = 0; b < n / kQK_K; ++b) {
    const float d = fp16_to_fp32(x[b].d);
    const uint8_t* ql = x[b].ql;
    const uint8_t* qh = x[b].qh;
    const int8_t* sc = x[b].scales;
    for (int half = 0; half < 2; ++half, y += 128, ql += 64, qh += 32, sc += 8) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = static_cast<int8_t>((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = static_cast<int8_t>((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = static_cast<int8_t>((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = static_cast<int8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * sc[is + 0] * q1;
        y[l + 32] = d * sc[is + 2] * q2;
        y[l + 64] = d * sc[is + 4] * q3;
        y[l + 96] = d * sc[is + 6] * q4;
      }
    }
  }
}

const std::vector<std::pair<GgmlType, GgmlTypeInfo>>& type_table() {
  static const std::vector<std::pair<GgmlType, GgmlTypeInfo>> table = {
      {GgmlType::kF32, {"F32", 1, 4, true}},        {GgmlType::kF16, {"F16", 1, 2, true}},
      {GgmlType::kQ4_0, {"Q4_0", 32, 18, true}},    {GgmlType::kQ4_1, {"Q4_1", 32, 20, true}},
      {GgmlType::kQ5_0, {"Q5_0", 32, 22, false}},   {GgmlType::kQ5_1, {"Q5_1", 32, 24, false}},
      {GgmlType::kQ8_0, {"Q8_0", 32, 34, true}},    {GgmlType::kQ8_1, {"Q8_1", 32, 36, false}},
      {GgmlType::kQ2_K, {"Q2_K", 256, 84, false}},  {GgmlType::kQ3_K, {"Q3_K", 256, 110, false}},
      {GgmlType::kQ4_K, {"Q4_K", 256, 144, false}}, {GgmlType::kQ5_K, {"Q5_K", 256, 176, false}},
      {GgmlType::kQ6_K, {"Q6_K", 256, 210, true}},  {GgmlType::kQ8_K, {"Q8_K", 256, 292, false}},
      {GgmlType::kI8, {"I8", 1, 1, false}},         {GgmlType::kI16, {"I16", 1, 2, false}},
      {GgmlType::kI32, {"I32", 1, 4, false}},       {GgmlType::kI64, {"I64", 1, 8, false}},
      {GgmlType::kF64, {"F64", 1, 8, false}},       {GgmlType::kBF16, {"BF16", 1, 2, true}},
  };
  return table;
}

const GgmlTypeInfo* find_type(GgmlType type) {
  for (const auto& [t, info] : type_table())
    if (t == type) return &info;
  return nullptr;
}

}  // namespace

const char* gguf_type_name(GgufType type) {
  static const char* names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                "bool", "string", "array", "u64", "i64", "f64"};
  const auto i = static_cast<uint32_t>(type);
  return i < 13 ? names[i] : "unknown";
}

GgufValue GgufValue::scalar_int(GgufType type, int64_t v) {
  GgufValue out;
  out.type = type;
  out.ints = {v};
  return out;
}
GgufValue GgufValue::scalar_float(GgufType type, double v) {
  GgufValue out;
  out.type = type;
  out.floats = {v};
  return out;
}
GgufValue GgufValue::string(std::string v) {
  GgufValue out;
  out.type = GgufType::kString;
  out.strings = {std::move(v)};
  return out;
}
GgufValue GgufValue::int_array(GgufType element_type, std::vector<int64_t> v) {
  GgufValue out;
  out.type = GgufType::kArray;
  out.element_type = element_type;
  out.ints = std::move(v);
  return out;
}
GgufValue GgufValue::float_array(GgufType element_type, std::vector<double> v) {
  GgufValue out;
  out.type = GgufType::kArray;
  out.element_type = element_type;
  out.floats = std::move(v);
  return out;
}
GgufValue GgufValue::string_array(std::vector<std::string> v) {
  GgufValue out;
  out.type = GgufType::kArray;
  out.element_type = GgufType::kString;
  out.strings = std::move(v);
  return out;
}

size_t GgufValue::size() const {
  const GgufType t = value_type();
  if (t == GgufType::kString) return strings.size();
  if (is_float(t)) return floats.size();
  return ints.size();
}

int64_t GgufValue::as_int(const std::string& key) const {
  if (is_array() || !is_integer(type) || ints.size() != 1)
    fail("GGUF key '{}' is a {}, not an integer", key, gguf_type_name(type));
  return ints[0];
}
double GgufValue::as_float(const std::string& key) const {
  if (!is_array() && is_float(type) && floats.size() == 1) return floats[0];
  if (!is_array() && is_integer(type) && ints.size() == 1) return static_cast<double>(ints[0]);
  fail("GGUF key '{}' is a {}, not a number", key, gguf_type_name(type));
}
const std::string& GgufValue::as_string(const std::string& key) const {
  if (type != GgufType::kString || strings.size() != 1)
    fail("GGUF key '{}' is a {}, not a string", key, gguf_type_name(type));
  return strings[0];
}

const GgmlTypeInfo& ggml_type_info(GgmlType type) {
  const GgmlTypeInfo* info = find_type(type);
  if (!info) fail("unknown ggml tensor type {}", static_cast<uint32_t>(type));
  return *info;
}

GgmlType ggml_type_from_name(const std::string& name) {
  std::string upper = name;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (const auto& [t, info] : type_table())
    if (upper == info.name) return t;
  fail("unknown ggml type '{}' (loom writes f32, f16, bf16, q8_0, q4_0, q4_1)", name);
}

uint64_t ggml_nbytes(GgmlType type, int64_t n) {
  const GgmlTypeInfo& info = ggml_type_info(type);
  if (n < 0 || n % info.block_size != 0)
    fail("{} weights are not a whole number of {} blocks of {}", n, info.name, info.block_size);
  return static_cast<uint64_t>(n / info.block_size) * static_cast<uint64_t>(info.type_size);
}

uint16_t fp32_to_fp16(float f) { return ggml::fp32_to_fp16(f); }
float fp16_to_fp32(uint16_t h) { return ggml::fp16_to_fp32(h); }

std::string ggml_quantize(GgmlType type, const float* x, int64_t n) {
  std::string out(ggml_nbytes(type, n), '\0');
  char* p = out.data();
  switch (type) {
    case GgmlType::kF32: std::memcpy(p, x, n * sizeof(float)); break;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = fp32_to_fp16(x[i]);
        std::memcpy(p + 2 * i, &h, 2);
      }
      break;
    case GgmlType::kBF16:  // round to nearest even, NaN kept quiet (ggml_compute_fp32_to_bf16)
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t u = ggml::float_bits(x[i]);
        const uint16_t h = (u & 0x7fffffff) > 0x7f800000
                               ? static_cast<uint16_t>((u >> 16) | 64)
                               : static_cast<uint16_t>((u + (0x7fff + ((u >> 16) & 1))) >> 16);
        std::memcpy(p + 2 * i, &h, 2);
      }
      break;
    case GgmlType::kQ8_0: quantize_q8_0(x, n, reinterpret_cast<BlockQ8_0*>(p)); break;
    case GgmlType::kQ4_0: quantize_q4_0(x, n, reinterpret_cast<BlockQ4_0*>(p)); break;
    case GgmlType::kQ4_1: quantize_q4_1(x, n, reinterpret_cast<BlockQ4_1*>(p)); break;
    default: fail("loom cannot encode ggml type {}", ggml_type_info(type).name);
  }
  return out;
}

void ggml_dequantize(GgmlType type, const void* data, int64_t n, float* out) {
  ggml_nbytes(type, n);  // checks n against the block size
  const auto* p = static_cast<const char*>(data);
  switch (type) {
    case GgmlType::kF32: std::memcpy(out, p, n * sizeof(float)); break;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = fp16_to_fp32(h);
      }
      break;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = ggml::bits_float(static_cast<uint32_t>(h) << 16);
      }
      break;
    case GgmlType::kQ8_0: dequantize_q8_0(reinterpret_cast<const BlockQ8_0*>(p), n, out); break;
    case GgmlType::kQ4_0: dequantize_q4_0(reinterpret_cast<const BlockQ4_0*>(p), n, out); break;
    case GgmlType::kQ4_1: dequantize_q4_1(reinterpret_cast<const BlockQ4_1*>(p), n, out); break;
    case GgmlType::kQ6_K: dequantize_q6_k(reinterpret_cast<const BlockQ6_K*>(p), n, out); break;
    default:
      fail("loom cannot decode ggml type {} (it reads F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q6_K)",
           ggml_type_info(type).name);
  }
}

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

const GgufValue* GgufFile::find(const std::string& key) const {
  for (const auto& [k, v] : metadata)
    if (k == key) return &v;
  return nullptr;
}

const GgufValue& GgufFile::get(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail("{}: GGUF metadata has no key '{}'", path, key);
  return *v;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

std::vector<float> GgufFile::dequantize(const GgufTensorInfo& t) const {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  try {
    ggml_dequantize(t.type, data(t), t.numel(), out.data());
  } catch (const Error& e) {
    fail("{}: tensor '{}': {}", path, t.name, e.what());
  }
  return out;
}

GgufFile read_gguf(const std::string& path) { return parse_gguf(read_file(path), path); }

GgufFile parse_gguf(std::string bytes, const std::string& path) {
  GgufFile file;
  file.path = path;
  file.bytes = std::move(bytes);
  Cursor c(file.bytes, path);
  if (file.bytes.size() < 4 || std::memcmp(file.bytes.data(), kMagic, 4) != 0)
    fail("{}: not a GGUF file (it does not start with \"GGUF\")", path);
  c.read<uint32_t>("the magic");
  file.version = c.read<uint32_t>("the version");
  if (file.version != 2 && file.version != 3)
    fail("{}: GGUF version {} is not supported (loom reads versions 2 and 3)", path, file.version);
  const uint64_t n_tensors = c.read<uint64_t>("the tensor count");
  const uint64_t n_kv = c.read<uint64_t>("the key/value count");
  // A key/value takes at least 8 + 4 + 1 bytes, a tensor info at least 8 + 4 + 4 + 8.
  if (n_kv > c.remaining() / 13 || n_tensors > c.remaining() / 24)
    fail("{}: truncated or corrupt GGUF file: {} keys and {} tensors cannot fit in {} bytes", path, n_kv, n_tensors,
         file.bytes.size());
  std::set<std::string> keys;
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.read_string("a metadata key");
    if (!keys.insert(key).second) fail("{}: duplicate GGUF key '{}'", path, key);
    GgufValue value = read_value(c, key, path);
    file.metadata.emplace_back(std::move(key), std::move(value));
  }
  if (const GgufValue* a = file.find("general.alignment")) {
    if (a->type != GgufType::kU32) fail("{}: general.alignment is a {}, not a u32", path, gguf_type_name(a->type));
    file.alignment = static_cast<uint64_t>(a->ints[0]);
    if (file.alignment == 0 || (file.alignment & (file.alignment - 1)) != 0)
      fail("{}: general.alignment {} is not a power of two", path, file.alignment);
  }
  std::set<std::string> names;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = c.read_string("a tensor name");
    if (!names.insert(t.name).second) fail("{}: duplicate tensor '{}'", path, t.name);
    const uint32_t n_dims = c.read<uint32_t>("a tensor's dimension count");
    if (n_dims == 0 || n_dims > kMaxDims)
      fail("{}: tensor '{}' has {} dimensions (1 to {} allowed)", path, t.name, n_dims, kMaxDims);
    std::vector<int64_t> ne(n_dims);
    for (auto& d : ne) {
      const uint64_t v = c.read<uint64_t>("a tensor dimension");
      if (v == 0 || v > (uint64_t{1} << 40)) fail("{}: tensor '{}' has a dimension of {}", path, t.name, v);
      d = static_cast<int64_t>(v);
    }
    t.shape.assign(ne.rbegin(), ne.rend());
    const uint32_t type = c.read<uint32_t>("a tensor type");
    const GgmlTypeInfo* info = find_type(static_cast<GgmlType>(type));
    if (!info) fail("{}: tensor '{}' has unknown ggml type {}", path, t.name, type);
    t.type = static_cast<GgmlType>(type);
    if (ne[0] % info->block_size != 0)
      fail("{}: tensor '{}': row length {} is not a multiple of the {} block size {}", path, t.name, ne[0], info->name,
           info->block_size);
    int64_t numel = 1;
    for (int64_t d : ne) {
      if (numel > (int64_t{1} << 50) / d) fail("{}: tensor '{}' is impossibly large", path, t.name);
      numel *= d;
    }
    t.nbytes = ggml_nbytes(t.type, numel);
    t.offset = c.read<uint64_t>("a tensor offset");
    if (t.offset % file.alignment != 0)
      fail("{}: tensor '{}' offset {} is not a multiple of the alignment {}", path, t.name, t.offset, file.alignment);
    file.tensors.push_back(std::move(t));
  }
  file.data_offset = align_up(c.pos(), file.alignment);
  const uint64_t data_size = file.bytes.size() >= file.data_offset ? file.bytes.size() - file.data_offset : 0;
  // Tensors may be stored in any order; they must lie in the data section and not overlap.
  std::vector<std::pair<uint64_t, const GgufTensorInfo*>> by_offset;
  for (const auto& t : file.tensors) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      fail("{}: truncated GGUF file: tensor '{}' ({} bytes at data offset {}) ends past the {} bytes of data", path,
           t.name, t.nbytes, t.offset, data_size);
    by_offset.emplace_back(t.offset, &t);
  }
  std::sort(by_offset.begin(), by_offset.end());
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const auto* prev = by_offset[i - 1].second;
    if (prev->offset + prev->nbytes > by_offset[i].first)
      fail("{}: tensors '{}' and '{}' overlap", path, prev->name, by_offset[i].second->name);
  }
  return file;
}

void GgufWriter::add(const std::string& key, GgufValue value) {
  for (const auto& [k, v] : metadata_)
    if (k == key) fail("GGUF writer: duplicate key '{}'", key);
  if (key == "general.alignment") {
    if (value.type != GgufType::kU32 || value.ints.size() != 1 || value.ints[0] <= 0 ||
        (value.ints[0] & (value.ints[0] - 1)) != 0)
      fail("GGUF writer: general.alignment must be a u32 power of two");
  }
  if (value.is_array() && value.element_type == GgufType::kArray) fail("GGUF writer: key '{}': nested arrays", key);
  metadata_.emplace_back(key, std::move(value));
}

void GgufWriter::add_tensor(const std::string& name, std::vector<int64_t> shape, GgmlType type, std::string data) {
  for (const auto& t : tensors_)
    if (t.name == name) fail("GGUF writer: duplicate tensor '{}'", name);
  if (shape.empty() || shape.size() > kMaxDims) fail("GGUF writer: tensor '{}' has {} dimensions", name, shape.size());
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  const GgmlTypeInfo& info = ggml_type_info(type);
  if (shape.back() % info.block_size != 0)
    fail("GGUF writer: tensor '{}': row length {} is not a multiple of the {} block size {}", name, shape.back(),
         info.name, info.block_size);
  if (data.size() != ggml_nbytes(type, numel))
    fail("GGUF writer: tensor '{}' has {} bytes, its shape and type need {}", name, data.size(),
         ggml_nbytes(type, numel));
  tensors_.push_back({name, std::move(shape), type, std::move(data)});
}

uint64_t GgufWriter::alignment() const {
  for (const auto& [k, v] : metadata_)
    if (k == "general.alignment") return static_cast<uint64_t>(v.ints[0]);
  return kDefaultAlignment;
}

std::string GgufWriter::serialize() const {
  const uint64_t align = alignment();
  std::string out;
  out.append(kMagic, 4);
  write_le<uint32_t>(out, 3);
  write_le<uint64_t>(out, tensors_.size());
  write_le<uint64_t>(out, metadata_.size());
  for (const auto& [key, v] : metadata_) {
    write_string(out, key);
    write_le<uint32_t>(out, static_cast<uint32_t>(v.type));
    if (!v.is_array()) {
      write_scalar(out, v.type, v, 0);
      continue;
    }
    write_le<uint32_t>(out, static_cast<uint32_t>(v.element_type));
    write_le<uint64_t>(out, v.size());
    for (size_t i = 0; i < v.size(); ++i) write_scalar(out, v.element_type, v, i);
  }
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    write_string(out, t.name);
    write_le<uint32_t>(out, static_cast<uint32_t>(t.shape.size()));
    for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) write_le<uint64_t>(out, static_cast<uint64_t>(*it));
    write_le<uint32_t>(out, static_cast<uint32_t>(t.type));
    write_le<uint64_t>(out, offset);
    offset = align_up(offset + t.data.size(), align);
  }
  out.resize(align_up(out.size(), align), '\0');
  for (const auto& t : tensors_) {
    out += t.data;
    out.resize(align_up(out.size(), align), '\0');
  }
  return out;
}

void GgufWriter::write(const std::string& path) const { write_file_atomic(path, serialize()); }

}  // namespace loom

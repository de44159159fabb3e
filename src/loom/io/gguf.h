// GGUF (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), llama.cpp's model file, and
// the ggml block codecs loom reads and writes. No torch here: values, tensor infos and float
// buffers.
//
// Layout (little-endian; version 3, version 2 is the same layout):
//   "GGUF", u32 version, u64 n_tensors, u64 n_kv,
//   n_kv x (string key, u32 value type, value)      string = u64 length + bytes (no NUL)
//                                                   array  = u32 element type + u64 count + elements
//   n_tensors x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset)
//   zero padding to general.alignment (default 32), then the tensor data; each offset is relative
//   to the data start, a multiple of the alignment, and the tensors follow one another in order.
// ne[] is the PyTorch shape reversed (ne[0] is the row length, the contiguous dimension); the
// structs below hold the PyTorch order.
//
// Block codecs: a row is a sequence of blocks of 32 weights (ggml-quants.c, reference versions):
//   Q8_0  fp16 d, 32 x int8 q                  x = d * q            d = amax / 127
//   Q4_0  fp16 d, 16 bytes of nibbles          x = d * (q - 8)      d = (signed max-magnitude) / -8
//   Q4_1  fp16 d, fp16 m, 16 bytes of nibbles  x = d * q + m        d = (max - min) / 15, m = min
// with element j in the low nibble of byte j and element j + 16 in its high nibble.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace loom {

// GGUF metadata value types (their numeric codes are the file format).
enum class GgufType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};
const char* gguf_type_name(GgufType type);

// One metadata value: a scalar, or an array of scalars (nested arrays are rejected on read).
// Integers are held as int64 (u64 bit-cast), floats as double, bools as 0/1; the declared type
// is what the writer emits, so an f32 stays an f32.
struct GgufValue {
  GgufType type = GgufType::kU32;
  GgufType element_type = GgufType::kU8;  // arrays only
  std::vector<int64_t> ints;              // integer and bool values (one for a scalar)
  std::vector<double> floats;             // f32 and f64 values
  std::vector<std::string> strings;       // string values

  static GgufValue scalar_int(GgufType type, int64_t v);
  static GgufValue scalar_float(GgufType type, double v);
  static GgufValue u32(uint32_t v) { return scalar_int(GgufType::kU32, v); }
  static GgufValue i32(int32_t v) { return scalar_int(GgufType::kI32, v); }
  static GgufValue u64(uint64_t v) { return scalar_int(GgufType::kU64, static_cast<int64_t>(v)); }
  static GgufValue f32(float v) { return scalar_float(GgufType::kF32, v); }
  static GgufValue boolean(bool v) { return scalar_int(GgufType::kBool, v); }
  static GgufValue string(std::string v);
  static GgufValue int_array(GgufType element_type, std::vector<int64_t> v);
  static GgufValue float_array(GgufType element_type, std::vector<double> v);
  static GgufValue string_array(std::vector<std::string> v);

  bool is_array() const { return type == GgufType::kArray; }
  GgufType value_type() const { return is_array() ? element_type : type; }  // of the elements
  size_t size() const;                                                      // elements (1 for a scalar)
  // Scalar accessors; loom::Error naming `key` if the value is not of that kind.
  int64_t as_int(const std::string& key) const;
  double as_float(const std::string& key) const;  // integers convert
  const std::string& as_string(const std::string& key) const;
};

// ggml tensor types (numeric codes are the file format) with their block layouts.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kBF16 = 30,
};
struct GgmlTypeInfo {
  const char* name;    // "Q4_0", as llama.cpp spells it
  int64_t block_size;  // weights per block
  int64_t type_size;   // bytes per block
  bool dequantizable;  // loom can turn it into floats
};
// loom::Error for a code ggml does not define (or loom does not know).
const GgmlTypeInfo& ggml_type_info(GgmlType type);
// By name, case-insensitive ("q8_0"); loom::Error listing the ones loom writes otherwise.
GgmlType ggml_type_from_name(const std::string& name);
// Bytes of `n` weights; loom::Error unless n is a multiple of the block size.
uint64_t ggml_nbytes(GgmlType type, int64_t n);

// IEEE fp16 conversion with round-to-nearest-even (as numpy's astype(float16) and ggml).
uint16_t fp32_to_fp16(float x);
float fp16_to_fp32(uint16_t h);

// Encodes n floats (n a multiple of the block size) as `type`: F32, F16, BF16, Q8_0, Q4_0, Q4_1,
// bit-identical to ggml's reference quantizers (and gguf-py's numpy ones).
std::string ggml_quantize(GgmlType type, const float* x, int64_t n);
// Decodes n weights of `type` from `data` (ggml_nbytes(type, n) bytes) into out[0..n).
void ggml_dequantize(GgmlType type, const void* data, int64_t n, float* out);

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> shape;  // PyTorch order: ne[] reversed
  GgmlType type = GgmlType::kF32;
  uint64_t offset = 0;  // from the start of the data section
  uint64_t nbytes = 0;
  int64_t numel() const;
};

// A parsed GGUF file; the whole file is held in memory (`bytes`), tensor data is read from it.
struct GgufFile {
  std::string path;
  uint32_t version = 3;
  uint64_t alignment = 32;
  std::vector<std::pair<std::string, GgufValue>> metadata;  // file order
  std::vector<GgufTensorInfo> tensors;                      // file order
  uint64_t data_offset = 0;                                 // where the data section starts in `bytes`
  std::string bytes;

  const GgufValue* find(const std::string& key) const;  // nullptr if absent
  const GgufValue& get(const std::string& key) const;   // loom::Error naming the file if absent
  const GgufTensorInfo* find_tensor(const std::string& name) const;
  const char* data(const GgufTensorInfo& t) const { return bytes.data() + data_offset + t.offset; }
  // The tensor's weights as floats (numel of them); loom::Error for types loom cannot decode.
  std::vector<float> dequantize(const GgufTensorInfo& t) const;
};

// Reads and validates the whole file: magic, version, every length and count against the file
// size, value and tensor types, n_dims <= 4, offsets aligned, in range and not overlapping.
// Every problem is one loom::Error line naming the path.
GgufFile read_gguf(const std::string& path);
GgufFile parse_gguf(std::string bytes, const std::string& path);

// Builds a GGUF file in memory: metadata in insertion order (general.alignment, if set, must be
// a u32 power of two), tensors in insertion order with sequential aligned offsets.
class GgufWriter {
 public:
  void add(const std::string& key, GgufValue value);  // loom::Error on a duplicate key
  // `data` holds ggml_nbytes(type, numel(shape)) bytes already encoded (see ggml_quantize).
  void add_tensor(const std::string& name, std::vector<int64_t> shape, GgmlType type, std::string data);
  std::string serialize() const;
  void write(const std::string& path) const;  // atomically

 private:
  uint64_t alignment() const;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  struct Tensor {
    std::string name;
    std::vector<int64_t> shape;
    GgmlType type;
    std::string data;
  };
  std::vector<Tensor> tensors_;
};

}  // namespace loom

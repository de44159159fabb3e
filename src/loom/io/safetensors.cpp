// safetensors reader and writer; see safetensors.h for the layout. The loader trusts nothing in
// the file: every field is type-checked and the tensors must tile the data section exactly.
#include "loom/io/safetensors.h"

#include <cstring>
#include <set>
#include <string_view>
#include <tuple>

#include <nlohmann/json.hpp>

#include "loom/core/error.h"
#include "loom/io/fs.h"

// The format is little-endian and we copy raw bytes.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "loom's safetensors io assumes a little-endian host");

namespace loom {
namespace {

using Json = nlohmann::ordered_json;  // keeps the header's tensor order

constexpr uint64_t kMaxHeaderBytes = 100u << 20;  // 100 MB: anything larger is corruption

struct Dtype {
  const char* name;
  torch::ScalarType type;
  uint64_t size;
};

constexpr Dtype kDtypes[] = {
    {"F64", torch::kFloat64, 8},   {"F32", torch::kFloat32, 4}, {"F16", torch::kFloat16, 2},
    {"BF16", torch::kBFloat16, 2}, {"I64", torch::kInt64, 8},   {"I32", torch::kInt32, 4},
    {"I16", torch::kInt16, 2},     {"I8", torch::kInt8, 1},     {"U8", torch::kUInt8, 1},
    {"BOOL", torch::kBool, 1},
};

const Dtype* find_dtype(std::string_view name) {
  for (const Dtype& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

const Dtype* find_dtype(torch::ScalarType type) {
  for (const Dtype& d : kDtypes)
    if (type == d.type) return &d;
  return nullptr;
}

std::string shape_str(c10::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// A name as a JSON string literal: quoted, control characters escaped, so errors stay one line.
std::string quote_name(const std::string& name) {
  return Json(name).dump(-1, ' ', false, Json::error_handler_t::replace);
}

template <class... Args>
[[noreturn]] void corrupt(const std::string& path, fmt::format_string<Args...> format, Args&&... args) {
  fail("bad safetensors file {}: {}", path, fmt::format(format, std::forward<Args>(args)...));
}

// One tensor's header entry, validated.
struct Entry {
  std::string name;
  const Dtype* dtype;
  std::vector<int64_t> shape;
  uint64_t begin, end;
};

Entry parse_entry(const std::string& path, const std::string& name, const Json& info) {
  const std::string q = quote_name(name);
  if (!info.is_object()) corrupt(path, "tensor {}: entry is not a JSON object", q);
  for (const auto& item : info.items())
    if (item.key() != "dtype" && item.key() != "shape" && item.key() != "data_offsets")
      corrupt(path, "tensor {}: unexpected field {}", q, quote_name(item.key()));
  if (!info.contains("dtype") || !info["dtype"].is_string())
    corrupt(path, "tensor {}: missing or non-string field \"dtype\"", q);
  if (!info.contains("shape") || !info["shape"].is_array())
    corrupt(path, "tensor {}: missing or non-array field \"shape\"", q);
  const Json& offsets = info.contains("data_offsets") ? info["data_offsets"] : Json();
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned())
    corrupt(path, "tensor {}: field \"data_offsets\" must be two non-negative integers", q);

  Entry entry{name, find_dtype(info["dtype"].get<std::string>()), {}, 0, 0};
  if (!entry.dtype) corrupt(path, "tensor {}: unknown dtype {}", q, quote_name(info["dtype"].get<std::string>()));
  uint64_t numel = 1;
  for (const Json& dim : info["shape"]) {
    if (!dim.is_number_unsigned() || dim.get<uint64_t>() > uint64_t(INT64_MAX))
      corrupt(path, "tensor {}: shape entries must be non-negative integers", q);
    if (__builtin_mul_overflow(numel, dim.get<uint64_t>(), &numel)) corrupt(path, "tensor {}: shape overflows", q);
    entry.shape.push_back(dim.get<int64_t>());
  }
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, entry.dtype->size, &nbytes)) corrupt(path, "tensor {}: shape overflows", q);
  entry.begin = offsets[0].get<uint64_t>();
  entry.end = offsets[1].get<uint64_t>();
  if (entry.end < entry.begin)
    corrupt(path, "tensor {}: data_offsets [{}, {}] are reversed", q, entry.begin, entry.end);
  if (entry.end - entry.begin != nbytes)
    corrupt(path, "tensor {}: size mismatch: {} {} needs {} bytes but data_offsets [{}, {}] span {}", q,
            entry.dtype->name, shape_str(entry.shape), nbytes, entry.begin, entry.end, entry.end - entry.begin);
  return entry;
}

// Parses the header, rejecting duplicate keys (nlohmann would silently keep the last one).
Json parse_header(const std::string& path, std::string_view text) {
  std::vector<std::set<std::string>> keys_per_object;
  std::string duplicate;
  auto on_event = [&](int, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::object_start) keys_per_object.emplace_back();
    if (event == Json::parse_event_t::object_end) keys_per_object.pop_back();
    if (event == Json::parse_event_t::key && !keys_per_object.back().insert(parsed.get<std::string>()).second &&
        duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  Json header;
  try {
    header = Json::parse(text.begin(), text.end(), on_event);
  } catch (const Json::parse_error& e) {
    corrupt(path, "invalid JSON in header at byte {}", e.byte);
  } catch (const Json::exception& e) {  // found by fuzzing: a number too large ("2e5408") is out_of_range
    corrupt(path, "invalid JSON in header ({})", e.what());
  }
  if (!duplicate.empty()) corrupt(path, "duplicate key {} in header", quote_name(duplicate));
  if (!header.is_object()) corrupt(path, "header is not a JSON object");
  return header;
}

}  // namespace

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  Json header = Json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> cpu_tensors;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name.empty() || name == "__metadata__") fail("cannot save {}: invalid tensor name {}", path, quote_name(name));
    if (!names.insert(name).second) fail("cannot save {}: duplicate tensor name {}", path, quote_name(name));
    if (!tensor.defined()) fail("cannot save {}: tensor {} is undefined", path, quote_name(name));
    const Dtype* dtype = find_dtype(tensor.scalar_type());
    if (!dtype)
      fail("cannot save {}: tensor {} has unsupported dtype {}", path, quote_name(name),
           c10::toString(tensor.scalar_type()));
    torch::Tensor t = tensor.detach().to(torch::kCPU).contiguous();
    const uint64_t nbytes = uint64_t(t.numel()) * dtype->size;
    header[name] = {{"dtype", dtype->name}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    cpu_tensors.push_back(std::move(t));
  }
  std::string json;
  try {
    json = header.dump();
  } catch (const Json::type_error&) {
    fail("cannot save {}: a tensor name or metadata string is not valid UTF-8", path);
  }
  json.append((8 - json.size() % 8) % 8, ' ');  // data starts 8-byte aligned (8 + N ≡ 0 mod 8)
  std::string bytes;
  bytes.reserve(8 + json.size() + offset);
  const uint64_t header_len = json.size();
  bytes.append(reinterpret_cast<const char*>(&header_len), 8);
  bytes += json;
  for (const torch::Tensor& t : cpu_tensors)
    if (t.numel() > 0) bytes.append(static_cast<const char*>(t.data_ptr()), t.nbytes());
  write_file_atomic(path, bytes);
}

Safetensors load_safetensors(const std::string& path) {
  const std::string bytes = read_file(path);
  if (bytes.size() < 8) corrupt(path, "truncated: {} bytes, shorter than the 8-byte header length", bytes.size());
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  if (header_len > kMaxHeaderBytes)
    corrupt(path, "header length {} is absurd (limit {} bytes)", header_len, kMaxHeaderBytes);
  if (header_len > bytes.size() - 8)
    corrupt(path, "truncated: header length {} exceeds the {} bytes after it", header_len, bytes.size() - 8);
  const Json header = parse_header(path, std::string_view(bytes).substr(8, header_len));
  const char* data = bytes.data() + 8 + header_len;
  const uint64_t data_size = bytes.size() - 8 - header_len;

  Safetensors file;
  std::vector<Entry> entries;
  for (const auto& item : header.items()) {
    if (item.key() == "__metadata__") {
      if (!item.value().is_object()) corrupt(path, "\"__metadata__\" is not a JSON object");
      for (const auto& kv : item.value().items()) {
        if (!kv.value().is_string()) corrupt(path, "metadata value for {} is not a string", quote_name(kv.key()));
        file.metadata[kv.key()] = kv.value().get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(path, item.key(), item.value()));
    const Entry& e = entries.back();
    if (e.end > data_size)
      corrupt(path, "tensor {}: data_offsets [{}, {}] out of range: the data section has {} bytes (truncated?)",
              quote_name(e.name), e.begin, e.end, data_size);
  }

  // The tensors must tile [0, data_size) exactly: no overlap, no gap, no trailing bytes.
  std::vector<const Entry*> by_offset;
  for (const Entry& e : entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const Entry* a, const Entry* b) { return std::tie(a->begin, a->end) < std::tie(b->begin, b->end); });
  uint64_t expected = 0;
  for (const Entry* e : by_offset) {
    if (e->begin < expected)
      corrupt(path, "tensor {}: data_offsets [{}, {}] overlap the previous tensor (ends at {})", quote_name(e->name),
              e->begin, e->end, expected);
    if (e->begin > expected)
      corrupt(path, "tensor {}: data_offsets [{}, {}] leave a gap after byte {} (not contiguous)", quote_name(e->name),
              e->begin, e->end, expected);
    expected = e->end;
  }
  if (expected != data_size) corrupt(path, "{} trailing bytes after the last tensor", data_size - expected);

  for (const Entry& e : entries) {
    torch::Tensor t = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype->type));
    if (e.end > e.begin) std::memcpy(t.data_ptr(), data + e.begin, e.end - e.begin);
    if (e.dtype->type == torch::kBool && t.numel() > 0 && t.view(torch::kUInt8).gt(1).any().item<bool>())
      corrupt(path, "tensor {}: BOOL data holds bytes other than 0 and 1", quote_name(e.name));
    file.tensors.emplace_back(e.name, std::move(t));
  }
  return file;
}

NamedTensors module_state(const torch::nn::Module& module) {
  NamedTensors state;
  for (const auto& item : module.named_parameters(/*recurse=*/true))
    if (item.value().defined()) state.emplace_back(item.key(), item.value());
  for (const auto& item : module.named_buffers(/*recurse=*/true))
    if (item.value().defined()) state.emplace_back(item.key(), item.value());
  return state;
}

namespace {

// "a, b, c and 4 more": enough names to act on, short enough for one line.
std::string some_names(const std::vector<std::string>& names) {
  constexpr size_t kShown = 4;
  std::string s;
  for (size_t i = 0; i < names.size() && i < kShown; ++i) s += (i ? ", " : "") + names[i];
  if (names.size() > kShown) s += fmt::format(" and {} more", names.size() - kShown);
  return s;
}

}  // namespace

void load_module_state(torch::nn::Module& module, const Safetensors& file, const std::string& path) {
  std::map<std::string, const torch::Tensor*> in_file;
  for (const auto& [name, tensor] : file.tensors)
    if (!in_file.emplace(name, &tensor).second)
      fail("cannot load {} into the model: duplicate tensor {}", path, quote_name(name));
  const NamedTensors wanted = module_state(module);

  std::vector<std::string> missing, unexpected, mismatched;
  std::set<std::string> wanted_names;
  for (const auto& [name, target] : wanted) {
    wanted_names.insert(name);
    const auto it = in_file.find(name);
    if (it == in_file.end()) missing.push_back(name);
    else if (it->second->sizes() != target.sizes())
      mismatched.push_back(
          fmt::format("{} (model {}, file {})", name, shape_str(target.sizes()), shape_str(it->second->sizes())));
  }
  for (const auto& [name, tensor] : file.tensors)
    if (!wanted_names.count(name)) unexpected.push_back(name);

  std::vector<std::string> problems;
  if (!missing.empty())
    problems.push_back(fmt::format("{} missing tensor(s): {}", missing.size(), some_names(missing)));
  if (!unexpected.empty())
    problems.push_back(fmt::format("{} unexpected tensor(s): {}", unexpected.size(), some_names(unexpected)));
  if (!mismatched.empty()) problems.push_back(fmt::format("shape mismatch: {}", some_names(mismatched)));
  if (!problems.empty()) {
    std::string all;
    for (size_t i = 0; i < problems.size(); ++i) all += (i ? "; " : "") + problems[i];
    fail("cannot load {} into the model: {}", path, all);
  }

  torch::NoGradGuard no_grad;
  for (const auto& [name, target] : wanted) {
    torch::Tensor dst = target;  // shares storage with the module's tensor
    dst.copy_(*in_file.at(name));
  }
}

}  // namespace loom

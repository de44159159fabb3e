// The safetensors format (https://github.com/huggingface/safetensors): how loom stores weights.
// Layout: u64 little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"k": "v"}}
// padded with spaces so the data starts 8-byte aligned, then the raw little-endian tensor bytes,
// contiguous and in header order. Python's `safetensors.torch.load_file` reads what we write.
// Chosen over torch::save because it is readable from Python and the loader checks shapes
// (torch::load silently takes the file's shapes, see shared/LIBTORCH.md).
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

namespace loom {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;  // order preserved

struct Safetensors {
  NamedTensors tensors;  // in header order
  std::map<std::string, std::string> metadata;
};

// Writes atomically (write_file_atomic); tensors are detached, moved to CPU and made contiguous.
// dtypes: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Validates the whole file (header, dtypes, shapes, offsets, no gaps or trailing bytes) and
// throws a one-line loom::Error naming the file and the problem. Tensors own their memory.
Safetensors load_safetensors(const std::string& path);

// named_parameters() then named_buffers(), recursive, with torch's names
// (e.g. "blocks.0.attn.wq.weight"). The tensors alias the module's.
NamedTensors module_state(const torch::nn::Module& module);

// Copies every tensor of `file` into `module` (converting to the module's dtype), after checking
// that the names match exactly and the shapes agree; `path` only names the file in errors.
// Nothing is copied unless everything matches.
void load_module_state(torch::nn::Module& module, const Safetensors& file, const std::string& path);

}  // namespace loom

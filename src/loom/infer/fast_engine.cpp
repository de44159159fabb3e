#include "loom/infer/fast_engine.h"

#include <dlfcn.h>
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "loom/core/error.h"
#include "loom/infer/cpu_ops.h"
#include "loom/nn/blocks.h"
#include "loom/quant/kernels.h"

namespace loom {
namespace {

enum class Norm { kLayerNorm, kRmsNorm };
enum class Act { kRelu, kGelu, kSilu };
enum class Rope { kNone, kHalf, kAdjacent };

// y[r] = W[r, :] . x for rows [begin, end): one fp32 row at a time with 16 partial sums, compiled
// for AVX-512, AVX2 and baseline x86-64 and picked when the program loads.
__attribute__((target_clones("avx512f", "avx2,fma", "default"))) void matvec_f32(const float* w, const float* x,
                                                                                 int64_t cols, int64_t begin,
                                                                                 int64_t end, float* y) {
  for (int64_t r = begin; r < end; ++r) {
    const float* row = w + r * cols;
    float acc[16] = {};
    int64_t c = 0;
    for (; c + 16 <= cols; c += 16)
      for (int j = 0; j < 16; ++j) acc[j] += row[c + j] * x[c + j];
    float sum = 0;
    for (; c < cols; ++c) sum += row[c] * x[c];
    for (int j = 0; j < 16; ++j) sum += acc[j];
    y[r] = sum;
  }
}

// CBLAS's sgemm when the process has it (Debian's libtorch links OpenBLAS, which exports it),
// with OpenBLAS's threading turned off so that OpenMP's threads can each run one; null otherwise
// (then libtorch's mm does the work).
enum { kRowMajor = 101, kNoTrans = 111, kTrans = 112 };
using Sgemm = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
Sgemm cblas_sgemm() {
  static const Sgemm sgemm = [] {
    auto f = reinterpret_cast<Sgemm>(dlsym(RTLD_DEFAULT, "cblas_sgemm"));
    auto set_threads = reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    if (f == nullptr || set_threads == nullptr) return Sgemm{nullptr};
    set_threads(1);
    return f;
  }();
  return sgemm;
}

// Weights the engine streams every step, copied into one region backed by 2 MiB pages where the
// kernel allows (transparent huge pages in "madvise" mode, Debian's default): decoding reads every
// weight once per token, and on 4 KiB pages that is a TLB miss every 4 KiB.
class Arena {
 public:
  explicit Arena(int64_t bytes) : size_(round_up(std::max<int64_t>(bytes, 1), kHuge)) {
    void* p = nullptr;
    if (posix_memalign(&p, kHuge, static_cast<size_t>(size_)) != 0) throw std::bad_alloc();
    base_ = static_cast<uint8_t*>(p);
#ifdef MADV_HUGEPAGE
    madvise(base_, static_cast<size_t>(size_), MADV_HUGEPAGE);
#endif
  }
  ~Arena() { free(base_); }
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  static int64_t round_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }
  // A copy of t (contiguous) at the arena's next 64-byte boundary; the tensor keeps the arena alive.
  static torch::Tensor copy(const std::shared_ptr<Arena>& arena, const torch::Tensor& t) {
    const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
    if (arena->used_ + bytes > arena->size_) fail("internal: weight arena overflow");
    uint8_t* at = arena->base_ + arena->used_;
    std::memcpy(at, t.data_ptr(), static_cast<size_t>(bytes));
    arena->used_ = round_up(arena->used_ + bytes, 64);
    return torch::from_blob(
        at, t.sizes(), [arena](void*) {}, t.options());
  }
  static constexpr int64_t kHuge = int64_t{2} << 20;

 private:
  int64_t size_ = 0, used_ = 0;
  uint8_t* base_ = nullptr;
};

// A linear layer in the format it runs in: y[n, rows] = x[n, cols] W^T + bias.
struct Linear {
  std::string name;  // the weight's parameter name
  WeightFormat format = WeightFormat::kF32;
  int64_t rows = 0, cols = 0;
  torch::Tensor w;    // fp32 [rows, cols]
  QuantizedLinear q;  // int8 / q4_0
  const float* bias = nullptr;
  torch::Tensor bias_t;

  void apply(const float* x, int64_t n, float* y) const {
    switch (format) {
      case WeightFormat::kInt8:
        quant::linear_int8(x, n, cols, q.q.data_ptr<int8_t>(), q.scale.data_ptr<float>(), rows, y);
        break;
      case WeightFormat::kQ4_0:
        quant::linear_q4_0(x, n, cols, reinterpret_cast<const quant::BlockQ4_0*>(q.q.data_ptr<uint8_t>()), rows, y);
        break;
      default: {
        // One row: a matrix-vector product on OpenMP's threads, streaming W once (BLAS gemm
        // would first repack W; gemv runs on OpenBLAS's own threads, which then compete with
        // OpenMP's spinning ones).
        if (n == 1) {
          const float* wp = w.data_ptr<float>();
          constexpr int64_t kChunk = 64;
#pragma omp parallel for schedule(static) if (rows * cols >= (int64_t{1} << 16))
          for (int64_t r = 0; r < rows; r += kChunk) matvec_f32(wp, x, cols, r, std::min(rows, r + kChunk), y);
        } else if (const auto sgemm = cblas_sgemm()) {
          // Several rows: each OpenMP thread runs a single-threaded BLAS GEMM on its share of W's
          // rows (OpenBLAS's own threads would compete with OpenMP's spinning ones).
          const float* wp = w.data_ptr<float>();
#pragma omp parallel
          {
            const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
            const int64_t begin = rows * t / threads, end = rows * (t + 1) / threads;
            if (end > begin)  // y[:, begin:end] = x W[begin:end]^T, row-major, ldc = rows
              sgemm(kRowMajor, kNoTrans, kTrans, static_cast<int>(n), static_cast<int>(end - begin),
                    static_cast<int>(cols), 1.0f, x, static_cast<int>(cols), wp + begin * cols, static_cast<int>(cols),
                    0.0f, y + begin, static_cast<int>(rows));
          }
        } else {
          auto out = torch::from_blob(y, {n, rows});
          torch::mm_out(out, torch::from_blob(const_cast<float*>(x), {n, cols}), w.t());
        }
      }
    }
    if (bias != nullptr)
      for (int64_t i = 0; i < n; ++i)
        for (int64_t r = 0; r < rows; ++r) y[i * rows + r] += bias[r];
  }
};

struct NormWeights {
  const float* weight = nullptr;
  const float* bias = nullptr;  // layernorm with model.bias
};

struct Layer {
  NormWeights norm1, norm2;
  Linear qkv, out, ffn_in, ffn_out;
  int64_t window = 0;                       // 0: every earlier position
  int64_t heads = 0, kv_heads = 0, ff = 0;  // this layer's (model.layer_heads, model.layer_d_ff)
  // Per slot: keys and values [kv_heads, capacity, head_dim], capacity growing with the sequence.
  struct Cache {
    std::vector<float> k, v;
  };
  std::vector<Cache> cache;
};

float activate(Act act, float x) {
  switch (act) {
    case Act::kRelu: return x > 0 ? x : 0;
    case Act::kGelu: return 0.5f * x * (1.0f + std::erf(x * static_cast<float>(M_SQRT1_2)));
    default: return x / (1.0f + std::exp(-x));
  }
}

// f(r) for r in [0, n): on OpenMP's threads when the rows hold enough work (`width` floats each)
// to pay for a fork/join, on the calling thread otherwise (a decode step's one row).
template <class F>
void for_rows(int64_t n, int64_t width, F f) {
  if (n > 1 && n * width >= (int64_t{1} << 14) && omp_get_max_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; ++r) f(r);
  } else {
    for (int64_t r = 0; r < n; ++r) f(r);
  }
}

class FastEngine : public Engine {
 public:
  FastEngine(Model model, const std::map<std::string, QuantizedLinear>& quantized, const FastEngineOptions& options)
      : model_(std::move(model)), c_(model_->config()) {
    std::string why;
    if (!fast_engine_supports(c_, &why)) fail("the fast engine cannot run this model: {}", why);
    // The blocks it declares it runs (nn/ registrations with fast_engine(true)), by name; a name
    // declared but not implemented here is an error, which the parity sweep over every declared
    // block catches (tests/test_fast_engine.cpp).
    slots_ = options.engine.slots;
    context_ = options.engine.context > 0 ? options.engine.context : c_.max_seq_len;
    if (slots_ < 1) fail("an engine needs at least 1 slot, got {}", slots_);
    if (context_ > c_.max_seq_len)
      fail("an engine context of {} exceeds the model's max_seq_len of {}", context_, c_.max_seq_len);
    head_dim_ = c_.head_dim();
    auto unimplemented = [](const char* family, const std::string& name) {
      fail("internal: {} '{}' is declared to run on the fast engine, which does not implement it", family, name);
    };
    if (c_.norm == "rmsnorm") norm_ = Norm::kRmsNorm;
    else if (c_.norm == "layernorm") norm_ = Norm::kLayerNorm;
    else unimplemented("norm", c_.norm);
    if (c_.ffn == "relu" || c_.ffn == "gelu" || c_.ffn == "swiglu" || c_.ffn == "geglu") {
      gated_ = c_.ffn == "swiglu" || c_.ffn == "geglu";
      act_ = c_.ffn == "relu" ? Act::kRelu : (c_.ffn == "swiglu" ? Act::kSilu : Act::kGelu);
    } else {
      unimplemented("ffn", c_.ffn);
    }
    if (c_.position == "rope") rope_ = Rope::kHalf;
    else if (c_.position == "rope_adjacent") rope_ = Rope::kAdjacent;
    else if (c_.position != "learned" && c_.position != "sinusoidal" && c_.position != "none")
      unimplemented("position", c_.position);
    for (const auto& m : c_.layer_mixers())
      if (m != "attention" && m != "local_attention") unimplemented("mixer", m);

    torch::NoGradGuard no_grad;
    model_->eval();
    std::map<std::string, torch::Tensor> params;
    for (const auto& p : model_->named_parameters()) params[p.key()] = p.value().detach().contiguous();
    auto param = [&](const std::string& name) {
      auto it = params.find(name);
      if (it == params.end()) fail("the fast engine found no parameter '{}'", name);
      if (it->second.scalar_type() != torch::kFloat)
        fail("the fast engine needs fp32 weights; '{}' is {}", name, c10::toString(it->second.scalar_type()));
      return it->second;
    };
    auto optional = [&](const std::string& name) -> const float* {
      auto it = params.find(name);
      return it == params.end() ? nullptr : it->second.data_ptr<float>();
    };
    auto linear = [&](const std::string& prefix) {
      Linear l;
      l.name = prefix + ".weight";
      l.w = param(prefix + ".weight");
      l.rows = l.w.size(0), l.cols = l.w.size(1);
      if (params.count(prefix + ".bias")) l.bias_t = param(prefix + ".bias"), l.bias = l.bias_t.data_ptr<float>();
      const std::string name = prefix + ".weight";
      WeightFormat want = options.weights;
      auto stored = quantized.find(name);
      if (want == WeightFormat::kAsStored) {
        if (stored == quantized.end()) return l;
        l.q = stored->second;
        l.format = l.q.format == QuantFormat::kInt8 ? WeightFormat::kInt8 : WeightFormat::kQ4_0;
      } else if (want != WeightFormat::kF32) {
        const auto format = want == WeightFormat::kInt8 ? QuantFormat::kInt8 : QuantFormat::kQ4_0;
        if (!model_->is_quantizable(name) || !fits_format(l.w, format)) return l;
        l.q = quantize_rtn(l.w, format);
        l.format = want;
      }
      if (l.format != WeightFormat::kF32) use_quantized(l, l.q);
      return l;
    };
    auto norm = [&](const std::string& prefix) {
      return NormWeights{param(prefix + ".weight").data_ptr<float>(), optional(prefix + ".bias")};
    };
    embedding_ = param("tok_emb.weight");
    if (c_.position == "learned" || c_.position == "sinusoidal") {
      // Additive positions: the table is what the position module adds to zeros.
      positions_ = model_->pos->embed(torch::zeros({1, c_.max_seq_len, c_.d_model}), 0)[0].contiguous();
    }
    if (rope_ != Rope::kNone) {
      const int64_t half = head_dim_ / 2;
      auto inv_freq = torch::pow(c_.rope_theta, -torch::arange(0, half, torch::kDouble) / half);
      auto angles = torch::outer(torch::arange(c_.max_seq_len, torch::kDouble), inv_freq);
      cos_ = angles.cos().to(torch::kFloat).contiguous();
      sin_ = angles.sin().to(torch::kFloat).contiguous();
    }
    const auto mixers = c_.layer_mixers();
    for (int64_t i = 0; i < c_.n_layers; ++i) {
      const std::string p = "layers." + std::to_string(i);
      Layer layer;
      layer.norm1 = norm(p + ".norm1");
      layer.norm2 = norm(p + ".norm2");
      layer.qkv = linear(p + ".mixer.wqkv");
      layer.out = linear(p + ".mixer.wo");
      layer.ffn_in = linear(p + ".ffn.w_in");
      layer.ffn_out = linear(p + ".ffn.w_out");
      layer.window = mixers[i] == "local_attention" ? c_.local_attention.window : 0;
      const ModelConfig own = c_.for_layer(i);
      layer.heads = own.n_heads, layer.kv_heads = own.kv_heads(), layer.ff = own.d_ff;
      layer.cache.resize(slots_);
      layers_.push_back(std::move(layer));
    }
    norm_f_ = norm("norm_f");
    if (c_.tie_embeddings) {
      lm_head_.name = "tok_emb.weight";
      lm_head_.w = embedding_;
      lm_head_.rows = embedding_.size(0), lm_head_.cols = embedding_.size(1);
      // A quantized checkpoint of a tied model stores the embedding quantized: the output
      // projection runs on it (the rows looked up at the input are the dequantized ones).
      auto stored = quantized.find("tok_emb.weight");
      if (options.weights == WeightFormat::kAsStored && stored != quantized.end())
        use_quantized(lm_head_, stored->second);
    } else {
      lm_head_ = linear("lm_head");
    }
    pack_weights();
    lengths_.assign(slots_, 0);
    capacity_.assign(slots_, 0);
    before_linear_ = options.before_linear;
  }

  const char* name() const override { return "fast"; }
  int64_t vocab_size() const override { return c_.vocab_size; }
  int64_t context() const override { return context_; }
  int64_t slots() const override { return slots_; }
  int64_t length(int64_t slot) const override {
    check_slot(slot);
    return lengths_[slot];
  }
  void reset(int64_t slot) override {
    check_slot(slot);
    lengths_[slot] = 0;
    capacity_[slot] = 0;
    for (auto& layer : layers_) layer.cache[slot] = {};
  }
  int64_t cache_bytes() const override {
    int64_t bytes = 0;
    for (const auto& layer : layers_)
      for (const auto& c : layer.cache)
        bytes += static_cast<int64_t>((c.k.capacity() + c.v.capacity()) * sizeof(float));
    return bytes;
  }

  torch::Tensor forward(const std::vector<int64_t>& slots, const std::vector<std::vector<int64_t>>& tokens) override {
    validate(slots, tokens);
    for (size_t i = 0; i < slots.size(); ++i)
      reserve(slots[i], lengths_[slots[i]] + static_cast<int64_t>(tokens[i].size()));
    // Rows: every new token of every slot, with its slot and position.
    rows_.clear();
    last_row_.clear();
    for (size_t i = 0; i < slots.size(); ++i) {
      for (size_t j = 0; j < tokens[i].size(); ++j)
        rows_.push_back({slots[i], lengths_[slots[i]] + static_cast<int64_t>(j), tokens[i][j]});
      last_row_.push_back(static_cast<int64_t>(rows_.size()) - 1);
    }
    const int64_t n = static_cast<int64_t>(rows_.size()), d = c_.d_model;
    grow(n);
    float* x = x_.data();
    for (int64_t r = 0; r < n; ++r) {
      const float* e = embedding_.data_ptr<float>() + rows_[r].token * d;
      const float scale = c_.embed_scale ? std::sqrt(static_cast<float>(d)) : 1.0f;
      const float* p = positions_.defined() ? positions_.data_ptr<float>() + rows_[r].position * d : nullptr;
      for (int64_t i = 0; i < d; ++i) x[r * d + i] = e[i] * scale + (p ? p[i] : 0.0f);
    }
    for (auto& layer : layers_) run_layer(layer, n);
    // Only each slot's last row needs logits.
    const int64_t m = static_cast<int64_t>(slots.size());
    for (int64_t i = 0; i < m; ++i) std::copy_n(x + last_row_[i] * d, d, h_.data() + i * d);
    normalize(norm_f_, h_.data(), m, h_.data());
    auto logits = torch::empty({m, c_.vocab_size});
    lm_head_.apply(h_.data(), m, logits.data_ptr<float>());
    for (size_t i = 0; i < slots.size(); ++i) lengths_[slots[i]] += static_cast<int64_t>(tokens[i].size());
    return logits;
  }

 private:
  struct Row {
    int64_t slot, position, token;
  };

  static void use_quantized(Linear& l, QuantizedLinear q) {
    if (q.rows != l.rows || q.cols != l.cols)
      fail("quantized weight {} is [{}, {}], expected [{}, {}]", l.name, q.rows, q.cols, l.rows, l.cols);
    l.q = std::move(q);
    l.q.q = l.q.q.contiguous();
    if (l.q.scale.defined()) l.q.scale = l.q.scale.contiguous();
    l.format = l.q.format == QuantFormat::kInt8 ? WeightFormat::kInt8 : WeightFormat::kQ4_0;
    l.w = torch::Tensor();  // only the quantized form is kept
  }

  // Every linear's weights into one arena, in the order a step reads them. A float weight moves:
  // the Model's parameter is pointed at the copy too, so the weights are not held twice.
  void pack_weights() {
    std::vector<Linear*> all;
    for (auto& layer : layers_)
      for (Linear* l : {&layer.qkv, &layer.out, &layer.ffn_in, &layer.ffn_out}) all.push_back(l);
    all.push_back(&lm_head_);
    int64_t bytes = 0;
    auto size = [](const torch::Tensor& t) {
      return t.defined() ? Arena::round_up(t.numel() * static_cast<int64_t>(t.element_size()), 64) : int64_t{0};
    };
    for (Linear* l : all) bytes += size(l->w) + size(l->q.q) + size(l->q.scale);
    auto arena = std::make_shared<Arena>(bytes);
    auto params = model_->named_parameters();
    for (Linear* l : all) {
      if (l->w.defined()) {
        l->w = Arena::copy(arena, l->w);
        if (auto* p = params.find(l->name)) p->set_data(l->w);
      }
      if (l->q.q.defined()) l->q.q = Arena::copy(arena, l->q.q);
      if (l->q.scale.defined()) l->q.scale = Arena::copy(arena, l->q.scale);
    }
    if (c_.tie_embeddings && lm_head_.w.defined()) embedding_ = lm_head_.w;
  }

  // A layer's linear, through the before_linear hook while it is still fp32.
  void apply(Linear& l, const float* x, int64_t n, float* y) {
    if (before_linear_ && l.format == WeightFormat::kF32)
      if (auto q = before_linear_(l.name, l.w, x, n)) use_quantized(l, std::move(*q));
    l.apply(x, n, y);
  }

  void check_slot(int64_t slot) const {
    if (slot < 0 || slot >= slots_) fail("slot {} is outside [0, {})", slot, slots_);
  }

  void validate(const std::vector<int64_t>& slots, const std::vector<std::vector<int64_t>>& tokens) const {
    if (slots.size() != tokens.size()) fail("forward: {} slots but {} token lists", slots.size(), tokens.size());
    if (slots.empty()) fail("forward: no slots given");
    std::vector<bool> seen(slots_, false);
    for (size_t i = 0; i < slots.size(); ++i) {
      check_slot(slots[i]);
      if (seen[slots[i]]) fail("forward: slot {} is given twice", slots[i]);
      seen[slots[i]] = true;
      if (tokens[i].empty()) fail("forward: slot {} has no new tokens", slots[i]);
      if (lengths_[slots[i]] + static_cast<int64_t>(tokens[i].size()) > context_)
        fail("slot {} would hold {} tokens, more than the context of {}", slots[i],
             lengths_[slots[i]] + static_cast<int64_t>(tokens[i].size()), context_);
      for (auto id : tokens[i])
        if (id < 0 || id >= c_.vocab_size) fail("token id {} is outside the vocabulary [0, {})", id, c_.vocab_size);
    }
  }

  // Makes room in a slot's caches for `needed` positions (cache_capacity's growth), keeping the
  // positions it holds.
  void reserve(int64_t slot, int64_t needed) {
    const int64_t old = capacity_[slot];
    const int64_t capacity = cache_capacity(old, needed, context_);
    if (capacity == old) return;
    const int64_t hd = head_dim_, held = lengths_[slot];
    for (auto& layer : layers_) {
      auto& c = layer.cache[slot];
      for (auto* buffer : {&c.k, &c.v}) {
        std::vector<float> grown(static_cast<size_t>(layer.kv_heads * capacity * hd));
        for (int64_t j = 0; j < layer.kv_heads && held > 0; ++j)
          std::copy_n(buffer->data() + j * old * hd, held * hd, grown.data() + j * capacity * hd);
        buffer->swap(grown);
      }
    }
    capacity_[slot] = capacity;
  }

  void grow(int64_t n) {
    const int64_t d = c_.d_model;
    int64_t widest = d, ff = 0, heads = 0;  // over the layers
    for (const auto& layer : layers_) {
      widest = std::max({widest, (layer.heads + 2 * layer.kv_heads) * head_dim_, gated_ ? 2 * layer.ff : layer.ff});
      ff = std::max(ff, layer.ff), heads = std::max(heads, layer.heads);
    }
    if (static_cast<int64_t>(x_.size()) >= n * d) return;
    x_.resize(n * d), h_.resize(n * d), tmp_.resize(n * d);
    wide_.resize(n * widest), mid_.resize(n * ff), attn_.resize(n * heads * head_dim_);
  }

  void normalize(const NormWeights& w, const float* x, int64_t n, float* y) const {
    const int64_t d = c_.d_model;
    const float eps = static_cast<float>(c_.norm_eps);
    for_rows(n, d, [&](int64_t r) {
      if (norm_ == Norm::kRmsNorm) cpu::rms_norm(x + r * d, w.weight, d, eps, y + r * d);
      else cpu::layer_norm(x + r * d, w.weight, w.bias, d, eps, y + r * d);
    });
  }

  void rotate(float* v, int64_t heads, int64_t position) const {
    const int64_t half = head_dim_ / 2;
    const float* cs = cos_.data_ptr<float>() + position * half;
    const float* sn = sin_.data_ptr<float>() + position * half;
    for (int64_t h = 0; h < heads; ++h) {
      float* x = v + h * head_dim_;
      for (int64_t i = 0; i < half; ++i) {
        float* a = rope_ == Rope::kHalf ? x + i : x + 2 * i;
        float* b = rope_ == Rope::kHalf ? x + i + half : x + 2 * i + 1;
        const float x1 = *a, x2 = *b;
        *a = x1 * cs[i] - x2 * sn[i];
        *b = x2 * cs[i] + x1 * sn[i];
      }
    }
  }

  void run_layer(Layer& layer, int64_t n) {
    const int64_t d = c_.d_model, hd = head_dim_, h = layer.heads, kh = layer.kv_heads;
    const int64_t qkv_width = (h + 2 * kh) * hd;
    float* x = x_.data();
    normalize(layer.norm1, x, n, h_.data());
    float* qkv = wide_.data();
    apply(layer.qkv, h_.data(), n, qkv);
    // RoPE, then every row's key and value into its slot's cache (before any row attends, so
    // that a prompt's rows see each other).
    for_rows(n, qkv_width, [&](int64_t r) {
      float* row = qkv + r * qkv_width;
      if (rope_ != Rope::kNone) rotate(row, h + kh, rows_[r].position);
      auto& cache = layer.cache[rows_[r].slot];
      for (int64_t j = 0; j < kh; ++j) {
        const int64_t at = (j * capacity_[rows_[r].slot] + rows_[r].position) * hd;
        std::copy_n(row + (h + j) * hd, hd, cache.k.data() + at);
        std::copy_n(row + (h + kh + j) * hd, hd, cache.v.data() + at);
      }
    });
    attend(layer, qkv);
    apply(layer.out, attn_.data(), n, tmp_.data());
    for_rows(n, d, [&](int64_t r) { cpu::add(tmp_.data() + r * d, x + r * d, d); });

    normalize(layer.norm2, x, n, h_.data());
    const int64_t ff = layer.ff;
    float* hidden = wide_.data();
    apply(layer.ffn_in, h_.data(), n, hidden);
    float* mid = gated_ ? mid_.data() : hidden;
    for_rows(n, gated_ ? 2 * ff : ff, [&](int64_t r) {
      float* out = mid + r * ff;
      if (gated_) {
        const float* gate = hidden + r * 2 * ff;
        const float* up = gate + ff;
        if (act_ == Act::kSilu) {
          cpu::silu_mul(gate, up, ff, out);
        } else {
          for (int64_t i = 0; i < ff; ++i) out[i] = activate(act_, gate[i]) * up[i];
        }
      } else {
        for (int64_t i = 0; i < ff; ++i) out[i] = activate(act_, out[i]);
      }
    });
    apply(layer.ffn_out, mid, n, tmp_.data());
    for_rows(n, d, [&](int64_t r) { cpu::add(tmp_.data() + r * d, x + r * d, d); });
  }

  // Causal softmax attention of every row over its slot's cache (keys and values already written),
  // into attn_ [n, heads * head_dim]. The work items, spread over OpenMP's threads: (block of up to
  // kQueryBlock consecutive rows of one slot, head), each as two GEMMs when CBLAS is there
  // (scores = Q K^T over the keys the block's last row sees, a masked softmax per row, O = P V),
  // and (row, head) dot-product loops for rows decoding alone.
  void attend(const Layer& layer, const float* qkv) {
    const int64_t hd = head_dim_, h = layer.heads, kh = layer.kv_heads, g = h / kh;
    const int64_t qkv_width = (h + 2 * kh) * hd;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    const auto sgemm = cblas_sgemm();
    // Blocks: runs of consecutive rows of one slot (a prompt's), split every kQueryBlock rows.
    blocks_.clear();
    const int64_t n = static_cast<int64_t>(rows_.size());
    for (int64_t r = 0; r < n;) {
      int64_t end = r + 1;
      const int64_t limit = sgemm ? std::min(n, r + kQueryBlock) : end;
      while (end < limit && rows_[end].slot == rows_[r].slot) ++end;
      blocks_.push_back({r, end});
      r = end;
    }
    const int64_t items = static_cast<int64_t>(blocks_.size()) * h;
    auto run = [&](int64_t item) {
      // Per thread and kept across calls: grows to the largest block seen, then allocates no more.
      thread_local std::vector<float> scores;
      const auto [r0, r1] = blocks_[item / h];
      const int64_t head = item % h, m = r1 - r0;
      const Row& first_row = rows_[r0];
      const int64_t p0 = first_row.position, last = p0 + m - 1;
      const int64_t k0 = layer.window > 0 ? std::max<int64_t>(0, p0 - layer.window + 1) : 0;
      const int64_t keys = last - k0 + 1;
      const auto& cache = layer.cache[first_row.slot];
      const int64_t base = (head / g) * capacity_[first_row.slot] * hd;
      const float* k = cache.k.data() + base + k0 * hd;
      const float* v = cache.v.data() + base + k0 * hd;
      const float* q = qkv + r0 * qkv_width + head * hd;
      float* o = attn_.data() + (r0 * h + head) * hd;
      if (static_cast<int64_t>(scores.size()) < m * keys) scores.resize(std::max<int64_t>(m * keys, 1024));
      float* s = scores.data();
      if (m > 1) {  // s[m, keys] = scale * q k^T
        sgemm(kRowMajor, kNoTrans, kTrans, static_cast<int>(m), static_cast<int>(keys), static_cast<int>(hd), scale, q,
              static_cast<int>(qkv_width), k, static_cast<int>(hd), 0.0f, s, static_cast<int>(keys));
      } else {
        cpu::dot_rows(q, k, keys, hd, scale, s);
      }
      for (int64_t i = 0; i < m; ++i) {  // row i sees keys [lo, hi] of the block's range
        float* si = s + i * keys;
        const int64_t p = p0 + i, hi = p - k0;
        const int64_t lo = layer.window > 0 ? std::max<int64_t>(0, p - layer.window + 1) - k0 : 0;
        std::fill(si, si + lo, 0.0f);
        std::fill(si + hi + 1, si + keys, 0.0f);
        const float total = cpu::exp_shifted(si + lo, hi - lo + 1, cpu::max(si + lo, hi - lo + 1));
        cpu::scale(si + lo, hi - lo + 1, 1.0f / total);
      }
      if (m > 1) {  // o[m, hd] (row stride heads * hd) = s v
        sgemm(kRowMajor, kNoTrans, kNoTrans, static_cast<int>(m), static_cast<int>(hd), static_cast<int>(keys), 1.0f, s,
              static_cast<int>(keys), v, static_cast<int>(hd), 0.0f, o, static_cast<int>(h * hd));
      } else {
        cpu::weighted_rows(s, v, keys, hd, o);
      }
    };
    if (items > 1 && omp_get_max_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(dynamic)
      for (int64_t item = 0; item < items; ++item) run(item);
    } else {
      for (int64_t item = 0; item < items; ++item) run(item);
    }
  }

  Model model_;  // holds the float weights (the fp32 layers' in the weight arena)
  const ModelConfig& c_;
  int64_t slots_ = 1, context_ = 0, head_dim_ = 0;
  Norm norm_ = Norm::kLayerNorm;
  Act act_ = Act::kGelu;
  Rope rope_ = Rope::kNone;
  bool gated_ = false;
  torch::Tensor embedding_, positions_, cos_, sin_;
  std::vector<Layer> layers_;
  NormWeights norm_f_;
  Linear lm_head_;
  std::vector<int64_t> lengths_, capacity_;  // per slot: positions held, positions its caches have room for
  std::vector<Row> rows_;
  static constexpr int64_t kQueryBlock = 64;  // rows per attention GEMM
  struct Block {
    int64_t begin, end;  // rows [begin, end) of one slot, consecutive positions
  };
  std::vector<Block> blocks_;
  std::vector<int64_t> last_row_;
  std::vector<float> x_, h_, tmp_, wide_, mid_, attn_;  // [rows, width] work buffers
  decltype(FastEngineOptions::before_linear) before_linear_;
};

}  // namespace

bool fast_engine_supports(const ModelConfig& c, std::string* why) {
  auto no = [&](const std::string& reason) {
    if (why) *why = reason;
    return false;
  };
  // Every block the model builds must declare that the fast engine runs it ...
  for (const auto& [family, name] : c.used_blocks())
    if (!*block_info(family, name, "fast engine").runs_on_fast_engine)
      return no(fmt::format("{} '{}' (its registration says the fast engine does not run it)", family, name));
  // ... and every option that changes the forward pass must be declared as one the fast engine
  // runs at any value, or be at its default (nn/config.h, AtInference). A block's own options
  // follow the block: they matter only if the model uses it, and then the check above passed.
  const auto options = option_values(c), defaults = option_values(ModelConfig());
  for (size_t i = 0; i < options.size(); ++i) {
    const OptionValue& o = options[i];
    if (o.at_inference || o.block || o.value == defaults[i].value) continue;
    return no(fmt::format("model.{} {} (the fast engine runs only {})", o.key, o.value, defaults[i].value));
  }
  return true;
}

std::unique_ptr<Engine> make_fast_engine(Model model, const std::map<std::string, QuantizedLinear>& quantized,
                                         const FastEngineOptions& options) {
  return std::make_unique<FastEngine>(std::move(model), quantized, options);
}

}  // namespace loom

#include "loom/search/latency.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <numeric>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "loom/core/error.h"
#include "loom/core/log.h"
#include "loom/infer/engine.h"
#include "loom/infer/fast_engine.h"
#include "loom/io/fs.h"

namespace loom {
namespace fs = std::filesystem;
namespace {

double trimmed_mean(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  if (v.size() >= 3) v = std::vector<double>(v.begin() + 1, v.end() - 1);
  return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

std::string settings_of(const SearchSpace& space) {
  const auto& l = space.config().latency;
  return fmt::format("prompt {} decode {} repeats {} weights {}", l.prompt, l.decode, l.repeats, l.weights);
}

}  // namespace

std::string machine_name() {
  std::string model = "unknown cpu";
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  return fmt::format("{} x{}", model, torch::get_num_threads());
}

Latency measure_latency(const SearchSpace& space, const Arch& arch) {
  const auto& settings = space.config().latency;
  ModelConfig c = space.model_config(arch);
  c.max_seq_len = std::max(c.max_seq_len, settings.prompt + settings.decode);
  torch::manual_seed(0);
  Model model(c);
  model->eval();
  std::unique_ptr<Engine> engine;
  if (fast_engine_supports(c)) {
    FastEngineOptions options;
    options.weights = settings.weights == "int8"   ? WeightFormat::kInt8
                      : settings.weights == "q4_0" ? WeightFormat::kQ4_0
                                                   : WeightFormat::kF32;
    engine = make_fast_engine(model, {}, options);
  } else {
    engine = make_reference_engine(model, EngineOptions{});
  }
  torch::NoGradGuard no_grad;
  std::vector<int64_t> prompt(static_cast<size_t>(settings.prompt));
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int64_t>((i * 7919) % c.vocab_size);
  using Clock = std::chrono::steady_clock;
  auto ms = [](Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
  };
  std::vector<double> prefill, decode;
  for (int64_t r = 0; r <= settings.repeats; ++r) {  // repeat 0 warms up
    engine->reset(0);
    const auto t0 = Clock::now();
    auto logits = engine->forward({0}, {prompt});
    const auto t1 = Clock::now();
    for (int64_t i = 0; i < settings.decode; ++i) logits = engine->forward({0}, {{(i * 31) % c.vocab_size}});
    const auto t2 = Clock::now();
    if (r == 0) continue;
    prefill.push_back(ms(t0, t1));
    decode.push_back(ms(t1, t2) / static_cast<double>(settings.decode));
  }
  return {trimmed_mean(prefill), trimmed_mean(decode), engine->name()};
}

LatencyTable::LatencyTable(std::string path, const SearchSpace& space)
    : path_(std::move(path)), machine_(machine_name()), settings_(settings_of(space)), space_(space) {
  if (path_.empty() || !fs::exists(path_)) return;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path_));
    if (j.at("machine").get<std::string>() != machine_) {
      logger().info("latency table {} was measured on '{}', this is '{}': measuring afresh", path_,
                    j.at("machine").get<std::string>(), machine_);
      return;
    }
    if (j.at("settings").get<std::string>() != settings_) {
      logger().info("latency table {} holds other settings ({}): measuring afresh", path_,
                    j.at("settings").get<std::string>());
      return;
    }
    for (const auto& [key, e] : j.at("entries").items())
      entries_[key] = {e.at("prefill_ms").get<double>(), e.at("decode_ms").get<double>(),
                       e.at("engine").get<std::string>()};
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not a latency table: {}", path_, e.what());
  }
}

const Latency& LatencyTable::get(const Arch& arch) {
  const std::string key = format_arch(arch);
  auto it = entries_.find(key);
  if (it != entries_.end()) return it->second;
  ++measured_;
  return entries_[key] = measure_latency(space_, arch);
}

void LatencyTable::save() const {
  if (path_.empty()) return;
  nlohmann::json entries = nlohmann::json::object();
  for (const auto& [key, l] : entries_)
    entries[key] = {{"prefill_ms", l.prefill_ms}, {"decode_ms", l.decode_ms}, {"engine", l.engine}};
  const nlohmann::json j{{"machine", machine_}, {"settings", settings_}, {"entries", entries}};
  if (!fs::path(path_).parent_path().empty()) fs::create_directories(fs::path(path_).parent_path());
  write_file_atomic(path_, j.dump(1) + "\n");
}

std::vector<float> arch_features(const SearchSpace& space, const Arch& arch) {
  const double n = static_cast<double>(arch.n_layers()), d = static_cast<double>(arch.d_model);
  const double hd = static_cast<double>(space.head_dim());
  double ff = 0, heads = 0, attn_params = 0, ffn_params = 0;
  for (int64_t i = 0; i < arch.n_layers(); ++i) {
    ff += static_cast<double>(arch.d_ff[i]);
    heads += static_cast<double>(arch.heads[i]);
    attn_params += 4 * d * static_cast<double>(arch.heads[i]) * hd;
    ffn_params += 3 * d * static_cast<double>(arch.d_ff[i]);
  }
  std::vector<float> f{static_cast<float>(n),           static_cast<float>(d),         static_cast<float>(ff / n),
                       static_cast<float>(ff),          static_cast<float>(heads / n), static_cast<float>(heads),
                       static_cast<float>(attn_params), static_cast<float>(ffn_params)};
  for (const auto& m : space.choices().mixer)
    f.push_back(static_cast<float>(std::count(arch.mixers.begin(), arch.mixers.end(), m)));
  return f;
}

LatencyPredictor::LatencyPredictor(const SearchSpace& space, int64_t hidden) : space_(space), hidden_(hidden) {}

void LatencyPredictor::fit(const std::vector<Arch>& archs, const std::vector<double>& latency_ms, int64_t iterations,
                           uint64_t seed) {
  if (archs.size() < 2 || archs.size() != latency_ms.size())
    fail("the latency predictor needs at least 2 measurements");
  torch::manual_seed(seed);
  std::vector<torch::Tensor> rows;
  for (const auto& a : archs) rows.push_back(torch::tensor(arch_features(space_, a)));
  auto x = torch::stack(rows);
  mean_ = x.mean(0);
  std_ = x.std(0).clamp_min(1e-6);
  x = (x - mean_) / std_;
  auto y = torch::log(torch::tensor(latency_ms).to(torch::kFloat)).unsqueeze(1);
  const int64_t in = x.size(1);
  net_ = torch::nn::Sequential(torch::nn::Linear(in, hidden_), torch::nn::ReLU(), torch::nn::Linear(hidden_, hidden_),
                               torch::nn::ReLU(), torch::nn::Linear(hidden_, hidden_), torch::nn::ReLU(),
                               torch::nn::Linear(hidden_, 1));
  torch::optim::Adam adam(net_->parameters(), torch::optim::AdamOptions(3e-3).weight_decay(1e-4));
  for (int64_t it = 0; it < iterations; ++it) {
    adam.zero_grad();
    auto loss = torch::mse_loss(net_->forward(x), y);
    loss.backward();
    adam.step();
  }
  net_->eval();
}

double LatencyPredictor::predict(const Arch& arch) const {
  if (!net_) fail("internal: the latency predictor is not fitted");
  torch::NoGradGuard no_grad;
  auto x = (torch::tensor(arch_features(space_, arch)) - mean_) / std_;
  return std::exp(net_->forward(x.unsqueeze(0)).item<double>());
}

double LatencyPredictor::mape(const std::vector<Arch>& archs, const std::vector<double>& latency_ms) const {
  double sum = 0;
  for (size_t i = 0; i < archs.size(); ++i) sum += std::abs(predict(archs[i]) - latency_ms[i]) / latency_ms[i];
  return archs.empty() ? 0 : 100 * sum / static_cast<double>(archs.size());
}

}  // namespace loom

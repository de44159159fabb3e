// Latency of sub-architectures on this machine, measured in the serving setting: the engine that
// would serve the model (the fast engine when it runs every block, else the reference engine; see
// infer/engine.h) at batch 1, a prefill of latency.prompt tokens, then latency.decode tokens one at
// a time. Each repeat is timed; the mean drops the fastest and slowest repeat (with >= 3).
// Latency does not depend on the weights' values, so a model is built with random ones.
//
// Measurements are cached per machine (LatencyTable): a JSON file naming the machine (CPU model,
// threads) and the settings, so a table from another machine or other settings is never mixed in.
// A small MLP (LatencyPredictor, HAT's predictor) fits measured tables and reports its error.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "loom/search/space.h"

namespace loom {

struct Latency {
  double prefill_ms = 0;  // the whole prompt
  double decode_ms = 0;   // per token
  std::string engine;     // "fast" or "reference"
};

Latency measure_latency(const SearchSpace& space, const Arch& arch);

// "<cpu model> x<threads>": what a latency measurement is valid for.
std::string machine_name();

class LatencyTable {
 public:
  // Reads `path` if it exists and was measured on this machine with the space's latency settings
  // (otherwise starts empty and says why in the log).
  LatencyTable(std::string path, const SearchSpace& space);
  // The cached measurement, or a new one (cached; written on save()).
  const Latency& get(const Arch& arch);
  bool has(const Arch& arch) const { return entries_.count(format_arch(arch)) > 0; }
  int64_t measured() const { return measured_; }  // new measurements since loading
  void save() const;
  const std::map<std::string, Latency>& entries() const { return entries_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_, machine_, settings_;
  const SearchSpace& space_;
  std::map<std::string, Latency> entries_;
  int64_t measured_ = 0;
};

// An arch as the predictor's input: layers, d_model, mean and total FFN width, mean and total heads,
// the parameters of attention and FFN, and the count of layers of each mixer choice.
std::vector<float> arch_features(const SearchSpace& space, const Arch& arch);

// HAT's latency predictor: an MLP (3 hidden layers) on arch_features, trained with Adam on
// standardized inputs and log latency.
class LatencyPredictor {
 public:
  LatencyPredictor(const SearchSpace& space, int64_t hidden = 64);
  void fit(const std::vector<Arch>& archs, const std::vector<double>& latency_ms, int64_t iterations = 3000,
           uint64_t seed = 1);
  double predict(const Arch& arch) const;
  // Mean absolute percentage error over the given measurements.
  double mape(const std::vector<Arch>& archs, const std::vector<double>& latency_ms) const;

 private:
  const SearchSpace& space_;
  int64_t hidden_;
  mutable torch::nn::Sequential net_{nullptr};
  torch::Tensor mean_, std_;
};

}  // namespace loom

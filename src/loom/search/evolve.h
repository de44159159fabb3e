// HAT's evolutionary search over a trained supernet: a population of sub-architectures, the best
// `parents` kept each generation, children by mutation (each gene redrawn with mutation_prob) and
// crossover (each gene from either parent), the rest drawn at random; candidates whose measured
// decode latency exceeds evolve.latency_limit_ms are rejected before evaluation. Fitness is the
// validation loss of the sub-model with the supernet's weights (lower is better).
//
// Writes into out_dir: candidates.json (every evaluated candidate: arch, loss, latency, parameters,
// generation), winner.yaml (the best candidate within the limit as a recipe for `loom train`),
// pareto.svg (loss against measured decode latency, the Pareto front and the baselines marked) and
// evolve.md (the table of the front).
#pragma once
#include <string>
#include <vector>

#include "loom/search/latency.h"
#include "loom/search/supernet.h"

namespace loom {

struct Candidate {
  Arch arch;
  double loss = 0;
  Latency latency;
  int64_t parameters = 0;
  int64_t generation = -1;  // -1: a baseline
  std::string name;         // baselines: what they are
};

struct EvolveOptions {
  std::string out_dir;
  std::string latency_table;           // cache of measurements ("" = none)
  std::vector<std::string> baselines;  // NAME=ARCH, marked on the chart and scored alike
};

struct EvolveResult {
  std::vector<Candidate> candidates;  // in evaluation order
  std::vector<Candidate> baselines;
  Candidate winner;
  std::vector<Candidate> front;  // Pareto front (loss and decode latency), by latency
  int64_t measured = 0;          // latencies measured (not from the table)
  double seconds = 0;
};

EvolveResult evolve(const LoadedSupernet& supernet, const EvolveOptions& options);

// The candidates no other candidate beats on both loss and decode latency, by latency.
std::vector<Candidate> pareto_front(const std::vector<Candidate>& candidates);

}  // namespace loom

#include "loom/search/evolve.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "loom/core/error.h"
#include "loom/core/log.h"
#include "loom/core/progress.h"
#include "loom/io/fs.h"
#include "loom/search/chart.h"

namespace loom {
namespace fs = std::filesystem;
namespace {

nlohmann::json to_json(const Candidate& c) {
  return {{"arch", format_arch(c.arch)},      {"loss", c.loss},
          {"decode_ms", c.latency.decode_ms}, {"prefill_ms", c.latency.prefill_ms},
          {"engine", c.latency.engine},       {"parameters", c.parameters},
          {"generation", c.generation},       {"name", c.name}};
}

std::string chart(const EvolveResult& r, double limit_ms) {
  ScatterChart c;
  c.title = "loss with supernet weights against measured decode latency";
  c.x_label = "decode latency, ms per token (batch 1)";
  c.y_label = "validation loss (nats/token)";
  ScatterSeries all{"candidates", "#9aa5b1", {}, false, 3};
  for (const auto& cand : r.candidates) all.points.push_back({cand.latency.decode_ms, cand.loss, ""});
  ScatterSeries front{"Pareto front", "#1f77b4", {}, true, 4};
  for (const auto& cand : r.front) front.points.push_back({cand.latency.decode_ms, cand.loss, ""});
  ScatterSeries base{"baselines", "#d62728", {}, false, 6};
  for (const auto& cand : r.baselines) base.points.push_back({cand.latency.decode_ms, cand.loss, cand.name});
  ScatterSeries win{"winner", "#2ca02c", {{r.winner.latency.decode_ms, r.winner.loss, "winner"}}, false, 6};
  c.series = {all, front, base, win};
  if (limit_ms > 0) c.x_marks.emplace_back(limit_ms, fmt::format("limit {:.3g} ms", limit_ms));
  return scatter_svg(c);
}

}  // namespace

std::vector<Candidate> pareto_front(const std::vector<Candidate>& candidates) {
  std::vector<Candidate> sorted = candidates;
  std::sort(sorted.begin(), sorted.end(), [](const Candidate& a, const Candidate& b) {
    return a.latency.decode_ms != b.latency.decode_ms ? a.latency.decode_ms < b.latency.decode_ms : a.loss < b.loss;
  });
  std::vector<Candidate> front;
  for (const auto& c : sorted)
    if (front.empty() || c.loss < front.back().loss) front.push_back(c);
  return front;
}

EvolveResult evolve(const LoadedSupernet& supernet, const EvolveOptions& options) {
  if (options.out_dir.empty()) fail("loom search evolve needs an output directory (--out)");
  const Supernet& net = *supernet.net;
  const SearchSpace& space = net.space();
  const auto& ev = space.config().evolve;
  const bool bf16 = space.base().train.precision == "bf16";
  const auto start = std::chrono::steady_clock::now();
  const auto batches = validation_batches(space, ev.eval_batches);
  LatencyTable table(options.latency_table, space);
  EvolveResult result;
  std::map<std::string, Candidate> seen;
  auto evaluate = [&](const Arch& arch, int64_t generation) -> const Candidate& {
    auto it = seen.find(format_arch(arch));
    if (it != seen.end()) return it->second;
    Candidate c;
    c.arch = arch;
    c.generation = generation;
    c.latency = table.get(arch);
    Model model = net.build(arch);
    c.parameters = model->num_parameters();
    c.loss = evaluate_loss(model, batches, bf16);
    result.candidates.push_back(c);
    return seen[format_arch(arch)] = c;
  };
  auto fits = [&](const Arch& arch) {
    return ev.latency_limit_ms <= 0 || table.get(arch).decode_ms <= ev.latency_limit_ms;
  };
  std::mt19937_64 rng(static_cast<uint64_t>(ev.seed));
  // Draws until `make` yields an arch within the limit.
  auto draw = [&](const std::function<Arch()>& make, const char* what) {
    for (int tries = 0; tries < 200; ++tries) {
      Arch a = make();
      if (fits(a)) return a;
    }
    fail("no {} of 200 tries meets evolve.latency_limit_ms {} (the smallest architecture decodes in {:.3f} ms)", what,
         ev.latency_limit_ms, table.get(space.smallest()).decode_ms);
  };
  std::vector<Arch> population;
  for (int64_t i = 0; i < ev.population; ++i)
    population.push_back(draw([&] { return space.sample(rng); }, "random architecture"));
  Progress progress("evolve", 0, ev.iterations, 1);
  for (int64_t gen = 0; gen < ev.iterations; ++gen) {
    std::vector<Candidate> scored;
    for (const auto& a : population) scored.push_back(evaluate(a, gen));
    std::sort(scored.begin(), scored.end(), [](const Candidate& a, const Candidate& b) { return a.loss < b.loss; });
    std::vector<Arch> parents;
    for (int64_t i = 0; i < ev.parents && i < static_cast<int64_t>(scored.size()); ++i)
      parents.push_back(scored[i].arch);
    progress.update(gen + 1, fmt::format("best loss {:.4f} at {:.3f} ms/token | {} evaluated, {} latencies measured",
                                         scored.front().loss, scored.front().latency.decode_ms,
                                         result.candidates.size(), table.measured()));
    if (gen + 1 == ev.iterations) break;
    std::vector<Arch> next = parents;
    auto parent = [&] { return parents[std::uniform_int_distribution<size_t>(0, parents.size() - 1)(rng)]; };
    for (int64_t i = 0; i < ev.mutations; ++i)
      next.push_back(draw([&] { return space.mutate(parent(), ev.mutation_prob, rng); }, "mutation"));
    for (int64_t i = 0; i < ev.crossovers; ++i)
      next.push_back(draw([&] { return space.crossover(parent(), parent(), rng); }, "crossover"));
    while (static_cast<int64_t>(next.size()) < ev.population)
      next.push_back(draw([&] { return space.sample(rng); }, "random architecture"));
    population = std::move(next);
  }
  progress.finish();
  table.save();

  // Baselines: the base recipe's own model when the space holds it, and the ones asked for.
  std::vector<std::pair<std::string, Arch>> baselines;
  {
    const ModelConfig& m = space.base().model;
    Arch base;
    base.d_model = m.d_model;
    base.mixers = m.layer_mixers();
    base.heads.assign(m.n_layers, m.n_heads);
    base.d_ff.assign(m.n_layers, m.d_ff);
    if (space.contains(base) && m.head_dim() == space.head_dim()) baselines.emplace_back("base recipe", base);
  }
  for (const auto& text : options.baselines) {
    const auto eq = text.find('=');
    if (eq == std::string::npos || eq == 0) fail("--baseline '{}': expected NAME=ARCH", text);
    baselines.emplace_back(text.substr(0, eq), parse_arch(text.substr(eq + 1), "--baseline " + text.substr(0, eq)));
  }
  for (const auto& [name, arch] : baselines) {
    Candidate c = evaluate(arch, -1);
    c.name = name;
    result.baselines.push_back(c);
  }
  table.save();

  std::vector<Candidate> searched;
  for (const auto& c : result.candidates)
    if (c.generation >= 0) searched.push_back(c);
  result.front = pareto_front(searched);
  result.winner = *std::min_element(searched.begin(), searched.end(),
                                    [](const Candidate& a, const Candidate& b) { return a.loss < b.loss; });
  result.measured = table.measured();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  fs::create_directories(options.out_dir);
  const fs::path out(options.out_dir);
  nlohmann::json j{{"machine", machine_name()},
                   {"supernet", supernet.dir},
                   {"latency_limit_ms", ev.latency_limit_ms},
                   {"seconds", result.seconds},
                   {"winner", to_json(result.winner)},
                   {"baselines", nlohmann::json::array()},
                   {"candidates", nlohmann::json::array()}};
  for (const auto& c : result.baselines) j["baselines"].push_back(to_json(c));
  for (const auto& c : result.candidates) j["candidates"].push_back(to_json(c));
  write_file_atomic((out / "candidates.json").string(), j.dump(1) + "\n");
  write_file_atomic((out / "winner.yaml").string(),
                    fmt::format("# loom search evolve: the best of {} candidates{} ({})\n# loss {:.4f} with the "
                                "supernet's weights, decode {:.3f} ms/token, {} parameters\n",
                                result.candidates.size(),
                                ev.latency_limit_ms > 0 ? fmt::format(" within {} ms/token", ev.latency_limit_ms) : "",
                                format_arch(result.winner.arch), result.winner.loss, result.winner.latency.decode_ms,
                                result.winner.parameters) +
                        recipe_to_yaml(space.recipe(result.winner.arch)));
  write_file_atomic((out / "pareto.svg").string(), chart(result, ev.latency_limit_ms));
  std::string md = "| arch | loss | decode ms/token | prefill ms | parameters |\n|---|---|---|---|---|\n";
  auto row = [&](const Candidate& c, const std::string& tag) {
    md += fmt::format("| {}{} | {:.4f} | {:.3f} | {:.2f} | {:.2f}M |\n", tag, format_arch(c.arch), c.loss,
                      c.latency.decode_ms, c.latency.prefill_ms, static_cast<double>(c.parameters) / 1e6);
  };
  for (const auto& c : result.front) row(c, "");
  for (const auto& c : result.baselines) row(c, c.name + ": ");
  write_file_atomic((out / "evolve.md").string(), md);
  return result;
}

}  // namespace loom

// `loom search`: HAT-style architecture search over a search space (search/space.h) — train the
// weight-sharing supernet, extract sub-models, measure latency, evolve, and training-free proxies.
#include <cstdio>
#include <random>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "loom/cli/commands.h"
#include "loom/core/error.h"
#include "loom/core/runtime.h"
#include "loom/search/evolve.h"
#include "loom/search/latency.h"
#include "loom/search/proxies.h"
#include "loom/search/supernet.h"

namespace loom::cli {
namespace {

// --set KEY=VALUE: a base-recipe key (model., task., data., train.) or a search-file key.
struct Overrides {
  std::vector<std::string> search, recipe;
};
Overrides split_overrides(const std::vector<std::string>& all) {
  Overrides out;
  for (const auto& a : all) {
    const auto section = a.substr(0, a.find('.'));
    const bool recipe = section == "model" || section == "task" || section == "data" || section == "train";
    (recipe ? out.recipe : out.search).push_back(a);
  }
  return out;
}

const char* kSetHelp =
    "override a key: of the search file (evolve.population=20, space.d_model=[128,256]) or of its base recipe "
    "(train.steps=500) (repeatable)";

// An arch by name (largest, smallest) or as D_MODEL,MIXER:HEADS:D_FF,... (format_arch).
Arch arch_argument(const SearchSpace& space, const std::string& text) {
  if (text == "largest") return space.largest();
  if (text == "smallest") return space.smallest();
  return parse_arch(text, "--arch");
}

}  // namespace

void add_search(CLI::App& app, const GlobalOptions& global) {
  app.require_subcommand(1);

  auto* sn = app.add_subcommand("supernet", "train the weight-sharing supernet of a search space");
  struct SupernetArgs {
    std::string space;
    std::vector<std::string> set;
    SupernetOptions options;
  };
  auto s = std::make_shared<SupernetArgs>();
  sn->add_option("space", s->space, "search file (recipes/search/*.yaml)")->required();
  sn->add_option("--out", s->options.out_dir, "run directory")->required();
  sn->add_flag("--resume", s->options.resume, "continue the run in --out exactly");
  sn->add_option("--steps", s->options.steps, "total optimizer steps (overrides supernet.steps)")
      ->check(CLI::NonNegativeNumber);
  sn->add_option("--stop-after", s->options.stop_after, "stop with a checkpoint after N steps of this invocation")
      ->check(CLI::NonNegativeNumber);
  sn->add_option("--set", s->set, kSetHelp);
  sn->callback([s, &global] {
    const auto o = split_overrides(s->set);
    const SearchSpace space = load_search_space(s->space, o.search, o.recipe);
    configure_threads(global.threads);
    const auto r = train_supernet(space, s->options);
    if (r.interrupted) {
      spdlog::info("stopped at step {}; continue with the same command and --resume", r.steps);
      return;
    }
    std::printf("supernet %s: %lld steps in %.0f s; validation loss largest %.4f, smallest %.4f\n",
                r.checkpoint.c_str(), static_cast<long long>(r.steps), r.seconds, r.largest_loss, r.smallest_loss);
  });

  auto* ex = app.add_subcommand("extract", "write a sub-model of a supernet as an ordinary checkpoint");
  struct ExtractArgs {
    std::string supernet, arch, out;
  };
  auto e = std::make_shared<ExtractArgs>();
  ex->add_option("supernet", e->supernet, "supernet run or checkpoint directory")->required();
  ex->add_option("--arch", e->arch, "largest, smallest, or D_MODEL,MIXER:HEADS:D_FF,... (one per layer)")->required();
  ex->add_option("--out", e->out, "run directory of the checkpoint")->required();
  ex->callback([e] {
    const auto loaded = load_supernet(e->supernet);
    const Arch arch = arch_argument(loaded.net->space(), e->arch);
    const std::string dir = extract_submodel(loaded, arch, e->out);
    std::printf("%s: %s\n", dir.c_str(), format_arch(arch).c_str());
  });

  auto* lat = app.add_subcommand("latency", "measure sub-models' latency here and fit the latency predictor");
  struct LatencyArgs {
    std::string space, table;
    std::vector<std::string> set;
    int64_t n = 0;
  };
  auto l = std::make_shared<LatencyArgs>();
  lat->add_option("space", l->space, "search file")->required();
  lat->add_option("--table", l->table, "latency table (JSON) to read and extend")->required();
  lat->add_option("--n", l->n, "architectures to measure (default latency.samples)")->check(CLI::PositiveNumber);
  lat->add_option("--set", l->set, kSetHelp);
  lat->callback([l, &global] {
    const auto o = split_overrides(l->set);
    const SearchSpace space = load_search_space(l->space, o.search, o.recipe);
    configure_threads(global.threads);
    const int64_t n = l->n > 0 ? l->n : space.config().latency.samples;
    if (n < 5) fail("--n: the predictor needs at least 5 architectures (4 to fit, 1 held out), got {}", n);
    LatencyTable table(l->table, space);
    std::mt19937_64 rng(static_cast<uint64_t>(space.config().evolve.seed) + 991);
    std::vector<Arch> archs{space.largest(), space.smallest()};
    while (static_cast<int64_t>(archs.size()) < n) archs.push_back(space.sample(rng));
    std::vector<double> decode;
    for (size_t i = 0; i < archs.size(); ++i) {
      decode.push_back(table.get(archs[i]).decode_ms);
      if ((i + 1) % 10 == 0) table.save();
    }
    table.save();
    // Held out: every fifth architecture.
    std::vector<Arch> fit_a, test_a;
    std::vector<double> fit_y, test_y;
    for (size_t i = 0; i < archs.size(); ++i) {
      ((i % 5 == 4) ? test_a : fit_a).push_back(archs[i]);
      ((i % 5 == 4) ? test_y : fit_y).push_back(decode[i]);
    }
    LatencyPredictor predictor(space);
    predictor.fit(fit_a, fit_y);
    std::printf("%s: %zu architectures (%lld measured now) on %s\n", l->table.c_str(), archs.size(),
                static_cast<long long>(table.measured()), machine_name().c_str());
    std::printf("decode ms/token: largest %.3f, smallest %.3f\n", decode[0], decode[1]);
    std::printf("latency predictor: MAPE %.1f%% on %zu held-out architectures (%.1f%% on the %zu it was fitted on)\n",
                predictor.mape(test_a, test_y), test_a.size(), predictor.mape(fit_a, fit_y), fit_a.size());
  });

  auto* evo = app.add_subcommand("evolve", "evolutionary search over a trained supernet under a latency limit");
  struct EvolveArgs {
    std::string supernet;
    std::vector<std::string> set;
    EvolveOptions options;
  };
  auto v = std::make_shared<EvolveArgs>();
  evo->add_option("supernet", v->supernet, "supernet run or checkpoint directory")->required();
  evo->add_option("--out", v->options.out_dir, "output directory")->required();
  evo->add_option("--latency-table", v->options.latency_table,
                  "latency table to read and extend (default: OUT/latency.json)");
  evo->add_option("--baseline", v->options.baselines, "NAME=ARCH marked on the chart and scored alike (repeatable)");
  evo->add_option("--set", v->set, "override a search setting, e.g. evolve.latency_limit_ms=2 (repeatable)");
  evo->callback([v, &global] {
    configure_threads(global.threads);
    const auto loaded = load_supernet(v->supernet, v->set);
    if (v->options.latency_table.empty()) v->options.latency_table = v->options.out_dir + "/latency.json";
    const auto r = evolve(loaded, v->options);
    std::printf("%zu candidates in %.0f s (%lld latencies measured); winner %s: loss %.4f, decode %.3f ms/token\n",
                r.candidates.size(), r.seconds, static_cast<long long>(r.measured), format_arch(r.winner.arch).c_str(),
                r.winner.loss, r.winner.latency.decode_ms);
    for (const auto& b : r.baselines)
      std::printf("baseline %s %s: loss %.4f, decode %.3f ms/token\n", b.name.c_str(), format_arch(b.arch).c_str(),
                  b.loss, b.latency.decode_ms);
    std::printf("%s/{winner.yaml,candidates.json,pareto.svg,evolve.md}\n", v->options.out_dir.c_str());
  });

  auto* px =
      app.add_subcommand("proxies", "training-free proxies against briefly trained loss: Kendall tau, Spearman rho");
  struct ProxiesArgs {
    std::string space;
    std::vector<std::string> set;
    ProxiesOptions options;
  };
  auto p = std::make_shared<ProxiesArgs>();
  px->add_option("space", p->space, "search file")->required();
  px->add_option("--n", p->options.n, "architectures")->check(CLI::PositiveNumber);
  px->add_option("--out", p->options.out_dir, "output directory (a rerun continues it)")->required();
  px->add_option("--set", p->set, kSetHelp);
  px->callback([p, &global] {
    const auto o = split_overrides(p->set);
    const SearchSpace space = load_search_space(p->space, o.search, o.recipe);
    configure_threads(global.threads);
    const auto r = run_proxies(space, p->options);
    if (static_cast<int64_t>(r.rows.size()) < p->options.n) {
      spdlog::info("stopped after {} of {} architectures; run the same command again to continue", r.rows.size(),
                   p->options.n);
      return;
    }
    std::printf("%zu architectures (%lld trained now)\n| proxy | Kendall tau | Spearman rho |\n|---|---|---|\n",
                r.rows.size(), static_cast<long long>(r.trained_now));
    for (const auto& c : r.correlations)
      std::printf("| %s | %.3f | %.3f |\n", c.proxy.c_str(), c.kendall_tau, c.spearman_rho);
    std::printf("%s/{proxies.md,proxies.json,proxies.svg}\n", p->options.out_dir.c_str());
  });
}

}  // namespace loom::cli

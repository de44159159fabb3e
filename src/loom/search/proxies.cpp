#include "loom/search/proxies.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "loom/core/error.h"
#include "loom/core/progress.h"
#include "loom/io/fs.h"
#include "loom/nn/blocks.h"
#include "loom/search/chart.h"
#include "loom/train/trainer.h"

namespace loom {
namespace fs = std::filesystem;
namespace {

// Average ranks (1-based), ties sharing the mean of their ranks.
std::vector<double> ranks(const std::vector<double>& v) {
  std::vector<size_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> r(v.size());
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j + 1 < order.size() && v[order[j + 1]] == v[order[i]]) ++j;
    for (size_t k = i; k <= j; ++k) r[order[k]] = (static_cast<double>(i + j) / 2) + 1;
    i = j + 1;
  }
  return r;
}

double pearson(const std::vector<double>& a, const std::vector<double>& b) {
  const double n = static_cast<double>(a.size());
  const double ma = std::accumulate(a.begin(), a.end(), 0.0) / n, mb = std::accumulate(b.begin(), b.end(), 0.0) / n;
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  return saa > 0 && sbb > 0 ? sab / std::sqrt(saa * sbb) : std::nan("");
}

const char* const kProxyNames[] = {"parameters", "decoder_parameters", "flops", "hidden_covariance",
                                   "synflow",    "grad_norm"};

double proxy_value(const ProxyRow& r, const std::string& name) {
  if (name == "parameters") return r.parameters;
  if (name == "decoder_parameters") return r.decoder_parameters;
  if (name == "flops") return r.flops;
  if (name == "hidden_covariance") return r.hidden_covariance;
  if (name == "synflow") return r.synflow;
  return r.grad_norm;
}

nlohmann::json to_json(const ProxyRow& r, int64_t index) {
  nlohmann::json j{{"index", index}, {"arch", format_arch(r.arch)}, {"loss", r.loss}, {"seconds", r.seconds}};
  for (const char* name : kProxyNames) j[name] = proxy_value(r, name);
  return j;
}

ProxyRow from_json(const nlohmann::json& j) {
  ProxyRow r;
  r.arch = parse_arch(j.at("arch").get<std::string>(), "proxies.jsonl");
  r.parameters = j.at("parameters").get<double>();
  r.decoder_parameters = j.at("decoder_parameters").get<double>();
  r.flops = j.at("flops").get<double>();
  r.hidden_covariance = j.at("hidden_covariance").get<double>();
  r.synflow = j.at("synflow").get<double>();
  r.grad_norm = j.at("grad_norm").get<double>();
  r.loss = j.at("loss").get<double>();
  r.seconds = j.at("seconds").get<double>();
  return r;
}

}  // namespace

double kendall_tau(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size() || a.size() < 2) return std::nan("");
  double concordant = 0, discordant = 0, ties_a = 0, ties_b = 0;
  for (size_t i = 0; i < a.size(); ++i)
    for (size_t j = i + 1; j < a.size(); ++j) {
      const double da = a[i] - a[j], db = b[i] - b[j];
      if (da == 0 && db == 0) continue;
      if (da == 0) ++ties_a;
      else if (db == 0) ++ties_b;
      else if ((da > 0) == (db > 0)) ++concordant;
      else ++discordant;
    }
  const double denominator = std::sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b));
  return denominator > 0 ? (concordant - discordant) / denominator : std::nan("");
}

double spearman_rho(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size() || a.size() < 2) return std::nan("");
  return pearson(ranks(a), ranks(b));
}

ProxyRow compute_proxies(const SearchSpace& space, const Arch& arch, const torch::Tensor& inputs,
                         const torch::Tensor& targets) {
  const ModelConfig c = space.model_config(arch);
  ProxyRow row;
  row.arch = arch;
  torch::manual_seed(static_cast<uint64_t>(space.base().train.seed));
  Model model(c);
  // Parameters and FLOPs.
  const double t = static_cast<double>(c.max_seq_len);
  double matrix = 0;
  for (const auto& p : model->named_parameters()) {
    const double n = static_cast<double>(p.value().numel());
    row.parameters += n;
    const bool table = p.key() == "tok_emb.weight" || p.key() == "lm_head.weight" || p.key().rfind("pos.", 0) == 0;
    if (!table) row.decoder_parameters += n;
    if (p.value().dim() < 2 || p.key() == "tok_emb.weight" || p.key().rfind("pos.", 0) == 0) continue;
    const bool expert =
        p.key().find(".ffn.w_in") != std::string::npos || p.key().find(".ffn.w_out") != std::string::npos;
    matrix += expert && p.value().dim() == 3
                  ? n * static_cast<double>(c.moe.top_k) / static_cast<double>(c.moe.n_experts)
                  : n;
  }
  if (c.tie_embeddings) matrix += static_cast<double>(c.vocab_size * c.d_model);  // the output projection
  double scores = 0;
  for (int64_t i = 0; i < arch.n_layers(); ++i)
    if (block_info("mixer", arch.mixers[i], "proxies").has("scores"))
      scores += 4.0 * static_cast<double>(arch.heads[i] * space.head_dim()) * (t + 1) / 2;
  row.flops = 2 * matrix + scores;
  // Hidden covariance: one row per sequence (its final hidden states, flattened).
  {
    torch::NoGradGuard no_grad;
    model->eval();
    auto h = model->hidden(inputs).to(torch::kDouble).reshape({inputs.size(0), -1});
    h = h - h.mean(1, true);
    auto cov = h.matmul(h.t());
    auto d = cov.diagonal().clamp_min(1e-30).sqrt();
    auto r = cov / d.unsqueeze(0) / d.unsqueeze(1);
    auto eig = torch::linalg::eigvalsh(r, "L").clamp_min(0);
    const double k = 1e-5;
    row.hidden_covariance = -(torch::log(eig + k) + 1.0 / (eig + k)).sum().item<double>();
  }
  // Gradient norm of the training loss at init.
  {
    model->train();
    auto loss = torch::nn::functional::cross_entropy(model->forward(inputs).flatten(0, 1), targets.flatten(),
                                                     torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-1));
    loss.backward();
    double sq = 0;
    for (const auto& p : model->parameters())
      if (p.grad().defined()) sq += p.grad().pow(2).sum().item<double>();
    row.grad_norm = std::sqrt(sq);
  }
  // Synflow, in fp64 with |theta|.
  {
    model->zero_grad();
    model->eval();
    model->to(torch::kDouble);
    {
      torch::NoGradGuard no_grad;
      for (auto& p : model->parameters()) p.abs_();
    }
    auto out = model->forward(torch::zeros({1, inputs.size(1)}, torch::kLong)).sum();
    out.backward();
    double s = 0;
    for (const auto& p : model->parameters())
      if (p.grad().defined()) s += (p * p.grad()).sum().item<double>();
    row.synflow = s;
  }
  return row;
}

ProxiesResult run_proxies(const SearchSpace& space, const ProxiesOptions& options) {
  if (options.out_dir.empty()) fail("loom search proxies needs an output directory (--out)");
  if (options.n < 2) fail("loom search proxies needs at least 2 architectures (--n), got {}", options.n);
  fs::create_directories(options.out_dir);
  const fs::path out(options.out_dir);
  const std::string rows_path = (out / "proxies.jsonl").string();
  const auto& cfg = space.config().proxies;
  Recipe recipe = space.base();
  recipe.train.steps = cfg.steps;
  recipe.train.warmup_steps = std::min(recipe.train.warmup_steps, std::max<int64_t>(1, cfg.steps / 10));
  recipe.train.eval_batches = cfg.batches;
  RunData data = prepare_data(recipe);
  const bool bf16 = recipe.train.precision == "bf16";
  // The architectures: a pure function of the seed, so a rerun draws the same ones.
  std::mt19937_64 rng(static_cast<uint64_t>(recipe.train.seed) + 77);
  std::vector<Arch> archs;
  for (int64_t i = 0; i < options.n; ++i) archs.push_back(space.sample(rng));
  ProxiesResult result;
  // Rows of an earlier invocation, by index (a torn or repeated row is measured again or ignored).
  std::vector<std::optional<ProxyRow>> rows(static_cast<size_t>(options.n));
  if (fs::exists(rows_path)) {
    std::ifstream in(rows_path);
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      int64_t index = -1;
      ProxyRow row;
      try {
        const auto j = nlohmann::json::parse(line);
        index = j.at("index").get<int64_t>();
        row = from_json(j);
      } catch (const nlohmann::json::exception& e) {
        fail("{}: a bad line ({}); remove it or the file", rows_path, e.what());
      }
      if (index < 0 || index >= options.n) continue;
      if (row.arch != archs[static_cast<size_t>(index)])
        fail("{}: row {} holds another architecture than this search space draws ({}): another space's run?", rows_path,
             index, format_arch(row.arch));
      rows[static_cast<size_t>(index)] = row;
    }
  }
  std::ofstream rows_out(rows_path, std::ios::app);
  const Batch probe = data.sample(0, 0);
  StopSignals stop;
  const auto done = [&] {
    return std::count_if(rows.begin(), rows.end(), [](const auto& r) { return r.has_value(); });
  };
  Progress progress("proxies", done(), options.n, 1);
  for (int64_t i = 0; i < options.n; ++i) {
    if (rows[static_cast<size_t>(i)]) continue;
    if (stop.requested()) break;
    const auto t0 = std::chrono::steady_clock::now();
    ProxyRow row = compute_proxies(space, archs[static_cast<size_t>(i)], probe.inputs, probe.targets);
    recipe.model = space.model_config(row.arch);
    torch::manual_seed(static_cast<uint64_t>(recipe.train.seed));
    Model model(recipe.model);
    TrainStep step(model, recipe.train);
    for (int64_t s = 0; s < cfg.steps; ++s) step.run(s, [&](int64_t micro) { return data.sample(s, micro); });
    row.loss = evaluate_loss(model, data.valid, bf16);
    row.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    rows_out << to_json(row, i).dump() << "\n" << std::flush;
    rows[static_cast<size_t>(i)] = row;
    ++result.trained_now;
    progress.update(done(), fmt::format("{} loss {:.3f}", format_arch(row.arch), row.loss));
  }
  progress.finish();
  for (const auto& r : rows)
    if (r) result.rows.push_back(*r);
  if (static_cast<int64_t>(result.rows.size()) < options.n) return result;  // interrupted: rerun to continue

  std::vector<double> loss;
  for (const auto& r : result.rows) loss.push_back(r.loss);
  std::vector<ScatterChart> charts;
  std::string md = fmt::format(
      "{} architectures, each trained {} steps from scratch; rank correlation of each proxy with the validation "
      "loss (strongly negative = the proxy ranks architectures well)\n\n| proxy | Kendall tau | Spearman rho |\n"
      "|---|---|---|\n",
      result.rows.size(), cfg.steps);
  nlohmann::json j{{"architectures", result.rows.size()},
                   {"steps", cfg.steps},
                   {"correlations", nlohmann::json::array()},
                   {"rows", nlohmann::json::array()}};
  for (const char* name : kProxyNames) {
    std::vector<double> v;
    for (const auto& r : result.rows) v.push_back(proxy_value(r, name));
    ProxyCorrelation corr{name, kendall_tau(v, loss), spearman_rho(v, loss)};
    result.correlations.push_back(corr);
    md += fmt::format("| {} | {:.3f} | {:.3f} |\n", name, corr.kendall_tau, corr.spearman_rho);
    j["correlations"].push_back(
        {{"proxy", name}, {"kendall_tau", corr.kendall_tau}, {"spearman_rho", corr.spearman_rho}});
    ScatterChart chart;
    chart.title = fmt::format("{}: tau {:.2f}, rho {:.2f}", name, corr.kendall_tau, corr.spearman_rho);
    chart.x_label = name;
    chart.y_label = "validation loss";
    chart.width = 480, chart.height = 340;
    ScatterSeries s{"", "#1f77b4", {}, false, 3};
    for (size_t k = 0; k < v.size(); ++k) s.points.push_back({v[k], loss[k], ""});
    chart.series = {s};
    charts.push_back(chart);
  }
  for (size_t k = 0; k < result.rows.size(); ++k) j["rows"].push_back(to_json(result.rows[k], static_cast<int64_t>(k)));
  write_file_atomic((out / "proxies.md").string(), md);
  write_file_atomic((out / "proxies.json").string(), j.dump(1) + "\n");
  write_file_atomic((out / "proxies.svg").string(), scatter_grid_svg(charts, 3));
  return result;
}

}  // namespace loom

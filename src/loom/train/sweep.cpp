#include "loom/train/sweep.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <filesystem>
#include <iterator>
#include <limits>
#include <optional>
#include <set>
#include <sstream>
#include <string_view>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "loom/checkpoint/checkpoint.h"
#include "loom/core/log.h"
#include "loom/io/checkpoint_dir.h"
#include "loom/io/fs.h"
#include "loom/train/trainer.h"

namespace loom {
namespace fs = std::filesystem;

namespace {

constexpr int kSweepFormat = 1;

// Splits at `separator` outside [...] and {...}, so YAML list values keep their commas.
std::vector<std::string> split_top_level(std::string_view text, char separator) {
  std::vector<std::string> parts(1);
  int depth = 0;
  for (char c : text) {
    if (c == '[' || c == '{') ++depth;
    if (c == ']' || c == '}') --depth;
    if (c == separator && depth <= 0) parts.emplace_back();
    else parts.back() += c;
  }
  return parts;
}

// All of `text` as a finite number (from_chars: no locale, no leading spaces, no trailing junk).
std::optional<double> parse_number(std::string_view text) {
  double value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || !std::isfinite(value)) return std::nullopt;
  return value;
}

[[noreturn]] void bad_grid(const std::string& text, const std::string& why) {
  fail(
      "--lr '{}': {} (expected A:B:N, N log-spaced learning rates from A to B, or a comma list "
      "such as 1e-3,3e-3)",
      text, why);
}

double parse_lr(const std::string& grid, const std::string& item) {
  const auto value = parse_number(item);
  if (!value) bad_grid(grid, fmt::format("'{}' is not a number", item));
  if (*value <= 0) bad_grid(grid, fmt::format("learning rates must be positive, got {}", item));
  return *value;
}

// "  key  = value" -> "key".
std::string override_key(const std::string& assignment) {
  std::string key = assignment.substr(0, assignment.find('='));
  key.erase(0, key.find_first_not_of(" \t"));
  key.erase(key.find_last_not_of(" \t") + 1);
  return key;
}

std::string lr_text(double lr) { return fmt::format("{:.3g}", lr); }

std::string list_text(const std::vector<double>& values) {
  std::string text;
  for (double v : values) text += (text.empty() ? "" : ",") + lr_text(v);
  return text;
}

// A sweep's identity, kept in DIR/sweep.json: the grid, the variants and their resolved recipes.
nlohmann::json describe(const std::vector<double>& lrs, const std::vector<SweepVariant>& variants,
                        const std::vector<Recipe>& recipes) {
  nlohmann::json j{{"format", kSweepFormat}, {"lrs", lrs}, {"variants", nlohmann::json::array()}};
  for (size_t v = 0; v < variants.size(); ++v)
    j["variants"].push_back(
        {{"name", variants[v].name}, {"overrides", variants[v].overrides}, {"recipe", recipe_to_yaml(recipes[v])}});
  return j;
}

// The first line where two recipes' YAML differs, without indentation and key documentation,
// for an error message: "'steps: 40' then, 'steps: 5' now".
std::string first_difference(const std::string& a, const std::string& b) {
  auto bare = [](std::string line) {
    line.erase(0, line.find_first_not_of(' '));
    const auto comment = line.find("  # ");
    return comment == std::string::npos ? line : line.substr(0, comment);
  };
  std::istringstream sa(a), sb(b);
  std::string la, lb;
  while (true) {
    const bool more_a = static_cast<bool>(std::getline(sa, la));
    const bool more_b = static_cast<bool>(std::getline(sb, lb));
    if (!more_a && !more_b) return "none";
    if (!more_a) la.clear();
    if (!more_b) lb.clear();
    if (la != lb) return fmt::format("'{}' then, '{}' now", bare(la), bare(lb));
  }
}

// Refuses a directory that holds another sweep, so results of different grids, variants or
// recipes never mix (a resumed cell must continue the run it started). Recipes are compared by
// their values, not their text: a loom whose key documentation changed still continues.
void check_same_sweep(const std::string& path, const nlohmann::json& now) {
  nlohmann::json then;
  std::vector<double> then_lrs;
  std::vector<std::string> then_names, then_recipes;
  try {
    then = nlohmann::json::parse(read_file(path));
    if (then.at("format").get<int>() != kSweepFormat)
      fail("{}: sweep format {} is not supported (this loom writes {})", path, then.at("format").get<int>(),
           kSweepFormat);
    then_lrs = then.at("lrs").get<std::vector<double>>();
    for (const auto& v : then.at("variants")) {
      then_names.push_back(v.at("name").get<std::string>());
      then_recipes.push_back(v.at("recipe").get<std::string>());
    }
  } catch (const nlohmann::json::exception& e) {
    fail("{}: corrupt sweep description ({})", path, e.what());
  }
  const std::string advice = "re-run with the original arguments, or choose another --out";
  const auto now_lrs = now.at("lrs").get<std::vector<double>>();
  if (then_lrs != now_lrs)
    fail("{} describes another sweep: its learning rates are {}, now {}; {}", path, list_text(then_lrs),
         list_text(now_lrs), advice);
  std::vector<std::string> now_names;
  for (const auto& v : now.at("variants")) now_names.push_back(v.at("name").get<std::string>());
  if (then_names != now_names)
    fail("{} describes another sweep: its variants are {}, now {}; {}", path, fmt::join(then_names, ","),
         fmt::join(now_names, ","), advice);
  for (size_t v = 0; v < now_names.size(); ++v) {
    const std::string then_yaml = recipe_to_yaml(parse_recipe(then_recipes[v], path));
    const std::string now_yaml = now.at("variants")[v].at("recipe").get<std::string>();
    if (then_yaml != now_yaml)
      fail(
          "{} describes another sweep: variant '{}' had another recipe (the recipe file, --set, --steps or "
          "--variant changed; first difference: {}); {}",
          path, now_names[v], first_difference(then_yaml, now_yaml), advice);
  }
}

nlohmann::json cell_json(const SweepCell& cell) {
  return {{"variant", cell.variant},
          {"lr", cell.lr},
          {"final_loss", cell.diverged ? nlohmann::json() : nlohmann::json(cell.final_loss)},
          {"diverged", cell.diverged},
          {"seconds", cell.seconds}};
}

SweepCell read_cell(const std::string& path) {
  try {
    const auto j = nlohmann::json::parse(read_file(path));
    SweepCell cell;
    cell.variant = j.at("variant").get<std::string>();
    cell.lr = j.at("lr").get<double>();
    cell.diverged = j.at("diverged").get<bool>();
    if (!cell.diverged) cell.final_loss = j.at("final_loss").get<double>();
    cell.seconds = j.at("seconds").get<double>();
    return cell;
  } catch (const nlohmann::json::exception& e) {
    fail("{}: corrupt cell result ({}); delete it to retrain the cell", path, e.what());
  }
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Trains one cell into `dir`, or continues it: a cell with checkpoints but no result.json was
// interrupted (Ctrl-C, a crash, a killed job) and is resumed exactly from its newest checkpoint,
// or just recorded if that checkpoint is already the last step. nullopt when stopped by a signal.
std::optional<SweepCell> train_cell(const Recipe& recipe, SweepCell cell, const std::string& dir) {
  TrainOptions options;
  options.out_dir = dir;
  double seconds_before = 0;
  if (!list_checkpoints(dir).empty()) {
    const auto loaded = load_checkpoint(dir);
    if (recipe_to_yaml(loaded.recipe) != recipe_to_yaml(recipe))
      fail(
          "{}: its checkpoint {} was trained with another recipe than this sweep's cell (first difference: {}); "
          "delete the directory to retrain the cell",
          dir, loaded.dir, first_difference(recipe_to_yaml(loaded.recipe), recipe_to_yaml(recipe)));
    seconds_before = loaded.state.elapsed_seconds;
    if (loaded.state.step >= recipe.train.steps) {
      // Finished, but stopped before its result.json was written: the final validation loss is
      // in the final checkpoint.
      cell.final_loss = loaded.state.valid_loss;
      cell.diverged = !std::isfinite(cell.final_loss);
      cell.seconds = seconds_before;
      logger().info("{}: finished before its result was written: recorded from {}", dir, loaded.dir);
      return cell;
    }
    options.resume = dir;
    logger().info("{}: resuming the interrupted run at step {}", dir, loaded.state.step);
  }
  const auto start = std::chrono::steady_clock::now();
  try {
    const TrainResult result = train(recipe, options);
    if (result.interrupted) return std::nullopt;
    cell.final_loss = result.valid_loss;
  } catch (const TrainingDiverged& e) {
    logger().warn("{}: diverged: {}", dir, e.what());
    cell.final_loss = std::nan("");
  }
  cell.diverged = !std::isfinite(cell.final_loss);  // also a validation loss that overflowed
  if (cell.diverged) cell.final_loss = std::nan("");
  cell.seconds = seconds_before + seconds_since(start);
  return cell;
}

struct Finite {
  double best_loss = std::nan("");
  double best_lr = std::nan("");
};

Finite best_of(const std::vector<double>& lrs, const VariantResults& variant) {
  Finite best;
  for (size_t i = 0; i < variant.cells.size(); ++i) {
    const double loss = variant.cells[i].final_loss;
    if (std::isfinite(loss) && (std::isnan(best.best_loss) || loss < best.best_loss)) {
      best.best_loss = loss;
      best.best_lr = lrs[i];
    }
  }
  return best;
}

std::vector<double> losses_of(const VariantResults& variant) {
  std::vector<double> losses;
  for (const auto& cell : variant.cells) losses.push_back(cell.final_loss);
  return losses;
}

}  // namespace

std::vector<double> parse_lr_grid(const std::string& text) {
  if (text.empty()) bad_grid(text, "no learning rates");
  std::vector<double> lrs;
  if (text.find(':') != std::string::npos) {
    const auto parts = split_top_level(text, ':');
    if (parts.size() != 3) bad_grid(text, "a range has exactly two ':'");
    const double first = parse_lr(text, parts[0]);
    const double last = parse_lr(text, parts[1]);
    int64_t n = 0;
    const auto& count = parts[2];
    const auto [end, ec] = std::from_chars(count.data(), count.data() + count.size(), n);
    if (ec != std::errc() || end != count.data() + count.size() || n < 1)
      bad_grid(text, fmt::format("N must be a whole number >= 1, got '{}'", count));
    if (first > last) bad_grid(text, "A must not exceed B");
    if (n == 1 && first != last) bad_grid(text, "a single learning rate (N = 1) needs A == B");
    if (n > 1 && first == last) bad_grid(text, fmt::format("A == B gives {} equal learning rates; use N = 1", n));
    for (int64_t i = 0; i < n; ++i) {
      // Ends exact; between them, equal ratios: lr_i = A * (B/A)^(i/(N-1)).
      const double t = n == 1 ? 0.0 : static_cast<double>(i) / static_cast<double>(n - 1);
      lrs.push_back(i == 0       ? first
                    : i == n - 1 ? last
                                 : std::exp(std::log(first) + t * (std::log(last) - std::log(first))));
    }
    return lrs;
  }
  for (const auto& item : split_top_level(text, ',')) {
    if (item.empty()) bad_grid(text, "an empty item (a stray comma?)");
    lrs.push_back(parse_lr(text, item));
    if (lrs.size() > 1 && !(lrs.back() > lrs[lrs.size() - 2]))
      bad_grid(text, "listed learning rates must increase strictly");
  }
  return lrs;
}

SweepVariant parse_variant(const std::string& text) {
  const auto eq = text.find('=');
  SweepVariant variant;
  variant.name = text.substr(0, eq);
  if (variant.name.empty()) fail("--variant '{}': the name is empty (expected NAME=section.key=value,...)", text);
  const bool allowed = std::all_of(variant.name.begin(), variant.name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-';
  });
  if (!allowed)
    fail("--variant '{}': the name '{}' may hold only letters, digits, '_', '.' and '-' (it names a directory)", text,
         variant.name);
  // The name is a directory: "." and ".." would land outside DIR/<variant>/.
  if (variant.name.find_first_not_of('.') == std::string::npos)
    fail("--variant '{}': '{}' is not usable as a directory name", text, variant.name);
  if (eq == std::string::npos || eq + 1 == text.size()) return variant;
  for (const auto& item : split_top_level(std::string_view(text).substr(eq + 1), ',')) {
    if (item.empty()) fail("--variant '{}': an empty override (a stray comma?)", text);
    const auto item_eq = item.find('=');
    if (item_eq == std::string::npos || item_eq == 0) fail("--variant '{}': '{}' is not section.key=value", text, item);
    variant.overrides.push_back(item);
  }
  return variant;
}

std::string sweep_cell_dir(const std::string& variant, size_t index, double lr) {
  return fmt::format("{}/lr-{}-{}", variant, index, lr_text(lr));
}

double lr_sensitivity(const std::vector<double>& final_losses, double initial_loss) {
  std::vector<double> clipped;
  bool any_trained = false;
  for (double loss : final_losses) {
    any_trained = any_trained || std::isfinite(loss);
    clipped.push_back(std::isfinite(loss) ? std::min(loss, initial_loss) : initial_loss);
  }
  if (!any_trained) return std::nan("");
  const double best = *std::min_element(clipped.begin(), clipped.end());
  double sum = 0;
  for (double loss : clipped) sum += loss - best;
  return sum / static_cast<double>(clipped.size());
}

SweepResults run_sweep(const SweepOptions& options) {
  if (options.lrs.empty()) fail("the sweep has no learning rates");
  if (options.out_dir.empty()) fail("the sweep needs an output directory (--out)");
  const std::vector<SweepVariant> variants =
      options.variants.empty() ? std::vector<SweepVariant>{{"base", {}}} : options.variants;
  std::set<std::string> names;
  for (const auto& variant : variants)
    if (!names.insert(variant.name).second) fail("variant '{}' is given twice", variant.name);

  // Every recipe first: a bad key in the last variant fails before the first cell trains.
  std::vector<Recipe> recipes;
  for (const auto& variant : variants) {
    std::vector<std::string> overrides = options.overrides;
    overrides.insert(overrides.end(), variant.overrides.begin(), variant.overrides.end());
    for (const auto& assignment : overrides)
      if (override_key(assignment) == "train.lr")
        fail("'{}': the sweep sets train.lr from --lr; drop the override", assignment);
    try {
      recipes.push_back(load_recipe(options.recipe, overrides));
      if (options.steps >= 0) recipes.back().train.steps = options.steps;
      recipes.back().validate(options.recipe);
    } catch (const Error& e) {
      if (options.variants.empty()) throw;
      fail("variant '{}': {}", variant.name, e.what());
    }
  }

  fs::create_directories(options.out_dir);
  const std::string description_path = (fs::path(options.out_dir) / "sweep.json").string();
  const nlohmann::json description = describe(options.lrs, variants, recipes);
  if (fs::exists(description_path)) check_same_sweep(description_path, description);
  else write_file_atomic(description_path, description.dump(2) + "\n");

  SweepResults results;
  results.lrs = options.lrs;
  const size_t total = variants.size() * options.lrs.size();
  size_t done = 0;
  for (size_t v = 0; v < variants.size(); ++v) {
    VariantResults variant;
    variant.name = variants[v].name;
    // A freshly initialized model (small-std weights) predicts nearly uniformly: its loss is
    // ln(vocab_size). Using this instead of a measured step-0 loss keeps the sensitivity a
    // function of the final losses alone, as in Wortsman et al. 2023.
    variant.initial_loss = std::log(static_cast<double>(recipes[v].model.vocab_size));
    for (size_t i = 0; i < options.lrs.size(); ++i) {
      ++done;
      const double lr = options.lrs[i];
      const std::string dir = (fs::path(options.out_dir) / sweep_cell_dir(variant.name, i, lr)).string();
      const std::string result_path = dir + "/result.json";
      if (fs::exists(result_path)) {
        SweepCell cell = read_cell(result_path);
        if (cell.variant != variant.name || cell.lr != lr)
          fail("{}: holds variant '{}' at lr {}, not '{}' at {}; delete it to retrain the cell", result_path,
               cell.variant, cell.lr, variant.name, lr);
        logger().info("sweep {}/{}: {} lr {}: done before", done, total, variant.name, lr_text(lr));
        variant.cells.push_back(cell);
        ++results.reused;
        continue;
      }
      logger().info("sweep {}/{}: {} lr {}", done, total, variant.name, lr_text(lr));
      Recipe recipe = recipes[v];
      recipe.train.lr = lr;
      SweepCell cell;
      cell.variant = variant.name;
      cell.lr = lr;
      const auto trained = train_cell(recipe, cell, dir);
      if (!trained) {
        results.interrupted = true;
        results.variants.push_back(variant);
        return results;
      }
      fs::create_directories(dir);
      write_file_atomic(result_path, cell_json(*trained).dump(2) + "\n");
      variant.cells.push_back(*trained);
      ++results.trained;
    }
    results.variants.push_back(variant);
  }

  write_file_atomic((fs::path(options.out_dir) / "sweep.md").string(), sweep_markdown(results));
  write_file_atomic((fs::path(options.out_dir) / "results.json").string(), sweep_results_json(results));
  write_file_atomic((fs::path(options.out_dir) / "sweep.svg").string(), sweep_svg(results));
  return results;
}

std::string sweep_markdown(const SweepResults& results) {
  std::string out = "| variant |";
  std::string rule = "|---|";
  for (double lr : results.lrs) {
    out += " " + lr_text(lr) + " |";
    rule += "---:|";
  }
  out += " best LR | best loss | LR sensitivity |\n" + rule + "---:|---:|---:|\n";
  std::set<std::string> initial_losses;
  for (const auto& variant : results.variants) {
    out += "| " + variant.name + " |";
    for (const auto& cell : variant.cells)
      out += " " +
             (cell.diverged                    ? std::string("diverged")
              : std::isfinite(cell.final_loss) ? fmt::format("{:.3f}", cell.final_loss)
                                               : std::string("-")) +
             " |";
    const Finite best = best_of(results.lrs, variant);
    const double sensitivity = lr_sensitivity(losses_of(variant), variant.initial_loss);
    auto or_na = [](double value, const std::string& text) { return std::isfinite(value) ? text : std::string("n/a"); };
    out += fmt::format(" {} | {} | {} |\n", or_na(best.best_lr, lr_text(best.best_lr)),
                       or_na(best.best_loss, fmt::format("{:.3f}", best.best_loss)),
                       or_na(sensitivity, fmt::format("{:.3f}", sensitivity)));
    initial_losses.insert(fmt::format("{:.3f}", variant.initial_loss));
  }
  out += fmt::format(
      "\nFinal validation loss in nats/token. LR sensitivity (Wortsman et al. 2023): the mean over the grid of "
      "min(loss, L0) - the best such value, a diverged run counting as L0 = ln(model.vocab_size) = {}; lower is "
      "more robust.\n",
      fmt::join(initial_losses, ", "));
  return out;
}

std::string sweep_results_json(const SweepResults& results) {
  nlohmann::json j{{"format", kSweepFormat}, {"lrs", results.lrs}, {"variants", nlohmann::json::array()}};
  auto number = [](double value) { return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(); };
  for (const auto& variant : results.variants) {
    const Finite best = best_of(results.lrs, variant);
    nlohmann::json cells = nlohmann::json::array();
    for (const auto& cell : variant.cells) cells.push_back(cell_json(cell));
    j["variants"].push_back({{"name", variant.name},
                             {"initial_loss", variant.initial_loss},
                             {"lr_sensitivity", number(lr_sensitivity(losses_of(variant), variant.initial_loss))},
                             {"best_lr", number(best.best_lr)},
                             {"best_loss", number(best.best_loss)},
                             {"cells", cells}});
  }
  return j.dump(2) + "\n";
}

// Hand-written SVG: the plot area, decade ticks on a log x axis, "nice" ticks on y, one
// polyline with markers per variant, a legend on the right. Variant names need no escaping:
// parse_variant allows only [A-Za-z0-9_.-].
std::string sweep_svg(const SweepResults& results) {
  constexpr double kWidth = 780, kHeight = 460;
  constexpr double kLeft = 76, kRight = 600, kTop = 24, kBottom = 400;  // the plot area
  constexpr const char* kColours[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                      "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

  // x: whole decades around the grid.
  const auto [lr_min, lr_max] = std::minmax_element(results.lrs.begin(), results.lrs.end());
  double x0 = results.lrs.empty() ? -4 : std::floor(std::log10(*lr_min) + 1e-9);
  double x1 = results.lrs.empty() ? 0 : std::ceil(std::log10(*lr_max) - 1e-9);
  if (x1 <= x0) {
    x0 -= 1;
    x1 += 1;
  }
  // y: from the best loss to the worst that still learned something (at most L0), with margins;
  // worse losses are drawn hollow on the top edge, diverged runs there too, as an "x".
  constexpr double kInf = std::numeric_limits<double>::infinity();
  double lowest = kInf, highest = -kInf, initial = -kInf;
  for (const auto& variant : results.variants) {
    initial = std::max(initial, variant.initial_loss);
    for (const auto& cell : variant.cells) {
      if (!std::isfinite(cell.final_loss)) continue;
      lowest = std::min(lowest, cell.final_loss);
      highest = std::max(highest, cell.final_loss);
    }
  }
  if (!std::isfinite(initial)) initial = 1;
  if (!std::isfinite(lowest)) lowest = highest = initial;
  highest = std::max(lowest, std::min(highest, initial));
  const double margin = std::max(0.05 * (highest - lowest), 0.05);
  const double y0 = lowest - margin, y1 = highest + margin;

  // A little room on both sides, so that points on a decade are not drawn on the frame.
  const double x_pad = 0.03 * (x1 - x0);
  auto x_of = [&](double lr) {
    return kLeft + (std::log10(lr) - x0 + x_pad) / (x1 - x0 + 2 * x_pad) * (kRight - kLeft);
  };
  auto y_of = [&](double loss) { return kBottom - (std::clamp(loss, y0, y1) - y0) / (y1 - y0) * (kBottom - kTop); };

  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n"
      "<title>LR sweep: final validation loss against learning rate</title>\n"
      "<rect width=\"{0}\" height=\"{1}\" fill=\"white\"/>\n",
      kWidth, kHeight);
  // Decade grid lines and labels (10^k), minor ticks at 2..9 x 10^k.
  for (int k = static_cast<int>(x0); k <= static_cast<int>(x1); ++k) {
    const double x = x_of(std::pow(10.0, k));
    svg +=
        fmt::format("<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"#ddd\"/>\n", x, kTop, kBottom);
    svg += fmt::format(
        "<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">10<tspan dy=\"-6\" font-size=\"9\">{}</tspan></text>\n", x,
        kBottom + 18, k);
    for (int m = 2; m <= 9 && k < static_cast<int>(x1); ++m) {
      const double xm = x_of(m * std::pow(10.0, k));
      svg += fmt::format("<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"#333\"/>\n", xm, kBottom,
                         kBottom + 4);
    }
  }
  // y ticks every 1, 2 or 5 x 10^k, about six of them.
  const double raw_step = (y1 - y0) / 6;
  const double decade = std::pow(10.0, std::floor(std::log10(raw_step)));
  const double step = raw_step <= decade       ? decade
                      : raw_step <= 2 * decade ? 2 * decade
                      : raw_step <= 5 * decade ? 5 * decade
                                               : 10 * decade;
  const int decimals = std::max(0, -static_cast<int>(std::floor(std::log10(step))));
  for (double tick = std::ceil(y0 / step) * step; tick <= y1 + 1e-12; tick += step) {
    const double y = y_of(tick);
    svg +=
        fmt::format("<line x1=\"{1}\" y1=\"{0:.1f}\" x2=\"{2}\" y2=\"{0:.1f}\" stroke=\"#ddd\"/>\n", y, kLeft, kRight);
    svg += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">{:.{}f}</text>\n", kLeft - 6, y + 4, tick,
                       decimals);
  }
  // The initial loss, when it is inside the range.
  if (initial >= y0 && initial <= y1)
    svg += fmt::format(
        "<line x1=\"{1}\" y1=\"{0:.1f}\" x2=\"{2}\" y2=\"{0:.1f}\" stroke=\"#888\" stroke-dasharray=\"4 3\"/>\n"
        "<text x=\"{2}\" y=\"{3:.1f}\" text-anchor=\"end\" fill=\"#666\" font-size=\"10\">initial loss "
        "ln(vocab_size)</text>\n",
        y_of(initial), kLeft, kRight - 4, y_of(initial) + 12);
  svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#333\"/>\n", kLeft,
                     kTop, kRight - kLeft, kBottom - kTop);
  svg += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">learning rate</text>\n", (kLeft + kRight) / 2,
                     kBottom + 44);
  svg += fmt::format(
      "<text transform=\"translate({},{:.1f}) rotate(-90)\" text-anchor=\"middle\">final validation loss</text>\n", 24,
      (kTop + kBottom) / 2);

  bool above = false;  // some finite loss lies above the range: drawn hollow on the top edge
  for (size_t v = 0; v < results.variants.size(); ++v) {
    const auto& variant = results.variants[v];
    const char* colour = kColours[v % std::size(kColours)];
    std::string points, markers;
    for (size_t i = 0; i < variant.cells.size() && i < results.lrs.size(); ++i) {
      const auto& cell = variant.cells[i];
      if (!cell.diverged && !std::isfinite(cell.final_loss)) continue;  // not run yet
      const double x = x_of(results.lrs[i]);
      const double y = cell.diverged ? kTop : y_of(cell.final_loss);
      points += fmt::format("{}{:.1f},{:.1f}", points.empty() ? "" : " ", x, y);
      markers += cell.diverged
                     ? fmt::format(
                           "<path d=\"M{0:.1f},{1:.1f} L{2:.1f},{3:.1f} M{0:.1f},{3:.1f} L{2:.1f},{1:.1f}\" "
                           "stroke=\"{4}\" stroke-width=\"2\"/>\n",
                           x - 5, y - 5, x + 5, y + 5, colour)
                     : fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3.5\" fill=\"{}\" stroke=\"{}\"/>\n", x, y,
                                   cell.final_loss > y1 ? "white" : colour, colour);
      above = above || (!cell.diverged && cell.final_loss > y1);
    }
    svg += fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>\n", colour, points);
    svg += markers;
    const double ly = kTop + 12 + 20 * static_cast<double>(v);
    svg += fmt::format(
        "<line x1=\"{}\" y1=\"{:.1f}\" x2=\"{}\" y2=\"{:.1f}\" stroke=\"{}\" stroke-width=\"2\"/>\n"
        "<circle cx=\"{}\" cy=\"{:.1f}\" r=\"3.5\" fill=\"{}\"/>\n"
        "<text x=\"{}\" y=\"{:.1f}\">{}</text>\n",
        kRight + 16, ly, kRight + 40, ly, colour, kRight + 28, ly, colour, kRight + 48, ly + 4, variant.name);
  }
  const double ly = kTop + 12 + 20 * static_cast<double>(results.variants.size());
  svg += fmt::format(
      "<path d=\"M{0},{1:.1f} L{2},{3:.1f} M{0},{3:.1f} L{2},{1:.1f}\" stroke=\"#333\" stroke-width=\"2\"/>\n"
      "<text x=\"{4}\" y=\"{5:.1f}\">diverged</text>\n",
      kRight + 23, ly - 5, kRight + 33, ly + 5, kRight + 48, ly + 4);
  if (above)
    svg += fmt::format(
        "<circle cx=\"{}\" cy=\"{:.1f}\" r=\"3.5\" fill=\"white\" stroke=\"#333\"/>\n"
        "<text x=\"{}\" y=\"{:.1f}\">above the range</text>\n",
        kRight + 28, ly + 20, kRight + 48, ly + 24);
  svg += "</svg>\n";
  return svg;
}

}  // namespace loom

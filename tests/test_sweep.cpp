// LR sweeps: grid and variant parsing, the LR sensitivity on hand-computed numbers, the table and
// the SVG chart, and an end-to-end sweep of a tiny model that a re-run continues instead of
// retraining.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>

#include <nlohmann/json.hpp>

#include "loom/io/fs.h"
#include "loom/train/sweep.h"
#include "loom/train/trainer.h"
#include "tiny_run.h"

using namespace loom;
namespace fs = std::filesystem;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const loom::Error& e) {
    return e.what();
  }
  return "no error";
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

size_t count(const std::string& text, const std::string& part) {
  size_t n = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

// Every element closed in order: <a ...>...</a> or <a .../>; no text outside the root.
bool balanced_xml(const std::string& text) {
  std::vector<std::string> open;
  const std::regex tag(R"(<(/?)([A-Za-z][A-Za-z0-9_-]*)[^<>]*?(/?)>)");
  size_t elements = 0;
  for (std::sregex_iterator it(text.begin(), text.end(), tag), end; it != end; ++it) {
    const auto& m = *it;
    if (open.empty() && elements > 0) return false;  // a second root
    ++elements;
    if (m[1].length() > 0) {
      if (open.empty() || open.back() != m[2].str()) return false;
      open.pop_back();
    } else if (m[3].length() == 0) {
      open.push_back(m[2].str());
    }
  }
  return elements > 0 && open.empty();
}

SweepResults three_variant_results() {
  SweepResults r;
  r.lrs = {1e-3, 1e-2, 1e-1};
  auto variant = [&](const std::string& name, std::vector<double> losses) {
    VariantResults v;
    v.name = name;
    v.initial_loss = std::log(300.0);
    for (size_t i = 0; i < losses.size(); ++i)
      v.cells.push_back({name, r.lrs[i], losses[i], std::isnan(losses[i]), 1.0});
    return v;
  };
  const double nan = std::nan("");
  r.variants = {variant("base", {4.0, 3.5, nan}), variant("qk_norm", {4.1, 3.4, 3.9}),
                variant("z.loss-1", {4.2, nan, nan})};
  return r;
}

}  // namespace

TEST(SweepGrid, LogSpacedRangeHasExactEndsAndAConstantRatio) {
  const auto lrs = parse_lr_grid("3e-4:3e-1:7");
  ASSERT_EQ(lrs.size(), 7u);
  EXPECT_NEAR(lrs.front(), 3e-4, 3e-4 * 1e-12);
  EXPECT_NEAR(lrs.back(), 3e-1, 3e-1 * 1e-12);
  const double ratio = std::pow(1000.0, 1.0 / 6);  // (3e-1 / 3e-4)^(1/6)
  for (size_t i = 1; i < lrs.size(); ++i) EXPECT_NEAR(lrs[i] / lrs[i - 1], ratio, 1e-12) << i;
  EXPECT_NEAR(lrs[3], 3e-4 * std::pow(1000.0, 0.5), 1e-15);

  EXPECT_EQ(parse_lr_grid("1e-3:1e-3:1"), std::vector<double>{1e-3});
  EXPECT_EQ(parse_lr_grid("1e-3:1e-2:2"), (std::vector<double>{1e-3, 1e-2}));
}

TEST(SweepGrid, CommaListsAndSingleValues) {
  EXPECT_EQ(parse_lr_grid("1e-3,3e-3"), (std::vector<double>{1e-3, 3e-3}));
  EXPECT_EQ(parse_lr_grid("0.01"), std::vector<double>{0.01});
}

TEST(SweepGrid, BadGridsAreOneErrorNamingTheText) {
  for (const auto& [text, why] :
       std::vector<std::pair<std::string, std::string>>{{"3e-1:3e-4:7", "A must not exceed B"},
                                                        {"1e-3:1e-2:1", "N = 1"},
                                                        {"1e-3:1e-3:3", "use N = 1"},
                                                        {"1e-3:1e-2:0", "N must be a whole number"},
                                                        {"1e-3:1e-2:2.5", "N must be a whole number"},
                                                        {"1e-3:1e-2", "two ':'"},
                                                        {"1e-3:1e-2:3:4", "two ':'"},
                                                        {"0:1e-2:3", "positive"},
                                                        {"-1e-3,1e-2", "positive"},
                                                        {"abc:1:3", "'abc' is not a number"},
                                                        {"1e-3,,1e-2", "empty item"},
                                                        {"1e-2,1e-3", "increase"},
                                                        {"1e-3,1e-3", "increase"},
                                                        {"nan", "not a number"},
                                                        {"inf", "not a number"},
                                                        {"", "no learning rates"}}) {
    const std::string e = error_of([&] { parse_lr_grid(text); });
    EXPECT_TRUE(has(e, "--lr '" + text + "'") && has(e, why)) << text << ": " << e;
  }
}

TEST(SweepVariant, ParsesNameAndOverrides) {
  auto v = parse_variant("qknorm_zloss=model.qk_norm=true,train.z_loss=1e-4");
  EXPECT_EQ(v.name, "qknorm_zloss");
  EXPECT_EQ(v.overrides, (std::vector<std::string>{"model.qk_norm=true", "train.z_loss=1e-4"}));
  // Commas inside a YAML list stay in their override.
  v = parse_variant("hybrid-1.5=model.layers=[mamba,attention],model.n_layers=2");
  EXPECT_EQ(v.name, "hybrid-1.5");
  EXPECT_EQ(v.overrides, (std::vector<std::string>{"model.layers=[mamba,attention]", "model.n_layers=2"}));
  EXPECT_TRUE(parse_variant("plain").overrides.empty());
  EXPECT_TRUE(parse_variant("plain=").overrides.empty());
}

TEST(SweepVariant, BadVariantsAreErrors) {
  for (const auto& [text, why] :
       std::vector<std::pair<std::string, std::string>>{{"=model.qk_norm=true", "name is empty"},
                                                        {"a b=model.qk_norm=true", "only letters"},
                                                        {"x/y=model.qk_norm=true", "only letters"},
                                                        {"..=model.qk_norm=true", "directory name"},
                                                        {"v=model.qk_norm", "'model.qk_norm' is not section.key=value"},
                                                        {"v=model.qk_norm=true,", "empty override"},
                                                        {"v==true", "is not section.key=value"}}) {
    const std::string e = error_of([&] { parse_variant(text); });
    EXPECT_TRUE(has(e, "--variant '" + text + "'") && has(e, why)) << text << ": " << e;
  }
}

TEST(SweepSensitivity, HandComputedWithADivergedRun) {
  // Clipped at L0 = 5: {3, 2.5, 5 (diverged), 5 (6 is worse than L0)}; best 2.5;
  // differences {0.5, 0, 2.5, 2.5}: mean 5.5 / 4 = 1.375.
  EXPECT_DOUBLE_EQ(lr_sensitivity({3.0, 2.5, std::nan(""), 6.0}, 5.0), 1.375);
  EXPECT_DOUBLE_EQ(lr_sensitivity({3.0, 3.0}, 5.0), 0.0);
  EXPECT_DOUBLE_EQ(lr_sensitivity({4.0, INFINITY}, 5.0), 0.5);  // an overflow counts as diverged
  EXPECT_TRUE(std::isnan(lr_sensitivity({std::nan(""), std::nan("")}, 5.0)));
}

TEST(SweepSensitivity, InitialLossIsLnVocabSizeForAFreshModel) {
  // The documented choice L0 = ln(model.vocab_size): one step at a negligible LR leaves the
  // freshly initialized model as it was, and its validation loss is the uniform prediction's.
  TinyRun tiny;
  TrainOptions options;
  options.out_dir = (tiny.root / "fresh").string();
  const auto result = train(
      parse_recipe(tiny.recipe_yaml(), "tiny", {"train.steps=1", "train.lr=1e-12", "train.warmup_steps=0"}), options);
  EXPECT_EQ(result.steps, 1);
  EXPECT_NEAR(result.valid_loss, std::log(300.0), 0.05);
}

TEST(SweepOutputs, MarkdownTableHasOneRowPerVariant) {
  const std::string md = sweep_markdown(three_variant_results());
  EXPECT_EQ(md.rfind("| variant | 0.001 | 0.01 | 0.1 | best LR | best loss | LR sensitivity |\n", 0), 0u) << md;
  // base: clipped {4.0, 3.5, ln 300 = 5.7038}; best 3.5; mean of {0.5, 0, 2.2038} = 0.901.
  EXPECT_TRUE(has(md, "| base | 4.000 | 3.500 | diverged | 0.01 | 3.500 | 0.901 |\n")) << md;
  EXPECT_TRUE(has(md, "| qk_norm | 4.100 | 3.400 | 3.900 | 0.01 | 3.400 | 0.400 |\n")) << md;
  EXPECT_TRUE(has(md, "| z.loss-1 | 4.200 | diverged | diverged | 0.001 | 4.200 | 1.003 |\n")) << md;
  EXPECT_TRUE(has(md, "5.704")) << md;

  const auto j = nlohmann::json::parse(sweep_results_json(three_variant_results()));
  ASSERT_EQ(j.at("variants").size(), 3u);
  EXPECT_NEAR(j["variants"][0]["lr_sensitivity"].get<double>(), (0.5 + 0 + (std::log(300.0) - 3.5)) / 3, 1e-12);
  EXPECT_TRUE(j["variants"][0]["cells"][2]["final_loss"].is_null());
  EXPECT_TRUE(j["variants"][0]["cells"][2]["diverged"].get<bool>());
}

TEST(SweepOutputs, SvgHasOnePolylinePerVariantAndIsBalanced) {
  const std::string svg = sweep_svg(three_variant_results());
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
  EXPECT_TRUE(balanced_xml(svg)) << svg;
  EXPECT_EQ(count(svg, "<polyline"), 3u);
  EXPECT_EQ(count(svg, "<path"), 3u + 1u);  // three diverged cells, one legend entry
  EXPECT_TRUE(has(svg, ">learning rate<") && has(svg, ">final validation loss<"));
  EXPECT_TRUE(has(svg, ">qk_norm<") && has(svg, ">z.loss-1<"));
  // Decade labels 10^-3 .. 10^-1.
  for (int k : {-3, -2, -1})
    EXPECT_TRUE(has(svg, fmt::format(">10<tspan dy=\"-6\" font-size=\"9\">{}</tspan>", k))) << k;
  // Distinct colours.
  EXPECT_TRUE(has(svg, "#1f77b4") && has(svg, "#ff7f0e") && has(svg, "#2ca02c"));
}

TEST(Sweep, TinyModelEndToEndAndARerunContinues) {
  TinyRun tiny;
  const std::string recipe = (tiny.root / "tiny.yaml").string();
  std::ofstream(recipe) << tiny.recipe_yaml();
  SweepOptions options;
  options.recipe = recipe;
  // 1e30 overflows the weights on the first update: a divergence, recorded rather than thrown.
  options.lrs = {3e-3, 1e30};
  options.variants = {parse_variant("base"), parse_variant("qknorm_zloss=model.qk_norm=true,train.z_loss=1e-4")};
  options.steps = 3;
  options.out_dir = (tiny.root / "sweep").string();

  // A bad key in the last variant fails before anything trains.
  {
    SweepOptions bad = options;
    bad.variants.push_back(parse_variant("typo=model.qk_nrom=true"));
    const std::string e = error_of([&] { run_sweep(bad); });
    EXPECT_TRUE(has(e, "variant 'typo'") && has(e, "unknown key 'model.qk_nrom'")) << e;
    EXPECT_FALSE(fs::exists(options.out_dir + "/base"));
    bad.variants.pop_back();
    bad.overrides = {"train.lr=1"};
    EXPECT_TRUE(has(error_of([&] { run_sweep(bad); }), "drop the override"));
  }

  const SweepResults first = run_sweep(options);
  EXPECT_EQ(first.trained, 4);
  EXPECT_EQ(first.reused, 0);
  ASSERT_EQ(first.variants.size(), 2u);
  for (const auto& variant : first.variants) {
    ASSERT_EQ(variant.cells.size(), 2u);
    EXPECT_TRUE(std::isfinite(variant.cells[0].final_loss)) << variant.name;
    EXPECT_LT(variant.cells[0].final_loss, variant.initial_loss + 0.5) << variant.name;
    EXPECT_TRUE(variant.cells[1].diverged) << variant.name;
    EXPECT_TRUE(std::isfinite(
        lr_sensitivity({variant.cells[0].final_loss, variant.cells[1].final_loss}, variant.initial_loss)));
  }
  const fs::path dir = options.out_dir;
  for (const char* name : {"sweep.json", "sweep.md", "results.json", "sweep.svg"})
    EXPECT_TRUE(fs::exists(dir / name)) << name;
  const fs::path cell = dir / sweep_cell_dir("qknorm_zloss", 0, 3e-3);
  EXPECT_EQ(sweep_cell_dir("qknorm_zloss", 0, 3e-3), "qknorm_zloss/lr-0-0.003");
  const auto result = nlohmann::json::parse(read_file((cell / "result.json").string()));
  EXPECT_EQ(result.at("variant"), "qknorm_zloss");
  EXPECT_DOUBLE_EQ(result.at("lr").get<double>(), 3e-3);
  EXPECT_DOUBLE_EQ(result.at("final_loss").get<double>(), first.variants[1].cells[0].final_loss);
  EXPECT_FALSE(result.at("diverged").get<bool>());
  EXPECT_TRUE(
      nlohmann::json::parse(read_file((dir / "base/lr-1-1e+30/result.json").string())).at("diverged").get<bool>());
  const std::string svg = read_file((dir / "sweep.svg").string());
  EXPECT_EQ(count(svg, "<polyline"), 2u);

  // A re-run trains nothing and leaves every result as it was.
  const auto mtime = fs::last_write_time(cell / "result.json");
  const SweepResults again = run_sweep(options);
  EXPECT_EQ(again.trained, 0);
  EXPECT_EQ(again.reused, 4);
  EXPECT_EQ(fs::last_write_time(cell / "result.json"), mtime);
  EXPECT_EQ(again.variants[1].cells[0].final_loss, first.variants[1].cells[0].final_loss);

  // A cell whose run finished but whose result.json is missing (stopped in between) is recorded
  // from its final checkpoint without training.
  fs::remove(cell / "result.json");
  const SweepResults recorded = run_sweep(options);
  EXPECT_EQ(recorded.trained, 1);
  EXPECT_EQ(recorded.variants[1].cells[0].final_loss, first.variants[1].cells[0].final_loss);

  // An interrupted cell (checkpoints, no result.json) is resumed to the end.
  const fs::path base_cell = dir / sweep_cell_dir("base", 0, 3e-3);
  fs::remove_all(base_cell);
  Recipe cell_recipe = load_recipe(recipe);
  cell_recipe.train.steps = 3;
  cell_recipe.train.lr = 3e-3;
  TrainOptions partial;
  partial.out_dir = base_cell.string();
  partial.stop_after = 1;
  ASSERT_TRUE(train(cell_recipe, partial).interrupted);
  const SweepResults resumed = run_sweep(options);
  EXPECT_EQ(resumed.trained, 1);
  EXPECT_TRUE(fs::exists(base_cell / "step-000003"));
  EXPECT_EQ(resumed.variants[0].cells[0].final_loss, first.variants[0].cells[0].final_loss);  // exact resume

  // Another grid in the same directory is refused.
  SweepOptions other = options;
  other.lrs = {1e-3, 1e30};
  std::string e = error_of([&] { run_sweep(other); });
  EXPECT_TRUE(has(e, "sweep.json") && has(e, "learning rates") && has(e, "0.003,1e+30")) << e;
  other = options;
  other.steps = 4;
  e = error_of([&] { run_sweep(other); });
  EXPECT_TRUE(has(e, "variant 'base' had another recipe") && has(e, "steps: 3")) << e;
}

TEST(Sweep, CliRejectsBadGridsBeforeTraining) {
  const std::string command = std::string(LOOM_BINARY) + " sweep " + LOOM_SOURCE_DIR +
                              "/recipes/default.yaml --lr 1e-2:1e-3:3 --out /nonexistent/sweep 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  std::string output;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, n);
  EXPECT_NE(pclose(pipe), 0);
  EXPECT_EQ(output.rfind("loom: error: --lr '1e-2:1e-3:3': A must not exceed B", 0), 0u) << output;
}

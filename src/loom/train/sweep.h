// Learning-rate sweeps, after Wortsman et al. 2023, "Small-scale proxies for large-scale
// Transformer training instabilities": train one recipe at every LR of a log-spaced grid, for
// each of several variants (recipe overrides such as model.qk_norm=true), record each run's final
// validation loss, and summarize each variant by its LR sensitivity (docs/sweep.md):
//
//   sensitivity = mean_lr [ min(L(lr), L0) - min_lr' min(L(lr'), L0) ]
//
// L0 is the initial loss, taken as ln(model.vocab_size): the loss of a uniform prediction, which
// a freshly initialized model with small-std weights is at. A diverged run counts as L0.
//
// Layout of a sweep directory DIR:
//   DIR/sweep.json                          the grid, the variants and their resolved recipes
//   DIR/<variant>/lr-<i>-<lr %.3g>/         one training run (checkpoints, metrics.jsonl) ...
//   DIR/<variant>/lr-<i>-<lr %.3g>/result.json   ... and its result, written when it ends
//   DIR/sweep.md, DIR/results.json, DIR/sweep.svg   the summary: table, all numbers, chart
// A re-run with the same DIR skips cells that have a result.json and resumes cells that have
// checkpoints but no result (an interrupted sweep continues); a DIR whose sweep.json describes
// another sweep is refused.
#pragma once
#include <cmath>
#include <string>
#include <vector>

#include "loom/checkpoint/recipe.h"

namespace loom {

// "A:B:N": N learning rates log-spaced from A to B inclusive (first and last exactly A and B);
// or a comma list of increasing LRs, "1e-3,3e-3". Every bad grid is one loom::Error naming it.
std::vector<double> parse_lr_grid(const std::string& text);

// A named set of recipe overrides ("section.key=value", as `loom train --set` takes them).
struct SweepVariant {
  std::string name;
  std::vector<std::string> overrides;
};

// "NAME=k=v,k=v" (or "NAME" / "NAME=" for no overrides). Items split at commas outside
// brackets, so "NAME=model.layers=[attention,mamba]" is one override. NAME is [A-Za-z0-9_.-]+.
SweepVariant parse_variant(const std::string& text);

struct SweepOptions {
  std::string recipe;                  // recipe YAML path
  std::vector<std::string> overrides;  // --set: applied to every variant, before its own
  std::vector<SweepVariant> variants;  // empty: one variant "base" without overrides
  std::vector<double> lrs;             // from parse_lr_grid
  int64_t steps = -1;                  // overrides train.steps when >= 0
  std::string out_dir;
};

struct SweepCell {
  std::string variant;
  double lr = 0;
  double final_loss = std::nan("");  // validation loss at the end; NaN when diverged or not run
  bool diverged = false;
  double seconds = 0;  // training time of the run (over all its invocations)
};

struct VariantResults {
  std::string name;
  double initial_loss = 0;       // ln(model.vocab_size) of the variant's recipe
  std::vector<SweepCell> cells;  // one per LR, in grid order
};

struct SweepResults {
  std::vector<double> lrs;
  std::vector<VariantResults> variants;
  int trained = 0;           // cells trained (or resumed) by this invocation
  int reused = 0;            // cells whose result.json an earlier invocation wrote
  bool interrupted = false;  // stopped by SIGINT/SIGTERM: re-run the same command to continue
};

// Resolves and validates every variant's recipe (so a bad key fails before any training),
// checks or writes DIR/sweep.json, trains the missing cells (a divergence is a result, not an
// error), then writes sweep.md, results.json and sweep.svg unless interrupted.
SweepResults run_sweep(const SweepOptions& options);

// The mean over the grid of min(L, L0) - min over the grid of min(L, L0), with NaN (diverged)
// counting as L0. Clipping both terms at L0 keeps it >= 0 even if no run beat L0. NaN when every
// run diverged: no LR trained at all, so robustness to the LR is undefined.
double lr_sensitivity(const std::vector<double>& final_losses, double initial_loss);

// The summary outputs. Cells with a NaN loss show as "diverged" when diverged, else "-".
std::string sweep_markdown(const SweepResults& results);
std::string sweep_results_json(const SweepResults& results);
std::string sweep_svg(const SweepResults& results);

// A cell's directory, relative to the sweep directory: "<variant>/lr-<index>-<lr %.3g>".
std::string sweep_cell_dir(const std::string& variant, size_t index, double lr);

}  // namespace loom

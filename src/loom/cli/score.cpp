// loom score: corpus BLEU and chrF of a hypothesis file against a reference file, as sacreBLEU
// scores them with its defaults (see eval/metrics.h). Line i of the hypotheses is scored against
// line i of the references.
#include <cstdio>
#include <iostream>
#include <iterator>

#include "loom/cli/commands.h"
#include "loom/core/error.h"
#include "loom/eval/metrics.h"
#include "loom/io/fs.h"

namespace loom::cli {
namespace {

// The lines of a text file as Python iterates them with newline="\n" (sacreBLEU's reader): a
// final '\n' ends the last line rather than starting an empty one. A '\r' stays in its line,
// where it counts as trailing whitespace, as it does for sacreBLEU.
std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t end; (end = text.find('\n', start)) != std::string::npos; start = end + 1) {
    lines.push_back(text.substr(start, end - start));
  }
  if (start < text.size()) lines.push_back(text.substr(start));
  return lines;
}

}  // namespace

void add_score(CLI::App& app, const GlobalOptions&) {
  struct Args {
    std::string ref;
    std::string hyp;  // empty: stdin
    std::vector<std::string> metrics = {"bleu", "chrf"};
    bool signature = false;
  };
  auto args = std::make_shared<Args>();
  app.add_option("--ref", args->ref, "reference file, one segment per line")->required();
  app.add_option("--hyp", args->hyp, "hypothesis file, one segment per line (default: stdin)");
  app.add_option("--metric", args->metrics, "metrics, comma-separated")
      ->delimiter(',')
      ->check(CLI::IsMember({"bleu", "chrf"}));
  app.add_flag("--signature", args->signature,
               "print sacreBLEU's text format, 'BLEU|nrefs:1|...|version:X = ...', naming the configuration");
  app.callback([args] {
    const std::vector<std::string> refs = split_lines(read_file(args->ref));
    const std::string hyp_text =
        args->hyp.empty() ? std::string(std::istreambuf_iterator<char>(std::cin), {}) : read_file(args->hyp);
    const std::vector<std::string> hyps = split_lines(hyp_text);
    const std::string hyp_name = args->hyp.empty() ? "stdin" : args->hyp;
    if (hyps.size() != refs.size()) {
      fail("{} hypothesis lines ({}) but {} reference lines ({}): there must be one hypothesis per reference",
           hyps.size(), hyp_name, refs.size(), args->ref);
    }
    if (refs.empty()) fail("the references {} are empty", args->ref);
    // "BLEU = 41.10 ..." becomes "BLEU|<signature> = 41.10 ..." with --signature.
    auto print = [&](const std::string& line, const std::string& signature) {
      const size_t name_end = line.find(" = ");
      const std::string text =
          args->signature ? line.substr(0, name_end) + "|" + signature + line.substr(name_end) : line;
      std::printf("%s\n", text.c_str());
    };
    for (const auto& metric : args->metrics) {
      if (metric == "bleu") print(corpus_bleu(hyps, refs).format(), bleu_signature());
      if (metric == "chrf") print(corpus_chrf(hyps, refs).format(), chrf_signature());
    }
  });
}

}  // namespace loom::cli

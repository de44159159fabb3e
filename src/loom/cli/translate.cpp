// loom translate: stdin lines -> translations on stdout, one batch at a time, in input order.
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <spdlog/spdlog.h>

#include "loom/checkpoint/checkpoint.h"
#include "loom/cli/commands.h"
#include "loom/core/runtime.h"
#include "loom/infer/translate.h"

namespace loom::cli {
namespace {

// Lines of fd 0, read with read(2) so that poll(2) tells the truth about what is left: stdio
// buffering would hide lines already read into its buffer.
class StdinLines {
 public:
  // Whether a line can be had without blocking (one is buffered, or stdin has data or its end).
  bool ready() {
    if (buffered_line() || eof_) return true;
    pollfd fd{0, POLLIN, 0};
    return ::poll(&fd, 1, 0) > 0;
  }
  // The next line without its newline (and a trailing \r), blocking until one is complete;
  // false at the end of input.
  bool next(std::string& line) {
    while (!buffered_line() && !eof_) {
      char chunk[1 << 16];
      const ssize_t got = ::read(0, chunk, sizeof chunk);
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) fail("cannot read stdin: {}", std::strerror(errno));
      if (got == 0) eof_ = true;
      buffer_.append(chunk, static_cast<size_t>(got));
    }
    if (buffer_.empty()) return false;
    const size_t end = buffer_.find('\n');
    line = buffer_.substr(0, end);
    buffer_.erase(0, end == std::string::npos ? buffer_.size() : end + 1);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    return true;
  }

 private:
  bool buffered_line() const { return buffer_.find('\n') != std::string::npos; }
  std::string buffer_;
  bool eof_ = false;
};

bool blank(const std::string& line) {
  return std::all_of(line.begin(), line.end(), [](unsigned char ch) { return std::isspace(ch); });
}

}  // namespace

void add_translate(CLI::App& app, const GlobalOptions& global) {
  struct Args {
    std::string checkpoint;
    SearchOptions options;
    bool sample = false;
    int64_t batch_size = 32;
  };
  auto args = std::make_shared<Args>();
  app.footer(
      "Reads UTF-8 source sentences, one per line, from stdin and writes one translation per line to stdout "
      "in input order. Lines are translated in batches: whatever has arrived when stdin has nothing more "
      "ready, or --batch-size lines; stdout is flushed after each batch. Blank lines give empty lines. A line "
      "longer than the model's context is truncated (with a warning on stderr). With --nbest N > 1, each "
      "input gives up to N lines '<input index>\\t<score>\\t<translation>', best first, the index counting "
      "input lines from 0 (a blank input line gives one line with score 0 and no text).");
  app.add_option("checkpoint", args->checkpoint,
                 "checkpoint or run directory of an encoder-decoder (model.arch encoder_decoder)")
      ->required();
  auto* beam = app.add_option("--beam", args->options.beam, "beam size (1 = greedy; default 4, or 1 with --sample)")
                   ->check(CLI::PositiveNumber);
  app.add_option("--nbest", args->options.nbest, "translations printed per input (<= beam)")
      ->check(CLI::PositiveNumber);
  app.add_option("--lenpen", args->options.lenpen, "length penalty: score = sum log p / length^lenpen");
  app.add_option("--max-len-a", args->options.max_len_a, "at most a * source length + b target tokens");
  app.add_option("--max-len-b", args->options.max_len_b, "at most a * source length + b target tokens");
  app.add_option("--no-repeat-ngram", args->options.no_repeat_ngram, "never repeat an n-gram of this size (0 = off)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--unkpen", args->options.unkpen, "subtracted from the unknown token's log-prob");
  app.add_flag("--sample", args->sample, "sample each token instead of searching (beam 1)");
  add_sampling_options(app, args->options.sample);
  app.add_option("--batch-size", args->batch_size, "source lines translated together at most")
      ->check(CLI::PositiveNumber);
  app.add_flag("--bf16", args->options.bf16, "run the matmuls under bf16 autocast (log-probs stay fp32)");
  app.callback([args, &global, beam] {
    configure_threads(global.threads);
    auto& options = args->options;
    options.sampling = args->sample;
    if (args->sample && beam->count() == 0) options.beam = 1;
    if (options.nbest > options.beam) fail("--nbest {} exceeds the beam size {}", options.nbest, options.beam);
    if (options.sampling && options.beam != 1) fail("--sample draws one translation per input: it needs --beam 1");
    auto loaded = load_checkpoint(args->checkpoint);
    if (!loaded.recipe.model.encoder_decoder())
      fail("{}: translate needs an encoder-decoder (model.arch encoder_decoder), this model is a {}", loaded.dir,
           loaded.recipe.model.arch);
    require_tokenizer(loaded, "translate");
    const auto& tokenizer = loaded.tokenizer;
    options.bos = tokenizer.bos_id(), options.eos = tokenizer.eos_id(), options.unk = 0;
    const auto max_source = static_cast<size_t>(loaded.recipe.model.max_seq_len - 1);  // eos follows

    struct Pending {
      int64_t index;  // input line number, from 0
      std::vector<int64_t> tokens;
      bool blank;
    };
    std::vector<Pending> pending;
    auto translate_pending = [&] {
      // Sorted by length, the batch pads less; the output keeps the input order.
      std::vector<size_t> order;
      for (size_t i = 0; i < pending.size(); ++i)
        if (!pending[i].blank) order.push_back(i);
      std::stable_sort(order.begin(), order.end(),
                       [&](size_t x, size_t y) { return pending[x].tokens.size() < pending[y].tokens.size(); });
      std::vector<std::vector<int64_t>> sources;
      for (size_t i : order) sources.push_back(pending[i].tokens);
      auto results = translate_batch(loaded.model, sources, options);
      std::vector<std::vector<Hypothesis>> by_line(pending.size());
      for (size_t j = 0; j < order.size(); ++j) by_line[order[j]] = std::move(results[j]);
      for (size_t i = 0; i < pending.size(); ++i) {
        if (options.nbest == 1) {
          std::string text;
          if (!by_line[i].empty())
            text = tokenizer.decode(std::vector<int>(by_line[i][0].tokens.begin(), by_line[i][0].tokens.end()));
          std::printf("%s\n", text.c_str());
        } else if (by_line[i].empty()) {
          std::printf("%lld\t0\t\n", static_cast<long long>(pending[i].index));
        } else {
          for (const auto& h : by_line[i])
            std::printf("%lld\t%.4f\t%s\n", static_cast<long long>(pending[i].index), h.score,
                        tokenizer.decode(std::vector<int>(h.tokens.begin(), h.tokens.end())).c_str());
        }
      }
      std::fflush(stdout);
      pending.clear();
    };

    StdinLines input;
    std::string line;
    for (int64_t index = 0; input.next(line); ++index) {
      Pending p{index, {}, blank(line)};
      if (!p.blank) {
        for (int id : tokenizer.encode(line)) p.tokens.push_back(id);
        if (p.tokens.size() > max_source) {
          spdlog::warn("line {}: {} tokens exceed the model's context; translating the first {}", index + 1,
                       p.tokens.size(), max_source);
          p.tokens.resize(max_source);
        }
      }
      pending.push_back(std::move(p));
      if (static_cast<int64_t>(pending.size()) >= args->batch_size || !input.ready()) translate_pending();
    }
    if (!pending.empty()) translate_pending();
  });
}

}  // namespace loom::cli

// loom/eval/metrics against sacreBLEU itself: the 13a tokenizer on hand-written lines, then BLEU
// and chrF of generated corpora (ASCII, punctuation, numbers, German, CJK, emoji, HTML entities,
// hyphens at line ends, Unicode spaces, invalid UTF-8, empty lines) computed by loom and by the
// sacrebleu package in .venv (scripts/venv.sh), compared digit for digit. No torch here.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "loom/core/error.h"
#include "loom/eval/metrics.h"

namespace {

TEST(Metrics, Tokenize13aMatchesHandWrittenCases) {
  // Expected outputs are sacrebleu 2.6.0's Tokenizer13a()(line).
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"Hello, world!", "Hello , world !"},
      {"It costs 1,000.50 dollars.", "It costs 1,000.50 dollars ."},  // . and , between digits stay
      {"1,000,000", "1,000,000"},
      {"x.y", "x . y"},
      {"5.x", "5 . x"},
      {"x.5", "x . 5"},
      {"e.g.", "e . g ."},
      {"U.S.A.", "U . S . A ."},
      {"...", ". . ."},
      {"3-4 times", "3 - 4 times"},  // a dash splits only after a digit
      {"5-", "5 -"},
      {"-5", "-5"},
      {"a-", "a-"},
      {"well-known", "well-known"},
      {"don't", "don't"},  // the apostrophe is not in the symbol class
      {"$5 (ca. 20%)", "$ 5 ( ca . 20 % )"},
      {"A &amp; B &lt;tag&gt; &quot;q&quot;", "A & B < tag > \" q \""},
      {"&amp;lt;", "<"},                   // unescaped one entity at a time, &amp; before &lt;
      {"&lt;skipped&gt;", "< skipped >"},  // <skipped> is removed before unescaping
      {"a<skipped>b", "ab"},
      {"foo-\nbar", "foobar"},
      {"end-\n", "end"},
      {"line\nbreak", "line break"},
      {"tab\there", "tab here"},
      {"Straße, über.", "Straße , über ."},
      {"東京。", "東京。"},
      {"\xe2\x80\x9cQuote,\xe2\x80\x9d he said.", "\xe2\x80\x9cQuote , \xe2\x80\x9d he said ."},
      // U+3000 and U+00A0 are whitespace to Python, U+200B (zero-width space) is not.
      {"a\xe3\x80\x80"
       "b\xc2\xa0"
       "c\xe2\x80\x8b"
       "d",
       "a b c\xe2\x80\x8b"
       "d"},
      {"", ""},
      {"  \t ", ""},
  };
  for (const auto& [line, expected] : cases) EXPECT_EQ(loom::tokenize_13a(line), expected) << "line: " << line;
}

TEST(Metrics, SizeMismatchIsAnError) {
  EXPECT_THROW(loom::corpus_bleu({"a", "b"}, {"a"}), loom::Error);
  EXPECT_THROW(loom::corpus_chrf({"a"}, {}), loom::Error);
}

TEST(Metrics, EdgeCorpora) {
  const std::vector<std::string> refs = {"The quick brown fox jumps over the lazy dog.", "Zwei Äpfel, bitte!",
                                         "東京は日本の首都です。"};
  const auto identical_bleu = loom::corpus_bleu(refs, refs);
  EXPECT_NEAR(identical_bleu.score, 100.0, 1e-9);
  EXPECT_EQ(identical_bleu.format().substr(0, 13), "BLEU = 100.00");
  EXPECT_NEAR(loom::corpus_chrf(refs, refs).score, 100.0, 1e-9);

  const std::vector<std::string> empty(refs.size());
  const auto empty_bleu = loom::corpus_bleu(empty, refs);
  EXPECT_EQ(empty_bleu.score, 0.0);
  EXPECT_EQ(empty_bleu.bp, 0.0);
  EXPECT_EQ(empty_bleu.sys_len, 0);
  EXPECT_EQ(loom::corpus_chrf(empty, refs).score, 0.0);
  EXPECT_EQ(loom::corpus_bleu(refs, empty).score, 0.0);
  EXPECT_EQ(loom::corpus_chrf(refs, empty).score, 0.0);
  EXPECT_EQ(loom::corpus_bleu({}, {}).score, 0.0);

  // Invalid UTF-8 never throws; each stray byte is one character (Python's surrogateescape).
  const std::vector<std::string> broken = {"\xff\xfe abc \xe6\x9d", "\xc3", "x\xed\xa0\x80y \xc0\xaf"};
  EXPECT_NO_THROW(loom::corpus_bleu(broken, refs));
  EXPECT_NEAR(loom::corpus_chrf(broken, broken).score, 100.0, 1e-9);
  EXPECT_EQ(loom::corpus_chrf({"\xe6\x9d"}, {"\xe6\x9d"}).ref_ngrams[1], 1);  // two characters: one bigram
}

// ---- generated corpora, scored by loom and by sacrebleu ------------------------------------------

struct Corpus {
  std::string name;
  std::vector<std::string> hyps, refs;
};

// Deterministic across standard libraries: mt19937's output is fixed by the standard (its
// distributions are not, so none is used).
class Generator {
 public:
  explicit Generator(uint32_t seed) : rng_(seed) {}

  size_t below(size_t n) { return rng_() % n; }
  bool chance(int percent) { return below(100) < static_cast<size_t>(percent); }
  template <class T>
  const T& pick(const std::vector<T>& from) {
    return from[below(from.size())];
  }

  std::string piece() {
    static const std::vector<std::string> words = {
        "the",   "cat",  "sat",   "on",         "mat",        "a",      "dog",    "house",   "The",    "is",
        "and",   "of",   "to",    "in",         "Haus",       "Straße", "über",   "Mädchen", "größer", "Ärger",
        "naïve", "café", "東京",  "日本語",     "猫",         "中文",   "Привет", "мир",     "🙂",   "👍🏽",
        "e.g.",  "U.S.", "don't", "well-known", "co-operate", "x",      "I",      "it's",    "Dr.",    "etc."};
    static const std::vector<std::string> punctuation = {
        ".", ",", "!", "?", "(", ")", "\"", "'", ":", ";", "-", "--", "—", "…", "«", "»", "/",  "$",  "%", "@",
        "#", "[", "]", "{", "}", "~", "^",  "_", "`", "|", "+", "=",  "*", "&", "<", ">", "。", "、", "“", "”"};
    static const std::vector<std::string> numbers = {"1,000.5", "3.14", "2-3",    "1990s",      "10,000",
                                                     "-5",      "5-",   "0.5",    "42",         ",5",
                                                     "5,",      "12.",  "v1.2.3", "2024-01-01", "1.000,5"};
    static const std::vector<std::string> entities = {"&amp;",           "&quot;",    "&lt;",   "&gt;",
                                                      "&amp;lt;",        "&#39;",     "&nbsp;", "AT&amp;T",
                                                      "&lt;skipped&gt;", "<skipped>", "&amp"};
    static const std::vector<std::string> invalid_utf8 = {"\xff",     "\xe6\x9d",         "\xc3", "\xed\xa0\x80",
                                                          "\xc0\xaf", "\xf4\x90\x80\x80", "\x80", "ab\xc2"};
    const size_t kind = below(100);
    if (kind < 62) return pick(words);
    if (kind < 80) return pick(punctuation);
    if (kind < 90) return pick(numbers);
    if (kind < 97) return pick(entities);
    return pick(invalid_utf8);
  }

  std::string separator() {
    static const std::vector<std::string> unusual = {"",
                                                     "",
                                                     "",
                                                     "  ",
                                                     "\t",
                                                     "\n",
                                                     "-\n",
                                                     "\r",
                                                     "\xc2\xa0" /* U+00A0 */,
                                                     "\xe3\x80\x80" /* U+3000 */,
                                                     "\xe2\x80\x89" /* U+2009 */,
                                                     "\xe2\x80\x8b" /* U+200B, not whitespace */,
                                                     "\x1c",
                                                     "\xc2\x85" /* U+0085 */};
    return chance(85) ? " " : pick(unusual);
  }

  std::string join(const std::vector<std::string>& pieces) {
    std::string line = chance(5) ? separator() : "";
    for (size_t i = 0; i < pieces.size(); ++i) line += (i ? separator() : "") + pieces[i];
    if (chance(10)) line += pick(std::vector<std::string>{"-\n", "\n", " ", "-", "\t\n", " -\n"});
    return line;
  }

  // A reference and a hypothesis made from it by dropping, replacing, repeating and swapping
  // pieces, so that every n-gram order has matches and misses.
  std::pair<std::string, std::string> pair() {
    std::vector<std::string> ref_pieces(below(25));
    for (auto& p : ref_pieces) p = piece();
    std::vector<std::string> hyp_pieces;
    if (chance(4)) {  // unrelated
      hyp_pieces.resize(below(15));
      for (auto& p : hyp_pieces) p = piece();
    } else {
      for (const auto& p : ref_pieces) {
        const size_t edit = below(100);
        if (edit < 72) {
          hyp_pieces.push_back(p);
        } else if (edit < 82) {  // dropped
        } else if (edit < 92) {
          hyp_pieces.push_back(piece());
        } else {
          hyp_pieces.push_back(p);
          hyp_pieces.push_back(p);
        }
      }
      if (hyp_pieces.size() > 1 && chance(20)) {
        const size_t i = below(hyp_pieces.size() - 1);
        std::swap(hyp_pieces[i], hyp_pieces[i + 1]);
      }
    }
    std::string ref = join(ref_pieces), hyp = join(hyp_pieces);
    if (chance(5)) ref.clear();
    if (chance(6)) hyp.clear();
    return {ref, hyp};
  }

 private:
  std::mt19937 rng_;
};

std::vector<Corpus> generated_corpora() {
  Generator generator(20240611);
  Corpus mixed{"mixed (300 pairs)", {}, {}};
  for (int i = 0; i < 300; ++i) {
    auto [ref, hyp] = generator.pair();
    mixed.refs.push_back(ref);
    mixed.hyps.push_back(hyp);
  }
  std::vector<Corpus> corpora = {mixed};
  // Each pair alone: short corpora reach the corners (no 4-grams, no match, bp 0, ...).
  for (size_t i = 0; i < mixed.hyps.size(); ++i) {
    corpora.push_back({fmt::format("pair {}", i), {mixed.hyps[i]}, {mixed.refs[i]}});
  }
  // Slices of 10 pairs.
  for (size_t i = 0; i + 10 <= mixed.hyps.size(); i += 10) {
    corpora.push_back({fmt::format("pairs {}..{}", i, i + 9),
                       {mixed.hyps.begin() + i, mixed.hyps.begin() + i + 10},
                       {mixed.refs.begin() + i, mixed.refs.begin() + i + 10}});
  }
  const std::vector<std::string> empty(mixed.refs.size());
  corpora.push_back({"identical", mixed.refs, mixed.refs});
  corpora.push_back({"empty hypotheses", empty, mixed.refs});
  corpora.push_back({"empty references", mixed.hyps, empty});
  corpora.push_back({"all empty", empty, empty});
  corpora.push_back({"lowercase hypotheses (case-sensitive)",
                     {"the quick brown fox jumps over the lazy dog ."},
                     {"The Quick Brown Fox jumps over the lazy dog."}});
  return corpora;
}

struct CommandResult {
  int status;          // exit status, -1 if it did not exit
  std::string output;  // stdout and stderr together
};

CommandResult run_command(const std::string& command) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return {-1, "cannot run " + command};
  std::string output;
  char buffer[4096];
  for (size_t n; (n = fread(buffer, 1, sizeof buffer, pipe)) > 0;) output.append(buffer, n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

// What sacrebleu says about one corpus: numbers as Python's repr (exact), strings as str(score).
struct Reference {
  std::map<std::string, std::vector<std::string>> fields;  // "bleu" -> [score, counts..., totals..., lens]
  std::map<std::string, std::string> formatted;            // "bleu" -> "BLEU = ..."
};

// Scores each corpus with sacrebleu's Python API (defaults, plus CHRF(eps_smoothing=True)). The
// text goes over as raw bytes that Python decodes with errors="surrogateescape", so invalid
// UTF-8 reaches sacrebleu the way loom documents that it reads it.
constexpr const char* kScript = R"PY(
import sys
import sacrebleu
from sacrebleu.metrics import CHRF
from sacrebleu.utils import sum_of_lists

data = open(sys.argv[1], "rb").read()
sys.stdout = open(sys.argv[2], "w")  # sacrebleu's warnings stay on stderr
print("version", sacrebleu.__version__)
for i, block in enumerate(data.split(b"\x01")):
    hyp_bytes, ref_bytes = block.split(b"\x02")
    hyps = [s.decode("utf-8", "surrogateescape") for s in hyp_bytes.split(b"\x00")]
    refs = [s.decode("utf-8", "surrogateescape") for s in ref_bytes.split(b"\x00")]
    bleu = sacrebleu.corpus_bleu(hyps, [refs])
    print(i, "bleu", repr(bleu.score), *bleu.counts, *bleu.totals, bleu.sys_len, bleu.ref_len)
    print(i, "bleu_format", bleu)
    for name, metric in (("chrf", CHRF()), ("chrf_eps", CHRF(eps_smoothing=True))):
        chrf = metric.corpus_score(hyps, [refs])
        stats = sum_of_lists(metric._extract_corpus_statistics(hyps, [refs]))
        print(i, name, repr(chrf.score), *stats)
        print(i, name + "_format", chrf)
)PY";

std::string run_sacrebleu(const std::vector<Corpus>& corpora, std::vector<Reference>& references) {
  const std::string python = std::string(LOOM_SOURCE_DIR) + "/.venv/bin/python";
  if (!std::filesystem::exists(python)) {
    return python + " is missing: run scripts/venv.sh (it creates .venv with sacrebleu " + loom::kSacrebleuVersion +
           ")";
  }
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("loom-test-metrics-{}", getpid());
  std::filesystem::create_directories(dir);
  const auto script = (dir / "score.py").string(), data = (dir / "corpora.bin").string(),
             scores = (dir / "scores.txt").string();
  std::ofstream(script) << kScript;
  {
    std::ofstream out(data, std::ios::binary);
    // Corpora separated by \x01, a corpus's hypotheses and references by \x02, lines by \0.
    auto write_lines = [&](const std::vector<std::string>& lines) {
      for (size_t i = 0; i < lines.size(); ++i) {
        if (i) out.put('\0');
        out << lines[i];
      }
    };
    for (size_t c = 0; c < corpora.size(); ++c) {
      if (c) out.put('\x01');
      write_lines(corpora[c].hyps);
      out.put('\x02');
      write_lines(corpora[c].refs);
    }
  }
  const CommandResult result = run_command(fmt::format("'{}' '{}' '{}' '{}'", python, script, data, scores));
  std::ifstream scores_file(scores);
  std::stringstream scores_text;
  scores_text << scores_file.rdbuf();
  std::filesystem::remove_all(dir);
  if (result.status != 0) return "sacrebleu failed (run scripts/venv.sh to install it):\n" + result.output;
  std::istringstream lines(scores_text.str());
  std::string line;
  std::getline(lines, line);
  if (line != std::string("version ") + loom::kSacrebleuVersion) {
    return "expected sacrebleu " + std::string(loom::kSacrebleuVersion) + " in .venv, got '" + line +
           "': run scripts/venv.sh";
  }
  references.assign(corpora.size(), {});
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    size_t index;
    std::string key;
    fields >> index >> key;
    if (!fields || index >= corpora.size()) return "unexpected line from sacrebleu: " + line;
    if (key.size() > 7 && key.compare(key.size() - 7, 7, "_format") == 0) {
      std::string rest;
      std::getline(fields >> std::ws, rest);
      references[index].formatted[key.substr(0, key.size() - 7)] = rest;
    } else {
      for (std::string value; fields >> value;) references[index].fields[key].push_back(value);
    }
  }
  return "";
}

int64_t as_int(const std::string& s) { return std::stoll(s); }
double as_double(const std::string& s) { return std::strtod(s.c_str(), nullptr); }

TEST(Metrics, BleuAndChrfEqualSacrebleu) {
  const auto corpora = generated_corpora();
  std::vector<Reference> references;
  const std::string error = run_sacrebleu(corpora, references);
  ASSERT_TRUE(error.empty()) << error;
  int compared = 0;
  for (size_t c = 0; c < corpora.size(); ++c) {
    const Corpus& corpus = corpora[c];
    SCOPED_TRACE(corpus.name);
    const Reference& reference = references[c];
    ASSERT_EQ(reference.fields.count("bleu"), 1u);
    ASSERT_EQ(reference.fields.count("chrf"), 1u);
    ASSERT_EQ(reference.fields.count("chrf_eps"), 1u);

    const auto bleu = loom::corpus_bleu(corpus.hyps, corpus.refs);
    const auto& expected_bleu = reference.fields.at("bleu");
    ASSERT_EQ(expected_bleu.size(), 11u);
    EXPECT_EQ(bleu.format(), reference.formatted.at("bleu"));
    EXPECT_NEAR(bleu.score, as_double(expected_bleu[0]), 1e-9);
    for (int n = 0; n < 4; ++n) {
      EXPECT_EQ(bleu.counts[n], as_int(expected_bleu[1 + n])) << "order " << n + 1;
      EXPECT_EQ(bleu.totals[n], as_int(expected_bleu[5 + n])) << "order " << n + 1;
    }
    EXPECT_EQ(bleu.sys_len, as_int(expected_bleu[9]));
    EXPECT_EQ(bleu.ref_len, as_int(expected_bleu[10]));

    for (const bool eps : {false, true}) {
      const std::string key = eps ? "chrf_eps" : "chrf";
      loom::ChrfOptions options;
      options.eps_smoothing = eps;
      const auto chrf = loom::corpus_chrf(corpus.hyps, corpus.refs, options);
      const auto& expected = reference.fields.at(key);
      ASSERT_EQ(expected.size(), 1u + 3 * 6) << key;
      EXPECT_EQ(chrf.format(), reference.formatted.at(key));
      EXPECT_NEAR(chrf.score, as_double(expected[0]), 1e-9) << key;
      for (int n = 0; n < 6; ++n) {  // sacrebleu's statistics: [hyp, ref, match] per order
        EXPECT_EQ(chrf.hyp_ngrams[n], as_int(expected[1 + 3 * n])) << key << " order " << n + 1;
        EXPECT_EQ(chrf.ref_ngrams[n], as_int(expected[2 + 3 * n])) << key << " order " << n + 1;
        EXPECT_EQ(chrf.matches[n], as_int(expected[3 + 3 * n])) << key << " order " << n + 1;
      }
    }
    ++compared;
  }
  EXPECT_EQ(compared, static_cast<int>(corpora.size()));
  // The generated corpus must not be degenerate: a middling score with every order matched.
  const auto mixed = loom::corpus_bleu(corpora[0].hyps, corpora[0].refs);
  EXPECT_GT(mixed.score, 20.0);
  EXPECT_LT(mixed.score, 90.0);
}

#ifdef LOOM_BINARY  // defined when built with loom (CMake), not in a standalone build of this file
TEST(Metrics, ScoreCommandPrintsTheLibrarysScores) {
  const std::vector<std::string> hyps = {"The cat sat on the mat.", "Zwei Äpfel &amp; eine Birne", "", "東京は首都"};
  const std::vector<std::string> refs = {"The cat sat on a mat.", "Zwei Äpfel & eine Birne, bitte.", "Nichts",
                                         "東京は日本の首都"};
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("loom-test-score-{}", getpid());
  std::filesystem::create_directories(dir);
  const auto hyp_file = (dir / "hyp.txt").string(), ref_file = (dir / "ref.txt").string();
  {
    std::ofstream hyp(hyp_file), ref(ref_file);
    for (size_t i = 0; i < hyps.size(); ++i) hyp << hyps[i] << "\n", ref << refs[i] << "\n";
  }
  const std::string loom = LOOM_BINARY;
  const auto from_stdin = run_command(loom + " score --ref '" + ref_file + "' < '" + hyp_file + "'");
  EXPECT_EQ(from_stdin.status, 0) << from_stdin.output;
  EXPECT_EQ(from_stdin.output,
            loom::corpus_bleu(hyps, refs).format() + "\n" + loom::corpus_chrf(hyps, refs).format() + "\n");
  const auto signed_chrf =
      run_command(loom + " score --metric chrf --signature --ref '" + ref_file + "' --hyp '" + hyp_file + "'");
  EXPECT_EQ(signed_chrf.output,
            "chrF2|" + loom::chrf_signature() + " = " + loom::corpus_chrf(hyps, refs).format().substr(8) + "\n");
  const auto short_hyps = run_command("head -n 3 '" + hyp_file + "' | " + loom + " score --ref '" + ref_file + "'");
  EXPECT_EQ(short_hyps.status, 1);
  EXPECT_EQ(short_hyps.output, "loom: error: 3 hypothesis lines (stdin) but 4 reference lines (" + ref_file +
                                   "): there must be one hypothesis per reference\n");
  std::filesystem::remove_all(dir);
}
#endif

}  // namespace

// Corpus BLEU and chrF for translation, computed exactly as sacreBLEU 2.x computes them with its
// defaults (Post 2018, "A Call for Clarity in Reporting BLEU Scores"), so a loom score can be put
// beside a published sacreBLEU score. tests/test_metrics.cpp checks every number against the
// sacrebleu package that scripts/venv.sh pins (kSacrebleuVersion).
//
// Text is UTF-8. "Whitespace" and "character" mean what they mean to Python's str: whitespace is
// the 29 code points str.split() splits on (ASCII space, \t\n\v\f\r, \x1c-\x1f, U+0085, U+00A0,
// U+3000, ...), characters are code points. Invalid UTF-8 does not throw: each byte of an invalid
// sequence counts as one character of its own (Python's errors="surrogateescape").
//
// One reference per hypothesis. Not implemented: multiple references, lowercasing, other
// tokenizers, chrF++ (word n-grams), sentence-level BLEU with effective order.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace loom {

// The sacreBLEU release these functions are checked against (and scripts/venv.sh installs).
inline constexpr const char* kSacrebleuVersion = "2.6.0";

// sacreBLEU's default "13a" tokenizer (mteval-v13a.pl as used by WMT): drops "<skipped>" and
// "-\n", turns "\n" into a space, unescapes &quot; &amp; &lt; &gt; (in that order, each over
// the whole line), splits off ASCII punctuation and symbols except ' - . , ; splits off . and ,
// unless between digits ("1,000.5" stays one token); splits - after a digit; one space between
// tokens. Output tokens are separated by single ASCII spaces, with no space at either end.
std::string tokenize_13a(std::string_view line);

struct BleuScore {
  double score = 0;                    // 0..100
  std::array<double, 4> precisions{};  // n-gram precisions in percent, smoothed ('exp')
  double bp = 0;                       // brevity penalty
  double ratio = 0;                    // sys_len / ref_len (0 if ref_len is 0)
  int64_t sys_len = 0, ref_len = 0;    // tokens in all hypotheses / all references
  std::array<int64_t, 4> counts{};     // clipped n-gram matches, n = 1..4
  std::array<int64_t, 4> totals{};     // hypothesis n-grams, n = 1..4
  // "BLEU = 48.89 85.7/66.7/40.0/25.0 (BP = 1.000 ratio = 1.000 hyp_len = 7 ref_len = 7)",
  // sacreBLEU's str(BLEUScore).
  std::string format() const;
};

// Corpus BLEU with sacreBLEU's defaults: each line right-stripped of whitespace, then 13a
// tokenization, case-sensitive, max order 4, smoothing 'exp' (mteval's: the k-th order with no
// match gets precision 1 / (2^k * total)), effective order off. Statistics are summed over the
// corpus before the score is computed. A corpus without a single matched n-gram (or an empty
// corpus) scores 0. hyps and refs must have the same size (loom::Error otherwise).
BleuScore corpus_bleu(const std::vector<std::string>& hyps, const std::vector<std::string>& refs);

// sacreBLEU's signature of the configuration corpus_bleu reproduces:
// "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0".
std::string bleu_signature();

struct ChrfOptions {
  /// Character n-gram orders 1..char_order (default 6, sacreBLEU's CHRF.CHAR_ORDER).
  int char_order = 6;
  /// Recall weighs beta times as much as precision (default 2: chrF2, Popović 2016, WMT16).
  int beta = 2;
  /// sacreBLEU's CHRF(eps_smoothing=...). false (its default, signature "eff:yes"): precision
  /// and recall are each averaged over the orders where both sides have n-grams, then combined
  /// into one F-beta. true ("eff:no", as chrF++.py, Moses and NLTK): the F-beta of each order,
  /// with 1e-16 standing in for an undefined precision, recall or F, averaged over all orders.
  bool eps_smoothing = false;
};

struct ChrfScore {
  double score = 0;  // 0..100
  int beta = 2;
  // Per order n = 1..char_order, summed over the corpus as sacreBLEU sums them: hypothesis
  // n-grams (0 for a segment whose reference has no n-gram of that order), reference n-grams,
  // and clipped matches.
  std::vector<int64_t> hyp_ngrams, ref_ngrams, matches;
  // "chrF2 = 71.42", sacreBLEU's str(CHRFScore).
  std::string format() const;
};

// Corpus chrF (Popović 2015) as sacreBLEU's CHRF computes it: character n-grams of each line
// with all whitespace removed, case-sensitive, no word n-grams. hyps and refs must have the same
// size (loom::Error otherwise).
ChrfScore corpus_chrf(const std::vector<std::string>& hyps, const std::vector<std::string>& refs,
                      const ChrfOptions& options = {});

// sacreBLEU's signature of `options`: "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0".
std::string chrf_signature(const ChrfOptions& options = {});

}  // namespace loom

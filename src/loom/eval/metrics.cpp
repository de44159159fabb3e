// sacreBLEU's BLEU and chrF, step for step; the Python each part reproduces is named in its
// comment (sacrebleu 2.6.0: tokenizers/tokenizer_13a.py, tokenizer_re.py, metrics/bleu.py,
// metrics/chrf.py, metrics/helpers.py). Floating-point operations keep sacreBLEU's order, so
// with the same libm (log, exp) the scores agree to the last bit, not only to the printed digits.
#include "loom/eval/metrics.h"

#include <algorithm>
#include <cmath>
#include <string_view>
#include <unordered_map>

#include <fmt/format.h>

#include "loom/core/error.h"

namespace loom {
namespace {

// ---- UTF-8 as Python sees it -------------------------------------------------------------------

// Decodes the code point at s[i] and advances i past it. A byte that does not start a valid
// sequence (bad lead byte, missing or bad continuation, overlong form, surrogate, > U+10FFFF)
// decodes alone to U+DC80 + (byte - 0x80), as Python's errors="surrogateescape" does; decoding
// resumes at the next byte, which gives the same code points as Python's maximal-subpart rule.
char32_t next_code_point(std::string_view s, size_t& i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char lead = byte(i);
  if (lead < 0x80) {
    ++i;
    return lead;
  }
  int length = 0;
  char32_t cp = 0, smallest = 0;  // smallest: below it the form is overlong
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2, cp = lead & 0x1F, smallest = 0x80;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3, cp = lead & 0x0F, smallest = 0x800;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4, cp = lead & 0x07, smallest = 0x10000;
  }
  bool valid = length > 0 && i + length <= s.size();
  for (int k = 1; valid && k < length; ++k) {
    const unsigned char next = byte(i + k);
    valid = (next & 0xC0) == 0x80;
    cp = (cp << 6) | (next & 0x3F);
  }
  valid = valid && cp >= smallest && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
  if (!valid) {
    ++i;
    return 0xDC00 + lead;
  }
  i += length;
  return cp;
}

// Python's str.isspace(), which str.split() and str.rstrip() use (Unicode White_Space minus
// U+180E, plus the information separators \x1c-\x1f).
bool is_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Python's s.split(): the runs of non-whitespace, as views into s.
std::vector<std::string_view> split_whitespace(std::string_view s) {
  std::vector<std::string_view> words;
  size_t start = std::string_view::npos;
  for (size_t i = 0; i < s.size();) {
    const size_t at = i;
    if (is_space(next_code_point(s, i))) {
      if (start != std::string_view::npos) words.push_back(s.substr(start, at - start));
      start = std::string_view::npos;
    } else if (start == std::string_view::npos) {
      start = at;
    }
  }
  if (start != std::string_view::npos) words.push_back(s.substr(start));
  return words;
}

// Python's s.rstrip().
std::string_view rstrip(std::string_view s) {
  size_t end = 0;
  for (size_t i = 0; i < s.size();) {
    if (!is_space(next_code_point(s, i))) end = i;
  }
  return s.substr(0, end);
}

// ---- 13a tokenizer ---------------------------------------------------------------------------

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  std::string out;
  size_t start = 0;
  for (size_t found; (found = s.find(from, start)) != std::string::npos; start = found + from.size()) {
    out.append(s, start, found - start).append(to);
  }
  if (start == 0) return;
  out.append(s, start);
  s = std::move(out);
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// The character class of tokenizer_re.py's first regex, [\{-\~\[-\` -\&\(-\+\:-\@\/]: ASCII
// punctuation and symbols except ' , - . (and space, which it also matches, harmlessly).
bool is_split_symbol(char c) {
  return (c >= '{' && c <= '~') || (c >= '[' && c <= '`') || (c >= ' ' && c <= '&') || (c >= '(' && c <= '+') ||
         (c >= ':' && c <= '@') || c == '/';
}

bool is_period_or_comma(char c) { return c == '.' || c == ','; }

}  // namespace

// Every pattern is ASCII and every byte of a multi-byte UTF-8 sequence is >= 0x80, so running
// the regexes over bytes changes exactly what Python's re.sub changes over code points: a
// non-ASCII character only ever plays the part of "not a digit", and re.sub's left-to-right,
// non-overlapping matching is reproduced by consuming both characters of a two-character match.
std::string tokenize_13a(std::string_view line) {
  // tokenizer_13a.py: the language-independent part.
  std::string s(line);
  replace_all(s, "<skipped>", "");
  replace_all(s, "-\n", "");
  replace_all(s, "\n", " ");
  replace_all(s, "&quot;", "\"");
  replace_all(s, "&amp;", "&");
  replace_all(s, "&lt;", "<");
  replace_all(s, "&gt;", ">");
  s = " " + s + " ";

  // tokenizer_re.py, regex 1: ([\{-\~\[-\` -\&\(-\+\:-\@\/]) -> " \1 ".
  std::string a;
  a.reserve(s.size() * 2);
  for (const char c : s) {
    if (is_split_symbol(c)) {
      a.append({' ', c, ' '});
    } else {
      a += c;
    }
  }
  // Regex 2: ([^0-9])([\.,]) -> "\1 \2 " (period and comma unless preceded by a digit).
  std::string b;
  b.reserve(a.size() * 2);
  for (size_t i = 0; i < a.size();) {
    if (i + 1 < a.size() && !is_digit(a[i]) && is_period_or_comma(a[i + 1])) {
      b.append({a[i], ' ', a[i + 1], ' '});
      i += 2;
    } else {
      b += a[i++];
    }
  }
  // Regex 3: ([\.,])([^0-9]) -> " \1 \2" (period and comma unless followed by a digit).
  std::string c;
  c.reserve(b.size() * 2);
  for (size_t i = 0; i < b.size();) {
    if (i + 1 < b.size() && is_period_or_comma(b[i]) && !is_digit(b[i + 1])) {
      c.append({' ', b[i], ' ', b[i + 1]});
      i += 2;
    } else {
      c += b[i++];
    }
  }
  // Regex 4: ([0-9])(-) -> "\1 \2 " (dash after a digit).
  std::string d;
  d.reserve(c.size() * 2);
  for (size_t i = 0; i < c.size();) {
    if (i + 1 < c.size() && is_digit(c[i]) && c[i + 1] == '-') {
      d.append({c[i], ' ', '-', ' '});
      i += 2;
    } else {
      d += c[i++];
    }
  }
  // ' '.join(line.split())
  std::string out;
  out.reserve(d.size());
  for (const auto word : split_whitespace(d)) {
    if (!out.empty()) out += ' ';
    out += word;
  }
  return out;
}

// ---- BLEU ------------------------------------------------------------------------------------

namespace {

constexpr int kBleuOrder = 4;

// utils.my_log: log floored at -9999999999 for a zero precision.
double floored_log(double x) { return x == 0.0 ? -9999999999.0 : std::log(x); }

// Token n-grams of a tokenized line, keyed by their text: tokens are joined by single spaces
// and hold no whitespace, so the n-gram (t_i .. t_i+n-1) is a substring of the line.
using NgramCounts = std::array<std::unordered_map<std::string_view, int64_t>, kBleuOrder>;

NgramCounts word_ngrams(std::string_view tokenized, const std::vector<std::string_view>& tokens) {
  NgramCounts counts;
  for (int n = 1; n <= kBleuOrder; ++n) {
    for (size_t i = 0; i + n <= tokens.size(); ++i) {
      const char* begin = tokens[i].data();
      const char* end = tokens[i + n - 1].data() + tokens[i + n - 1].size();
      ++counts[n - 1][tokenized.substr(begin - tokenized.data(), end - begin)];
    }
  }
  return counts;
}

}  // namespace

BleuScore corpus_bleu(const std::vector<std::string>& hyps, const std::vector<std::string>& refs) {
  if (hyps.size() != refs.size()) {
    fail("BLEU needs one reference per hypothesis: {} hypotheses, {} references", hyps.size(), refs.size());
  }
  // BLEU._extract_corpus_statistics / _compute_segment_statistics, summed (sum_of_lists).
  BleuScore result;
  for (size_t line = 0; line < hyps.size(); ++line) {
    const std::string hyp = tokenize_13a(rstrip(hyps[line]));
    const std::string ref = tokenize_13a(rstrip(refs[line]));
    const auto hyp_tokens = split_whitespace(hyp);
    const auto ref_tokens = split_whitespace(ref);
    const NgramCounts hyp_ngrams = word_ngrams(hyp, hyp_tokens);
    const NgramCounts ref_ngrams = word_ngrams(ref, ref_tokens);
    result.sys_len += static_cast<int64_t>(hyp_tokens.size());
    result.ref_len += static_cast<int64_t>(ref_tokens.size());
    for (int n = 0; n < kBleuOrder; ++n) {
      for (const auto& [ngram, count] : hyp_ngrams[n]) {
        result.totals[n] += count;
        const auto found = ref_ngrams[n].find(ngram);
        if (found != ref_ngrams[n].end()) result.counts[n] += std::min(count, found->second);
      }
    }
  }
  // BLEU.compute_bleu with smooth_method='exp', effective_order=False.
  result.ratio = result.ref_len ? static_cast<double>(result.sys_len) / static_cast<double>(result.ref_len) : 0.0;
  result.bp = 1.0;
  if (result.sys_len < result.ref_len) {
    result.bp = result.sys_len > 0
                    ? std::exp(1.0 - static_cast<double>(result.ref_len) / static_cast<double>(result.sys_len))
                    : 0.0;
  }
  bool any_match = false;
  for (const int64_t count : result.counts) any_match = any_match || count != 0;
  if (!any_match) return result;  // score 0, precisions 0 (sacrebleu issue #141)
  double smooth_mteval = 1.0;
  for (int n = 0; n < kBleuOrder; ++n) {
    if (result.totals[n] == 0) break;  // the higher orders keep precision 0
    const auto total = static_cast<double>(result.totals[n]);
    if (result.counts[n] == 0) {
      smooth_mteval *= 2;
      result.precisions[n] = 100.0 / (smooth_mteval * total);
    } else {
      result.precisions[n] = 100.0 * static_cast<double>(result.counts[n]) / total;
    }
  }
  double log_sum = 0.0;
  for (const double precision : result.precisions) log_sum += floored_log(precision);
  result.score = result.bp * std::exp(log_sum / kBleuOrder);
  return result;
}

std::string BleuScore::format() const {
  return fmt::format("BLEU = {:.2f} {:.1f}/{:.1f}/{:.1f}/{:.1f} (BP = {:.3f} ratio = {:.3f} hyp_len = {} ref_len = {})",
                     score, precisions[0], precisions[1], precisions[2], precisions[3], bp, ratio, sys_len, ref_len);
}

std::string bleu_signature() {
  return fmt::format("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{}", kSacrebleuVersion);
}

// ---- chrF ------------------------------------------------------------------------------------

namespace {

// helpers.extract_all_char_ngrams with include_whitespace=False: the line's code points with
// whitespace removed.
std::u32string characters_without_whitespace(std::string_view line) {
  std::u32string chars;
  chars.reserve(line.size());
  for (size_t i = 0; i < line.size();) {
    const char32_t c = next_code_point(line, i);
    if (!is_space(c)) chars += c;
  }
  return chars;
}

using CharNgramCounts = std::unordered_map<std::u32string_view, int64_t>;

CharNgramCounts char_ngrams(std::u32string_view chars, size_t n) {
  CharNgramCounts counts;
  for (size_t i = 0; i + n <= chars.size(); ++i) ++counts[chars.substr(i, n)];
  return counts;
}

// CHRF._compute_f_score on the corpus sums.
double chrf_f_score(const ChrfScore& stats, const ChrfOptions& options) {
  const double eps = 1e-16;
  const double factor = static_cast<double>(options.beta) * options.beta;
  double score = 0.0, avg_prec = 0.0, avg_rec = 0.0;
  int effective_order = 0;
  for (int i = 0; i < options.char_order; ++i) {
    const int64_t n_hyp = stats.hyp_ngrams[i], n_ref = stats.ref_ngrams[i], n_match = stats.matches[i];
    const double prec = n_hyp > 0 ? static_cast<double>(n_match) / static_cast<double>(n_hyp) : eps;
    const double rec = n_ref > 0 ? static_cast<double>(n_match) / static_cast<double>(n_ref) : eps;
    const double denom = factor * prec + rec;
    score += denom > 0 ? (1 + factor) * prec * rec / denom : eps;
    if (n_hyp > 0 && n_ref > 0) {
      avg_prec += prec;
      avg_rec += rec;
      ++effective_order;
    }
  }
  if (options.eps_smoothing) return 100 * score / options.char_order;
  if (effective_order == 0) {
    avg_prec = avg_rec = 0.0;
  } else {
    avg_prec /= effective_order;
    avg_rec /= effective_order;
  }
  if (avg_prec + avg_rec == 0.0) return 0.0;
  score = (1 + factor) * avg_prec * avg_rec;
  score /= factor * avg_prec + avg_rec;
  return 100 * score;
}

}  // namespace

ChrfScore corpus_chrf(const std::vector<std::string>& hyps, const std::vector<std::string>& refs,
                      const ChrfOptions& options) {
  if (hyps.size() != refs.size()) {
    fail("chrF needs one reference per hypothesis: {} hypotheses, {} references", hyps.size(), refs.size());
  }
  if (options.char_order < 1) fail("chrF char_order must be at least 1, got {}", options.char_order);
  if (options.beta < 1) fail("chrF beta must be at least 1, got {}", options.beta);
  ChrfScore result;
  result.beta = options.beta;
  result.hyp_ngrams.assign(options.char_order, 0);
  result.ref_ngrams.assign(options.char_order, 0);
  result.matches.assign(options.char_order, 0);
  // CHRF._compute_segment_statistics (one reference: its statistics are the best), summed.
  for (size_t line = 0; line < hyps.size(); ++line) {
    const std::u32string hyp = characters_without_whitespace(hyps[line]);
    const std::u32string ref = characters_without_whitespace(refs[line]);
    for (int n = 1; n <= options.char_order; ++n) {
      const CharNgramCounts hyp_counts = char_ngrams(hyp, n);
      const CharNgramCounts ref_counts = char_ngrams(ref, n);
      int64_t hyp_total = 0, ref_total = 0, match = 0;
      for (const auto& [ngram, count] : hyp_counts) {
        hyp_total += count;
        const auto found = ref_counts.find(ngram);
        if (found != ref_counts.end()) match += std::min(count, found->second);
      }
      for (const auto& entry : ref_counts) ref_total += entry.second;
      // CHRF._get_match_statistics: hypothesis n-grams count only where the reference has some.
      result.hyp_ngrams[n - 1] += ref_counts.empty() ? 0 : hyp_total;
      result.ref_ngrams[n - 1] += ref_total;
      result.matches[n - 1] += match;
    }
  }
  result.score = chrf_f_score(result, options);
  return result;
}

std::string ChrfScore::format() const { return fmt::format("chrF{} = {:.2f}", beta, score); }

std::string chrf_signature(const ChrfOptions& options) {
  return fmt::format("nrefs:1|case:mixed|eff:{}|nc:{}|nw:0|space:no|version:{}", options.eps_smoothing ? "no" : "yes",
                     options.char_order, kSacrebleuVersion);
}

}  // namespace loom

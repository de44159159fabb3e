// Parallel corpora for translation: sentence pairs from text reachable through Debian, aligned,
// cleaned and split into <data_dir>/<name>/{train,valid,test}.{en,de}, where line i of .en
// translates line i of .de. See docs/data.md ("Parallel corpora").
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace loom {

// The six files of one translation direction (src -> tgt) of a parallel corpus.
struct ParallelFiles {
  std::string dir;  // <data_dir>/<name>/
  std::string train_src, train_tgt, valid_src, valid_tgt, test_src, test_tgt;
};

// Fetches and converts parallel corpus `name` (built in: "ende") under `data_dir`; cached: does
// nothing when the six files exist. src_lang and tgt_lang are the corpus's two languages in either
// order ("en", "de" or "de", "en"); they only choose which files are called src and which tgt.
ParallelFiles fetch_parallel_corpus(const std::string& name, const std::string& data_dir, const std::string& src_lang,
                                    const std::string& tgt_lang);

std::vector<std::string> known_parallel_corpora();

// The two languages of a built-in parallel corpus, e.g. {"en", "de"} for "ende".
std::pair<std::string, std::string> parallel_corpus_languages(const std::string& name);

// The pieces of the conversion, exposed for tests.
namespace parallel {

// One aligned segment: `doc` names the source document it came from (the split unit).
struct Pair {
  std::string en, de, doc;
};

// ---- LibreOffice help pages ----

// A paragraph or heading of a help page and its key: the element's id (par_id..., hd_id...),
// suffixed "#2", "#3", ... on its second, third... occurrence in the same page.
struct HelpParagraph {
  std::string key, text;
};

// Paragraphs (<p>) and headings (<h1>..<h6>) that carry an id, in page order, as plain text
// (strip_markup). Only the page body is read (from id="DisplayArea" to the SearchFrame/footer,
// when present); program code and formula paragraphs (class code, codeintable, smathcode) are
// skipped.
std::vector<HelpParagraph> help_paragraphs(std::string_view html);

// The inner HTML of an element as plain text: tags removed (block tags and <br> become a space),
// the hidden alternatives of a "switchinline" (hidden="true" spans whose id does not start with
// "default", e.g. the MAC variant) dropped, entities unescaped, whitespace normalized.
std::string strip_markup(std::string_view html);

// &amp; &lt; &gt; &quot; &apos; &nbsp; and numeric references (&#38; &#x26;) decoded to UTF-8;
// anything else is kept as written.
std::string unescape_entities(std::string_view text);

// Runs of whitespace (ASCII and U+00A0) become one space; leading and trailing ones are removed.
std::string normalize_space(std::string_view text);

// Pairs the paragraphs of one page in both languages by key, in the English page's order; a key
// on one side only is skipped.
std::vector<Pair> align_help_page(std::string_view en_html, std::string_view de_html, const std::string& doc);

// ---- trans-de-en dictionary (Frank Richter's "Ding" de-en list) ----

// Counts of what parse_trans_line met, summed over calls.
struct TransStats {
  size_t lines = 0, malformed = 0, sense_count_mismatch = 0, sense_pairs = 0, sentence_pairs = 0;
};

// One line "de senses :: en senses"; senses are split by " | " and paired positionally only when
// both sides have the same number. In a sense, annotations ({f}, [ugs.], <alt. spelling>) are
// removed and "; " separates synonyms: with as many synonyms on both sides they pair positionally,
// else the first with the first. Only sentence-like pairs are returned; their doc is
// "trans-de-en/<headword>" (the first German synonym of the line, annotations and parentheses
// removed). Comment lines (#) and empty lines give nothing.
std::vector<Pair> parse_trans_line(std::string_view line, TransStats* stats);

// A sentence, not a dictionary phrase: at least kMinSentenceWords words, starts with an upper-case
// letter, a digit or an opening quote, ends with . ! or ? (optionally followed by a closing quote
// or parenthesis), and has no placeholder (etw., jdn., sth., sb., ...), no "…" and no "/" (the
// dictionary's inline alternatives: "gut / schlecht").
constexpr size_t kMinSentenceWords = 3;
bool sentence_like(std::string_view text);

// ---- gettext catalogs ----

// The (msgid, msgstr) pairs of a GNU .mo file (either byte order); entries with a context, plural
// entries, the header (empty msgid) and untranslated entries are skipped. Malformed data is an
// error naming `what`.
std::vector<std::pair<std::string, std::string>> read_mo(std::string_view data, const std::string& what);

// ---- cleaning and splitting ----

constexpr size_t kMaxChars = 250;        // longest side kept, in Unicode code points
constexpr double kMaxLengthRatio = 3.0;  // longest/shortest side, in code points

size_t utf8_length(std::string_view text);

// How many pairs each rule removed, in the order the rules run.
struct CleanStats {
  size_t input = 0, empty = 0, too_long = 0, length_ratio = 0, untranslated = 0, duplicate = 0, valid_overlaps_test = 0,
         train_overlaps_eval = 0;
};

// Drops pairs with an empty side, a side longer than kMaxChars, a length ratio above
// kMaxLengthRatio, or identical sides that contain a letter (untranslated); then exact duplicate
// (en, de) pairs after the first. Order is kept.
std::vector<Pair> clean_pairs(std::vector<Pair> pairs, CleanStats* stats);

uint64_t fnv1a64(std::string_view text);

// The split of a document: FNV-1a 64 of its key mod 1000; [0, kValidPerMille) -> valid,
// [kValidPerMille, kValidPerMille + kTestPerMille) -> test, the rest train.
enum class Split { Train, Valid, Test };
constexpr uint64_t kValidPerMille = 25, kTestPerMille = 25;
Split split_of(std::string_view doc);

struct SplitPairs {
  std::vector<Pair> train, valid, test;
};

// Splits by document, then makes the evaluation sets clean: a valid pair whose English or German
// side also occurs in test is dropped, and a train pair whose English or German side occurs in
// valid or test is dropped (counted in `stats`).
SplitPairs split_pairs(const std::vector<Pair>& pairs, CleanStats* stats);

}  // namespace parallel
}  // namespace loom

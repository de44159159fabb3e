// Tests for src/loom/data/parallel: help-page paragraph extraction and alignment, the trans-de-en
// line parser, .mo reading, each cleaning rule, the document split, and (when the Debian packages
// can be had) the real en-de corpus end to end.
#include <gtest/gtest.h>

#include <unistd.h>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "loom/core/error.h"
#include "loom/data/parallel.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace loom;
using namespace loom::parallel;

namespace {

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// The skeleton of a generated help page: a header and a debug footer around the body, which both
// hold paragraphs that must not be read.
std::string page(const std::string& lang, const std::string& body) {
  return "<!DOCTYPE html>\n<html lang=\"" + lang +
         "\"><head><title>T</title></head><body>\n"
         "<header id=\"TopLeftHeader\"><p id=\"par_id000\" dir=\"auto\">LibreOffice Help</p></header>\n"
         "<div id=\"DisplayArea\" itemprop=\"softwareHelp\">\n" +
         body +
         "\n</div>\n<div id=\"SearchFrame\"></div>\n<footer><div id=\"DEBUG\" class=\"debug\">"
         "<p id=\"bm_module\" dir=\"auto\">debug</p></div></footer></body></html>\n";
}

}  // namespace

// ---- LibreOffice help ----

TEST(ParallelHelp, ParagraphsAndHeadingsWithIdsFromTheBodyOnly) {
  const std::string html =
      page("en-US",
           "<h1 id=\"hd_id1\" dir=\"auto\">Load/Save options</h1>\n"
           "<p id=\"par_id2\" class=\"paragraph\" dir=\"auto\"><a name=\"x\"></a>"
           "<span class=\"avis\">Specifies   general\n settings. </span></p>\n"
           "<p class=\"embedded\" dir=\"auto\">No id: not aligned.</p>\n"
           "<p id=\"par_id3\" class=\"code\">Dim a As Integer</p>\n"
           "<table><tr><td><p id=\"par_id4\" class=\"tablecontentintable\">Cell</p></td></tr></table>\n"
           "<p id=\"par_id2\" class=\"paragraph\">Embedded again.</p>");
  const auto paras = help_paragraphs(html);
  ASSERT_EQ(paras.size(), 4u);
  EXPECT_EQ(paras[0].key, "hd_id1");
  EXPECT_EQ(paras[0].text, "Load/Save options");
  EXPECT_EQ(paras[1].key, "par_id2");
  EXPECT_EQ(paras[1].text, "Specifies general settings.");
  EXPECT_EQ(paras[2].key, "par_id4");
  EXPECT_EQ(paras[2].text, "Cell");
  EXPECT_EQ(paras[3].key, "par_id2#2");  // a repeated id is numbered by occurrence
  EXPECT_EQ(paras[3].text, "Embedded again.");
}

TEST(ParallelHelp, StripMarkupKeepsTheDefaultSwitchVariantAndUnescapes) {
  // A switchinline: the MAC variant is dropped, the default one kept.
  EXPECT_EQ(strip_markup("Choose <span id=\"swlnsys1\" class=\"switchinline\"><span hidden=\"true\" "
                         "id=\"MACtext1\" class=\"MAC\"><span class=\"emph\">LibreOffice - "
                         "Preferences</span></span><span hidden=\"true\" id=\"defaulttext1\"><span "
                         "class=\"emph\">Tools - Options</span></span></span><span class=\"emph\"> - "
                         "Load/Save</span>."),
            "Choose Tools - Options - Load/Save.");
  // Nested inline tags join without spaces; block tags and <br> separate words.
  EXPECT_EQ(strip_markup("<b>bo<i>ld</i></b>er<br>next<div>block</div>end"), "bolder next block end");
  // Entities are decoded once, after the tags are gone (so &lt;b&gt; is text, not a tag).
  EXPECT_EQ(strip_markup("A &amp; B &lt;b&gt; &quot;q&quot; &#252;ber &#xE4; &amp;lt;"),
            "A & B <b> \"q\" \u00fcber \u00e4 &lt;");
  EXPECT_EQ(strip_markup("x<!-- <p>comment</p> -->y <img src=\"a.svg\" alt=\"icon\"> z"), "xy z");
  EXPECT_EQ(strip_markup("a < b and c > d"), "a < b and c > d");
  EXPECT_EQ(strip_markup("<a href='x>y'>link</a> text"), "link text");
}

TEST(ParallelHelp, UnescapeAndNormalize) {
  EXPECT_EQ(unescape_entities("&unknown; & &#0; &#xZZ; &amp"), "&unknown; & &#0; &#xZZ; &amp");
  EXPECT_EQ(unescape_entities("&#128512;"), "\U0001F600");
  EXPECT_EQ(normalize_space("  a \t\n b\u00a0\u00a0c  "), "a b c");
  EXPECT_EQ(normalize_space(""), "");
}

TEST(ParallelHelp, AlignByIdInEnglishOrderSkippingOneSidedIds) {
  const std::string en = page("en-US",
                              "<h1 id=\"hd_id1\">Title</h1>"
                              "<p id=\"par_id2\">Only in English.</p>"
                              "<p id=\"par_id3\">Click <span class=\"emph\">OK</span> &amp; go.</p>"
                              "<p id=\"par_id4\">Second.</p>");
  const std::string de = page("de",
                              "<p id=\"par_id4\">Zweitens.</p>"
                              "<h1 id=\"hd_id1\">Titel</h1>"
                              "<p id=\"par_id3\">Klicken Sie <span class=\"emph\">OK</span> &amp; los.</p>"
                              "<p id=\"par_id9\">Nur auf Deutsch.</p>");
  const auto pairs = align_help_page(en, de, "libreoffice-help/text/a.html");
  ASSERT_EQ(pairs.size(), 3u);
  EXPECT_EQ(pairs[0].en, "Title");
  EXPECT_EQ(pairs[0].de, "Titel");
  EXPECT_EQ(pairs[1].en, "Click OK & go.");
  EXPECT_EQ(pairs[1].de, "Klicken Sie OK & los.");
  EXPECT_EQ(pairs[2].en, "Second.");
  EXPECT_EQ(pairs[2].de, "Zweitens.");
  for (const auto& p : pairs) EXPECT_EQ(p.doc, "libreoffice-help/text/a.html");
}

// ---- trans-de-en ----

TEST(ParallelTrans, SentenceLike) {
  EXPECT_TRUE(sentence_like("Ich folgte ihm mit einigem Abstand."));
  EXPECT_TRUE(sentence_like("Keep a distance!"));
  EXPECT_TRUE(sentence_like("Wie ist der zeitliche Ablauf?"));
  EXPECT_TRUE(sentence_like("\u00c4rger gibt es immer."));
  EXPECT_TRUE(sentence_like("\u201EDas ist gut so.\u201C"));
  EXPECT_TRUE(sentence_like("He said it (twice)."));
  EXPECT_FALSE(sentence_like("Abstand halten!"));  // fewer than kMinSentenceWords words
  EXPECT_FALSE(sentence_like("to find a remedy"));
  EXPECT_FALSE(sentence_like("departure from the previous scheme."));  // lower case
  EXPECT_FALSE(sentence_like("Abgehen von etw."));                     // placeholder
  EXPECT_FALSE(sentence_like("He gave sb. a book."));
  EXPECT_FALSE(sentence_like("We got a good/bad deal."));  // inline alternatives
  EXPECT_FALSE(sentence_like("Wir haben es gut / schlecht getroffen."));
  EXPECT_FALSE(sentence_like("It is the case that \u2026 ."));
  EXPECT_FALSE(sentence_like(""));
}

TEST(ParallelTrans, ParseLine) {
  TransStats stats;
  EXPECT_TRUE(parse_trans_line("# License :: GPL Version 2 or later", &stats).empty());
  EXPECT_TRUE(parse_trans_line("", &stats).empty());
  EXPECT_EQ(stats.lines, 0u);

  const auto pairs = parse_trans_line(
      "Abendessen {n} (als Hauptmahlzeit) [cook.] | zu Abend essen | Wollen wir zusammen essen? "
      "[ugs.] | Noch ist nicht aller Tage Abend.; Man soll den Tag nicht vor dem Abend loben. | "
      "Das ist gut.; Das ist sehr gut. :: dinner | to have dinner | Would you like to have dinner "
      "with me? | It is not over until it is over. | That is good.; That is very good.",
      &stats);
  ASSERT_EQ(pairs.size(), 4u);
  EXPECT_EQ(pairs[0].de, "Wollen wir zusammen essen?");  // annotation removed
  EXPECT_EQ(pairs[0].en, "Would you like to have dinner with me?");
  // Unequal synonym counts: first with first.
  EXPECT_EQ(pairs[1].de, "Noch ist nicht aller Tage Abend.");
  EXPECT_EQ(pairs[1].en, "It is not over until it is over.");
  // Equal synonym counts: positionally.
  EXPECT_EQ(pairs[2].de, "Das ist gut.");
  EXPECT_EQ(pairs[2].en, "That is good.");
  EXPECT_EQ(pairs[3].de, "Das ist sehr gut.");
  EXPECT_EQ(pairs[3].en, "That is very good.");
  for (const auto& p : pairs) EXPECT_EQ(p.doc, "trans-de-en/Abendessen");
  EXPECT_EQ(stats.lines, 1u);
  EXPECT_EQ(stats.sense_pairs, 5u);
  EXPECT_EQ(stats.sentence_pairs, 4u);

  // Unequal sense counts: nothing is paired.
  EXPECT_TRUE(parse_trans_line("Ich bin hier. | Du bist da. :: I am here.", &stats).empty());
  EXPECT_EQ(stats.sense_count_mismatch, 1u);
  EXPECT_TRUE(parse_trans_line("Kein Trenner hier.", &stats).empty());
  EXPECT_EQ(stats.malformed, 1u);
  EXPECT_EQ(stats.lines, 3u);
}

// ---- gettext ----

namespace {

// A .mo file with `entries` (msgid, msgstr), in little- or big-endian byte order.
std::string make_mo(const std::vector<std::pair<std::string, std::string>>& entries, bool big) {
  auto u32 = [big](uint32_t v) {
    if (big) v = __builtin_bswap32(v);
    std::string s(4, '\0');
    std::memcpy(s.data(), &v, 4);
    return s;
  };
  const uint32_t n = entries.size(), ids = 28, strs = ids + 8 * n;
  std::string header = u32(0x950412de) + u32(0) + u32(n) + u32(ids) + u32(strs) + u32(0) + u32(0);
  std::string blob;
  uint32_t offset = strs + 8 * n;
  std::string id_table, str_table;
  for (const auto& [id, str] : entries) {
    id_table += u32(id.size()) + u32(offset + blob.size());
    blob += id + '\0';
  }
  for (const auto& [id, str] : entries) {
    str_table += u32(str.size()) + u32(offset + blob.size());
    blob += str + '\0';
  }
  return header + id_table + str_table + blob;
}

}  // namespace

TEST(ParallelGettext, ReadMoBothByteOrdersSkippingHeaderContextPluralsAndUntranslated) {
  const std::vector<std::pair<std::string, std::string>> entries = {
      {"", "Content-Type: text/plain; charset=UTF-8\n"},
      {"Read one line.", "Eine Zeile lesen."},
      {std::string("menu\x04Open"), "\u00d6ffnen"},
      {std::string("one file\0%d files", 17), std::string("eine Datei\0%d Dateien", 21)},
      {"Not translated.", ""},
  };
  for (bool big : {false, true}) {
    const auto messages = read_mo(make_mo(entries, big), "test.mo");
    ASSERT_EQ(messages.size(), 1u);
    EXPECT_EQ(messages[0].first, "Read one line.");
    EXPECT_EQ(messages[0].second, "Eine Zeile lesen.");
  }
  EXPECT_NE(error_message([] { read_mo("short", "bad.mo"); }).find("bad.mo"), std::string::npos);
  std::string mo = make_mo(entries, false);
  mo.resize(40);
  EXPECT_NE(error_message([&] { read_mo(mo, "cut.mo"); }).find("cut.mo"), std::string::npos);
  mo = make_mo(entries, false);
  mo[0] = 'X';
  EXPECT_NE(error_message([&] { read_mo(mo, "magic.mo"); }).find("magic"), std::string::npos);
}

// ---- cleaning ----

TEST(ParallelClean, EachRuleAndItsCount) {
  const std::string long_side(kMaxChars + 1, 'x');
  std::string max_utf8;  // kMaxChars code points, twice as many bytes: kept
  for (size_t i = 0; i < kMaxChars; ++i) max_utf8 += "\u00e4";
  std::string max_ascii(kMaxChars, 'a');
  std::vector<Pair> pairs = {
      {"Good morning.", "Guten Morgen.", "d1"},
      {"", "Leer.", "d1"},
      {"Empty.", "", "d1"},
      {long_side, "Zu lang.", "d1"},
      {max_utf8, max_ascii, "d1"},                                                    // kept: 250 code points each
      {"A short one.", "Ein sehr, sehr, sehr, sehr viel l\u00e4ngerer Satz.", "d1"},  // ratio > 3
      {"abc", "abcdefghi", "d1"},                                                     // ratio exactly 3: kept
      {"LibreOffice Writer", "LibreOffice Writer", "d1"},                             // untranslated
      {"100%", "100%", "d1"},                                                         // identical without letters: kept
      {"Good morning.", "Guten Morgen.", "d2"},                                       // duplicate pair
      {"Good morning.", "Moin.", "d2"},  // same English, other German: kept
  };
  CleanStats stats;
  const auto kept = clean_pairs(pairs, &stats);
  EXPECT_EQ(stats.input, 11u);
  EXPECT_EQ(stats.empty, 2u);
  EXPECT_EQ(stats.too_long, 1u);
  EXPECT_EQ(stats.length_ratio, 1u);
  EXPECT_EQ(stats.untranslated, 1u);
  EXPECT_EQ(stats.duplicate, 1u);
  ASSERT_EQ(kept.size(), 5u);
  EXPECT_EQ(kept[0].de, "Guten Morgen.");
  EXPECT_EQ(kept[0].doc, "d1");  // the first occurrence is the one kept
  EXPECT_EQ(kept[1].en, max_utf8);
  EXPECT_EQ(kept[2].en, "abc");
  EXPECT_EQ(kept[3].en, "100%");
  EXPECT_EQ(kept[4].de, "Moin.");
  EXPECT_EQ(utf8_length("a\u00e4\u20ac\U0001F600"), 4u);
}

// ---- splitting ----

TEST(ParallelSplit, StableHashAndFractions) {
  // FNV-1a 64 reference values.
  EXPECT_EQ(fnv1a64(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(fnv1a64("a"), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(fnv1a64("foobar"), 0x85944171f73967e8ull);
  size_t counts[3] = {0, 0, 0};
  const size_t n = 100000;
  for (size_t i = 0; i < n; ++i) {
    const std::string doc = "doc/" + std::to_string(i);
    const Split s = split_of(doc);
    EXPECT_EQ(split_of(doc), s);
    ++counts[int(s)];
  }
  const double valid = double(counts[int(Split::Valid)]) / n, test = double(counts[int(Split::Test)]) / n;
  EXPECT_NEAR(valid, kValidPerMille / 1000.0, 0.003);
  EXPECT_NEAR(test, kTestPerMille / 1000.0, 0.003);
}

TEST(ParallelSplit, ByDocumentAndEvaluationSidesNeverInTrain) {
  // Find documents that land in each split.
  std::string doc[3];
  for (int i = 0; doc[0].empty() || doc[1].empty() || doc[2].empty(); ++i) {
    const std::string d = "d" + std::to_string(i);
    std::string& slot = doc[int(split_of(d))];
    if (slot.empty()) slot = d;
  }
  const std::string& train = doc[int(Split::Train)];
  const std::string& valid = doc[int(Split::Valid)];
  const std::string& test = doc[int(Split::Test)];
  const std::vector<Pair> pairs = {
      {"One.", "Eins.", train},    {"Two.", "Zwei.", valid},
      {"Three.", "Drei.", test},   {"Two.", "Zwo.", train},  // English side in valid: dropped from train
      {"Tri.", "Drei.", train},                              // German side in test: dropped from train
      {"Three.", "Dreie.", valid},                           // English side in test: dropped from valid
      {"Four.", "Vier.", train},   {"Five.", "F\u00fcnf.", valid},
  };
  CleanStats stats;
  const SplitPairs split = split_pairs(pairs, &stats);
  auto ens = [](const std::vector<Pair>& v) {
    std::vector<std::string> out;
    for (const auto& p : v) out.push_back(p.en);
    return out;
  };
  EXPECT_EQ(ens(split.train), (std::vector<std::string>{"One.", "Four."}));
  EXPECT_EQ(ens(split.valid), (std::vector<std::string>{"Two.", "Five."}));
  EXPECT_EQ(ens(split.test), (std::vector<std::string>{"Three."}));
  EXPECT_EQ(stats.train_overlaps_eval, 2u);
  EXPECT_EQ(stats.valid_overlaps_test, 1u);
  // Deterministic: the same input splits the same way.
  CleanStats again;
  EXPECT_EQ(ens(split_pairs(pairs, &again).train), ens(split.train));
}

// ---- fetching ----

TEST(ParallelCorpus, NamesLanguagesAndCache) {
  EXPECT_EQ(known_parallel_corpora(), (std::vector<std::string>{"ende"}));
  EXPECT_EQ(parallel_corpus_languages("ende"), (std::pair<std::string, std::string>{"en", "de"}));
  EXPECT_NE(error_message([] { parallel_corpus_languages("xx"); }).find("ende"), std::string::npos);
  TempDir dir;
  const std::string d = dir.path.string();
  std::string msg = error_message([&] { fetch_parallel_corpus("enfr", d, "en", "fr"); });
  EXPECT_NE(msg.find("enfr"), std::string::npos) << msg;
  EXPECT_NE(msg.find("ende"), std::string::npos) << msg;
  msg = error_message([&] { fetch_parallel_corpus("ende", d, "en", "fr"); });
  EXPECT_NE(msg.find("fr"), std::string::npos) << msg;

  // Six existing files are the cache: nothing is fetched or rewritten.
  fs::create_directories(dir.path / "ende");
  for (const char* split : {"train", "valid", "test"})
    for (const char* lang : {"en", "de"}) std::ofstream(dir.path / "ende" / (std::string(split) + "." + lang)) << "x\n";
  const ParallelFiles ende = fetch_parallel_corpus("ende", d, "en", "de");
  EXPECT_EQ(ende.train_src, (dir.path / "ende/train.en").string());
  EXPECT_EQ(ende.train_tgt, (dir.path / "ende/train.de").string());
  EXPECT_EQ(ende.test_tgt, (dir.path / "ende/test.de").string());
  const ParallelFiles deen = fetch_parallel_corpus("ende", d, "de", "en");
  EXPECT_EQ(deen.valid_src, (dir.path / "ende/valid.de").string());
  EXPECT_EQ(deen.valid_tgt, (dir.path / "ende/valid.en").string());
  EXPECT_EQ(read_lines(deen.train_src), (std::vector<std::string>{"x"}));
}

// The real corpus from the Debian packages (installed, or fetched with apt-get download). The
// set-up step needs Debian's archive anyway, so a failed fetch is a failure, not a skip.
TEST(ParallelCorpus, EndeFromDebianPackages) {
  TempDir dir;
  ParallelFiles files;
  try {
    files = fetch_parallel_corpus("ende", dir.path.string(), "en", "de");
  } catch (const loom::Error& e) {
    FAIL() << "the Debian packages could not be fetched (apt-get download needs the archive): " << e.what();
  }
  const auto train_en = read_lines(files.train_src), train_de = read_lines(files.train_tgt);
  const auto valid_en = read_lines(files.valid_src), valid_de = read_lines(files.valid_tgt);
  const auto test_en = read_lines(files.test_src), test_de = read_lines(files.test_tgt);
  ASSERT_EQ(train_en.size(), train_de.size());
  ASSERT_EQ(valid_en.size(), valid_de.size());
  ASSERT_EQ(test_en.size(), test_de.size());
  // Measured on Debian 12: 50,379 / 1,143 / 1,242 pairs.
  EXPECT_GT(train_en.size(), 40000u);
  EXPECT_LT(train_en.size(), 60000u);
  for (size_t n : {valid_en.size(), test_en.size()}) {
    EXPECT_GT(n, 800u);
    EXPECT_LT(n, 2500u);
  }
  // No English or German side of valid or test occurs on the same side of train.
  const std::set<std::string> held_en(valid_en.begin(), valid_en.end());
  const std::set<std::string> held_de(valid_de.begin(), valid_de.end());
  size_t leaked = 0;
  for (size_t i = 0; i < train_en.size(); ++i) {
    EXPECT_FALSE(train_en[i].empty());
    EXPECT_FALSE(train_de[i].empty());
    EXPECT_LE(utf8_length(train_en[i]), kMaxChars);
    EXPECT_LE(utf8_length(train_de[i]), kMaxChars);
    leaked += held_en.count(train_en[i]) + held_de.count(train_de[i]);
  }
  for (size_t i = 0; i < test_en.size(); ++i) {
    EXPECT_FALSE(test_en[i].empty());
    leaked += held_en.count(test_en[i]) + held_de.count(test_de[i]);
  }
  EXPECT_EQ(leaked, 0u);
  const std::set<std::string> test_en_set(test_en.begin(), test_en.end());
  const std::set<std::string> test_de_set(test_de.begin(), test_de.end());
  for (size_t i = 0; i < train_en.size(); ++i) {
    leaked += test_en_set.count(train_en[i]) + test_de_set.count(train_de[i]);
  }
  EXPECT_EQ(leaked, 0u);
  std::set<std::pair<std::string, std::string>> unique;
  for (size_t i = 0; i < train_en.size(); ++i) unique.emplace(train_en[i], train_de[i]);
  EXPECT_EQ(unique.size(), train_en.size());

  const auto mtime = fs::last_write_time(files.test_src);
  fetch_parallel_corpus("ende", dir.path.string(), "de", "en");
  EXPECT_EQ(fs::last_write_time(files.test_src), mtime);
}

// Tests for src/loom/data: the R reader, corpus splitting, the tokenizer, token files and batching.
#include <gtest/gtest.h>

#include <unistd.h>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "loom/core/error.h"
#include "loom/data/corpus.h"
#include "loom/data/lm_data.h"
#include "loom/data/rdata.h"
#include "loom/data/token_stream.h"
#include "loom/data/tokenizer.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace loom;

namespace {

// Builds R XDR bytes by hand (big-endian 32-bit words, as R's serialize.c writes them).
struct Xdr {
  std::string bytes;
  Xdr& i32(int32_t v) {
    for (int s = 24; s >= 0; s -= 8) bytes += static_cast<char>((static_cast<uint32_t>(v) >> s) & 0xFF);
    return *this;
  }
  Xdr& raw(const std::string& s) {
    bytes += s;
    return *this;
  }
  Xdr& header(int version) {
    raw("X\n").i32(version).i32(0x040201).i32(0x030500);
    if (version == 3) i32(5).raw("UTF-8");
    return *this;
  }
  Xdr& charsxp(const std::string& s, int32_t flags = 0x00040009) {  // 0x40000: ASCII level
    return i32(flags).i32(static_cast<int32_t>(s.size())).raw(s);
  }
};

std::string expect_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected loom::Error";
  return "";
}

}  // namespace

// ---- R unserialize ----

TEST(RData, StringVectorWithNA) {
  for (int version : {2, 3}) {
    Xdr x;
    x.header(version).i32(16).i32(3);                        // STRSXP of 3
    x.charsxp("hello").charsxp("h\xC3\xA9llo", 0x00008009);  // UTF-8 level
    x.i32(0x00000009).i32(-1);                               // NA_STRING
    rdata::RPtr obj = rdata::unserialize(x.bytes, "blob");
    ASSERT_EQ(obj->type, rdata::RType::String);
    ASSERT_EQ(obj->strings.size(), 3u);
    EXPECT_EQ(obj->strings[0], "hello");
    EXPECT_EQ(obj->strings[1], "h\xC3\xA9llo");
    EXPECT_FALSE(obj->strings[2].has_value());
  }
}

TEST(RData, Latin1StringBecomesUtf8) {
  Xdr x;
  x.header(3).i32(16).i32(1).charsxp("caf\xE9", 0x00004009);  // LATIN1 level (4)
  EXPECT_EQ(rdata::unserialize(x.bytes, "blob")->strings[0], "caf\xC3\xA9");
}

// list(a = c(7L, 9L), b = list(c = TRUE)): exercises VECSXP, INTSXP, LGLSXP, attribute
// pairlists with tags, SYMSXP, and a REFSXP back to the symbol `names`.
TEST(RData, NamedListWithSymbolReference) {
  Xdr x;
  x.header(3).i32(0x213).i32(2);
  x.i32(13).i32(2).i32(7).i32(9);             // INTSXP 7, 9
  x.i32(0x213).i32(1).i32(10).i32(1).i32(1);  // VECSXP { LGLSXP TRUE }
  x.i32(0x402).i32(1).charsxp("names");       //   attr: LISTSXP, tag SYMSXP "names"
  x.i32(16).i32(1).charsxp("c").i32(254);     //   STRSXP "c"; NILVALUE ends the pairlist
  x.i32(0x402).i32(0x1FF);                    // attr: LISTSXP, tag REFSXP #1 ("names")
  x.i32(16).i32(2).charsxp("a").charsxp("b").i32(254);
  rdata::RPtr obj = rdata::unserialize(x.bytes, "blob");
  ASSERT_EQ(obj->type, rdata::RType::List);
  EXPECT_EQ(obj->names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(obj->items[0]->ints, (std::vector<int32_t>{7, 9}));
  EXPECT_EQ(obj->items[1]->names(), std::vector<std::string>{"c"});
  EXPECT_EQ(obj->items[1]->items[0]->type, rdata::RType::Logical);
  EXPECT_EQ(obj->items[1]->items[0]->ints, std::vector<int32_t>{1});
}

TEST(RData, MalformedInputIsError) {
  Xdr ok;
  ok.header(3).i32(16).i32(1).charsxp("hello");
  const std::string truncated = ok.bytes.substr(0, ok.bytes.size() - 2);
  EXPECT_NE(expect_error([&] { rdata::unserialize(truncated, "t.rds"); }).find("t.rds: truncated"), std::string::npos);
  Xdr real;
  real.header(3).i32(14).i32(1).i32(0).i32(0);  // REALSXP: outside the subset
  EXPECT_NE(expect_error([&] { rdata::unserialize(real.bytes, "r.rds"); }).find("type 14"), std::string::npos);
  Xdr v4;
  v4.header(2);
  v4.bytes[5] = 4;  // version 4
  EXPECT_NE(expect_error([&] { rdata::unserialize(v4.bytes, "v.rds"); }).find("version 4"), std::string::npos);
  EXPECT_NE(expect_error([&] { rdata::unserialize("A\n", "a.rds"); }).find("not an R XDR"), std::string::npos);
  EXPECT_NE(expect_error([&] { rdata::unserialize(ok.bytes + "x", "x.rds"); }).find("trailing"), std::string::npos);
}

// ---- corpus ----

TEST(Corpus, JoinParagraphs) {
  const std::vector<std::string> lines = {"CHAPTER I", "", "", "  It was a ", "truth.", "", "End", ""};
  EXPECT_EQ(join_paragraphs(lines), (std::vector<std::string>{"CHAPTER I", "It was a truth.", "End"}));
}

TEST(Corpus, SplitCountsAreFixedFractions) {
  const SplitCounts c = split_counts(1000);
  EXPECT_EQ(c.train, 900u);
  EXPECT_EQ(c.valid, 50u);
  EXPECT_EQ(c.test, 50u);
  for (size_t n : {0u, 1u, 7u, 19u, 20u, 3333u}) {
    const SplitCounts s = split_counts(n);
    EXPECT_EQ(s.train + s.valid + s.test, n);
    EXPECT_EQ(s.train, n * 9 / 10);
  }
}

TEST(Corpus, UnknownNameListsKnownOnes) {
  TempDir dir;
  const std::string msg = expect_error([&] { fetch_corpus("shakespeare", dir.path.string()); });
  EXPECT_NE(msg.find("shakespeare"), std::string::npos);
  EXPECT_NE(msg.find("austen"), std::string::npos);
}

TEST(Corpus, AustenFetchAndSplit) {
  const std::string prefix = "/usr/lib/R/site-library/janeaustenr/data/Rdata";
  // scripts/setup.sh installs the package: its absence is a set-up failure, not a skip.
  ASSERT_TRUE(fs::exists(prefix + ".rdb"))
      << "Debian package r-cran-janeaustenr is not installed (run scripts/setup.sh)";
  const auto objects = rdata::read_lazyload_db(prefix);
  const char* novels[] = {"sensesensibility", "prideprejudice", "mansfieldpark", "emma",
                          "northangerabbey",  "persuasion"};
  for (const char* novel : novels) {
    ASSERT_TRUE(objects.count(novel)) << novel;
    EXPECT_EQ(objects.at(novel)->type, rdata::RType::String);
    EXPECT_GT(objects.at(novel)->strings.size(), 7000u) << novel;
  }
  EXPECT_EQ(objects.at("emma")->strings[0], "EMMA");

  TempDir dir;
  const CorpusFiles files = fetch_corpus("austen", dir.path.string());
  EXPECT_EQ(files.train, dir / "austen/train.txt");
  const auto size = [](const std::string& p) { return fs::file_size(p); };
  // The six novels hold about 4 MB of text; the split is 90/5/5 by paragraphs.
  EXPECT_GT(size(files.train), 3'000'000u);
  EXPECT_LT(size(files.train), 4'500'000u);
  for (const auto* p : {&files.valid, &files.test}) {
    EXPECT_GT(size(*p), 100'000u) << *p;
    EXPECT_LT(size(*p), 350'000u) << *p;
  }
  std::ifstream in(files.train);
  std::string first, line;
  std::getline(in, first);
  EXPECT_EQ(first, "SENSE AND SENSIBILITY");
  size_t empty = 0;
  while (std::getline(in, line)) empty += line.empty();
  EXPECT_EQ(empty, 0u);
  // Cached: a second call rewrites nothing.
  const auto mtime = fs::last_write_time(files.test);
  fetch_corpus("austen", dir.path.string());
  EXPECT_EQ(fs::last_write_time(files.test), mtime);

  // End to end: tokenizer + token files, cached on the second call.
  const LMData data = prepare_lm_data("austen", 512, dir.path.string());
  const auto bin_mtime = fs::last_write_time(data.valid_tokens);
  prepare_lm_data("austen", 512, dir.path.string());
  EXPECT_EQ(fs::last_write_time(data.valid_tokens), bin_mtime);
  const Tokenizer tok = Tokenizer::load(data.tokenizer_model);
  const TokenStream train(data.train_tokens);
  EXPECT_EQ(train.vocab_size(), 512);
  EXPECT_GT(train.size(), 700'000);  // ~3.5 MB at under 5 bytes per token
  std::vector<int> head;
  for (int64_t i = 0; train[i] != tok.eos_id(); ++i) head.push_back(train[i]);
  EXPECT_EQ(tok.decode(head), "SENSE AND SENSIBILITY");
  EXPECT_GT(TokenStream(data.test_tokens).size(), 10'000);
}

// ---- tokenizer ----

class TokenizerTest : public ::testing::Test {
 protected:
  static constexpr int kVocab = 400;
  static void SetUpTestSuite() {
    dir_ = new TempDir;
    std::ofstream out(*dir_ / "train.txt");
    const char* words[] = {"the",       "quick", "brown", "fox", "jumps", "over",    "lazy",  "dog",  "and",
                           "Elizabeth", "Darcy", "said",  "she", "would", "never",   "marry", "him",  "Mr.",
                           "Bennet",    "was",   "so",    "odd", "a",     "mixture", "of",    "parts"};
    std::mt19937 rng(7);
    for (int line = 0; line < 400; ++line) {
      const int n = 5 + static_cast<int>(rng() % 12);
      for (int w = 0; w < n; ++w) out << (w ? " " : "") << words[rng() % std::size(words)];
      out << (line % 3 ? "." : ",") << "\n";
    }
    out.close();
    train_tokenizer(*dir_ / "train.txt", kVocab, *dir_ / "sp.model");
  }
  static void TearDownTestSuite() { delete dir_; }
  static TempDir* dir_;
};
TempDir* TokenizerTest::dir_ = nullptr;

TEST_F(TokenizerTest, TrainsRequestedVocabulary) {
  const Tokenizer tok = Tokenizer::load(*dir_ / "sp.model");
  EXPECT_EQ(tok.vocab_size(), kVocab);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_FALSE(fs::exists(*dir_ / "sp.model.tmp.model"));
  // Merges were learned: a frequent word is one piece, far fewer ids than bytes.
  EXPECT_LE(tok.encode("Elizabeth").size(), 2u);
  EXPECT_LT(tok.encode("the quick brown fox").size(), 8u);
}

TEST_F(TokenizerTest, TrainingIsDeterministic) {
  train_tokenizer(*dir_ / "train.txt", kVocab, *dir_ / "sp2.model");
  // The model protos differ only in the recorded model_prefix; the learned pieces must agree.
  const Tokenizer a = Tokenizer::load(*dir_ / "sp.model"), b = Tokenizer::load(*dir_ / "sp2.model");
  std::ifstream in(*dir_ / "train.txt");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_TRUE(a.encode(text) == b.encode(text));
  std::vector<int> all(kVocab);
  for (int i = 0; i < kVocab; ++i) all[i] = i;
  EXPECT_TRUE(a.decode(all) == b.decode(all));
}

TEST_F(TokenizerTest, ByteFallbackRoundTripsAnyUnicode) {
  const Tokenizer tok = Tokenizer::load(*dir_ / "sp.model");
  for (const std::string text : {"Hello, w\xC3\xB6rld!", "\xE4\xBD\xA0\xE5\xA5\xBD\xE4\xB8\x96\xE7\x95\x8C",
                                 "\xF0\x9F\x99\x82 \xF0\x9F\x9A\x80 emoji", "two  spaces\tand tab",
                                 "Darcy \xE2\x80\x94 \xCE\xB1\xCE\xB2\xCE\xB3 \xD0\x96"}) {
    const auto ids = tok.encode(text);
    for (int id : ids) EXPECT_NE(id, 0) << "unk in encoding of " << text;
    EXPECT_EQ(tok.decode(ids), text);
  }
}

TEST_F(TokenizerTest, FromBytesMatchesLoad) {
  const Tokenizer a = Tokenizer::load(*dir_ / "sp.model");
  const Tokenizer b = Tokenizer::from_bytes(a.serialized());
  EXPECT_EQ(a.encode("Mr. Bennet was odd"), b.encode("Mr. Bennet was odd"));
}

TEST_F(TokenizerTest, ErrorsNameTheProblem) {
  const Tokenizer tok = Tokenizer::load(*dir_ / "sp.model");
  EXPECT_NE(expect_error([&] { tok.decode({5, kVocab}); }).find("out of range"), std::string::npos);
  EXPECT_NE(expect_error([&] { tok.decode({-1}); }).find("out of range"), std::string::npos);
  const std::string missing = *dir_ / "missing.model";
  EXPECT_NE(expect_error([&] { Tokenizer::load(missing); }).find(missing), std::string::npos);
  const std::string garbage = *dir_ / "garbage.model";
  std::ofstream(garbage) << "not a model";
  EXPECT_NE(expect_error([&] { Tokenizer::load(garbage); }).find(garbage), std::string::npos);
}

// ---- token files ----

TEST(TokenStream, RoundTripNarrowAndWide) {
  TempDir dir;
  for (int vocab : {300, 70000}) {
    std::vector<int32_t> tokens;
    for (int i = 0; i < 1000; ++i) tokens.push_back((i * 7919) % vocab);
    tokens.push_back(vocab - 1);
    const std::string path = dir / ("t" + std::to_string(vocab) + ".bin");
    write_token_file(path, tokens, vocab);
    const int width = vocab <= 65536 ? 2 : 4;
    EXPECT_EQ(fs::file_size(path), 24 + tokens.size() * width);
    TokenStream moved_from(path);
    TokenStream s(std::move(moved_from));
    EXPECT_EQ(moved_from.size(), 0);
    ASSERT_EQ(s.size(), static_cast<int64_t>(tokens.size()));
    EXPECT_EQ(s.vocab_size(), vocab);
    for (size_t i = 0; i < tokens.size(); ++i) ASSERT_EQ(s[i], tokens[i]);
    torch::Tensor t = s.slice(990, 11);
    EXPECT_EQ(t.scalar_type(), torch::kInt64);
    EXPECT_EQ(t.sizes(), torch::IntArrayRef({11}));
    for (int i = 0; i < 11; ++i) EXPECT_EQ(t[i].item<int64_t>(), tokens[990 + i]);
    EXPECT_THROW(s.slice(995, 7), Error);
  }
  EXPECT_THROW(write_token_file(dir / "bad.bin", {0, 300}, 300), Error);
}

TEST(TokenStream, TruncatedOrForeignFileIsError) {
  TempDir dir;
  const std::string path = dir / "t.bin";
  write_token_file(path, {1, 2, 3, 4}, 10);
  fs::resize_file(path, fs::file_size(path) - 1);
  const std::string msg = expect_error([&] { TokenStream s(path); });
  EXPECT_NE(msg.find(path), std::string::npos);
  EXPECT_NE(msg.find("truncated"), std::string::npos);
  fs::resize_file(path, 10);
  EXPECT_NE(expect_error([&] { TokenStream s(path); }).find("truncated"), std::string::npos);
  std::ofstream(path, std::ios::trunc) << "NOTLOOM1 and some more bytes to pass the size";
  EXPECT_NE(expect_error([&] { TokenStream s(path); }).find("not a loom token file"), std::string::npos);
}

TEST(TokenStream, UnigramEntropy) {
  TempDir dir;
  write_token_file(dir / "a.bin", {0, 1, 0, 1, 1, 0}, 5);
  EXPECT_NEAR(unigram_entropy(TokenStream(dir / "a.bin")), std::log(2.0), 1e-12);
  write_token_file(dir / "b.bin", {3, 3, 3}, 5);
  EXPECT_NEAR(unigram_entropy(TokenStream(dir / "b.bin")), 0.0, 1e-12);
  write_token_file(dir / "c.bin", {0, 0, 1, 2}, 5);  // p = 1/2, 1/4, 1/4
  EXPECT_NEAR(unigram_entropy(TokenStream(dir / "c.bin")), 1.5 * std::log(2.0), 1e-12);
}

// ---- batching ----

// A stream whose token at position i is i, so a window's tokens reveal where it starts.
class BatcherTest : public ::testing::Test {
 protected:
  static constexpr int kSize = 5003;
  void SetUp() override {
    std::vector<int32_t> tokens(kSize);
    for (int i = 0; i < kSize; ++i) tokens[i] = i;
    write_token_file(dir_ / "pos.bin", tokens, kSize);
    stream_ = std::make_unique<TokenStream>(dir_ / "pos.bin");
  }
  TempDir dir_;
  std::unique_ptr<TokenStream> stream_;
};

TEST_F(BatcherTest, SampleIsDeterministicShiftedAndInRange) {
  const int batch = 8, seq_len = 16;
  LMBatcher batcher(*stream_, batch, seq_len);
  auto [x, y] = batcher.sample(42, 7);
  EXPECT_EQ(x.sizes(), torch::IntArrayRef({batch, seq_len}));
  EXPECT_EQ(y.sizes(), torch::IntArrayRef({batch, seq_len}));
  EXPECT_EQ(x.scalar_type(), torch::kInt64);
  EXPECT_TRUE(torch::equal(y, x + 1));  // y is x shifted by one position
  EXPECT_TRUE(torch::equal(x.narrow(1, 1, seq_len - 1), x.narrow(1, 0, seq_len - 1) + 1));
  // A fresh batcher (a resumed run) sees the same batch; other coordinates see other batches.
  LMBatcher resumed(*stream_, batch, seq_len);
  EXPECT_TRUE(torch::equal(resumed.sample(42, 7).first, x));
  EXPECT_FALSE(torch::equal(batcher.sample(42, 8).first, x));
  EXPECT_FALSE(torch::equal(batcher.sample(43, 7).first, x));
  EXPECT_FALSE(torch::equal(batcher.sample(42, 7, 1).first, x));
  // Starts cover [0, size - seq_len - 1]: the last target is at most the final token.
  int64_t lo = kSize, hi = 0;
  for (int step = 0; step < 300; ++step) {
    auto [xs, ys] = batcher.sample(1, step);
    lo = std::min(lo, xs.select(1, 0).min().item<int64_t>());
    hi = std::max(hi, xs.select(1, 0).max().item<int64_t>());
    ASSERT_LE(ys.max().item<int64_t>(), kSize - 1);
  }
  EXPECT_GE(lo, 0);
  EXPECT_LT(lo, 50);
  EXPECT_GT(hi, kSize - seq_len - 1 - 50);
}

TEST_F(BatcherTest, EvalBatchesCoverStreamOnce) {
  const int batch = 3, seq_len = 10;
  LMBatcher batcher(*stream_, batch, seq_len);
  const auto batches = batcher.eval_batches(0);
  const int64_t windows = (kSize - 1) / seq_len;  // 500
  ASSERT_EQ(static_cast<int64_t>(batches.size()), (windows + batch - 1) / batch);
  EXPECT_EQ(batches.back().first.size(0), windows % batch);  // the last batch is smaller
  std::vector<torch::Tensor> xs, ys;
  for (const auto& [x, y] : batches) {
    xs.push_back(x.reshape(-1));
    ys.push_back(y.reshape(-1));
  }
  const auto expected = torch::arange(windows * seq_len, torch::kInt64);
  EXPECT_TRUE(torch::equal(torch::cat(xs), expected));
  EXPECT_TRUE(torch::equal(torch::cat(ys), expected + 1));
  EXPECT_EQ(batcher.eval_batches(2).size(), 2u);
}

TEST_F(BatcherTest, StreamShorterThanWindowIsError) {
  write_token_file(dir_ / "short.bin", {1, 2, 3, 4}, 10);
  TokenStream s(dir_ / "short.bin");
  EXPECT_THROW(LMBatcher(s, 2, 4), Error);
  EXPECT_NO_THROW(LMBatcher(s, 2, 3));
}

#include "loom/data/translation_data.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "loom/core/error.h"
#include "loom/core/hash.h"
#include "loom/core/log.h"

namespace fs = std::filesystem;

namespace loom {
namespace {

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read {}", path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
  }
  return lines;
}

// The longer of a pair's two sequences: source + eos or bos + target.
int64_t pair_tokens(const TranslationPair& p) { return static_cast<int64_t>(std::max(p.src.size(), p.tgt.size())) + 1; }

}  // namespace

// A built-in corpus is fetched; any other name is the user's own: <data_dir>/<name>/ must hold
// {train,valid,test}.{src,tgt}.
ParallelFiles find_parallel_files(const std::string& corpus, const std::string& data_dir, const std::string& src,
                                  const std::string& tgt) {
  const auto known = known_parallel_corpora();
  if (std::find(known.begin(), known.end(), corpus) != known.end())
    return fetch_parallel_corpus(corpus, data_dir, src, tgt);
  const fs::path dir = fs::path(data_dir) / corpus;
  auto file = [&](const char* split, const std::string& lang) {
    const std::string path = (dir / fmt::format("{}.{}", split, lang)).string();
    if (!fs::exists(path))
      fail(
          "'{}' is not a built-in parallel corpus (known: {}) and {} does not exist: a corpus of your own needs "
          "{{train,valid,test}}.{{{},{}}} in {}",
          corpus, fmt::join(known, ", "), path, src, tgt, dir.string());
    return path;
  };
  return ParallelFiles{dir.string() + "/", file("train", src), file("train", tgt), file("valid", src),
                       file("valid", tgt), file("test", src),  file("test", tgt)};
}

TranslationSplit encode_split(const Tokenizer& tokenizer, const std::string& src_path, const std::string& tgt_path,
                              int64_t max_len) {
  TranslationSplit split;
  split.src_text = read_lines(src_path);
  split.tgt_text = read_lines(tgt_path);
  if (split.src_text.size() != split.tgt_text.size())
    fail("{} has {} lines but {} has {}: a parallel corpus needs one line per pair", src_path, split.src_text.size(),
         tgt_path, split.tgt_text.size());
  for (size_t i = 0; i < split.src_text.size(); ++i) {
    TranslationPair pair;
    pair.line = static_cast<int64_t>(i);
    for (int id : tokenizer.encode(split.src_text[i])) pair.src.push_back(id);
    for (int id : tokenizer.encode(split.tgt_text[i])) pair.tgt.push_back(id);
    if (pair_tokens(pair) > max_len) {
      ++split.too_long;
      continue;
    }
    split.pairs.push_back(std::move(pair));
  }
  return split;
}

std::vector<std::vector<int64_t>> length_batches(const std::vector<TranslationPair>& pairs, int64_t max_tokens,
                                                 int64_t max_sentences) {
  if (max_tokens <= 0 && max_sentences <= 0) fail("length_batches: give max_tokens or max_sentences");
  std::vector<int64_t> order(pairs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    const auto& pa = pairs[a];
    const auto& pb = pairs[b];
    return std::make_pair(pa.src.size(), pa.tgt.size()) < std::make_pair(pb.src.size(), pb.tgt.size());
  });
  std::vector<std::vector<int64_t>> batches;
  std::vector<int64_t> current;
  int64_t longest = 0;
  for (int64_t i : order) {
    const int64_t n = pair_tokens(pairs[i]);
    const int64_t next_longest = std::max(longest, n);
    const auto size = static_cast<int64_t>(current.size()) + 1;
    const bool over_tokens = max_tokens > 0 && size * next_longest > max_tokens;
    const bool over_sentences = max_sentences > 0 && size > max_sentences;
    if (!current.empty() && (over_tokens || over_sentences)) {
      batches.push_back(std::move(current));
      current.clear();
      longest = 0;
    }
    current.push_back(i);
    longest = std::max(longest, n);
  }
  if (!current.empty()) batches.push_back(std::move(current));
  return batches;
}

TranslationBatch collate_pairs(const std::vector<TranslationPair>& pairs, const std::vector<int64_t>& indices,
                               int64_t bos, int64_t eos) {
  const auto b = static_cast<int64_t>(indices.size());
  size_t s = 0, t = 0;
  for (int64_t i : indices) s = std::max(s, pairs[i].src.size()), t = std::max(t, pairs[i].tgt.size());
  TranslationBatch batch;
  batch.source = torch::full({b, static_cast<int64_t>(s) + 1}, -1, torch::kLong);
  batch.inputs = torch::full({b, static_cast<int64_t>(t) + 1}, -1, torch::kLong);
  batch.targets = torch::full({b, static_cast<int64_t>(t) + 1}, -1, torch::kLong);
  auto src = batch.source.accessor<int64_t, 2>();
  auto in = batch.inputs.accessor<int64_t, 2>();
  auto out = batch.targets.accessor<int64_t, 2>();
  for (int64_t r = 0; r < b; ++r) {
    const auto& p = pairs[indices[r]];
    const auto n_src = static_cast<int64_t>(p.src.size()), n_tgt = static_cast<int64_t>(p.tgt.size());
    for (int64_t j = 0; j < n_src; ++j) src[r][j] = p.src[j];
    src[r][n_src] = eos;
    in[r][0] = bos;
    for (int64_t j = 0; j < n_tgt; ++j) in[r][j + 1] = out[r][j] = p.tgt[j];
    out[r][n_tgt] = eos;
  }
  return batch;
}

TranslationData::TranslationData(const std::string& corpus, const std::string& data_dir, const std::string& src,
                                 const std::string& tgt, int vocab_size, int64_t max_len) {
  files_ = find_parallel_files(corpus, data_dir, src, tgt);
  // One vocabulary for both languages, the same for either direction: trained on the two
  // training sides in language-name order.
  tokenizer_path_ = (fs::path(files_.dir) / fmt::format("joint.sp{}.model", vocab_size)).string();
  if (!fs::exists(tokenizer_path_)) {
    const bool src_first = src < tgt;
    const std::string joint = (fs::path(files_.dir) / "joint.train.txt").string();
    {
      std::ofstream out(joint + ".tmp", std::ios::binary | std::ios::trunc);
      for (const auto& path :
           {src_first ? files_.train_src : files_.train_tgt, src_first ? files_.train_tgt : files_.train_src}) {
        std::ifstream in(path, std::ios::binary);
        if (!in) fail("cannot read {}", path);
        out << in.rdbuf();
      }
      if (!out) fail("cannot write {}.tmp", joint);
    }
    fs::rename(joint + ".tmp", joint);
    logger().info("training the joint {}-token tokenizer on {}", vocab_size, joint);
    train_tokenizer(joint, vocab_size, tokenizer_path_);
  }
  tokenizer_ = Tokenizer::load(tokenizer_path_);
  train_ = encode_split(tokenizer_, files_.train_src, files_.train_tgt, max_len);
  valid_ = encode_split(tokenizer_, files_.valid_src, files_.valid_tgt, max_len);
  test_ = encode_split(tokenizer_, files_.test_src, files_.test_tgt, max_len);
  for (const auto* s : {&train_, &valid_, &test_})
    if (s->too_long > 0)
      logger().info(
          "{} of {} pairs have a side longer than the context ({} tokens) and are left out of training and loss",
          s->too_long, s->src_text.size(), max_len);
  if (train_.pairs.empty()) fail("{}: no training pairs fit the context of {} tokens", files_.dir, max_len);
}

const TranslationSplit& TranslationData::split(const std::string& name) const {
  if (name == "train") return train_;
  if (name == "valid") return valid_;
  if (name == "test") return test_;
  fail("unknown split '{}' (valid: train, valid, test)", name);
}

void TranslationData::make_training_batches(int64_t max_tokens, int64_t max_sentences) {
  train_batches_ = length_batches(train_.pairs, max_tokens, max_sentences);
}

TranslationBatch TranslationData::sample(uint64_t seed, int64_t step, int64_t micro, int64_t grad_accum) const {
  TORCH_CHECK(!train_batches_.empty(), "make_training_batches first");
  const auto n = static_cast<int64_t>(train_batches_.size());
  const int64_t visit = step * grad_accum + micro;
  const int64_t epoch = visit / n;
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(splitmix64(seed ^ splitmix64(static_cast<uint64_t>(epoch))));
  std::shuffle(order.begin(), order.end(), rng);
  return collate_pairs(train_.pairs, train_batches_[order[visit % n]], tokenizer_.bos_id(), tokenizer_.eos_id());
}

std::vector<TranslationBatch> TranslationData::split_batches(const std::string& name, int64_t max_tokens,
                                                             int64_t max_sentences) const {
  const auto& s = split(name);
  std::vector<TranslationBatch> out;
  for (const auto& indices : length_batches(s.pairs, max_tokens, max_sentences))
    out.push_back(collate_pairs(s.pairs, indices, tokenizer_.bos_id(), tokenizer_.eos_id()));
  return out;
}

}  // namespace loom

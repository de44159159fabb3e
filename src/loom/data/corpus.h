// Corpus fetchers: turn third-party text reachable from Debian into plain-text splits
// (<data_dir>/<name>/{train,valid,test}.txt, one paragraph per line). See docs/data.md.
#pragma once
#include <string>
#include <vector>

namespace loom {

struct CorpusFiles {
  std::string train, valid, test;
};

// Fetches and converts corpus `name` under `data_dir`; cached: does nothing when the three split
// files exist. A name that is not built in is a user's own corpus: <data_dir>/<name>/ must hold
// train.txt, valid.txt and test.txt (one paragraph per line); otherwise an error lists the
// known names.
CorpusFiles fetch_corpus(const std::string& name, const std::string& data_dir);

std::vector<std::string> known_corpora();

// Joins wrapped lines into paragraphs: empty (or NA) lines separate paragraphs; lines inside a
// paragraph are trimmed and joined with one space; empty paragraphs are dropped.
std::vector<std::string> join_paragraphs(const std::vector<std::string>& lines);

// The fixed split of one document's paragraphs, contiguous and in order: the first
// floor(0.90 n) train, up to floor(0.95 n) valid, the rest test.
struct SplitCounts {
  size_t train, valid, test;
};
SplitCounts split_counts(size_t n_paragraphs);

}  // namespace loom

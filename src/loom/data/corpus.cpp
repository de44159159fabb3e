// Corpus fetchers (see corpus.h). The Austen corpus comes from Debian's r-cran-janeaustenr, read
// with loom's own R lazy-load reader so neither R nor root is needed.
#include "loom/data/corpus.h"

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <array>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>

#include "loom/core/error.h"
#include "loom/core/log.h"
#include "loom/data/rdata.h"

namespace fs = std::filesystem;

namespace loom {
namespace {

constexpr const char* kAustenPackage = "r-cran-janeaustenr";
constexpr const char* kAustenRdata = "usr/lib/R/site-library/janeaustenr/data/Rdata";
// Publication order; the split files concatenate each novel's share in this order.
constexpr std::array<const char*, 6> kAustenNovels = {"sensesensibility", "prideprejudice", "mansfieldpark", "emma",
                                                      "northangerabbey",  "persuasion"};

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

void write_text_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) fail("cannot write {}", tmp);
  }
  fs::rename(tmp, path);
}

// The installed package if present, else a private copy unpacked from `apt-get download` (which
// needs no root) under <data_dir>/.pkg.
std::string find_austen_rdata(const std::string& data_dir) {
  const std::string system_prefix = std::string("/") + kAustenRdata;
  if (fs::exists(system_prefix + ".rdb")) return system_prefix;
  const fs::path pkg_dir = fs::path(data_dir) / ".pkg";
  const std::string local_prefix = (pkg_dir / "root" / kAustenRdata).string();
  if (fs::exists(local_prefix + ".rdb")) return local_prefix;

  logger().info("{} is not installed; fetching it with apt-get download into {}", kAustenPackage, pkg_dir.string());
  fs::create_directories(pkg_dir);
  const std::string q = shell_quote(pkg_dir.string());
  const std::string cmd =
      fmt::format("cd {} && apt-get download {} >/dev/null && dpkg -x \"$(ls -t {}_*.deb | head -n1)\" root", q,
                  kAustenPackage, kAustenPackage);
  if (std::system(cmd.c_str()) != 0 || !fs::exists(local_prefix + ".rdb")) {
    fail(
        "could not find or download the Jane Austen corpus ({}.rdb): run "
        "'apt-get install {}' (or make 'apt-get download {}' work)",
        system_prefix, kAustenPackage, kAustenPackage);
  }
  return local_prefix;
}

CorpusFiles fetch_austen(const CorpusFiles& out, const std::string& data_dir) {
  const std::string prefix = find_austen_rdata(data_dir);
  const auto objects = rdata::read_lazyload_db(prefix);
  std::string text[3];
  size_t paragraphs[3] = {0, 0, 0};
  for (const char* novel : kAustenNovels) {
    auto it = objects.find(novel);
    if (it == objects.end() || it->second->type != rdata::RType::String) {
      fail("{}.rdb: no character vector '{}'", prefix, novel);
    }
    std::vector<std::string> lines;
    for (const auto& s : it->second->strings) lines.push_back(s.value_or(""));  // NA = break
    const auto paras = join_paragraphs(lines);
    const SplitCounts counts = split_counts(paras.size());
    const size_t ends[3] = {counts.train, counts.train + counts.valid, paras.size()};
    size_t i = 0;
    for (int split = 0; split < 3; ++split) {
      for (; i < ends[split]; ++i) text[split] += paras[i] + "\n";
      paragraphs[split] += ends[split] - (split == 0 ? 0 : ends[split - 1]);
    }
  }
  const std::string* paths[3] = {&out.train, &out.valid, &out.test};
  const char* names[3] = {"train", "valid", "test"};
  for (int split = 0; split < 3; ++split) {
    write_text_atomic(*paths[split], text[split]);
    logger().info("austen {}: {} paragraphs, {} bytes", names[split], paragraphs[split], text[split].size());
  }
  return out;
}

using Fetcher = std::function<CorpusFiles(const CorpusFiles&, const std::string&)>;

const std::vector<std::pair<std::string, Fetcher>>& registry() {
  static const std::vector<std::pair<std::string, Fetcher>> fetchers = {
      {"austen", fetch_austen},
  };
  return fetchers;
}

}  // namespace

std::vector<std::string> known_corpora() {
  std::vector<std::string> names;
  for (const auto& entry : registry()) names.push_back(entry.first);
  return names;
}

CorpusFiles fetch_corpus(const std::string& name, const std::string& data_dir) {
  for (const auto& [known, fetch] : registry()) {
    if (known != name) continue;
    const fs::path dir = fs::path(data_dir) / name;
    const CorpusFiles files{(dir / "train.txt").string(), (dir / "valid.txt").string(), (dir / "test.txt").string()};
    if (fs::exists(files.train) && fs::exists(files.valid) && fs::exists(files.test)) {
      return files;
    }
    fs::create_directories(dir);
    return fetch(files, data_dir);
  }
  // Any other name is a corpus the user supplies: <data_dir>/<name>/{train,valid,test}.txt.
  const fs::path dir = fs::path(data_dir) / name;
  const CorpusFiles files{(dir / "train.txt").string(), (dir / "valid.txt").string(), (dir / "test.txt").string()};
  if (fs::exists(files.train) && fs::exists(files.valid) && fs::exists(files.test)) return files;
  fail("unknown corpus '{}' (known: {}; or put your own train.txt, valid.txt and test.txt in {})", name,
       fmt::join(known_corpora(), ", "), dir.string());
}

std::vector<std::string> join_paragraphs(const std::vector<std::string>& lines) {
  std::vector<std::string> out;
  std::string current;
  auto flush = [&] {
    if (!current.empty()) out.push_back(std::move(current));
    current.clear();
  };
  for (const auto& line : lines) {
    const size_t b = line.find_first_not_of(" \t\r\n");
    if (b == std::string::npos) {
      flush();
      continue;
    }
    const size_t e = line.find_last_not_of(" \t\r\n");
    if (!current.empty()) current += ' ';
    current.append(line, b, e - b + 1);
  }
  flush();
  return out;
}

SplitCounts split_counts(size_t n) {
  const size_t train = n * 90 / 100, valid_end = n * 95 / 100;
  return {train, valid_end - train, n - valid_end};
}

}  // namespace loom

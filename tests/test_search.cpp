// Architecture search (search/): the space and its operators, the supernet's slicing against a plain
// reference, gradients back into the right slices, exact resume, extraction, proxies' statistics.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "loom/checkpoint/checkpoint.h"
#include "loom/search/latency.h"
#include "loom/search/proxies.h"
#include "loom/search/supernet.h"
#include "test_util.h"
#include "tiny_run.h"

using namespace loom;
namespace fs = std::filesystem;

namespace {

// A base recipe and a space over it; `space` is the YAML of the space section.
SearchSpace make_space(const std::string& model, const std::string& space, const std::string& extra = "") {
  const Recipe base = parse_recipe("model: {" + model + "}\ntrain: {seed: 5}\n", "test recipe");
  return SearchSpace(
      [&] {
        SearchConfig c;
        YAML::Node root = YAML::Load("space: {" + space + "}\n" + extra);
        YamlReader reader(root, "test space");
        c.visit(reader);
        reader.check_unknown();
        return c;
      }(),
      base, "test space");
}

// A small space with fused projections everywhere: GQA attention (q, k, v segments), SwiGLU (gate,
// up), Mamba (in_proj [x; z], x_proj [dt; B; C]), learned positions, biases, an untied head.
SearchSpace hybrid_space() {
  return make_space(
      "vocab_size: 50, d_model: 24, n_layers: 3, n_heads: 4, n_kv_heads: 2, d_ff: 32, max_seq_len: 16, "
      "position: learned, norm: rmsnorm, ffn: swiglu, bias: true, tie_embeddings: false",
      "d_model: [16, 24], n_layers: [1, 2, 3], d_ff: [16, 24, 32], n_heads: [2, 4], head_dim: 6, "
      "mixer: [attention, mamba, local_attention]");
}

// The reference slicing, written out plainly: the index list of each dimension (front rows of each
// fused segment), then index_select dimension by dimension.
torch::Tensor reference_slice(const torch::Tensor& whole, const Shard* whole_fused, const torch::Tensor& part,
                              const Shard* part_fused) {
  torch::Tensor out = whole;
  for (int64_t d = 0; d < whole.dim(); ++d) {
    std::vector<int64_t> index;
    if (whole_fused && whole_fused->dim == d) {
      int64_t start = 0;
      for (size_t s = 0; s < whole_fused->segments.size(); ++s) {
        for (int64_t i = 0; i < part_fused->segments[s]; ++i) index.push_back(start + i);
        start += whole_fused->segments[s];
      }
    } else {
      for (int64_t i = 0; i < part.size(d); ++i) index.push_back(i);
    }
    out = out.index_select(d, torch::tensor(index));
  }
  return out;
}

const Shard* find(const std::map<std::string, Shard>& m, const std::string& name) {
  auto it = m.find(name);
  return it == m.end() ? nullptr : &it->second;
}

// The supernet's own tensor `name` and its fused declaration, by building its largest model.
std::pair<torch::Tensor, const Shard*> supernet_tensor(const Supernet& net, const std::string& name,
                                                       const std::map<std::string, Shard>& fusions) {
  for (const auto& [n, t] : net.tensors())
    if (n == name) return {t, find(fusions, name)};
  ADD_FAILURE() << "no supernet tensor " << name;
  return {};
}

// The fused declarations of the supernet's tensors, by their supernet names (the largest model of
// each mixer).
std::map<std::string, Shard> supernet_fusions(const Supernet& net) {
  std::map<std::string, Shard> out;
  for (const auto& mixer : net.space().choices().mixer) {
    const Arch largest = net.space().largest(mixer);
    Model m(net.space().model_config(largest));
    for (const auto& [name, shard] : m->fusions()) out[net.source_of(largest, name)] = shard;
  }
  return out;
}

}  // namespace

TEST(SearchSpace, ArchTextRoundTripsAndBadTextFailsClearly) {
  const Arch a{256, {"attention", "local_attention"}, {4, 2}, {688, 512}};
  EXPECT_EQ(format_arch(a), "256,attention:4:688,local_attention:2:512");
  EXPECT_EQ(parse_arch(format_arch(a), "test"), a);
  for (const char* bad : {"", "256", "x,attention:4:688", "256,attention:4", "256,:4:688", "256,attention:-4:688",
                          "256,attention:4:688x"})
    EXPECT_THROW(parse_arch(bad, "--arch"), Error) << bad;
}

TEST(SearchSpace, MutationAndCrossoverStayInsideTheSpace) {
  const SearchSpace space = hybrid_space();
  std::mt19937_64 rng(3);
  std::set<std::string> seen;
  std::string why;
  Arch a = space.sample(rng), b = space.sample(rng);
  for (int i = 0; i < 2000; ++i) {
    const Arch m = space.mutate(a, 0.3, rng), c = space.crossover(a, b, rng);
    for (const Arch& x : {m, c}) {
      ASSERT_TRUE(space.contains(x, &why)) << format_arch(x) << ": " << why;
      space.model_config(x).validate("arch " + format_arch(x));
      seen.insert(format_arch(x));
    }
    a = m, b = i % 7 ? c : space.sample(rng);
  }
  EXPECT_GT(seen.size(), 500u);  // they explore, not repeat
  // Mutation with probability 0 is the identity; with 1 it redraws (almost surely changes something).
  EXPECT_EQ(space.mutate(a, 0.0, rng), a);
  // Crossover of an arch with itself is itself.
  EXPECT_EQ(space.crossover(a, a, rng), a);
  EXPECT_TRUE(space.contains(space.largest()) && space.contains(space.smallest()));
  EXPECT_FALSE(space.contains(Arch{20, {"attention"}, {2}, {16}}, &why));
  EXPECT_NE(why.find("d_model 20"), std::string::npos) << why;
}

TEST(SearchSpace, BadSpacesFailWithOneClearLineNamingTheKey) {
  const std::string model =
      "vocab_size: 50, d_model: 24, n_layers: 2, n_heads: 4, n_kv_heads: 2, d_ff: 32, position: rope";
  auto error = [&](const std::string& space, const std::string& extra = "") -> std::string {
    try {
      make_space(model, space, extra);
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  auto expect = [&](const std::string& what, const std::string& got) {
    EXPECT_NE(got.find(what), std::string::npos) << "expected '" << what << "' in: " << got;
    EXPECT_EQ(got.find('\n'), std::string::npos) << got;
  };
  expect("space.mixer", error("mixer: [attention, not_a_mixer]"));
  expect("not_a_mixer", error("mixer: [attention, not_a_mixer]"));
  expect("space.n_heads: 3 heads", error("n_heads: [2, 3], head_dim: 8"));
  // Mamba has no queries and keys for RoPE: an all-Mamba arch of the space would be invalid.
  expect("space.mixer mamba", error("mixer: [attention, mamba], head_dim: 8"));
  expect("needs an even head_dim", error("head_dim: 7"));
  expect("space.d_model: every choice must be positive", error("d_model: [0, 24]"));
  expect("space.head_dim: the largest d_model 16 is not divisible by the largest n_heads 6",
         error("n_heads: [6], d_model: [16]"));
  expect("unknown key 'space.width'", error("width: [1]"));
  expect("supernet.sampling must be random or sandwich", error("", "supernet: {sampling: all}"));
  expect("evolve.parents", error("", "evolve: {population: 4, parents: 5}"));
  // And through the CLI: one line, exit status non-zero.
  TinyRun run;
  std::ofstream(run.root / "recipe.yaml") << run.recipe_yaml();
  std::ofstream(run.root / "space.yaml") << "recipe: recipe.yaml\nspace: {mixer: [attention, nope]}\n";
  expect_one_line_error(
      run_loom("search supernet " + (run.root / "space.yaml").string() + " --out " + (run.root / "sn").string()),
      "space.mixer");
  std::ofstream(run.root / "space2.yaml") << "recipe: missing.yaml\n";
  expect_one_line_error(
      run_loom("search proxies " + (run.root / "space2.yaml").string() + " --out " + (run.root / "px").string()),
      "recipe: no file");
}

// The central test: a sub-model sliced out of the supernet equals a standalone model of those
// dimensions loaded with reference-sliced weights, output for output; and the largest arch is the
// largest model itself.
TEST(Supernet, SlicedSubModelEqualsAStandaloneModelWithReferenceSlicedWeights) {
  torch::NoGradGuard no_grad;
  const SearchSpace space = hybrid_space();
  Supernet net(space);
  const auto fusions = supernet_fusions(net);
  std::mt19937_64 rng(11);
  std::vector<Arch> archs{space.largest(), space.smallest(),
                          Arch{24, {"mamba", "attention", "local_attention"}, {4, 2, 4}, {16, 32, 24}},
                          Arch{16, {"attention", "mamba"}, {2, 4}, {32, 16}}};
  for (int i = 0; i < 6; ++i) archs.push_back(space.sample(rng));
  const auto tokens = torch::randint(0, 50, {2, 12});
  for (const Arch& arch : archs) {
    SCOPED_TRACE(format_arch(arch));
    Model sliced = net.build(arch);
    Model standalone(space.model_config(arch));
    for (auto& p : standalone->named_parameters()) {
      const auto [whole, whole_fused] = supernet_tensor(net, net.source_of(arch, p.key()), fusions);
      const Shard* part_fused = find(standalone->fusions(), p.key());
      ASSERT_EQ(whole_fused == nullptr, part_fused == nullptr) << p.key();
      p.value().copy_(reference_slice(whole, whole_fused, p.value(), part_fused));
    }
    sliced->eval(), standalone->eval();
    const auto a = sliced->forward(tokens), b = standalone->forward(tokens);
    EXPECT_TRUE(torch::allclose(a, b, 1e-5, 1e-5)) << (a - b).abs().max().item<double>();
    EXPECT_GT(a.abs().max().item<double>(), 0.0);
  }
  // The largest arch of the first mixer is exactly the largest model, as built with the seed.
  torch::manual_seed(static_cast<uint64_t>(space.base().train.seed));
  Model largest(space.model_config(space.largest()));
  Model built = net.build(space.largest());
  largest->eval(), built->eval();
  EXPECT_TRUE(torch::equal(largest->forward(tokens), built->forward(tokens)));
}

TEST(Supernet, GradientsLandInTheSubModelsSlicesAndNowhereElse) {
  const SearchSpace space = hybrid_space();
  Supernet net(space);
  const auto fusions = supernet_fusions(net);
  const Arch arch{16, {"attention", "mamba"}, {2, 4}, {24, 16}};
  Model sub = net.build(arch);
  const auto tokens = torch::randint(0, 50, {2, 10});
  sub->forward(tokens).pow(2).mean().backward();
  net.add_gradients(arch, sub);
  net.add_gradients(arch, sub);           // added, not assigned: twice the gradient
  std::map<std::string, double> touched;  // supernet tensor -> sum |grad| expected
  for (auto& p : sub->named_parameters()) {
    SCOPED_TRACE(p.key());
    const std::string source = net.source_of(arch, p.key());
    const auto [whole, whole_fused] = supernet_tensor(net, source, fusions);
    ASSERT_TRUE(whole.grad().defined());
    const auto got = reference_slice(whole.grad(), whole_fused, p.value(), find(sub->fusions(), p.key()));
    EXPECT_TRUE(torch::allclose(got, 2 * p.value().grad(), 1e-6, 1e-7));
    touched[source] = 2 * p.value().grad().abs().sum().item<double>();
  }
  for (const auto& [name, t] : net.tensors()) {
    SCOPED_TRACE(name);
    const double total = t.grad().defined() ? t.grad().abs().sum().item<double>() : 0.0;
    auto it = touched.find(name);
    // Outside the slices every gradient is zero: the whole tensor's sum equals the slice's.
    EXPECT_NEAR(total, it == touched.end() ? 0.0 : it->second, 1e-4 * (1 + total));
  }
  EXPECT_EQ(touched.count("layers.0.mixers.attention.wqkv.weight"), 1u);
  EXPECT_EQ(touched.count("layers.1.mixers.mamba.in_proj.weight"), 1u);
  EXPECT_EQ(touched.count("layers.1.mixers.attention.wqkv.weight"), 0u);
}

// The supernet trains on the tiny corpus; a run stopped and resumed equals one run straight
// through, bit for bit; an extracted sub-model's loss equals the supernet's evaluation of it, and
// the extracted checkpoint is an ordinary one `loom generate` runs.
TEST(Supernet, ResumesExactlyAndExtractsCheckpointsThatGenerate) {
  TinyRun run;
  std::ofstream(run.root / "recipe.yaml") << run.recipe_yaml();
  std::ofstream(run.root / "space.yaml")
      << "recipe: recipe.yaml\nset: [train.steps=6, train.save_every=0, train.eval_every=0, model.position=rope]\n"
         "space: {d_model: [16, 32], n_layers: [1, 2], d_ff: [32, 64], n_heads: [2, 4], head_dim: 8, "
         "mixer: [attention, local_attention]}\nsupernet: {sampling: sandwich}\n";
  const SearchSpace space = load_search_space((run.root / "space.yaml").string());
  SupernetOptions straight;
  straight.out_dir = (run.root / "straight").string();
  const auto a = train_supernet(space, straight);
  EXPECT_EQ(a.steps, 6);
  EXPECT_TRUE(std::isfinite(a.largest_loss) && std::isfinite(a.smallest_loss));
  SupernetOptions halves;
  halves.out_dir = (run.root / "halves").string();
  halves.stop_after = 3;
  EXPECT_TRUE(train_supernet(space, halves).interrupted);
  EXPECT_THROW(train_supernet(space, halves), Error);  // without --resume: refused
  halves.resume = true;
  halves.stop_after = -1;
  const auto b = train_supernet(space, halves);
  EXPECT_EQ(b.steps, 6);
  const auto la = load_supernet(a.checkpoint), lb = load_supernet(b.checkpoint);
  ASSERT_EQ(la.net->tensors().size(), lb.net->tensors().size());
  for (size_t i = 0; i < la.net->tensors().size(); ++i)
    EXPECT_TRUE(torch::equal(la.net->tensors()[i].second, lb.net->tensors()[i].second)) << la.net->tensors()[i].first;

  // Extraction: the checkpoint's loss is the supernet's evaluation of the arch.
  const Arch arch{32, {"local_attention", "attention"}, {2, 4}, {64, 32}};
  const std::string dir = extract_submodel(la, arch, (run.root / "extracted").string());
  auto loaded = load_checkpoint(dir);
  EXPECT_EQ(loaded.recipe.model.layer_heads, (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(loaded.recipe.model.layer_d_ff, (std::vector<int64_t>{64, 32}));
  const auto batches = validation_batches(la.net->space(), 2);
  Model from_supernet = la.net->build(arch);
  EXPECT_DOUBLE_EQ(evaluate_loss(loaded.model, batches, false), evaluate_loss(from_supernet, batches, false));
  const auto generated = run_loom("generate " + dir + " --prompt 'the cat' --max-new-tokens 8 --seed 1");
  EXPECT_EQ(generated.status, 0) << generated.output;
  const auto cli =
      run_loom("search extract " + a.checkpoint + " --arch smallest --out " + (run.root / "small").string());
  EXPECT_EQ(cli.status, 0) << cli.output;
  EXPECT_EQ(load_checkpoint((run.root / "small").string()).recipe.model.d_model, 16);
}

TEST(Search, LatencyIsMeasuredOnTheServingEngineAndCachedPerMachine) {
  TempDir tmp;
  const SearchSpace space = make_space(
      "vocab_size: 64, d_model: 32, n_layers: 2, n_heads: 4, d_ff: 64, max_seq_len: 64",
      "d_model: [16, 32], head_dim: 8, mixer: [attention, mamba]", "latency: {prompt: 8, decode: 4, repeats: 3}");
  LatencyTable table(tmp / "latency.json", space);
  const Arch fast{32, {"attention", "attention"}, {4, 4}, {64, 64}}, slow{32, {"mamba", "attention"}, {4, 4}, {64, 64}};
  const Latency lf = table.get(fast), ls = table.get(slow);
  EXPECT_EQ(lf.engine, "fast");
  EXPECT_EQ(ls.engine, "reference");  // Mamba is not a fast-engine block: the engine that would serve it
  EXPECT_GT(lf.decode_ms, 0);
  EXPECT_GT(lf.prefill_ms, 0);
  EXPECT_EQ(table.measured(), 2);
  table.save();
  LatencyTable again(tmp / "latency.json", space);
  EXPECT_TRUE(again.has(fast) && again.has(slow));
  EXPECT_DOUBLE_EQ(again.get(fast).decode_ms, lf.decode_ms);
  EXPECT_EQ(again.measured(), 0);
  // Other settings: not mixed in.
  const SearchSpace other =
      make_space("vocab_size: 64, d_model: 32, n_layers: 2, n_heads: 4, d_ff: 64, max_seq_len: 64",
                 "d_model: [16, 32], head_dim: 8", "latency: {prompt: 16}");
  EXPECT_FALSE(LatencyTable(tmp / "latency.json", other).has(fast));
}

TEST(Search, RankCorrelationsFollowScipysDefinitions) {
  // tau-b and rho as scipy.stats.kendalltau / spearmanr define them, on vectors with ties in both
  // (values from a plain Python transcription of those definitions).
  const std::vector<double> a{1, 2, 2, 3, 4, 5, 5, 6}, b{2, 1, 3, 3, 5, 4, 6, 6};
  EXPECT_NEAR(kendall_tau(a, b), 0.7692307692, 1e-9);
  EXPECT_NEAR(spearman_rho(a, b), 0.8902439024, 1e-9);
  EXPECT_NEAR(kendall_tau({1, 2, 3}, {3, 2, 1}), -1.0, 1e-12);
  EXPECT_TRUE(std::isnan(kendall_tau({1, 1, 1}, {1, 2, 3})));
}

TEST(Search, ProxiesAreFiniteAndParameterCountsExact) {
  const SearchSpace space = hybrid_space();
  const auto tokens = torch::randint(0, 50, {4, 16});
  const Arch arch{16, {"attention", "mamba"}, {2, 4}, {24, 16}};
  const ProxyRow row = compute_proxies(space, arch, tokens, tokens);
  Model m(space.model_config(arch));
  EXPECT_EQ(row.parameters, static_cast<double>(m->num_parameters()));
  EXPECT_LT(row.decoder_parameters, row.parameters);
  EXPECT_GT(row.flops, 2 * row.decoder_parameters);
  for (double v : {row.hidden_covariance, row.synflow, row.grad_norm}) EXPECT_TRUE(std::isfinite(v)) << v;
  EXPECT_GT(row.grad_norm, 0);
}

// `loom search proxies` end to end on the tiny corpus: a rerun with more architectures continues
// (only the new ones are trained), and rows of another space's run are refused.
TEST(Search, ProxiesRunContinuesAndRefusesAnotherSpacesRows) {
  TinyRun run;
  std::ofstream(run.root / "recipe.yaml") << run.recipe_yaml();
  std::ofstream(run.root / "space.yaml")
      << "recipe: recipe.yaml\nspace: {d_model: [16, 32], n_layers: [1, 2], d_ff: [32, 64], n_heads: [2, 4], "
         "head_dim: 8}\nproxies: {steps: 2, batches: 1}\n";
  const SearchSpace space = load_search_space((run.root / "space.yaml").string());
  ProxiesOptions options;
  options.out_dir = (run.root / "proxies").string();
  options.n = 2;
  const auto first = run_proxies(space, options);
  EXPECT_EQ(first.trained_now, 2);
  ASSERT_EQ(first.correlations.size(), 6u);
  options.n = 4;
  const auto second = run_proxies(space, options);
  EXPECT_EQ(second.trained_now, 2);
  ASSERT_EQ(second.rows.size(), 4u);
  for (size_t i = 0; i < 2; ++i) EXPECT_EQ(second.rows[i].arch, first.rows[i].arch);
  for (const auto& r : second.rows) EXPECT_TRUE(std::isfinite(r.loss)) << format_arch(r.arch);
  EXPECT_TRUE(fs::exists(run.root / "proxies" / "proxies.svg"));
  // Another space draws other architectures: its rows are not mixed in.
  const SearchSpace other = load_search_space((run.root / "space.yaml").string(), {"space.d_model=[24]"});
  EXPECT_THROW(run_proxies(other, options), Error);
}

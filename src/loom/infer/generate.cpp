#include "loom/infer/generate.h"

#include "loom/core/error.h"

namespace loom {

std::vector<int64_t> generate(Model& model, const std::vector<int64_t>& prompt, const GenerateOptions& options,
                              const std::function<void(int64_t)>& on_token) {
  const auto& config = model->config();
  if (prompt.empty()) fail("the prompt is empty");
  if (static_cast<int64_t>(prompt.size()) > config.max_seq_len)
    fail("the prompt is {} tokens but the model's context is {} tokens", prompt.size(), config.max_seq_len);
  for (auto id : prompt)
    if (id < 0 || id >= config.vocab_size) fail("token id {} is outside the vocabulary [0, {})", id, config.vocab_size);
  if (options.max_new_tokens < 0) fail("max-new-tokens must be >= 0, got {}", options.max_new_tokens);

  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  Sampler sample(options.sampling);
  const int64_t budget =
      std::min<int64_t>(options.max_new_tokens, config.max_seq_len - static_cast<int64_t>(prompt.size()));
  std::vector<int64_t> sequence = prompt, generated;
  KVCache cache;
  if (options.use_cache) cache = model->make_cache(1, static_cast<int64_t>(prompt.size()) + budget);

  // The first pass feeds the whole prompt; later passes feed only the newest token.
  int64_t fed = 0;
  while (static_cast<int64_t>(generated.size()) < budget) {
    torch::Tensor logits;
    if (options.use_cache) {
      auto input = torch::tensor(std::vector<int64_t>(sequence.begin() + fed, sequence.end())).unsqueeze(0);
      logits = model->forward(input, fed, &cache);  // [1, T_new, V]
      fed = static_cast<int64_t>(sequence.size());
    } else {
      logits = model->forward(torch::tensor(sequence).unsqueeze(0));  // [1, T, V]
    }
    const int64_t next = sample(logits[0][logits.size(1) - 1]);
    sequence.push_back(next);
    generated.push_back(next);
    if (on_token) on_token(next);
    if (next == options.stop_token) break;
  }
  model->train(was_training);
  return generated;
}

std::vector<int64_t> generate(Engine& engine, int64_t slot, const std::vector<int64_t>& prompt,
                              const GenerateOptions& options, const std::function<void(int64_t)>& on_token) {
  if (prompt.empty()) fail("the prompt is empty");
  if (static_cast<int64_t>(prompt.size()) > engine.context())
    fail("the prompt is {} tokens but the context is {} tokens", prompt.size(), engine.context());
  if (options.max_new_tokens < 0) fail("max-new-tokens must be >= 0, got {}", options.max_new_tokens);
  torch::NoGradGuard no_grad;
  engine.reset(slot);
  Sampler sample(options.sampling);
  const int64_t budget =
      std::min<int64_t>(options.max_new_tokens, engine.context() - static_cast<int64_t>(prompt.size()));
  std::vector<int64_t> generated;
  std::vector<int64_t> input = prompt;
  while (static_cast<int64_t>(generated.size()) < budget) {
    const auto logits = engine.forward({slot}, {input});  // [1, V]
    const int64_t next = sample(logits[0]);
    generated.push_back(next);
    if (on_token) on_token(next);
    if (next == options.stop_token) break;
    input.assign(1, next);
  }
  return generated;
}

std::string generate_text(const LoadedModel& loaded, const std::string& prompt_text, const GenerateOptions& options,
                          const std::function<void(const std::string&)>& on_text) {
  require_tokenizer(loaded, "generate");
  const auto& tokenizer = loaded.tokenizer;
  // The model's own start convention: eos for loom's models, whose training text is paragraphs
  // each ended by eos, so generation starts a paragraph; bos or nothing for an imported model.
  const std::vector<int> prefix = tokenizer.prompt_prefix();
  std::vector<int64_t> prompt(prefix.begin(), prefix.end());
  for (int id : tokenizer.encode(prompt_text)) prompt.push_back(id);
  if (prompt.empty()) fail("generate: this model takes no start token, so the prompt must not be empty");
  if (static_cast<int64_t>(prompt.size()) >= loaded.recipe.model.max_seq_len)
    fail("the prompt is {} tokens but the model's context is {} tokens", prompt.size(),
         loaded.recipe.model.max_seq_len);
  // Prompt and continuation are decoded together and what is new is passed on: SentencePiece
  // drops the leading space of a sequence's first piece, and a token may end inside a UTF-8
  // character (decoded as U+FFFD until complete), so decoding the new tokens alone would glue
  // words together or split characters.
  std::vector<int> ids(prompt.begin() + static_cast<std::ptrdiff_t>(prefix.size()), prompt.end());
  std::string text = tokenizer.decode(ids);
  if (on_text) on_text(text);
  size_t passed = text.size();
  auto pass_new_text = [&](bool final) {
    text = tokenizer.decode(ids);
    const bool unfinished = text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0;
    if (text.size() > passed && (final || !unfinished)) {
      if (on_text) on_text(text.substr(passed));
      passed = text.size();
    }
  };
  // The engine's cache holds just this generation (an imported model's context may be long).
  EngineOptions engine_options;
  engine_options.context =
      std::min<int64_t>(loaded.recipe.model.max_seq_len, static_cast<int64_t>(prompt.size()) + options.max_new_tokens);
  auto engine = make_engine(loaded, engine_options);
  generate(*engine, 0, prompt, options, [&](int64_t token) {
    if (token == options.stop_token) return;
    ids.push_back(static_cast<int>(token));
    pass_new_text(false);
  });
  pass_new_text(true);
  return text;
}

}  // namespace loom

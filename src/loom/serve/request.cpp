#include "loom/serve/request.h"

#include <algorithm>
#include <optional>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "loom/core/error.h"
#include "loom/core/utf8.h"

namespace loom {

namespace {

using nlohmann::json;

// Typed access to a request's optional fields: a present field of the wrong type is a 400.
class Fields {
 public:
  explicit Fields(const json& body) : body_(body) {}
  bool has(const char* key) const { return body_.contains(key) && !body_[key].is_null(); }
  const json& at(const char* key) const { return body_[key]; }
  std::optional<int64_t> integer(const char* key) const {
    if (!has(key)) return std::nullopt;
    if (!at(key).is_number_integer()) bad(key, "an integer");
    return at(key).get<int64_t>();
  }
  std::optional<double> number(const char* key) const {
    if (!has(key)) return std::nullopt;
    if (!at(key).is_number()) bad(key, "a number");
    return at(key).get<double>();
  }
  std::optional<bool> boolean(const char* key) const {
    if (!has(key)) return std::nullopt;
    if (!at(key).is_boolean()) bad(key, "a boolean");
    return at(key).get<bool>();
  }
  std::optional<std::string> string(const char* key) const {
    if (!has(key)) return std::nullopt;
    if (!at(key).is_string()) bad(key, "a string");
    return at(key).get<std::string>();
  }
  [[noreturn]] static void bad(const std::string& key, const std::string& what) {
    throw ApiError{400, fmt::format("'{}' must be {}", key, what), "invalid_type", key};
  }

 private:
  const json& body_;
};

json parse_body(std::string_view text) {
  if (const size_t bad = utf8_invalid_at(text); bad != std::string::npos)
    throw ApiError{400, fmt::format("the request body is not valid UTF-8: an ill-formed byte sequence at byte {}", bad),
                   "invalid_utf8"};
  json body;
  try {
    body = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number too large
    throw ApiError{400, fmt::format("the request body is not valid JSON: {}", e.what()), "invalid_json"};
  }
  if (!body.is_object()) throw ApiError{400, "the request body must be a JSON object", "invalid_json"};
  return body;
}

}  // namespace

ChatTemplate parse_chat_template(const std::string& name) {
  if (name == "loom") return ChatTemplate::kLoom;
  if (name == "chatml") return ChatTemplate::kChatMl;
  fail("unknown chat template '{}' (loom, chatml)", name);
}

const char* chat_template_name(ChatTemplate t) { return t == ChatTemplate::kChatMl ? "chatml" : "loom"; }

ChatTemplate detect_chat_template(const Tokenizer& tokenizer) {
  return tokenizer.encode("<|im_start|>").size() == 1 && tokenizer.encode("<|im_end|>").size() == 1
             ? ChatTemplate::kChatMl
             : ChatTemplate::kLoom;
}

std::string render_chat(const std::vector<ChatMessage>& messages, ChatTemplate t) {
  std::string text;
  for (const auto& m : messages) {
    if (m.role != "system" && m.role != "user" && m.role != "assistant")
      fail("message role must be system, user or assistant, got '{}'", m.role);
    if (t == ChatTemplate::kChatMl) text += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    else text += "<|" + m.role + "|>\n" + m.content + "\n";
  }
  return text + (t == ChatTemplate::kChatMl ? "<|im_start|>assistant\n" : "<|assistant|>\n");
}

CompletionRequest parse_completion_request(std::string_view text_body, bool chat, const Tokenizer& tokenizer,
                                           const RequestLimits& limits) {
  const json body = parse_body(text_body);
  Fields f(body);
  CompletionRequest parsed;
  parsed.chat = chat;
  if (auto model = f.string("model"); model && *model != limits.model_name)
    throw ApiError{404,
                   fmt::format("the model '{}' does not exist; this server serves '{}'", *model, limits.model_name),
                   "model_not_found", "model"};
  if (auto n = f.integer("n"); n && *n != 1) throw ApiError{400, "only n = 1 is supported", "invalid_value", "n"};
  if (auto echo = f.boolean("echo"); echo && *echo)
    throw ApiError{400, "echo is not supported", "invalid_value", "echo"};

  std::string text;
  if (chat) {
    if (!f.has("messages") || !f.at("messages").is_array() || f.at("messages").empty())
      throw ApiError{400, "'messages' must be a non-empty array", "invalid_type", "messages"};
    std::vector<ChatMessage> messages;
    for (const auto& m : f.at("messages")) {
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
          !m["content"].is_string())
        throw ApiError{400, "each message must be an object with string 'role' and 'content'", "invalid_type",
                       "messages"};
      messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    }
    try {
      text = render_chat(messages, limits.chat_template);
    } catch (const Error& e) {
      throw ApiError{400, e.what(), "invalid_value", "messages"};
    }
  } else {
    if (!f.has("prompt")) throw ApiError{400, "'prompt' is required", "missing_field", "prompt"};
    const json& prompt = f.at("prompt");
    if (prompt.is_array() && prompt.size() == 1 && prompt[0].is_string()) text = prompt[0].get<std::string>();
    else if (prompt.is_string()) text = prompt.get<std::string>();
    else throw ApiError{400, "'prompt' must be a string (or a list of one string)", "invalid_type", "prompt"};
  }
  // The prompt starts as `loom generate`'s does (prompt_prefix: eos for loom's models, whose
  // training text is paragraphs each ended by eos; an imported model's own convention). eos
  // ends the completion; a ChatML chat ends at "<|im_end|>".
  auto& p = parsed.params;
  p.stop_token = chat && limits.chat_template == ChatTemplate::kChatMl ? limits.chatml_end : tokenizer.eos_id();
  for (int id : tokenizer.prompt_prefix()) p.prompt.push_back(id);
  for (int id : tokenizer.encode(text)) p.prompt.push_back(id);
  const auto prompt_tokens = static_cast<int64_t>(p.prompt.size());
  if (prompt_tokens == 0)  // a model with no prompt prefix (no bos) has nothing to continue
    throw ApiError{400, "the prompt is empty: this model needs at least one token to continue", "invalid_value",
                   chat ? "messages" : "prompt"};
  const int64_t room = limits.context - prompt_tokens;
  if (room < 1)
    throw ApiError{400,
                   fmt::format("the prompt is {} tokens, which leaves no room in the model's context of {} tokens",
                               prompt_tokens, limits.context),
                   "context_length_exceeded", chat ? "messages" : "prompt"};

  auto max_tokens = f.integer(chat && f.has("max_completion_tokens") ? "max_completion_tokens" : "max_tokens");
  if (max_tokens) {
    if (*max_tokens < 1) throw ApiError{400, "max_tokens must be >= 1", "invalid_value", "max_tokens"};
    if (*max_tokens > limits.max_tokens)
      throw ApiError{400,
                     fmt::format("max_tokens is {} but this server allows at most {}", *max_tokens, limits.max_tokens),
                     "invalid_value", "max_tokens"};
    if (prompt_tokens + *max_tokens > limits.context)
      throw ApiError{400,
                     fmt::format("the prompt is {} tokens and max_tokens is {}: more than the model's context of {} "
                                 "tokens",
                                 prompt_tokens, *max_tokens, limits.context),
                     "context_length_exceeded", "max_tokens"};
    p.max_tokens = *max_tokens;
  } else {
    // OpenAI's defaults: 16 for completions, the rest of the context for chat.
    p.max_tokens = std::min({chat ? limits.max_tokens : int64_t{16}, limits.max_tokens, room});
  }

  p.sampling.temperature = f.number("temperature").value_or(1.0);
  if (p.sampling.temperature < 0 || p.sampling.temperature > 2)
    throw ApiError{400, "temperature must be in [0, 2]", "invalid_value", "temperature"};
  p.sampling.top_p = f.number("top_p").value_or(1.0);
  if (!(p.sampling.top_p > 0 && p.sampling.top_p <= 1))
    throw ApiError{400, "top_p must be in (0, 1]", "invalid_value", "top_p"};
  p.sampling.top_k = f.integer("top_k").value_or(0);
  if (p.sampling.top_k < 0) throw ApiError{400, "top_k must be >= 0", "invalid_value", "top_k"};
  if (auto seed = f.integer("seed")) p.sampling.seed = static_cast<uint64_t>(*seed);
  else p.sampling.seed = std::random_device{}();

  if (f.has("stop")) {
    const json& stop = f.at("stop");
    if (stop.is_string()) p.stop.push_back(stop.get<std::string>());
    else if (stop.is_array() && stop.size() <= 4 &&
             std::all_of(stop.begin(), stop.end(), [](const json& s) { return s.is_string(); }))
      for (const auto& s : stop) p.stop.push_back(s.get<std::string>());
    else throw ApiError{400, "'stop' must be a string or a list of at most 4 strings", "invalid_type", "stop"};
    for (const auto& s : p.stop)
      if (s.empty()) throw ApiError{400, "stop strings must not be empty", "invalid_value", "stop"};
  }
  parsed.stream = f.boolean("stream").value_or(false);
  return parsed;
}

}  // namespace loom

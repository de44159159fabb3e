#include "loom/serve/server.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <map>
#include <optional>
#include <random>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "loom/core/error.h"
#include "loom/core/log.h"

namespace loom {

namespace {

using nlohmann::json;

// An answer other than success, sent as OpenAI's error object:
// {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int status;
  std::string message;
  std::string code;
  std::string param = "";
};

const char* error_type(int status) {
  switch (status) {
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 413: return "invalid_request_error";
    case 429: return "rate_limit_error";
    case 503: return "server_error";
  }
  return status >= 500 ? "server_error" : "invalid_request_error";
}

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  json error{{"message", e.message},
             {"type", error_type(e.status)},
             {"param", e.param.empty() ? json(nullptr) : json(e.param)},
             {"code", e.code}};
  res.set_content(json{{"error", error}}.dump() + "\n", "application/json");
}

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

json parse_body(const httplib::Request& req) {
  json body;
  try {
    body = json::parse(req.body);
  } catch (const json::parse_error& e) {
    throw ApiError{400, fmt::format("the request body is not valid JSON: {}", e.what()), "invalid_json"};
  }
  if (!body.is_object()) throw ApiError{400, "the request body must be a JSON object", "invalid_json"};
  return body;
}

int64_t unix_time() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// A completion request after validation: what the scheduler needs, and how to answer.
struct Parsed {
  CompletionParams params;
  bool stream = false;
  bool chat = false;
};

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

struct Server::Impl {
  Impl(std::unique_ptr<Engine> engine, Tokenizer tokenizer_, SchedulerOptions scheduler_options, ServerOptions options_)
      : options(std::move(options_)),
        tokenizer(tokenizer_),
        scheduler(std::move(engine), std::move(tokenizer_), scheduler_options),
        created(unix_time()),
        ids(std::random_device{}()) {
    if (options.max_tokens < 1) fail("--max-tokens must be >= 1, got {}", options.max_tokens);
    if (options.max_body < 1) fail("--max-body must be >= 1 byte, got {}", options.max_body);
    if (options.http_threads < 1) fail("--threads-http must be >= 1, got {}", options.http_threads);
    if (options.chat_template == ChatTemplate::kChatMl) {
      const auto end = tokenizer.encode("<|im_end|>");
      if (end.size() != 1 || tokenizer.encode("<|im_start|>").size() != 1)
        fail("the chatml chat template needs a vocabulary with <|im_start|> and <|im_end|> tokens");
      chatml_end = end[0];
    }
    const int threads = options.http_threads;
    http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
    http.set_payload_max_length(static_cast<size_t>(options.max_body));
    routes();
  }

  void routes() {
    http.Get("/health", [this](const httplib::Request& req, httplib::Response& res) {
      res.status = 200;
      res.set_content("{\"status\":\"ok\"}\n", "application/json");
      count(req, res);
    });
    http.Get("/metrics", guarded([this](const httplib::Request&, httplib::Response& res) { metrics(res); }));
    http.Get(
        "/v1/models", guarded([this](const httplib::Request&, httplib::Response& res) {
          json model{{"id", options.model_name}, {"object", "model"}, {"created", created}, {"owned_by", "loom"}};
          res.set_content(json{{"object", "list"}, {"data", json::array({model})}}.dump() + "\n", "application/json");
        }));
    http.Post("/v1/completions", guarded([this](const httplib::Request& req, httplib::Response& res) {
                complete(parse(parse_body(req), false), res);
              }));
    http.Post("/v1/chat/completions", guarded([this](const httplib::Request& req, httplib::Response& res) {
                complete(parse(parse_body(req), true), res);
              }));
    // httplib's own refusals (unknown path 404, body over the limit 413, unparsable request 400)
    // come without a body: give them OpenAI's error shape too.
    http.set_error_handler(
        httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
          if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
          std::string message = "request failed", code = "error";
          if (res.status == 404) message = "no such endpoint", code = "not_found";
          if (res.status == 413)
            message = "the request body is larger than the server's --max-body", code = "body_too_large";
          if (res.status == 400) message = "malformed HTTP request", code = "bad_request";
          send_error(res, {res.status, message, code});
          count(req, res);
          return httplib::Server::HandlerResponse::Handled;
        }));
  }

  // Authentication, and every error a handler throws, as OpenAI error objects.
  httplib::Server::Handler guarded(std::function<void(const httplib::Request&, httplib::Response&)> handler) {
    return [this, handler](const httplib::Request& req, httplib::Response& res) {
      res.status = 200;  // httplib would set it after the handler: count() needs it now
      try {
        if (!options.api_key.empty() && req.get_header_value("Authorization") != "Bearer " + options.api_key)
          throw ApiError{401,
                         req.has_header("Authorization") ? "incorrect API key"
                                                         : "missing API key: send "
                                                           "'Authorization: Bearer <key>'",
                         "invalid_api_key"};
        handler(req, res);
      } catch (const ApiError& e) {
        send_error(res, e);
      } catch (const Error& e) {
        send_error(res, {400, e.what(), "invalid_value"});
      } catch (const std::exception& e) {
        logger().error("serve: {} {}: {}", req.method, req.path, e.what());
        send_error(res, {500, e.what(), "internal_error"});
      }
      count(req, res);
    };
  }

  // Counted when the answer is decided, before it is sent, so a client that reads /metrics right
  // after an answer sees it counted.
  void count(const httplib::Request& req, const httplib::Response& res) {
    static const char* known[] = {"/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions"};
    std::string path = "other";
    for (const char* k : known)
      if (req.path == k) path = k;
    std::lock_guard lock(counts_mutex);
    ++request_counts[{path, res.status}];
  }

  Parsed parse(const json& body, bool chat) {
    Fields f(body);
    Parsed parsed;
    parsed.chat = chat;
    if (auto model = f.string("model"); model && *model != options.model_name)
      throw ApiError{404,
                     fmt::format("the model '{}' does not exist; this server serves '{}'", *model, options.model_name),
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
        text = render_chat(messages, options.chat_template);
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
    p.stop_token = chat && options.chat_template == ChatTemplate::kChatMl ? chatml_end : tokenizer.eos_id();
    for (int id : tokenizer.prompt_prefix()) p.prompt.push_back(id);
    for (int id : tokenizer.encode(text)) p.prompt.push_back(id);
    const auto prompt_tokens = static_cast<int64_t>(p.prompt.size());
    const int64_t room = scheduler.context() - prompt_tokens;
    if (room < 1)
      throw ApiError{400,
                     fmt::format("the prompt is {} tokens, which leaves no room in the model's context of {} tokens",
                                 prompt_tokens, scheduler.context()),
                     "context_length_exceeded", chat ? "messages" : "prompt"};

    auto max_tokens = f.integer(chat && f.has("max_completion_tokens") ? "max_completion_tokens" : "max_tokens");
    if (max_tokens) {
      if (*max_tokens < 1) throw ApiError{400, "max_tokens must be >= 1", "invalid_value", "max_tokens"};
      if (*max_tokens > options.max_tokens)
        throw ApiError{
            400, fmt::format("max_tokens is {} but this server allows at most {}", *max_tokens, options.max_tokens),
            "invalid_value", "max_tokens"};
      if (prompt_tokens + *max_tokens > scheduler.context())
        throw ApiError{400,
                       fmt::format("the prompt is {} tokens and max_tokens is {}: more than the model's context of {} "
                                   "tokens",
                                   prompt_tokens, *max_tokens, scheduler.context()),
                       "context_length_exceeded", "max_tokens"};
      p.max_tokens = *max_tokens;
    } else {
      // OpenAI's defaults: 16 for completions, the rest of the context for chat.
      p.max_tokens = std::min({chat ? options.max_tokens : int64_t{16}, options.max_tokens, room});
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

  void complete(Parsed parsed, httplib::Response& res) {
    const auto prompt_tokens = static_cast<int64_t>(parsed.params.prompt.size());
    auto completion = scheduler.submit(std::move(parsed.params));
    if (!completion) {
      res.set_header("Retry-After", "1");
      throw ApiError{429, "the server's request queue is full; retry later", "queue_full"};
    }
    const std::string id = fmt::format("{}-{:016x}", parsed.chat ? "chatcmpl" : "cmpl", next_id());
    const int64_t now = unix_time();
    const bool chat = parsed.chat;
    auto envelope = [this, id, now, chat](json choice) {
      return json{{"id", id},
                  {"object", chat ? "chat.completion" : "text_completion"},
                  {"created", now},
                  {"model", options.model_name},
                  {"choices", json::array({std::move(choice)})}};
    };

    if (!parsed.stream) {
      const std::string text = completion->wait_all();
      const auto reason = completion->finish_reason();
      if (reason == FinishReason::cancelled)
        throw ApiError{503,
                       "the request was dropped before it finished: the server is shutting down (or its engine "
                       "failed: see the server's log)",
                       "shutting_down"};
      json choice{{"index", 0}, {"finish_reason", finish_reason_name(reason)}};
      if (chat) choice["message"] = {{"role", "assistant"}, {"content", text}};
      else choice["text"] = text, choice["logprobs"] = nullptr;
      json out = envelope(std::move(choice));
      const int64_t generated = completion->completion_tokens();
      out["usage"] = {{"prompt_tokens", prompt_tokens},
                      {"completion_tokens", generated},
                      {"total_tokens", prompt_tokens + generated}};
      res.set_content(out.dump() + "\n", "application/json");
      return;
    }

    // Server-sent events: one "data: {chunk}" per piece of new text, a last chunk with the
    // finish_reason, then "data: [DONE]". Chat chunks carry deltas, the first one the role.
    auto chunk = [envelope, chat](const std::string& text, const char* reason, bool first) {
      json choice{{"index", 0}, {"finish_reason", reason ? json(reason) : json(nullptr)}};
      if (chat) {
        json delta = json::object();
        if (first) delta["role"] = "assistant";
        if (!text.empty() || (!first && !reason)) delta["content"] = text;
        choice["delta"] = delta;
      } else {
        choice["text"] = text, choice["logprobs"] = nullptr;
      }
      json out = envelope(std::move(choice));
      out["object"] = chat ? "chat.completion.chunk" : "text_completion";
      return "data: " + out.dump() + "\n\n";
    };
    res.set_header("Cache-Control", "no-cache");
    auto first = std::make_shared<bool>(chat);
    res.set_chunked_content_provider(
        "text/event-stream",
        [completion, chunk, first](size_t, httplib::DataSink& sink) {
          std::string out;
          if (*first) {
            out = chunk("", nullptr, true);
            *first = false;
          }
          const auto update = completion->wait(std::chrono::milliseconds(200));
          if (!update.text.empty()) out += chunk(update.text, nullptr, false);
          if (update.finished) {
            const auto reason = completion->finish_reason();
            if (reason == FinishReason::cancelled)
              out += "data: " +
                     json{{"error",
                           {{"message", "the server is shutting down"},
                            {"type", "server_error"},
                            {"param", nullptr},
                            {"code", "shutting_down"}}}}
                         .dump() +
                     "\n\n";
            else out += chunk("", finish_reason_name(reason), false);
            out += "data: [DONE]\n\n";
          }
          // A failed write means the client is gone: free its slot.
          if (!out.empty() && !sink.write(out.data(), out.size())) {
            completion->cancel();
            return false;
          }
          if (update.finished) sink.done();
          return true;
        },
        [completion](bool success) {
          if (!success) completion->cancel();
        });
  }

  void metrics(httplib::Response& res) {
    const auto s = scheduler.stats();
    std::string out;
    auto metric = [&](const char* name, const char* type, const char* help, auto value) {
      out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, value);
    };
    out +=
        "# HELP loom_http_requests_total HTTP requests answered, by path and status.\n"
        "# TYPE loom_http_requests_total counter\n";
    {
      std::lock_guard lock(counts_mutex);
      for (const auto& [key, count] : request_counts)
        out += fmt::format("loom_http_requests_total{{path=\"{}\",status=\"{}\"}} {}\n", key.first, key.second, count);
    }
    metric("loom_prompt_tokens_total", "counter", "Prompt tokens admitted into slots.", s.prompt_tokens);
    metric("loom_generated_tokens_total", "counter", "Tokens sampled (eos included).", s.generated_tokens);
    metric("loom_completions_total", "counter", "Requests that finished (stop or length).", s.finished);
    metric("loom_cancelled_total", "counter", "Requests dropped (client gone, shutdown).", s.cancelled);
    metric("loom_queue_length", "gauge", "Requests waiting for a slot.", s.queued);
    metric("loom_active_slots", "gauge", "Slots holding a request.", s.active);
    metric("loom_slots", "gauge", "Slots of the engine.", s.slots);
    metric("loom_decode_steps_total", "counter", "Engine forward calls (each batches every active slot).", s.steps);
    metric("loom_engine_seconds_total", "counter", "Seconds in engine forward and sampling.", s.engine_seconds);
    metric("loom_tokens_per_second", "gauge", "Generated tokens per second of engine time.",
           s.engine_seconds > 0 ? static_cast<double>(s.generated_tokens) / s.engine_seconds : 0.0);
    res.set_content(out, "text/plain; version=0.0.4");
  }

  uint64_t next_id() {
    std::lock_guard lock(counts_mutex);
    return ids();
  }

  ServerOptions options;
  Tokenizer tokenizer;
  int64_t chatml_end = -1;  // the id of "<|im_end|>" (chatml)
  Scheduler scheduler;
  int64_t created;
  httplib::Server http;
  std::mutex counts_mutex;
  std::map<std::pair<std::string, int>, int64_t> request_counts;
  std::mt19937_64 ids;
};

Server::Server(std::unique_ptr<Engine> engine, Tokenizer tokenizer, SchedulerOptions scheduler, ServerOptions options)
    : impl_(std::make_unique<Impl>(std::move(engine), std::move(tokenizer), scheduler, std::move(options))) {}

Server::~Server() {
  stop();
  impl_->scheduler.stop();
}

int Server::bind() {
  auto& o = impl_->options;
  if (o.port == 0) {
    const int port = impl_->http.bind_to_any_port(o.host);
    if (port < 0) fail("cannot listen on {}", o.host);
    return port;
  }
  if (!impl_->http.bind_to_port(o.host, o.port)) fail("cannot listen on {}:{}", o.host, o.port);
  return o.port;
}

void Server::serve() {
  impl_->http.listen_after_bind();
  impl_->scheduler.stop();
}

void Server::stop() {
  impl_->scheduler.pause(false);  // requests in flight must be able to finish
  impl_->http.stop();
}

Scheduler& Server::scheduler() { return impl_->scheduler; }

}  // namespace loom

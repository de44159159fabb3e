#include "loom/serve/server.h"

#include <httplib.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <netdb.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <algorithm>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "loom/core/error.h"
#include "loom/core/log.h"
#include "loom/core/utf8.h"

namespace loom {

namespace {

using nlohmann::json;

// Every JSON answer is written through this: text that is not valid UTF-8 (an exception's message
// quoting the request's bytes, say) is repaired with U+FFFD instead of throwing.
std::string to_text(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// Compares in time that depends only on the lengths, so that timing does not tell a client how
// much of a guessed key is right.
bool equal_in_constant_time(std::string_view a, std::string_view b) {
  unsigned diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < std::max(a.size(), b.size()); ++i)
    diff |= static_cast<unsigned char>(i < a.size() ? a[i] : 0) ^ static_cast<unsigned char>(i < b.size() ? b[i] : 0);
  return diff == 0;
}

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
  res.set_content(to_text(json{{"error", error}}) + "\n", "application/json");
}

int64_t unix_time() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

namespace {

// cpp-httplib 0.11 bounds each read of a request (5 s) but not the whole request: a client that
// trickles a byte every few seconds would hold a handler thread for as long as it liked, and
// httplib shows no accepted socket to its user. This watchdog finds the server's connections in
// /proc/self/fd (local port = the server's) and shuts down one that has not delivered a whole
// request within the deadline of its opening or of its previous response. A connection whose
// request is being handled (a long stream included) is never cut.
class RequestDeadline {
 public:
  using Clock = std::chrono::steady_clock;

  explicit RequestDeadline(int seconds) : deadline_(std::chrono::seconds(seconds)) {}
  ~RequestDeadline() { stop(); }

  void start(int port) {
    if (deadline_.count() <= 0 || thread_.joinable()) return;
    port_ = port;
    thread_ = std::thread([this] { run(); });
  }
  void stop() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  void begin(const httplib::Request& req) { set(req, true); }
  void end(const httplib::Request& req) { set(req, false); }
  int64_t cut() const {
    std::lock_guard lock(mutex_);
    return cut_total_;
  }

 private:
  struct Connection {
    bool busy = false;
    Clock::time_point since;
    bool cut = false;
  };

  static std::string peer_name(const httplib::Request& req) {
    return req.remote_addr + ":" + std::to_string(req.remote_port);
  }
  void set(const httplib::Request& req, bool busy) {
    if (deadline_.count() <= 0) return;
    std::lock_guard lock(mutex_);
    auto& c = connections_[peer_name(req)];
    c.busy = busy;
    c.since = Clock::now();
  }

  // The server's open connections: (fd, "peer address:port").
  std::vector<std::pair<int, std::string>> scan() const {
    std::vector<std::pair<int, std::string>> out;
    DIR* dir = opendir("/proc/self/fd");
    if (dir == nullptr) return out;
    while (const dirent* entry = readdir(dir)) {
      char* end = nullptr;
      const long fd = std::strtol(entry->d_name, &end, 10);
      if (end == entry->d_name || *end != '\0') continue;
      sockaddr_storage local{}, peer{};
      socklen_t local_size = sizeof(local), peer_size = sizeof(peer);
      if (getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&local), &local_size) != 0) continue;
      if (getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &peer_size) != 0) continue;
      char address[INET6_ADDRSTRLEN] = {};
      int local_port = 0, peer_port = 0;
      if (local.ss_family == AF_INET && peer.ss_family == AF_INET) {
        const auto& l = reinterpret_cast<const sockaddr_in&>(local);
        const auto& p = reinterpret_cast<const sockaddr_in&>(peer);
        local_port = ntohs(l.sin_port), peer_port = ntohs(p.sin_port);
        inet_ntop(AF_INET, &p.sin_addr, address, sizeof(address));
      } else if (local.ss_family == AF_INET6 && peer.ss_family == AF_INET6) {
        const auto& l = reinterpret_cast<const sockaddr_in6&>(local);
        const auto& p = reinterpret_cast<const sockaddr_in6&>(peer);
        local_port = ntohs(l.sin6_port), peer_port = ntohs(p.sin6_port);
        inet_ntop(AF_INET6, &p.sin6_addr, address, sizeof(address));
      }
      if (local_port == port_ && peer_port != 0)
        out.emplace_back(static_cast<int>(fd), std::string(address) + ":" + std::to_string(peer_port));
    }
    closedir(dir);
    return out;
  }

  void run() {
    std::unique_lock lock(mutex_);
    while (!wake_.wait_for(lock, std::chrono::milliseconds(250), [this] { return stopping_; })) {
      lock.unlock();
      const auto open = scan();
      lock.lock();
      const auto now = Clock::now();
      std::set<std::string> live;
      for (const auto& [fd, peer] : open) {
        live.insert(peer);
        auto [it, fresh] = connections_.try_emplace(peer, Connection{false, now, false});
        Connection& c = it->second;
        if (!c.busy && !c.cut && now - c.since > deadline_) {
          ::shutdown(fd, SHUT_RDWR);  // httplib's blocked read returns; it closes the socket
          c.cut = true;
          ++cut_total_;
        }
      }
      for (auto it = connections_.begin(); it != connections_.end();)
        it = live.count(it->first) || it->second.busy ? std::next(it) : connections_.erase(it);
    }
  }

  const std::chrono::seconds deadline_;
  int port_ = 0;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::map<std::string, Connection> connections_;
  int64_t cut_total_ = 0;
  std::thread thread_;
};

}  // namespace

struct Server::Impl {
  Impl(std::unique_ptr<Engine> engine, Tokenizer tokenizer_, SchedulerOptions scheduler_options, ServerOptions options_)
      : options(std::move(options_)),
        tokenizer(tokenizer_),
        scheduler(std::move(engine), std::move(tokenizer_), scheduler_options),
        created(unix_time()),
        ids(std::random_device{}()),
        deadline(options.request_timeout) {
    if (options.max_tokens < 1) fail("--max-tokens must be >= 1, got {}", options.max_tokens);
    if (options.max_body < 1) fail("--max-body must be >= 1 byte, got {}", options.max_body);
    if (options.http_threads < 1) fail("--threads-http must be >= 1, got {}", options.http_threads);
    if (options.request_timeout < 0) fail("--request-timeout must be >= 0, got {}", options.request_timeout);
    if (options.chat_template == ChatTemplate::kChatMl) {
      const auto end = tokenizer.encode("<|im_end|>");
      if (end.size() != 1 || tokenizer.encode("<|im_start|>").size() != 1)
        fail("the chatml chat template needs a vocabulary with <|im_start|> and <|im_end|> tokens");
      limits.chatml_end = end[0];
    }
    limits.model_name = options.model_name;
    limits.max_tokens = options.max_tokens;
    limits.context = scheduler.context();
    limits.chat_template = options.chat_template;
    const int threads = options.http_threads;
    http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
    http.set_payload_max_length(static_cast<size_t>(options.max_body));
    // httplib's default also sets SO_REUSEPORT, with which a second server on a port in use starts
    // and the kernel splits connections between the two: SO_REUSEADDR alone (a restart may rebind
    // over connections in TIME_WAIT) makes bind() fail instead.
    http.set_socket_options([this](socket_t sock) {
      int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
      listening = sock;  // the last socket made is the one bound, if binding succeeds
    });
    // A handler's exception that escaped guarded() (none should): answered, logged, never fatal.
    http.set_exception_handler([this](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "unknown exception";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {}
      logger().error("serve: {} {}: {}", req.method, req.path, what);
      send_error(res, {500, "internal error: see the server's log", "internal_error"});
      count(req, res);
    });
    http.set_logger([this](const httplib::Request& req, const httplib::Response&) { deadline.end(req); });
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
          res.set_content(to_text(json{{"object", "list"}, {"data", json::array({model})}}) + "\n", "application/json");
        }));
    http.Post("/v1/completions", guarded([this](const httplib::Request& req, httplib::Response& res) {
                complete(parse_completion_request(req.body, false, tokenizer, limits), res);
              }));
    http.Post("/v1/chat/completions", guarded([this](const httplib::Request& req, httplib::Response& res) {
                complete(parse_completion_request(req.body, true, tokenizer, limits), res);
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
      deadline.begin(req);  // the whole request arrived: answering it may take long
      res.status = 200;     // httplib would set it after the handler: count() needs it now
      try {
        if (!options.api_key.empty() &&
            !equal_in_constant_time(req.get_header_value("Authorization"), "Bearer " + options.api_key))
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

  void complete(CompletionRequest parsed, httplib::Response& res) {
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
      res.set_content(to_text(out) + "\n", "application/json");
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
      return "data: " + to_text(out) + "\n\n";
    };
    res.set_header("Cache-Control", "no-cache");
    auto first = std::make_shared<bool>(chat);
    res.set_chunked_content_provider(
        "text/event-stream",
        [completion, chunk, first](size_t, httplib::DataSink& sink) {
          // httplib calls this outside any try: an exception here would end the process.
          try {
            return stream_some(*completion, chunk, *first, sink);
          } catch (const std::exception& e) {
            logger().error("serve: a stream failed, closing it: {}", e.what());
          } catch (...) {
            logger().error("serve: a stream failed, closing it");
          }
          completion->cancel();
          return false;
        },
        [completion](bool success) {
          if (!success) completion->cancel();
        });
  }

  // One call of a stream's content provider: the chunks of whatever new text arrives within 200 ms.
  template <class Chunk>
  static bool stream_some(Completion& completion, const Chunk& chunk, bool& first, httplib::DataSink& sink) {
    {
      std::string out;
      if (first) {
        out = chunk("", nullptr, true);
        first = false;
      }
      const auto update = completion.wait(std::chrono::milliseconds(200));
      if (!update.text.empty()) out += chunk(update.text, nullptr, false);
      if (update.finished) {
        const auto reason = completion.finish_reason();
        if (reason == FinishReason::cancelled)
          out += "data: " +
                 to_text(json{{"error",
                               {{"message", "the server is shutting down"},
                                {"type", "server_error"},
                                {"param", nullptr},
                                {"code", "shutting_down"}}}}) +
                 "\n\n";
        else out += chunk("", finish_reason_name(reason), false);
        out += "data: [DONE]\n\n";
      }
      // A failed write means the client is gone: free its slot.
      if (!out.empty() && !sink.write(out.data(), out.size())) {
        completion.cancel();
        return false;
      }
      if (update.finished) sink.done();
      return true;
    }
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
    metric("loom_request_timeouts_total", "counter", "Connections cut for not delivering a whole request in time.",
           deadline.cut());
    metric("loom_queue_length", "gauge", "Requests waiting for a slot.", s.queued);
    metric("loom_active_slots", "gauge", "Slots holding a request.", s.active);
    metric("loom_slots", "gauge", "Slots of the engine.", s.slots);
    metric("loom_decode_steps_total", "counter", "Engine forward calls (each batches every active slot).", s.steps);
    metric("loom_engine_seconds_total", "counter", "Seconds in engine forward and sampling.", s.engine_seconds);
    metric("loom_kv_cache_bytes", "gauge", "Bytes the slots' KV caches hold (they grow with the sequences).",
           s.cache_bytes);
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
  RequestLimits limits;
  socket_t listening = INVALID_SOCKET;
  std::atomic<bool> serving{false}, served{false}, stop_requested{false};  // see serve()
  Scheduler scheduler;
  int64_t created;
  httplib::Server http;
  std::mutex counts_mutex;
  std::map<std::pair<std::string, int>, int64_t> request_counts;
  std::mt19937_64 ids;
  RequestDeadline deadline;  // last: its watchdog stops first
};

Server::Server(std::unique_ptr<Engine> engine, Tokenizer tokenizer, SchedulerOptions scheduler, ServerOptions options)
    : impl_(std::make_unique<Impl>(std::move(engine), std::move(tokenizer), scheduler, std::move(options))) {}

Server::~Server() {
  stop();
  impl_->scheduler.stop();
}

namespace {

[[noreturn]] void fail_to_listen(const std::string& host, int port, int error) {
  fail("cannot listen on {}:{}: {}{}", host, port, error ? std::strerror(error) : "bind failed",
       error == EADDRINUSE ? " (another server is listening there)" : "");
}

}  // namespace

void check_port_free(const std::string& host, int port) {
  if (port == 0) return;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  if (const int status = getaddrinfo(host.c_str(), service.c_str(), &hints, &found); status != 0)
    fail("cannot listen on {}:{}: {}", host, port, gai_strerror(status));
  int error = 0;
  for (addrinfo* a = found; a; a = a->ai_next) {
    const int sock = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (sock < 0) continue;
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    error = ::bind(sock, a->ai_addr, a->ai_addrlen) == 0 ? 0 : errno;
    close(sock);
    if (error == 0) break;
  }
  freeaddrinfo(found);
  if (error != 0) fail_to_listen(host, port, error);
}

int64_t raise_open_file_limit(int64_t wanted) {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  const rlim_t target = std::min<rlim_t>(static_cast<rlim_t>(wanted), limit.rlim_max);
  if (limit.rlim_cur < target) {
    limit.rlim_cur = target;
    if (setrlimit(RLIMIT_NOFILE, &limit) != 0) getrlimit(RLIMIT_NOFILE, &limit);
  }
  return static_cast<int64_t>(limit.rlim_cur);
}

int Server::bind() {
  auto& o = impl_->options;
  errno = 0;
  int port = o.port;
  if (port == 0) {
    port = impl_->http.bind_to_any_port(o.host);
    if (port < 0) fail("cannot listen on {}: {}", o.host, errno ? std::strerror(errno) : "bind failed");
  } else if (!impl_->http.bind_to_port(o.host, o.port)) {
    fail_to_listen(o.host, o.port, errno);
  }
  // The compiled cpp-httplib listens with a backlog of 5: a burst of clients connecting at once
  // overflows it and the kernel resets the surplus connections after their requests were sent.
  // Listening again on the same socket only raises the backlog (to the kernel's somaxconn).
  if (impl_->listening != INVALID_SOCKET) ::listen(impl_->listening, SOMAXCONN);
  impl_->deadline.start(port);
  return port;
}

void Server::serve() {
  // httplib's stop() does nothing before listen_after_bind() is running: a stop() that comes
  // first must keep serve() from starting, and one that comes during the start must wait for it.
  impl_->serving = true;
  if (!impl_->stop_requested) impl_->http.listen_after_bind();
  impl_->served = true;
  impl_->scheduler.stop();
}

void Server::stop() {
  impl_->scheduler.pause(false);  // requests in flight must be able to finish
  impl_->stop_requested = true;
  if (impl_->serving)
    while (!impl_->served && !impl_->http.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  impl_->http.stop();
  impl_->deadline.stop();
}

Scheduler& Server::scheduler() { return impl_->scheduler; }

}  // namespace loom

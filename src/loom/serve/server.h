// An OpenAI-compatible HTTP server over the continuous-batching Scheduler (cpp-httplib, with its
// thread pool): GET /health, /metrics (Prometheus text), /v1/models; POST /v1/completions and
// /v1/chat/completions, streamed as server-sent events with "stream": true. docs/serving.md
// lists the fields, the chat template, the limits and the errors.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "loom/serve/request.h"
#include "loom/serve/scheduler.h"

namespace loom {

struct ServerOptions {
  std::string host = "127.0.0.1";   // the address to listen on
  int port = 8080;                  // 0 = any free port (bind() says which)
  std::string api_key;              // non-empty: every endpoint but /health needs "Authorization: Bearer <key>"
  std::string model_name = "loom";  // the one model id served
  int64_t max_tokens = 1024;        // a request's max_tokens at most
  int64_t max_body = 1 << 20;       // request body bytes at most
  int http_threads = 1024;          // handler threads; each open connection holds one (an idle one too)
  int request_timeout = 30;         // seconds a connection has to deliver a whole request (0 = no limit)
  ChatTemplate chat_template = ChatTemplate::kLoom;
};

// Fails with a clear error when host:port cannot be bound (another server holds it): a check a
// command makes before the slow part of starting, loading a model. 0 (any port) always passes.
void check_port_free(const std::string& host, int port);

// Raises this process's soft limit of open files towards `wanted` (at most to the hard limit):
// each connection is one. Returns the limit now in force.
int64_t raise_open_file_limit(int64_t wanted);

class Server {
 public:
  // The engine's model and the tokenizer go together (the tokenizer's eos ends completions).
  Server(std::unique_ptr<Engine> engine, Tokenizer tokenizer, SchedulerOptions scheduler, ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds the listening socket and returns the port (a loom::Error if it cannot).
  int bind();
  // Answers requests until stop(); then lets the requests in flight finish and stops the scheduler.
  void serve();
  // From any thread (a signal handler's thread, a test): makes serve() return.
  void stop();

  Scheduler& scheduler();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace loom

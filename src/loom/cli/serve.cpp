#include <unistd.h>

#include <csignal>
#include <cstring>

#include <filesystem>
#include <thread>

#include <spdlog/spdlog.h>

#include "loom/checkpoint/checkpoint.h"
#include "loom/cli/commands.h"
#include "loom/core/error.h"
#include "loom/core/runtime.h"
#include "loom/serve/server.h"

namespace loom::cli {

namespace {

// SIGINT/SIGTERM write their number into a pipe whose reader thread stops the server: a handler
// may run on any thread (OpenBLAS starts its workers before main, so masking the signals in main
// cannot route them to one thread), and only write() is safe inside it.
int g_signal_pipe[2] = {-1, -1};
void on_stop_signal(int signal) {
  const char byte = static_cast<char>(signal);
  [[maybe_unused]] auto n = write(g_signal_pipe[1], &byte, 1);
}

}  // namespace

void add_serve(CLI::App& app, const GlobalOptions& global) {
  struct Args {
    std::string checkpoint;
    ServerOptions server;
    SchedulerOptions scheduler;
    int64_t slots = 8;
    std::string chat_template = "auto";
  };
  auto args = std::make_shared<Args>();
  args->server.model_name.clear();
  app.add_option("checkpoint", args->checkpoint, "checkpoint or run directory")->required();
  app.add_option("--host", args->server.host, "address to listen on (127.0.0.1: this machine only)");
  app.add_option("--port", args->server.port, "port to listen on")->check(CLI::Range(0, 65535));
  app.add_option("--api-key", args->server.api_key, "require 'Authorization: Bearer KEY' (all but /health)");
  app.add_option("--model-name", args->server.model_name,
                 "model id in responses (default: the checkpoint's directory name)");
  app.add_option("--slots", args->slots, "sequences decoded together")->check(CLI::PositiveNumber);
  app.add_option("--max-tokens", args->server.max_tokens, "largest max_tokens a request may ask for")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-body", args->server.max_body, "largest request body, bytes (larger: 413)")
      ->check(CLI::PositiveNumber);
  app.add_option("--queue", args->scheduler.queue, "requests waiting for a slot at most (more: 429)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--prefill-chunk", args->scheduler.prefill_chunk,
                 "prompt tokens a slot feeds per step at most (0 = all)")
      ->check(CLI::NonNegativeNumber);
  app.add_option(
         "--chat-template", args->chat_template,
         "chat template: auto (chatml when the vocabulary has <|im_start|>/<|im_end|>, else loom), loom, chatml")
      ->check(CLI::IsMember({"auto", "loom", "chatml"}));
  app.add_option("--request-timeout", args->server.request_timeout,
                 "seconds a connection has to deliver a whole request, from its opening or its previous answer "
                 "(0 = no limit)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--threads-http", args->server.http_threads, "HTTP handler threads (each open connection holds one)")
      ->check(CLI::PositiveNumber);
  app.callback([args, &global] {
    configure_threads(global.threads);
    check_port_free(args->server.host, args->server.port);
    // A connection per handler thread, plus the model's files and the rest: a fresh shell's 1024
    // open files would refuse connections long before the threads run out.
    const int64_t files = 2 * int64_t{args->server.http_threads} + 256;
    if (const int64_t got = raise_open_file_limit(files); got < files)
      spdlog::warn(
          "serve: {} open files allowed (ulimit -n), {} wanted for --threads-http {}: connections past the "
          "limit will be refused",
          got, files, args->server.http_threads);
    auto loaded = load_checkpoint(args->checkpoint);
    require_tokenizer(loaded, "serve");
    if (args->server.model_name.empty())
      args->server.model_name = std::filesystem::path(loaded.dir).filename().string();
    args->server.chat_template = args->chat_template == "auto" ? detect_chat_template(loaded.tokenizer)
                                                               : parse_chat_template(args->chat_template);
    EngineOptions engine;
    engine.slots = args->slots;
    Server server(make_engine(loaded, engine), loaded.tokenizer, args->scheduler, args->server);
    const int port = server.bind();
    if (pipe(g_signal_pipe) != 0) fail("serve: cannot create a pipe for signals");
    std::signal(SIGINT, on_stop_signal);
    std::signal(SIGTERM, on_stop_signal);
    std::thread([&server] {
      char received = 0;
      if (read(g_signal_pipe[0], &received, 1) == 1)
        spdlog::info("serve: {}: finishing the requests in flight, then exiting", strsignal(received));
      server.stop();
    }).detach();
    spdlog::info("serve: {} ({} slots, context {}, chat template {}) on http://{}:{}", args->server.model_name,
                 args->slots, server.scheduler().context(), chat_template_name(args->server.chat_template),
                 args->server.host, port);
    server.serve();
  });
}

}  // namespace loom::cli

// loom serve: an in-process server on an ephemeral port, answered by httplib::Client. Greedy
// completions must equal infer/generate.cpp's generate() on the same prompt, alone and with
// other requests batched beside them; every limit answers with OpenAI's error object.
#include <httplib.h>

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <fstream>
#include <future>
#include <thread>

#include <nlohmann/json.hpp>

#include "loom/checkpoint/checkpoint.h"
#include "loom/core/utf8.h"
#include "loom/infer/generate.h"
#include "loom/serve/server.h"
#include "loom/train/trainer.h"
#include "test_util.h"
#include "tiny_run.h"

using namespace loom;
using nlohmann::json;

namespace {

// A server on its own thread, stopped (requests in flight finished) when it goes out of scope.
class Running {
 public:
  Running(const LoadedModel& loaded, ServerOptions options, SchedulerOptions scheduler = {}, int64_t slots = 4) {
    options.port = 0;
    options.model_name = "tiny";
    EngineOptions engine;
    engine.slots = slots;
    server_ = std::make_unique<Server>(make_engine(loaded, engine), loaded.tokenizer, scheduler, options);
    port_ = server_->bind();
    thread_ = std::thread([this] { server_->serve(); });
  }
  ~Running() {
    server_->stop();
    thread_.join();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(120, 0);
    return c;
  }
  httplib::Result post(const std::string& path, const json& body, const httplib::Headers& headers = {}) const {
    return client().Post(path.c_str(), headers, body.dump(), "application/json");
  }
  Scheduler& scheduler() { return server_->scheduler(); }
  int port() const { return port_; }

 private:
  std::unique_ptr<Server> server_;
  int port_ = 0;
  std::thread thread_;
};

struct Expected {
  std::string text;
  std::string finish_reason;
  int64_t prompt_tokens, completion_tokens;
};

// What the server must answer for `text` (already rendered, for chat) at temperature 0: the
// prompt is eos + the text's tokens, as `loom generate` feeds it.
Expected greedy(const LoadedModel& loaded, const std::string& text, int64_t max_tokens) {
  const auto& tokenizer = loaded.tokenizer;
  std::vector<int64_t> prompt{tokenizer.eos_id()};
  for (int id : tokenizer.encode(text)) prompt.push_back(id);
  GenerateOptions options;
  options.max_new_tokens = max_tokens;
  options.sampling.temperature = 0;
  options.stop_token = tokenizer.eos_id();
  Model model = loaded.model;
  const auto tokens = generate(model, prompt, options);
  std::vector<int> ids(prompt.begin() + 1, prompt.end());
  const size_t prompt_text = tokenizer.decode(ids).size();
  for (auto t : tokens)
    if (t != tokenizer.eos_id()) ids.push_back(static_cast<int>(t));
  const bool eos = !tokens.empty() && tokens.back() == tokenizer.eos_id();
  return {tokenizer.decode(ids).substr(prompt_text), eos ? "stop" : "length", static_cast<int64_t>(prompt.size()),
          static_cast<int64_t>(tokens.size())};
}

// The "data: ..." payloads of a server-sent event stream.
std::vector<std::string> events(const std::string& body) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at < body.size()) {
    const size_t end = body.find("\n\n", at);
    EXPECT_NE(end, std::string::npos) << "an unterminated event in: " << body;
    if (end == std::string::npos) break;
    const std::string event = body.substr(at, end - at);
    EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
    out.push_back(event.substr(6));
    at = end + 2;
  }
  return out;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void expect_error(const httplib::Result& r, int status, const std::string& code) {
  ASSERT_TRUE(r) << "no response";
  EXPECT_EQ(r->status, status) << r->body;
  const json body = json::parse(r->body, nullptr, false);
  ASSERT_TRUE(body.is_object() && body.contains("error")) << r->body;
  EXPECT_EQ(body["error"]["code"], code) << r->body;
  EXPECT_TRUE(body["error"]["message"].is_string() && !body["error"]["message"].get<std::string>().empty()) << r->body;
  EXPECT_TRUE(body["error"]["type"].is_string()) << r->body;
}

// GPT-2's byte-to-code-point map (bytes_to_unicode): the printable bytes stand for themselves,
// the others for 256, 257, ... in order.
std::string byte_token(int byte) {
  auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
  int code = byte;
  if (!printable(byte)) {
    code = 256;
    for (int b = 0; b < byte; ++b) code += printable(b) ? 0 : 1;
  }
  std::string utf8;  // code < 0x800: one or two bytes
  if (code < 0x80) utf8 += static_cast<char>(code);
  else utf8 += static_cast<char>(0xC0 | (code >> 6)), utf8 += static_cast<char>(0x80 | (code & 0x3F));
  return utf8;
}

// A model over a byte-level BPE vocabulary of the 256 bytes and an end token, with random weights:
// sampled at temperature 1 it writes arbitrary bytes, most of them not UTF-8, as a byte-level
// model can (one of its tokens may end inside a character, and a stream may stop there).
LoadedModel byte_model() {
  json vocab;
  vocab["model"] = "gpt2";
  vocab["pre"] = "gpt2";
  for (int b = 0; b < 256; ++b) vocab["tokens"].push_back(byte_token(b));
  vocab["tokens"].push_back("<|endoftext|>");
  std::vector<int> types(256, 1);
  types.push_back(3);
  vocab["token_type"] = types;
  vocab["merges"] = json::array();
  vocab["bos_token_id"] = 256;
  vocab["eos_token_id"] = 256;
  LoadedModel loaded;
  loaded.tokenizer = Tokenizer::from_bpe_json(vocab.dump());
  loaded.has_tokenizer = true;
  ModelConfig& c = loaded.recipe.model;
  c.vocab_size = 257, c.d_model = 32, c.n_layers = 1, c.n_heads = 2, c.d_ff = 64, c.max_seq_len = 256;
  c.validate("byte model");
  torch::manual_seed(12);
  loaded.model = Model(c);
  torch::NoGradGuard no_grad;
  for (auto& p : loaded.model->parameters()) p.normal_(0, 0.5);
  return loaded;
}

}  // namespace

class Serve : public testing::Test {
 protected:
  // A tiny model with the SentencePiece tokenizer of a short training run on the generated corpus.
  static void SetUpTestSuite() {
    tiny_ = new TinyRun;
    TrainOptions options;
    options.out_dir = (tiny_->root / "run").string();
    const auto recipe = parse_recipe(tiny_->recipe_yaml(), "tiny", {"train.steps=6", "model.max_seq_len=96"});
    const auto checkpoint = train(recipe, options).checkpoint;
    served_ = new LoadedModel(load_checkpoint(checkpoint));
    reference_ = new LoadedModel(load_checkpoint(checkpoint));  // for generate(), off the server's threads
    // Six steps leave the model writing much the same text after any prompt, which would hide
    // rows mixed up between requests: large random weights make every prompt's continuation its own.
    torch::manual_seed(11);
    torch::NoGradGuard no_grad;
    auto reference = reference_->model->named_parameters();
    for (auto& item : served_->model->named_parameters()) {
      item.value().normal_(0, 0.3);
      reference[item.key()].copy_(item.value());
    }
  }
  static void TearDownTestSuite() {
    delete served_;
    delete reference_;
    delete tiny_;
  }
  static TinyRun* tiny_;
  static LoadedModel* served_;
  static LoadedModel* reference_;
};
TinyRun* Serve::tiny_ = nullptr;
LoadedModel* Serve::served_ = nullptr;
LoadedModel* Serve::reference_ = nullptr;

TEST_F(Serve, GreedyCompletionEqualsGenerate) {
  Running server(*served_, {});
  const auto expected = greedy(*reference_, "the cat sat", 12);
  auto r = server.post("/v1/completions",
                       {{"model", "tiny"}, {"prompt", "the cat sat"}, {"max_tokens", 12}, {"temperature", 0}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json body = json::parse(r->body);
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["model"], "tiny");
  EXPECT_EQ(body["id"].get<std::string>().rfind("cmpl-", 0), 0u);
  EXPECT_TRUE(body["created"].is_number_integer());
  ASSERT_EQ(body["choices"].size(), 1u);
  EXPECT_EQ(body["choices"][0]["index"], 0);
  EXPECT_EQ(body["choices"][0]["text"], expected.text);
  EXPECT_EQ(body["choices"][0]["finish_reason"], expected.finish_reason);
  EXPECT_EQ(body["usage"]["prompt_tokens"], expected.prompt_tokens);
  EXPECT_EQ(body["usage"]["completion_tokens"], expected.completion_tokens);
  EXPECT_EQ(body["usage"]["total_tokens"], expected.prompt_tokens + expected.completion_tokens);
  EXPECT_FALSE(expected.text.empty());
}

// A prompt fed a few tokens per step (chunked prefill) ends in the same state as one fed whole.
TEST_F(Serve, ChunkedPrefillGivesTheSameCompletion) {
  SchedulerOptions scheduler;
  scheduler.prefill_chunk = 2;
  Running server(*served_, {}, scheduler);
  const std::string prompt = "the cat sat on a mat and the dog ran to the hall";
  const auto expected = greedy(*reference_, prompt, 12);
  ASSERT_GT(expected.prompt_tokens, 6);
  auto r = server.post("/v1/completions", {{"prompt", prompt}, {"max_tokens", 12}, {"temperature", 0}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(json::parse(r->body)["choices"][0]["text"], expected.text);
  // Every step but the last of the prefill samples nothing.
  const auto stats = server.scheduler().stats();
  EXPECT_EQ(stats.steps, (expected.prompt_tokens + 1) / 2 + expected.completion_tokens - 1);
}

TEST_F(Serve, StreamedDeltasConcatenateToTheWholeText) {
  Running server(*served_, {});
  const auto expected = greedy(*reference_, "a dog ran", 14);
  auto r = server.post("/v1/completions",
                       {{"prompt", "a dog ran"}, {"max_tokens", 14}, {"temperature", 0}, {"stream", true}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/event-stream");
  const auto data = events(r->body);
  ASSERT_GE(data.size(), 2u) << r->body;
  EXPECT_EQ(data.back(), "[DONE]");
  std::string text;
  for (size_t i = 0; i + 1 < data.size(); ++i) {
    const json chunk = json::parse(data[i]);
    EXPECT_EQ(chunk["object"], "text_completion");
    text += chunk["choices"][0]["text"].get<std::string>();
    const bool last = i + 2 == data.size();
    EXPECT_EQ(chunk["choices"][0]["finish_reason"], last ? json(expected.finish_reason) : json(nullptr)) << data[i];
  }
  EXPECT_EQ(text, expected.text);
}

TEST_F(Serve, ChatCompletionUsesTheTemplateAndStreamsDeltas) {
  Running server(*served_, {});
  const std::vector<ChatMessage> messages{{"system", "be brief"}, {"user", "the mat"}};
  EXPECT_EQ(render_chat(messages), "<|system|>\nbe brief\n<|user|>\nthe mat\n<|assistant|>\n");
  EXPECT_EQ(render_chat(messages, ChatTemplate::kChatMl),
            "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nthe mat<|im_end|>\n<|im_start|>assistant\n");
  // loom's SentencePiece vocabulary has no ChatML control tokens: auto keeps loom's template, and
  // asking for chatml is refused.
  EXPECT_EQ(detect_chat_template(reference_->tokenizer), ChatTemplate::kLoom);
  EXPECT_EQ(parse_chat_template("chatml"), ChatTemplate::kChatMl);
  EXPECT_THROW(parse_chat_template("llama2"), Error);
  {
    ServerOptions chatml;
    chatml.chat_template = ChatTemplate::kChatMl;
    EngineOptions engine;
    EXPECT_THROW(Server(make_engine(*reference_, engine), reference_->tokenizer, {}, chatml), Error);
  }
  const auto expected = greedy(*reference_, render_chat(messages), 10);
  const json request{
      {"messages", {{{"role", "system"}, {"content", "be brief"}}, {{"role", "user"}, {"content", "the mat"}}}},
      {"max_tokens", 10},
      {"temperature", 0}};
  auto r = server.post("/v1/chat/completions", request);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json body = json::parse(r->body);
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_EQ(body["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(body["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(body["choices"][0]["message"]["content"], expected.text);
  EXPECT_EQ(body["choices"][0]["finish_reason"], expected.finish_reason);
  EXPECT_EQ(body["usage"]["prompt_tokens"], expected.prompt_tokens);

  json streamed = request;
  streamed["stream"] = true;
  r = server.post("/v1/chat/completions", streamed);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const auto data = events(r->body);
  ASSERT_GE(data.size(), 3u) << r->body;
  EXPECT_EQ(data.back(), "[DONE]");
  std::string text;
  for (size_t i = 0; i + 1 < data.size(); ++i) {
    const json chunk = json::parse(data[i]);
    EXPECT_EQ(chunk["object"], "chat.completion.chunk");
    const json& delta = chunk["choices"][0]["delta"];
    EXPECT_EQ(delta.contains("role"), i == 0) << data[i];
    if (delta.contains("content")) text += delta["content"].get<std::string>();
  }
  EXPECT_EQ(json::parse(data[data.size() - 2])["choices"][0]["finish_reason"], expected.finish_reason);
  EXPECT_EQ(text, expected.text);
  // Roles other than system, user and assistant are refused.
  expect_error(server.post("/v1/chat/completions", {{"messages", {{{"role", "tool"}, {"content", "x"}}}}}), 400,
               "invalid_value");
}

// Continuous batching must not mix rows: eight clients at once (more than the four slots, so some
// wait and join mid-flight), each with its own prompt and length, each get what they get alone.
TEST_F(Serve, ConcurrentClientsEachGetWhatTheyGetAlone) {
  Running server(*served_, {});
  const std::vector<std::string> prompts{"the cat",          "a dog ran to", "on the mat",      "quickly",
                                         "hall and dog sat", "the the the",  "7. café — naïve", "mat cat sat on a"};
  std::vector<Expected> expected;
  for (size_t i = 0; i < prompts.size(); ++i)
    expected.push_back(greedy(*reference_, prompts[i], 6 + 3 * static_cast<int64_t>(i % 4)));
  // Held until all eight wait, so that they overlap however the threads are scheduled.
  server.scheduler().pause(true);
  std::vector<std::future<httplib::Result>> answers;
  for (size_t i = 0; i < prompts.size(); ++i)
    answers.push_back(std::async(std::launch::async, [&, i] {
      return server.post("/v1/completions", {{"prompt", prompts[i]},
                                             {"max_tokens", 6 + 3 * static_cast<int64_t>(i % 4)},
                                             {"temperature", 0},
                                             {"stream", i % 2 == 1}});
    }));
  while (server.scheduler().stats().queued < 8) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  server.scheduler().pause(false);
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE(prompts[i]);
    auto r = answers[i].get();
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    std::string text;
    if (i % 2 == 1) {
      for (const auto& d : events(r->body))
        if (d != "[DONE]") text += json::parse(d)["choices"][0]["text"].get<std::string>();
    } else {
      text = json::parse(r->body)["choices"][0]["text"];
    }
    EXPECT_EQ(text, expected[i].text);
  }
  const auto stats = server.scheduler().stats();
  EXPECT_EQ(stats.finished, 8);
  EXPECT_EQ(stats.active, 0);
  // Batching happened: fewer engine steps than the requests' steps one after another.
  int64_t sequential = 0;
  for (const auto& e : expected) sequential += e.completion_tokens;
  EXPECT_LT(stats.steps, sequential);
}

TEST_F(Serve, StopStringsCutTheTextStreamedOrNot) {
  Running server(*served_, {});
  const auto expected = greedy(*reference_, "the cat sat", 12);
  ASSERT_GE(expected.text.size(), 6u) << expected.text;
  const std::string stop = expected.text.substr(3, 3);
  const std::string cut = expected.text.substr(0, expected.text.find(stop));
  auto r = server.post("/v1/completions",
                       {{"prompt", "the cat sat"}, {"max_tokens", 12}, {"temperature", 0}, {"stop", {"zzz", stop}}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(json::parse(r->body)["choices"][0]["text"], cut);
  EXPECT_EQ(json::parse(r->body)["choices"][0]["finish_reason"], "stop");
  r = server.post(
      "/v1/completions",
      {{"prompt", "the cat sat"}, {"max_tokens", 12}, {"temperature", 0}, {"stop", stop}, {"stream", true}});
  ASSERT_TRUE(r);
  std::string text;
  for (const auto& d : events(r->body))
    if (d != "[DONE]") text += json::parse(d)["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(text, cut);
}

TEST_F(Serve, SeededSamplingIsReproducible) {
  Running server(*served_, {});
  const json request{{"prompt", "the dog"}, {"max_tokens", 10}, {"temperature", 1.0},
                     {"top_p", 0.9},        {"top_k", 20},      {"seed", 42}};
  auto a = server.post("/v1/completions", request), b = server.post("/v1/completions", request);
  ASSERT_TRUE(a && b);
  ASSERT_EQ(a->status, 200) << a->body;
  EXPECT_EQ(json::parse(a->body)["choices"][0]["text"], json::parse(b->body)["choices"][0]["text"]);
}

TEST_F(Serve, BadRequestsGetOpenAIErrors) {
  ServerOptions options;
  options.max_tokens = 20;
  options.max_body = 4096;
  Running server(*served_, options);
  auto client = server.client();
  expect_error(client.Post("/v1/completions", "{\"prompt\": \"the cat\", ", "application/json"), 400, "invalid_json");
  expect_error(client.Post("/v1/completions", "[1, 2]", "application/json"), 400, "invalid_json");
  // Found by fuzzing: a number too large for a double was JSON's out_of_range, not a parse error.
  expect_error(client.Post("/v1/completions", "{\"prompt\": \"a\", \"max_tokens\": 6e6666}", "application/json"), 400,
               "invalid_json");
  expect_error(server.post("/v1/completions", {{"prompt", 3}}), 400, "invalid_type");
  expect_error(server.post("/v1/completions", {{"prompt", "x"}, {"max_tokens", "ten"}}), 400, "invalid_type");
  expect_error(server.post("/v1/completions", {{"prompt", "x"}, {"temperature", "hot"}}), 400, "invalid_type");
  expect_error(server.post("/v1/completions", {{"prompt", "x"}, {"stream", 1}}), 400, "invalid_type");
  expect_error(server.post("/v1/completions", {{"prompt", "x"}, {"stop", {1, 2}}}), 400, "invalid_type");
  expect_error(server.post("/v1/completions", {{"max_tokens", 3}}), 400, "missing_field");
  expect_error(server.post("/v1/completions", {{"prompt", "x"}, {"n", 2}}), 400, "invalid_value");
  expect_error(server.post("/v1/completions", {{"prompt", "x"}, {"top_p", 0}}), 400, "invalid_value");
  expect_error(server.post("/v1/completions", {{"prompt", "x"}, {"temperature", -1}}), 400, "invalid_value");
  expect_error(server.post("/v1/completions", {{"prompt", "x"}, {"model", "gpt-4"}}), 404, "model_not_found");
  expect_error(server.post("/v1/chat/completions", {{"messages", "hi"}}), 400, "invalid_type");
  // max_tokens over --max-tokens; prompt + max_tokens over the context of 96.
  expect_error(server.post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 21}}), 400, "invalid_value");
  std::string prompt_80, long_prompt;
  for (int i = 0; i < 80; ++i) prompt_80 += "dog ";
  expect_error(server.post("/v1/completions", {{"prompt", prompt_80}, {"max_tokens", 20}}), 400,
               "context_length_exceeded");
  for (int i = 0; i < 120; ++i) long_prompt += "cat ";
  expect_error(server.post("/v1/completions", {{"prompt", long_prompt}}), 400, "context_length_exceeded");
  // A body over --max-body.
  expect_error(server.post("/v1/completions", {{"prompt", std::string(5000, 'a')}}), 413, "body_too_large");
  expect_error(client.Get("/v1/nothing"), 404, "not_found");
  // The server still answers after all of that.
  auto r = server.post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
}

TEST_F(Serve, ApiKeyGuardsEverythingButHealth) {
  ServerOptions options;
  options.api_key = "sekret";
  Running server(*served_, options);
  const json request{{"prompt", "the"}, {"max_tokens", 2}};
  expect_error(server.post("/v1/completions", request), 401, "invalid_api_key");
  expect_error(server.post("/v1/completions", request, {{"Authorization", "Bearer wrong"}}), 401, "invalid_api_key");
  expect_error(server.post("/v1/completions", request, {{"Authorization", "sekret"}}), 401, "invalid_api_key");
  expect_error(server.client().Get("/v1/models"), 401, "invalid_api_key");
  expect_error(server.client().Get("/metrics"), 401, "invalid_api_key");
  auto r = server.post("/v1/completions", request, {{"Authorization", "Bearer sekret"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  r = server.client().Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

// A full queue refuses at once (429, Retry-After); the queued requests are served when slots free.
TEST_F(Serve, FullQueueAnswers429) {
  SchedulerOptions scheduler;
  scheduler.queue = 2;
  Running server(*served_, {}, scheduler, /*slots=*/1);
  server.scheduler().pause(true);  // nothing is admitted: the queue fills
  const json request{{"prompt", "the cat"}, {"max_tokens", 3}, {"temperature", 0}};
  std::vector<std::future<httplib::Result>> queued;
  for (int i = 0; i < 2; ++i)
    queued.push_back(std::async(std::launch::async, [&] { return server.post("/v1/completions", request); }));
  while (server.scheduler().stats().queued < 2) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  auto r = server.post("/v1/completions", request);
  expect_error(r, 429, "queue_full");
  EXPECT_EQ(r->get_header_value("Retry-After"), "1");
  server.scheduler().pause(false);
  for (auto& q : queued) {
    auto answer = q.get();
    ASSERT_TRUE(answer);
    EXPECT_EQ(answer->status, 200) << answer->body;
  }
}

TEST_F(Serve, CancelledRequestsFreeTheirSlots) {
  Running server(*served_, {}, {}, /*slots=*/1);
  // Cancelled while queued: never admitted.
  server.scheduler().pause(true);
  CompletionParams params;
  params.prompt = {2, 10, 11};
  params.max_tokens = 5;
  auto cancelled = server.scheduler().submit(params);
  ASSERT_TRUE(cancelled);
  cancelled->cancel();
  server.scheduler().pause(false);
  cancelled->wait_all();
  EXPECT_EQ(cancelled->finish_reason(), FinishReason::cancelled);
  EXPECT_EQ(server.scheduler().stats().cancelled, 1);
  // A streaming client that hangs up after the first event: its request ends (cancelled when the
  // server's next write fails, or finished if that came first) and the one slot serves the next.
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/chat/completions";
  req.set_header("Content-Type", "application/json");
  req.body = json{{"messages", {{{"role", "user"}, {"content", "the"}}}}, {"max_tokens", 40}, {"stream", true}}.dump();
  req.content_receiver = [](const char*, size_t, uint64_t, uint64_t) { return false; };
  httplib::Response res;
  httplib::Error error;
  server.client().send(req, res, error);
  auto r = server.post("/v1/completions", {{"prompt", "the cat"}, {"max_tokens", 3}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(server.scheduler().stats().finished + server.scheduler().stats().cancelled, 3);
}

TEST_F(Serve, ModelsHealthAndMetrics) {
  Running server(*served_, {});
  auto client = server.client();
  auto r = client.Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = client.Get("/v1/models");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  const json models = json::parse(r->body);
  EXPECT_EQ(models["object"], "list");
  ASSERT_EQ(models["data"].size(), 1u);
  EXPECT_EQ(models["data"][0]["id"], "tiny");
  EXPECT_EQ(models["data"][0]["object"], "model");

  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(server.post("/v1/completions", {{"prompt", "the"}, {"max_tokens", 4}})->status, 200);
  ASSERT_EQ(server.post("/v1/completions", {{"prompt", 1}})->status, 400);
  r = client.Get("/metrics");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  const std::string& m = r->body;
  auto has = [&](const std::string& line) { return m.find(line) != std::string::npos; };
  EXPECT_TRUE(has("loom_http_requests_total{path=\"/v1/completions\",status=\"200\"} 3\n")) << m;
  EXPECT_TRUE(has("loom_http_requests_total{path=\"/v1/completions\",status=\"400\"} 1\n")) << m;
  EXPECT_TRUE(has("loom_http_requests_total{path=\"/v1/models\",status=\"200\"} 1\n")) << m;
  EXPECT_TRUE(has("loom_completions_total 3\n")) << m;
  EXPECT_TRUE(has("loom_queue_length 0\n")) << m;
  EXPECT_TRUE(has("loom_active_slots 0\n")) << m;
  EXPECT_TRUE(has("loom_slots 4\n")) << m;
  EXPECT_TRUE(has("# TYPE loom_tokens_per_second gauge\n")) << m;
  const auto stats = server.scheduler().stats();
  EXPECT_TRUE(has(fmt::format("loom_generated_tokens_total {}\n", stats.generated_tokens))) << m;
  EXPECT_GE(stats.generated_tokens, 3);
  EXPECT_TRUE(has(fmt::format("loom_prompt_tokens_total {}\n", stats.prompt_tokens))) << m;
  EXPECT_GT(stats.steps, 0);
}

TEST_F(Serve, ServeCommandRefusesBadInput) {
  expect_one_line_error(run_loom("serve " + (tiny_->root / "nothing").string()), "no checkpoint");
}

// The command: serves on the port it logs, answers, and on SIGTERM finishes and exits with 0.
TEST_F(Serve, ServeCommandAnswersAndStopsOnSigterm) {
  const std::string log = (tiny_->root / "serve.log").string();
  // Built before fork: the child of a threaded process may only exec.
  const std::string command = "exec " + std::string(LOOM_BINARY) + " --threads 1 serve " + served_->dir +
                              " --port 0 --model-name tiny --slots 2 2> " + log;
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // The log names the port once the server listens.
  int port = 0;
  for (int i = 0; i < 6000 && port == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    const std::string text = read_text(log);
    const size_t at = text.find("http://127.0.0.1:");
    if (at != std::string::npos && text.find('\n', at) != std::string::npos) port = std::stoi(text.substr(at + 17));
  }
  ASSERT_GT(port, 0) << read_text(log);
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(120, 0);
  auto r = client.Post("/v1/completions", json{{"prompt", "the cat"}, {"max_tokens", 4}}.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(json::parse(r->body)["model"], "tiny");
  // A second `loom serve` on the same port fails with one line instead of sharing it.
  expect_one_line_error(run_loom("serve " + served_->dir + " --port " + std::to_string(port)), "in use");
  kill(pid, SIGTERM);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status << "\n" << read_text(log);
  EXPECT_NE(read_text(log).find("finishing the requests in flight"), std::string::npos) << read_text(log);
}

// Hundreds of concurrent sampled streams of a byte-level model, whose text is mostly not UTF-8:
// every answer is well-formed JSON holding valid UTF-8, and the server lives through all of them
// (an incomplete character once threw from JSON's dump on a server thread and ended the process).
TEST(ServeBytes, SampledByteStreamsStayValidUtf8AndNeverEndTheServer) {
  const LoadedModel loaded = byte_model();
  Running server(loaded, {}, {}, /*slots=*/8);
  std::atomic<int> next{0}, streamed{0}, replaced{0};
  constexpr int kRequests = 400;
  auto client_loop = [&] {
    auto client = server.client();
    for (int i; (i = next++) < kRequests;) {
      const bool chat = i % 3 == 0, stream = i % 4 != 1;
      json body{{"max_tokens", 1 + i % 23}, {"temperature", 1.0 + (i % 5) * 0.2}, {"stream", stream}};
      if (chat) body["messages"] = {{{"role", "user"}, {"content", "h\xC3\xA9llo " + std::to_string(i)}}};
      else body["prompt"] = "caf\xC3\xA9 \xE2\x82\xAC" + std::to_string(i);
      if (i % 7 == 0) body["stop"] = "\xC3\xA9";
      auto r = client.Post(chat ? "/v1/chat/completions" : "/v1/completions", body.dump(), "application/json");
      ASSERT_TRUE(r) << "request " << i << ": no answer (" << httplib::to_string(r.error()) << ")";
      ASSERT_EQ(r->status, 200) << r->body;
      std::string text;
      if (stream) {
        const auto payloads = events(r->body);
        ASSERT_FALSE(payloads.empty());
        EXPECT_EQ(payloads.back(), "[DONE]");
        for (size_t e = 0; e + 1 < payloads.size(); ++e) {
          const json chunk = json::parse(payloads[e]);  // throws on ill-formed UTF-8
          const json& choice = chunk["choices"][0];
          if (chat && choice["delta"].contains("content")) text += choice["delta"]["content"].get<std::string>();
          if (!chat) text += choice["text"].get<std::string>();
        }
        ++streamed;
      } else {
        const json answer = json::parse(r->body);
        text = chat ? answer["choices"][0]["message"]["content"].get<std::string>()
                    : answer["choices"][0]["text"].get<std::string>();
      }
      EXPECT_EQ(utf8_invalid_at(text), std::string::npos) << "request " << i;
      if (text.find("\xEF\xBF\xBD") != std::string::npos) ++replaced;
    }
  };
  std::vector<std::thread> clients;
  for (int t = 0; t < 24; ++t) clients.emplace_back(client_loop);
  for (auto& t : clients) t.join();
  EXPECT_GE(streamed.load(), 250);
  EXPECT_GE(replaced.load(), 50) << "the model should have written many ill-formed bytes";
  auto health = server.client().Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
}

// A body that is not UTF-8 is a 400 naming the problem, whether the bytes are raw or a JSON
// escape of a lone surrogate; the answer is itself valid JSON.
TEST(ServeBytes, APromptThatIsNotUtf8IsA400) {
  const LoadedModel loaded = byte_model();
  Running server(loaded, {});
  auto client = server.client();
  auto raw =
      client.Post("/v1/completions", std::string("{\"prompt\": \"caf\xC3\", \"max_tokens\": 2}"), "application/json");
  expect_error(raw, 400, "invalid_utf8");
  EXPECT_NE(raw->body.find("byte 15"), std::string::npos) << raw->body;
  auto chat =
      client.Post("/v1/chat/completions",
                  std::string("{\"messages\": [{\"role\": \"user\", \"content\": \"\xFF\xFE\"}]}"), "application/json");
  expect_error(chat, 400, "invalid_utf8");
  auto escaped =
      client.Post("/v1/completions", std::string(R"({"prompt": "\ud800 alone", "max_tokens": 2})"), "application/json");
  expect_error(escaped, 400, "invalid_json");
  EXPECT_EQ(utf8_invalid_at(escaped->body), std::string::npos);
}

// A second server on a port in use fails to bind, saying so, instead of sharing the port.
// Found by fuzzing: a model with no prompt prefix (no bos) and an empty prompt: nothing to
// continue. A 400 naming the prompt, not the scheduler's error.
TEST(ServeBytes, AnEmptyPromptIsA400) {
  const LoadedModel loaded = byte_model();
  Running server(loaded, {});
  for (const json& prompt : {json(""), json::array({""})}) {
    auto r = server.post("/v1/completions", {{"prompt", prompt}, {"max_tokens", 2}});
    expect_error(r, 400, "invalid_value");
    EXPECT_NE(r->body.find("the prompt is empty"), std::string::npos) << r->body;
  }
}

TEST(ServeBytes, APortInUseIsAnError) {
  const LoadedModel loaded = byte_model();
  Running first(loaded, {});
  ServerOptions options;
  options.port = first.port();
  EngineOptions engine;
  Server second(make_engine(loaded, engine), loaded.tokenizer, {}, options);
  try {
    second.bind();
    FAIL() << "a second server bound port " << first.port();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("in use"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(std::to_string(first.port())), std::string::npos) << e.what();
  }
}

// A server stopped right after it starts ends: httplib's stop() is a no-op until its listen loop
// runs, so a stop() that came first used to leave serve() listening forever (seen as a 600 s hang
// of APortInUseIsAnError on a fresh machine).
TEST(ServeBytes, AServerStoppedAsItStartsEnds) {
  const LoadedModel loaded = byte_model();
  for (int i = 0; i < 200; ++i) Running server(loaded, {});
}

// Idle slots hold no KV cache; a request's cache is freed when it finishes (/metrics shows it).
TEST(ServeBytes, IdleSlotsHoldNoCache) {
  const LoadedModel loaded = byte_model();
  Running server(loaded, {}, {}, /*slots=*/8);
  auto cache_bytes = [&] {
    auto r = server.client().Get("/metrics");
    const size_t at = r->body.find("\nloom_kv_cache_bytes ");
    EXPECT_NE(at, std::string::npos) << r->body;
    return std::stoll(r->body.substr(at + 21));
  };
  EXPECT_EQ(cache_bytes(), 0);
  auto r = server.post("/v1/completions", {{"prompt", "hello"}, {"max_tokens", 3}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(cache_bytes(), 0);
  EXPECT_EQ(server.scheduler().stats().cache_bytes, 0);
}

// A thousand connections that send nothing each hold a handler thread; the next client is still
// served at once (the handler threads outnumber them, and the listen backlog takes the burst).
TEST(ServeBytes, AThousandIdleConnectionsDoNotStopService) {
  const LoadedModel loaded = byte_model();
  ASSERT_GE(raise_open_file_limit(4096), 2100) << "the test needs 2100 open files (ulimit -n)";
  Running server(loaded, {});
  std::vector<int> idle;
  for (int i = 0; i < 1000; ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(static_cast<uint16_t>(server.port()));
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)), 0) << "connection " << i;
    idle.push_back(fd);
  }
  const auto start = std::chrono::steady_clock::now();
  auto client = server.client();
  client.set_read_timeout(3, 0);
  auto r = client.Post("/v1/completions", json{{"prompt", "hi"}, {"max_tokens", 2}}.dump(), "application/json");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_LT(seconds, 2.0);
  for (int fd : idle) close(fd);
}

// A client that trickles its request (a byte every 200 ms, never finishing) is cut off once the
// request deadline passes; requests that arrive whole are still answered, streamed or not.
TEST(ServeBytes, ATricklingClientIsCutOffAtTheRequestDeadline) {
  const LoadedModel loaded = byte_model();
  ServerOptions options;
  options.request_timeout = 1;
  Running server(loaded, options);
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(server.port()));
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)), 0);
  const std::string request = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n";
  const auto start = std::chrono::steady_clock::now();
  bool closed = false;
  for (size_t i = 0; i < request.size() && !closed; ++i) {
    if (send(fd, request.data() + i, 1, MSG_NOSIGNAL) != 1) closed = true;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 200) == 1) {
      char byte = 0;
      closed = recv(fd, &byte, 1, MSG_DONTWAIT) == 0;
    }
  }
  close(fd);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_TRUE(closed) << "the server kept a trickling connection for " << seconds << " s";
  EXPECT_LT(seconds, 4.0);
  auto metrics = server.client().Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_NE(metrics->body.find("\nloom_request_timeouts_total 1\n"), std::string::npos) << metrics->body;
  auto slow = server.post("/v1/completions", {{"prompt", "hi"}, {"max_tokens", 2}});
  ASSERT_TRUE(slow);
  EXPECT_EQ(slow->status, 200);
  httplib::Client client("127.0.0.1", server.port());
  client.set_read_timeout(30, 0);
  auto r = client.Post("/v1/completions", json{{"prompt", "hi"}, {"max_tokens", 2}, {"stream", true}}.dump(),
                       "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

// An OpenAI-compatible completion request, apart from HTTP: the body of POST /v1/completions or
// /v1/chat/completions parsed and checked against the server's limits into what the scheduler
// runs, and the chat templates that turn messages into a prompt. Every problem with a request is
// an ApiError (docs/serving.md lists them).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "loom/data/tokenizer.h"
#include "loom/serve/scheduler.h"

namespace loom {

// The chat templates. role is system, user or assistant (anything else is a loom::Error).
//   kLoom:   each message as "<|role|>\n" + content + "\n", then "<|assistant|>\n" for the reply;
//   kChatMl: "<|im_start|>" + role + "\n" + content + "<|im_end|>\n" per message, then
//            "<|im_start|>assistant\n" (llama.cpp's "chatml": SmolLM2, Qwen and others); the
//            reply ends at "<|im_end|>".
enum class ChatTemplate { kLoom, kChatMl };
ChatTemplate parse_chat_template(const std::string& name);  // "loom" or "chatml"
const char* chat_template_name(ChatTemplate t);
// kChatMl when the vocabulary has "<|im_start|>" and "<|im_end|>" as control tokens (the text
// encodes to one id each), kLoom otherwise.
ChatTemplate detect_chat_template(const Tokenizer& tokenizer);

struct ChatMessage {
  std::string role, content;
};
std::string render_chat(const std::vector<ChatMessage>& messages, ChatTemplate t = ChatTemplate::kLoom);

// An answer other than success, sent as OpenAI's error object:
// {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int status;
  std::string message;
  std::string code;
  std::string param = "";
};

// What a request may ask for.
struct RequestLimits {
  std::string model_name = "loom";  // the one model id served
  int64_t max_tokens = 1024;        // a request's max_tokens at most
  int64_t context = 0;              // the engine's context: prompt + max_tokens at most
  ChatTemplate chat_template = ChatTemplate::kLoom;
  int64_t chatml_end = -1;  // kChatMl: the id of "<|im_end|>", which ends a chat reply
};

// A completion request after validation: what the scheduler needs, and how to answer.
struct CompletionRequest {
  CompletionParams params;
  bool stream = false;
  bool chat = false;
};

// Parses a request body (UTF-8 JSON; a chat request when `chat`) into the prompt's tokens (the
// tokenizer's prompt_prefix, then the text or the rendered messages), max_tokens, sampling, stop
// strings and streaming. Any problem is an ApiError: 400 (invalid UTF-8 or JSON, a missing or
// mistyped field, a value out of range, a prompt that does not fit the context), 404 (another
// model's name).
CompletionRequest parse_completion_request(std::string_view body, bool chat, const Tokenizer& tokenizer,
                                           const RequestLimits& limits);

}  // namespace loom

// Parsing and encoding of Varlink calls and replies.
#include "protocol/message.hpp"

#include "protocol/errors.hpp"

namespace firmad::protocol {
namespace {

[[noreturn]] void violation(std::string reason) {
  throw VarlinkError(error::kProtocolViolation, {{"reason", std::move(reason)}});
}

Json parse_object(std::string_view frame) {
  if (frame.size() > kMaxMessageBytes) violation("message exceeds " + std::to_string(kMaxMessageBytes) + " bytes");
  // nlohmann takes a NUL for the end of input and would ignore what follows.
  if (frame.find('\0') != std::string_view::npos) violation("message contains a NUL byte");
  if (!json_depth_within(frame)) violation("JSON nests deeper than " + std::to_string(kMaxJsonDepth) + " levels");
  Json doc = Json::parse(frame, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) violation("message is not valid JSON");
  if (!doc.is_object()) violation("message is not a JSON object");
  return doc;
}

Json take_parameters(Json& doc) {
  auto it = doc.find("parameters");
  if (it == doc.end() || it->is_null()) return Json::object();
  if (!it->is_object()) violation("'parameters' is not an object");
  return std::move(*it);
}

bool take_flag(const Json& doc, const char* name) {
  auto it = doc.find(name);
  if (it == doc.end() || it->is_null()) return false;
  if (!it->is_boolean()) violation(std::string("'") + name + "' is not a boolean");
  return it->get<bool>();
}

}  // namespace

bool json_depth_within(std::string_view text, int max_depth) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    switch (c) {
      case '"': in_string = true; break;
      case '[': case '{':
        if (++depth > max_depth) return false;
        break;
      case ']': case '}':
        if (depth > 0) --depth;
        break;
      default: break;
    }
  }
  return true;
}

Call parse_call(std::string_view frame) {
  Json doc = parse_object(frame);
  Call call;
  for (const auto& [key, value] : doc.items()) {
    if (key != "method" && key != "parameters" && key != "more" && key != "oneway" && key != "upgrade")
      violation("unknown field '" + key + "' in call");
  }
  auto method = doc.find("method");
  if (method == doc.end() || !method->is_string()) violation("'method' is missing or not a string");
  call.method = method->get<std::string>();
  if (call.method.empty() || interface_of(call.method).empty()) violation("'method' is not of the form interface.Method");
  call.more = take_flag(doc, "more");
  call.oneway = take_flag(doc, "oneway");
  if (take_flag(doc, "upgrade")) violation("'upgrade' is not supported");
  if (call.more && call.oneway) violation("'more' and 'oneway' exclude each other");
  call.parameters = take_parameters(doc);
  return call;
}

Reply parse_reply(std::string_view frame) {
  Json doc = parse_object(frame);
  Reply reply;
  if (auto it = doc.find("error"); it != doc.end()) {
    if (!it->is_string()) violation("'error' is not a string");
    reply.error = it->get<std::string>();
  }
  reply.continues = take_flag(doc, "continues");
  reply.parameters = take_parameters(doc);
  return reply;
}

std::string encode_call(const Call& call) {
  Json doc = {{"method", call.method}, {"parameters", call.parameters.is_null() ? Json::object() : call.parameters}};
  if (call.more) doc["more"] = true;
  if (call.oneway) doc["oneway"] = true;
  std::string out = doc.dump();
  out.push_back('\0');
  return out;
}

std::string encode_reply(const Json& parameters, bool continues) {
  Json doc = {{"parameters", parameters.is_null() ? Json::object() : parameters}};
  if (continues) doc["continues"] = true;
  std::string out = doc.dump(-1, ' ', false, Json::error_handler_t::replace);
  out.push_back('\0');
  return out;
}

std::string encode_error(std::string_view name, const Json& parameters) {
  Json doc = {{"error", name}, {"parameters", parameters.is_null() ? Json::object() : parameters}};
  std::string out = doc.dump(-1, ' ', false, Json::error_handler_t::replace);
  out.push_back('\0');
  return out;
}

std::string_view interface_of(std::string_view method) {
  const auto dot = method.rfind('.');
  if (dot == std::string_view::npos || dot == 0 || dot + 1 == method.size()) return {};
  return method.substr(0, dot);
}

}  // namespace firmad::protocol

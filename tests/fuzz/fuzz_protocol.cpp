// libFuzzer target: any bytes given to the wire-format parsers get an answer or a VarlinkError.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "protocol/base64.hpp"
#include "protocol/errors.hpp"
#include "protocol/message.hpp"
#include "protocol/params.hpp"

namespace {

using namespace firmad::protocol;

// A broken invariant is a finding: abort so libFuzzer saves the input.
void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}

std::string_view without_nul(const std::string& encoded) {
  require(!encoded.empty() && encoded.back() == '\0', "encoder appends a NUL");
  require(encoded.find('\0') == encoded.size() - 1, "encoder output holds exactly one NUL");
  return std::string_view(encoded).substr(0, encoded.size() - 1);
}

// Tries every accessor on one parameter, each in a fresh Params so an early
// refusal does not hide the later ones.
void read_parameter(const Json& parameters, const std::string& name) {
  try { Params(parameters).required_string(name); } catch (const VarlinkError&) {}
  try { Params(parameters).optional_string(name); } catch (const VarlinkError&) {}
  try { Params(parameters).optional_bool(name, false); } catch (const VarlinkError&) {}
  try { Params(parameters).optional_int(name); } catch (const VarlinkError&) {}
  try {
    const auto bytes = Params(parameters).required_base64(name);
    // Only canonical base64 decodes, so re-encoding gives back the text.
    require(base64_encode(bytes) == parameters.at(name).get<std::string>(), "base64 parameter is canonical");
  } catch (const VarlinkError&) {}
  try { Params(parameters).optional_base64(name); } catch (const VarlinkError&) {}
}

void fuzz_call(std::string_view text) {
  Call call;
  try {
    call = parse_call(text);
  } catch (const VarlinkError& e) {
    require(e.name() == error::kProtocolViolation, "parse_call refuses with ProtocolViolation");
    return;
  }
  require(call.parameters.is_object(), "call parameters are an object");
  require(!interface_of(call.method).empty(), "call method names an interface");
  require(!(call.more && call.oneway), "more and oneway exclude each other");

  // Every accessor on every parameter present, plus the names firmad uses.
  for (const auto& [key, value] : call.parameters.items()) read_parameter(call.parameters, key);
  for (const char* name : {"key", "digest", "hash", "content", "detached", "mechanism", "token", "limit"})
    read_parameter(call.parameters, name);

  // The way a handler reads a call: some fields, then finish().
  try {
    Params p(call.parameters);
    p.optional_string("key");
    p.optional_base64("digest");
    if (auto hash = p.optional_string("hash")) digest_length(*hash);
    p.optional_bool("detached", true);
    p.optional_int("limit");
    p.finish();
  } catch (const VarlinkError&) {
  }

  // What parse_call accepted re-encodes into a call it accepts again, unchanged.
  const std::string encoded = encode_call(call);
  if (encoded.size() - 1 <= kMaxMessageBytes) {
    const Call again = parse_call(without_nul(encoded));
    require(again.method == call.method, "call method survives a round trip");
    require(again.parameters == call.parameters, "call parameters survive a round trip");
    require(again.more == call.more && again.oneway == call.oneway, "call flags survive a round trip");
  }
}

void fuzz_reply(std::string_view text) {
  Reply reply;
  try {
    reply = parse_reply(text);
  } catch (const VarlinkError& e) {
    require(e.name() == error::kProtocolViolation, "parse_reply refuses with ProtocolViolation");
    return;
  }
  require(reply.parameters.is_object(), "reply parameters are an object");
  const std::string encoded =
      reply.error ? encode_error(*reply.error, reply.parameters) : encode_reply(reply.parameters, reply.continues);
  if (encoded.size() - 1 <= kMaxMessageBytes) {
    const Reply again = parse_reply(without_nul(encoded));
    require(again.error == reply.error, "reply error survives a round trip");
    require(again.parameters == reply.parameters, "reply parameters survive a round trip");
  }
}

void fuzz_base64(std::string_view text) {
  if (const auto bytes = base64_decode(text)) {
    require(base64_encode(*bytes) == text, "only canonical base64 decodes");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  fuzz_call(text);
  fuzz_reply(text);
  fuzz_base64(text);
  return 0;
}

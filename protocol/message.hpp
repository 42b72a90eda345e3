// Varlink messages: parsing calls and replies, encoding them with their NUL.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "protocol/limits.hpp"

namespace firmad::protocol {

using Json = nlohmann::json;

struct Call {
  std::string method;       // "interface.Method"
  Json parameters;          // always an object
  bool more = false;        // the caller accepts streamed replies
  bool oneway = false;      // the caller wants no reply
};

struct Reply {
  std::optional<std::string> error;  // set for an error reply
  Json parameters;                   // always an object
  bool continues = false;            // more replies follow
};

// Returns true when no array or object in `text` nests deeper than max_depth.
// Looks only at brackets outside strings; it does not validate the JSON.
bool json_depth_within(std::string_view text, int max_depth = kMaxJsonDepth);

// Parses one frame (the bytes before its NUL) as a Varlink call. Throws
// VarlinkError(ProtocolViolation) for anything that is not a well-formed call:
// oversize, too deep, not JSON, not an object, method missing or not a string,
// parameters not an object, flags not booleans, unknown top-level keys.
Call parse_call(std::string_view frame);

// Parses one frame as a reply; throws VarlinkError(ProtocolViolation) likewise.
Reply parse_reply(std::string_view frame);

// Each returns the JSON text followed by the NUL terminator.
std::string encode_call(const Call& call);
std::string encode_reply(const Json& parameters, bool continues = false);
std::string encode_error(std::string_view name, const Json& parameters);

// Returns the interface part of "interface.Method" ("" if there is no dot).
std::string_view interface_of(std::string_view method);

}  // namespace firmad::protocol

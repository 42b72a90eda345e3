// Typed parameter access for Varlink calls.
#include "protocol/params.hpp"

#include <algorithm>
#include <limits>

#include "protocol/base64.hpp"
#include "protocol/errors.hpp"

namespace firmad::protocol {

Params::Params(const Json& parameters) : params_(parameters) {}

const Json* Params::find(const std::string& name) {
  known_.push_back(name);
  if (!params_.is_object()) return nullptr;
  auto it = params_.find(name);
  if (it == params_.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<std::string> Params::optional_string(const std::string& name) {
  const Json* v = find(name);
  if (!v) return std::nullopt;
  if (!v->is_string()) throw invalid_parameter(name);
  return v->get<std::string>();
}

std::string Params::required_string(const std::string& name) {
  auto v = optional_string(name);
  if (!v) throw invalid_parameter(name);
  return std::move(*v);
}

bool Params::optional_bool(const std::string& name, bool fallback) {
  const Json* v = find(name);
  if (!v) return fallback;
  if (!v->is_boolean()) throw invalid_parameter(name);
  return v->get<bool>();
}

std::optional<std::int64_t> Params::optional_int(const std::string& name) {
  const Json* v = find(name);
  if (!v) return std::nullopt;
  if (!v->is_number_integer()) throw invalid_parameter(name);
  // An unsigned above INT64_MAX would otherwise wrap to a negative number.
  if (v->is_number_unsigned() && v->get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
    throw invalid_parameter(name);
  return v->get<std::int64_t>();
}

std::optional<std::vector<std::int64_t>> Params::optional_int_array(const std::string& name) {
  const Json* v = find(name);
  if (!v) return std::nullopt;
  if (!v->is_array() || v->size() > 1024) throw invalid_parameter(name);
  std::vector<std::int64_t> out;
  for (const auto& e : *v) {
    if (!e.is_number_integer() ||
        (e.is_number_unsigned() && e.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())))
      throw invalid_parameter(name);
    out.push_back(e.get<std::int64_t>());
  }
  return out;
}

std::optional<std::vector<std::uint8_t>> Params::optional_base64(const std::string& name) {
  auto text = optional_string(name);
  if (!text) return std::nullopt;
  auto bytes = base64_decode(*text);
  if (!bytes) throw VarlinkError(error::kInvalidBase64, {{"parameter", name}});
  return bytes;
}

std::vector<std::uint8_t> Params::required_base64(const std::string& name) {
  auto v = optional_base64(name);
  if (!v) throw invalid_parameter(name);
  return std::move(*v);
}

void Params::finish() const {
  if (!params_.is_object()) return;
  for (const auto& [key, value] : params_.items()) {
    if (std::find(known_.begin(), known_.end(), key) == known_.end()) throw invalid_parameter(key);
  }
}

std::optional<std::size_t> digest_length(std::string_view hash) {
  if (hash == "sha256") return 32;
  if (hash == "sha384") return 48;
  if (hash == "sha512") return 64;
  return std::nullopt;
}

}  // namespace firmad::protocol

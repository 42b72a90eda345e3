// RFC 7512 PKCS#11 URIs, parsed and matched by p11-kit.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "pkcs11/types.hpp"

struct p11_kit_uri;

namespace firmad::pkcs11 {

class Module;

class Uri {
 public:
  // Parses "pkcs11:token=...;object=...;id=%01". Throws std::invalid_argument
  // naming what is wrong.
  static Uri parse(const std::string& text);

  const std::string& text() const noexcept { return text_; }
  // Whether the token in `slot` matches the token attributes of the URI
  // (label, serial, manufacturer, model). Throws Error.
  bool matches_token(const Module& module, SlotId slot) const;
  std::optional<std::string> object_label() const;
  std::optional<Bytes> object_id() const;
  // Whether the URI names an object (label or id), not just a token.
  bool names_object() const { return object_label() || object_id(); }

 private:
  struct Free {
    void operator()(p11_kit_uri* u) const noexcept;
  };
  Uri(std::string text, std::shared_ptr<p11_kit_uri> uri) : text_(std::move(text)), uri_(std::move(uri)) {}
  std::string text_;
  std::shared_ptr<p11_kit_uri> uri_;  // shared: a parsed URI is immutable
};

}  // namespace firmad::pkcs11

// PKCS#11 URI parsing and matching on top of p11-kit.
#include "pkcs11/uri.hpp"

#include <p11-kit/uri.h>

#include <stdexcept>

#include "pkcs11/module.hpp"

namespace firmad::pkcs11 {

void Uri::Free::operator()(p11_kit_uri* u) const noexcept { p11_kit_uri_free(u); }

Uri Uri::parse(const std::string& text) {
  std::shared_ptr<p11_kit_uri> uri(p11_kit_uri_new(), Free{});
  if (!uri) throw std::bad_alloc();
  const int rc = p11_kit_uri_parse(text.c_str(), P11_KIT_URI_FOR_ANY, uri.get());
  if (rc != P11_KIT_URI_OK)
    throw std::invalid_argument("not a valid PKCS#11 URI (" + std::string(p11_kit_uri_message(rc)) + "): " + text);
  return Uri(text, std::move(uri));
}

bool Uri::matches_token(const Module& module, SlotId slot) const {
  CK_TOKEN_INFO info = module.raw_token_info(slot);
  return p11_kit_uri_match_token_info(uri_.get(), &info) == 1;
}

std::optional<std::string> Uri::object_label() const {
  CK_ATTRIBUTE* a = p11_kit_uri_get_attribute(uri_.get(), CKA_LABEL);
  if (!a || !a->pValue) return std::nullopt;
  return std::string(static_cast<const char*>(a->pValue), a->ulValueLen);
}

std::optional<Bytes> Uri::object_id() const {
  CK_ATTRIBUTE* a = p11_kit_uri_get_attribute(uri_.get(), CKA_ID);
  if (!a || !a->pValue) return std::nullopt;
  const auto* p = static_cast<const std::uint8_t*>(a->pValue);
  return Bytes(p, p + a->ulValueLen);
}

}  // namespace firmad::pkcs11
